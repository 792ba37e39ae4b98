#include "ddpm/grad_scaler.h"

#include <cmath>

#include <torch/torch.h>

namespace ddpm {

GradScaler::GradScaler(GradScalerOptions options) : options_(options) {
  TORCH_CHECK(options_.init_scale > 0 && std::isfinite(options_.init_scale),
              "GradScaler init_scale must be positive and finite, got ",
              options_.init_scale);
  TORCH_CHECK(options_.growth_factor > 1 &&
                  std::isfinite(options_.growth_factor),
              "GradScaler growth_factor must be above 1 and finite, got ",
              options_.growth_factor);
  TORCH_CHECK(options_.backoff_factor > 0 && options_.backoff_factor < 1,
              "GradScaler backoff_factor must be in (0, 1), got ",
              options_.backoff_factor);
  TORCH_CHECK(options_.growth_interval >= 1, "GradScaler growth_interval "
              "must be at least 1, got ", options_.growth_interval);
  scale_ = torch::full({}, options_.init_scale, torch::kFloat32);
  growth_tracker_ = torch::zeros({}, torch::kInt32);
  found_inf_ = torch::zeros({}, torch::kFloat32);
}

void GradScaler::lazy_init(const torch::Device& device) {
  if (scale_.device() != device) {
    scale_ = scale_.to(device);
    growth_tracker_ = growth_tracker_.to(device);
    found_inf_ = found_inf_.to(device);
  }
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) {
  if (!enabled()) {
    return loss;
  }
  lazy_init(loss.device());
  return loss * scale_.to(loss.scalar_type());
}

void GradScaler::unscale_(const std::vector<torch::Tensor>& params) {
  if (!enabled()) {
    return;
  }
  TORCH_CHECK(!unscaled_, "GradScaler::unscale_ was already called since "
              "the last update()");
  std::vector<torch::Tensor> grads;
  for (const auto& param : params) {
    if (param.grad().defined()) {
      grads.push_back(param.grad());
    }
  }
  found_inf_.zero_();
  if (!grads.empty()) {
    lazy_init(grads.front().device());
    // The inverse is taken in double, as torch.amp.GradScaler does.
    auto inv_scale = scale_.to(torch::kFloat64).reciprocal().to(
        torch::kFloat32);
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_,
                                                   inv_scale);
  }
  unscaled_ = true;
}

bool GradScaler::step(torch::optim::Optimizer& optimizer,
                      const std::vector<torch::Tensor>& params) {
  if (!enabled()) {
    optimizer.step();
    return true;
  }
  if (!unscaled_) {
    unscale_(params);
  }
  if (found_inf()) {
    return false;
  }
  optimizer.step();
  return true;
}

void GradScaler::update() {
  if (!enabled()) {
    return;
  }
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf_,
                         options_.growth_factor, options_.backoff_factor,
                         options_.growth_interval);
  found_inf_.zero_();
  unscaled_ = false;
}

double GradScaler::get_scale() const { return scale_.item<double>(); }

int64_t GradScaler::growth_tracker() const {
  return growth_tracker_.item<int64_t>();
}

bool GradScaler::found_inf() const { return found_inf_.item<double>() > 0; }

void GradScaler::load(double scale, int64_t growth_tracker) {
  TORCH_CHECK(scale > 0, "GradScaler scale must be positive, got ", scale);
  scale_.fill_(scale);
  growth_tracker_.fill_(growth_tracker);
}

} // namespace ddpm
