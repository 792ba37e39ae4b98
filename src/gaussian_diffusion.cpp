#include "ddpm/gaussian_diffusion.h"

#include <chrono>
#include <cmath>

#include <torch/torch.h>

namespace ddpm {
namespace {

// Python's extract(): a[t] reshaped to broadcast over x ([B, 1, 1, 1]).
torch::Tensor extract(const torch::Tensor& a, const torch::Tensor& t,
                      const torch::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = t.size(0);
  return a.gather(-1, t).reshape(shape);
}

torch::Tensor mean_over_non_batch(const torch::Tensor& loss) {
  return loss.reshape({loss.size(0), -1}).mean(1); // [B]
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                       start)
      .count();
}

} // namespace

std::string to_string(Objective objective) {
  switch (objective) {
    case Objective::kPredNoise:
      return "pred_noise";
    case Objective::kPredX0:
      return "pred_x0";
    case Objective::kPredV:
      return "pred_v";
  }
  TORCH_CHECK(false, "unknown Objective value ", int(objective));
}

Objective objective_from_string(const std::string& name) {
  if (name == "pred_noise") {
    return Objective::kPredNoise;
  }
  if (name == "pred_x0") {
    return Objective::kPredX0;
  }
  if (name == "pred_v") {
    return Objective::kPredV;
  }
  TORCH_CHECK(false, "unknown objective \"", name,
              "\": expected pred_noise, pred_x0 or pred_v");
}

std::string to_string(LossType loss_type) {
  return loss_type == LossType::kL1 ? "l1" : "l2";
}

LossType loss_type_from_string(const std::string& name) {
  if (name == "l1") {
    return LossType::kL1;
  }
  if (name == "l2") {
    return LossType::kL2;
  }
  TORCH_CHECK(false, "unknown loss type \"", name, "\": expected l1 or l2");
}

GaussianDiffusionImpl::GaussianDiffusionImpl(Unet model_,
                                             GaussianDiffusionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(model_, "GaussianDiffusion needs a constructed Unet");
  TORCH_CHECK(model_->out_dim() == model_->channels(),
              "GaussianDiffusion needs a Unet whose out_dim equals its "
              "channels, got out_dim ", model_->out_dim(), " and channels ",
              model_->channels(),
              " (learned_variance and a custom out_dim are not supported)");
  TORCH_CHECK(!model_->random_or_learned_sinusoidal_cond(),
              "GaussianDiffusion does not support learned_sinusoidal_cond or "
              "random_fourier_features (they are for continuous-time "
              "diffusion)");
  const auto& size = o.image_size();
  const int64_t factor = model_->downsample_factor();
  TORCH_CHECK(size.height > 0 && size.width > 0,
              "image_size must be positive, got ", size.height, " x ",
              size.width);
  TORCH_CHECK(size.height % factor == 0 && size.width % factor == 0,
              "image_size must be divisible by the Unet's downsample factor ",
              factor, " (2^(stages - 1)), got ", size.height, " x ",
              size.width);
  TORCH_CHECK(o.timesteps() >= 1, "timesteps must be at least 1, got ",
              o.timesteps());
  sampling_timesteps_ = o.sampling_timesteps().value_or(o.timesteps());
  TORCH_CHECK(sampling_timesteps_ >= 1 && sampling_timesteps_ <= o.timesteps(),
              "sampling_timesteps must be in [1, timesteps = ", o.timesteps(),
              "], got ", sampling_timesteps_);
  TORCH_CHECK(o.ddim_sampling_eta() >= 0 &&
                  std::isfinite(o.ddim_sampling_eta()),
              "ddim_sampling_eta must be non-negative and finite, got ",
              o.ddim_sampling_eta());
  TORCH_CHECK(o.offset_noise_strength() >= 0 &&
                  std::isfinite(o.offset_noise_strength()),
              "offset_noise_strength must be non-negative and finite, got ",
              o.offset_noise_strength());
  TORCH_CHECK(o.min_snr_gamma() > 0 && std::isfinite(o.min_snr_gamma()),
              "min_snr_gamma must be positive and finite, got ",
              o.min_snr_gamma());

  model = register_module("model", std::move(model_));

  // Schedules in float64, stored in float32 (as the Python package does).
  auto betas64 = make_beta_schedule(o.beta_schedule(), o.timesteps(),
                                    o.schedule_fn_kwargs());
  auto alphas = 1. - betas64;
  auto alphas_cumprod64 = torch::cumprod(alphas, 0);
  auto alphas_cumprod_prev64 = torch::constant_pad_nd(
      alphas_cumprod64.slice(0, 0, -1), {1, 0}, 1.0);
  num_timesteps_ = betas64.size(0);

  betas = register_schedule_buffer("betas", betas64);
  alphas_cumprod = register_schedule_buffer("alphas_cumprod", alphas_cumprod64);
  alphas_cumprod_prev =
      register_schedule_buffer("alphas_cumprod_prev", alphas_cumprod_prev64);

  // q(x_t | x_0)
  sqrt_alphas_cumprod = register_schedule_buffer(
      "sqrt_alphas_cumprod", torch::sqrt(alphas_cumprod64));
  sqrt_one_minus_alphas_cumprod = register_schedule_buffer(
      "sqrt_one_minus_alphas_cumprod", torch::sqrt(1. - alphas_cumprod64));
  log_one_minus_alphas_cumprod = register_schedule_buffer(
      "log_one_minus_alphas_cumprod", torch::log(1. - alphas_cumprod64));
  sqrt_recip_alphas_cumprod = register_schedule_buffer(
      "sqrt_recip_alphas_cumprod", torch::sqrt(1. / alphas_cumprod64));
  sqrt_recipm1_alphas_cumprod = register_schedule_buffer(
      "sqrt_recipm1_alphas_cumprod", torch::sqrt(1. / alphas_cumprod64 - 1));

  // q(x_{t-1} | x_t, x_0); the variance is 0 at t = 0, hence the clamp
  // before the log.
  auto posterior_variance64 =
      betas64 * (1. - alphas_cumprod_prev64) / (1. - alphas_cumprod64);
  posterior_variance =
      register_schedule_buffer("posterior_variance", posterior_variance64);
  posterior_log_variance_clipped = register_schedule_buffer(
      "posterior_log_variance_clipped",
      torch::log(posterior_variance64.clamp_min(1e-20)));
  posterior_mean_coef1 = register_schedule_buffer(
      "posterior_mean_coef1",
      betas64 * torch::sqrt(alphas_cumprod_prev64) / (1. - alphas_cumprod64));
  posterior_mean_coef2 = register_schedule_buffer(
      "posterior_mean_coef2", (1. - alphas_cumprod_prev64) *
          torch::sqrt(alphas) / (1. - alphas_cumprod64));

  // Loss weight from the signal-to-noise ratio, optionally clipped
  // (min-SNR weighting), expressed for the objective's target.
  auto snr = alphas_cumprod64 / (1 - alphas_cumprod64);
  auto clipped_snr = snr.clone();
  if (o.min_snr_loss_weight()) {
    clipped_snr.clamp_max_(o.min_snr_gamma());
  }
  torch::Tensor weight;
  switch (o.objective()) {
    case Objective::kPredNoise:
      weight = clipped_snr / snr;
      break;
    case Objective::kPredX0:
      weight = clipped_snr;
      break;
    case Objective::kPredV:
      weight = clipped_snr / (snr + 1);
      break;
  }
  loss_weight = register_schedule_buffer("loss_weight", weight);
}

torch::Tensor GaussianDiffusionImpl::register_schedule_buffer(
    const std::string& name, const torch::Tensor& value) {
  return register_buffer(name, value.to(torch::kFloat32));
}

torch::Tensor GaussianDiffusionImpl::normalize(
    const torch::Tensor& images) const {
  return options.auto_normalize() ? images * 2 - 1 : images;
}

torch::Tensor GaussianDiffusionImpl::unnormalize(
    const torch::Tensor& images) const {
  return options.auto_normalize() ? (images + 1) * 0.5 : images;
}

// ~~~ Parameterisations ~~~

torch::Tensor GaussianDiffusionImpl::predict_start_from_noise(
    const torch::Tensor& x_t, const torch::Tensor& t,
    const torch::Tensor& noise) {
  return extract(sqrt_recip_alphas_cumprod, t, x_t) * x_t -
      extract(sqrt_recipm1_alphas_cumprod, t, x_t) * noise;
}

torch::Tensor GaussianDiffusionImpl::predict_noise_from_start(
    const torch::Tensor& x_t, const torch::Tensor& t,
    const torch::Tensor& x0) {
  return (extract(sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) /
      extract(sqrt_recipm1_alphas_cumprod, t, x_t);
}

torch::Tensor GaussianDiffusionImpl::predict_v(const torch::Tensor& x_start,
                                               const torch::Tensor& t,
                                               const torch::Tensor& noise) {
  return extract(sqrt_alphas_cumprod, t, x_start) * noise -
      extract(sqrt_one_minus_alphas_cumprod, t, x_start) * x_start;
}

torch::Tensor GaussianDiffusionImpl::predict_start_from_v(
    const torch::Tensor& x_t, const torch::Tensor& t,
    const torch::Tensor& v) {
  return extract(sqrt_alphas_cumprod, t, x_t) * x_t -
      extract(sqrt_one_minus_alphas_cumprod, t, x_t) * v;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>
GaussianDiffusionImpl::q_posterior(const torch::Tensor& x_start,
                                   const torch::Tensor& x_t,
                                   const torch::Tensor& t) {
  auto mean = extract(posterior_mean_coef1, t, x_t) * x_start +
      extract(posterior_mean_coef2, t, x_t) * x_t;
  return {mean, extract(posterior_variance, t, x_t),
          extract(posterior_log_variance_clipped, t, x_t)};
}

ModelPrediction GaussianDiffusionImpl::model_predictions(
    const torch::Tensor& x, const torch::Tensor& t,
    const torch::Tensor& x_self_cond, bool clip_x_start,
    bool rederive_pred_noise) {
  auto output = model(x, t, x_self_cond);
  auto maybe_clip = [&](const torch::Tensor& x0) {
    return clip_x_start ? torch::clamp(x0, -1., 1.) : x0;
  };

  ModelPrediction prediction;
  switch (options.objective()) {
    case Objective::kPredNoise:
      prediction.pred_noise = output;
      prediction.pred_x_start =
          maybe_clip(predict_start_from_noise(x, t, output));
      if (clip_x_start && rederive_pred_noise) {
        prediction.pred_noise =
            predict_noise_from_start(x, t, prediction.pred_x_start);
      }
      break;
    case Objective::kPredX0:
      prediction.pred_x_start = maybe_clip(output);
      prediction.pred_noise =
          predict_noise_from_start(x, t, prediction.pred_x_start);
      break;
    case Objective::kPredV:
      prediction.pred_x_start = maybe_clip(predict_start_from_v(x, t, output));
      prediction.pred_noise =
          predict_noise_from_start(x, t, prediction.pred_x_start);
      break;
  }
  return prediction;
}

// ~~~ Training ~~~

torch::Tensor GaussianDiffusionImpl::q_sample(const torch::Tensor& x_start,
                                              const torch::Tensor& t,
                                              const torch::Tensor& noise) {
  auto eps = noise.defined() ? noise : torch::randn_like(x_start);
  return extract(sqrt_alphas_cumprod, t, x_start) * x_start +
      extract(sqrt_one_minus_alphas_cumprod, t, x_start) * eps;
}

torch::Tensor GaussianDiffusionImpl::target(const torch::Tensor& x_start,
                                            const torch::Tensor& t,
                                            const torch::Tensor& noise) {
  switch (options.objective()) {
    case Objective::kPredNoise:
      return noise;
    case Objective::kPredX0:
      return x_start;
    case Objective::kPredV:
      return predict_v(x_start, t, noise);
  }
  TORCH_CHECK(false, "unknown Objective value ", int(options.objective()));
}

torch::Tensor GaussianDiffusionImpl::p_losses(
    const torch::Tensor& x_start, const torch::Tensor& times,
    const torch::Tensor& noise_in, const torch::Tensor& offset_noise_in,
    std::optional<bool> use_self_condition, bool reduce) {
  // Random draws, in the order of the Python package: the noise, then the
  // offset noise (when its strength is non-zero).
  auto noise = noise_in.defined() ? noise_in : torch::randn_like(x_start);
  const double offset_strength = options.offset_noise_strength();
  if (offset_strength > 0.) {
    auto offset = offset_noise_in.defined()
        ? offset_noise_in
        : torch::randn({x_start.size(0), x_start.size(1)},
                       x_start.options());
    noise = noise + offset_strength * offset.unsqueeze(-1).unsqueeze(-1);
  }

  auto x = q_sample(x_start, times, noise);

  // Self-conditioning: half of the time, condition on the model's own x_0
  // estimate (without gradient). The coin is a torch::rand draw, where
  // Python uses random.random().
  torch::Tensor x_self_cond;
  if (self_condition()) {
    const bool use = use_self_condition.has_value()
        ? *use_self_condition
        : torch::rand({1}).item<double>() < 0.5;
    if (use) {
      torch::NoGradGuard no_grad;
      x_self_cond = model_predictions(x, times).pred_x_start.detach();
    }
  }

  auto output = model(x, times, x_self_cond);
  auto goal = target(x_start, times, noise);
  auto per_pixel = options.loss_type() == LossType::kL1
      ? (output - goal).abs()
      : (output - goal).pow(2);
  auto loss = mean_over_non_batch(per_pixel);
  loss = loss * extract(loss_weight, times, loss);
  return reduce ? loss.mean() : loss;
}

torch::Tensor GaussianDiffusionImpl::loss(const torch::Tensor& images,
                                          const torch::Tensor& times,
                                          const torch::Tensor& noise,
                                          bool reduce) {
  TORCH_CHECK(images.dim() == 4,
              "images must have 4 dimensions [B, C, H, W], got ",
              images.sizes());
  const auto& size = image_size();
  TORCH_CHECK(images.size(1) == channels() &&
                  images.size(2) == size.height &&
                  images.size(3) == size.width,
              "images must have shape [B, ", channels(), ", ", size.height,
              ", ", size.width, "], got ", images.sizes());
  TORCH_CHECK(times.dim() == 1 && times.size(0) == images.size(0),
              "times must have shape [", images.size(0), "], got ",
              times.sizes());
  return p_losses(normalize(images), times, noise, {}, std::nullopt, reduce);
}

torch::Tensor GaussianDiffusionImpl::forward(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4,
              "images must have 4 dimensions [B, C, H, W], got ",
              images.sizes());
  auto times = torch::randint(
      0, num_timesteps_, {images.size(0)},
      torch::TensorOptions().dtype(torch::kLong).device(images.device()));
  return loss(images, times);
}

// ~~~ Sampling ~~~

void GaussianDiffusionImpl::report_progress(int64_t step, int64_t total,
                                            double seconds) const {
  if (sample_callback_) {
    SampleProgress progress;
    progress.step = step;
    progress.total = total;
    progress.steps_per_second = seconds > 0 ? double(step) / seconds : 0.0;
    sample_callback_(progress);
  }
}

std::pair<torch::Tensor, torch::Tensor> GaussianDiffusionImpl::p_sample(
    const torch::Tensor& x, int64_t t, const torch::Tensor& x_self_cond) {
  c10::InferenceMode inference;
  auto times = torch::full({x.size(0)}, t,
                           torch::TensorOptions()
                               .dtype(torch::kLong)
                               .device(x.device()));
  auto x_start = model_predictions(x, times, x_self_cond).pred_x_start;
  x_start.clamp_(-1., 1.);
  auto [mean, variance, log_variance] = q_posterior(x_start, x, times);
  if (t == 0) {
    return {mean, x_start};
  }
  auto noise = torch::randn_like(x);
  return {mean + (0.5 * log_variance).exp() * noise, x_start};
}

std::vector<std::pair<int64_t, int64_t>>
GaussianDiffusionImpl::ddim_time_pairs() const {
  // float32 linspace truncated to int, exactly as the Python package does:
  // [-1, ..., T - 1] in sampling_timesteps + 1 points.
  auto times = torch::linspace(-1, double(num_timesteps_ - 1),
                               sampling_timesteps_ + 1, torch::kFloat32)
                   .to(torch::kInt);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t i = sampling_timesteps_; i >= 1; --i) {
    pairs.emplace_back(times[i].item<int>(), times[i - 1].item<int>());
  }
  return pairs;
}

std::pair<torch::Tensor, torch::Tensor> GaussianDiffusionImpl::ddim_step(
    const torch::Tensor& x, int64_t time, int64_t time_next,
    const torch::Tensor& x_self_cond) {
  c10::InferenceMode inference;
  auto times = torch::full({x.size(0)}, time,
                           torch::TensorOptions()
                               .dtype(torch::kLong)
                               .device(x.device()));
  if (time_next < 0) {
    auto prediction = model_predictions(x, times, x_self_cond,
                                        /*clip_x_start=*/true,
                                        /*rederive_pred_noise=*/true);
    return {prediction.pred_x_start, prediction.pred_x_start};
  }
  return ddim_update(x, times, alphas_cumprod[time], alphas_cumprod[time_next],
                     x_self_cond);
}

std::pair<torch::Tensor, torch::Tensor> GaussianDiffusionImpl::ddim_update(
    const torch::Tensor& x, const torch::Tensor& times,
    const torch::Tensor& alpha, const torch::Tensor& alpha_next,
    const torch::Tensor& x_self_cond) {
  auto prediction = model_predictions(x, times, x_self_cond,
                                      /*clip_x_start=*/true,
                                      /*rederive_pred_noise=*/true);
  const double eta = options.ddim_sampling_eta();
  auto sigma =
      eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt();
  auto c = (1 - alpha_next - sigma.pow(2)).sqrt();
  // Drawn even when eta is 0, as in Python, so the generator advances alike.
  auto noise = torch::randn_like(x);
  auto next = prediction.pred_x_start * alpha_next.sqrt() +
      c * prediction.pred_noise + sigma * noise;
  return {next, prediction.pred_x_start};
}

torch::Tensor GaussianDiffusionImpl::p_sample_loop(torch::IntArrayRef shape,
                                                   bool return_all_timesteps) {
  c10::InferenceMode inference;
  // Random draws, in the Python order: the starting noise, then one
  // randn_like per step with t > 0 (inside p_sample).
  auto img = torch::randn(shape, torch::TensorOptions().device(device()));
  std::vector<torch::Tensor> imgs;
  if (return_all_timesteps) {
    imgs.push_back(img);
  }

  torch::Tensor x_start;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t t = num_timesteps_ - 1; t >= 0; --t) {
    auto self_cond = self_condition() ? x_start : torch::Tensor();
    std::tie(img, x_start) = p_sample(img, t, self_cond);
    if (return_all_timesteps) {
      imgs.push_back(img);
    }
    report_progress(num_timesteps_ - t, num_timesteps_, seconds_since(start));
  }
  return unnormalize(return_all_timesteps ? torch::stack(imgs, 1) : img);
}

torch::Tensor GaussianDiffusionImpl::ddim_sample(torch::IntArrayRef shape,
                                                 bool return_all_timesteps) {
  c10::InferenceMode inference;
  // Random draws, in the Python order: the starting noise, then one
  // randn_like per step whose next time is not -1 (inside ddim_step).
  auto img = torch::randn(shape, torch::TensorOptions().device(device()));
  std::vector<torch::Tensor> imgs;
  if (return_all_timesteps) {
    imgs.push_back(img);
  }

  torch::Tensor x_start;
  const auto pairs = ddim_time_pairs();
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < pairs.size(); ++i) {
    auto self_cond = self_condition() ? x_start : torch::Tensor();
    std::tie(img, x_start) =
        ddim_step(img, pairs[i].first, pairs[i].second, self_cond);
    if (return_all_timesteps) {
      imgs.push_back(img);
    }
    report_progress(int64_t(i) + 1, int64_t(pairs.size()),
                    seconds_since(start));
  }
  return unnormalize(return_all_timesteps ? torch::stack(imgs, 1) : img);
}

torch::Tensor GaussianDiffusionImpl::sample(int64_t batch_size,
                                            bool return_all_timesteps) {
  TORCH_CHECK(batch_size >= 1, "batch_size must be at least 1, got ",
              batch_size);
  const auto& size = image_size();
  std::vector<int64_t> shape{batch_size, channels(), size.height, size.width};
  return is_ddim_sampling() ? ddim_sample(shape, return_all_timesteps)
                            : p_sample_loop(shape, return_all_timesteps);
}

torch::Tensor GaussianDiffusionImpl::interpolate(const torch::Tensor& x1,
                                                 const torch::Tensor& x2,
                                                 std::optional<int64_t> t_in,
                                                 double lam) {
  c10::InferenceMode inference;
  TORCH_CHECK(x1.sizes() == x2.sizes(),
              "interpolate needs x1 and x2 of the same shape, got ",
              x1.sizes(), " and ", x2.sizes());
  const int64_t t = t_in.value_or(num_timesteps_ - 1);
  TORCH_CHECK(t >= 0 && t < num_timesteps_, "interpolate t must be in [0, ",
              num_timesteps_ - 1, "], got ", t);
  auto times = torch::full({x1.size(0)}, t,
                           torch::TensorOptions()
                               .dtype(torch::kLong)
                               .device(x1.device()));
  auto xt1 = q_sample(x1, times);
  auto xt2 = q_sample(x2, times);
  auto img = (1 - lam) * xt1 + lam * xt2;

  torch::Tensor x_start;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = t - 1; i >= 0; --i) {
    auto self_cond = self_condition() ? x_start : torch::Tensor();
    std::tie(img, x_start) = p_sample(img, i, self_cond);
    report_progress(t - i, t, seconds_since(start));
  }
  return img;
}

} // namespace ddpm
