#pragma once

#include <cstdint>
#include <string>

#include <torch/types.h>

namespace ddpm {

/// Beta schedules of the forward (noising) process. Each returns betas
/// [timesteps] in float64, as the Python package computes them.

/// Linear from 1e-4 to 0.02, both scaled by 1000 / timesteps (Ho et al.,
/// "Denoising Diffusion Probabilistic Models", 2020).
torch::Tensor linear_beta_schedule(int64_t timesteps);

/// alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), betas clipped to
/// [0, 0.999] (Nichol and Dhariwal, "Improved Denoising Diffusion
/// Probabilistic Models", 2021).
torch::Tensor cosine_beta_schedule(int64_t timesteps, double s = 0.008);

/// alpha_bar from a sigmoid over [start, end] with temperature tau, betas
/// clipped to [0, 0.999] (Jabri et al., "Scalable Adaptive Computation for
/// Iterative Generation", 2022, figure 8).
torch::Tensor sigmoid_beta_schedule(int64_t timesteps, double start = -3.0,
                                    double end = 3.0, double tau = 1.0);

/// The beta schedules of GaussianDiffusion.
enum class BetaSchedule { kLinear, kCosine, kSigmoid };

/// Returns "linear", "cosine" or "sigmoid".
std::string to_string(BetaSchedule schedule);

/// Parses "linear", "cosine" or "sigmoid"; throws naming the value and the
/// choices otherwise.
BetaSchedule beta_schedule_from_string(const std::string& name);

/// Arguments of the schedule functions (Python's schedule_fn_kwargs). Each
/// schedule reads only its own fields.
struct BetaScheduleArgs {
  /// Cosine: offset s that keeps beta small near t = 0.
  double s = 0.008;
  /// Sigmoid: input range and temperature.
  double start = -3.0;
  double end = 3.0;
  double tau = 1.0;
};

/// Betas [timesteps] in float64 for `schedule`. Throws when timesteps < 1 or
/// the arguments are invalid.
torch::Tensor make_beta_schedule(BetaSchedule schedule, int64_t timesteps,
                                 const BetaScheduleArgs& args = {});

} // namespace ddpm
