#include "ddpm/io/image.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <memory>
#include <optional>
#include <utility>
#include <string_view>
#include <system_error>

#include <torch/torch.h>

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>

#ifdef _WIN32
#include <process.h>
#define DDPM_GETPID _getpid
#else
#include <unistd.h>
#define DDPM_GETPID getpid
#endif

namespace ddpm {
namespace {

namespace fs = std::filesystem;

// Thread-safe, unlike std::strerror, because images are written from
// several threads.
std::string error_text(int error_number) {
  return std::generic_category().message(error_number);
}

void check_channels(int64_t channels) {
  TORCH_CHECK(channels >= 1 && channels <= 4,
              "channels must be 1 (gray), 2 (gray and alpha), 3 (RGB) or 4 "
              "(RGBA), got ",
              channels);
}

void check_image(const Image& image) {
  check_channels(image.channels);
  TORCH_CHECK(image.height >= 1 && image.width >= 1,
              "image must be at least 1x1 pixels, got ", image.width, "x",
              image.height);
  TORCH_CHECK(static_cast<int64_t>(image.pixels.size()) ==
                  image.height * image.width * image.channels,
              "image of ", image.width, "x", image.height, "x",
              image.channels, " must hold ",
              image.height * image.width * image.channels, " bytes, got ",
              image.pixels.size());
}

// Reads the whole file, so that a missing or unreadable file gets the
// system's reason in the error message rather than stb's "can't fopen".
std::vector<uint8_t> read_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"),
                                             &std::fclose);
  TORCH_CHECK(file != nullptr, "failed to open ", std::quoted(path), ": ",
              error_text(errno));

  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  size_t count = 0;
  while ((count = std::fread(chunk, 1, sizeof(chunk), file.get())) > 0) {
    bytes.insert(bytes.end(), chunk, chunk + count);
  }
  TORCH_CHECK(!std::ferror(file.get()), "failed to read ", std::quoted(path),
              ": ", error_text(errno));
  return bytes;
}

Image resize(const Image& image, int64_t height, int64_t width) {
  Image resized{height, width, image.channels,
                std::vector<uint8_t>(height * width * image.channels)};
  // Naming the alpha channel makes stb weight colors by alpha, so that
  // transparent pixels do not bleed their color into their neighbors.
  const int alpha_channel =
      image.channels == 2 || image.channels == 4
          ? static_cast<int>(image.channels - 1)
          : STBIR_ALPHA_CHANNEL_NONE;
  const int ok = stbir_resize_uint8_generic(
      image.pixels.data(), static_cast<int>(image.width),
      static_cast<int>(image.height), /*input_stride_in_bytes=*/0,
      resized.pixels.data(), static_cast<int>(width),
      static_cast<int>(height), /*output_stride_in_bytes=*/0,
      static_cast<int>(image.channels), alpha_channel, /*flags=*/0,
      STBIR_EDGE_CLAMP, STBIR_FILTER_DEFAULT, STBIR_COLORSPACE_LINEAR,
      /*alloc_context=*/nullptr);
  TORCH_CHECK(ok, "failed to resize a ", image.width, "x", image.height,
              " image to ", width, "x", height);
  return resized;
}

// Names the format whose signature starts `bytes`, or returns an empty
// string. TGA has no signature, so it is never named.
std::string format_from_signature(const std::vector<uint8_t>& bytes) {
  const auto starts_with = [&bytes](std::string_view prefix) {
    return bytes.size() >= prefix.size() &&
           std::equal(prefix.begin(), prefix.end(), bytes.begin(),
                      [](char expected, uint8_t actual) {
                        return static_cast<uint8_t>(expected) == actual;
                      });
  };
  if (starts_with("\x89PNG\r\n\x1a\n")) {
    return "PNG";
  }
  if (starts_with("\xff\xd8\xff")) {
    return "JPEG";
  }
  if (starts_with("GIF87a") || starts_with("GIF89a")) {
    return "GIF";
  }
  if (starts_with("BM")) {
    return "BMP";
  }
  if (starts_with("8BPS")) {
    return "PSD";
  }
  if (starts_with("#?RADIANCE") || starts_with("#?RGBE")) {
    return "HDR";
  }
  if (starts_with("\x53\x80\xf6\x34")) {
    return "PIC";
  }
  if (starts_with("P5") || starts_with("P6")) {
    return "PNM";
  }
  return "";
}

uint32_t read_big_endian(const std::vector<uint8_t>& bytes, size_t offset,
                         size_t count) {
  uint32_t value = 0;
  for (size_t i = 0; i < count; ++i) {
    value = (value << 8) | bytes[offset + i];
  }
  return value;
}

// Returns the width and height that a PNG's IHDR chunk or a JPEG's frame
// header declares, or nothing when the header is cut short or is neither.
// stb_image's own header reader cannot serve here, because it rejects
// images above 2^30 bytes with a reason that later decoders overwrite.
std::optional<std::pair<int64_t, int64_t>> declared_png_or_jpeg_size(
    const std::vector<uint8_t>& bytes, const std::string& format) {
  if (format == "PNG") {
    // Signature (8 bytes), chunk length (4), "IHDR", width, height.
    if (bytes.size() < 24 || read_big_endian(bytes, 12, 4) != 0x49484452) {
      return std::nullopt;
    }
    return std::pair<int64_t, int64_t>(read_big_endian(bytes, 16, 4),
                                       read_big_endian(bytes, 20, 4));
  }
  if (format != "JPEG") {
    return std::nullopt;
  }
  // Walk the marker segments to the first start-of-frame marker
  // (0xC0 to 0xCF except DHT 0xC4, JPG 0xC8 and DAC 0xCC), whose segment
  // holds the precision (1 byte), height (2) and width (2).
  size_t offset = 2;
  while (offset + 4 <= bytes.size() && bytes[offset] == 0xff) {
    const uint8_t marker = bytes[offset + 1];
    if (marker == 0xff) {
      ++offset; // fill byte
      continue;
    }
    const size_t length = read_big_endian(bytes, offset + 2, 2);
    const bool start_of_frame = marker >= 0xc0 && marker <= 0xcf &&
                                marker != 0xc4 && marker != 0xc8 &&
                                marker != 0xcc;
    if (start_of_frame) {
      if (offset + 9 > bytes.size()) {
        return std::nullopt;
      }
      return std::pair<int64_t, int64_t>(read_big_endian(bytes, offset + 7, 2),
                                         read_big_endian(bytes, offset + 5, 2));
    }
    offset += 2 + length;
  }
  return std::nullopt;
}

// Checks the tables of a JPEG for two defects that stb_image 2.27, the
// version Debian ships, does not catch, both found by
// tests/fuzz/image_folder_fuzz:
// - a Huffman table (DHT segment) that declares more than 256 codes, on
//   which stb writes past its 257-entry code-length array;
// - a scan that uses a Huffman or quantization table that no earlier DHT or
//   DQT segment defines. stb does not initialise its tables, so it decodes
//   with whatever memory held and can index far outside its arrays.
// The walk skips entropy-coded data between scans up to the next marker.
void check_jpeg_tables(const std::vector<uint8_t>& bytes,
                       const std::string& path) {
  // stb takes any run of 0xff fill bytes before the start-of-image marker
  // 0xd8 as a JPEG too.
  size_t offset = 0;
  while (offset < bytes.size() && bytes[offset] == 0xff) {
    ++offset;
  }
  if (offset == 0 || offset >= bytes.size() || bytes[offset] != 0xd8) {
    return;
  }
  ++offset;
  const auto byte_at = [&bytes](size_t index) -> size_t {
    return index < bytes.size() ? bytes[index] : 0;
  };
  // Tables defined so far: Huffman by class (0 DC, 1 AC) and id, and
  // quantization by id. stb rejects ids above 3 itself.
  bool huffman_defined[2][4] = {};
  bool quantization_defined[4] = {};
  // The frame header's component ids and their quantization tables.
  std::vector<std::pair<size_t, size_t>> components;
  bool progressive = false;
  while (offset + 4 <= bytes.size()) {
    if (bytes[offset] != 0xff) {
      ++offset; // entropy-coded data
      continue;
    }
    const uint8_t marker = bytes[offset + 1];
    const bool standalone = marker == 0x00 || marker == 0x01 ||
                            marker == 0xff ||
                            (marker >= 0xd0 && marker <= 0xd7);
    if (standalone) {
      offset += marker == 0xff ? 1 : 2;
      continue;
    }
    if (marker == 0xd9) {
      return; // end of image
    }
    const size_t length = read_big_endian(bytes, offset + 2, 2);
    const size_t body = offset + 4;
    if (marker == 0xdb) {
      // Each quantization table is a precision and id byte and 64 values
      // of 8 or 16 bits.
      int64_t remaining = int64_t(length) - 2;
      size_t table = body;
      while (remaining > 0 && table < bytes.size()) {
        const size_t precision = byte_at(table) >> 4;
        const size_t id = byte_at(table) & 15;
        if (id < 4) {
          quantization_defined[id] = true;
        }
        const size_t size = precision == 0 ? 65 : 129;
        table += size;
        remaining -= int64_t(size);
      }
    } else if (marker >= 0xc0 && marker <= 0xc2) {
      // Frame header: precision, height, width, component count, then an
      // id, sampling factors and quantization table id per component.
      progressive = marker == 0xc2;
      components.clear();
      const size_t count = byte_at(body + 5);
      for (size_t i = 0; i < count; ++i) {
        components.emplace_back(byte_at(body + 6 + 3 * i),
                                byte_at(body + 8 + 3 * i));
      }
    } else if (marker == 0xda) {
      // Scan header: component count, a component id and table ids (DC in
      // the high half, AC in the low half) per component, then the
      // spectral selection start and the successive approximation byte.
      const size_t count = byte_at(body);
      const size_t spectral_start = byte_at(body + 1 + 2 * count);
      const size_t approximation_high = byte_at(body + 3 + 2 * count) >> 4;
      // Which tables stb decodes this scan with.
      const bool uses_dc = !progressive ||
                           (spectral_start == 0 && approximation_high == 0);
      const bool uses_ac = !progressive || spectral_start != 0;
      for (size_t i = 0; i < count; ++i) {
        const size_t id = byte_at(body + 1 + 2 * i);
        const size_t dc_table = byte_at(body + 2 + 2 * i) >> 4;
        const size_t ac_table = byte_at(body + 2 + 2 * i) & 15;
        const auto component = std::find_if(
            components.begin(), components.end(),
            [id](const auto& entry) { return entry.first == id; });
        if (component != components.end() && component->second < 4) {
          TORCH_CHECK(quantization_defined[component->second],
                      "failed to decode ", std::quoted(path),
                      ": corrupt JPEG, a scan uses quantization table ",
                      component->second,
                      ", which no DQT segment before it defines");
        }
        TORCH_CHECK(!uses_dc || dc_table > 3 || huffman_defined[0][dc_table],
                    "failed to decode ", std::quoted(path),
                    ": corrupt JPEG, a scan uses DC Huffman table ", dc_table,
                    ", which no DHT segment before it defines");
        TORCH_CHECK(!uses_ac || ac_table > 3 || huffman_defined[1][ac_table],
                    "failed to decode ", std::quoted(path),
                    ": corrupt JPEG, a scan uses AC Huffman table ", ac_table,
                    ", which no DHT segment before it defines");
      }
    } else if (marker == 0xc4) {
      // Read the tables as stb does: while the segment length shows more
      // follows, even past the segment's end, with bytes past the end of
      // the file as zeros. Each table is a class and id byte, 16 code
      // counts and the codes. stb goes on at the end of the last table.
      int64_t remaining = int64_t(length) - 2;
      size_t table = body;
      while (remaining > 0 && table < bytes.size()) {
        size_t codes = 0;
        for (size_t i = 1; i <= 16; ++i) {
          codes += byte_at(table + i);
        }
        TORCH_CHECK(codes <= 256, "failed to decode ", std::quoted(path),
                    ": corrupt JPEG, a Huffman table declares ", codes,
                    " codes, more than 256");
        const size_t table_class = byte_at(table) >> 4;
        const size_t id = byte_at(table) & 15;
        if (table_class < 2 && id < 4) {
          huffman_defined[table_class][id] = true;
        }
        table += 17 + codes;
        remaining -= int64_t(17 + codes);
      }
      offset = std::max(table, body);
      continue;
    }
    offset += 2 + length;
  }
}

// Checks a binary PNM header (P5 or P6) for three defects that stb_image
// 2.27, the version Debian ships, lets through:
// - a width, height or maximum value beyond INT_MAX, which stb accumulates
//   in an int without a bound (undefined behaviour, found by
//   tests/fuzz/image_folder_fuzz);
// - a width or height of zero;
// - fewer pixel bytes than the header declares, where stb returns the
//   image with the missing pixels uninitialised.
// The walk reads the header as stb does. Whitespace and '#' comments
// separate the fields. A field ends at the first non-digit, or once the
// last byte of the file has been read. The pixels start after the one
// character that ends the maximum value.
void check_pnm_header(const std::vector<uint8_t>& bytes,
                      const std::string& path) {
  if (bytes.size() < 2 || bytes[0] != 'P' ||
      (bytes[1] != '5' && bytes[1] != '6')) {
    return;
  }
  size_t next = 2;
  const auto at_end = [&] { return next >= bytes.size(); };
  const auto read = [&]() -> char {
    return at_end() ? '\0' : static_cast<char>(bytes[next++]);
  };
  const auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
  };
  char c = read();
  const char* const names[] = {"width", "height", "maximum value"};
  int64_t fields[3] = {};
  for (int i = 0; i < 3; ++i) {
    for (;;) {
      while (!at_end() && is_space(c)) {
        c = read();
      }
      if (at_end() || c != '#') {
        break;
      }
      while (!at_end() && c != '\n' && c != '\r') {
        c = read();
      }
    }
    std::string digits;
    while (!at_end() && c >= '0' && c <= '9') {
      digits += c;
      fields[i] = fields[i] * 10 + (c - '0');
      TORCH_CHECK(fields[i] <= INT_MAX, "failed to decode ",
                  std::quoted(path), ": corrupt PNM header, its ", names[i],
                  " field (starting ", digits, ") is larger than ", INT_MAX);
      c = read();
    }
  }
  const auto [width, height, maximum] = fields;
  if (maximum > 65535) {
    return; // stb rejects this with its own message
  }
  TORCH_CHECK(width >= 1 && height >= 1, "failed to decode ",
              std::quoted(path), ": corrupt PNM header, it declares ", width,
              "x", height, " pixels; both sides must be at least 1");
  // stb (or max_image_pixels) rejects a larger side before reading any
  // pixel. Below this bound the product fits in 64 bits.
  constexpr int64_t kLargestSide = int64_t{1} << 24;
  if (width > kLargestSide || height > kLargestSide) {
    return;
  }
  const int64_t samples_per_pixel = bytes[1] == '6' ? 3 : 1;
  const int64_t bytes_per_sample = maximum > 255 ? 2 : 1;
  const uint64_t expected =
      uint64_t(width * height * samples_per_pixel * bytes_per_sample);
  const uint64_t present = bytes.size() - next;
  TORCH_CHECK(present >= expected, "failed to decode ", std::quoted(path),
              ": truncated PNM file, its header declares ", width, "x",
              height, " pixels (", expected, " bytes) but ", present,
              " bytes follow it");
}

// Returns the first bytes of `bytes` in hexadecimal, e.g. "6e 6f 74 20".
std::string leading_bytes_hex(const std::vector<uint8_t>& bytes) {
  constexpr size_t kShown = 8;
  static const char* const kDigits = "0123456789abcdef";
  std::string text;
  for (size_t i = 0; i < std::min(bytes.size(), kShown); ++i) {
    text += i == 0 ? "" : " ";
    text += kDigits[bytes[i] >> 4];
    text += kDigits[bytes[i] & 0xf];
  }
  return text;
}

// Explains why stb_image failed on `bytes`. stb tries one decoder after
// the other and keeps the reason of the last one it tried, so for a file
// whose header is cut short it can report "bad png sig" about a JPEG.
// The file's signature gives a reason that names the right format, and
// stb's own reason is kept only when the header parsed, because then the
// decoder of that format produced it.
std::string decode_failure_reason(const std::vector<uint8_t>& bytes,
                                  bool header_parsed) {
  const std::string format = format_from_signature(bytes);
  if (format.empty()) {
    return "unknown image format: the file starts with bytes " +
           leading_bytes_hex(bytes) +
           ", which match no format that stb_image reads (PNG, JPEG, BMP, "
           "TGA, GIF, PSD, HDR, PIC, PNM)";
  }
  if (!header_parsed) {
    return "truncated or corrupt " + format +
           " file: the signature is valid but the header is incomplete or "
           "invalid";
  }
  const char* reason = stbi_failure_reason();
  return "truncated or corrupt " + format + " file: " +
         (reason != nullptr ? reason : "unknown reason");
}

void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<uint8_t>*>(context);
  const auto* bytes = static_cast<const uint8_t*>(data);
  out->insert(out->end(), bytes, bytes + size);
}

void write_file_atomically(const std::string& path,
                           const std::vector<uint8_t>& bytes) {
  const std::string temporary =
      path + ".tmp-" + std::to_string(DDPM_GETPID());
  FILE* file = std::fopen(temporary.c_str(), "wb");
  TORCH_CHECK(file != nullptr, "failed to write ", std::quoted(path),
              ": cannot create ", std::quoted(temporary), ": ",
              error_text(errno));

  const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), file);
  int error_number = written == bytes.size() ? 0 : errno;
  if (std::fclose(file) != 0 && error_number == 0) {
    error_number = errno;
  }
  std::error_code error;
  if (error_number == 0) {
    fs::rename(temporary, path, error);
  }
  if (error_number != 0 || error) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
  }
  TORCH_CHECK(error_number == 0, "failed to write ", std::quoted(path), ": ",
              error_text(error_number));
  TORCH_CHECK(!error, "failed to rename ", std::quoted(temporary), " to ",
              std::quoted(path), ": ", error.message());
}

void write_png_pixels(const std::string& path, const uint8_t* pixels,
                      int64_t height, int64_t width, int64_t channels) {
  check_channels(channels);
  TORCH_CHECK(height >= 1 && width >= 1,
              "PNG must be at least 1x1 pixels, got ", width, "x", height,
              " for ", std::quoted(path));
  TORCH_CHECK(height <= INT_MAX && width * channels <= INT_MAX,
              "image of ", width, "x", height, "x", channels,
              " is too large for the PNG writer, which takes int sizes");

  std::vector<uint8_t> encoded;
  const int ok = stbi_write_png_to_func(
      &append_bytes, &encoded, static_cast<int>(width),
      static_cast<int>(height), static_cast<int>(channels), pixels,
      static_cast<int>(width * channels));
  TORCH_CHECK(ok && !encoded.empty(), "failed to encode ", std::quoted(path),
              " as PNG");
  write_file_atomically(path, encoded);
}

// Decodes a 16-bit PNM to `channels` channels of 8 bits. stb_image 2.27
// converts the channels of such a file with its 8-bit routine, which reads
// and writes past its buffers (found by tests/fuzz/image_folder_fuzz). It
// also takes the samples in the machine's byte order, but PNM stores the
// most significant byte first. So here stb only reads the file's own
// samples, and this function converts them by stb's rules for 16-bit
// samples. Gray is repeated, gray from RGB is (77 r + 150 g + 29 b) / 256,
// and an added alpha is opaque. The top 8 bits of each sample are kept.
Image decode_16_bit_pnm(const std::vector<uint8_t>& bytes,
                        const std::string& path, int64_t channels) {
  int width = 0;
  int height = 0;
  int channels_in_file = 0;
  std::unique_ptr<stbi_us, void (*)(void*)> data(
      stbi_load_16_from_memory(bytes.data(), static_cast<int>(bytes.size()),
                               &width, &height, &channels_in_file,
                               /*desired_channels=*/0),
      &stbi_image_free);
  TORCH_CHECK(data != nullptr, "failed to decode ", std::quoted(path), ": ",
              decode_failure_reason(bytes, /*header_parsed=*/true));
  TORCH_CHECK(channels_in_file == 1 || channels_in_file == 3,
              "failed to decode ", std::quoted(path), ": a PNM file has 1 or "
              "3 channels, stb_image returned ", channels_in_file);

  const int64_t pixels = int64_t{height} * width;
  Image image{height, width, channels, {}};
  image.pixels.resize(size_t(pixels * channels));
  const bool has_alpha = channels == 2 || channels == 4;
  const int64_t colours = has_alpha ? channels - 1 : channels;
  // stb copies the file's bytes unchanged, so each sample is read here as
  // two big-endian bytes.
  const auto* samples = reinterpret_cast<const uint8_t*>(data.get());
  const auto sample = [samples](int64_t index) {
    return (int{samples[2 * index]} << 8) | samples[2 * index + 1];
  };
  for (int64_t i = 0; i < pixels; ++i) {
    const int64_t first = i * channels_in_file;
    uint8_t* out = image.pixels.data() + i * channels;
    for (int64_t k = 0; k < colours; ++k) {
      int value = 0;
      if (channels_in_file == 1) {
        value = sample(first);
      } else if (colours == 3) {
        value = sample(first + k);
      } else {
        value = (77 * sample(first) + 150 * sample(first + 1) +
                 29 * sample(first + 2)) >> 8;
      }
      out[k] = uint8_t(value >> 8);
    }
    if (has_alpha) {
      out[colours] = 0xff;
    }
  }
  return image;
}

} // namespace

Image decode_image(const std::string& path, int64_t channels,
                   int64_t max_pixels) {
  check_channels(channels);
  TORCH_CHECK(max_pixels >= 1, "max_pixels must be at least 1, got ",
              max_pixels);
  const std::vector<uint8_t> bytes = read_file(path);
  TORCH_CHECK(!bytes.empty(), "failed to decode ", std::quoted(path),
              ": the file is empty");
  TORCH_CHECK(bytes.size() <= INT_MAX, "failed to decode ",
              std::quoted(path), ": the file has ", bytes.size(),
              " bytes, more than the decoder accepts (", INT_MAX, ")");

  // Before any stb call: stbi_info already builds Huffman tables and
  // parses PNM headers.
  check_jpeg_tables(bytes, path);
  check_pnm_header(bytes, path);
  const std::string format = format_from_signature(bytes);

  int width = 0;
  int height = 0;
  int channels_in_file = 0;
  const bool header_parsed =
      stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()),
                            &width, &height, &channels_in_file) != 0;
  auto declared = declared_png_or_jpeg_size(bytes, format);
  if (!declared && header_parsed) {
    declared = std::pair<int64_t, int64_t>(width, height);
  }
  if (declared) {
    const auto [declared_width, declared_height] = *declared;
    // Both sides are below 2^32, so the product fits in 64 bits unsigned.
    const uint64_t pixels =
        uint64_t(declared_width) * uint64_t(declared_height);
    TORCH_CHECK(pixels <= uint64_t(max_pixels), "failed to decode ",
                std::quoted(path), ": its header declares ", declared_width,
                "x", declared_height, " = ", pixels,
                " pixels, more than max_image_pixels = ", max_pixels);
  }

  if (format == "PNM" && header_parsed &&
      stbi_is_16_bit_from_memory(bytes.data(),
                                 static_cast<int>(bytes.size())) != 0) {
    return decode_16_bit_pnm(bytes, path, channels);
  }

  // stb converts to the requested channel count (gray = weighted RGB sum,
  // gray to RGB by copying) and 16-bit or HDR data to 8 bits.
  std::unique_ptr<stbi_uc, void (*)(void*)> data(
      stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()),
                            &width, &height, &channels_in_file,
                            static_cast<int>(channels)),
      &stbi_image_free);
  TORCH_CHECK(data != nullptr, "failed to decode ", std::quoted(path), ": ",
              decode_failure_reason(bytes, header_parsed));

  Image image{height, width, channels, {}};
  image.pixels.assign(data.get(), data.get() + int64_t{height} * width *
                                                   channels);
  return image;
}

Image resize_and_center_crop(const Image& image, int64_t height,
                             int64_t width) {
  check_image(image);
  TORCH_CHECK(height >= 1 && width >= 1,
              "output size must be at least 1x1 pixels, got ", width, "x",
              height);
  if (image.height == height && image.width == width) {
    return image;
  }

  // The side whose ratio output / input is larger sets the scale, so the
  // resized image covers the output and the other side is cropped. Integer
  // arithmetic rounds the other side up exactly.
  int64_t resized_height = height;
  int64_t resized_width = width;
  if (height * image.width >= width * image.height) {
    resized_width = (image.width * height + image.height - 1) / image.height;
  } else {
    resized_height = (image.height * width + image.width - 1) / image.width;
  }
  const int64_t top = (resized_height - height) / 2;
  const int64_t left = (resized_width - width) / 2;
  const bool same_size =
      resized_height == image.height && resized_width == image.width;
  const int64_t row_bytes = width * image.channels;
  Image cropped{height, width, image.channels,
                std::vector<uint8_t>(height * row_bytes)};
  if (same_size) {
    for (int64_t y = 0; y < height; ++y) {
      const uint8_t* from = image.pixels.data() +
                            ((top + y) * image.width + left) * image.channels;
      std::copy(from, from + row_bytes, cropped.pixels.data() + y * row_bytes);
    }
    return cropped;
  }

  // Resize and crop in one pass: stb samples only the output window of the
  // resized image (the same scale, shifted by the crop offset), so a very
  // long image costs no more than the output.
  const int alpha_channel =
      image.channels == 2 || image.channels == 4
          ? static_cast<int>(image.channels - 1)
          : STBIR_ALPHA_CHANNEL_NONE;
  const int ok = stbir_resize_subpixel(
      image.pixels.data(), static_cast<int>(image.width),
      static_cast<int>(image.height), /*input_stride_in_bytes=*/0,
      cropped.pixels.data(), static_cast<int>(width),
      static_cast<int>(height), /*output_stride_in_bytes=*/0,
      STBIR_TYPE_UINT8, static_cast<int>(image.channels), alpha_channel,
      /*flags=*/0, STBIR_EDGE_CLAMP, STBIR_EDGE_CLAMP, STBIR_FILTER_DEFAULT,
      STBIR_FILTER_DEFAULT, STBIR_COLORSPACE_LINEAR, /*alloc_context=*/nullptr,
      float(resized_width) / float(image.width),
      float(resized_height) / float(image.height), float(left), float(top));
  TORCH_CHECK(ok, "failed to resize a ", image.width, "x", image.height,
              " image to ", resized_width, "x", resized_height,
              " and crop it to ", width, "x", height);
  return cropped;
}

torch::Tensor image_to_tensor(const Image& image) {
  check_image(image);
  // from_blob does not copy, but to(kFloat) does, so the result owns its
  // data.
  torch::Tensor pixels = torch::from_blob(
      const_cast<uint8_t*>(image.pixels.data()),
      {image.height, image.width, image.channels}, torch::kUInt8);
  return pixels.permute({2, 0, 1}).to(torch::kFloat).div_(255.0)
      .contiguous(); // [C, H, W]
}

torch::Tensor make_grid(const torch::Tensor& images, int64_t images_per_row,
                        int64_t padding, double pad_value) {
  TORCH_CHECK(images.dim() == 4,
              "images must have 4 dimensions [N, C, H, W], got ",
              images.sizes());
  TORCH_CHECK(images.size(0) >= 1, "images must hold at least one image");
  TORCH_CHECK(images_per_row >= 1, "images_per_row must be at least 1, got ",
              images_per_row);
  TORCH_CHECK(padding >= 0, "padding must be at least 0, got ", padding);

  const int64_t count = images.size(0);
  if (count == 1) {
    return images[0];
  }
  const int64_t columns = std::min(images_per_row, count);
  const int64_t rows = (count + columns - 1) / columns;
  const int64_t cell_height = images.size(2) + padding;
  const int64_t cell_width = images.size(3) + padding;
  torch::Tensor grid = torch::full(
      {images.size(1), rows * cell_height + padding,
       columns * cell_width + padding},
      pad_value, images.options()); // [C, H', W']

  for (int64_t k = 0; k < count; ++k) {
    const int64_t row = k / columns;
    const int64_t column = k % columns;
    grid.narrow(1, row * cell_height + padding, images.size(2))
        .narrow(2, column * cell_width + padding, images.size(3))
        .copy_(images[k]);
  }
  return grid;
}

void write_png(const std::string& path, const torch::Tensor& image) {
  TORCH_CHECK(image.dim() == 3, "image must have 3 dimensions [C, H, W], got ",
              image.sizes(), " for ", std::quoted(path));
  TORCH_CHECK(image.is_floating_point(),
              "image must be a floating-point tensor with values in [0, 1], "
              "got ",
              image.scalar_type(), " for ", std::quoted(path));
  check_channels(image.size(0));

  // Same rounding as torchvision.utils.save_image, in the input's dtype.
  const torch::Tensor pixels = image.detach()
                                   .to(torch::kCPU)
                                   .mul(255)
                                   .add_(0.5)
                                   .clamp_(0, 255)
                                   .to(torch::kUInt8)
                                   .permute({1, 2, 0})
                                   .contiguous(); // [H, W, C]
  write_png_pixels(path, pixels.data_ptr<uint8_t>(), image.size(1),
                   image.size(2), image.size(0));
}

void write_png(const std::string& path, const Image& image) {
  check_image(image);
  write_png_pixels(path, image.pixels.data(), image.height, image.width,
                   image.channels);
}

void save_image_grid(const torch::Tensor& images, const std::string& path,
                     int64_t images_per_row) {
  write_png(path, make_grid(images, images_per_row));
}

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> extensions = {
      "png", "jpg", "jpeg", "bmp", "tga", "gif",
      "psd", "hdr", "pic",  "pnm", "ppm", "pgm"};
  return extensions;
}

} // namespace ddpm
