// Tests that need a CUDA GPU. Without one each test is skipped, so the
// suite passes on CPU-only machines; ctest -L cuda runs only these.

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/cuda_graph_sampler.h"
#include "ddpm/fused_adam.h"
#include "ddpm/gaussian_diffusion.h"
#include "ddpm/grad_scaler.h"
#include "ddpm/io/image.h"
#include "ddpm/trainer.h"
#include "test_util.h"

namespace ddpm {
namespace {

using ddpm::testing::TemporaryFolder;

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) {
      GTEST_SKIP() << "no CUDA device";
    }
    torch::manual_seed(0);
    // Float32 parity: TF32 would round matrix products to 10 mantissa bits.
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
};

GaussianDiffusion make_diffusion(bool flash) {
  return GaussianDiffusion(
      Unet(UnetOptions(32).dim_mults({1, 2, 4}).channels(3).flash_attn(flash)),
      GaussianDiffusionOptions(32).timesteps(100).sampling_timesteps(10));
}

TEST_F(CudaTest, UnetMatchesCpu) {
  for (const bool flash : {false, true}) {
    auto diffusion = make_diffusion(flash);
    diffusion->eval();
    const auto x = torch::randn({4, 3, 32, 32});
    const auto t = torch::tensor({0, 10, 50, 99});
    torch::NoGradGuard no_grad;
    const auto expected = diffusion->model(x, t);
    diffusion->to(torch::kCUDA);
    const auto actual = diffusion->model(x.cuda(), t.cuda()).cpu();
    const double difference = (actual - expected).abs().max().item<double>();
    EXPECT_LT(difference, 1e-3) << "flash_attn " << flash;
  }
}

TEST_F(CudaTest, ChannelsLastMatchesCpu) {
  auto diffusion = make_diffusion(false);
  diffusion->eval();
  const auto x = torch::randn({2, 3, 32, 32});
  const auto t = torch::tensor({5, 80});
  torch::NoGradGuard no_grad;
  const auto expected = diffusion->model(x, t);
  diffusion->to(torch::kCUDA);
  set_memory_format(*diffusion, torch::MemoryFormat::ChannelsLast);
  const auto actual = diffusion->model(x.cuda(), t.cuda()).cpu();
  EXPECT_LT((actual - expected).abs().max().item<double>(), 1e-3);
}

// The fused Adam kernel on CUDA against LibTorch's Adam on the CPU, on a
// channels-last weight and a bias, over five steps with the same gradients.
TEST_F(CudaTest, FusedAdamMatchesCpuAdam) {
  auto weight = torch::randn({16, 8, 3, 3})
                    .contiguous(torch::MemoryFormat::ChannelsLast);
  auto bias = torch::randn({16});
  std::vector<torch::Tensor> cpu_params{weight.clone(), bias.clone()};
  std::vector<torch::Tensor> cuda_params{weight.cuda(), bias.cuda()};
  for (auto& p : cpu_params) {
    p.set_requires_grad(true);
  }
  for (auto& p : cuda_params) {
    p.set_requires_grad(true);
  }
  const auto options = torch::optim::AdamOptions(1e-2).betas({0.9, 0.99});
  torch::optim::Adam cpu_adam(cpu_params, options);
  FusedAdam cuda_adam(cuda_params, options);
  for (int step = 0; step < 5; ++step) {
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      const auto grad = torch::randn_like(cpu_params[i]);
      cpu_params[i].mutable_grad() = grad;
      cuda_params[i].mutable_grad() = grad.cuda();
    }
    cpu_adam.step();
    cuda_adam.step();
  }
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    EXPECT_LT((cuda_params[i].cpu() - cpu_params[i]).abs().max().item<double>(),
              1e-5)
        << "parameter " << i;
  }
}

TEST_F(CudaTest, AmpTrainingStaysFinite) {
  TemporaryFolder data, results;
  for (int i = 0; i < 8; ++i) {
    write_png((data.path() / (std::to_string(i) + ".png")).string(),
              torch::rand({3, 32, 32}));
  }
  for (const auto precision :
       {MixedPrecision::kFloat16, MixedPrecision::kBFloat16}) {
    Trainer trainer(make_diffusion(true),
                    TrainerOptions(data.str())
                        .train_batch_size(8)
                        .amp(true)
                        .mixed_precision_type(precision)
                        .device(torch::kCUDA)
                        .cudnn_benchmark(true)
                        .num_workers(1)
                        .results_folder(results.str())
                        .save_and_sample_every(1000)
                        .write_metrics(false));
    for (int step = 0; step < 10; ++step) {
      const double loss = trainer.train_step();
      ASSERT_TRUE(std::isfinite(loss))
          << to_string(precision) << " step " << step;
    }
    for (const auto& parameter : trainer.model()->parameters()) {
      ASSERT_TRUE(torch::isfinite(parameter).all().item<bool>());
    }
  }
}

TEST_F(CudaTest, GraphSamplingEqualsEager) {
  // With eta = 0 the per-step noise is multiplied by zero, so only the
  // starting noise matters, and both draw it first from the same seed.
  auto diffusion = make_diffusion(true);
  diffusion->to(torch::kCUDA);
  diffusion->eval();
  torch::manual_seed(3);
  const auto eager = diffusion->sample(16).cpu();

  CudaGraphSampler sampler(diffusion, 16);
  ASSERT_TRUE(sampler.uses_graph()) << sampler.fallback_reason();
  torch::manual_seed(3);
  const auto graphed = sampler.sample().cpu();
  EXPECT_LT((graphed - eager).abs().max().item<double>(), 1e-3);

  // A second replay from another seed differs, so the graph reads its
  // inputs anew.
  torch::manual_seed(4);
  EXPECT_GT((sampler.sample().cpu() - eager).abs().max().item<double>(),
            1e-2);
}

} // namespace
} // namespace ddpm
