#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/ivalue.h>
#include <torch/nn/module.h>
#include <torch/optim/adam.h>
#include <torch/ordered_dict.h>

namespace ddpm {

using StateDict = torch::OrderedDict<std::string, torch::Tensor>;

/// Parameters and buffers of `module` under their dotted names, as
/// Python's Module.state_dict() returns them (detached, not copied).
StateDict module_state_dict(const torch::nn::Module& module);

/// Copies `state` into the parameters and buffers of `module`. Every key of
/// the module must be present with the same shape, and no key may be left
/// over. Otherwise throws naming the first offending key, with both shapes
/// for a mismatch. `source` names where `state` came from in messages.
void load_module_state_dict(torch::nn::Module& module, const StateDict& state,
                            const std::string& source = "state dict");

/// Adam state in the layout of Python's Optimizer.state_dict():
/// {"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups":
/// [{"lr", "betas", "eps", ..., "params": [0, 1, ...]}]}, with parameters
/// indexed in the order of the optimizer's first group.
c10::IValue adam_state_dict(torch::optim::Adam& optimizer);

/// Restores what adam_state_dict() wrote (or Python's Adam saved) into
/// `optimizer`, whose parameters must match in count and shape.
void load_adam_state_dict(torch::optim::Adam& optimizer,
                          const c10::IValue& state);

/// Loss scaler state, as torch.amp.GradScaler.state_dict() stores it.
struct ScalerState {
  double scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  int64_t growth_tracker = 0;
};

/// The contents of a `model-N.pt` file, with the keys of the Python
/// Trainer's checkpoints: step, model, opt, ema, scaler, version.
struct Checkpoint {
  int64_t step = 0;
  StateDict model;
  c10::IValue opt;
  StateDict ema;
  std::optional<ScalerState> scaler;
  std::string version;
  /// For exact resumption (extra keys, which the Python Trainer ignores):
  /// the CPU generator's state and the number of batches drawn so far.
  torch::Tensor rng_state;
  std::optional<int64_t> data_batches;
};

/// Writes `checkpoint` in the zip-based format of torch.save, so that
/// Python's torch.load reads it. The file is written under a temporary name
/// in the same folder and renamed; throws naming the path and the cause.
void save_checkpoint(const Checkpoint& checkpoint, const std::string& path);

/// Reads a checkpoint written by save_checkpoint. Throws naming the path
/// and the cause when the file is missing, truncated or not a checkpoint.
Checkpoint load_checkpoint(const std::string& path);

/// Writes `bytes` to `path` through a temporary file `path.tmp-<pid>`, an
/// fsync and a rename, then syncs the folder so the rename survives a power
/// loss. A reader sees the old file or the new one, never a part. When any
/// step fails the temporary file is removed and the error names the path.
void write_file_atomically(const std::string& path,
                           const std::vector<char>& bytes);

/// Removes the temporary files `*.tmp-<pid>` in `folder` that processes
/// which no longer run left behind (a writer killed mid-write), logging
/// each. Files of running processes stay. Returns the paths removed.
std::vector<std::string> remove_stale_temporary_files(
    const std::string& folder);

/// Version string stored in checkpoints.
const char* library_version();

} // namespace ddpm
