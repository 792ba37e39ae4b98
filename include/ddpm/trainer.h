#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <torch/arg.h>
#include <torch/optim/adam.h>
#include <torch/types.h>

#include "ddpm/data/image_folder.h"
#include "ddpm/ema.h"
#include "ddpm/gaussian_diffusion.h"
#include "ddpm/grad_scaler.h"
#include "ddpm/io/checkpoint.h"

namespace ddpm {

/// Precision of autocast with `amp`. On the CPU autocast always runs in
/// bfloat16; float16 with loss scaling applies to CUDA.
enum class MixedPrecision { kFloat16, kBFloat16 };

/// Learning-rate schedule over train_num_steps: constant, a linear warm-up
/// over lr_warmup_steps, or that warm-up followed by a cosine decay to
/// lr_min at the last step.
enum class LrSchedule { kConstant, kWarmup, kCosine };

/// Returns "constant", "warmup" or "cosine".
std::string to_string(LrSchedule schedule);
/// Parses "constant", "warmup" or "cosine"; throws naming the value.
LrSchedule lr_schedule_from_string(const std::string& name);

/// Returns "fp16" or "bf16".
std::string to_string(MixedPrecision precision);
/// Parses "fp16" or "bf16"; throws naming the value and the choices.
MixedPrecision mixed_precision_from_string(const std::string& name);

using AdamBetas = std::pair<double, double>;

/// Options of Trainer, named and defaulted as the keyword arguments of the
/// Python `Trainer` where it has them. Read once at construction.
struct TrainerOptions {
  /* implicit */ TrainerOptions(std::string folder)
      : folder_(std::move(folder)) {}

  /// Folder of training images, searched recursively.
  TORCH_ARG(std::string, folder);
  /// Images per micro-batch.
  TORCH_ARG(int64_t, train_batch_size) = 16;
  /// Micro-batches whose gradients are summed per optimizer step.
  TORCH_ARG(int64_t, gradient_accumulate_every) = 1;
  /// Flip each training image horizontally with probability 0.5.
  TORCH_ARG(bool, augment_horizontal_flip) = true;
  /// Adam learning rate.
  TORCH_ARG(double, train_lr) = 1e-4;
  /// Optimizer steps to train for (a resumed run counts from its step).
  TORCH_ARG(int64_t, train_num_steps) = 100000;
  /// EMA update once every this many steps.
  TORCH_ARG(int64_t, ema_update_every) = 10;
  /// Largest EMA decay.
  TORCH_ARG(double, ema_decay) = 0.995;
  /// Adam (beta1, beta2).
  TORCH_ARG(AdamBetas, adam_betas) = AdamBetas{0.9, 0.99};
  /// Steps between sample grids and checkpoints.
  TORCH_ARG(int64_t, save_and_sample_every) = 1000;
  /// EMA samples per grid; a perfect square (sqrt of it per row).
  TORCH_ARG(int64_t, num_samples) = 25;
  /// Folder of model-N.pt and sample-N.png (N = step / save_and_sample_every).
  TORCH_ARG(std::string, results_folder) = "./results";
  /// Mixed precision: bf16 autocast on the CPU; on CUDA fp16 with loss
  /// scaling, or bf16, as mixed_precision_type selects.
  TORCH_ARG(bool, amp) = false;
  TORCH_ARG(MixedPrecision, mixed_precision_type) = MixedPrecision::kFloat16;
  /// Clip the global gradient norm to this (0: no clipping).
  TORCH_ARG(double, max_grad_norm) = 1.0;
  /// Keep convolution weights in channels-last memory format, which trains
  /// faster on the CPU (docs/BENCHMARKS.md); values are unchanged.
  TORCH_ARG(bool, channels_last) = true;
  /// Let cuDNN time its convolution algorithms on the first batches and
  /// keep the fastest (torch.backends.cudnn.benchmark); CUDA only.
  TORCH_ARG(bool, cudnn_benchmark) = false;
  /// Update all parameters with ATen's fused Adam kernel, as Python's
  /// Adam(fused=True) does. The update is the same and faster. Off gives
  /// LibTorch's torch::optim::Adam.
  TORCH_ARG(bool, fused_adam) = true;
  /// Device to train on.
  TORCH_ARG(torch::Device, device) = torch::Device(torch::kCPU);
  /// Threads that decode and augment images (0: on the training thread).
  TORCH_ARG(int64_t, num_workers) = 2;
  /// Batches prepared ahead of the training step.
  TORCH_ARG(int64_t, prefetch) = 4;
  /// Keep decoded images in memory when they fit in cache_max_bytes.
  TORCH_ARG(bool, cache_images) = true;
  TORCH_ARG(int64_t, cache_max_bytes) = int64_t{2} << 30;
  /// Images whose header declares more pixels are skipped with a warning
  /// before they are decoded.
  TORCH_ARG(int64_t, max_image_pixels) = kDefaultMaxImagePixels;
  /// Seed of the data order and flips.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Learning-rate schedule; warm-up steps; the floor of the cosine decay.
  TORCH_ARG(LrSchedule, lr_schedule) = LrSchedule::kConstant;
  TORCH_ARG(int64_t, lr_warmup_steps) = 0;
  TORCH_ARG(double, lr_min) = 0.0;
  /// Checkpoints to keep in results_folder, newest first (0: all).
  TORCH_ARG(int64_t, keep_last_checkpoints) = 0;
  /// At each save, write model-latest.pt, and model-best.pt when the mean
  /// training loss since the previous save is the lowest so far, instead
  /// of model-N.pt. NOTE: the Python Trainer ranks by FID, which this
  /// library does not compute; the training loss is a noisier criterion.
  TORCH_ARG(bool, save_best_and_latest_only) = false;
  /// Append one JSON line per step to results_folder/metrics.jsonl.
  TORCH_ARG(bool, write_metrics) = true;
};

/// State of training, passed to a TrainCallback after each step.
struct TrainProgress {
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0.0;
  double steps_per_second = 0.0;
  double seconds_left = 0.0;
  /// Seconds the step waited for the data loader, summed over micro-batches.
  double data_wait_seconds = 0.0;
  /// Learning rate of the step, global gradient norm before clipping, and
  /// the EMA decay the step's update used (0 while the EMA copies).
  double learning_rate = 0.0;
  double grad_norm = 0.0;
  double ema_decay = 0.0;
  /// Set when this step wrote a sample grid and a checkpoint.
  std::optional<std::string> checkpoint_path;
};
using TrainCallback = std::function<void(const TrainProgress&)>;

/// Trains a GaussianDiffusion on a folder of images, as the Python
/// `Trainer`: Adam, gradient accumulation, gradient clipping, EMA, optional
/// mixed precision, and every save_and_sample_every steps a grid of EMA
/// samples and a checkpoint in results_folder.
///
/// The constructor checks the options, creates results_folder and writes a
/// probe file to it (so an unwritable folder fails before training), and
/// lists the images.
class Trainer {
 public:
  Trainer(GaussianDiffusion diffusion, TrainerOptions options);

  /// Trains until train_num_steps. Rethrows data and I/O errors.
  void train();

  /// Runs one optimizer step on the next batches; returns the loss.
  double train_step();

  /// Runs one optimizer step on `batch` [B, C, H, W] in [0, 1] instead of
  /// the folder's batches and returns the loss. The batch is split into
  /// gradient_accumulate_every equal micro-batches.
  double train_step(const torch::Tensor& batch);

  /// Writes results_folder/model-<milestone>.pt.
  std::string save(const std::string& milestone);
  /// Restores step, model, optimizer, EMA and scaler from
  /// results_folder/model-<milestone>.pt; "latest" picks the highest
  /// numbered one.
  void load(const std::string& milestone);

  /// Learning rate of the schedule at a 0-based step.
  double learning_rate_at(int64_t step) const;

  /// Draws num_samples EMA images in batches of train_batch_size; returns
  /// [num_samples, C, H, W] in [0, 1].
  torch::Tensor sample_ema();

  std::string checkpoint_path(const std::string& milestone) const;

  void set_progress_callback(TrainCallback callback) {
    progress_callback_ = std::move(callback);
  }

  int64_t step() const { return step_; }
  const TrainerOptions& options() const { return options_; }
  GaussianDiffusion& model() { return model_; }
  GaussianDiffusion& ema_model() { return ema_model_; }
  EMA& ema() { return *ema_; }
  torch::optim::Adam& optimizer() { return *optimizer_; }
  GradScaler& scaler() { return scaler_; }
  const std::shared_ptr<ImageFolder>& dataset() const { return dataset_; }

 private:
  torch::Tensor next_batch(double& wait_seconds);
  double run_step(const std::function<torch::Tensor(int64_t)>& micro_batch);
  std::string save_and_sample(int64_t milestone);
  void remove_old_checkpoints();
  void append_metrics(const TrainProgress& progress);

  TrainerOptions options_;
  GaussianDiffusion model_;
  GaussianDiffusion ema_model_{nullptr};
  std::unique_ptr<EMA> ema_;
  std::unique_ptr<torch::optim::Adam> optimizer_;
  GradScaler scaler_;
  std::shared_ptr<ImageFolder> dataset_;
  std::unique_ptr<BatchLoader> loader_;
  std::vector<torch::Tensor> parameters_;
  TrainCallback progress_callback_;
  int64_t step_ = 0;
  double last_wait_seconds_ = 0.0;
  double last_grad_norm_ = 0.0;
  int64_t data_start_batch_ = 0;
  double loss_sum_since_save_ = 0.0;
  int64_t steps_since_save_ = 0;
  double best_loss_ = std::numeric_limits<double>::infinity();
  double last_learning_rate_ = 0.0;
  bool autocast_ = false;
  torch::ScalarType autocast_dtype_ = torch::kBFloat16;
};

} // namespace ddpm
