#include "ddpm/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <limits>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "ddpm/autocast.h"
#include "ddpm/fused_adam.h"
#include "ddpm/io/image.h"
#include "ddpm/log.h"

namespace ddpm {
namespace {

namespace fs = std::filesystem;

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double>(end - start).count();
}

bool is_perfect_square(int64_t n) {
  const auto root = int64_t(std::llround(std::sqrt(double(n))));
  return n >= 1 && root * root == n;
}

// Creates `folder` and proves it writable with a probe file, so that a bad
// results folder fails before hours of training rather than at the first
// checkpoint.
void check_writable_folder(const std::string& folder) {
  std::error_code error;
  fs::create_directories(folder, error);
  TORCH_CHECK(!error, "cannot create results folder \"", folder,
              "\": ", error.message());
  const auto probe = fs::path(folder) / ".ddpm-write-test";
  {
    std::ofstream file(probe);
    file << "probe";
    TORCH_CHECK(file.good(), "results folder \"", folder,
                "\" is not writable: ", std::strerror(errno));
  }
  fs::remove(probe, error);
}

GaussianDiffusion make_copy(const GaussianDiffusion& model) {
  return GaussianDiffusion(Unet(model->model->options), model->options);
}

} // namespace

std::string to_string(LrSchedule schedule) {
  switch (schedule) {
    case LrSchedule::kConstant:
      return "constant";
    case LrSchedule::kWarmup:
      return "warmup";
    case LrSchedule::kCosine:
      return "cosine";
  }
  TORCH_CHECK(false, "unknown LrSchedule value ", int(schedule));
}

LrSchedule lr_schedule_from_string(const std::string& name) {
  if (name == "constant") {
    return LrSchedule::kConstant;
  }
  if (name == "warmup") {
    return LrSchedule::kWarmup;
  }
  if (name == "cosine") {
    return LrSchedule::kCosine;
  }
  TORCH_CHECK(false, "unknown learning-rate schedule \"", name,
              "\": expected constant, warmup or cosine");
}

std::string to_string(MixedPrecision precision) {
  return precision == MixedPrecision::kFloat16 ? "fp16" : "bf16";
}

MixedPrecision mixed_precision_from_string(const std::string& name) {
  if (name == "fp16") {
    return MixedPrecision::kFloat16;
  }
  if (name == "bf16") {
    return MixedPrecision::kBFloat16;
  }
  TORCH_CHECK(false, "unknown mixed precision type \"", name,
              "\": expected fp16 or bf16");
}

Trainer::Trainer(GaussianDiffusion diffusion, TrainerOptions options)
    : options_(std::move(options)),
      model_(std::move(diffusion)),
      scaler_(GradScalerOptions{}) {
  const auto& o = options_;
  TORCH_CHECK(o.train_batch_size() >= 1,
              "train_batch_size must be at least 1, got ",
              o.train_batch_size());
  TORCH_CHECK(o.gradient_accumulate_every() >= 1,
              "gradient_accumulate_every must be at least 1, got ",
              o.gradient_accumulate_every());
  TORCH_CHECK(o.train_lr() > 0 && std::isfinite(o.train_lr()),
              "train_lr must be positive and finite, got ", o.train_lr());
  TORCH_CHECK(o.train_num_steps() >= 0,
              "train_num_steps must be non-negative, got ",
              o.train_num_steps());
  TORCH_CHECK(o.save_and_sample_every() >= 1,
              "save_and_sample_every must be at least 1, got ",
              o.save_and_sample_every());
  TORCH_CHECK(is_perfect_square(o.num_samples()),
              "num_samples must be a perfect square (the grid has "
              "sqrt(num_samples) images per row), got ", o.num_samples());
  TORCH_CHECK(o.ema_decay() >= 0 && o.ema_decay() <= 1,
              "ema_decay must be in [0, 1], got ", o.ema_decay());
  TORCH_CHECK(o.max_grad_norm() >= 0,
              "max_grad_norm must be non-negative, got ", o.max_grad_norm());
  const auto [beta1, beta2] = o.adam_betas();
  TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
              "adam_betas must be in [0, 1), got (", beta1, ", ", beta2, ")");
  TORCH_CHECK(o.num_workers() >= 0, "num_workers must be non-negative, got ",
              o.num_workers());
  TORCH_CHECK(o.lr_warmup_steps() >= 0,
              "lr_warmup_steps must be non-negative, got ",
              o.lr_warmup_steps());
  TORCH_CHECK(o.lr_min() >= 0 && o.lr_min() <= o.train_lr(),
              "lr_min must be in [0, train_lr = ", o.train_lr(), "], got ",
              o.lr_min());
  TORCH_CHECK(o.keep_last_checkpoints() >= 0,
              "keep_last_checkpoints must be non-negative, got ",
              o.keep_last_checkpoints());
  TORCH_CHECK(o.ema_update_every() >= 1,
              "ema_update_every must be at least 1, got ",
              o.ema_update_every());
  TORCH_CHECK(o.prefetch() >= 1, "prefetch must be at least 1, got ",
              o.prefetch());
  TORCH_CHECK(o.cache_max_bytes() >= 0,
              "cache_max_bytes must be non-negative, got ",
              o.cache_max_bytes());
  TORCH_CHECK(o.max_image_pixels() >= 1,
              "max_image_pixels must be at least 1, got ",
              o.max_image_pixels());
  if (o.train_batch_size() * o.gradient_accumulate_every() < 16) {
    log_warning("effective batch size train_batch_size x "
                "gradient_accumulate_every = " +
                std::to_string(o.train_batch_size() *
                               o.gradient_accumulate_every()) +
                " is below 16, which trains poorly");
  }

  check_writable_folder(o.results_folder());
  remove_stale_temporary_files(o.results_folder());

  ImageFolderOptions data;
  data.folder = o.folder();
  data.height = model_->image_size().height;
  data.width = model_->image_size().width;
  data.channels = model_->channels();
  data.cache_images = o.cache_images();
  data.cache_max_bytes = o.cache_max_bytes();
  data.max_image_pixels = o.max_image_pixels();
  dataset_ = std::make_shared<ImageFolder>(data);
  if (dataset_->size() < 100) {
    log_warning("only " + std::to_string(dataset_->size()) + " images in \"" +
                o.folder() + "\"; at least 10k are recommended");
  }

  model_->to(o.device());
  ema_model_ = make_copy(model_);
  ema_model_->to(o.device());
  if (o.channels_last()) {
    set_memory_format(*model_, torch::MemoryFormat::ChannelsLast);
    set_memory_format(*ema_model_, torch::MemoryFormat::ChannelsLast);
  }
  ema_model_->eval();
  EmaOptions ema_options;
  ema_options.decay = o.ema_decay();
  ema_options.update_every = o.ema_update_every();
  ema_ = std::make_unique<EMA>(model_.ptr(), ema_model_.ptr(), ema_options);

  parameters_ = model_->parameters();
  const auto adam_options =
      torch::optim::AdamOptions(o.train_lr()).betas({beta1, beta2});
  if (o.fused_adam()) {
    optimizer_ = std::make_unique<FusedAdam>(parameters_, adam_options);
  } else {
    optimizer_ = std::make_unique<torch::optim::Adam>(parameters_,
                                                      adam_options);
  }

  const bool on_cuda = o.device().is_cuda();
  if (on_cuda && o.cudnn_benchmark()) {
    at::globalContext().setBenchmarkCuDNN(true);
  }
  autocast_ = o.amp();
  if (o.amp() && !on_cuda) {
    autocast_dtype_ = torch::kBFloat16;
    if (o.mixed_precision_type() == MixedPrecision::kFloat16) {
      log_info("amp on the CPU uses bfloat16 autocast; "
               "mixed_precision_type=fp16 applies to CUDA only");
    }
  } else if (o.amp()) {
    autocast_dtype_ = o.mixed_precision_type() == MixedPrecision::kFloat16
        ? torch::kFloat16
        : torch::kBFloat16;
  }
  GradScalerOptions scaler_options;
  scaler_options.enabled =
      autocast_ && autocast_dtype_ == torch::kFloat16;
  scaler_ = GradScaler(scaler_options);

  log_info("training " + std::to_string(dataset_->size()) + " images from \"" +
           o.folder() + "\" on " + o.device().str() + ", objective " +
           to_string(model_->options.objective()) + ", beta schedule " +
           to_string(model_->options.beta_schedule()) +
           (autocast_ ? std::string(", autocast ") +
                    c10::toString(autocast_dtype_)
                      : std::string()));
}

double Trainer::learning_rate_at(int64_t step) const {
  const double base = options_.train_lr();
  const int64_t warmup = options_.lr_warmup_steps();
  if (options_.lr_schedule() == LrSchedule::kConstant) {
    return base;
  }
  if (step < warmup) {
    return base * double(step + 1) / double(warmup);
  }
  if (options_.lr_schedule() == LrSchedule::kWarmup) {
    return base;
  }
  const int64_t decay_steps =
      std::max<int64_t>(1, options_.train_num_steps() - warmup - 1);
  const double progress =
      std::min(1.0, double(step - warmup) / double(decay_steps));
  const double lr_min = options_.lr_min();
  return lr_min + 0.5 * (base - lr_min) * (1 + std::cos(M_PI * progress));
}

// Numbers N of the model-N.pt files in `folder`, ascending.
static std::vector<int64_t> numbered_checkpoints(const std::string& folder) {
  std::vector<int64_t> numbers;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(folder, error)) {
    const auto name = entry.path().filename().string();
    if (name.size() <= 9 || name.rfind("model-", 0) != 0 ||
        name.compare(name.size() - 3, 3, ".pt") != 0) {
      continue;
    }
    const auto digits = name.substr(6, name.size() - 9);
    if (!digits.empty() && digits.size() < 19 &&
        std::all_of(digits.begin(), digits.end(), ::isdigit)) {
      numbers.push_back(std::stoll(digits));
    }
  }
  std::sort(numbers.begin(), numbers.end());
  return numbers;
}

void Trainer::remove_old_checkpoints() {
  const int64_t keep = options_.keep_last_checkpoints();
  if (keep <= 0) {
    return;
  }
  auto numbers = numbered_checkpoints(options_.results_folder());
  for (size_t i = 0; i + size_t(keep) < numbers.size(); ++i) {
    std::error_code error;
    fs::remove(checkpoint_path(std::to_string(numbers[i])), error);
    if (error) {
      log_warning("could not remove old checkpoint \"" +
                  checkpoint_path(std::to_string(numbers[i])) +
                  "\": " + error.message());
    }
  }
}

void Trainer::append_metrics(const TrainProgress& p) {
  const auto path = fs::path(options_.results_folder()) / "metrics.jsonl";
  std::ofstream file(path, std::ios::app);
  char line[512];
  std::snprintf(line, sizeof(line),
                "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, "
                "\"grad_norm\": %.9g, \"steps_per_second\": %.6g, "
                "\"data_wait_seconds\": %.6g, \"ema_decay\": %.9g}\n",
                static_cast<long long>(p.step), p.loss, p.learning_rate,
                p.grad_norm, p.steps_per_second, p.data_wait_seconds,
                p.ema_decay);
  file << line;
  file.flush();
  TORCH_CHECK(file.good(), "failed to append to \"", path.string(), "\"");
}

std::string Trainer::checkpoint_path(const std::string& milestone) const {
  return (fs::path(options_.results_folder()) / ("model-" + milestone + ".pt"))
      .string();
}

torch::Tensor Trainer::next_batch(double& wait_seconds) {
  if (!loader_) {
    BatchLoaderOptions loader;
    loader.batch_size = options_.train_batch_size();
    loader.num_workers = options_.num_workers();
    loader.prefetch = options_.prefetch();
    loader.augment_horizontal_flip = options_.augment_horizontal_flip();
    loader.seed = options_.seed();
    loader.start_batch = data_start_batch_;
    loader_ = std::make_unique<BatchLoader>(dataset_, loader);
  }
  const double before = loader_->wait_seconds();
  auto batch = loader_->next();
  wait_seconds += loader_->wait_seconds() - before;
  if (options_.device().is_cuda()) {
    // From page-locked memory the copy runs asynchronously, overlapping the
    // previous step's kernels.
    return batch.pin_memory().to(options_.device(), /*non_blocking=*/true);
  }
  return batch.to(options_.device());
}

double Trainer::train_step() {
  double wait_seconds = 0.0;
  const double loss =
      run_step([&](int64_t) { return next_batch(wait_seconds); });
  last_wait_seconds_ = wait_seconds;
  return loss;
}

double Trainer::train_step(const torch::Tensor& batch) {
  const int64_t accumulate = options_.gradient_accumulate_every();
  TORCH_CHECK(batch.dim() == 4 && batch.size(0) % accumulate == 0,
              "train_step needs a batch [B, C, H, W] with B divisible by "
              "gradient_accumulate_every = ", accumulate, ", got ",
              batch.sizes());
  auto chunks = batch.to(options_.device()).chunk(accumulate, 0);
  last_wait_seconds_ = 0.0;
  return run_step([&](int64_t i) { return chunks[i]; });
}

double Trainer::run_step(
    const std::function<torch::Tensor(int64_t)>& micro_batch) {
  model_->train();
  const int64_t accumulate = options_.gradient_accumulate_every();
  // Summed on the device and read once after the loop, so that on CUDA the
  // host queues every micro-batch without waiting for the previous one.
  torch::Tensor loss_sum;

  for (int64_t i = 0; i < accumulate; ++i) {
    auto data = micro_batch(i);
    torch::Tensor loss;
    {
      AutocastScope autocast(autocast_, options_.device().type(),
                             autocast_dtype_);
      loss = model_(data) / double(accumulate);
    }
    auto value = loss.detach().to(torch::kDouble);
    loss_sum = loss_sum.defined() ? loss_sum + value : value;
    scaler_.scale(loss).backward();
  }
  const double total_loss = loss_sum.item<double>();

  // Unscale before clipping, so the norm is that of the true gradients.
  scaler_.unscale_(parameters_);
  last_grad_norm_ = torch::nn::utils::clip_grad_norm_(
      parameters_,
      options_.max_grad_norm() > 0 ? options_.max_grad_norm()
                                   : std::numeric_limits<double>::infinity());
  // Without loss scaling a non-finite loss or gradient would turn every
  // weight into NaN at the optimizer step, and the next checkpoint would
  // store them. Stop before that step instead. (With fp16 loss scaling the
  // scaler skips the step and lowers the scale, as Python's GradScaler.)
  if (!scaler_.enabled() &&
      (!std::isfinite(total_loss) || !std::isfinite(last_grad_norm_))) {
    optimizer_->zero_grad();
    TORCH_CHECK(false, "step ", step_ + 1, ": the loss is ", total_loss,
                " and the gradient norm ", last_grad_norm_,
                "; training stopped before the optimizer step, so the "
                "weights and the checkpoints in \"", options_.results_folder(),
                "\" are unchanged. Check the data for NaN or infinite "
                "values, or lower train_lr = ", options_.train_lr());
  }
  last_learning_rate_ = learning_rate_at(step_);
  for (auto& group : optimizer_->param_groups()) {
    group.options().set_lr(last_learning_rate_);
  }
  const bool stepped = scaler_.step(*optimizer_, parameters_);
  scaler_.update();
  optimizer_->zero_grad();
  if (!stepped) {
    log_warning("step " + std::to_string(step_ + 1) +
                ": non-finite gradients, optimizer step skipped and loss "
                "scale lowered to " + std::to_string(scaler_.get_scale()));
  }

  ++step_;
  ema_->update();
  return total_loss;
}

torch::Tensor Trainer::sample_ema() {
  ema_model_->eval();
  c10::InferenceMode inference;
  std::vector<torch::Tensor> batches;
  int64_t remaining = options_.num_samples();
  while (remaining > 0) {
    const int64_t n = std::min(remaining, options_.train_batch_size());
    batches.push_back(ema_model_->sample(n).cpu());
    remaining -= n;
  }
  return torch::cat(batches, 0);
}

std::string Trainer::save_and_sample(int64_t milestone) {
  const auto name = std::to_string(milestone);
  auto images = sample_ema();
  const auto per_row = int64_t(std::llround(std::sqrt(
      double(options_.num_samples()))));
  save_image_grid(
      images,
      (fs::path(options_.results_folder()) / ("sample-" + name + ".png"))
          .string(),
      per_row);
  if (!options_.save_best_and_latest_only()) {
    return save(name);
  }
  const double mean_loss =
      loss_sum_since_save_ / double(std::max<int64_t>(1, steps_since_save_));
  loss_sum_since_save_ = 0.0;
  steps_since_save_ = 0;
  if (mean_loss < best_loss_) {
    best_loss_ = mean_loss;
    save("best");
  }
  return save("latest");
}

std::string Trainer::save(const std::string& milestone) {
  Checkpoint checkpoint;
  checkpoint.step = step_;
  checkpoint.model = module_state_dict(*model_);
  checkpoint.opt = adam_state_dict(*optimizer_);
  checkpoint.ema = ema_->state_dict();
  if (scaler_.enabled()) {
    ScalerState state;
    state.scale = scaler_.get_scale();
    state.growth_factor = scaler_.options().growth_factor;
    state.backoff_factor = scaler_.options().backoff_factor;
    state.growth_interval = scaler_.options().growth_interval;
    state.growth_tracker = scaler_.growth_tracker();
    checkpoint.scaler = state;
  }
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    checkpoint.rng_state = generator.get_state();
  }
  checkpoint.data_batches =
      loader_ ? loader_->batches_consumed() : data_start_batch_;
  const auto path = checkpoint_path(milestone);
  save_checkpoint(checkpoint, path);
  return path;
}

void Trainer::load(const std::string& milestone_in) {
  std::string milestone = milestone_in;
  if (milestone == "latest" && !fs::exists(checkpoint_path("latest"))) {
    auto numbers = numbered_checkpoints(options_.results_folder());
    TORCH_CHECK(!numbers.empty(), "load(\"latest\"): no model-N.pt in \"",
                options_.results_folder(), "\"");
    milestone = std::to_string(numbers.back());
  }
  const auto path = checkpoint_path(milestone);
  auto checkpoint = load_checkpoint(path);
  load_module_state_dict(*model_, checkpoint.model,
                         "checkpoint \"" + path + "\"");
  load_adam_state_dict(*optimizer_, checkpoint.opt);
  ema_->load_state_dict(checkpoint.ema);
  if (scaler_.enabled() && checkpoint.scaler) {
    scaler_.load(checkpoint.scaler->scale, checkpoint.scaler->growth_tracker);
  }
  step_ = checkpoint.step;
  // Continue the random numbers and the batch sequence where they stopped,
  // so a resumed run equals an uninterrupted one bit for bit on the CPU.
  if (checkpoint.rng_state.defined()) {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(checkpoint.rng_state);
  }
  data_start_batch_ = checkpoint.data_batches.value_or(
      step_ * options_.gradient_accumulate_every());
  loader_.reset();
  log_info("loaded \"" + path + "\" at step " + std::to_string(step_) +
           (checkpoint.version.empty() ? std::string()
                                       : ", version " + checkpoint.version));
}

void Trainer::train() {
  const int64_t total = options_.train_num_steps();
  const int64_t first_step = step_;
  const auto start = Clock::now();

  while (step_ < total) {
    const double loss = train_step();
    loss_sum_since_save_ += loss;
    ++steps_since_save_;

    TrainProgress progress;
    progress.step = step_;
    progress.total_steps = total;
    progress.loss = loss;
    progress.data_wait_seconds = last_wait_seconds_;
    progress.learning_rate = last_learning_rate_;
    progress.grad_norm = last_grad_norm_;
    progress.ema_decay = ema_->current_decay();
    const double elapsed = seconds_between(start, Clock::now());
    progress.steps_per_second =
        elapsed > 0 ? double(step_ - first_step) / elapsed : 0.0;
    progress.seconds_left = progress.steps_per_second > 0
        ? double(total - step_) / progress.steps_per_second
        : 0.0;

    if (step_ % options_.save_and_sample_every() == 0) {
      const int64_t milestone = step_ / options_.save_and_sample_every();
      progress.checkpoint_path = save_and_sample(milestone);
      remove_old_checkpoints();
    }
    if (options_.write_metrics()) {
      append_metrics(progress);
    }
    if (progress_callback_) {
      progress_callback_(progress);
    }
  }
  log_info("training complete at step " + std::to_string(step_));
}

} // namespace ddpm
