// libFuzzer target: one file through the dataset loader, as training reads
// it (header check against the pixel limit, stb decoding, channel
// conversion, resize and centre crop). Every input must either give a
// uint8 [3, 16, 16] tensor or make the folder report that no image is
// readable; anything else is a finding.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <sstream>

#include <c10/util/Exception.h>

#include "ddpm/data/image_folder.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& folder = ddpm::fuzz::scratch_folder();
  ddpm::fuzz::write_input("input.png", data, size);

  ddpm::ImageFolderOptions options;
  options.folder = folder.string();
  options.height = 16;
  options.width = 16;
  options.channels = 3;
  options.cache_images = false;
  // A low limit keeps each run fast; the check itself is what is tested.
  options.max_image_pixels = 1 << 20;
  ddpm::ImageFolder images(options);
  try {
    auto image = images.get(0);
    if (image.sizes() != c10::IntArrayRef{3, 16, 16} ||
        image.scalar_type() != torch::kUInt8) {
      std::ostringstream message;
      message << "decoded image has sizes " << image.sizes() << " and dtype "
              << image.scalar_type() << ", expected uint8 [3, 16, 16]\n";
      std::fputs(message.str().c_str(), stderr);
      std::terminate();
    }
  } catch (const c10::Error&) {
    // Expected when the only file is unreadable.
  }
  return 0;
}
