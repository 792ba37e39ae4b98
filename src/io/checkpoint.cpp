#include "ddpm/io/checkpoint.h"

#include "ddpm/io/torch_pickle.h"
#include "ddpm/log.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/torch.h>

namespace ddpm {
namespace {

namespace fs = std::filesystem;

using GenericDict = c10::impl::GenericDict;
using GenericList = c10::impl::GenericList;

GenericDict string_dict() {
  return GenericDict(c10::StringType::get(), c10::AnyType::get());
}

GenericDict tensor_dict(const StateDict& state) {
  GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& item : state) {
    dict.insert(item.key(), item.value().detach().cpu());
  }
  return dict;
}

StateDict tensor_dict_from(const c10::IValue& value, const std::string& what,
                           const std::string& path) {
  TORCH_CHECK(value.isGenericDict(), "checkpoint \"", path, "\": \"", what,
              "\" is not a dictionary of tensors");
  StateDict state;
  for (const auto& entry : value.toGenericDict()) {
    TORCH_CHECK(entry.key().isString() && entry.value().isTensor(),
                "checkpoint \"", path, "\": \"", what,
                "\" holds an entry that is not a named tensor");
    state.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return state;
}

const c10::IValue& require(const GenericDict& dict, const std::string& key,
                           const std::string& path) {
  auto it = dict.find(key);
  TORCH_CHECK(it != dict.end(), "checkpoint \"", path, "\" has no \"", key,
              "\" entry; expected step, model, opt, ema, scaler, version");
  return it->value();
}

double as_double(const c10::IValue& value) {
  return value.isDouble() ? value.toDouble() : double(value.toInt());
}

std::string system_error(const std::string& action, const std::string& path) {
  return action + " \"" + path + "\": " + std::strerror(errno);
}

// torch::pickle_save, without the TorchScript type tags it puts on dicts
// and lists: Python's torch.load(weights_only=True), which the Python
// Trainer uses, rejects those tags.
std::vector<char> pickle_for_python(const c10::IValue& value) {
  std::vector<char> pickled;
  torch::jit::Pickler pickler(
      [&](const char* bytes, size_t size) {
        pickled.insert(pickled.end(), bytes, bytes + size);
      },
      /*tensor_table=*/nullptr, /*type_renamer=*/nullptr,
      /*memoized_class_types=*/nullptr, /*get_tensor_id=*/nullptr,
      /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();

  std::vector<char> archive;
  {
    caffe2::serialize::PyTorchStreamWriter writer(
        [&](const void* bytes, size_t size) {
          const auto* begin = static_cast<const char*>(bytes);
          archive.insert(archive.end(), begin, begin + size);
          return size;
        });
    torch::jit::writeArchiveAndTensors("data", pickled.data(), pickled.size(),
                                       pickler.tensorData(), writer);
  } // the writer's destructor writes the zip directory
  return archive;
}

// Accepts checkpoints of this library's format (ddpm-cpp 0.x) and of the
// Python package's releases 1.x and 2.x, whose Trainer layout it reads. An
// absent version, as older Python releases wrote, is accepted too.
void check_known_version(const std::string& version, const std::string& path) {
  if (version.empty()) {
    return;
  }
  const std::string ours = "ddpm-cpp ";
  if (version.rfind(ours, 0) == 0) {
    TORCH_CHECK(version.compare(ours.size(), 2, "0.") == 0, "checkpoint \"",
                path, "\" has unknown version \"", version,
                "\": this library reads ddpm-cpp 0.x and "
                "denoising-diffusion-pytorch 1.x and 2.x checkpoints");
    return;
  }
  TORCH_CHECK(version.rfind("1.", 0) == 0 || version.rfind("2.", 0) == 0,
              "checkpoint \"", path, "\" has unknown version \"", version,
              "\": this library reads ddpm-cpp 0.x and "
              "denoising-diffusion-pytorch 1.x and 2.x checkpoints");
}

} // namespace

const char* library_version() { return "ddpm-cpp 0.1.0"; }

StateDict module_state_dict(const torch::nn::Module& module) {
  StateDict state;
  for (const auto& item : module.named_parameters()) {
    state.insert(item.key(), item.value().detach());
  }
  for (const auto& item : module.named_buffers()) {
    state.insert(item.key(), item.value().detach());
  }
  return state;
}

void load_module_state_dict(torch::nn::Module& module, const StateDict& state,
                            const std::string& source) {
  auto expected = module_state_dict(module);
  for (const auto& item : expected) {
    const auto* value = state.find(item.key());
    TORCH_CHECK(value, source, " is missing \"", item.key(), "\" (shape ",
                item.value().sizes(), ")");
    TORCH_CHECK(value->sizes() == item.value().sizes(), source, " has \"",
                item.key(), "\" with shape ", value->sizes(),
                ", the model expects ", item.value().sizes());
  }
  for (const auto& item : state) {
    TORCH_CHECK(expected.contains(item.key()), source,
                " has \"", item.key(), "\", which the model does not have");
  }
  torch::NoGradGuard no_grad;
  for (auto& item : expected) {
    item.value().copy_(state[item.key()]);
  }
}

c10::IValue adam_state_dict(torch::optim::Adam& optimizer) {
  TORCH_CHECK(optimizer.param_groups().size() == 1,
              "adam_state_dict supports one parameter group, got ",
              optimizer.param_groups().size());
  auto& group = optimizer.param_groups()[0];
  const auto& options =
      static_cast<const torch::optim::AdamOptions&>(group.options());

  GenericDict states(c10::IntType::get(), c10::AnyType::get());
  // A generic list: a typed c10::List<int64_t> pickles as build_intlist,
  // which torch.load(weights_only=True) rejects.
  GenericList indices(c10::AnyType::get());
  for (size_t i = 0; i < group.params().size(); ++i) {
    indices.push_back(int64_t(i));
    auto found = optimizer.state().find(
        group.params()[i].unsafeGetTensorImpl());
    if (found == optimizer.state().end()) {
      continue;
    }
    const auto& adam =
        static_cast<const torch::optim::AdamParamState&>(*found->second);
    auto state = string_dict();
    // Python keeps the step count as a float32 scalar tensor.
    state.insert("step", torch::tensor(float(adam.step())));
    state.insert("exp_avg", adam.exp_avg().detach().cpu());
    state.insert("exp_avg_sq", adam.exp_avg_sq().detach().cpu());
    if (options.amsgrad()) {
      state.insert("max_exp_avg_sq", adam.max_exp_avg_sq().detach().cpu());
    }
    states.insert(int64_t(i), state);
  }

  auto group_dict = string_dict();
  group_dict.insert("lr", options.lr());
  group_dict.insert("betas", c10::ivalue::Tuple::create(
                                 std::get<0>(options.betas()),
                                 std::get<1>(options.betas())));
  group_dict.insert("eps", options.eps());
  group_dict.insert("weight_decay", options.weight_decay());
  group_dict.insert("amsgrad", options.amsgrad());
  group_dict.insert("maximize", false);
  group_dict.insert("foreach", c10::IValue());
  group_dict.insert("capturable", false);
  group_dict.insert("differentiable", false);
  group_dict.insert("fused", c10::IValue());
  group_dict.insert("decoupled_weight_decay", false);
  group_dict.insert("params", indices);

  GenericList groups(c10::AnyType::get());
  groups.push_back(group_dict);
  auto result = string_dict();
  result.insert("state", states);
  result.insert("param_groups", groups);
  return result;
}

void load_adam_state_dict(torch::optim::Adam& optimizer,
                          const c10::IValue& value) {
  TORCH_CHECK(value.isGenericDict(),
              "optimizer state must be a dictionary with \"state\" and "
              "\"param_groups\"");
  auto dict = value.toGenericDict();
  TORCH_CHECK(dict.contains("state") && dict.contains("param_groups"),
              "optimizer state must have \"state\" and \"param_groups\"");
  auto groups = dict.at("param_groups").toList();
  TORCH_CHECK(groups.size() == 1 &&
                  optimizer.param_groups().size() == 1,
              "optimizer state has ", groups.size(),
              " parameter groups, the optimizer 1");
  auto saved_group = groups.get(0).toGenericDict();
  auto& group = optimizer.param_groups()[0];
  auto saved_params = saved_group.at("params").toList();
  TORCH_CHECK(saved_params.size() == group.params().size(),
              "optimizer state covers ", saved_params.size(),
              " parameters, the model has ", group.params().size());

  auto& options = static_cast<torch::optim::AdamOptions&>(group.options());
  options.lr(as_double(saved_group.at("lr")));
  auto betas = saved_group.at("betas");
  if (betas.isTuple()) {
    const auto& elements = betas.toTupleRef().elements();
    options.betas({as_double(elements[0]), as_double(elements[1])});
  } else {
    auto list = betas.toList();
    options.betas({as_double(list.get(0)), as_double(list.get(1))});
  }
  options.eps(as_double(saved_group.at("eps")));
  options.weight_decay(as_double(saved_group.at("weight_decay")));

  auto states = dict.at("state").toGenericDict();
  optimizer.state().clear();
  for (size_t i = 0; i < saved_params.size(); ++i) {
    const int64_t index = saved_params.get(i).toInt();
    auto found = states.find(index);
    if (found == states.end()) {
      continue;
    }
    auto saved = found->value().toGenericDict();
    const auto& param = group.params()[i];
    auto exp_avg = saved.at("exp_avg").toTensor();
    auto exp_avg_sq = saved.at("exp_avg_sq").toTensor();
    TORCH_CHECK(exp_avg.sizes() == param.sizes(),
                "optimizer state for parameter ", i, " has shape ",
                exp_avg.sizes(), ", the parameter ", param.sizes());
    auto state = std::make_unique<torch::optim::AdamParamState>();
    auto step = saved.at("step");
    state->step(step.isTensor() ? int64_t(step.toTensor().item<double>())
                                : step.toInt());
    state->exp_avg(exp_avg.to(param.options()).clone());
    state->exp_avg_sq(exp_avg_sq.to(param.options()).clone());
    if (saved.contains("max_exp_avg_sq")) {
      state->max_exp_avg_sq(
          saved.at("max_exp_avg_sq").toTensor().to(param.options()).clone());
    }
    optimizer.state()[param.unsafeGetTensorImpl()] = std::move(state);
  }
}

void write_file_atomically(const std::string& path,
                           const std::vector<char>& bytes) {
  const std::string temporary =
      path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  TORCH_CHECK(fd >= 0, system_error("cannot create", temporary));
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n =
        ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      const std::string message = system_error("failed to write", temporary);
      ::close(fd);
      ::unlink(temporary.c_str());
      TORCH_CHECK(false, message);
    }
    written += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string message = system_error("failed to write", temporary);
    ::unlink(temporary.c_str());
    TORCH_CHECK(false, message);
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string message = system_error("failed to rename to", path);
    ::unlink(temporary.c_str());
    TORCH_CHECK(false, message);
  }
  // The rename is durable once the folder's entry is on disk.
  auto folder = std::filesystem::path(path).parent_path();
  const int folder_fd =
      ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (folder_fd >= 0) {
    ::fsync(folder_fd);
    ::close(folder_fd);
  }
}

std::vector<std::string> remove_stale_temporary_files(
    const std::string& folder) {
  std::vector<std::string> removed;
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator(folder, error)) {
    const std::string name = entry.path().filename().string();
    const auto marker = name.rfind(".tmp-");
    if (marker == std::string::npos || !entry.is_regular_file(error)) {
      continue;
    }
    const std::string digits = name.substr(marker + 5);
    if (digits.empty() ||
        digits.find_first_not_of("0123456789") != std::string::npos ||
        digits.size() > 9) {
      continue;
    }
    const auto pid = static_cast<pid_t>(std::stol(digits));
    if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) {
      continue; // its writer may still run
    }
    if (std::filesystem::remove(entry.path(), error)) {
      log_info("removed \"" + entry.path().string() +
               "\", an unfinished write of a process that no longer runs");
      removed.push_back(entry.path().string());
    }
  }
  return removed;
}

void save_checkpoint(const Checkpoint& checkpoint, const std::string& path) {
  auto dict = string_dict();
  dict.insert("step", checkpoint.step);
  dict.insert("model", tensor_dict(checkpoint.model));
  dict.insert("opt", checkpoint.opt);
  dict.insert("ema", tensor_dict(checkpoint.ema));
  if (checkpoint.scaler) {
    auto scaler = string_dict();
    scaler.insert("scale", checkpoint.scaler->scale);
    scaler.insert("growth_factor", checkpoint.scaler->growth_factor);
    scaler.insert("backoff_factor", checkpoint.scaler->backoff_factor);
    scaler.insert("growth_interval", checkpoint.scaler->growth_interval);
    scaler.insert("_growth_tracker", checkpoint.scaler->growth_tracker);
    dict.insert("scaler", scaler);
  } else {
    dict.insert("scaler", c10::IValue());
  }
  dict.insert("version", checkpoint.version.empty() ? library_version()
                                                    : checkpoint.version);
  if (checkpoint.rng_state.defined()) {
    dict.insert("rng_state", checkpoint.rng_state.cpu());
  }
  if (checkpoint.data_batches) {
    dict.insert("data_batches", *checkpoint.data_batches);
  }
  write_file_atomically(path, pickle_for_python(dict));
}

Checkpoint load_checkpoint(const std::string& path) {
  std::error_code error;
  TORCH_CHECK(std::filesystem::is_regular_file(path, error),
              "cannot open checkpoint \"", path, "\": no such file");
  TORCH_CHECK(std::filesystem::file_size(path, error) > 0, "checkpoint \"",
              path, "\" is empty");

  // Python's torch.save files (OrderedDict state dicts) and ours alike.
  c10::IValue value;
  try {
    value = read_torch_save(path);
  } catch (const c10::Error& error) {
    TORCH_CHECK(false, "checkpoint \"", path,
                "\" is truncated or not a torch.save file: ",
                error.what_without_backtrace());
  }
  TORCH_CHECK(value.isGenericDict(), "checkpoint \"", path,
              "\" does not hold a dictionary");
  auto dict = value.toGenericDict();

  Checkpoint checkpoint;
  checkpoint.step = require(dict, "step", path).toInt();
  checkpoint.model = tensor_dict_from(require(dict, "model", path), "model",
                                      path);
  checkpoint.opt = require(dict, "opt", path);
  checkpoint.ema = tensor_dict_from(require(dict, "ema", path), "ema", path);
  const auto& scaler = require(dict, "scaler", path);
  if (!scaler.isNone()) {
    auto s = scaler.toGenericDict();
    ScalerState state;
    state.scale = as_double(s.at("scale"));
    state.growth_factor = as_double(s.at("growth_factor"));
    state.backoff_factor = as_double(s.at("backoff_factor"));
    state.growth_interval = s.at("growth_interval").toInt();
    state.growth_tracker = s.at("_growth_tracker").toInt();
    checkpoint.scaler = state;
  }
  auto version = dict.find("version");
  if (version != dict.end() && version->value().isString()) {
    checkpoint.version = version->value().toStringRef();
  }
  check_known_version(checkpoint.version, path);
  auto rng_state = dict.find("rng_state");
  if (rng_state != dict.end() && rng_state->value().isTensor()) {
    checkpoint.rng_state = rng_state->value().toTensor();
  }
  auto data_batches = dict.find("data_batches");
  if (data_batches != dict.end() && data_batches->value().isInt()) {
    checkpoint.data_batches = data_batches->value().toInt();
  }
  return checkpoint;
}

} // namespace ddpm
