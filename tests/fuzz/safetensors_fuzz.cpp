// libFuzzer target: load_safetensors on arbitrary bytes (the 8-byte header
// length, the JSON header, dtypes, shapes and byte ranges).

#include <cstddef>
#include <cstdint>

#include <c10/util/Exception.h>

#include "ddpm/io/safetensors.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path =
      ddpm::fuzz::write_input("model.safetensors", data, size);
  try {
    ddpm::load_safetensors(path);
  } catch (const c10::Error&) {
  }
  return 0;
}
