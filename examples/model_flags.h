#pragma once

// Command-line flags shared by ddpm-train and ddpm-sample: the options of
// Unet and GaussianDiffusion, with the Python keyword names spelled with
// dashes. ddpm-train writes them to results_folder/config.toml, which
// ddpm-sample reads with --config.

#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "ddpm/gaussian_diffusion.h"
#include "ddpm/log.h"
#include "ddpm/unet.h"
#include "validators.h"

namespace ddpm::cli {

struct ModelFlags {
  // Unet
  int64_t dim = 64;
  int64_t init_dim = 0;
  int64_t out_dim = 0;
  std::vector<int64_t> dim_mults{1, 2, 4, 8};
  int64_t channels = 3;
  bool self_condition = false;
  double sinusoidal_pos_emb_theta = 10000.0;
  double dropout = 0.0;
  std::vector<int64_t> attn_dim_head{32};
  std::vector<int64_t> attn_heads{4};
  std::vector<int> full_attn;
  bool flash_attn = false;
  // GaussianDiffusion
  std::vector<int64_t> image_size{128};
  int64_t timesteps = 1000;
  int64_t sampling_timesteps = 0;
  std::string objective = "pred_v";
  std::string beta_schedule = "sigmoid";
  double cosine_s = 0.008;
  double sigmoid_start = -3.0;
  double sigmoid_end = 3.0;
  double sigmoid_tau = 1.0;
  double ddim_sampling_eta = 0.0;
  bool auto_normalize = true;
  double offset_noise_strength = 0.0;
  bool min_snr_loss_weight = false;
  double min_snr_gamma = 5.0;
  std::string loss_type = "l2";
};

inline void add_model_flags(CLI::App& app, ModelFlags& f) {
  const std::string unet = "Unet";
  const std::string diffusion = "Diffusion";
  app.add_option("--dim", f.dim, "Base channel width of the Unet")
      ->capture_default_str()->group(unet)->check(positive());
  app.add_option("--init-dim", f.init_dim,
                 "Channels after the input convolution (0: --dim)")
      ->capture_default_str()->group(unet)->check(non_negative());
  app.add_option("--out-dim", f.out_dim,
                 "Output channels (0: --channels)")
      ->capture_default_str()->group(unet)->check(non_negative());
  app.add_option("--dim-mults", f.dim_mults,
                 "Width multiplier of each Unet stage, e.g. 1 2 4 8")
      ->capture_default_str()->group(unet)->expected(1, 16)
      ->check(positive());
  app.add_option("--channels", f.channels,
                 "Image channels: 1 grayscale, 3 RGB, 4 RGBA")
      ->capture_default_str()->group(unet)->check(CLI::IsMember({1, 3, 4}));
  app.add_flag("--self-condition,!--no-self-condition", f.self_condition,
               "Condition the Unet on its previous x_0 estimate "
               "(default: off)")
      ->group(unet);
  app.add_option("--sinusoidal-pos-emb-theta", f.sinusoidal_pos_emb_theta,
                 "Base of the sinusoidal time embedding's frequencies")
      ->capture_default_str()->group(unet)->check(positive());
  app.add_option("--dropout", f.dropout,
                 "Dropout probability in the residual blocks")
      ->capture_default_str()->group(unet)->check(CLI::Range(0.0, 0.99));
  app.add_option("--attn-dim-head", f.attn_dim_head,
                 "Channels per attention head: one value, or one per stage")
      ->capture_default_str()->group(unet)->expected(1, 16)
      ->check(positive());
  app.add_option("--attn-heads", f.attn_heads,
                 "Attention heads: one value, or one per stage")
      ->capture_default_str()->group(unet)->expected(1, 16)
      ->check(positive());
  app.add_option("--full-attn", f.full_attn,
                 "Per stage, 1 for full attention and 0 for linear attention "
                 "(default: full attention in the innermost stage only)")
      ->group(unet)->expected(1, 16)->check(CLI::IsMember({0, 1}));
  app.add_flag("--flash-attn,!--no-flash-attn", f.flash_attn,
               "Compute full attention with scaled_dot_product_attention "
               "(default: off)")
      ->group(unet);

  app.add_option("--image-size", f.image_size,
                 "Image size in pixels: one value for square images, or "
                 "height and width")
      ->capture_default_str()->group(diffusion)->expected(1, 2)
      ->check(positive());
  app.add_option("--timesteps", f.timesteps,
                 "Steps of the forward noising process")
      ->capture_default_str()->group(diffusion)->check(positive());
  app.add_option("--sampling-timesteps", f.sampling_timesteps,
                 "Denoising steps when sampling; fewer than --timesteps "
                 "selects DDIM (0: --timesteps, ancestral DDPM)")
      ->capture_default_str()->group(diffusion)
      ->check(non_negative());
  app.add_option("--objective", f.objective,
                 "What the Unet predicts: pred_noise, pred_x0 or pred_v")
      ->capture_default_str()->group(diffusion)
      ->check(CLI::IsMember({"pred_noise", "pred_x0", "pred_v"}));
  app.add_option("--beta-schedule", f.beta_schedule,
                 "Noise schedule: linear, cosine or sigmoid")
      ->capture_default_str()->group(diffusion)
      ->check(CLI::IsMember({"linear", "cosine", "sigmoid"}));
  app.add_option("--cosine-s", f.cosine_s, "Offset s of the cosine schedule")
      ->capture_default_str()->group(diffusion)->check(non_negative());
  app.add_option("--sigmoid-start", f.sigmoid_start,
                 "Start of the sigmoid schedule's input range")
      ->capture_default_str()->group(diffusion)->check(finite());
  app.add_option("--sigmoid-end", f.sigmoid_end,
                 "End of the sigmoid schedule's input range")
      ->capture_default_str()->group(diffusion)->check(finite());
  app.add_option("--sigmoid-tau", f.sigmoid_tau,
                 "Temperature of the sigmoid schedule")
      ->capture_default_str()->group(diffusion)->check(positive());
  app.add_option("--ddim-sampling-eta", f.ddim_sampling_eta,
                 "DDIM noise: 0 deterministic, 1 as much as DDPM")
      ->capture_default_str()->group(diffusion)
      ->check(non_negative());
  app.add_flag("--auto-normalize,!--no-auto-normalize", f.auto_normalize,
               "Map images from [0, 1] to [-1, 1] for the model "
               "(default: on)")
      ->group(diffusion);
  app.add_option("--offset-noise-strength", f.offset_noise_strength,
                 "Weight of per-channel offset noise in training (0: off)")
      ->capture_default_str()->group(diffusion)
      ->check(non_negative());
  app.add_flag("--min-snr-loss-weight,!--no-min-snr-loss-weight",
               f.min_snr_loss_weight,
               "Clip the loss weight's signal-to-noise ratio at "
               "--min-snr-gamma (default: off)")
      ->group(diffusion);
  app.add_option("--min-snr-gamma", f.min_snr_gamma,
                 "Clipping value of the signal-to-noise ratio")
      ->capture_default_str()->group(diffusion)->check(positive());
  app.add_option("--loss-type", f.loss_type,
                 "Per-pixel loss: l1 (absolute) or l2 (squared)")
      ->capture_default_str()->group(diffusion)
      ->check(CLI::IsMember({"l1", "l2"}));
}

// ~~~ TOML config ~~~
// CLI11 reads these files with --config. They are written by hand because
// App::config_to_str writes vector defaults as one quoted string and
// negatable flags as false, which reads back wrong.

// Adds --channels-last / --no-channels-last, shared by ddpm-train and
// ddpm-sample.
inline void add_channels_last_flag(CLI::App& app, bool& channels_last,
                                   const std::string& group) {
  app.add_flag("--channels-last,!--no-channels-last", channels_last,
               "Convolution weights in channels-last memory format, faster "
               "on the CPU (default: on)")
      ->group(group);
}

// Adds --retain-freed-memory / --no-retain-freed-memory, shared by
// ddpm-train and ddpm-sample.
inline void add_retain_freed_memory_flag(CLI::App& app, bool& retain,
                                         const std::string& group) {
  app.add_flag("--retain-freed-memory,!--no-retain-freed-memory", retain,
               "Keep memory freed by tensors for reuse instead of returning "
               "it to the system: fewer page faults, more resident memory "
               "(default: on)")
      ->group(group);
}

inline std::string toml_value(bool value) { return value ? "true" : "false"; }

inline std::string toml_value(const std::string& value) {
  std::string quoted = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') {
      quoted += '\\';
    }
    quoted += c;
  }
  return quoted + "\"";
}

inline std::string toml_value(double value) {
  // The shortest text that reads back as the same double.
  char text[32];
  const auto result = std::to_chars(text, text + sizeof(text), value);
  return std::string(text, result.ptr);
}

template <typename T>
std::string toml_value(const T& value) {
  return std::to_string(value);
}

template <typename T>
std::string toml_value(const std::vector<T>& values) {
  std::string text = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    text += (i ? ", " : "") + toml_value(values[i]);
  }
  return text + "]";
}

// Appends `key=value` to a TOML text.
class TomlWriter {
 public:
  template <typename T>
  TomlWriter& add(const std::string& key, const T& value) {
    text_ += key + "=" + toml_value(value) + "\n";
    return *this;
  }
  const std::string& str() const { return text_; }

 private:
  std::string text_;
};

inline void write_model_flags(TomlWriter& toml, const ModelFlags& f) {
  toml.add("dim", f.dim)
      .add("init-dim", f.init_dim)
      .add("out-dim", f.out_dim)
      .add("dim-mults", f.dim_mults)
      .add("channels", f.channels)
      .add("self-condition", f.self_condition)
      .add("sinusoidal-pos-emb-theta", f.sinusoidal_pos_emb_theta)
      .add("dropout", f.dropout)
      .add("attn-dim-head", f.attn_dim_head)
      .add("attn-heads", f.attn_heads)
      .add("flash-attn", f.flash_attn)
      .add("image-size", f.image_size)
      .add("timesteps", f.timesteps)
      .add("sampling-timesteps", f.sampling_timesteps)
      .add("objective", f.objective)
      .add("beta-schedule", f.beta_schedule)
      .add("cosine-s", f.cosine_s)
      .add("sigmoid-start", f.sigmoid_start)
      .add("sigmoid-end", f.sigmoid_end)
      .add("sigmoid-tau", f.sigmoid_tau)
      .add("ddim-sampling-eta", f.ddim_sampling_eta)
      .add("auto-normalize", f.auto_normalize)
      .add("offset-noise-strength", f.offset_noise_strength)
      .add("min-snr-loss-weight", f.min_snr_loss_weight)
      .add("min-snr-gamma", f.min_snr_gamma)
      .add("loss-type", f.loss_type);
  if (!f.full_attn.empty()) {
    toml.add("full-attn", f.full_attn);
  }
}

inline Unet make_unet(const ModelFlags& f) {
  UnetOptions options(f.dim);
  if (f.init_dim > 0) {
    options.init_dim(f.init_dim);
  }
  if (f.out_dim > 0) {
    options.out_dim(f.out_dim);
  }
  std::vector<bool> full_attn(f.full_attn.begin(), f.full_attn.end());
  options.dim_mults(f.dim_mults)
      .channels(f.channels)
      .self_condition(f.self_condition)
      .sinusoidal_pos_emb_theta(f.sinusoidal_pos_emb_theta)
      .dropout(f.dropout)
      .attn_dim_head(f.attn_dim_head)
      .attn_heads(f.attn_heads)
      .full_attn(full_attn)
      .flash_attn(f.flash_attn);
  return Unet(options);
}

inline GaussianDiffusion make_diffusion(const ModelFlags& f) {
  ImageSize size = f.image_size.size() == 2
      ? ImageSize(f.image_size[0], f.image_size[1])
      : ImageSize(f.image_size.at(0));
  BetaScheduleArgs schedule_args;
  schedule_args.s = f.cosine_s;
  schedule_args.start = f.sigmoid_start;
  schedule_args.end = f.sigmoid_end;
  schedule_args.tau = f.sigmoid_tau;
  GaussianDiffusionOptions options(size);
  options.timesteps(f.timesteps)
      .objective(objective_from_string(f.objective))
      .beta_schedule(beta_schedule_from_string(f.beta_schedule))
      .schedule_fn_kwargs(schedule_args)
      .ddim_sampling_eta(f.ddim_sampling_eta)
      .auto_normalize(f.auto_normalize)
      .offset_noise_strength(f.offset_noise_strength)
      .min_snr_loss_weight(f.min_snr_loss_weight)
      .min_snr_gamma(f.min_snr_gamma)
      .loss_type(loss_type_from_string(f.loss_type));
  if (f.sampling_timesteps > 0) {
    options.sampling_timesteps(f.sampling_timesteps);
  }
  return GaussianDiffusion(make_unet(f), options);
}

// Whether standard error is a terminal, where a progress line is redrawn
// in place; elsewhere (a log file) progress is printed as plain lines.
inline bool stderr_is_terminal() {
  static const bool terminal = ::isatty(2) != 0;
  return terminal;
}

// Returns the text that clears a redrawn progress line, if there is one.
inline const char* clear_line() {
  return stderr_is_terminal() ? "\r\033[K" : "";
}

// Shows library messages on standard error, one line each.
inline void show_library_messages(bool verbose) {
  set_log_sink([verbose](LogLevel level, const std::string& message) {
    if (level == LogLevel::kDebug ||
        (level == LogLevel::kInfo && !verbose)) {
      return;
    }
    std::fprintf(stderr, "%s%s: %s\n", clear_line(), to_string(level),
                 message.c_str());
  });
}

// The message of an exception, without the C++ stack trace that LibTorch
// appends to c10::Error.
inline std::string error_message(const std::exception& error) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error)) {
    return c10_error->what_without_backtrace();
  }
  return error.what();
}

inline std::string format_duration(double seconds) {
  const auto total = int64_t(seconds + 0.5);
  char text[32];
  std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld",
                static_cast<long long>(total / 3600),
                static_cast<long long>(total / 60 % 60),
                static_cast<long long>(total % 60));
  return text;
}

// Progress callback that redraws one line on standard error.
inline SampleCallback sampling_progress_line(const std::string& label) {
  return [label](const SampleProgress& p) {
    if (!stderr_is_terminal() && p.step != p.total) {
      return;
    }
    std::fprintf(stderr, "%s%s step %lld/%lld, %.2f steps/s", clear_line(),
                 label.c_str(), static_cast<long long>(p.step),
                 static_cast<long long>(p.total), p.steps_per_second);
    if (p.step == p.total) {
      std::fprintf(stderr, "\n");
    }
    std::fflush(stderr);
  };
}

} // namespace ddpm::cli
