#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ddpm/unet.h"
#include "test_util.h"

namespace ddpm {
namespace {

class UnetTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

struct ShapeCase {
  const char* name;
  UnetOptions options;
  int64_t height;
  int64_t width;
  int64_t expected_channels;
};

TEST_F(UnetTest, OutputShapesAcrossOptions) {
  std::vector<ShapeCase> cases = {
      {"default stages", UnetOptions(8), 16, 16, 3},
      {"three stages gray", UnetOptions(8).dim_mults({1, 2, 4}).channels(1),
       28, 28, 1},
      {"one stage", UnetOptions(8).dim_mults({1}).channels(3), 5, 7, 3},
      {"rgba non-square", UnetOptions(8).dim_mults({1, 2}).channels(4), 8,
       12, 4},
      {"self condition",
       UnetOptions(8).dim_mults({1, 2}).self_condition(true), 8, 8, 3},
      {"learned variance",
       UnetOptions(8).dim_mults({1, 2}).learned_variance(true), 8, 8, 6},
      {"out_dim and init_dim",
       UnetOptions(8).dim_mults({1, 2}).init_dim(12).out_dim(5), 8, 8, 5},
      {"learned sinusoidal",
       UnetOptions(8).dim_mults({1, 2}).learned_sinusoidal_cond(true), 8, 8,
       3},
      {"random fourier",
       UnetOptions(8).dim_mults({1, 2}).random_fourier_features(true), 8, 8,
       3},
      {"all full attention flash",
       UnetOptions(8).dim_mults({1, 2}).full_attn({true}).flash_attn(true),
       8, 8, 3},
      {"all linear attention",
       UnetOptions(8).dim_mults({1, 2, 2}).full_attn({false}), 8, 8, 3},
      {"per-stage heads",
       UnetOptions(8).dim_mults({1, 2}).attn_heads({2, 4})
           .attn_dim_head({8, 16}),
       8, 8, 3},
      {"dropout", UnetOptions(8).dim_mults({1, 2}).dropout(0.1), 8, 8, 3},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.name);
    Unet unet(c.options);
    const int64_t channels = c.options.channels();
    auto x = torch::randn({2, channels, c.height, c.width});
    auto time = torch::tensor({0, 999}, torch::kLong);
    auto out = unet(x, time);
    EXPECT_EQ(out.sizes(),
              torch::IntArrayRef({2, c.expected_channels, c.height, c.width}));
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  }
}

TEST_F(UnetTest, ParameterNamesFollowPython) {
  Unet unet(UnetOptions(8).dim_mults({1, 2}));
  auto params = unet->named_parameters();
  for (const char* key :
       {"init_conv.weight", "time_mlp.1.weight", "time_mlp.3.bias",
        "downs.0.0.mlp.1.weight", "downs.0.0.block1.proj.weight",
        "downs.0.0.block1.norm.g", "downs.0.2.mem_kv",
        "downs.0.2.to_out.0.weight", "downs.0.2.to_out.1.g",
        "downs.0.3.1.weight", "downs.1.2.to_out.weight",
        "mid_attn.to_qkv.weight", "ups.0.0.res_conv.weight",
        "ups.1.3.weight", "final_res_block.res_conv.weight",
        "final_conv.bias"}) {
    EXPECT_TRUE(params.contains(key)) << key;
  }
}

TEST_F(UnetTest, ChannelsLastGivesSameOutput) {
  Unet model(UnetOptions(16).dim_mults({1, 2}).channels(3));
  model->eval();
  const auto x = torch::randn({2, 3, 16, 16});
  const auto t = torch::tensor({3, 700});
  torch::NoGradGuard no_grad;
  const auto expected = model(x, t);

  set_memory_format(*model, torch::MemoryFormat::ChannelsLast);
  auto weight = model->named_parameters()["init_conv.weight"];
  EXPECT_TRUE(weight.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_FALSE(weight.is_contiguous());
  const auto actual = model(x, t);
  EXPECT_TRUE(torch::allclose(actual, expected, 1e-5, 1e-5))
      << "largest difference " << (actual - expected).abs().max().item<float>();

  set_memory_format(*model, torch::MemoryFormat::Contiguous);
  EXPECT_TRUE(model->named_parameters()["init_conv.weight"].is_contiguous());
}

// The backward pass through every block, with linear and full attention,
// gives the same gradients whether the weights are channels-last or not.
TEST_F(UnetTest, ChannelsLastGivesSameGradients) {
  Unet model(UnetOptions(16).dim_mults({1, 2}).channels(3));
  const auto x = torch::randn({2, 3, 16, 16});
  const auto t = torch::tensor({3, 700});
  std::vector<std::vector<torch::Tensor>> grads;
  for (auto format : {torch::MemoryFormat::Contiguous,
                      torch::MemoryFormat::ChannelsLast}) {
    set_memory_format(*model, format);
    model->zero_grad();
    model(x, t).square().mean().backward();
    std::vector<torch::Tensor> gradients;
    for (const auto& p : model->parameters()) {
      gradients.push_back(p.grad().clone());
    }
    grads.push_back(gradients);
  }
  const auto names = model->named_parameters().keys();
  for (size_t i = 0; i < grads[0].size(); ++i) {
    const auto& expected = grads[0][i];
    const auto& actual = grads[1][i];
    EXPECT_TRUE(torch::allclose(actual, expected, 1e-4, 1e-6))
        << names[i] << ": largest difference "
        << (actual - expected).abs().max().item<float>();
  }
}

// RMSNorm's hand-written backward against autograd through the composite
// expression of Python's RMSNorm, in double precision. One pixel is zero,
// so its norm sits on F.normalize's floor.
TEST_F(UnetTest, RMSNormGradientsMatchCompositeExpression) {
  for (auto format : {torch::MemoryFormat::Contiguous,
                      torch::MemoryFormat::ChannelsLast}) {
    SCOPED_TRACE(format == torch::MemoryFormat::Contiguous ? "contiguous"
                                                           : "channels-last");
    RMSNorm norm(6);
    norm->to(torch::kDouble);
    {
      torch::NoGradGuard no_grad;
      norm->g.copy_(torch::randn({1, 6, 1, 1}, torch::kDouble));
    }
    auto input = torch::randn({3, 6, 4, 5}, torch::kDouble);
    input.index_put_({1, torch::indexing::Slice(), 2, 3}, 0.0);
    input = input.contiguous(format);
    const auto upstream =
        torch::randn({3, 6, 4, 5}, torch::kDouble).contiguous(format);

    auto x = input.clone().set_requires_grad(true);
    const auto actual = norm(x);
    actual.backward(upstream);
    const auto actual_grad_g = norm->g.grad().clone();
    norm->g.mutable_grad() = torch::Tensor();

    auto x_ref = input.clone().set_requires_grad(true);
    namespace F = torch::nn::functional;
    const auto expected =
        F::normalize(x_ref, F::NormalizeFuncOptions().dim(1)) * norm->g *
        norm->scale;
    expected.backward(upstream);

    EXPECT_TRUE(torch::allclose(actual, expected, 1e-12, 1e-12));
    EXPECT_TRUE(torch::allclose(x.grad(), x_ref.grad(), 1e-10, 1e-12))
        << "largest difference "
        << (x.grad() - x_ref.grad()).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(actual_grad_g, norm->g.grad(), 1e-10, 1e-12));
    // The zero pixel's gradient is upstream * g * scale / eps.
    const auto zero_pixel = x.grad().index({1, torch::indexing::Slice(), 2, 3});
    const auto floor_grad =
        (upstream.index({1, torch::indexing::Slice(), 2, 3}) *
         norm->g.view({6}) * norm->scale / 1e-12);
    EXPECT_TRUE(torch::allclose(zero_pixel, floor_grad, 1e-10));
  }
}

TEST_F(UnetTest, RejectsInvalidOptions) {
  DDPM_EXPECT_THROW_WITH(Unet(UnetOptions(8).dim_mults({})),
                         "dim_mults must have at least one entry");
  DDPM_EXPECT_THROW_WITH(Unet(UnetOptions(0)), "dim must be positive, got 0");
  DDPM_EXPECT_THROW_WITH(
      Unet(UnetOptions(8).dim_mults({1, 2, 4}).full_attn({true, false})),
      "full_attn must have 1 or 3 entries");
  DDPM_EXPECT_THROW_WITH(
      Unet(UnetOptions(8).dim_mults({1, 2}).attn_heads({0})),
      "attn_heads and attn_dim_head must be positive");
  DDPM_EXPECT_THROW_WITH(Unet(UnetOptions(8).dropout(1.0)),
                         "dropout must be in [0, 1), got 1");
}

TEST_F(UnetTest, RejectsEachInvalidOption) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::pair<UnetOptions, std::string>> cases = {
      {UnetOptions(-4), "Unet dim must be positive, got -4"},
      {UnetOptions(8).dim_mults({1, 0}),
       "Unet dim_mults must be positive, got (1, 0)"},
      {UnetOptions(8).dim_mults({1, -2}),
       "Unet dim_mults must be positive, got (1, -2)"},
      {UnetOptions(8).channels(0), "Unet channels must be positive, got 0"},
      {UnetOptions(8).init_dim(0), "Unet init_dim must be positive, got 0"},
      {UnetOptions(8).out_dim(0), "Unet out_dim must be positive, got 0"},
      {UnetOptions(8).dropout(-0.1), "Unet dropout must be in [0, 1), got -0.1"},
      {UnetOptions(8).dropout(nan), "Unet dropout must be in [0, 1), got nan"},
      {UnetOptions(8).sinusoidal_pos_emb_theta(0),
       "Unet sinusoidal_pos_emb_theta must be positive and finite, got 0"},
      {UnetOptions(7),
       "Unet dim must be even and at least 4 for the sinusoidal time "
       "embedding, got 7"},
      {UnetOptions(8).learned_sinusoidal_cond(true).learned_sinusoidal_dim(0),
       "Unet learned_sinusoidal_dim must be even and at least 2, got 0"},
      {UnetOptions(8).random_fourier_features(true).learned_sinusoidal_dim(5),
       "Unet learned_sinusoidal_dim must be even and at least 2, got 5"},
      {UnetOptions(8).dim_mults({1, 2}).attn_heads({4, 4, 4}),
       "Unet attn_heads must have 1 or 2 entries (one per stage of "
       "dim_mults), got 3"},
      {UnetOptions(8).dim_mults({1, 2}).attn_dim_head({}),
       "Unet attn_dim_head must have 1 or 2 entries"},
      {UnetOptions(8).dim_mults({1, 2}).attn_dim_head({16, -1}),
       "Unet attn_heads and attn_dim_head must be positive, got 4 and -1 at "
       "stage 1"},
  };
  for (const auto& [options, message] : cases) {
    SCOPED_TRACE(message);
    DDPM_EXPECT_THROW_WITH(Unet{options}, message);
  }
}

TEST_F(UnetTest, RejectsIndivisibleInput) {
  Unet unet(UnetOptions(8).dim_mults({1, 2, 4}).channels(1));
  auto x = torch::randn({1, 1, 30, 30});
  DDPM_EXPECT_THROW_WITH(unet(x, torch::tensor({1}, torch::kLong)),
                         "divisible by 4 (2^(stages - 1) for 3 stages), got "
                         "30 x 30");
  DDPM_EXPECT_THROW_WITH(
      unet(torch::randn({1, 3, 8, 8}), torch::tensor({1}, torch::kLong)),
      "must have 1 channels, got 3");
}

} // namespace
} // namespace ddpm
