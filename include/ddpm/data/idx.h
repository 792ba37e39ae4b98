#pragma once

#include <cstdint>
#include <string>

#include <torch/types.h>

namespace ddpm {

/// Reads an IDX image file (the MNIST and Fashion-MNIST format: magic
/// 0x00000803, big-endian sizes, unsigned bytes), gzip-compressed or not.
/// Returns uint8 [N, H, W]. Throws naming the file when the magic number or
/// the length does not match.
torch::Tensor read_idx_images(const std::string& path);

/// Writes the first `limit` images of an IDX file (all when `limit` < 0) as
/// grayscale PNG files 000000.png, 000001.png, ... into `folder`, creating
/// it. Returns the number written.
int64_t export_idx_images(const std::string& path, const std::string& folder,
                          int64_t limit = -1);

} // namespace ddpm
