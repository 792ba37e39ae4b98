#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <torch/types.h>

#include "ddpm/gaussian_diffusion.h"

namespace ddpm {

/// DDIM sampling that captures one denoising step in a CUDA Graph and
/// replays it for every step, which removes the per-kernel launch cost of
/// the Unet at small batches.
///
/// The captured step reads the time, alpha and next alpha from device
/// tensors that are refilled before each replay, so one capture serves all
/// steps. The last step (to time -1) runs eagerly. Where capture is not
/// possible (not on CUDA, a LibTorch without CUDA, the DDPM sampler,
/// self-conditioning, a capture error), sample() falls back to
/// diffusion->sample(), and fallback_reason() returns why.
///
/// NOTE: written against LibTorch 2.15's at::cuda::CUDAGraph; its results
/// are compared with eager sampling by the CUDA tests, which need a GPU.
class CudaGraphSampler {
 public:
  CudaGraphSampler(GaussianDiffusion diffusion, int64_t batch_size);
  ~CudaGraphSampler();
  CudaGraphSampler(const CudaGraphSampler&) = delete;
  CudaGraphSampler& operator=(const CudaGraphSampler&) = delete;

  /// Draws batch_size images in [0, 1], [B, C, H, W].
  torch::Tensor sample();

  /// Whether sample() replays a graph.
  bool uses_graph() const { return fallback_reason_.empty(); }
  /// Empty when a graph is used, otherwise why not.
  const std::string& fallback_reason() const { return fallback_reason_; }

 private:
  struct Graph;

  GaussianDiffusion diffusion_;
  int64_t batch_size_;
  std::string fallback_reason_;
  std::unique_ptr<Graph> graph_;
};

} // namespace ddpm
