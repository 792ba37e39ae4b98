#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/module.h>
#include <torch/ordered_dict.h>

namespace ddpm {

/// Settings of EMA, named and defaulted as in the `ema-pytorch` package
/// (its `beta` is `decay` here).
struct EmaOptions {
  /// Largest decay; the warm-up below approaches it.
  double decay = 0.9999;
  /// Steps before averaging starts; until then the copy tracks the model.
  int64_t update_after_step = 100;
  /// Update once every this many calls to update().
  int64_t update_every = 10;
  /// Warm-up: decay = 1 - (1 + step / inv_gamma)^-power, clamped to
  /// [min_value, decay].
  double inv_gamma = 1.0;
  double power = 2.0 / 3.0;
  double min_value = 0.0;
};

/// Exponential moving average of a model's floating-point parameters and
/// buffers, with the semantics and state of `ema_pytorch.EMA`: the first
/// update() copies the model, later ones copy (up to update_after_step) or
/// lerp every update_every calls with the warm-up decay.
///
/// state_dict() returns the keys of Python's EMA state dict: `initted`,
/// `step`, `online_model.*` and `ema_model.*`.
class EMA {
 public:
  /// `ema_model` must have the same parameter and buffer names as `model`,
  /// for example a second instance built with the same options. The first
  /// update() overwrites its values.
  EMA(std::shared_ptr<torch::nn::Module> model,
      std::shared_ptr<torch::nn::Module> ema_model, EmaOptions options = {});

  /// Advances the step counter and copies or averages as described above.
  void update();

  /// Decay the next averaging update would use at the current step.
  double current_decay() const;

  torch::OrderedDict<std::string, torch::Tensor> state_dict() const;
  /// Loads `initted`, `step` and the `ema_model.*` tensors; `online_model.*`
  /// entries are ignored (the online model loads its own weights). Throws
  /// naming the first missing key or mismatched shape.
  void load_state_dict(
      const torch::OrderedDict<std::string, torch::Tensor>& state);

  const std::shared_ptr<torch::nn::Module>& ema_model() const {
    return ema_model_;
  }
  int64_t step() const { return step_; }
  bool initted() const { return initted_; }
  const EmaOptions& options() const { return options_; }

 private:
  void copy_from_model();
  void lerp_from_model(double decay);

  std::shared_ptr<torch::nn::Module> model_;
  std::shared_ptr<torch::nn::Module> ema_model_;
  EmaOptions options_;
  int64_t step_ = 0;
  bool initted_ = false;
};

} // namespace ddpm
