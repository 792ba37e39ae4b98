#pragma once

#include <map>
#include <string>

#include "ddpm/io/checkpoint.h"

namespace ddpm {

/// Writes `tensors` in the safetensors format (an 8-byte little-endian
/// header length, a JSON header with each tensor's dtype, shape and byte
/// range, then the raw little-endian data), under the keys given, with
/// optional string `metadata`. Written to a temporary file and renamed.
void save_safetensors(const StateDict& tensors, const std::string& path,
                      const std::map<std::string, std::string>& metadata = {});

/// Reads a safetensors file into CPU tensors. Throws naming the file and
/// the cause for a truncated file, a malformed header, an unsupported
/// dtype, or a byte range that leaves the data or does not match the shape.
StateDict load_safetensors(const std::string& path);

} // namespace ddpm
