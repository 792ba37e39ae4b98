#include "ddpm/data/idx.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <memory>
#include <system_error>
#include <vector>

#include <torch/torch.h>
#include <zlib.h>

#include "ddpm/io/image.h"

namespace ddpm {
namespace {

namespace fs = std::filesystem;

// Type 0x08 (unsigned byte) in the third byte, 3 dimensions in the fourth.
constexpr uint32_t kIdxImageMagic = 0x00000803;
constexpr size_t kHeaderBytes = 16;
constexpr size_t kChunkBytes = size_t{1} << 20;

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

uint32_t read_big_endian(const uint8_t* bytes) {
  return uint32_t{bytes[0]} << 24 | uint32_t{bytes[1]} << 16 |
         uint32_t{bytes[2]} << 8 | uint32_t{bytes[3]};
}

// Returns zlib's description of the last error, or an empty string.
std::string gz_error(gzFile_s* file) {
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (code == Z_ERRNO) {
    return std::generic_category().message(errno);
  }
  return code == Z_OK || message == nullptr ? "" : message;
}

// Reads up to `size` bytes and returns how many were read, fewer only at
// the end of the file. Throws on a read error.
size_t read_bytes(gzFile_s* file, const std::string& path, uint8_t* out,
                  size_t size) {
  size_t total = 0;
  while (total < size) {
    const unsigned request =
        static_cast<unsigned>(std::min(size - total, kChunkBytes));
    const int count = gzread(file, out + total, request);
    TORCH_CHECK(count >= 0, "failed to read ", std::quoted(path), ": ",
                gz_error(file));
    if (count == 0) {
      break;
    }
    total += static_cast<size_t>(count);
  }
  return total;
}

} // namespace

torch::Tensor read_idx_images(const std::string& path) {
  errno = 0;
  GzFile file(gzopen(path.c_str(), "rb"));
  TORCH_CHECK(file != nullptr, "failed to open ", std::quoted(path), ": ",
              errno != 0 ? std::generic_category().message(errno)
                         : "zlib could not allocate its state");
  gzbuffer(file.get(), 1 << 17);

  uint8_t header[kHeaderBytes];
  const size_t header_size =
      read_bytes(file.get(), path, header, kHeaderBytes);
  TORCH_CHECK(header_size == kHeaderBytes, "invalid IDX file ",
              std::quoted(path), ": ", header_size,
              " bytes, too short for the 16-byte header");
  const uint32_t magic = read_big_endian(header);
  if (magic != kIdxImageMagic) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%08" PRIX32, magic);
    TORCH_CHECK(false, "invalid IDX image file ", std::quoted(path),
                ": magic number ", hex,
                ", expected 0x00000803 (unsigned bytes, 3 dimensions)");
  }

  const int64_t count = read_big_endian(header + 4);
  const int64_t height = read_big_endian(header + 8);
  const int64_t width = read_big_endian(header + 12);
  // Each size is below 2^32, so height * width fits in int64_t, but the
  // product with count may not.
  const int64_t image_size = height * width;
  TORCH_CHECK(image_size == 0 ||
                  count <= std::numeric_limits<int64_t>::max() / image_size,
              "invalid IDX file ", std::quoted(path), ": ", count, "x",
              height, "x", width, " images are too large");
  const int64_t expected = count * image_size;

  // Grow the buffer as data arrives rather than trusting the header, so a
  // corrupt size fails the length check instead of a huge allocation.
  auto data = std::make_unique<std::vector<uint8_t>>();
  while (static_cast<int64_t>(data->size()) < expected) {
    const size_t offset = data->size();
    const size_t request = static_cast<size_t>(std::min<int64_t>(
        expected - static_cast<int64_t>(offset), int64_t{kChunkBytes} * 16));
    data->resize(offset + request);
    const size_t received =
        read_bytes(file.get(), path, data->data() + offset, request);
    data->resize(offset + received);
    if (received < request) {
      break;
    }
  }
  int64_t actual = static_cast<int64_t>(data->size());
  if (actual == expected) {
    std::vector<uint8_t> rest(kChunkBytes);
    size_t received = 0;
    while ((received = read_bytes(file.get(), path, rest.data(),
                                  rest.size())) > 0) {
      actual += static_cast<int64_t>(received);
    }
  }
  const std::string zlib_error = gz_error(file.get());
  TORCH_CHECK(actual == expected, "invalid IDX file ", std::quoted(path),
              ": ", actual, " bytes of pixel data, expected ", count, "x",
              height, "x", width, " = ", expected,
              zlib_error.empty() ? "" : " (zlib: " + zlib_error + ")");

  // The tensor takes ownership of the buffer instead of copying it.
  std::vector<uint8_t>* owned = data.release();
  return torch::from_blob(
      owned->data(), {count, height, width},
      [owned](void*) { delete owned; }, torch::kUInt8); // [N, H, W]
}

int64_t export_idx_images(const std::string& path, const std::string& folder,
                          int64_t limit) {
  const torch::Tensor images = read_idx_images(path); // [N, H, W]
  const int64_t total = images.size(0);
  const int64_t count = limit < 0 ? total : std::min(limit, total);
  const int64_t height = images.size(1);
  const int64_t width = images.size(2);

  std::error_code error;
  fs::create_directories(folder, error);
  TORCH_CHECK(!error, "failed to create the folder ", std::quoted(folder),
              ": ", error.message());

  const uint8_t* pixels = images.data_ptr<uint8_t>();
  for (int64_t i = 0; i < count; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "%06" PRId64 ".png", i);
    const uint8_t* first = pixels + i * height * width;
    const Image image{height, width, 1,
                      std::vector<uint8_t>(first, first + height * width)};
    write_png((fs::path(folder) / name).string(), image);
  }
  return count;
}

} // namespace ddpm
