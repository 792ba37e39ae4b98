#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <zlib.h>

#include "ddpm/data/idx.h"
#include "ddpm/io/image.h"

namespace {

namespace fs = std::filesystem;

// A fresh folder under the system's temporary directory, removed on exit.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("ddpm-idx-test-" + std::to_string(std::random_device{}()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const {
    return (path_ / name).string();
  }

 private:
  fs::path path_;
};

void append_big_endian(std::vector<uint8_t>& bytes, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    bytes.push_back(static_cast<uint8_t>(value >> shift));
  }
}

// Three 2x4 images. Byte k of image i is 8 * i + k.
constexpr uint32_t kCount = 3;
constexpr uint32_t kHeight = 2;
constexpr uint32_t kWidth = 4;

std::vector<uint8_t> idx_bytes(uint32_t magic = 0x00000803) {
  std::vector<uint8_t> bytes;
  append_big_endian(bytes, magic);
  append_big_endian(bytes, kCount);
  append_big_endian(bytes, kHeight);
  append_big_endian(bytes, kWidth);
  for (uint32_t i = 0; i < kCount * kHeight * kWidth; ++i) {
    bytes.push_back(static_cast<uint8_t>(i));
  }
  return bytes;
}

torch::Tensor expected_images() {
  return torch::arange(kCount * kHeight * kWidth, torch::kUInt8)
      .view({kCount, kHeight, kWidth});
}

void write_raw(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  EXPECT_EQ(gzclose(file), Z_OK);
}

std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const c10::Error& error) {
    return error.what_without_backtrace();
  }
  return "(no error)";
}

std::string png_name(int index) {
  char name[16];
  std::snprintf(name, sizeof(name), "%06d.png", index);
  return name;
}

} // namespace

TEST(IdxTest, ReadsRawFile) {
  TempDir dir;
  write_raw(dir.file("images-idx3-ubyte"), idx_bytes());

  const torch::Tensor images =
      ddpm::read_idx_images(dir.file("images-idx3-ubyte"));

  EXPECT_EQ(images.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(torch::equal(images, expected_images())) << images;
}

TEST(IdxTest, ReadsGzipFile) {
  TempDir dir;
  write_gzip(dir.file("images-idx3-ubyte.gz"), idx_bytes());

  const torch::Tensor images =
      ddpm::read_idx_images(dir.file("images-idx3-ubyte.gz"));

  EXPECT_TRUE(torch::equal(images, expected_images())) << images;
}

TEST(IdxTest, ReadsEmptyImageSet) {
  TempDir dir;
  std::vector<uint8_t> bytes;
  append_big_endian(bytes, 0x00000803);
  append_big_endian(bytes, 0);
  append_big_endian(bytes, 28);
  append_big_endian(bytes, 28);
  write_raw(dir.file("empty"), bytes);

  const torch::Tensor images = ddpm::read_idx_images(dir.file("empty"));

  EXPECT_EQ(images.sizes(), (std::vector<int64_t>{0, 28, 28}));
}

TEST(IdxTest, BadMagicRejected) {
  TempDir dir;
  const std::string path = dir.file("labels-idx1-ubyte");
  write_raw(path, idx_bytes(0x00000801));

  const std::string message =
      error_message([&] { ddpm::read_idx_images(path); });

  EXPECT_NE(message.find("\"" + path + "\""), std::string::npos) << message;
  EXPECT_NE(message.find("magic number 0x00000801, expected 0x00000803"),
            std::string::npos)
      << message;
}

TEST(IdxTest, TruncatedFileRejected) {
  TempDir dir;
  const std::string path = dir.file("truncated");
  std::vector<uint8_t> bytes = idx_bytes();
  bytes.resize(bytes.size() - 5);
  write_raw(path, bytes);

  const std::string message =
      error_message([&] { ddpm::read_idx_images(path); });

  EXPECT_NE(message.find("\"" + path + "\""), std::string::npos) << message;
  EXPECT_NE(message.find("19 bytes of pixel data, expected 3x2x4 = 24"),
            std::string::npos)
      << message;
}

TEST(IdxTest, TrailingBytesRejected) {
  TempDir dir;
  const std::string path = dir.file("long");
  std::vector<uint8_t> bytes = idx_bytes();
  bytes.insert(bytes.end(), {1, 2, 3});
  write_raw(path, bytes);

  const std::string message =
      error_message([&] { ddpm::read_idx_images(path); });

  EXPECT_NE(message.find("27 bytes of pixel data, expected 3x2x4 = 24"),
            std::string::npos)
      << message;
}

TEST(IdxTest, ShortHeaderRejected) {
  TempDir dir;
  const std::string path = dir.file("short");
  write_raw(path, {0, 0, 8, 3, 0, 0});

  const std::string message =
      error_message([&] { ddpm::read_idx_images(path); });

  EXPECT_NE(message.find("6 bytes, too short for the 16-byte header"),
            std::string::npos)
      << message;
}

TEST(IdxTest, TruncatedGzipRejected) {
  TempDir dir;
  const std::string whole = dir.file("whole.gz");
  const std::string cut = dir.file("cut.gz");
  // Random pixels do not compress, so cutting the stream loses pixels.
  std::vector<uint8_t> bytes;
  append_big_endian(bytes, 0x00000803);
  append_big_endian(bytes, 10);
  append_big_endian(bytes, 28);
  append_big_endian(bytes, 28);
  std::mt19937 engine(1);
  for (int i = 0; i < 10 * 28 * 28; ++i) {
    bytes.push_back(static_cast<uint8_t>(engine()));
  }
  write_gzip(whole, bytes);
  fs::copy_file(whole, cut);
  fs::resize_file(cut, fs::file_size(whole) / 2);

  const std::string message =
      error_message([&] { ddpm::read_idx_images(cut); });

  EXPECT_NE(message.find("\"" + cut + "\""), std::string::npos) << message;
  EXPECT_NE(message.find("expected 10x28x28 = 7840"), std::string::npos)
      << message;
}

TEST(IdxTest, MissingFileNamesPath) {
  TempDir dir;
  const std::string path = dir.file("missing.gz");

  const std::string message =
      error_message([&] { ddpm::read_idx_images(path); });

  EXPECT_NE(message.find("failed to open \"" + path + "\""),
            std::string::npos)
      << message;
}

TEST(IdxTest, ExportWritesNumberedPngs) {
  TempDir dir;
  write_gzip(dir.file("images.gz"), idx_bytes());
  const std::string folder = dir.file("out/nested");

  const int64_t count =
      ddpm::export_idx_images(dir.file("images.gz"), folder);

  EXPECT_EQ(count, 3);
  const torch::Tensor expected = expected_images();
  for (int i = 0; i < 3; ++i) {
    const ddpm::Image image =
        ddpm::decode_image(folder + "/" + png_name(i), 1);
    ASSERT_EQ(image.height, kHeight);
    ASSERT_EQ(image.width, kWidth);
    const uint8_t* first = expected[i].data_ptr<uint8_t>();
    EXPECT_EQ(image.pixels,
              std::vector<uint8_t>(first, first + kHeight * kWidth))
        << "image " << i;
  }
  EXPECT_FALSE(fs::exists(folder + "/" + png_name(3)));
}

TEST(IdxTest, ExportStopsAtLimit) {
  TempDir dir;
  write_raw(dir.file("images"), idx_bytes());
  const std::string folder = dir.file("out");

  const int64_t two = ddpm::export_idx_images(dir.file("images"), folder, 2);
  const int64_t capped =
      ddpm::export_idx_images(dir.file("images"), dir.file("all"), 100);

  EXPECT_EQ(two, 2);
  EXPECT_TRUE(fs::exists(folder + "/" + png_name(1)));
  EXPECT_FALSE(fs::exists(folder + "/" + png_name(2)));
  EXPECT_EQ(capped, 3);
}

TEST(IdxTest, FashionMnistTestSet) {
  const std::string path =
      "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
  if (!fs::exists(path)) {
    GTEST_SKIP() << "Fashion-MNIST test images not installed at " << path;
  }

  const torch::Tensor images = ddpm::read_idx_images(path);

  ASSERT_EQ(images.sizes(), (std::vector<int64_t>{10000, 28, 28}));
  // Sums computed with Python's gzip module from the same file.
  EXPECT_EQ(images.sum().item<int64_t>(), 573469082);
  EXPECT_EQ(images[0].sum().item<int64_t>(), 33456);
  EXPECT_EQ(images[9999].sum().item<int64_t>(), 24390);
  EXPECT_EQ(images[0][14][13].item<uint8_t>(), 136);

  TempDir dir;
  EXPECT_EQ(ddpm::export_idx_images(path, dir.file("png"), 2), 2);
  const ddpm::Image last = ddpm::decode_image(
      dir.file("png") + "/" + png_name(1), 1);
  const uint8_t* pixels = images[1].data_ptr<uint8_t>();
  EXPECT_EQ(last.pixels, std::vector<uint8_t>(pixels, pixels + 28 * 28));
}
