#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/gaussian_diffusion.h"
#include "test_util.h"

namespace ddpm {
namespace {

class DiffusionTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }

  static Unet small_unet(int64_t channels = 1, bool self_condition = false) {
    return Unet(UnetOptions(8).dim_mults({1, 2}).channels(channels)
                    .self_condition(self_condition));
  }
};

double max_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

TEST_F(DiffusionTest, LinearScheduleEndpoints) {
  auto betas = linear_beta_schedule(1000);
  EXPECT_EQ(betas.scalar_type(), torch::kFloat64);
  EXPECT_DOUBLE_EQ(betas[0].item<double>(), 1e-4);
  EXPECT_DOUBLE_EQ(betas[999].item<double>(), 0.02);
  auto scaled = linear_beta_schedule(250);
  EXPECT_DOUBLE_EQ(scaled[0].item<double>(), 4e-4);
  EXPECT_DOUBLE_EQ(scaled[249].item<double>(), 0.08);
}

TEST_F(DiffusionTest, CosineScheduleMatchesClosedForm) {
  const int64_t steps = 50;
  const double s = 0.008;
  auto betas = cosine_beta_schedule(steps, s);
  auto f = [&](double t) {
    return std::pow(std::cos((t / steps + s) / (1 + s) * M_PI / 2), 2);
  };
  double alpha_bar = 1.0;
  for (int64_t t = 0; t < steps; ++t) {
    const double expected =
        std::min(0.999, 1 - f(double(t + 1)) / f(double(t)));
    EXPECT_NEAR(betas[t].item<double>(), expected, 1e-12) << "t = " << t;
    alpha_bar *= 1 - expected;
  }
  EXPECT_NEAR((1 - betas).prod().item<double>(), alpha_bar, 1e-12);
}

TEST_F(DiffusionTest, SigmoidScheduleMatchesClosedForm) {
  const int64_t steps = 40;
  const double start = -2, end = 4, tau = 0.7;
  auto betas = sigmoid_beta_schedule(steps, start, end, tau);
  auto sigmoid = [](double v) { return 1 / (1 + std::exp(-v)); };
  // The endpoints are float32 in the Python package.
  const double v_start = double(float(sigmoid(float(start / tau))));
  const double v_end = double(float(sigmoid(float(end / tau))));
  auto alpha_bar = [&](int64_t t) {
    const double x = double(t) / steps;
    return (-sigmoid((x * (end - start) + start) / tau) + v_end) /
        (v_end - v_start);
  };
  for (int64_t t = 0; t < steps; ++t) {
    const double expected =
        std::clamp(1 - alpha_bar(t + 1) / alpha_bar(t), 0.0, 0.999);
    EXPECT_NEAR(betas[t].item<double>(), expected, 1e-6) << "t = " << t;
  }
}

TEST_F(DiffusionTest, BuffersFollowTheirDefinitions) {
  GaussianDiffusion diffusion(
      small_unet(), GaussianDiffusionOptions(8).timesteps(100).beta_schedule(
                        BetaSchedule::kLinear));
  auto betas = linear_beta_schedule(100);
  auto alphas_cumprod = torch::cumprod(1 - betas, 0);
  EXPECT_EQ(diffusion->betas.scalar_type(), torch::kFloat32);
  EXPECT_LE(max_difference(diffusion->alphas_cumprod,
                           alphas_cumprod.to(torch::kFloat32)),
            0);
  EXPECT_FLOAT_EQ(diffusion->alphas_cumprod_prev[0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(diffusion->alphas_cumprod_prev[10].item<float>(),
                  diffusion->alphas_cumprod[9].item<float>());
  const double ab = alphas_cumprod[50].item<double>();
  const double ab_prev = alphas_cumprod[49].item<double>();
  const double beta = betas[50].item<double>();
  EXPECT_FLOAT_EQ(diffusion->posterior_variance[50].item<float>(),
                  float(beta * (1 - ab_prev) / (1 - ab)));
  EXPECT_FLOAT_EQ(diffusion->posterior_mean_coef1[50].item<float>(),
                  float(beta * std::sqrt(ab_prev) / (1 - ab)));
  EXPECT_FLOAT_EQ(diffusion->sqrt_recipm1_alphas_cumprod[50].item<float>(),
                  float(std::sqrt(1 / ab - 1)));
  // pred_v: loss weight snr / (snr + 1) = alpha_bar.
  EXPECT_FLOAT_EQ(diffusion->loss_weight[50].item<float>(), float(ab));
}

TEST_F(DiffusionTest, MinSnrWeightClipsEachObjective) {
  const double gamma = 2.0;
  for (auto objective :
       {Objective::kPredNoise, Objective::kPredX0, Objective::kPredV}) {
    SCOPED_TRACE(to_string(objective));
    GaussianDiffusion diffusion(
        small_unet(), GaussianDiffusionOptions(8)
                          .timesteps(100)
                          .objective(objective)
                          .min_snr_loss_weight(true)
                          .min_snr_gamma(gamma));
    const double ab =
        torch::cumprod(1 - sigmoid_beta_schedule(100), 0)[3].item<double>();
    const double snr = ab / (1 - ab);
    ASSERT_GT(snr, gamma);
    const double clipped = std::min(snr, gamma);
    const double expected = objective == Objective::kPredNoise
        ? clipped / snr
        : objective == Objective::kPredX0 ? clipped : clipped / (snr + 1);
    EXPECT_NEAR(diffusion->loss_weight[3].item<double>(), expected,
                1e-7 * expected);
  }
}

TEST_F(DiffusionTest, TargetOfEachObjective) {
  auto x0 = torch::rand({2, 1, 8, 8}) * 2 - 1;
  auto noise = torch::randn({2, 1, 8, 8});
  auto t = torch::tensor({5, 70}, torch::kLong);
  for (auto objective :
       {Objective::kPredNoise, Objective::kPredX0, Objective::kPredV}) {
    SCOPED_TRACE(to_string(objective));
    GaussianDiffusion diffusion(
        small_unet(),
        GaussianDiffusionOptions(8).timesteps(100).objective(objective));
    auto target = diffusion->target(x0, t, noise);
    torch::Tensor expected;
    if (objective == Objective::kPredNoise) {
      expected = noise;
    } else if (objective == Objective::kPredX0) {
      expected = x0;
    } else {
      auto a = diffusion->alphas_cumprod.index({t}).view({2, 1, 1, 1});
      expected = a.sqrt() * noise - (1 - a).sqrt() * x0;
    }
    EXPECT_LE(max_difference(target, expected), 1e-6);
  }
}

TEST_F(DiffusionTest, QSampleAndInversions) {
  GaussianDiffusion diffusion(small_unet(),
                              GaussianDiffusionOptions(8).timesteps(100));
  auto x0 = torch::rand({2, 1, 8, 8}) * 2 - 1;
  auto noise = torch::randn({2, 1, 8, 8});
  auto t = torch::tensor({10, 90}, torch::kLong);
  auto xt = diffusion->q_sample(x0, t, noise);
  auto a = diffusion->alphas_cumprod.index({t}).view({2, 1, 1, 1});
  EXPECT_LE(max_difference(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise), 1e-6);
  EXPECT_LE(max_difference(diffusion->predict_start_from_noise(xt, t, noise),
                           x0),
            1e-4);
  EXPECT_LE(max_difference(diffusion->predict_noise_from_start(xt, t, x0),
                           noise),
            1e-4);
  auto v = diffusion->predict_v(x0, t, noise);
  EXPECT_LE(max_difference(diffusion->predict_start_from_v(xt, t, v), x0),
            1e-5);
}

TEST_F(DiffusionTest, LossIsWeightedErrorOfModelOutput) {
  for (auto loss_type : {LossType::kL1, LossType::kL2}) {
    SCOPED_TRACE(to_string(loss_type));
    GaussianDiffusion diffusion(small_unet(), GaussianDiffusionOptions(8)
                                                  .timesteps(100)
                                                  .objective(Objective::kPredX0)
                                                  .loss_type(loss_type));
    auto images = torch::rand({2, 1, 8, 8});
    auto noise = torch::randn({2, 1, 8, 8});
    auto t = torch::tensor({3, 40}, torch::kLong);
    auto per_image = diffusion->loss(images, t, noise, /*reduce=*/false);

    auto x0 = images * 2 - 1;
    auto out = diffusion->model(diffusion->q_sample(x0, t, noise), t);
    auto error = loss_type == LossType::kL1 ? (out - x0).abs()
                                            : (out - x0).pow(2);
    auto expected = error.mean({1, 2, 3}) * diffusion->loss_weight.index({t});
    EXPECT_LE(max_difference(per_image, expected), 1e-6);
    EXPECT_NEAR(diffusion->loss(images, t, noise).item<double>(),
                expected.mean().item<double>(), 1e-6);
  }
}

TEST_F(DiffusionTest, DdimTimePairsMatchPython) {
  GaussianDiffusion diffusion(
      small_unet(),
      GaussianDiffusionOptions(8).timesteps(1000).sampling_timesteps(4));
  // torch.linspace(-1, 999, 5).int() = [-1, 249, 499, 749, 999]
  std::vector<std::pair<int64_t, int64_t>> expected{
      {999, 749}, {749, 499}, {499, 249}, {249, -1}};
  EXPECT_EQ(diffusion->ddim_time_pairs(), expected);
  EXPECT_TRUE(diffusion->is_ddim_sampling());
}

TEST_F(DiffusionTest, SampleShapesAndRange) {
  GaussianDiffusion ddpm(small_unet(3),
                         GaussianDiffusionOptions({8, 16}).timesteps(5));
  auto images = ddpm->sample(2);
  EXPECT_EQ(images.sizes(), torch::IntArrayRef({2, 3, 8, 16}));
  auto all = ddpm->sample(2, /*return_all_timesteps=*/true);
  EXPECT_EQ(all.sizes(), torch::IntArrayRef({2, 6, 3, 8, 16}));

  GaussianDiffusion ddim(
      small_unet(3),
      GaussianDiffusionOptions({8, 16}).timesteps(50).sampling_timesteps(4));
  auto ddim_all = ddim->sample(3, true);
  EXPECT_EQ(ddim_all.sizes(), torch::IntArrayRef({3, 5, 3, 8, 16}));
  // The last DDIM step returns the clipped x_0 estimate, inside [0, 1].
  auto last = ddim_all.select(1, 4);
  EXPECT_GE(last.min().item<double>(), 0.0);
  EXPECT_LE(last.max().item<double>(), 1.0);
}

TEST_F(DiffusionTest, SameSeedSameSamples) {
  GaussianDiffusion diffusion(
      small_unet(1, /*self_condition=*/true),
      GaussianDiffusionOptions(8).timesteps(30).sampling_timesteps(6)
          .ddim_sampling_eta(1.0));
  torch::manual_seed(7);
  auto a = diffusion->sample(2);
  torch::manual_seed(7);
  auto b = diffusion->sample(2);
  torch::manual_seed(8);
  auto c = diffusion->sample(2);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT(max_difference(a, c), 1e-3);
}

TEST_F(DiffusionTest, ProgressCallbackSeesEveryStep) {
  GaussianDiffusion diffusion(small_unet(),
                              GaussianDiffusionOptions(8).timesteps(7));
  std::vector<int64_t> steps;
  diffusion->set_sample_callback([&](const SampleProgress& progress) {
    EXPECT_EQ(progress.total, 7);
    EXPECT_GE(progress.steps_per_second, 0.0);
    steps.push_back(progress.step);
  });
  diffusion->sample(1);
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
}

TEST_F(DiffusionTest, InterpolateKeepsShape) {
  GaussianDiffusion diffusion(small_unet(),
                              GaussianDiffusionOptions(8).timesteps(10));
  auto x1 = torch::rand({2, 1, 8, 8});
  auto x2 = torch::rand({2, 1, 8, 8});
  auto mixed = diffusion->interpolate(x1, x2, 4, 0.3);
  EXPECT_EQ(mixed.sizes(), x1.sizes());
  EXPECT_TRUE(torch::isfinite(mixed).all().item<bool>());
  DDPM_EXPECT_THROW_WITH(diffusion->interpolate(x1, x2, 10),
                         "t must be in [0, 9], got 10");
}

TEST_F(DiffusionTest, RejectsInvalidOptions) {
  DDPM_EXPECT_THROW_WITH(
      GaussianDiffusion(small_unet(), GaussianDiffusionOptions(8)
                                          .timesteps(10)
                                          .sampling_timesteps(11)),
      "sampling_timesteps must be in [1, timesteps = 10], got 11");
  DDPM_EXPECT_THROW_WITH(
      GaussianDiffusion(Unet(UnetOptions(8).dim_mults({1, 2, 4})),
                        GaussianDiffusionOptions({12, 10})),
      "divisible by the Unet's downsample factor 4 (2^(stages - 1)), got "
      "12 x 10");
  DDPM_EXPECT_THROW_WITH(
      GaussianDiffusion(small_unet(), GaussianDiffusionOptions(8).timesteps(0)),
      "timesteps must be at least 1, got 0");
  DDPM_EXPECT_THROW_WITH(
      GaussianDiffusion(Unet(UnetOptions(8).dim_mults({1, 2})
                                 .learned_variance(true)),
                        GaussianDiffusionOptions(8)),
      "out_dim equals its channels, got out_dim 6 and channels 3");
  DDPM_EXPECT_THROW_WITH(objective_from_string("pred_eps"),
                         "unknown objective \"pred_eps\"");
  DDPM_EXPECT_THROW_WITH(beta_schedule_from_string("quadratic"),
                         "expected linear, cosine or sigmoid");
  DDPM_EXPECT_THROW_WITH(loss_type_from_string("huber"),
                         "unknown loss type \"huber\"");
  GaussianDiffusion diffusion(small_unet(), GaussianDiffusionOptions(8));
  DDPM_EXPECT_THROW_WITH(diffusion(torch::rand({2, 1, 16, 16})),
                         "images must have shape [B, 1, 8, 8], got [2, 1, "
                         "16, 16]");
}

TEST_F(DiffusionTest, RejectsEachInvalidOption) {
  const double inf = std::numeric_limits<double>::infinity();
  BetaScheduleArgs reversed_sigmoid;
  reversed_sigmoid.start = 3.0;
  reversed_sigmoid.end = -3.0;
  BetaScheduleArgs cold_sigmoid;
  cold_sigmoid.tau = 0.0;
  BetaScheduleArgs negative_cosine;
  negative_cosine.s = -0.1;
  const std::vector<std::pair<GaussianDiffusionOptions, std::string>> cases =
      {
          {GaussianDiffusionOptions(0),
           "image_size must be positive, got 0 x 0"},
          {GaussianDiffusionOptions({8, -8}),
           "image_size must be positive, got 8 x -8"},
          {GaussianDiffusionOptions(8).timesteps(-5),
           "timesteps must be at least 1, got -5"},
          {GaussianDiffusionOptions(8).timesteps(10).sampling_timesteps(0),
           "sampling_timesteps must be in [1, timesteps = 10], got 0"},
          {GaussianDiffusionOptions(8).ddim_sampling_eta(-1),
           "ddim_sampling_eta must be non-negative and finite, got -1"},
          {GaussianDiffusionOptions(8).offset_noise_strength(inf),
           "offset_noise_strength must be non-negative and finite, got inf"},
          {GaussianDiffusionOptions(8).min_snr_gamma(0),
           "min_snr_gamma must be positive and finite, got 0"},
          {GaussianDiffusionOptions(8)
               .beta_schedule(BetaSchedule::kSigmoid)
               .schedule_fn_kwargs(reversed_sigmoid),
           "sigmoid schedule needs end > start, got start 3 and end -3"},
          {GaussianDiffusionOptions(8)
               .beta_schedule(BetaSchedule::kSigmoid)
               .schedule_fn_kwargs(cold_sigmoid),
           "sigmoid schedule tau must be positive and finite, got 0"},
          {GaussianDiffusionOptions(8)
               .beta_schedule(BetaSchedule::kCosine)
               .schedule_fn_kwargs(negative_cosine),
           "cosine schedule offset s must be non-negative and finite, got "
           "-0.1"},
      };
  for (const auto& [options, message] : cases) {
    SCOPED_TRACE(message);
    DDPM_EXPECT_THROW_WITH(GaussianDiffusion(small_unet(), options), message);
  }
  DDPM_EXPECT_THROW_WITH(GaussianDiffusion(Unet(nullptr),
                                           GaussianDiffusionOptions(8)),
                         "GaussianDiffusion needs a constructed Unet");
  DDPM_EXPECT_THROW_WITH(
      GaussianDiffusion(Unet(UnetOptions(8).dim_mults({1, 2}).out_dim(2)),
                        GaussianDiffusionOptions(8)),
      "out_dim equals its channels, got out_dim 2 and channels 3");
}

TEST_F(DiffusionTest, SchedulesRejectInvalidArguments) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  DDPM_EXPECT_THROW_WITH(linear_beta_schedule(0),
                         "timesteps must be at least 1, got 0");
  DDPM_EXPECT_THROW_WITH(cosine_beta_schedule(-1),
                         "timesteps must be at least 1, got -1");
  DDPM_EXPECT_THROW_WITH(cosine_beta_schedule(10, inf),
                         "offset s must be non-negative and finite, got inf");
  DDPM_EXPECT_THROW_WITH(sigmoid_beta_schedule(0),
                         "timesteps must be at least 1, got 0");
  DDPM_EXPECT_THROW_WITH(sigmoid_beta_schedule(10, -inf, 3.0),
                         "start and end must be finite, got start -inf and "
                         "end 3");
  DDPM_EXPECT_THROW_WITH(sigmoid_beta_schedule(10, -3.0, nan),
                         "start and end must be finite, got start -3 and "
                         "end nan");
  DDPM_EXPECT_THROW_WITH(sigmoid_beta_schedule(10, -3.0, 3.0, -1.0),
                         "tau must be positive and finite, got -1");
  DDPM_EXPECT_THROW_WITH(beta_schedule_from_string(""),
                         "unknown beta schedule \"\": expected linear, "
                         "cosine or sigmoid");
  DDPM_EXPECT_THROW_WITH(objective_from_string("PRED_V"),
                         "unknown objective \"PRED_V\": expected pred_noise, "
                         "pred_x0 or pred_v");
  DDPM_EXPECT_THROW_WITH(loss_type_from_string("L1"),
                         "unknown loss type \"L1\": expected l1 or l2");
}

} // namespace
} // namespace ddpm
