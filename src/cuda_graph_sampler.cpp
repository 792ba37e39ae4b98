#include "ddpm/cuda_graph_sampler.h"

#include <utility>

#include <torch/torch.h>

#ifdef DDPM_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ddpm {

#ifdef DDPM_WITH_CUDA

// Static buffers and the captured step: x, time, alpha and alpha_next are
// inputs the host refills, next and x_start the outputs of a replay.
struct CudaGraphSampler::Graph {
  at::cuda::CUDAGraph graph;
  torch::Tensor x, times, alpha, alpha_next;
  torch::Tensor next, x_start;
};

#else

struct CudaGraphSampler::Graph {};

#endif

CudaGraphSampler::CudaGraphSampler(GaussianDiffusion diffusion,
                                   int64_t batch_size)
    : diffusion_(std::move(diffusion)), batch_size_(batch_size) {
  TORCH_CHECK(batch_size >= 1, "batch_size must be at least 1, got ",
              batch_size);
#ifndef DDPM_WITH_CUDA
  fallback_reason_ = "this build of LibTorch has no CUDA";
#else
  if (!diffusion_->device().is_cuda()) {
    fallback_reason_ = "the model is on " + diffusion_->device().str();
  } else if (!diffusion_->is_ddim_sampling()) {
    fallback_reason_ = "sampling_timesteps equals timesteps (DDPM sampler)";
  } else if (diffusion_->self_condition()) {
    fallback_reason_ = "self-conditioning";
  }
  if (!fallback_reason_.empty()) {
    return;
  }

  diffusion_->eval();
  c10::InferenceMode inference;
  const auto device = diffusion_->device();
  const auto& size = diffusion_->image_size();
  auto options = torch::TensorOptions().device(device);
  graph_ = std::make_unique<Graph>();
  auto& g = *graph_;
  g.x = torch::randn({batch_size, diffusion_->channels(), size.height,
                      size.width}, options);
  g.times = torch::full({batch_size}, diffusion_->num_timesteps() - 1,
                        options.dtype(torch::kLong));
  g.alpha = diffusion_->alphas_cumprod[diffusion_->num_timesteps() - 1]
                .clone();
  g.alpha_next = diffusion_->alphas_cumprod[0].clone();

  try {
    // Warm-up on a side stream, as capture needs: cuDNN and cuBLAS pick
    // their algorithms and allocate workspaces here, not in the graph.
    c10::cuda::CUDAStreamGuard guard(
        c10::cuda::getStreamFromPool(false, device.index()));
    for (int i = 0; i < 3; ++i) {
      diffusion_->ddim_update(g.x, g.times, g.alpha, g.alpha_next);
    }
    g.graph.capture_begin();
    std::tie(g.next, g.x_start) =
        diffusion_->ddim_update(g.x, g.times, g.alpha, g.alpha_next);
    g.graph.capture_end();
    torch::cuda::synchronize(device.index());
  } catch (const c10::Error& error) {
    fallback_reason_ = std::string("capture failed: ") +
                       error.what_without_backtrace();
    graph_.reset();
  }
#endif
}

CudaGraphSampler::~CudaGraphSampler() = default;

torch::Tensor CudaGraphSampler::sample() {
  if (!graph_) {
    return diffusion_->sample(batch_size_);
  }
#ifdef DDPM_WITH_CUDA
  c10::InferenceMode inference;
  auto& g = *graph_;
  // Starting noise from the default generator, as the eager sampler draws.
  g.x.copy_(torch::randn_like(g.x));
  const auto pairs = diffusion_->ddim_time_pairs();
  torch::Tensor x_start;
  for (const auto& [time, time_next] : pairs) {
    if (time_next < 0) {
      x_start = diffusion_->ddim_step(g.x, time, time_next).second;
      return diffusion_->unnormalize(x_start);
    }
    g.times.fill_(time);
    g.alpha.copy_(diffusion_->alphas_cumprod[time]);
    g.alpha_next.copy_(diffusion_->alphas_cumprod[time_next]);
    g.graph.replay();
    g.x.copy_(g.next);
  }
  return diffusion_->unnormalize(g.x);
#else
  return diffusion_->sample(batch_size_);
#endif
}

} // namespace ddpm
