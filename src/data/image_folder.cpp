#include "ddpm/data/image_folder.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <numeric>
#include <random>
#include <sstream>
#include <system_error>
#include <unordered_set>

#include <torch/torch.h>

#include "ddpm/log.h"

namespace ddpm {
namespace {

namespace fs = std::filesystem;

// Salts that keep the shuffle and the flip streams of one seed apart.
constexpr uint64_t kOrderSalt = 0x6F72646572000000;
constexpr uint64_t kFlipSalt = 0x666C697000000000;

// The SplitMix64 mixing function: consecutive inputs give unrelated
// outputs.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EB;
  return x ^ (x >> 31);
}

uint64_t hash_pair(uint64_t seed, uint64_t value) {
  return splitmix64(seed ^ splitmix64(value));
}

// Returns a uniform value in [0, bound). Written out, unlike
// std::uniform_int_distribution, whose algorithm differs between standard
// libraries, so that a seed gives the same order everywhere. Rejecting the
// 2^64 mod bound smallest values removes the modulo bias.
uint64_t uniform_below(std::mt19937_64& engine, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  uint64_t value = engine();
  while (value < threshold) {
    value = engine();
  }
  return value % bound;
}

std::string to_lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  return text;
}

std::string quoted(const std::string& text) {
  std::ostringstream stream;
  stream << std::quoted(text);
  return stream.str();
}

std::string joined_extensions() {
  std::string joined;
  for (const std::string& extension : image_extensions()) {
    joined += (joined.empty() ? "" : ", ") + extension;
  }
  return joined;
}

// Lists the files under `root` whose extension is in image_extensions(),
// sorted so that the order does not depend on the file system. Symbolic
// links to folders are not followed, which rules out cycles, and are
// skipped with a warning, as are links that cannot be resolved.
std::vector<std::string> list_images(const fs::path& root) {
  const std::unordered_set<std::string> extensions(
      image_extensions().begin(), image_extensions().end());
  std::vector<std::string> paths;
  std::error_code error;
  fs::recursive_directory_iterator it(
      root, fs::directory_options::skip_permission_denied, error);
  for (; !error && it != fs::recursive_directory_iterator();
       it.increment(error)) {
    std::error_code type_error;
    const fs::file_status status = it->status(type_error);
    if (type_error) {
      log_warning("skipping " + quoted(it->path().string()) +
                  ": cannot resolve it: " + type_error.message());
      continue;
    }
    if (fs::is_directory(status) && it->is_symlink(type_error)) {
      log_warning("skipping " + quoted(it->path().string()) +
                  ": symbolic links to folders are not followed");
      continue;
    }
    if (!fs::is_regular_file(status)) {
      continue;
    }
    std::string extension = to_lower(it->path().extension().string());
    if (!extension.empty() && extensions.count(extension.substr(1)) > 0) {
      paths.push_back(it->path().string());
    }
  }
  TORCH_CHECK(!error, "failed to list the image folder ",
              std::quoted(root.string()), ": ", error.message());
  std::sort(paths.begin(), paths.end());
  return paths;
}

// Copies an interleaved [H, W, C] image into a uint8 [C, H, W] tensor.
torch::Tensor to_chw_tensor(const Image& image) {
  torch::Tensor pixels = torch::from_blob(
      const_cast<uint8_t*>(image.pixels.data()),
      {image.height, image.width, image.channels}, torch::kUInt8);
  // clone, not contiguous(): a one-channel permute already counts as
  // contiguous and would keep pointing into `image`.
  return pixels.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
}

} // namespace

ImageFolder::ImageFolder(ImageFolderOptions options)
    : options_(std::move(options)) {
  TORCH_CHECK(options_.height >= 1 && options_.width >= 1,
              "image size must be at least 1x1 pixels, got ", options_.width,
              "x", options_.height);
  TORCH_CHECK(options_.channels >= 1 && options_.channels <= 4,
              "channels must be 1 (gray), 2 (gray and alpha), 3 (RGB) or 4 "
              "(RGBA), got ",
              options_.channels);
  TORCH_CHECK(options_.cache_max_bytes >= 0,
              "cache_max_bytes must be at least 0, got ",
              options_.cache_max_bytes);
  TORCH_CHECK(options_.max_image_pixels >= 1,
              "max_image_pixels must be at least 1, got ",
              options_.max_image_pixels);

  const fs::path root(options_.folder);
  std::error_code error;
  TORCH_CHECK(fs::exists(root, error), "image folder does not exist: ",
              std::quoted(options_.folder));
  TORCH_CHECK(fs::is_directory(root, error),
              "image folder is not a directory: ",
              std::quoted(options_.folder));

  paths_ = list_images(root);
  TORCH_CHECK(!paths_.empty(), "no images found in ",
              std::quoted(options_.folder),
              " (searched recursively for extensions ", joined_extensions(),
              ", in any letter case)");
  unreadable_.assign(paths_.size(), 0);

  const int64_t image_bytes =
      options_.channels * options_.height * options_.width;
  cache_enabled_ = options_.cache_images &&
                   image_bytes <= options_.cache_max_bytes / size();
  if (cache_enabled_) {
    cache_.resize(paths_.size());
  }
}

int64_t ImageFolder::size() const {
  return static_cast<int64_t>(paths_.size());
}

torch::Tensor ImageFolder::get(int64_t index) {
  const int64_t count = size();
  TORCH_CHECK(index >= 0 && index < count, "image index must be in [0, ",
              count, "), got ", index);

  for (int64_t step = 0; step < count; ++step) {
    const int64_t current = (index + step) % count;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (unreadable_[current]) {
        continue;
      }
      if (cache_enabled_ && cache_[current].defined()) {
        return cache_[current].clone();
      }
    }

    // Decode without the lock, so that workers decode in parallel.
    torch::Tensor image;
    try {
      image = to_chw_tensor(resize_and_center_crop(
          decode_image(paths_[current], options_.channels,
                       options_.max_image_pixels),
          options_.height,
          options_.width)); // [C, H, W]
    } catch (const c10::Error& error) {
      bool first_failure = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        first_failure = !unreadable_[current];
        unreadable_[current] = 1;
      }
      if (first_failure) {
        log_warning(std::string(error.what_without_backtrace()) +
                    "; skipping this file");
      }
      continue;
    }

    if (cache_enabled_) {
      std::lock_guard<std::mutex> lock(mutex_);
      cache_[current] = image;
      return image.clone();
    }
    return image;
  }
  TORCH_CHECK(false, "no readable images in ", std::quoted(options_.folder),
              ": all ", count, " files failed to decode");
}

BatchLoader::BatchLoader(std::shared_ptr<ImageFolder> dataset,
                         BatchLoaderOptions options)
    : dataset_(std::move(dataset)), options_(options) {
  TORCH_CHECK(dataset_ != nullptr, "BatchLoader needs a dataset, got null");
  TORCH_CHECK(options_.batch_size >= 1, "batch_size must be at least 1, got ",
              options_.batch_size);
  TORCH_CHECK(options_.num_workers >= 0,
              "num_workers must be at least 0, got ", options_.num_workers);
  TORCH_CHECK(options_.prefetch >= 1, "prefetch must be at least 1, got ",
              options_.prefetch);
  TORCH_CHECK(options_.start_batch >= 0,
              "start_batch must be at least 0, got ", options_.start_batch);
  next_to_claim_ = options_.start_batch;
  next_to_consume_ = options_.start_batch;

  try {
    for (int64_t i = 0; i < options_.num_workers; ++i) {
      workers_.emplace_back([this] { worker_loop(); });
    }
  } catch (...) {
    stop_workers();
    throw;
  }
}

BatchLoader::~BatchLoader() {
  stop_workers();
}

void BatchLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  space_.notify_all();
  ready_.notify_all();
  for (std::thread& worker : workers_) {
    if (worker.joinable()) {
      worker.join();
    }
  }
}

torch::Tensor BatchLoader::next() {
  const auto start = std::chrono::steady_clock::now();
  const auto seconds_since_start = [&start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                         start)
        .count();
  };

  if (options_.num_workers == 0) {
    torch::Tensor batch = make_batch(next_to_consume_);
    ++next_to_consume_;
    wait_seconds_ += seconds_since_start();
    return batch;
  }

  std::unique_lock<std::mutex> lock(mutex_);
  const int64_t batch_index = next_to_consume_;
  ready_.wait(lock, [&] {
    return finished_.count(batch_index) > 0 ||
           (error_ != nullptr && batch_index >= error_batch_);
  });
  wait_seconds_ += seconds_since_start();

  const auto found = finished_.find(batch_index);
  if (found == finished_.end()) {
    std::rethrow_exception(error_);
  }
  torch::Tensor batch = std::move(found->second);
  finished_.erase(found);
  ++next_to_consume_;
  lock.unlock();
  space_.notify_all();
  return batch;
}

void BatchLoader::worker_loop() {
  while (true) {
    int64_t batch_index = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      space_.wait(lock, [this] {
        return stopping_ || error_ != nullptr ||
               next_to_claim_ < next_to_consume_ + options_.prefetch;
      });
      if (stopping_ || error_ != nullptr) {
        return;
      }
      batch_index = next_to_claim_++;
    }

    try {
      torch::Tensor batch = make_batch(batch_index);
      std::lock_guard<std::mutex> lock(mutex_);
      finished_.emplace(batch_index, std::move(batch));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (error_ == nullptr || batch_index < error_batch_) {
        error_ = std::current_exception();
        error_batch_ = batch_index;
      }
    }
    ready_.notify_all();
  }
}

std::shared_ptr<const std::vector<int64_t>> BatchLoader::epoch_order(
    int64_t epoch) {
  std::lock_guard<std::mutex> lock(order_mutex_);
  const auto found = orders_.find(epoch);
  if (found != orders_.end()) {
    return found->second;
  }

  // Fisher-Yates shuffle.
  auto order = std::make_shared<std::vector<int64_t>>(dataset_->size());
  std::iota(order->begin(), order->end(), int64_t{0});
  std::mt19937_64 engine(
      hash_pair(options_.seed ^ kOrderSalt, static_cast<uint64_t>(epoch)));
  for (size_t i = order->size(); i > 1; --i) {
    std::swap((*order)[i - 1], (*order)[uniform_below(engine, i)]);
  }

  // Workers run a few batches apart, so they rarely need more than the two
  // newest epochs. An evicted epoch is only recomputed, never wrong.
  orders_.emplace(epoch, order);
  while (orders_.size() > 4) {
    orders_.erase(orders_.begin());
  }
  return order;
}

torch::Tensor BatchLoader::make_batch(int64_t batch_index) {
  const ImageFolderOptions& folder = dataset_->options();
  const int64_t count = dataset_->size();
  const int64_t height = folder.height;
  const int64_t width = folder.width;
  const int64_t image_size = folder.channels * height * width;
  torch::Tensor batch = torch::empty(
      {options_.batch_size, folder.channels, height, width}, torch::kFloat);
  float* out = batch.data_ptr<float>();

  int64_t order_epoch = -1;
  std::shared_ptr<const std::vector<int64_t>> order;
  for (int64_t i = 0; i < options_.batch_size; ++i) {
    const int64_t position = batch_index * options_.batch_size + i;
    const int64_t epoch = position / count;
    if (epoch != order_epoch) {
      order = epoch_order(epoch);
      order_epoch = epoch;
    }
    const torch::Tensor image =
        dataset_->get((*order)[position % count]); // uint8 [C, H, W]
    const bool flip = options_.augment_horizontal_flip &&
                      (hash_pair(options_.seed ^ kFlipSalt,
                                 static_cast<uint64_t>(position)) >>
                       63) != 0;

    // A plain loop rather than tensor operations, so that worker threads do
    // not start intra-op thread pools. Dividing by 255 matches
    // torchvision's ToTensor bit for bit.
    const uint8_t* in = image.data_ptr<uint8_t>();
    float* sample = out + i * image_size;
    for (int64_t row = 0; row < image_size / width; ++row) {
      const uint8_t* from = in + row * width;
      float* to = sample + row * width;
      for (int64_t x = 0; x < width; ++x) {
        to[x] = static_cast<float>(from[flip ? width - 1 - x : x]) / 255.0f;
      }
    }
  }
  return batch; // [B, C, H, W]
}

} // namespace ddpm
