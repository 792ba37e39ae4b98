#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/grad_scaler.h"
#include "test_util.h"

namespace ddpm {
namespace {

class GradScalerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    param = torch::ones({3}).requires_grad_(true);
    optimizer = std::make_unique<torch::optim::SGD>(
        std::vector<torch::Tensor>{param}, torch::optim::SGDOptions(0.5));
  }

  // Backward of sum(param * weights) through the scaler.
  void backward(GradScaler& scaler, const torch::Tensor& weights) {
    optimizer->zero_grad();
    scaler.scale((param * weights).sum()).backward();
  }

  torch::Tensor param;
  std::unique_ptr<torch::optim::SGD> optimizer;
};

TEST_F(GradScalerTest, ScalesLossAndUnscalesGradients) {
  GradScaler scaler;
  auto loss = torch::tensor(2.0f);
  EXPECT_FLOAT_EQ(scaler.scale(loss).item<float>(), 2.0f * 65536.0f);

  backward(scaler, torch::tensor({1.0f, 2.0f, 3.0f}));
  EXPECT_FLOAT_EQ(param.grad()[2].item<float>(), 3.0f * 65536.0f);
  scaler.unscale_({param});
  EXPECT_FLOAT_EQ(param.grad()[2].item<float>(), 3.0f);
  EXPECT_FALSE(scaler.found_inf());
  EXPECT_TRUE(scaler.step(*optimizer, {param}));
  EXPECT_FLOAT_EQ(param[2].item<float>(), 1.0f - 0.5f * 3.0f);
  scaler.update();
  EXPECT_DOUBLE_EQ(scaler.get_scale(), 65536.0);
  EXPECT_EQ(scaler.growth_tracker(), 1);
}

TEST_F(GradScalerTest, SkipsStepAndBacksOffOnOverflow) {
  GradScaler scaler;
  const float inf = std::numeric_limits<float>::infinity();
  backward(scaler, torch::tensor({1.0f, inf, 1.0f}));
  EXPECT_FALSE(scaler.step(*optimizer, {param}));
  EXPECT_TRUE(scaler.found_inf());
  EXPECT_TRUE(torch::equal(param, torch::ones({3})));
  scaler.update();
  EXPECT_DOUBLE_EQ(scaler.get_scale(), 32768.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
}

TEST_F(GradScalerTest, GrowsAfterInterval) {
  GradScalerOptions options;
  options.init_scale = 4.0;
  options.growth_interval = 2;
  GradScaler scaler(options);
  for (int i = 0; i < 2; ++i) {
    backward(scaler, torch::ones({3}));
    EXPECT_TRUE(scaler.step(*optimizer, {param}));
    scaler.update();
  }
  EXPECT_DOUBLE_EQ(scaler.get_scale(), 8.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
}

TEST_F(GradScalerTest, DisabledScalerPassesThrough) {
  GradScalerOptions options;
  options.enabled = false;
  GradScaler scaler(options);
  auto loss = torch::tensor(2.0f);
  EXPECT_TRUE(torch::equal(scaler.scale(loss), loss));
  backward(scaler, torch::ones({3}));
  EXPECT_TRUE(scaler.step(*optimizer, {param}));
  EXPECT_FLOAT_EQ(param[0].item<float>(), 0.5f);
}

TEST_F(GradScalerTest, RejectsInvalidOptions) {
  GradScalerOptions options;
  options.backoff_factor = 1.5;
  DDPM_EXPECT_THROW_WITH(GradScaler{options},
                         "backoff_factor must be in (0, 1), got 1.5");
}

TEST_F(GradScalerTest, RejectsEachInvalidOption) {
  const auto with = [](auto change) {
    GradScalerOptions options;
    change(options);
    return options;
  };
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<GradScalerOptions, std::string>> cases = {
      {with([](GradScalerOptions& o) { o.init_scale = 0; }),
       "GradScaler init_scale must be positive and finite, got 0"},
      {with([inf](GradScalerOptions& o) { o.init_scale = inf; }),
       "GradScaler init_scale must be positive and finite, got inf"},
      {with([](GradScalerOptions& o) { o.growth_factor = 1.0; }),
       "GradScaler growth_factor must be above 1 and finite, got 1"},
      {with([](GradScalerOptions& o) { o.backoff_factor = 0; }),
       "GradScaler backoff_factor must be in (0, 1), got 0"},
      {with([](GradScalerOptions& o) { o.growth_interval = 0; }),
       "GradScaler growth_interval must be at least 1, got 0"},
  };
  for (const auto& [options, message] : cases) {
    SCOPED_TRACE(message);
    DDPM_EXPECT_THROW_WITH(GradScaler{options}, message);
  }
}

} // namespace
} // namespace ddpm
