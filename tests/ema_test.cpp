#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/ema.h"
#include "test_util.h"

namespace ddpm {
namespace {

class EmaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    model = torch::nn::Linear(3, 2);
    copy = torch::nn::Linear(3, 2);
  }

  // Sets every model weight to `value`.
  void set_model(float value) {
    torch::NoGradGuard no_grad;
    model->weight.fill_(value);
    model->bias.fill_(value);
  }

  float ema_weight() const { return copy->weight[0][0].item<float>(); }

  torch::nn::Linear model{nullptr};
  torch::nn::Linear copy{nullptr};
};

TEST_F(EmaTest, FirstUpdateCopiesModel) {
  EMA ema(model.ptr(), copy.ptr());
  EXPECT_FALSE(torch::equal(model->weight, copy->weight));
  ema.update();
  EXPECT_TRUE(ema.initted());
  EXPECT_EQ(ema.step(), 1);
  EXPECT_TRUE(torch::equal(model->weight, copy->weight));
  EXPECT_TRUE(torch::equal(model->bias, copy->bias));
  EXPECT_FALSE(copy->weight.requires_grad());
}

TEST_F(EmaTest, CopiesEveryUpdateUntilWarmupEnds) {
  EmaOptions options;
  options.update_every = 10;
  options.update_after_step = 100;
  EMA ema(model.ptr(), copy.ptr(), options);
  set_model(1.0f);
  ema.update(); // step 0: initial copy
  set_model(2.0f);
  for (int i = 1; i < 10; ++i) {
    ema.update(); // steps 1..9: nothing
  }
  EXPECT_FLOAT_EQ(ema_weight(), 1.0f);
  ema.update(); // step 10: copy
  EXPECT_FLOAT_EQ(ema_weight(), 2.0f);
}

TEST_F(EmaTest, AveragesWithWarmupDecay) {
  EmaOptions options;
  options.decay = 0.995;
  options.update_every = 10;
  options.update_after_step = 100;
  EMA ema(model.ptr(), copy.ptr(), options);
  set_model(1.0f);
  for (int i = 0; i <= 100; ++i) {
    ema.update(); // steps 0..100 track the model
  }
  EXPECT_FLOAT_EQ(ema_weight(), 1.0f);
  set_model(3.0f);
  for (int i = 101; i < 110; ++i) {
    ema.update();
  }
  EXPECT_FLOAT_EQ(ema_weight(), 1.0f);
  ema.update(); // step 110 averages; the counter is then 111
  // ema-pytorch: epoch = 111 - 100 - 1 = 10, decay = 1 - 11^(-2/3).
  const double decay = 1 - std::pow(11.0, -2.0 / 3.0);
  EXPECT_NEAR(ema.current_decay(), decay, 1e-6);
  EXPECT_NEAR(ema_weight(), 1.0 + (3.0 - 1.0) * (1 - decay), 1e-5);
}

TEST_F(EmaTest, DecayIsCappedAtMaximum) {
  EmaOptions options;
  options.decay = 0.9;
  options.update_after_step = 0;
  options.update_every = 1;
  EMA ema(model.ptr(), copy.ptr(), options);
  for (int i = 0; i < 1000; ++i) {
    ema.update();
  }
  // float32, as in ema-pytorch.
  EXPECT_FLOAT_EQ(float(ema.current_decay()), 0.9f);
}

TEST_F(EmaTest, StateDictRoundTrip) {
  EMA ema(model.ptr(), copy.ptr());
  for (int i = 0; i < 15; ++i) {
    ema.update();
  }
  auto state = ema.state_dict();
  for (const char* key : {"initted", "step", "online_model.weight",
                          "online_model.bias", "ema_model.weight",
                          "ema_model.bias"}) {
    EXPECT_TRUE(state.contains(key)) << key;
  }
  EXPECT_EQ(state["step"].item<int64_t>(), 15);

  torch::nn::Linear other_model(3, 2), other_copy(3, 2);
  EMA restored(other_model.ptr(), other_copy.ptr());
  restored.load_state_dict(state);
  EXPECT_EQ(restored.step(), 15);
  EXPECT_TRUE(restored.initted());
  EXPECT_TRUE(torch::equal(other_copy->weight, copy->weight));

  state.erase("ema_model.bias");
  DDPM_EXPECT_THROW_WITH(restored.load_state_dict(state),
                         "EMA state is missing \"ema_model.bias\"");
}

TEST_F(EmaTest, RejectsEachInvalidOption) {
  const auto with = [](auto change) {
    EmaOptions options;
    change(options);
    return options;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::pair<EmaOptions, std::string>> cases = {
      {with([](EmaOptions& o) { o.decay = -0.1; }),
       "EMA decay must be in [0, 1], got -0.1"},
      {with([](EmaOptions& o) { o.decay = 1.5; }),
       "EMA decay must be in [0, 1], got 1.5"},
      {with([nan](EmaOptions& o) { o.decay = nan; }),
       "EMA decay must be in [0, 1], got nan"},
      {with([](EmaOptions& o) { o.update_every = 0; }),
       "EMA update_every must be at least 1, got 0"},
      {with([](EmaOptions& o) { o.update_after_step = -1; }),
       "EMA update_after_step must be at least 0, got -1"},
      {with([](EmaOptions& o) { o.inv_gamma = 0; }),
       "EMA inv_gamma must be positive and finite, got 0"},
      {with([](EmaOptions& o) { o.power = -1; }),
       "EMA power must be positive and finite, got -1"},
      {with([](EmaOptions& o) { o.min_value = 0.5; o.decay = 0.4; }),
       "EMA min_value must be in [0, decay = 0.4], got 0.5"},
  };
  for (const auto& [options, message] : cases) {
    SCOPED_TRACE(message);
    DDPM_EXPECT_THROW_WITH(EMA(model.ptr(), copy.ptr(), options), message);
  }
  DDPM_EXPECT_THROW_WITH(EMA(model.ptr(), nullptr),
                         "EMA needs a model and an EMA copy");
  torch::nn::Linear wider(4, 2);
  DDPM_EXPECT_THROW_WITH(EMA(model.ptr(), wider.ptr()), "EMA copy");
}

} // namespace
} // namespace ddpm
