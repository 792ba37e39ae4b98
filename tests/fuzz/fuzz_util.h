#pragma once

// Shared set-up of the libFuzzer targets: each writes the input to a file
// in a private folder, because the readers under test take paths, as
// users call them.

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "ddpm/log.h"

namespace ddpm::fuzz {

// A folder of this process, created on first use, with log messages
// silenced (the targets run millions of inputs that each warn).
inline const std::filesystem::path& scratch_folder() {
  static const std::filesystem::path folder = [] {
    ddpm::set_log_sink([](ddpm::LogLevel, const std::string&) {});
    auto path = std::filesystem::temp_directory_path() /
                ("ddpm-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    return path;
  }();
  return folder;
}

inline std::string write_input(const std::string& name, const uint8_t* data,
                               size_t size) {
  const auto path = scratch_folder() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return path.string();
}

} // namespace ddpm::fuzz
