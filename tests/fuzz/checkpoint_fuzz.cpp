// libFuzzer target: a whole checkpoint file through load_checkpoint (the
// zip container, the pickle reader and the checks on the keys). Errors are
// c10::Error; a crash, hang or sanitizer report is a finding.

#include <cstddef>
#include <cstdint>

#include <c10/util/Exception.h>

#include "ddpm/io/checkpoint.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = ddpm::fuzz::write_input("model.pt", data, size);
  try {
    ddpm::load_checkpoint(path);
  } catch (const c10::Error&) {
  }
  return 0;
}
