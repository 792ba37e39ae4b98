#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace ddpm {

/// An 8-bit image in row-major, interleaved (height, width, channels) order.
struct Image {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  std::vector<uint8_t> pixels;
};

/// Largest image, in pixels, that decode_image accepts by default: Pillow's
/// Image.MAX_IMAGE_PIXELS (1024^3 / 4 / 3), about 256 MiB of RGB data.
constexpr int64_t kDefaultMaxImagePixels = 89478485;

/// Decodes the image file at `path` with stb_image (PNG, JPEG, BMP, TGA, GIF,
/// PSD, HDR, PIC, PNM) and converts it to `channels` (1: grayscale,
/// 2: grayscale and alpha, 3: RGB, 4: RGBA). 16-bit and HDR images are
/// converted to 8 bits, a GIF yields its first frame, and a CMYK or YCCK
/// JPEG with an Adobe APP14 marker is converted to RGB. Throws c10::Error
/// naming the file and the reason when the file cannot be read or decoded,
/// or when its header declares more than `max_pixels` pixels. That check
/// reads only the header, so such a file is rejected before any pixel
/// memory is allocated.
Image decode_image(const std::string& path, int64_t channels,
                   int64_t max_pixels = kDefaultMaxImagePixels);

/// Scales `image` so that it covers `height` x `width` with its aspect ratio
/// kept, then cuts the centre. An image that already has the output size is
/// copied unchanged. Throws when either size is below 1.
Image resize_and_center_crop(const Image& image, int64_t height,
                             int64_t width);

/// Converts to a float tensor [C, H, W] with values in [0, 1].
torch::Tensor image_to_tensor(const Image& image);

/// Arranges images [N, C, H, W] in a grid of `images_per_row` columns with
/// `padding` pixels of `pad_value` between and around them, as
/// torchvision.utils.make_grid does. Returns [C, H', W'].
///
/// NOTE: torchvision repeats a single channel to three; this version keeps
/// one channel so that the PNG stays grayscale. Like torchvision, it returns
/// a lone image (N = 1) without padding, and the grid has
/// min(N, images_per_row) columns.
torch::Tensor make_grid(const torch::Tensor& images, int64_t images_per_row,
                        int64_t padding = 2, double pad_value = 0.0);

/// Writes a floating-point [C, H, W] tensor with values in [0, 1] as a PNG,
/// rounded to 8 bits as torchvision.utils.save_image does:
/// clamp(x * 255 + 0.5, 0, 255), truncated. C is 1 to 4, as in
/// decode_image. The file is written under a temporary name next to `path`
/// and renamed, so a crash never leaves a partial file. Throws naming the
/// path and the system's reason when the file cannot be written.
void write_png(const std::string& path, const torch::Tensor& image);

/// Writes an 8-bit image as a PNG, as the tensor overload does.
void write_png(const std::string& path, const Image& image);

/// Writes images [N, C, H, W] in [0, 1] as one grid PNG with
/// `images_per_row` columns.
void save_image_grid(const torch::Tensor& images, const std::string& path,
                     int64_t images_per_row);

/// File name extensions (lower case, without the dot) that decode_image reads.
const std::vector<std::string>& image_extensions();

} // namespace ddpm
