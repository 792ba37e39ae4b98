#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/fused_adam.h"
#include "ddpm/io/checkpoint.h"

namespace ddpm {
namespace {

// A channels-last 4-d weight, a bias and a per-channel gain, as in a Unet.
std::vector<torch::Tensor> make_parameters(torch::ScalarType dtype) {
  torch::manual_seed(3);
  auto weight = torch::randn({8, 4, 3, 3}, dtype)
                    .contiguous(torch::MemoryFormat::ChannelsLast);
  auto bias = torch::randn({8}, dtype);
  auto gain = torch::randn({1, 8, 1, 1}, dtype);
  std::vector<torch::Tensor> params{weight, bias, gain};
  for (auto& p : params) {
    p.set_requires_grad(true);
  }
  return params;
}

std::vector<torch::Tensor>
clone_parameters(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> copies;
  for (const auto& p : params) {
    copies.push_back(p.detach()
                         .clone(torch::MemoryFormat::Preserve)
                         .set_requires_grad(true));
  }
  return copies;
}

// Sets gradients that depend only on the step, so both optimizers get the
// same ones.
void set_gradients(const std::vector<torch::Tensor>& params, int step) {
  torch::manual_seed(100 + step);
  for (const auto& p : params) {
    p.mutable_grad() = torch::randn_like(p) * (step + 1);
  }
}

// Runs steps first_step, ..., first_step + count - 1 of both optimizers,
// each on its own parameters with the same gradients.
void step_both(torch::optim::Optimizer& fused,
               const std::vector<torch::Tensor>& fused_params,
               torch::optim::Optimizer& plain,
               const std::vector<torch::Tensor>& plain_params, int first_step,
               int count) {
  for (int step = first_step; step < first_step + count; ++step) {
    set_gradients(fused_params, step);
    set_gradients(plain_params, step);
    fused.step();
    plain.step();
  }
}

void expect_same_trajectory(torch::optim::AdamOptions options,
                            torch::ScalarType dtype, double tolerance) {
  auto fused_params = make_parameters(dtype);
  auto plain_params = clone_parameters(fused_params);
  FusedAdam fused(fused_params, options);
  torch::optim::Adam plain(plain_params, options);
  step_both(fused, fused_params, plain, plain_params, 0, 6);
  for (size_t i = 0; i < fused_params.size(); ++i) {
    SCOPED_TRACE("parameter " + std::to_string(i));
    EXPECT_TRUE(
        fused_params[i].is_contiguous(fused_params[i].suggest_memory_format()));
    EXPECT_LE((fused_params[i] - plain_params[i]).abs().max().item<double>(),
              tolerance);
    const auto& fused_state = static_cast<torch::optim::AdamParamState&>(
        *fused.state().at(fused_params[i].unsafeGetTensorImpl()));
    const auto& plain_state = static_cast<torch::optim::AdamParamState&>(
        *plain.state().at(plain_params[i].unsafeGetTensorImpl()));
    EXPECT_EQ(fused_state.step(), 6);
    EXPECT_LE((fused_state.exp_avg() - plain_state.exp_avg())
                  .abs()
                  .max()
                  .item<double>(),
              tolerance);
    EXPECT_LE((fused_state.exp_avg_sq() - plain_state.exp_avg_sq())
                  .abs()
                  .max()
                  .item<double>(),
              tolerance * 100);
  }
}

TEST(FusedAdamTest, MatchesLibTorchAdam) {
  expect_same_trajectory(torch::optim::AdamOptions(1e-2).betas({0.9, 0.99}),
                         torch::kFloat, 1e-6);
}

TEST(FusedAdamTest, MatchesWithWeightDecayAndAmsgrad) {
  expect_same_trajectory(torch::optim::AdamOptions(1e-2)
                             .betas({0.8, 0.95})
                             .weight_decay(0.1)
                             .amsgrad(true),
                         torch::kFloat, 1e-6);
}

TEST(FusedAdamTest, MatchesInDoublePrecision) {
  expect_same_trajectory(torch::optim::AdamOptions(1e-3), torch::kDouble,
                         1e-12);
}

// The first step of Adam moves each weight by lr against the sign of its
// gradient: the bias-corrected moments are g and g^2.
TEST(FusedAdamTest, FirstStepIsSignOfGradient) {
  auto params = make_parameters(torch::kFloat);
  const auto before = clone_parameters(params);
  FusedAdam adam(params, torch::optim::AdamOptions(0.5).eps(0.0));
  set_gradients(params, 0);
  adam.step();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto expected = before[i] - 0.5 * params[i].grad().sign();
    EXPECT_LE((params[i] - expected).abs().max().item<double>(), 1e-6);
  }
}

TEST(FusedAdamTest, SkipsParametersWithoutGradients) {
  auto params = make_parameters(torch::kFloat);
  const auto untouched = params[1].detach().clone();
  FusedAdam adam(params, torch::optim::AdamOptions(0.1));
  set_gradients(params, 0);
  params[1].mutable_grad() = torch::Tensor();
  adam.step();
  EXPECT_TRUE(torch::equal(params[1], untouched));
  EXPECT_EQ(adam.state().count(params[1].unsafeGetTensorImpl()), 0u);
  EXPECT_EQ(adam.state().size(), 2u);
}

// Mixed dtypes in one group are more than the fused kernel takes: the step
// falls back to LibTorch's loop, bit for bit.
TEST(FusedAdamTest, FallsBackForMixedDtypes) {
  auto fused_params = make_parameters(torch::kFloat);
  fused_params[2] =
      fused_params[2].detach().to(torch::kDouble).set_requires_grad(true);
  auto plain_params = clone_parameters(fused_params);
  FusedAdam fused(fused_params, torch::optim::AdamOptions(1e-2));
  torch::optim::Adam plain(plain_params, torch::optim::AdamOptions(1e-2));
  step_both(fused, fused_params, plain, plain_params, 0, 3);
  for (size_t i = 0; i < fused_params.size(); ++i) {
    EXPECT_TRUE(torch::equal(fused_params[i], plain_params[i]));
  }
}

// The state goes through the Python-compatible optimizer state dict and
// continues in a plain Adam, and the other way round.
TEST(FusedAdamTest, StateDictMovesToAndFromPlainAdam) {
  auto fused_params = make_parameters(torch::kFloat);
  FusedAdam fused(fused_params, torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < 3; ++step) {
    set_gradients(fused_params, step);
    fused.step();
  }
  auto plain_params = clone_parameters(fused_params);
  torch::optim::Adam plain(plain_params, torch::optim::AdamOptions(1e-2));
  load_adam_state_dict(plain, adam_state_dict(fused));
  FusedAdam again(clone_parameters(fused_params),
                  torch::optim::AdamOptions(1e-2));
  load_adam_state_dict(again, adam_state_dict(plain));
  step_both(fused, fused_params, plain, plain_params, 3, 1);
  for (size_t i = 0; i < fused_params.size(); ++i) {
    EXPECT_LE((fused_params[i] - plain_params[i]).abs().max().item<double>(),
              1e-6);
    const auto& state =
        static_cast<torch::optim::AdamParamState&>(*again.state().at(
            again.param_groups()[0].params()[i].unsafeGetTensorImpl()));
    EXPECT_EQ(state.step(), 3);
  }
}

} // namespace
} // namespace ddpm
