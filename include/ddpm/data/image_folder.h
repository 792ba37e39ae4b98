#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <torch/types.h>

#include "ddpm/io/image.h"

namespace ddpm {

/// Settings of an ImageFolder.
struct ImageFolderOptions {
  /// Root folder, searched recursively for files with image_extensions().
  std::string folder;
  /// Output height and width in pixels.
  int64_t height = 0;
  int64_t width = 0;
  /// 1 (grayscale), 2 (grayscale and alpha), 3 (RGB) or 4 (RGBA).
  int64_t channels = 3;
  /// Keep decoded, resized images in memory when they all fit within
  /// cache_max_bytes (size() * channels * height * width bytes).
  bool cache_images = true;
  int64_t cache_max_bytes = int64_t{2} << 30;
  /// Files whose header declares more pixels (width * height) are skipped
  /// before decoding, which guards against decompression bombs.
  int64_t max_image_pixels = kDefaultMaxImagePixels;
};

/// The images of a folder, decoded, converted to the channel count and
/// resized and centre-cropped to the output size.
///
/// The constructor lists the files (sorted, so the order does not depend on
/// the file system) and throws when the folder is missing or contains no file
/// with a known extension. Symbolic links to folders are not followed, and
/// they and links that cannot be resolved (a loop, a missing target) are
/// skipped with one warning each. A file that cannot be opened, fails to
/// decode or exceeds max_image_pixels is skipped with one warning naming it
/// and the reason. get() throws once no file is left.
class ImageFolder {
 public:
  explicit ImageFolder(ImageFolderOptions options);

  /// Number of files found (some may still turn out unreadable).
  int64_t size() const;

  /// Returns the image at `index` as uint8 [C, H, W], a tensor the caller
  /// owns. When that file cannot be decoded, warns once and returns the next
  /// readable one, wrapping around. Throws when no file is readable or when
  /// `index` is outside [0, size()). Thread-safe.
  torch::Tensor get(int64_t index);

  const std::vector<std::string>& paths() const { return paths_; }
  const ImageFolderOptions& options() const { return options_; }

 private:
  ImageFolderOptions options_;
  std::vector<std::string> paths_;
  std::mutex mutex_;
  std::vector<char> unreadable_;
  std::vector<torch::Tensor> cache_;
  bool cache_enabled_ = false;
};

/// Settings of a BatchLoader.
struct BatchLoaderOptions {
  int64_t batch_size = 16;
  /// Threads that decode and augment; 0 loads on the calling thread.
  int64_t num_workers = 2;
  /// Batches prepared ahead of the consumer, at most.
  int64_t prefetch = 4;
  bool augment_horizontal_flip = false;
  /// Seeds the shuffle order and the flips, so a run is reproducible
  /// whatever the number of workers.
  uint64_t seed = 0;
  /// Index of the first batch to produce, so that a resumed run continues
  /// the same sequence of batches.
  int64_t start_batch = 0;
};

/// Endless stream of shuffled batches from an ImageFolder, prepared on
/// worker threads into a bounded queue. Each epoch is a new permutation of
/// the folder, and the epochs are concatenated: batch k contains the samples
/// at positions [k * batch_size, (k + 1) * batch_size) of that sequence.
/// Every batch is therefore full, a batch may span two epochs, and a folder
/// smaller than a batch repeats images within one batch. The order and the
/// flips depend only on the seed, not on the number of workers or their
/// timing.
class BatchLoader {
 public:
  BatchLoader(std::shared_ptr<ImageFolder> dataset,
              BatchLoaderOptions options);
  ~BatchLoader();

  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  /// Returns the next batch, float [B, C, H, W] in [0, 1], blocking until
  /// it is ready. When a worker fails on a batch, returns the batches before
  /// it and then rethrows that error on every call.
  torch::Tensor next();

  /// Seconds next() has spent waiting for batches since construction,
  /// including the time it makes batches itself when num_workers is 0.
  double wait_seconds() const { return wait_seconds_; }

  /// Number of batches returned so far.
  int64_t batches_consumed() const { return next_to_consume_; }

 private:
  torch::Tensor make_batch(int64_t batch_index);
  std::shared_ptr<const std::vector<int64_t>> epoch_order(int64_t epoch);
  void worker_loop();
  void stop_workers();

  std::shared_ptr<ImageFolder> dataset_;
  BatchLoaderOptions options_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable space_;
  std::map<int64_t, torch::Tensor> finished_;
  // The first failure of a worker, and the batch it failed on: next()
  // returns the batches before it and then rethrows.
  std::exception_ptr error_;
  int64_t error_batch_ = 0;
  int64_t next_to_claim_ = 0;
  int64_t next_to_consume_ = 0;
  bool stopping_ = false;
  double wait_seconds_ = 0.0;

  // Permutations of recent epochs, so that a batch does not reshuffle the
  // whole folder. Guarded by order_mutex_.
  std::mutex order_mutex_;
  std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> orders_;
};

} // namespace ddpm
