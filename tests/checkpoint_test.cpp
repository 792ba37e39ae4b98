#include <filesystem>
#include <fstream>

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/io/checkpoint.h"
#include "ddpm/io/safetensors.h"
#include "ddpm/io/torch_pickle.h"
#include "test_util.h"

namespace ddpm {
namespace {

using ddpm::testing::TemporaryFolder;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

// Three Adam steps on a small network, so that the state is non-trivial.
void train_briefly(torch::nn::Linear& net, torch::optim::Adam& adam) {
  for (int i = 0; i < 3; ++i) {
    adam.zero_grad();
    net(torch::randn({4, 3})).pow(2).sum().backward();
    adam.step();
  }
}

TEST_F(CheckpointTest, SaveLoadRoundTrip) {
  TemporaryFolder folder;
  torch::nn::Linear net(3, 2);
  torch::optim::Adam adam(net->parameters(),
                          torch::optim::AdamOptions(1e-3).betas({0.9, 0.99}));
  train_briefly(net, adam);

  Checkpoint checkpoint;
  checkpoint.step = 42;
  checkpoint.model = module_state_dict(*net);
  checkpoint.opt = adam_state_dict(adam);
  checkpoint.ema.insert("step", torch::tensor(int64_t{7}));
  checkpoint.ema.insert("ema_model.weight", net->weight.detach() * 2);
  checkpoint.scaler = ScalerState{1024.0, 2.0, 0.5, 2000, 17};
  const auto path = (folder.path() / "model-1.pt").string();
  save_checkpoint(checkpoint, path);

  auto loaded = load_checkpoint(path);
  EXPECT_EQ(loaded.step, 42);
  EXPECT_EQ(loaded.version, library_version());
  EXPECT_TRUE(torch::equal(loaded.model["weight"], net->weight));
  EXPECT_TRUE(torch::equal(loaded.ema["ema_model.weight"], net->weight * 2));
  EXPECT_EQ(loaded.ema["step"].item<int64_t>(), 7);
  ASSERT_TRUE(loaded.scaler.has_value());
  EXPECT_DOUBLE_EQ(loaded.scaler->scale, 1024.0);
  EXPECT_EQ(loaded.scaler->growth_tracker, 17);

  // The optimizer continues exactly where it stopped.
  torch::nn::Linear copy(3, 2);
  load_module_state_dict(*copy, loaded.model);
  torch::optim::Adam copy_adam(copy->parameters(),
                               torch::optim::AdamOptions(5.0));
  load_adam_state_dict(copy_adam, loaded.opt);
  const auto& options = static_cast<const torch::optim::AdamOptions&>(
      copy_adam.param_groups()[0].options());
  EXPECT_DOUBLE_EQ(options.lr(), 1e-3);
  EXPECT_DOUBLE_EQ(std::get<1>(options.betas()), 0.99);
  auto input = torch::randn({4, 3});
  for (auto* pair : {&adam, &copy_adam}) {
    pair->zero_grad();
  }
  net(input).pow(2).sum().backward();
  copy(input).pow(2).sum().backward();
  adam.step();
  copy_adam.step();
  EXPECT_TRUE(torch::equal(net->weight, copy->weight));
}

TEST_F(CheckpointTest, UnknownVersionNamesFileAndVersion) {
  TemporaryFolder folder;
  Checkpoint checkpoint;
  torch::nn::Linear net(2, 2);
  checkpoint.model = module_state_dict(*net);
  const auto path = (folder.path() / "model-1.pt").string();
  for (const char* version : {"2.3.4", "1.10.9", "ddpm-cpp 0.7.0"}) {
    checkpoint.version = version;
    save_checkpoint(checkpoint, path);
    EXPECT_EQ(load_checkpoint(path).version, version);
  }
  for (const char* version : {"ddpm-cpp 1.0.0", "3.0.0", "nightly"}) {
    checkpoint.version = version;
    save_checkpoint(checkpoint, path);
    DDPM_EXPECT_THROW_WITH(load_checkpoint(path),
                           "checkpoint \"" + path +
                               "\" has unknown version \"" + version + "\"");
  }
}

TEST_F(CheckpointTest, NoTemporaryFileLeftBehind) {
  TemporaryFolder folder;
  Checkpoint checkpoint;
  torch::nn::Linear net(2, 2);
  checkpoint.model = module_state_dict(*net);
  checkpoint.opt = c10::IValue();
  save_checkpoint(checkpoint, (folder.path() / "model-1.pt").string());
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(folder.path())) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"model-1.pt"});
}

TEST_F(CheckpointTest, TruncatedFileNamesPath) {
  TemporaryFolder folder;
  Checkpoint checkpoint;
  torch::nn::Linear net(8, 8);
  checkpoint.model = module_state_dict(*net);
  const auto path = (folder.path() / "model-1.pt").string();
  save_checkpoint(checkpoint, path);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  DDPM_EXPECT_THROW_WITH(load_checkpoint(path),
                         "checkpoint \"" + path +
                             "\" is truncated or not a torch.save file");
}

TEST_F(CheckpointTest, NotACheckpointNamesPath) {
  TemporaryFolder folder;
  const auto path = (folder.path() / "notes.pt").string();
  std::ofstream(path) << "these are not the weights you are looking for";
  DDPM_EXPECT_THROW_WITH(load_checkpoint(path),
                         "is truncated or not a torch.save file");
  DDPM_EXPECT_THROW_WITH(
      load_checkpoint((folder.path() / "missing.pt").string()),
      "cannot open checkpoint");
}

TEST_F(CheckpointTest, MismatchedStateNamesKeyAndShapes) {
  torch::nn::Linear small(3, 2);
  torch::nn::Linear large(4, 2);
  DDPM_EXPECT_THROW_WITH(
      load_module_state_dict(*small, module_state_dict(*large), "test.pt"),
      "test.pt has \"weight\" with shape [2, 4], the model expects [2, 3]");

  auto state = module_state_dict(*small);
  state.erase("bias");
  DDPM_EXPECT_THROW_WITH(load_module_state_dict(*small, state),
                         "is missing \"bias\" (shape [2])");

  state = module_state_dict(*small);
  state.insert("extra", torch::zeros({1}));
  DDPM_EXPECT_THROW_WITH(load_module_state_dict(*small, state),
                         "has \"extra\", which the model does not have");
}

TEST_F(CheckpointTest, UnwritableFolderNamesPath) {
  TemporaryFolder folder;
  const auto blocker = folder.path() / "file";
  std::ofstream(blocker) << "x";
  Checkpoint checkpoint;
  DDPM_EXPECT_THROW_WITH(
      save_checkpoint(checkpoint, (blocker / "model-1.pt").string()),
      "cannot create");
}

TEST_F(CheckpointTest, SafetensorsRoundTrip) {
  TemporaryFolder folder;
  StateDict tensors;
  tensors.insert("model.weight", torch::randn({3, 4}));
  tensors.insert("steps", torch::arange(5, torch::kLong));
  tensors.insert("half", torch::randn({2}).to(torch::kBFloat16));
  tensors.insert("empty", torch::zeros({0, 3}));
  const auto path = (folder.path() / "w.safetensors").string();
  save_safetensors(tensors, path, {{"format", "pt"}});
  auto loaded = load_safetensors(path);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& item : tensors) {
    EXPECT_TRUE(torch::equal(loaded[item.key()], item.value())) << item.key();
    EXPECT_EQ(loaded[item.key()].scalar_type(), item.value().scalar_type());
  }
  // The data starts 8-byte aligned after the header.
  std::ifstream file(path, std::ios::binary);
  uint64_t header = 0;
  file.read(reinterpret_cast<char*>(&header), 8);
  EXPECT_EQ(header % 8, 0u);
}

TEST_F(CheckpointTest, SafetensorsRejectsDamagedFiles) {
  TemporaryFolder folder;
  StateDict tensors;
  tensors.insert("w", torch::randn({64}));
  const auto path = (folder.path() / "w.safetensors").string();
  save_safetensors(tensors, path);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 4);
  DDPM_EXPECT_THROW_WITH(load_safetensors(path),
                         "\"w\" has byte range outside the 252 bytes");
  std::filesystem::resize_file(path, 20);
  DDPM_EXPECT_THROW_WITH(load_safetensors(path), "is truncated");
  std::ofstream(path) << std::string("\x04\0\0\0\0\0\0\0{{{{", 12);
  DDPM_EXPECT_THROW_WITH(load_safetensors(path), "malformed header");
}

// Writes a torch.save-style archive whose data.pkl is `pickle`.
std::string write_archive(const TemporaryFolder& folder,
                          const std::string& pickle) {
  const auto path = (folder.path() / "crafted.pt").string();
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeEndOfFile();
  return path;
}

TEST_F(CheckpointTest, ReaderRejectsUnsupportedGlobal) {
  TemporaryFolder folder;
  // PROTO 2, GLOBAL os system, SHORT_BINUNICODE "true", TUPLE1, REDUCE, STOP
  const std::string pickle =
      std::string("\x80\x02", 2) + "cos\nsystem\n" + "\x8c\x04true" +
      "\x85R.";
  DDPM_EXPECT_THROW_WITH(read_torch_save(write_archive(folder, pickle)),
                         "unsupported global \"os system\"");
}

// A zip header found by the fuzzer that declares a 4 GiB record in a file
// of 3 KiB; LibTorch would allocate the 4 GiB before reading.
TEST_F(CheckpointTest, ReaderRejectsOversizedRecord) {
  const std::string path = std::string(DDPM_SOURCE_DIR) +
      "/tests/fuzz/regressions/checkpoint/record-size-4gb.pt";
  DDPM_EXPECT_THROW_WITH(load_checkpoint(path),
                         "declares 4294967295 bytes, more than the file's");
}

TEST_F(CheckpointTest, ReaderRejectsTruncatedPickle) {
  TemporaryFolder folder;
  // PROTO 2, BINUNICODE of 100 bytes with only 3 present
  const std::string pickle =
      std::string("\x80\x02X\x64\x00\x00\x00" "abc", 10);
  DDPM_EXPECT_THROW_WITH(read_torch_save(write_archive(folder, pickle)),
                         "at byte 7: the data ends early");
}

TEST_F(CheckpointTest, ReaderReadsPlainValues) {
  TemporaryFolder folder;
  // {"a": [1, -2, 3.5, None, True], "b": (7,)}, as pickle opcodes.
  const std::vector<unsigned char> bytes = {
      0x80, 0x02, '}', '(', 0x8c, 0x01, 'a', ']', '(',     // dict, "a", list
      'K', 0x01, 'J', 0xfe, 0xff, 0xff, 0xff,               // 1, -2
      'G', 0x40, 0x0c, 0, 0, 0, 0, 0, 0,                    // 3.5
      'N', 0x88, 'e',                                       // None, True
      0x8c, 0x01, 'b', 'K', 0x07, 0x85, 'u', '.'};          // "b", (7,)
  const std::string pickle(bytes.begin(), bytes.end());
  auto value = read_torch_save(write_archive(folder, pickle));
  auto dict = value.toGenericDict();
  auto list = dict.at("a").toList();
  ASSERT_EQ(list.size(), 5u);
  EXPECT_EQ(c10::IValue(list.get(0)).toInt(), 1);
  EXPECT_EQ(c10::IValue(list.get(1)).toInt(), -2);
  EXPECT_DOUBLE_EQ(c10::IValue(list.get(2)).toDouble(), 3.5);
  EXPECT_TRUE(c10::IValue(list.get(3)).isNone());
  EXPECT_TRUE(c10::IValue(list.get(4)).toBool());
  EXPECT_EQ(dict.at("b").toTupleRef().elements()[0].toInt(), 7);
}

} // namespace
} // namespace ddpm
