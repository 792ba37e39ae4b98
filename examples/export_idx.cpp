// Exports the images of an IDX file (the MNIST and Fashion-MNIST format) as
// grayscale PNG files, so that ddpm-train can read them as an image folder.
// A second run with the same arguments finds the files and does nothing.

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <iostream>
#include <limits>
#include <string>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "ddpm/data/idx.h"
#include "ddpm/io/checkpoint.h"

namespace {

// The record of a finished export, written last: the input's absolute
// path, size in bytes and the number of images written.
std::string export_record(const std::string& input, int64_t count) {
  const auto path = std::filesystem::absolute(input).string();
  return path + "\n" +
      std::to_string(std::filesystem::file_size(input)) + "\n" +
      std::to_string(count) + "\n";
}

std::filesystem::path record_path(const std::string& folder) {
  return std::filesystem::path(folder) / ".ddpm-export";
}

// Returns whether an earlier run exported the same images of the same input
// into `folder` and finished, and every PNG of that run is still there.
bool contains_exported_images(const std::string& folder,
                              const std::string& record, int64_t count) {
  std::ifstream file(record_path(folder));
  const std::string existing((std::istreambuf_iterator<char>(file)),
                             std::istreambuf_iterator<char>());
  if (!file.good() && !file.eof()) {
    return false;
  }
  if (existing != record) {
    return false;
  }
  for (int64_t i = 0; i < count; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "%06" PRId64 ".png", i);
    std::error_code error;
    if (std::filesystem::file_size(std::filesystem::path(folder) / name,
                                   error) == 0 ||
        error) {
      return false;
    }
  }
  return true;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Writes the images of an IDX file (MNIST, Fashion-MNIST) as grayscale "
      "PNG files 000000.png, 000001.png, ... into a folder."};
  std::string input;
  std::string output;
  int64_t limit = -1;
  app.add_option("--input", input,
                 "IDX image file to read (magic number 0x00000803), "
                 "gzip-compressed or not")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--output", output,
                 "Folder to write the PNG files into, created when missing")
      ->required();
  app.add_option("--limit", limit,
                 "Number of images to write, counted from the first; "
                 "default -1 writes all")
      ->check(CLI::Range(int64_t{-1}, std::numeric_limits<int64_t>::max())
                 .description("INT >= -1"));
  CLI11_PARSE(app, argc, argv);

  try {
    const int64_t total = ddpm::read_idx_images(input).size(0);
    const int64_t expected = limit < 0 ? total : std::min(limit, total);
    const std::string record = export_record(input, expected);
    if (contains_exported_images(output, record, expected)) {
      std::cout << output << " already contains the first " << expected
                << " images of " << input << ", so nothing was written\n";
      return 0;
    }
    const int64_t count = ddpm::export_idx_images(input, output, limit);
    ddpm::write_file_atomically(
        record_path(output).string(),
        std::vector<char>(record.begin(), record.end()));
    std::cout << "wrote " << count << " images to " << output << '\n';
  } catch (const c10::Error& error) {
    std::cerr << "ddpm-export-idx: " << error.what_without_backtrace()
              << '\n';
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "ddpm-export-idx: " << error.what() << '\n';
    return 1;
  }
  return 0;
}
