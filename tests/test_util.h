#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/torch.h>

namespace ddpm::testing {

// Asserts that `statement` throws c10::Error whose message contains `text`.
#define DDPM_EXPECT_THROW_WITH(statement, text)                            \
  do {                                                                     \
    try {                                                                  \
      statement;                                                           \
      ADD_FAILURE() << "expected an error containing \"" << (text) << "\""; \
    } catch (const c10::Error& error) {                                    \
      EXPECT_NE(std::string(error.what_without_backtrace()).find(text),    \
                std::string::npos)                                         \
          << "message: " << error.what_without_backtrace();                \
    }                                                                      \
  } while (false)

inline std::string fixture_path(const std::string& name) {
  return std::string(DDPM_SOURCE_DIR) + "/tests/fixtures/" + name;
}

inline c10::IValue load_fixture(const std::string& name) {
  std::ifstream file(fixture_path(name), std::ios::binary);
  EXPECT_TRUE(file.good()) << "missing fixture " << name;
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)),
                          std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes);
}

// A fresh, empty folder under the system's temporary folder, removed when
// the object goes out of scope.
class TemporaryFolder {
 public:
  TemporaryFolder() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
        ("ddpm-test-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TemporaryFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

} // namespace ddpm::testing
