#include "ddpm/ema.h"

#include <cmath>

#include <torch/torch.h>

namespace ddpm {
namespace {

// Floating-point parameters and buffers, in a stable order.
std::vector<std::pair<std::string, torch::Tensor>> averaged_tensors(
    const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& item : module.named_parameters()) {
    if (item.value().is_floating_point()) {
      tensors.emplace_back(item.key(), item.value());
    }
  }
  for (const auto& item : module.named_buffers()) {
    if (item.value().is_floating_point()) {
      tensors.emplace_back(item.key(), item.value());
    }
  }
  return tensors;
}

} // namespace

EMA::EMA(std::shared_ptr<torch::nn::Module> model,
         std::shared_ptr<torch::nn::Module> ema_model, EmaOptions options)
    : model_(std::move(model)),
      ema_model_(std::move(ema_model)),
      options_(options) {
  TORCH_CHECK(model_ && ema_model_, "EMA needs a model and an EMA copy");
  TORCH_CHECK(options_.decay >= 0 && options_.decay <= 1,
              "EMA decay must be in [0, 1], got ", options_.decay);
  TORCH_CHECK(options_.update_every >= 1,
              "EMA update_every must be at least 1, got ",
              options_.update_every);
  TORCH_CHECK(options_.update_after_step >= 0,
              "EMA update_after_step must be at least 0, got ",
              options_.update_after_step);
  TORCH_CHECK(options_.inv_gamma > 0 && std::isfinite(options_.inv_gamma),
              "EMA inv_gamma must be positive and finite, got ",
              options_.inv_gamma);
  TORCH_CHECK(options_.power > 0 && std::isfinite(options_.power),
              "EMA power must be positive and finite, got ", options_.power);
  TORCH_CHECK(options_.min_value >= 0 && options_.min_value <= options_.decay,
              "EMA min_value must be in [0, decay = ", options_.decay,
              "], got ", options_.min_value);
  auto online = averaged_tensors(*model_);
  auto shadow = averaged_tensors(*ema_model_);
  TORCH_CHECK(online.size() == shadow.size(),
              "EMA copy has ", shadow.size(), " tensors, the model ",
              online.size());
  for (size_t i = 0; i < online.size(); ++i) {
    TORCH_CHECK(online[i].first == shadow[i].first &&
                    online[i].second.sizes() == shadow[i].second.sizes(),
                "EMA copy does not match the model at \"", online[i].first,
                "\"");
  }
  for (auto& parameter : ema_model_->parameters()) {
    parameter.set_requires_grad(false);
  }
}

double EMA::current_decay() const {
  // ema-pytorch evaluates this after incrementing its step counter, in
  // float32 tensor arithmetic; the same operations here give the same value.
  auto epoch = torch::tensor(step_ - options_.update_after_step - 1)
                   .clamp_min(0.0);
  if (epoch.item<double>() <= 0) {
    return 0.0;
  }
  auto value = 1 - (1 + epoch / options_.inv_gamma).pow(-options_.power);
  return value.clamp(options_.min_value, options_.decay).item<double>();
}

void EMA::copy_from_model() {
  torch::NoGradGuard no_grad;
  auto online = averaged_tensors(*model_);
  auto shadow = averaged_tensors(*ema_model_);
  for (size_t i = 0; i < online.size(); ++i) {
    shadow[i].second.copy_(online[i].second);
  }
}

void EMA::lerp_from_model(double decay) {
  if (options_.decay == 1.0) {
    return; // a frozen EMA never moves
  }
  torch::NoGradGuard no_grad;
  auto online = averaged_tensors(*model_);
  auto shadow = averaged_tensors(*ema_model_);
  std::vector<torch::Tensor> targets, sources;
  for (size_t i = 0; i < online.size(); ++i) {
    targets.push_back(shadow[i].second);
    sources.push_back(online[i].second);
  }
  torch::_foreach_lerp_(targets, sources, 1.0 - decay);
}

void EMA::update() {
  const int64_t step = step_;
  ++step_;

  if (!initted_) {
    copy_from_model();
    initted_ = true;
    return;
  }
  if (step % options_.update_every != 0) {
    return;
  }
  if (step <= options_.update_after_step) {
    copy_from_model();
    return;
  }
  lerp_from_model(current_decay());
}

torch::OrderedDict<std::string, torch::Tensor> EMA::state_dict() const {
  torch::OrderedDict<std::string, torch::Tensor> state;
  state.insert("initted", torch::tensor(initted_));
  state.insert("step", torch::tensor(step_, torch::kLong));
  auto add_module = [&](const std::string& prefix,
                        const torch::nn::Module& module) {
    for (const auto& item : module.named_parameters()) {
      state.insert(prefix + item.key(), item.value().detach());
    }
    for (const auto& item : module.named_buffers()) {
      state.insert(prefix + item.key(), item.value().detach());
    }
  };
  add_module("online_model.", *model_);
  add_module("ema_model.", *ema_model_);
  return state;
}

void EMA::load_state_dict(
    const torch::OrderedDict<std::string, torch::Tensor>& state) {
  const auto* initted = state.find("initted");
  const auto* step = state.find("step");
  TORCH_CHECK(initted && step,
              "EMA state is missing \"initted\" or \"step\"");
  torch::NoGradGuard no_grad;
  for (const auto& item : ema_model_->named_parameters()) {
    const std::string key = "ema_model." + item.key();
    const auto* value = state.find(key);
    TORCH_CHECK(value, "EMA state is missing \"", key, "\"");
    TORCH_CHECK(value->sizes() == item.value().sizes(), "EMA state \"", key,
                "\" has shape ", value->sizes(), ", the model expects ",
                item.value().sizes());
    item.value().copy_(*value);
  }
  for (const auto& item : ema_model_->named_buffers()) {
    const auto* value = state.find("ema_model." + item.key());
    if (value && value->sizes() == item.value().sizes()) {
      item.value().copy_(*value);
    }
  }
  initted_ = initted->item<bool>();
  step_ = step->item<int64_t>();
}

} // namespace ddpm
