#include "ddpm/fused_adam.h"

#include <initializer_list>
#include <memory>
#include <vector>

#include <ATen/ops/_fused_adam.h>
#include <torch/torch.h>

namespace ddpm {
namespace {

bool fused_kernel_takes(const std::vector<torch::Tensor>& params) {
  if (params.empty()) {
    return false;
  }
  const auto device = params.front().device();
  const auto dtype = params.front().scalar_type();
  if (!(device.is_cpu() || device.is_cuda()) ||
      !(dtype == torch::kFloat || dtype == torch::kDouble ||
        dtype == torch::kHalf || dtype == torch::kBFloat16)) {
    return false;
  }
  for (const auto& p : params) {
    const auto& grad = p.grad();
    if (p.device() != device || p.scalar_type() != dtype ||
        grad.device() != device || grad.scalar_type() != dtype ||
        grad.is_sparse() || p.is_sparse() || p.is_complex()) {
      return false;
    }
  }
  return true;
}

std::vector<torch::Tensor>
params_with_grad(const torch::optim::OptimizerParamGroup& group) {
  std::vector<torch::Tensor> params;
  for (const auto& p : group.params()) {
    if (p.grad().defined()) {
      params.push_back(p);
    }
  }
  return params;
}

// The update is element-wise, so a dense tensor whose partners share its
// strides can go to the kernel as a 1-d view of its memory. Otherwise the
// kernel copies each channels-last weight to a contiguous temporary and back.
torch::Tensor flat_view(const torch::Tensor& t) {
  return t.as_strided({t.numel()}, {1}, t.storage_offset());
}

bool same_dense_layout(const torch::Tensor& p,
                       std::initializer_list<torch::Tensor> partners) {
  if (p.is_contiguous() || !p.is_non_overlapping_and_dense()) {
    return false;
  }
  for (const auto& t : partners) {
    if (t.defined() && t.strides() != p.strides()) {
      return false;
    }
  }
  return true;
}

} // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  std::vector<std::vector<torch::Tensor>> group_params;
  for (const auto& group : param_groups_) {
    group_params.push_back(params_with_grad(group));
    const auto& params = group_params.back();
    if (!params.empty() && !fused_kernel_takes(params)) {
      torch::optim::Adam::step();
      return loss;
    }
  }
  torch::NoGradGuard no_grad;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& group = param_groups_[g];
    const auto& params = group_params[g];
    if (params.empty()) {
      continue;
    }
    const auto& options =
        static_cast<const torch::optim::AdamOptions&>(group.options());
    std::vector<torch::Tensor> kernel_params, grads, exp_avgs, exp_avg_sqs,
        max_exp_avg_sqs;
    std::vector<float> counts;
    for (const auto& p : params) {
      auto& slot = state_[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto fresh = std::make_unique<torch::optim::AdamParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        if (options.amsgrad()) {
          fresh->max_exp_avg_sq(
              torch::zeros_like(p, torch::MemoryFormat::Preserve));
        }
        slot = std::move(fresh);
      }
      auto& state = static_cast<torch::optim::AdamParamState&>(*slot);
      // The kernel reads the count after the increment. Python's fused path
      // also adds 1 before calling it.
      state.step(state.step() + 1);
      counts.push_back(float(state.step()));
      auto max_exp_avg_sq =
          options.amsgrad() ? state.max_exp_avg_sq() : torch::Tensor();
      const bool flatten = same_dense_layout(
          p, {p.grad(), state.exp_avg(), state.exp_avg_sq(), max_exp_avg_sq});
      auto pass = [&](const torch::Tensor& t) {
        return flatten ? flat_view(t) : t;
      };
      kernel_params.push_back(pass(p));
      grads.push_back(pass(p.grad()));
      exp_avgs.push_back(pass(state.exp_avg()));
      exp_avg_sqs.push_back(pass(state.exp_avg_sq()));
      if (options.amsgrad()) {
        max_exp_avg_sqs.push_back(pass(max_exp_avg_sq));
      }
    }
    // All step counts go to the device in one copy, and the kernel gets a
    // 0-d view per parameter.
    auto count_tensor =
        torch::tensor(counts, torch::kFloat).to(params.front().device());
    auto state_steps = count_tensor.unbind(0);
    at::_fused_adam_(kernel_params, grads, exp_avgs, exp_avg_sqs,
                     max_exp_avg_sqs, state_steps, options.lr(),
                     std::get<0>(options.betas()), std::get<1>(options.betas()),
                     options.weight_decay(), options.eps(), options.amsgrad(),
                     /*maximize=*/false);
  }
  return loss;
}

} // namespace ddpm
