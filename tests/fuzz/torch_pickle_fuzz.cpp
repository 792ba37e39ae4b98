// libFuzzer target: the pickle reader on its own. The input becomes the
// data.pkl record of a well-formed torch.save archive that also contains two
// small tensor storages (records "0" and "1"), so mutations reach the
// opcodes instead of failing the zip checks.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>

#include "ddpm/io/torch_pickle.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = (ddpm::fuzz::scratch_folder() / "pickle.pt").string();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    caffe2::serialize::PyTorchStreamWriter writer(
        [&out](const void* bytes, size_t n) {
          out.write(static_cast<const char*>(bytes), std::streamsize(n));
          return n;
        });
    writer.writeRecord("data.pkl", data, size);
    const float storage[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    writer.writeRecord("data/0", storage, sizeof(storage));
    writer.writeRecord("data/1", storage, 2);
    writer.writeRecord("byteorder", "little", 6);
    writer.writeEndOfFile();
  }
  try {
    ddpm::read_torch_save(path);
  } catch (const c10::Error&) {
  }
  return 0;
}
