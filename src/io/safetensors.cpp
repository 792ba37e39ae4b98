#include "ddpm/io/safetensors.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

namespace ddpm {
namespace {

using Json = nlohmann::json;

const std::vector<std::pair<std::string, torch::ScalarType>>& dtypes() {
  static const std::vector<std::pair<std::string, torch::ScalarType>> table =
      {{"F64", torch::kFloat64}, {"F32", torch::kFloat32},
       {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
       {"I64", torch::kInt64},   {"I32", torch::kInt32},
       {"I16", torch::kInt16},   {"I8", torch::kInt8},
       {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};
  return table;
}

std::string dtype_name(torch::ScalarType type) {
  for (const auto& [name, scalar] : dtypes()) {
    if (scalar == type) {
      return name;
    }
  }
  TORCH_CHECK(false, "safetensors cannot store dtype ", type);
}

torch::ScalarType dtype_from(const std::string& name,
                             const std::string& path) {
  for (const auto& [known, scalar] : dtypes()) {
    if (known == name) {
      return scalar;
    }
  }
  TORCH_CHECK(false, "safetensors file \"", path, "\" has unsupported dtype \"",
              name, "\"");
}

} // namespace

void save_safetensors(const StateDict& tensors, const std::string& path,
                      const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& item : tensors) {
    auto tensor = item.value().detach().cpu().contiguous();
    const uint64_t bytes = tensor.numel() * tensor.element_size();
    header[item.key()] = {{"dtype", dtype_name(tensor.scalar_type())},
                          {"shape", tensor.sizes().vec()},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(tensor);
  }
  std::string text = header.dump();
  // Pad the header with spaces so the data starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::vector<char> file(8);
  const uint64_t length = text.size();
  for (int i = 0; i < 8; ++i) {
    file[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  }
  file.insert(file.end(), text.begin(), text.end());
  for (const auto& tensor : contiguous) {
    const auto* data = static_cast<const char*>(tensor.data_ptr());
    file.insert(file.end(), data,
                data + tensor.numel() * tensor.element_size());
  }
  write_file_atomically(path, file);
}

StateDict load_safetensors(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  TORCH_CHECK(stream, "cannot open safetensors file \"", path, "\"");
  const std::vector<char> file((std::istreambuf_iterator<char>(stream)),
                               std::istreambuf_iterator<char>());
  TORCH_CHECK(file.size() >= 8, "safetensors file \"", path,
              "\" is truncated: ", file.size(), " bytes");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) {
    length = (length << 8) | static_cast<uint8_t>(file[i]);
  }
  TORCH_CHECK(length <= file.size() - 8, "safetensors file \"", path,
              "\" is truncated: its header needs ", length, " bytes, ",
              file.size() - 8, " follow");
  Json header;
  try {
    header = Json::parse(file.begin() + 8, file.begin() + 8 + length);
  } catch (const Json::exception& error) {
    TORCH_CHECK(false, "safetensors file \"", path,
                "\" has a malformed header: ", error.what());
  }
  TORCH_CHECK(header.is_object(), "safetensors file \"", path,
              "\" has a header that is not a JSON object");

  const char* data = file.data() + 8 + length;
  const uint64_t data_size = file.size() - 8 - length;
  StateDict tensors;
  try {
    for (const auto& [key, entry] : header.items()) {
      if (key == "__metadata__") {
        continue;
      }
      const auto type = dtype_from(entry.at("dtype").get<std::string>(), path);
      const auto shape = entry.at("shape").get<std::vector<int64_t>>();
      const auto range = entry.at("data_offsets").get<std::vector<uint64_t>>();
      TORCH_CHECK(range.size() == 2 && range[0] <= range[1] &&
                      range[1] <= data_size,
                  "safetensors file \"", path, "\": \"", key,
                  "\" has byte range outside the ", data_size,
                  " bytes of data");
      uint64_t numel = 1;
      for (auto size : shape) {
        TORCH_CHECK(size >= 0, "safetensors file \"", path, "\": \"", key,
                    "\" has a negative size");
        numel *= uint64_t(size);
      }
      TORCH_CHECK(numel * c10::elementSize(type) == range[1] - range[0],
                  "safetensors file \"", path, "\": \"", key, "\" has ",
                  range[1] - range[0], " bytes for shape ", shape);
      auto tensor = torch::empty(shape, torch::TensorOptions(type));
      if (numel > 0) {
        std::memcpy(tensor.data_ptr(), data + range[0], range[1] - range[0]);
      }
      tensors.insert(key, tensor);
    }
  } catch (const Json::exception& error) {
    TORCH_CHECK(false, "safetensors file \"", path,
                "\" has a malformed entry: ", error.what());
  }
  return tensors;
}

} // namespace ddpm
