#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <stb_image_write.h>

#include "ddpm/io/image.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;

// A fresh folder under the system's temporary directory, removed on exit.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("ddpm-image-test-" + std::to_string(std::random_device{}()));
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
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Writes interleaved 8-bit pixels as a PNG with stb, independently of the
// library's writer.
void write_test_png(const std::string& path, int width, int height,
                    int channels, const std::vector<uint8_t>& pixels) {
  ASSERT_EQ(pixels.size(), static_cast<size_t>(width * height * channels));
  ASSERT_NE(stbi_write_png(path.c_str(), width, height, channels,
                           pixels.data(), width * channels),
            0);
}

ddpm::Image make_image(int64_t height, int64_t width, int64_t channels,
                       std::vector<uint8_t> pixels) {
  return ddpm::Image{height, width, channels, std::move(pixels)};
}

std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const c10::Error& error) {
    return error.what_without_backtrace();
  }
  return "(no error)";
}

// Writes `bytes` to the file `name` in `folder` and returns its path.
std::string write_file(const ddpm::testing::TemporaryFolder& folder,
                       const std::string& name, const std::string& bytes) {
  const std::string path = (folder.path() / name).string();
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

} // namespace

TEST(ImageTest, DecodePngMatchesWrittenPixels) {
  TempDir dir;
  const std::vector<uint8_t> pixels = {255, 0,   0,   0,  255, 0,
                                       0,   0,   255, 10, 20,  30,
                                       40,  50,  60,  70, 80,  90};
  write_test_png(dir.file("rgb.png"), 3, 2, 3, pixels);

  const ddpm::Image image = ddpm::decode_image(dir.file("rgb.png"), 3);

  EXPECT_EQ(image.height, 2);
  EXPECT_EQ(image.width, 3);
  EXPECT_EQ(image.channels, 3);
  EXPECT_EQ(image.pixels, pixels);
}

TEST(ImageTest, DecodeConvertsGrayToRgbAndRgba) {
  TempDir dir;
  write_test_png(dir.file("gray.png"), 3, 1, 1, {0, 100, 255});

  const ddpm::Image rgb = ddpm::decode_image(dir.file("gray.png"), 3);
  const ddpm::Image rgba = ddpm::decode_image(dir.file("gray.png"), 4);

  EXPECT_EQ(rgb.pixels,
            (std::vector<uint8_t>{0, 0, 0, 100, 100, 100, 255, 255, 255}));
  EXPECT_EQ(rgba.pixels, (std::vector<uint8_t>{0, 0, 0, 255, 100, 100, 100,
                                               255, 255, 255, 255, 255}));
}

TEST(ImageTest, DecodeConvertsRgbToGray) {
  TempDir dir;
  // Red, green, blue, white.
  write_test_png(dir.file("rgb.png"), 4, 1, 3,
                 {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255});

  const ddpm::Image gray = ddpm::decode_image(dir.file("rgb.png"), 1);
  const ddpm::Image gray_alpha = ddpm::decode_image(dir.file("rgb.png"), 2);

  // stb computes (77 R + 150 G + 29 B) >> 8. PIL's convert("L") rounds
  // ITU-R BT.601 luma instead and gives 76, 150, 29, 255 for these pixels.
  EXPECT_EQ(gray.channels, 1);
  EXPECT_EQ(gray.pixels, (std::vector<uint8_t>{76, 149, 28, 255}));
  EXPECT_EQ(gray_alpha.pixels,
            (std::vector<uint8_t>{76, 255, 149, 255, 28, 255, 255, 255}));
}

TEST(ImageTest, DecodeRgbaToRgbDropsAlpha) {
  TempDir dir;
  write_test_png(dir.file("rgba.png"), 2, 1, 4,
                 {10, 20, 30, 0, 40, 50, 60, 128});

  const ddpm::Image rgb = ddpm::decode_image(dir.file("rgba.png"), 3);

  EXPECT_EQ(rgb.pixels, (std::vector<uint8_t>{10, 20, 30, 40, 50, 60}));
}

TEST(ImageTest, DecodeMissingFileNamesPath) {
  TempDir dir;
  const std::string path = dir.file("missing.png");

  const std::string message =
      error_message([&] { ddpm::decode_image(path, 3); });

  EXPECT_NE(message.find("failed to open \"" + path + "\""),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("No such file or directory"), std::string::npos)
      << message;
}

TEST(ImageTest, DecodeCorruptFileNamesPathAndReason) {
  TempDir dir;
  const std::string path = dir.file("text.png");
  std::ofstream(path) << "this is not an image\n";

  const std::string message =
      error_message([&] { ddpm::decode_image(path, 3); });

  EXPECT_NE(message.find("failed to decode \"" + path + "\": "),
            std::string::npos)
      << message;
  // stb's reason follows the colon.
  EXPECT_GT(message.size(), message.find("\": ") + 3) << message;
}

TEST(ImageTest, DecodeEmptyFileRejected) {
  TempDir dir;
  const std::string path = dir.file("empty.png");
  std::ofstream(path).close();

  const std::string message =
      error_message([&] { ddpm::decode_image(path, 1); });

  EXPECT_NE(message.find("the file is empty"), std::string::npos) << message;
}

TEST(ImageTest, DecodeRejectsInvalidChannels) {
  TempDir dir;
  write_test_png(dir.file("gray.png"), 1, 1, 1, {7});

  const std::string message =
      error_message([&] { ddpm::decode_image(dir.file("gray.png"), 5); });

  EXPECT_NE(message.find("channels must be"), std::string::npos) << message;
  EXPECT_NE(message.find("got 5"), std::string::npos) << message;
}

TEST(ImageTest, ResizeAndCropGivesRequestedShape) {
  const struct {
    int64_t height, width, out_height, out_width;
  } cases[] = {{10, 20, 8, 8},  {20, 10, 8, 8},   {3, 5, 16, 16},
               {7, 7, 4, 9},    {64, 48, 32, 16}, {1, 1, 5, 3},
               {100, 3, 10, 10}};
  for (const auto& c : cases) {
    const ddpm::Image image = make_image(
        c.height, c.width, 3,
        std::vector<uint8_t>(c.height * c.width * 3, 90));

    const ddpm::Image out =
        ddpm::resize_and_center_crop(image, c.out_height, c.out_width);

    EXPECT_EQ(out.height, c.out_height);
    EXPECT_EQ(out.width, c.out_width);
    EXPECT_EQ(out.channels, 3);
    EXPECT_EQ(out.pixels.size(),
              static_cast<size_t>(c.out_height * c.out_width * 3));
  }
}

TEST(ImageTest, ResizeKeepsConstantColor) {
  const std::vector<uint8_t> color = {10, 200, 77, 255};
  for (const int64_t channels : {1, 3, 4}) {
    for (const auto& size : {std::pair<int64_t, int64_t>{37, 23},
                             std::pair<int64_t, int64_t>{5, 7}}) {
      std::vector<uint8_t> pixels;
      for (int64_t i = 0; i < size.first * size.second; ++i) {
        pixels.insert(pixels.end(), color.begin(), color.begin() + channels);
      }
      const ddpm::Image image =
          make_image(size.first, size.second, channels, pixels);

      const ddpm::Image out = ddpm::resize_and_center_crop(image, 16, 16);

      ASSERT_EQ(out.pixels.size(), static_cast<size_t>(16 * 16 * channels));
      for (size_t i = 0; i < out.pixels.size(); ++i) {
        ASSERT_EQ(out.pixels[i], color[i % channels])
            << "channels " << channels << ", source " << size.first << "x"
            << size.second << ", byte " << i;
      }
    }
  }
}

TEST(ImageTest, CropOfWideImageTakesCenterColumns) {
  // 4 wide, 2 tall: the height already matches, so only the crop applies.
  const ddpm::Image image =
      make_image(2, 4, 1, {0, 1, 2, 3, 10, 11, 12, 13});

  const ddpm::Image out = ddpm::resize_and_center_crop(image, 2, 2);

  EXPECT_EQ(out.pixels, (std::vector<uint8_t>{1, 2, 11, 12}));
}

TEST(ImageTest, CropOfTallImageTakesCenterRows) {
  const ddpm::Image image = make_image(
      4, 2, 2, {0, 100, 1, 101, 2, 102, 3, 103, 4, 104, 5, 105, 6, 106, 7,
                107});

  const ddpm::Image out = ddpm::resize_and_center_crop(image, 2, 2);

  EXPECT_EQ(out.channels, 2);
  EXPECT_EQ(out.pixels,
            (std::vector<uint8_t>{2, 102, 3, 103, 4, 104, 5, 105}));
}

TEST(ImageTest, ExactSizeCopiesPixels) {
  std::vector<uint8_t> pixels(5 * 6 * 3);
  std::mt19937 engine(3);
  for (uint8_t& value : pixels) {
    value = static_cast<uint8_t>(engine());
  }
  const ddpm::Image image = make_image(5, 6, 3, pixels);

  const ddpm::Image out = ddpm::resize_and_center_crop(image, 5, 6);

  EXPECT_EQ(out.pixels, pixels);
}

TEST(ImageTest, DownscaleFiltersStripes) {
  // Alternating black and white columns shrunk fourfold blend to grays.
  // Point sampling would keep pure black or white, and stb's Mitchell
  // filter gives 102 or 153 here.
  std::vector<uint8_t> pixels;
  for (int y = 0; y < 8; ++y) {
    for (int x = 0; x < 8; ++x) {
      pixels.push_back(x % 2 == 0 ? 0 : 255);
    }
  }
  const ddpm::Image image = make_image(8, 8, 1, pixels);

  const ddpm::Image out = ddpm::resize_and_center_crop(image, 2, 2);

  for (const uint8_t value : out.pixels) {
    EXPECT_NEAR(value, 128, 32);
  }
}

TEST(ImageTest, ResizeRejectsZeroSize) {
  const ddpm::Image image = make_image(2, 2, 1, {1, 2, 3, 4});

  const std::string message =
      error_message([&] { ddpm::resize_and_center_crop(image, 0, 4); });

  EXPECT_NE(message.find("at least 1x1"), std::string::npos) << message;
  EXPECT_NE(message.find("got 4x0"), std::string::npos) << message;
}

TEST(ImageTest, ImageToTensorIsChwInUnitRange) {
  const ddpm::Image image = make_image(1, 2, 3, {0, 51, 102, 153, 204, 255});

  const torch::Tensor tensor = ddpm::image_to_tensor(image);

  ASSERT_EQ(tensor.sizes(), (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(tensor.scalar_type(), torch::kFloat);
  const torch::Tensor expected =
      torch::tensor({0, 153, 51, 204, 102, 255}, torch::kFloat)
          .reshape({3, 1, 2})
          .div(255);
  EXPECT_TRUE(torch::equal(tensor, expected)) << tensor;
}

TEST(ImageTest, MakeGridPlacesImagesAndPadding) {
  // Five 2x3 one-channel images, image k filled with k + 1, two per row.
  const torch::Tensor images =
      torch::arange(1, 6, torch::kFloat).view({5, 1, 1, 1}).expand(
          {5, 1, 2, 3});

  const torch::Tensor grid =
      ddpm::make_grid(images, 2, /*padding=*/2, /*pad_value=*/0.5);

  // Three rows of cells 4 high, two columns of cells 5 wide, plus padding.
  ASSERT_EQ(grid.sizes(), (std::vector<int64_t>{1, 14, 12}));
  torch::Tensor covered = torch::zeros({14, 12}, torch::kBool);
  for (int64_t k = 0; k < 5; ++k) {
    const int64_t top = 2 + (k / 2) * 4;
    const int64_t left = 2 + (k % 2) * 5;
    const torch::Tensor cell =
        grid[0].slice(0, top, top + 2).slice(1, left, left + 3);
    EXPECT_TRUE(torch::all(cell == k + 1).item<bool>())
        << "image " << k << " at (" << top << ", " << left << "): " << cell;
    covered.slice(0, top, top + 2).slice(1, left, left + 3).fill_(true);
  }
  // Every other pixel, the empty sixth cell included, is padding.
  const torch::Tensor padding = grid[0].masked_select(~covered);
  EXPECT_EQ(padding.numel(), 14 * 12 - 5 * 6);
  EXPECT_TRUE(torch::all(padding == 0.5).item<bool>()) << grid;
}

TEST(ImageTest, MakeGridNarrowsToImageCount) {
  // As torchvision: three images with eight per row give three columns.
  const torch::Tensor images = torch::ones({3, 3, 4, 4});

  const torch::Tensor grid = ddpm::make_grid(images, 8);

  EXPECT_EQ(grid.sizes(), (std::vector<int64_t>{3, 8, 20}));
  EXPECT_EQ(grid.sum().item<double>(), 3 * 3 * 16);
}

TEST(ImageTest, MakeGridOfOneImageHasNoPadding) {
  const torch::Tensor images = torch::rand({1, 3, 5, 4});

  const torch::Tensor grid = ddpm::make_grid(images, 4);

  EXPECT_TRUE(torch::equal(grid, images[0]));
}

TEST(ImageTest, MakeGridRejectsThreeDimensions) {
  const std::string message = error_message(
      [] { ddpm::make_grid(torch::zeros({3, 4, 4}), 2); });

  EXPECT_NE(message.find("must have 4 dimensions"), std::string::npos)
      << message;
}

TEST(ImageTest, WritePngRoundTripsBitwise) {
  TempDir dir;
  for (const int64_t channels : {1, 2, 3, 4}) {
    const torch::Tensor bytes =
        torch::randint(0, 256, {channels, 7, 9}, torch::kUInt8);
    const std::string path =
        dir.file("round-" + std::to_string(channels) + ".png");

    ddpm::write_png(path, bytes.to(torch::kFloat).div(255));
    const ddpm::Image image = ddpm::decode_image(path, channels);

    ASSERT_EQ(image.height, 7);
    ASSERT_EQ(image.width, 9);
    const torch::Tensor decoded =
        torch::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                         {7, 9, channels}, torch::kUInt8)
            .permute({2, 0, 1});
    EXPECT_TRUE(torch::equal(decoded, bytes)) << "channels " << channels;
  }
}

TEST(ImageTest, WritePngRoundsLikeSaveImage) {
  TempDir dir;
  const torch::Tensor values =
      torch::tensor({-0.1f, 0.0f, 0.5f, 1.0f, 1.5f, 0.2f, 0.998f})
          .view({1, 1, 7});

  ddpm::write_png(dir.file("round.png"), values);
  const ddpm::Image image = ddpm::decode_image(dir.file("round.png"), 1);

  // clamp(x * 255 + 0.5, 0, 255), truncated: 0.5 -> 128, 0.2 -> 51,
  // 0.998 -> 254.99 -> 254.
  EXPECT_EQ(image.pixels,
            (std::vector<uint8_t>{0, 0, 128, 255, 255, 51, 254}));
}

TEST(ImageTest, WritePngLeavesNoTemporaryFile) {
  TempDir dir;

  ddpm::write_png(dir.file("out.png"), torch::full({3, 2, 2}, 0.25));

  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"out.png"});
}

TEST(ImageTest, WritePngOverwritesExistingFile) {
  TempDir dir;
  const std::string path = dir.file("out.png");

  ddpm::write_png(path, torch::zeros({1, 2, 2}));
  ddpm::write_png(path, torch::ones({1, 2, 2}));

  EXPECT_EQ(ddpm::decode_image(path, 1).pixels,
            (std::vector<uint8_t>{255, 255, 255, 255}));
}

TEST(ImageTest, WritePngMissingFolderNamesPathAndReason) {
  TempDir dir;
  const std::string path = dir.file("no-such-folder/out.png");

  const std::string message = error_message(
      [&] { ddpm::write_png(path, torch::zeros({1, 2, 2})); });

  EXPECT_NE(message.find("failed to write \"" + path + "\""),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("No such file or directory"), std::string::npos)
      << message;
}

TEST(ImageTest, WritePngRejectsBadTensors) {
  TempDir dir;
  const std::string path = dir.file("out.png");

  const std::string two_dims =
      error_message([&] { ddpm::write_png(path, torch::zeros({4, 4})); });
  const std::string integer = error_message(
      [&] { ddpm::write_png(path, torch::zeros({1, 4, 4}, torch::kUInt8)); });
  const std::string five_channels =
      error_message([&] { ddpm::write_png(path, torch::zeros({5, 4, 4})); });

  EXPECT_NE(two_dims.find("must have 3 dimensions"), std::string::npos)
      << two_dims;
  EXPECT_NE(integer.find("floating-point"), std::string::npos) << integer;
  EXPECT_NE(five_channels.find("got 5"), std::string::npos) << five_channels;
  EXPECT_FALSE(fs::exists(path));
}

TEST(ImageTest, WritePngOfImageMatchesPixels) {
  TempDir dir;
  const ddpm::Image image = make_image(2, 2, 3, {1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                 10, 11, 12});

  ddpm::write_png(dir.file("image.png"), image);

  EXPECT_EQ(ddpm::decode_image(dir.file("image.png"), 3).pixels,
            image.pixels);
}

TEST(ImageTest, SaveImageGridWritesPaddedGrid) {
  TempDir dir;
  const torch::Tensor images = torch::ones({4, 3, 2, 2});

  ddpm::save_image_grid(images, dir.file("grid.png"), 2);
  const ddpm::Image grid = ddpm::decode_image(dir.file("grid.png"), 3);

  ASSERT_EQ(grid.height, 10);
  ASSERT_EQ(grid.width, 10);
  // Row 0 is padding. Row 2 crosses the images at x = 2, 3 and 6, 7.
  for (int64_t x = 0; x < 10; ++x) {
    EXPECT_EQ(grid.pixels[(0 * 10 + x) * 3], 0) << "x " << x;
    const bool inside = x == 2 || x == 3 || x == 6 || x == 7;
    EXPECT_EQ(grid.pixels[(2 * 10 + x) * 3], inside ? 255 : 0) << "x " << x;
  }
}

TEST(ImageTest, ImageExtensionsAreLowerCase) {
  const std::vector<std::string>& extensions = ddpm::image_extensions();

  EXPECT_EQ(extensions,
            (std::vector<std::string>{"png", "jpg", "jpeg", "bmp", "tga",
                                      "gif", "psd", "hdr", "pic", "pnm",
                                      "ppm", "pgm"}));
}

// An input found by the fuzzer: its Huffman table declares more than 256
// codes, on which stb_image 2.27 writes out of bounds.
TEST(ImageTest, DecodeRejectsOversizedHuffmanTable) {
  const std::string path = std::string(DDPM_SOURCE_DIR) +
      "/tests/fuzz/regressions/image_folder/jpeg-huffman-overflow.jpg";
  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(path, 3),
                         "corrupt JPEG, a Huffman table declares");
}

// An input found by the fuzzer: a P5 header whose width has 72 digits, on
// which stb_image 2.27 overflows an int.
TEST(ImageTest, DecodeRejectsPnmHeaderFieldBeyondInt) {
  const std::string path = std::string(DDPM_SOURCE_DIR) +
      "/tests/fuzz/regressions/image_folder/pnm-header-overflow.pgm";
  DDPM_EXPECT_THROW_WITH(
      ddpm::decode_image(path, 3),
      "corrupt PNM header, its width field (starting 5555555555) is larger "
      "than 2147483647");
}

// The largest int passes the header check and then fails max_image_pixels.
// One more fails the header check, here in the height field after a comment.
TEST(ImageTest, DecodeChecksEachPnmHeaderField) {
  ddpm::testing::TemporaryFolder folder;
  const std::string largest =
      write_file(folder, "largest.ppm", "P6 2147483647 1 255\n\x01\x02\x03");
  const std::string beyond = write_file(
      folder, "beyond.ppm", "P6 1\n# height next\n2147483648 255\n\x01\x02");
  const std::string maximum =
      write_file(folder, "maximum.pgm", "P5 1 1 99999999999\n\x01");
  const std::string valid =
      write_file(folder, "valid.pgm", "P5\n# one pixel\n1 1 255\n\x80");

  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(largest, 3),
                         "more than max_image_pixels");
  DDPM_EXPECT_THROW_WITH(
      ddpm::decode_image(beyond, 3),
      "its height field (starting 2147483648) is larger than 2147483647");
  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(maximum, 1),
                         "its maximum value field (starting 9999999999)");
  const ddpm::Image image = ddpm::decode_image(valid, 1);
  EXPECT_EQ(image.pixels, std::vector<uint8_t>{0x80});
}

// 16-bit PNM files go through this library's channel conversion, because
// stb_image 2.27 overruns its buffers converting them (an input found by the
// fuzzer). Samples are big-endian; the top byte is kept.
TEST(ImageTest, DecodesSixteenBitPnmToEveryChannelCount) {
  ddpm::testing::TemporaryFolder folder;
  // Two gray pixels, 0x1234 and 0xff00.
  const std::string gray = write_file(
      folder, "gray.pgm", std::string("P5 2 1 65535\n\x12\x34\xff\x00", 17));
  // One RGB pixel, r = 0x8000, g = 0x4000, b = 0xffff.
  const std::string rgb = write_file(
      folder, "rgb.ppm",
      std::string("P6 1 1 1000\n\x80\x00\x40\x00\xff\xff", 18));

  EXPECT_EQ(ddpm::decode_image(gray, 1).pixels,
            (std::vector<uint8_t>{0x12, 0xff}));
  EXPECT_EQ(ddpm::decode_image(gray, 2).pixels,
            (std::vector<uint8_t>{0x12, 0xff, 0xff, 0xff}));
  EXPECT_EQ(ddpm::decode_image(gray, 3).pixels,
            (std::vector<uint8_t>{0x12, 0x12, 0x12, 0xff, 0xff, 0xff}));
  EXPECT_EQ(ddpm::decode_image(gray, 4).pixels,
            (std::vector<uint8_t>{0x12, 0x12, 0x12, 0xff, 0xff, 0xff, 0xff,
                                  0xff}));
  // (77 * 0x8000 + 150 * 0x4000 + 29 * 0xffff) >> 8 = 0x68ff.
  EXPECT_EQ(ddpm::decode_image(rgb, 1).pixels, (std::vector<uint8_t>{0x68}));
  EXPECT_EQ(ddpm::decode_image(rgb, 2).pixels,
            (std::vector<uint8_t>{0x68, 0xff}));
  EXPECT_EQ(ddpm::decode_image(rgb, 3).pixels,
            (std::vector<uint8_t>{0x80, 0x40, 0xff}));
  EXPECT_EQ(ddpm::decode_image(rgb, 4).pixels,
            (std::vector<uint8_t>{0x80, 0x40, 0xff, 0xff}));
}

TEST(ImageTest, DecodeRejectsTruncatedOrZeroSizePnm) {
  ddpm::testing::TemporaryFolder folder;
  const std::string short_8_bit =
      write_file(folder, "short.ppm", "P6 2 2 255\nabcdefghijk");
  const std::string short_16_bit =
      write_file(folder, "short16.pgm", "P5 2 1 300\nabc");
  const std::string zero_width =
      write_file(folder, "zero.pgm", "P5 0 4 255\n");

  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(short_8_bit, 3),
                         "truncated PNM file, its header declares 2x2 pixels "
                         "(12 bytes) but 11 bytes follow it");
  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(short_16_bit, 3),
                         "(4 bytes) but 3 bytes follow it");
  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(zero_width, 1),
                         "corrupt PNM header, it declares 0x4 pixels; both "
                         "sides must be at least 1");
}

// An input found by the fuzzer: a progressive JPEG whose scans use a
// quantization table and an AC Huffman table that no segment defines, which
// stb_image 2.27 reads uninitialised. The quantization table is found first.
TEST(ImageTest, DecodeRejectsJpegWithUndefinedTables) {
  const std::string path = std::string(DDPM_SOURCE_DIR) +
      "/tests/fuzz/regressions/image_folder/jpeg-undefined-huffman-table.jpg";
  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(path, 3),
                         "corrupt JPEG, a scan uses quantization table 1, "
                         "which no DQT segment before it defines");
}

// The seed JPEG with one table id changed at a time, so that a table its
// scan uses is no longer defined. The offsets are those of the table id
// bytes in tests/fuzz/corpus/image_folder/rgb.jpg.
TEST(ImageTest, DecodeRejectsEachUndefinedJpegTable) {
  const std::string seed = std::string(DDPM_SOURCE_DIR) +
                           "/tests/fuzz/corpus/image_folder/rgb.jpg";
  std::ifstream in(seed, std::ios::binary);
  const std::string original((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  ASSERT_EQ(original.size(), 719u);
  ASSERT_EQ(ddpm::decode_image(seed, 3).pixels.size(), 6u * 5u * 3u);

  struct Case {
    size_t offset;
    char id;
    std::string message;
  };
  const std::vector<Case> cases = {
      {93, 0x00, "a scan uses quantization table 1, which no DQT segment"},
      {397, 0x00, "a scan uses DC Huffman table 1, which no DHT segment"},
      {430, 0x10, "a scan uses AC Huffman table 1, which no DHT segment"},
  };
  ddpm::testing::TemporaryFolder folder;
  for (const Case& c : cases) {
    std::string bytes = original;
    bytes[c.offset] = c.id;
    const std::string path = write_file(folder, "table.jpg", bytes);
    DDPM_EXPECT_THROW_WITH(ddpm::decode_image(path, 3), c.message);
  }
}

// Every input that once made the image fuzz target fail must now decode or
// raise c10::Error; under the sanitizer build this also checks memory use.
TEST(ImageTest, DecodeFuzzRegressionsFailCleanly) {
  const std::filesystem::path folder =
      std::filesystem::path(DDPM_SOURCE_DIR) / "tests/fuzz/regressions/image_folder";
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    ++files;
    try {
      const auto image = ddpm::decode_image(entry.path().string(), 3);
      EXPECT_EQ(int64_t(image.pixels.size()),
                image.height * image.width * 3) << entry.path();
    } catch (const c10::Error&) {
    }
  }
  EXPECT_GE(files, 6);
}

TEST(ImageTest, DecodeRejectsSizeBeyondLimit) {
  const std::string path = std::string(DDPM_SOURCE_DIR) +
      "/tests/fuzz/regressions/image_folder/png-size-overflow.png";
  DDPM_EXPECT_THROW_WITH(ddpm::decode_image(path, 3),
                         "declares 4294967295x4294920516 = "
                         "18446543150844524220 pixels, more than "
                         "max_image_pixels = 89478485");
}
