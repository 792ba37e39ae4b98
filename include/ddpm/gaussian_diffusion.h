#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "ddpm/schedules.h"
#include "ddpm/unet.h"

namespace ddpm {

/// Target of the network: the noise, the clean image x_0, or
/// v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x_0 (Salimans and
/// Ho, "Progressive Distillation", 2022, appendix D).
enum class Objective { kPredNoise, kPredX0, kPredV };

/// Per-pixel loss: mean absolute error (L1) or mean squared error (L2).
enum class LossType { kL1, kL2 };

/// Returns "pred_noise", "pred_x0" or "pred_v".
std::string to_string(Objective objective);
/// Parses the Python names; throws naming the value and the choices.
Objective objective_from_string(const std::string& name);
/// Returns "l1" or "l2".
std::string to_string(LossType loss_type);
/// Parses "l1" or "l2"; throws naming the value and the choices.
LossType loss_type_from_string(const std::string& name);

/// Height and width of the images a model generates, in pixels.
struct ImageSize {
  ImageSize(int64_t size) : height(size), width(size) {} // NOLINT
  ImageSize(int64_t height, int64_t width) : height(height), width(width) {}
  int64_t height;
  int64_t width;
};

/// Options of GaussianDiffusion, named and defaulted as the keyword
/// arguments of the Python `GaussianDiffusion`, plus `loss_type` from its
/// older versions. Read once at construction.
struct GaussianDiffusionOptions {
  /* implicit */ GaussianDiffusionOptions(ImageSize image_size)
      : image_size_(image_size) {}

  TORCH_ARG(ImageSize, image_size);
  /// Steps of the forward process.
  TORCH_ARG(int64_t, timesteps) = 1000;
  /// Denoising steps when sampling; fewer than timesteps selects DDIM.
  /// Default: timesteps (ancestral DDPM sampling).
  TORCH_ARG(std::optional<int64_t>, sampling_timesteps) = std::nullopt;
  TORCH_ARG(Objective, objective) = Objective::kPredV;
  TORCH_ARG(BetaSchedule, beta_schedule) = BetaSchedule::kSigmoid;
  /// Python's schedule_fn_kwargs.
  TORCH_ARG(BetaScheduleArgs, schedule_fn_kwargs) = BetaScheduleArgs{};
  /// DDIM stochasticity: 0 is deterministic DDIM, 1 matches DDPM variance.
  TORCH_ARG(double, ddim_sampling_eta) = 0.0;
  /// Map training images from [0, 1] to [-1, 1] and samples back.
  TORCH_ARG(bool, auto_normalize) = true;
  /// Weight of per-channel noise added to the pixel noise (0: off).
  TORCH_ARG(double, offset_noise_strength) = 0.0;
  /// Clip the signal-to-noise ratio in the loss weight at min_snr_gamma
  /// (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
  /// Strategy", 2023).
  TORCH_ARG(bool, min_snr_loss_weight) = false;
  TORCH_ARG(double, min_snr_gamma) = 5.0;
  TORCH_ARG(LossType, loss_type) = LossType::kL2;
};

/// Progress of a sampling loop, passed to a SampleCallback after each step.
struct SampleProgress {
  int64_t step = 0;  // steps done, 1-based
  int64_t total = 0; // steps in the loop
  double steps_per_second = 0.0;
};
using SampleCallback = std::function<void(const SampleProgress&)>;

/// Noise and x_0 estimates from one network evaluation.
struct ModelPrediction {
  torch::Tensor pred_noise;
  torch::Tensor pred_x_start;
};

/// Gaussian diffusion around a Unet, as the Python `GaussianDiffusion`:
/// forward(images in [0, 1]) returns the training loss; sample() draws
/// images in [0, 1]. The schedule buffers are computed in float64 and stored
/// in float32 under the Python names, so state dicts move both ways.
class GaussianDiffusionImpl : public torch::nn::Module {
 public:
  GaussianDiffusionImpl(Unet model, GaussianDiffusionOptions options);

  /// Training loss for images [B, C, H, W] in [0, 1], at random times.
  torch::Tensor forward(const torch::Tensor& images);

  /// Training loss with given times [B] (long) and optional noise; with
  /// `reduce` false, returns the per-image loss [B].
  torch::Tensor loss(const torch::Tensor& images, const torch::Tensor& times,
                     const torch::Tensor& noise = {}, bool reduce = true);

  /// Python's p_losses on normalized x_start. `offset_noise` [B, C] and
  /// `self_condition` fix the draws that are otherwise random (the offset
  /// noise, and the 50% coin for self-conditioning).
  torch::Tensor p_losses(const torch::Tensor& x_start,
                         const torch::Tensor& times,
                         const torch::Tensor& noise = {},
                         const torch::Tensor& offset_noise = {},
                         std::optional<bool> self_condition = std::nullopt,
                         bool reduce = true);

  /// Noised images at times t: sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) e.
  torch::Tensor q_sample(const torch::Tensor& x_start, const torch::Tensor& t,
                         const torch::Tensor& noise = {});

  /// The regression target of the objective.
  torch::Tensor target(const torch::Tensor& x_start, const torch::Tensor& t,
                       const torch::Tensor& noise);

  torch::Tensor predict_start_from_noise(const torch::Tensor& x_t,
                                         const torch::Tensor& t,
                                         const torch::Tensor& noise);
  torch::Tensor predict_noise_from_start(const torch::Tensor& x_t,
                                         const torch::Tensor& t,
                                         const torch::Tensor& x0);
  torch::Tensor predict_v(const torch::Tensor& x_start,
                          const torch::Tensor& t,
                          const torch::Tensor& noise);
  torch::Tensor predict_start_from_v(const torch::Tensor& x_t,
                                     const torch::Tensor& t,
                                     const torch::Tensor& v);

  /// Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0).
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> q_posterior(
      const torch::Tensor& x_start, const torch::Tensor& x_t,
      const torch::Tensor& t);

  ModelPrediction model_predictions(const torch::Tensor& x,
                                    const torch::Tensor& t,
                                    const torch::Tensor& x_self_cond = {},
                                    bool clip_x_start = false,
                                    bool rederive_pred_noise = false);

  /// One ancestral step from time t; returns (x_{t-1}, x_0 estimate).
  /// Draws one randn_like(x) when t > 0.
  std::pair<torch::Tensor, torch::Tensor> p_sample(
      const torch::Tensor& x, int64_t t,
      const torch::Tensor& x_self_cond = {});

  /// One DDIM step from `time` to `time_next` (-1: the last step, which
  /// returns the x_0 estimate). Draws one randn_like(x) unless
  /// time_next < 0. Returns (next image, x_0 estimate).
  std::pair<torch::Tensor, torch::Tensor> ddim_step(
      const torch::Tensor& x, int64_t time, int64_t time_next,
      const torch::Tensor& x_self_cond = {});

  /// Ancestral sampling over all timesteps from noise of `shape`. Returns
  /// images in [0, 1] (auto_normalize), or [B, T + 1, C, H, W] with every
  /// intermediate when return_all_timesteps.
  /// The DDIM update of ddim_step for a step whose next time is not -1,
  /// with the schedule values alphas_cumprod[time] and
  /// alphas_cumprod[time_next] given as 0-dim tensors, so that a captured
  /// CUDA Graph can replay it for any step.
  std::pair<torch::Tensor, torch::Tensor> ddim_update(
      const torch::Tensor& x, const torch::Tensor& times,
      const torch::Tensor& alpha, const torch::Tensor& alpha_next,
      const torch::Tensor& x_self_cond = {});

  torch::Tensor p_sample_loop(torch::IntArrayRef shape,
                              bool return_all_timesteps = false);

  /// DDIM sampling in sampling_timesteps steps.
  torch::Tensor ddim_sample(torch::IntArrayRef shape,
                            bool return_all_timesteps = false);

  /// Draws batch_size images with DDPM or DDIM, as the options select.
  torch::Tensor sample(int64_t batch_size = 16,
                       bool return_all_timesteps = false);

  /// Noises x1 and x2 to time t (default: the last), mixes them with weight
  /// lam and denoises the mix.
  torch::Tensor interpolate(const torch::Tensor& x1, const torch::Tensor& x2,
                            std::optional<int64_t> t = std::nullopt,
                            double lam = 0.5);

  /// The time pairs (time, time_next) a DDIM loop visits, last pair ending
  /// at -1.
  std::vector<std::pair<int64_t, int64_t>> ddim_time_pairs() const;

  torch::Tensor normalize(const torch::Tensor& images) const;
  torch::Tensor unnormalize(const torch::Tensor& images) const;

  void set_sample_callback(SampleCallback callback) {
    sample_callback_ = std::move(callback);
  }

  int64_t num_timesteps() const { return num_timesteps_; }
  int64_t sampling_timesteps() const { return sampling_timesteps_; }
  bool is_ddim_sampling() const { return sampling_timesteps_ < num_timesteps_; }
  int64_t channels() const { return model->channels(); }
  bool self_condition() const { return model->self_condition(); }
  const ImageSize& image_size() const { return options.image_size(); }
  torch::Device device() const { return betas.device(); }

  GaussianDiffusionOptions options;
  Unet model{nullptr};

  torch::Tensor betas;
  torch::Tensor alphas_cumprod;
  torch::Tensor alphas_cumprod_prev;
  torch::Tensor sqrt_alphas_cumprod;
  torch::Tensor sqrt_one_minus_alphas_cumprod;
  torch::Tensor log_one_minus_alphas_cumprod;
  torch::Tensor sqrt_recip_alphas_cumprod;
  torch::Tensor sqrt_recipm1_alphas_cumprod;
  torch::Tensor posterior_variance;
  torch::Tensor posterior_log_variance_clipped;
  torch::Tensor posterior_mean_coef1;
  torch::Tensor posterior_mean_coef2;
  torch::Tensor loss_weight;

 private:
  torch::Tensor register_schedule_buffer(const std::string& name,
                                         const torch::Tensor& value);
  void report_progress(int64_t step, int64_t total, double seconds) const;

  int64_t num_timesteps_ = 0;
  int64_t sampling_timesteps_ = 0;
  SampleCallback sample_callback_;
};
TORCH_MODULE(GaussianDiffusion);

} // namespace ddpm
