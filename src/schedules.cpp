#include "ddpm/schedules.h"

#include <cmath>

#include <torch/torch.h>

namespace ddpm {
namespace {

constexpr double kPi = 3.14159265358979323846;

torch::Tensor unit_times(int64_t timesteps) {
  // [0, 1/T, ..., 1] in float64, as linspace(0, T, T + 1) / T.
  return torch::linspace(0, double(timesteps), timesteps + 1,
                         torch::kFloat64) /
      double(timesteps);
}

torch::Tensor betas_from_alphas_cumprod(torch::Tensor alphas_cumprod) {
  alphas_cumprod = alphas_cumprod / alphas_cumprod[0];
  auto betas = 1 - alphas_cumprod.slice(0, 1) / alphas_cumprod.slice(0, 0, -1);
  return torch::clip(betas, 0, 0.999);
}

} // namespace

torch::Tensor linear_beta_schedule(int64_t timesteps) {
  TORCH_CHECK(timesteps >= 1, "timesteps must be at least 1, got ",
              timesteps);
  const double scale = 1000.0 / double(timesteps);
  return torch::linspace(scale * 0.0001, scale * 0.02, timesteps,
                         torch::kFloat64);
}

torch::Tensor cosine_beta_schedule(int64_t timesteps, double s) {
  TORCH_CHECK(timesteps >= 1, "timesteps must be at least 1, got ",
              timesteps);
  TORCH_CHECK(s >= 0 && std::isfinite(s),
              "cosine schedule offset s must be non-negative and finite, got ",
              s);
  auto t = unit_times(timesteps);
  auto alphas_cumprod = torch::cos((t + s) / (1 + s) * kPi * 0.5).pow(2);
  return betas_from_alphas_cumprod(alphas_cumprod);
}

torch::Tensor sigmoid_beta_schedule(int64_t timesteps, double start,
                                    double end, double tau) {
  TORCH_CHECK(timesteps >= 1, "timesteps must be at least 1, got ",
              timesteps);
  TORCH_CHECK(std::isfinite(start) && std::isfinite(end),
              "sigmoid schedule start and end must be finite, got start ",
              start, " and end ", end);
  TORCH_CHECK(end > start, "sigmoid schedule needs end > start, got start ",
              start, " and end ", end);
  TORCH_CHECK(tau > 0 && std::isfinite(tau),
              "sigmoid schedule tau must be positive and finite, got ", tau);
  auto t = unit_times(timesteps);
  // Python computes these two endpoints from float32 scalar tensors.
  auto v_start = torch::tensor(start / tau, torch::kFloat32).sigmoid();
  auto v_end = torch::tensor(end / tau, torch::kFloat32).sigmoid();
  auto alphas_cumprod =
      (-((t * (end - start) + start) / tau).sigmoid() + v_end) /
      (v_end - v_start);
  return betas_from_alphas_cumprod(alphas_cumprod);
}

std::string to_string(BetaSchedule schedule) {
  switch (schedule) {
    case BetaSchedule::kLinear:
      return "linear";
    case BetaSchedule::kCosine:
      return "cosine";
    case BetaSchedule::kSigmoid:
      return "sigmoid";
  }
  TORCH_CHECK(false, "unknown BetaSchedule value ", int(schedule));
}

BetaSchedule beta_schedule_from_string(const std::string& name) {
  if (name == "linear") {
    return BetaSchedule::kLinear;
  }
  if (name == "cosine") {
    return BetaSchedule::kCosine;
  }
  if (name == "sigmoid") {
    return BetaSchedule::kSigmoid;
  }
  TORCH_CHECK(false, "unknown beta schedule \"", name,
              "\": expected linear, cosine or sigmoid");
}

torch::Tensor make_beta_schedule(BetaSchedule schedule, int64_t timesteps,
                                 const BetaScheduleArgs& args) {
  switch (schedule) {
    case BetaSchedule::kLinear:
      return linear_beta_schedule(timesteps);
    case BetaSchedule::kCosine:
      return cosine_beta_schedule(timesteps, args.s);
    case BetaSchedule::kSigmoid:
      return sigmoid_beta_schedule(timesteps, args.start, args.end,
                                   args.tau);
  }
  TORCH_CHECK(false, "unknown BetaSchedule value ", int(schedule));
}

} // namespace ddpm
