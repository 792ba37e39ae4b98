#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <stb_image_write.h>

#include "ddpm/data/image_folder.h"
#include "ddpm/log.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;

// A fresh folder under the system's temporary directory, removed on exit.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("ddpm-folder-test-" + std::to_string(std::random_device{}()));
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
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

// Collects warnings while alive and restores the previous sink after.
class WarningCapture {
 public:
  WarningCapture() {
    previous_ = ddpm::set_log_sink(
        [this](ddpm::LogLevel level, const std::string& message) {
          if (level == ddpm::LogLevel::kWarning) {
            std::lock_guard<std::mutex> lock(mutex_);
            warnings_.push_back(message);
          }
        });
  }
  ~WarningCapture() { ddpm::set_log_sink(previous_); }
  std::vector<std::string> warnings() {
    std::lock_guard<std::mutex> lock(mutex_);
    return warnings_;
  }

 private:
  ddpm::LogSink previous_;
  std::mutex mutex_;
  std::vector<std::string> warnings_;
};

void write_png_pixels(const std::string& path, int width, int height,
                      int channels, const std::vector<uint8_t>& pixels) {
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_NE(stbi_write_png(path.c_str(), width, height, channels,
                           pixels.data(), width * channels),
            0);
}

void write_gray_png(const std::string& path, int width, int height,
                    uint8_t value) {
  write_png_pixels(path, width, height, 1,
                   std::vector<uint8_t>(width * height, value));
}

// Writes an image whose pixel (y, x) is 20 * id + x, so that a sample shows
// both which image it came from and whether it was flipped.
void write_numbered_png(const std::string& path, int id, int width,
                        int height) {
  std::vector<uint8_t> pixels;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      pixels.push_back(static_cast<uint8_t>(20 * id + x));
    }
  }
  write_png_pixels(path, width, height, 1, pixels);
}

void write_text(const std::string& path) {
  std::ofstream(path) << "not an image\n";
}

std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const c10::Error& error) {
    return error.what_without_backtrace();
  }
  return "(no error)";
}

ddpm::ImageFolderOptions folder_options(const std::string& folder,
                                        int64_t height, int64_t width,
                                        int64_t channels) {
  ddpm::ImageFolderOptions options;
  options.folder = folder;
  options.height = height;
  options.width = width;
  options.channels = channels;
  return options;
}

// Ten numbered 4x6 gray images for the loader tests.
class BatchLoaderTest : public testing::Test {
 protected:
  void SetUp() override {
    for (int id = 0; id < kImages; ++id) {
      write_numbered_png(dir_.file("img" + std::to_string(id) + ".png"), id,
                         6, 4);
    }
    dataset_ = std::make_shared<ddpm::ImageFolder>(
        folder_options(dir_.str(), 4, 6, 1));
  }

  std::vector<torch::Tensor> take(ddpm::BatchLoaderOptions options,
                                  int batches) {
    ddpm::BatchLoader loader(dataset_, options);
    std::vector<torch::Tensor> out;
    for (int i = 0; i < batches; ++i) {
      out.push_back(loader.next());
    }
    return out;
  }

  // Returns the id of the image a sample [1, 4, 6] came from.
  static int64_t image_id(const torch::Tensor& sample) {
    const int64_t first = std::lround(sample[0][0][0].item<float>() * 255);
    return first / 20;
  }

  static constexpr int kImages = 10;
  TempDir dir_;
  std::shared_ptr<ddpm::ImageFolder> dataset_;
};

ddpm::BatchLoaderOptions loader_options(int64_t batch_size,
                                        int64_t num_workers, uint64_t seed,
                                        bool flip) {
  ddpm::BatchLoaderOptions options;
  options.batch_size = batch_size;
  options.num_workers = num_workers;
  options.prefetch = 2;
  options.seed = seed;
  options.augment_horizontal_flip = flip;
  return options;
}

} // namespace

TEST(ImageFolderTest, ListsImagesRecursivelyAndSorted) {
  TempDir dir;
  write_gray_png(dir.file("b.png"), 2, 2, 1);
  write_gray_png(dir.file("a/c.PNG"), 2, 2, 2);
  write_gray_png(dir.file("a/deeper/d.Png"), 2, 2, 3);
  write_text(dir.file("notes.txt"));
  write_text(dir.file("png"));

  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 1));

  ASSERT_EQ(folder.size(), 3);
  EXPECT_EQ(folder.paths(),
            (std::vector<std::string>{dir.file("a/c.PNG"),
                                      dir.file("a/deeper/d.Png"),
                                      dir.file("b.png")}));
  EXPECT_EQ(folder.get(0)[0][0][0].item<uint8_t>(), 2);
  EXPECT_EQ(folder.get(2)[0][0][0].item<uint8_t>(), 1);
}

TEST(ImageFolderTest, MissingFolderNamesPath) {
  TempDir dir;
  const std::string missing = dir.file("missing");

  const std::string message = error_message(
      [&] { ddpm::ImageFolder(folder_options(missing, 8, 8, 3)); });

  EXPECT_NE(message.find("image folder does not exist: \"" + missing + "\""),
            std::string::npos)
      << message;
}

TEST(ImageFolderTest, FileInsteadOfFolderRejected) {
  TempDir dir;
  write_text(dir.file("file.txt"));

  const std::string message = error_message([&] {
    ddpm::ImageFolder(folder_options(dir.file("file.txt"), 8, 8, 3));
  });

  EXPECT_NE(message.find("not a directory"), std::string::npos) << message;
}

TEST(ImageFolderTest, EmptyFolderListsExtensions) {
  TempDir dir;
  write_text(dir.file("readme.txt"));

  const std::string message = error_message(
      [&] { ddpm::ImageFolder(folder_options(dir.str(), 8, 8, 3)); });

  EXPECT_NE(message.find("no images found in \"" + dir.str() + "\""),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("png, jpg, jpeg, bmp"), std::string::npos)
      << message;
  EXPECT_NE(message.find("pgm"), std::string::npos) << message;
}

TEST(ImageFolderTest, InvalidOptionsRejected) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 1);

  const std::string size = error_message(
      [&] { ddpm::ImageFolder(folder_options(dir.str(), 0, 8, 3)); });
  const std::string channels = error_message(
      [&] { ddpm::ImageFolder(folder_options(dir.str(), 8, 8, 0)); });

  EXPECT_NE(size.find("got 8x0"), std::string::npos) << size;
  EXPECT_NE(channels.find("channels must be"), std::string::npos)
      << channels;
}

TEST(ImageFolderTest, RejectsEachInvalidOption) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 1);
  const auto with = [&dir](auto change) {
    ddpm::ImageFolderOptions options = folder_options(dir.str(), 2, 2, 1);
    change(options);
    return options;
  };
  const std::vector<std::pair<ddpm::ImageFolderOptions, std::string>> cases =
      {
          {with([](auto& o) { o.height = 0; }),
           "image size must be at least 1x1 pixels, got 2x0"},
          {with([](auto& o) { o.width = -3; }),
           "image size must be at least 1x1 pixels, got -3x2"},
          {with([](auto& o) { o.channels = 5; }),
           "channels must be 1 (gray), 2 (gray and alpha), 3 (RGB) or 4 "
           "(RGBA), got 5"},
          {with([](auto& o) { o.channels = 0; }),
           "(RGBA), got 0"},
          {with([](auto& o) { o.cache_max_bytes = -1; }),
           "cache_max_bytes must be at least 0, got -1"},
          {with([](auto& o) { o.max_image_pixels = 0; }),
           "max_image_pixels must be at least 1, got 0"},
          {with([](auto& o) { o.folder = ""; }),
           "image folder does not exist: \"\""},
      };
  for (const auto& [invalid, expected] : cases) {
    // A copy, because clang 14 cannot capture structured bindings.
    const auto options = invalid;
    const std::string message =
        error_message([&] { ddpm::ImageFolder folder(options); });
    EXPECT_NE(message.find(expected), std::string::npos)
        << "expected \"" << expected << "\", got: " << message;
  }
}

TEST(ImageFolderTest, GetReturnsContiguousUint8Chw) {
  TempDir dir;
  // 2x2 RGB: red, green / blue, white.
  write_png_pixels(dir.file("rgb.png"), 2, 2, 3,
                   {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255});
  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 3));

  const torch::Tensor image = folder.get(0);

  ASSERT_EQ(image.sizes(), (std::vector<int64_t>{3, 2, 2}));
  EXPECT_EQ(image.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(image.is_contiguous());
  const torch::Tensor expected =
      torch::tensor({255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255},
                    torch::kUInt8)
          .view({3, 2, 2});
  EXPECT_TRUE(torch::equal(image, expected)) << image;
}

TEST(ImageFolderTest, GetConvertsGrayToRgb) {
  TempDir dir;
  write_png_pixels(dir.file("gray.png"), 2, 1, 1, {40, 200});
  ddpm::ImageFolder folder(folder_options(dir.str(), 1, 2, 3));

  const torch::Tensor image = folder.get(0);

  ASSERT_EQ(image.sizes(), (std::vector<int64_t>{3, 1, 2}));
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_EQ(image[c][0][0].item<uint8_t>(), 40);
    EXPECT_EQ(image[c][0][1].item<uint8_t>(), 200);
  }
}

TEST(ImageFolderTest, GetResizesToOutputSize) {
  TempDir dir;
  write_gray_png(dir.file("big.png"), 30, 20, 123);
  ddpm::ImageFolder folder(folder_options(dir.str(), 8, 8, 1));

  const torch::Tensor image = folder.get(0);

  ASSERT_EQ(image.sizes(), (std::vector<int64_t>{1, 8, 8}));
  EXPECT_TRUE(torch::all(image == 123).item<bool>()) << image;
}

TEST(ImageFolderTest, GetRejectsIndexOutOfRange) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 1);
  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 1));

  const std::string message = error_message([&] { folder.get(1); });

  EXPECT_NE(message.find("must be in [0, 1), got 1"), std::string::npos)
      << message;
}

TEST(ImageFolderTest, CorruptFileSkippedWithOneWarning) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 10);
  write_text(dir.file("b.png"));
  write_gray_png(dir.file("c.png"), 2, 2, 30);
  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 1));
  WarningCapture capture;

  // Index 1 is the corrupt file, so the next readable one comes back.
  const torch::Tensor skipped = folder.get(1);
  for (int round = 0; round < 3; ++round) {
    for (int64_t i = 0; i < folder.size(); ++i) {
      folder.get(i);
    }
  }

  EXPECT_EQ(skipped[0][0][0].item<uint8_t>(), 30);
  EXPECT_EQ(folder.get(0)[0][0][0].item<uint8_t>(), 10);
  const std::vector<std::string> warnings = capture.warnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("failed to decode \"" + dir.file("b.png")),
            std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find("skipping"), std::string::npos) << warnings[0];
}

TEST(ImageFolderTest, CorruptLastFileWrapsToFirst) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 10);
  write_text(dir.file("z.png"));
  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 1));
  WarningCapture capture;

  EXPECT_EQ(folder.get(1)[0][0][0].item<uint8_t>(), 10);
  EXPECT_EQ(capture.warnings().size(), 1u);
}

TEST(ImageFolderTest, AllCorruptFilesThrow) {
  TempDir dir;
  write_text(dir.file("a.png"));
  write_text(dir.file("b.jpg"));
  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 1));
  WarningCapture capture;

  const std::string first = error_message([&] { folder.get(0); });
  const std::string second = error_message([&] { folder.get(1); });

  EXPECT_NE(first.find("no readable images in \"" + dir.str() +
                       "\": all 2 files failed to decode"),
            std::string::npos)
      << first;
  EXPECT_EQ(second, first);
  EXPECT_EQ(capture.warnings().size(), 2u);
}

TEST(ImageFolderTest, CacheServesRemovedFile) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 77);
  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 1));

  const torch::Tensor first = folder.get(0);
  fs::remove(dir.file("a.png"));
  const torch::Tensor second = folder.get(0);

  EXPECT_TRUE(torch::equal(first, second));
  EXPECT_TRUE(torch::all(second == 77).item<bool>());
}

TEST(ImageFolderTest, CachedImageIsCopiedOut) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 77);
  ddpm::ImageFolder folder(folder_options(dir.str(), 2, 2, 1));

  folder.get(0).fill_(0);

  EXPECT_TRUE(torch::all(folder.get(0) == 77).item<bool>());
}

TEST(ImageFolderTest, CacheOffRereadsFiles) {
  for (const bool too_small : {false, true}) {
    TempDir dir;
    write_gray_png(dir.file("a.png"), 2, 2, 77);
    ddpm::ImageFolderOptions options = folder_options(dir.str(), 2, 2, 1);
    if (too_small) {
      options.cache_max_bytes = 3; // One image needs 4 bytes.
    } else {
      options.cache_images = false;
    }
    ddpm::ImageFolder folder(options);
    WarningCapture capture;

    folder.get(0);
    fs::remove(dir.file("a.png"));
    const std::string message = error_message([&] { folder.get(0); });

    EXPECT_NE(message.find("no readable images"), std::string::npos)
        << "too_small " << too_small << ": " << message;
  }
}

TEST_F(BatchLoaderTest, BatchHasShapeTypeAndRange) {
  const std::vector<torch::Tensor> batches =
      take(loader_options(4, 0, 7, false), 1);

  const torch::Tensor& batch = batches[0];
  ASSERT_EQ(batch.sizes(), (std::vector<int64_t>{4, 1, 4, 6}));
  EXPECT_EQ(batch.scalar_type(), torch::kFloat);
  EXPECT_GE(batch.min().item<float>(), 0.0f);
  EXPECT_LE(batch.max().item<float>(), 1.0f);
  for (int64_t i = 0; i < 4; ++i) {
    const torch::Tensor expected =
        dataset_->get(image_id(batch[i])).to(torch::kFloat).div(255);
    EXPECT_TRUE(torch::equal(batch[i], expected)) << "sample " << i;
  }
}

TEST_F(BatchLoaderTest, SameSeedSameBatchesForAnyWorkerCount) {
  const std::vector<torch::Tensor> reference =
      take(loader_options(4, 0, 42, true), 8);

  for (const int64_t workers : {1, 3}) {
    const std::vector<torch::Tensor> batches =
        take(loader_options(4, workers, 42, true), 8);
    for (size_t k = 0; k < batches.size(); ++k) {
      EXPECT_TRUE(torch::equal(batches[k], reference[k]))
          << "workers " << workers << ", batch " << k;
    }
  }
}

TEST_F(BatchLoaderTest, DifferentSeedDifferentOrder) {
  const std::vector<torch::Tensor> first =
      take(loader_options(5, 0, 1, false), 2);
  const std::vector<torch::Tensor> second =
      take(loader_options(5, 0, 2, false), 2);

  EXPECT_FALSE(torch::equal(torch::cat(first), torch::cat(second)));
}

TEST_F(BatchLoaderTest, EachEpochIsPermutation) {
  // Batches of 5 from 10 images: every two batches make one epoch.
  const std::vector<torch::Tensor> batches =
      take(loader_options(5, 2, 3, false), 6);

  std::vector<std::vector<int64_t>> epochs;
  for (size_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> ids;
    for (size_t k = 2 * epoch; k < 2 * epoch + 2; ++k) {
      for (int64_t i = 0; i < 5; ++i) {
        ids.push_back(image_id(batches[k][i]));
      }
    }
    EXPECT_EQ(std::set<int64_t>(ids.begin(), ids.end()).size(), 10u)
        << "epoch " << epoch;
    epochs.push_back(ids);
  }
  EXPECT_FALSE(epochs[0] == epochs[1] && epochs[1] == epochs[2]);
}

TEST_F(BatchLoaderTest, FlipMirrorsSomeSamples) {
  const std::vector<torch::Tensor> batches =
      take(loader_options(4, 2, 5, true), 10);

  int flipped = 0;
  int unflipped = 0;
  for (const torch::Tensor& batch : batches) {
    for (int64_t i = 0; i < batch.size(0); ++i) {
      // A flipped sample starts with column 5, 20 * id + 5.
      const int64_t first =
          std::lround(batch[i][0][0][0].item<float>() * 255);
      const torch::Tensor original =
          dataset_->get(first / 20).to(torch::kFloat).div(255);
      if (first % 20 == 5) {
        EXPECT_TRUE(torch::equal(batch[i], original.flip({2})));
        ++flipped;
      } else {
        EXPECT_TRUE(torch::equal(batch[i], original));
        ++unflipped;
      }
    }
  }
  EXPECT_GT(flipped, 5);
  EXPECT_GT(unflipped, 5);
}

TEST_F(BatchLoaderTest, NoFlipWithoutAugmentation) {
  const std::vector<torch::Tensor> batches =
      take(loader_options(10, 0, 5, false), 3);

  for (const torch::Tensor& batch : batches) {
    for (int64_t i = 0; i < batch.size(0); ++i) {
      const int64_t first =
          std::lround(batch[i][0][0][0].item<float>() * 255);
      EXPECT_EQ(first % 20, 0);
    }
  }
}

TEST_F(BatchLoaderTest, BatchLargerThanFolderRepeatsImages) {
  const std::vector<torch::Tensor> batches =
      take(loader_options(25, 1, 9, false), 2);

  ASSERT_EQ(batches[0].size(0), 25);
  std::vector<int> seen(kImages, 0);
  for (int64_t i = 0; i < 25; ++i) {
    ++seen[image_id(batches[0][i])];
  }
  // 25 samples span epochs 0, 1 and half of 2.
  for (int id = 0; id < kImages; ++id) {
    EXPECT_GE(seen[id], 2) << "image " << id;
    EXPECT_LE(seen[id], 3) << "image " << id;
  }
}

TEST_F(BatchLoaderTest, CountsConsumedBatchesAndWaits) {
  ddpm::BatchLoader loader(dataset_, loader_options(3, 2, 1, true));

  EXPECT_EQ(loader.batches_consumed(), 0);
  loader.next();
  loader.next();

  EXPECT_EQ(loader.batches_consumed(), 2);
  EXPECT_GE(loader.wait_seconds(), 0.0);
}

TEST_F(BatchLoaderTest, DestructorStopsWaitingWorkers) {
  // Workers fill the prefetch queue and block, so destruction must wake
  // them.
  for (const int consumed : {0, 1, 5}) {
    ddpm::BatchLoader loader(dataset_, loader_options(2, 3, 1, true));
    for (int i = 0; i < consumed; ++i) {
      loader.next();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  SUCCEED();
}

TEST(BatchLoaderErrorTest, WorkerErrorRethrownByNext) {
  TempDir dir;
  write_text(dir.file("a.png"));
  write_text(dir.file("b.png"));
  auto dataset = std::make_shared<ddpm::ImageFolder>(
      folder_options(dir.str(), 2, 2, 1));
  WarningCapture capture;

  for (const int64_t workers : {0, 2}) {
    ddpm::BatchLoader loader(dataset, loader_options(2, workers, 0, false));

    const std::string first = error_message([&] { loader.next(); });
    const std::string second = error_message([&] { loader.next(); });

    EXPECT_NE(first.find("no readable images"), std::string::npos)
        << "workers " << workers << ": " << first;
    EXPECT_NE(second.find("no readable images"), std::string::npos)
        << "workers " << workers << ": " << second;
    EXPECT_EQ(loader.batches_consumed(), 0);
  }
}

TEST(BatchLoaderErrorTest, InvalidOptionsRejected) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 1);
  auto dataset = std::make_shared<ddpm::ImageFolder>(
      folder_options(dir.str(), 2, 2, 1));
  ddpm::BatchLoaderOptions zero_batch = loader_options(0, 1, 0, false);
  ddpm::BatchLoaderOptions zero_prefetch = loader_options(2, 1, 0, false);
  zero_prefetch.prefetch = 0;

  const std::string batch = error_message(
      [&] { ddpm::BatchLoader loader(dataset, zero_batch); });
  const std::string prefetch = error_message(
      [&] { ddpm::BatchLoader loader(dataset, zero_prefetch); });
  const std::string null = error_message([&] {
    ddpm::BatchLoader loader(nullptr, loader_options(2, 1, 0, false));
  });

  EXPECT_NE(batch.find("batch_size must be at least 1, got 0"),
            std::string::npos)
      << batch;
  EXPECT_NE(prefetch.find("prefetch must be at least 1, got 0"),
            std::string::npos)
      << prefetch;
  EXPECT_NE(null.find("got null"), std::string::npos) << null;
}

TEST(BatchLoaderErrorTest, RejectsEachInvalidOption) {
  TempDir dir;
  write_gray_png(dir.file("a.png"), 2, 2, 1);
  auto dataset = std::make_shared<ddpm::ImageFolder>(
      folder_options(dir.str(), 2, 2, 1));
  const auto with = [](auto change) {
    ddpm::BatchLoaderOptions options = loader_options(2, 1, 0, false);
    change(options);
    return options;
  };
  const std::vector<std::pair<ddpm::BatchLoaderOptions, std::string>> cases =
      {
          {with([](auto& o) { o.batch_size = -1; }),
           "batch_size must be at least 1, got -1"},
          {with([](auto& o) { o.num_workers = -1; }),
           "num_workers must be at least 0, got -1"},
          {with([](auto& o) { o.prefetch = -2; }),
           "prefetch must be at least 1, got -2"},
          {with([](auto& o) { o.start_batch = -1; }),
           "start_batch must be at least 0, got -1"},
      };
  for (const auto& [invalid, expected] : cases) {
    // A copy, because clang 14 cannot capture structured bindings.
    const auto options = invalid;
    const std::string message =
        error_message([&] { ddpm::BatchLoader loader(dataset, options); });
    EXPECT_NE(message.find(expected), std::string::npos)
        << "expected \"" << expected << "\", got: " << message;
  }
}

// ~~~ Unusual and broken input files ~~~

namespace {

// CRC-32 of PNG chunks (ISO 3309, reflected polynomial 0xEDB88320).
uint32_t crc32(const std::string& bytes) {
  uint32_t crc = 0xffffffff;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc >> 1) ^ (0xedb88320 & (0 - (crc & 1)));
    }
  }
  return ~crc;
}

std::string big_endian(uint32_t value, int count) {
  std::string bytes;
  for (int i = count - 1; i >= 0; --i) {
    bytes += static_cast<char>((value >> (8 * i)) & 0xff);
  }
  return bytes;
}

std::string png_chunk(const std::string& type, const std::string& data) {
  return big_endian(static_cast<uint32_t>(data.size()), 4) + type + data +
         big_endian(crc32(type + data), 4);
}

// A zlib stream of stored (uncompressed) deflate blocks.
std::string zlib_stored(const std::string& data) {
  std::string out = "\x78\x01";
  size_t offset = 0;
  do {
    const size_t size = std::min<size_t>(data.size() - offset, 65535);
    const bool last = offset + size == data.size();
    out += static_cast<char>(last ? 1 : 0);
    out += static_cast<char>(size & 0xff);
    out += static_cast<char>(size >> 8);
    out += static_cast<char>(~size & 0xff);
    out += static_cast<char>((~size >> 8) & 0xff);
    out += data.substr(offset, size);
    offset += size;
  } while (offset < data.size());
  uint32_t a = 1;
  uint32_t b = 0;
  for (unsigned char byte : data) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return out + big_endian((b << 16) | a, 4);
}

// Encodes a PNG by hand, for the bit depths and color types that
// stb_image_write does not write. `rows` are the raw scanlines without
// filter bytes; `palette` is the PLTE payload of color type 3.
std::string encode_png(uint32_t width, uint32_t height, int bit_depth,
                       int color_type, const std::vector<std::string>& rows,
                       const std::string& palette = "") {
  std::string scanlines;
  for (const std::string& row : rows) {
    scanlines += '\0' + row; // filter type 0 (None)
  }
  const std::string header = big_endian(width, 4) + big_endian(height, 4) +
                             static_cast<char>(bit_depth) +
                             static_cast<char>(color_type) +
                             std::string(3, '\0');
  std::string png = "\x89PNG\r\n\x1a\n" + png_chunk("IHDR", header);
  if (!palette.empty()) {
    png += png_chunk("PLTE", palette);
  }
  return png + png_chunk("IDAT", zlib_stored(scanlines)) +
         png_chunk("IEND", "");
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

void append_to_string(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<char*>(data), size);
}

// Random RGB noise, which compresses badly, so a cut keeps the header and
// loses pixel data.
std::vector<uint8_t> noise_pixels(int count) {
  std::mt19937 engine(7);
  std::vector<uint8_t> pixels(count);
  for (uint8_t& pixel : pixels) {
    pixel = static_cast<uint8_t>(engine());
  }
  return pixels;
}

std::string encoded_noise(bool jpeg) {
  const std::vector<uint8_t> pixels = noise_pixels(32 * 32 * 3);
  std::string bytes;
  if (jpeg) {
    stbi_write_jpg_to_func(&append_to_string, &bytes, 32, 32, 3,
                           pixels.data(), /*quality=*/90);
  } else {
    stbi_write_png_to_func(&append_to_string, &bytes, 32, 32, 3,
                           pixels.data(), 32 * 3);
  }
  return bytes;
}

void write_solid_png(const fs::path& path, int width, int height,
                     std::vector<uint8_t> color) {
  std::vector<uint8_t> pixels;
  for (int i = 0; i < width * height; ++i) {
    pixels.insert(pixels.end(), color.begin(), color.end());
  }
  write_png_pixels(path.string(), width, height,
                   static_cast<int>(color.size()), pixels);
}

// An expected RGB pixel of the decoded [3, 16, 16] image.
struct PixelCheck {
  int64_t y;
  int64_t x;
  std::vector<int> rgb;
  int tolerance;
};

enum class Outcome { kDecoded, kSkippedWhenDecoding, kSkippedWhenListing };

struct InputCase {
  std::string name;
  std::string file;
  std::function<void(const fs::path&)> write;
  Outcome outcome;
  // Text that the one warning about the file contains, for a skipped file.
  std::string reason;
  std::vector<PixelCheck> pixels;
  // Whether the case needs a user that file permissions apply to.
  bool needs_non_root = false;
};

// Names the case in test listings instead of dumping its bytes.
void PrintTo(const InputCase& input, std::ostream* out) {
  *out << input.name;
}

const std::vector<InputCase>& input_cases() {
  static const std::vector<InputCase> cases = {
      {"ZeroBytes", "empty.png", [](const fs::path& path) {
         write_bytes(path, "");
       },
       Outcome::kSkippedWhenDecoding, "the file is empty"},
      {"TruncatedPng", "truncated.png", [](const fs::path& path) {
         const std::string png = encoded_noise(/*jpeg=*/false);
         write_bytes(path, png.substr(0, png.size() / 2));
       },
       Outcome::kSkippedWhenDecoding, "truncated or corrupt PNG file"},
      {"TruncatedJpegHeader", "header.jpg", [](const fs::path& path) {
         write_bytes(path, encoded_noise(/*jpeg=*/true).substr(0, 40));
       },
       Outcome::kSkippedWhenDecoding,
       "truncated or corrupt JPEG file: the signature is valid but the "
       "header is incomplete or invalid"},
      {"TruncatedJpegData", "data.jpg", [](const fs::path& path) {
         const std::string jpeg = encoded_noise(/*jpeg=*/true);
         write_bytes(path, jpeg.substr(0, jpeg.size() / 2));
       },
       Outcome::kSkippedWhenDecoding,
       "truncated or corrupt JPEG file: expected marker"},
      {"TextNamedPng", "text.png", [](const fs::path& path) {
         write_bytes(path, "not an image\n");
       },
       Outcome::kSkippedWhenDecoding,
       "unknown image format: the file starts with bytes 6e 6f 74 20 61 6e "
       "20 69"},
      {"SixteenBitPng", "sixteen.png", [](const fs::path& path) {
         // Each 16-bit sample keeps its high byte: (200, 100, 50).
         const std::string pixel = std::string("\xc8\x10\x64\x20\x32\x30", 6);
         std::string row;
         for (int x = 0; x < 16; ++x) {
           row += pixel;
         }
         write_bytes(path, encode_png(16, 16, 16, /*color_type=*/2,
                                      std::vector<std::string>(16, row)));
       },
       Outcome::kDecoded, "", {{0, 0, {200, 100, 50}, 0},
                               {15, 15, {200, 100, 50}, 0}}},
      {"GrayAlphaPng", "gray-alpha.png", [](const fs::path& path) {
         // Gray 90 at half opacity; the alpha is dropped, not applied.
         write_solid_png(path, 16, 16, {90, 128});
       },
       Outcome::kDecoded, "", {{0, 0, {90, 90, 90}, 0},
                               {15, 15, {90, 90, 90}, 0}}},
      {"PalettePng", "palette.png", [](const fs::path& path) {
         const std::string palette("\x0a\x14\x1e\xfa\x80\x05", 6);
         std::vector<std::string> rows(8, std::string(16, '\0'));
         rows.resize(16, std::string(16, '\1'));
         write_bytes(path, encode_png(16, 16, 8, /*color_type=*/3, rows,
                                      palette));
       },
       Outcome::kDecoded, "", {{0, 0, {10, 20, 30}, 0},
                               {15, 15, {250, 128, 5}, 0}}},
      // stb_image converts CMYK with an Adobe APP14 marker to RGB.
      {"CmykJpeg", "cmyk.jpg", [](const fs::path& path) {
         fs::copy_file(ddpm::testing::fixture_path("cmyk.jpg"), path);
       },
       Outcome::kDecoded, "", {{3, 3, {255, 0, 0}, 6},
                               {12, 12, {127, 127, 127}, 6}}},
      {"ProgressiveJpeg", "progressive.jpg", [](const fs::path& path) {
         fs::copy_file(ddpm::testing::fixture_path("progressive.jpg"), path);
       },
       Outcome::kDecoded, "", {{3, 3, {200, 100, 50}, 6},
                               {12, 12, {20, 41, 220}, 6}}},
      {"OnePixel", "one.png", [](const fs::path& path) {
         write_solid_png(path, 1, 1, {7, 77, 177});
       },
       Outcome::kDecoded, "", {{0, 0, {7, 77, 177}, 0},
                               {15, 15, {7, 77, 177}, 0}}},
      {"VeryWide", "wide.png", [](const fs::path& path) {
         // The left half (30, 60, 90) meets the right half (220, 110, 0)
         // in the middle of the centre crop.
         std::vector<uint8_t> pixels;
         for (int y = 0; y < 8; ++y) {
           for (int x = 0; x < 10000; ++x) {
             const bool left = x < 5000;
             pixels.push_back(left ? 30 : 220);
             pixels.push_back(left ? 60 : 110);
             pixels.push_back(left ? 90 : 0);
           }
         }
         write_png_pixels(path.string(), 10000, 8, 3, pixels);
       },
       Outcome::kDecoded, "", {{8, 0, {30, 60, 90}, 0},
                               {8, 15, {220, 110, 0}, 0}}},
      {"HugeHeader", "huge.png", [](const fs::path& path) {
         // The header declares 60000 x 60000 gray pixels; the data is one
         // row, which a decoder would not reach.
         write_bytes(path, encode_png(60000, 60000, 8, /*color_type=*/0,
                                      {std::string(60000, '\0')}));
       },
       Outcome::kSkippedWhenDecoding,
       "its header declares 60000x60000 = 3600000000 pixels, more than "
       "max_image_pixels = 89478485"},
      {"NoReadPermission", "locked.png", [](const fs::path& path) {
         write_solid_png(path, 16, 16, {1, 2, 3});
         fs::permissions(path, fs::perms::none);
       },
       Outcome::kSkippedWhenDecoding, "Permission denied", {},
       /*needs_non_root=*/true},
      {"SymlinkToFolderLoop", "loop", [](const fs::path& path) {
         fs::create_directory_symlink(path.parent_path(), path);
       },
       Outcome::kSkippedWhenListing,
       "symbolic links to folders are not followed"},
      {"SymlinkToItself", "self.png", [](const fs::path& path) {
         fs::create_symlink(path.filename(), path);
       },
       Outcome::kSkippedWhenListing, "cannot resolve it"},
      {"NonUtf8Name", "\xff\xfe.png", [](const fs::path& path) {
         write_solid_png(path, 16, 16, {11, 22, 33});
       },
       Outcome::kDecoded, "", {{0, 0, {11, 22, 33}, 0}}},
  };
  return cases;
}

class ImageInputTest : public testing::TestWithParam<InputCase> {};

std::vector<std::string> warnings_naming(
    const std::vector<std::string>& warnings, const std::string& path) {
  std::vector<std::string> found;
  for (const std::string& warning : warnings) {
    if (warning.find("\"" + path + "\"") != std::string::npos) {
      found.push_back(warning);
    }
  }
  return found;
}

} // namespace

// Each file either decodes to the right pixels or is skipped with one
// warning, while a good file next to it keeps the folder usable.
TEST_P(ImageInputTest, DecodesOrSkipsWithOneWarning) {
  const InputCase& input = GetParam();
  if (input.needs_non_root && ::geteuid() == 0) {
    GTEST_SKIP() << "root reads files without read permission";
  }
  TempDir dir;
  const fs::path path = fs::path(dir.str()) / input.file;
  input.write(path);
  write_solid_png(fs::path(dir.str()) / "good.png", 16, 16, {5, 6, 7});
  WarningCapture capture;

  ddpm::ImageFolder folder(folder_options(dir.str(), 16, 16, 3));
  std::vector<torch::Tensor> images;
  for (int round = 0; round < 2; ++round) {
    for (int64_t i = 0; i < folder.size(); ++i) {
      images.push_back(folder.get(i));
    }
  }

  const auto listed = std::find(folder.paths().begin(), folder.paths().end(),
                                path.string());
  const std::vector<std::string> warnings =
      warnings_naming(capture.warnings(), path.string());
  if (input.outcome == Outcome::kSkippedWhenListing) {
    EXPECT_EQ(listed, folder.paths().end());
  } else {
    ASSERT_NE(listed, folder.paths().end());
  }
  if (input.outcome == Outcome::kDecoded) {
    EXPECT_TRUE(capture.warnings().empty()) << capture.warnings().front();
    const torch::Tensor image = images[listed - folder.paths().begin()];
    ASSERT_EQ(image.sizes(), torch::IntArrayRef({3, 16, 16}));
    for (const PixelCheck& check : input.pixels) {
      for (int64_t c = 0; c < 3; ++c) {
        EXPECT_NEAR(image[c][check.y][check.x].item<int>(), check.rgb[c],
                    check.tolerance)
            << "channel " << c << " at (" << check.y << ", " << check.x
            << ")";
      }
    }
    return;
  }
  ASSERT_EQ(warnings.size(), 1u) << "warnings: " << capture.warnings().size();
  EXPECT_NE(warnings[0].find(input.reason), std::string::npos) << warnings[0];
  EXPECT_EQ(capture.warnings().size(), 1u);
  for (const torch::Tensor& image : images) {
    EXPECT_EQ(image[0][0][0].item<int>(), 5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Files, ImageInputTest, testing::ValuesIn(input_cases()),
    [](const testing::TestParamInfo<InputCase>& info) {
      return info.param.name;
    });

TEST(ImageFolderTest, OnlyBrokenFilesThrowAfterOneWarningEach) {
  TempDir dir;
  int skipped_when_decoding = 0;
  for (const InputCase& input : input_cases()) {
    if (input.outcome == Outcome::kSkippedWhenDecoding &&
        !input.needs_non_root) {
      input.write(fs::path(dir.str()) / input.file);
      ++skipped_when_decoding;
    }
  }
  WarningCapture capture;
  ddpm::ImageFolder folder(folder_options(dir.str(), 16, 16, 3));

  const std::string first = error_message([&] { folder.get(0); });
  const std::string second = error_message([&] { folder.get(3); });

  EXPECT_NE(first.find("no readable images in \"" + dir.str() + "\": all " +
                       std::to_string(skipped_when_decoding) +
                       " files failed to decode"),
            std::string::npos)
      << first;
  EXPECT_EQ(second, first);
  EXPECT_EQ(capture.warnings().size(), size_t(skipped_when_decoding));
}

TEST(ImageFolderTest, PixelLimitIsConfigurable) {
  TempDir dir;
  write_solid_png(fs::path(dir.str()) / "a.png", 16, 16, {1, 2, 3});
  write_solid_png(fs::path(dir.str()) / "b.png", 20, 20, {4, 5, 6});
  ddpm::ImageFolderOptions options = folder_options(dir.str(), 16, 16, 3);
  options.max_image_pixels = 16 * 16;
  ddpm::ImageFolder folder(options);
  WarningCapture capture;

  const torch::Tensor skipped = folder.get(1);

  EXPECT_EQ(skipped[0][0][0].item<int>(), 1);
  ASSERT_EQ(capture.warnings().size(), 1u);
  EXPECT_NE(capture.warnings()[0].find(
                "declares 20x20 = 400 pixels, more than max_image_pixels = "
                "256"),
            std::string::npos)
      << capture.warnings()[0];
}
