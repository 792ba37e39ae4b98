#pragma once

#include <cstdint>
#include <vector>

#include <torch/optim/optimizer.h>
#include <torch/types.h>

namespace ddpm {

/// Settings of GradScaler, named and defaulted as torch.amp.GradScaler's.
struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  bool enabled = true;
};

/// Dynamic loss scaling for float16 training, built on the ATen AMP kernels
/// that torch.amp.GradScaler calls, because LibTorch ships no C++ scaler.
/// The loss is multiplied by a scale before backward. Gradients are divided
/// by it and checked for inf and NaN. A step with non-finite gradients is
/// skipped and the scale multiplied by backoff_factor, and the scale grows
/// by growth_factor after growth_interval clean steps.
class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  /// loss * scale (the loss unchanged when disabled).
  torch::Tensor scale(const torch::Tensor& loss);

  /// Divides the gradients of `params` by the scale in place and records
  /// whether any is non-finite. Call once per step, before clipping.
  void unscale_(const std::vector<torch::Tensor>& params);

  /// Runs optimizer.step() unless the unscaled gradients held inf or NaN.
  /// Returns whether the step ran.
  bool step(torch::optim::Optimizer& optimizer,
            const std::vector<torch::Tensor>& params);

  /// Adjusts the scale after a step and clears the per-step state.
  void update();

  bool enabled() const { return options_.enabled; }
  double get_scale() const;
  int64_t growth_tracker() const;
  /// Whether the last unscale_ found a non-finite gradient.
  bool found_inf() const;
  const GradScalerOptions& options() const { return options_; }

  /// Restores the scale and growth tracker (e.g. from a checkpoint).
  void load(double scale, int64_t growth_tracker);

 private:
  void lazy_init(const torch::Device& device);

  GradScalerOptions options_;
  torch::Tensor scale_;
  torch::Tensor growth_tracker_;
  torch::Tensor found_inf_;
  bool unscaled_ = false;
};

} // namespace ddpm
