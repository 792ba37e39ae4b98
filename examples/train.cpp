// ddpm-train: trains a denoising diffusion model on a folder of images.
//
//   ddpm-train --folder data/images --image-size 32 --dim 32 \
//       --dim-mults 1 2 4 --channels 1 --train-num-steps 2000

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "ddpm/allocator.h"
#include "ddpm/io/checkpoint.h"
#include "ddpm/trainer.h"
#include "model_flags.h"

namespace {

struct TrainFlags {
  std::string folder;
  int64_t train_batch_size = 16;
  int64_t gradient_accumulate_every = 1;
  bool augment_horizontal_flip = true;
  double train_lr = 1e-4;
  int64_t train_num_steps = 100000;
  int64_t ema_update_every = 10;
  double ema_decay = 0.995;
  std::vector<double> adam_betas{0.9, 0.99};
  int64_t save_and_sample_every = 1000;
  int64_t num_samples = 25;
  std::string results_folder = "./results";
  bool amp = false;
  std::string mixed_precision_type = "fp16";
  double max_grad_norm = 1.0;
  std::string device = "cpu";
  bool cudnn_benchmark = false;
  bool channels_last = true;
  bool retain_freed_memory = true;
  bool fused_adam = true;
  int64_t num_workers = 2;
  int64_t max_image_pixels = ddpm::kDefaultMaxImagePixels;
  int64_t threads = 0;
  uint64_t seed = 0;
  std::string lr_schedule = "constant";
  int64_t lr_warmup_steps = 0;
  double lr_min = 0.0;
  int64_t keep_last_checkpoints = 0;
  bool save_best_and_latest_only = false;
  std::string resume;
  bool overwrite = false;
  bool verbose = false;
};

void add_train_flags(CLI::App& app, TrainFlags& f) {
  const std::string group = "Training";
  app.add_option("--folder", f.folder,
                 "Folder of training images, searched recursively")
      ->required()->group(group);
  app.add_option("--train-batch-size", f.train_batch_size,
                 "Images per micro-batch")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--gradient-accumulate-every", f.gradient_accumulate_every,
                 "Micro-batches per optimizer step")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_flag("--augment-horizontal-flip,!--no-augment-horizontal-flip",
               f.augment_horizontal_flip,
               "Flip training images horizontally at random (default: on)")
      ->group(group);
  app.add_option("--train-lr", f.train_lr, "Adam learning rate")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--train-num-steps", f.train_num_steps,
                 "Optimizer steps to train for, counted from step 0")
      ->capture_default_str()->group(group)->check(ddpm::cli::non_negative());
  app.add_option("--ema-update-every", f.ema_update_every,
                 "Steps between EMA updates")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--ema-decay", f.ema_decay, "Largest EMA decay")
      ->capture_default_str()->group(group)->check(CLI::Range(0.0, 1.0));
  app.add_option("--adam-betas", f.adam_betas, "Adam beta1 and beta2")
      ->capture_default_str()->group(group)->expected(2)
      ->check(CLI::Range(0.0, 0.999999));
  app.add_option("--save-and-sample-every", f.save_and_sample_every,
                 "Steps between sample grids and checkpoints")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--num-samples", f.num_samples,
                 "EMA samples per grid; a perfect square")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--results-folder", f.results_folder,
                 "Folder for model-N.pt, sample-N.png and config.toml")
      ->capture_default_str()->group(group);
  app.add_flag("--amp,!--no-amp", f.amp,
               "Mixed precision: bf16 autocast on the CPU, "
               "--mixed-precision-type on CUDA (default: off)")
      ->group(group);
  app.add_option("--mixed-precision-type", f.mixed_precision_type,
                 "CUDA autocast type: fp16 (with loss scaling) or bf16")
      ->capture_default_str()->group(group)
      ->check(CLI::IsMember({"fp16", "bf16"}));
  app.add_option("--max-grad-norm", f.max_grad_norm,
                 "Clip the gradient norm to this (0: no clipping)")
      ->capture_default_str()->group(group)->check(ddpm::cli::non_negative());
  app.add_flag("--cudnn-benchmark", f.cudnn_benchmark,
               "Let cuDNN time convolution algorithms and keep the fastest "
               "(CUDA only)")
      ->group(group);
  ddpm::cli::add_channels_last_flag(app, f.channels_last, group);
  ddpm::cli::add_retain_freed_memory_flag(app, f.retain_freed_memory,
                                          group);
  app.add_flag("--fused-adam,!--no-fused-adam", f.fused_adam,
               "Update the weights with ATen's fused Adam kernel "
               "(default: on)")
      ->group(group);
  app.add_option("--device", f.device, "Device, e.g. cpu or cuda:0")
      ->capture_default_str()->group(group);
  app.add_option("--num-workers", f.num_workers,
                 "Threads that decode and augment images")
      ->capture_default_str()->group(group)->check(ddpm::cli::non_negative());
  app.add_option("--max-image-pixels", f.max_image_pixels,
                 "Skip images whose header declares more pixels (width x "
                 "height) than this, before decoding them")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--threads", f.threads,
                 "Threads for tensor operations (0: LibTorch's default)")
      ->capture_default_str()->group(group)->check(ddpm::cli::non_negative());
  app.add_option("--seed", f.seed,
                 "Seed of the weights, the noise and the data order")
      ->capture_default_str()->group(group);
  app.add_option("--lr-schedule", f.lr_schedule,
                 "Learning-rate schedule: constant, warmup (linear over "
                 "--lr-warmup-steps) or cosine (warm-up, then cosine decay "
                 "to --lr-min)")
      ->capture_default_str()->group(group)
      ->check(CLI::IsMember({"constant", "warmup", "cosine"}));
  app.add_option("--lr-warmup-steps", f.lr_warmup_steps,
                 "Steps of linear learning-rate warm-up")
      ->capture_default_str()->group(group)
      ->check(ddpm::cli::non_negative());
  app.add_option("--lr-min", f.lr_min,
                 "Learning rate at the end of the cosine decay")
      ->capture_default_str()->group(group)
      ->check(ddpm::cli::non_negative());
  app.add_option("--keep-last-checkpoints", f.keep_last_checkpoints,
                 "Checkpoints to keep, newest first (0: all)")
      ->capture_default_str()->group(group)
      ->check(ddpm::cli::non_negative());
  app.add_flag("--save-best-and-latest-only", f.save_best_and_latest_only,
               "Write model-latest.pt and, when the mean training loss "
               "since the last save is the lowest so far, model-best.pt "
               "instead of model-N.pt (default: off)")
      ->group(group);
  app.add_option("--resume", f.resume,
                 "Continue from results-folder/model-MILESTONE.pt, or the "
                 "newest one with 'latest'")
      ->group(group);
  app.add_flag("--overwrite", f.overwrite,
               "Start afresh even though the results folder contains "
               "checkpoints, replacing them (default: refuse)")
      ->group(group);
  app.add_flag("--verbose", f.verbose, "Show informational messages")
      ->group(group);
}

// Rejects a fresh run into a results folder that already contains
// checkpoints, which it would overwrite one by one.
void check_no_old_checkpoints(const TrainFlags& flags) {
  if (!flags.resume.empty() || flags.overwrite) {
    return;
  }
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator(flags.results_folder, error)) {
    const auto name = entry.path().filename().string();
    if (name.rfind("model-", 0) == 0 && entry.path().extension() == ".pt") {
      throw std::runtime_error(
          "results folder \"" + flags.results_folder + "\" already contains " +
          name + "; pass --resume MILESTONE to continue that run, "
          "--overwrite to replace it, or another --results-folder");
    }
  }
}

std::string training_config(const ddpm::cli::ModelFlags& model_flags,
                            const TrainFlags& f) {
  ddpm::cli::TomlWriter toml;
  ddpm::cli::write_model_flags(toml, model_flags);
  toml.add("folder", f.folder)
      .add("train-batch-size", f.train_batch_size)
      .add("gradient-accumulate-every", f.gradient_accumulate_every)
      .add("augment-horizontal-flip", f.augment_horizontal_flip)
      .add("train-lr", f.train_lr)
      .add("train-num-steps", f.train_num_steps)
      .add("ema-update-every", f.ema_update_every)
      .add("ema-decay", f.ema_decay)
      .add("adam-betas", f.adam_betas)
      .add("save-and-sample-every", f.save_and_sample_every)
      .add("num-samples", f.num_samples)
      .add("results-folder", f.results_folder)
      .add("amp", f.amp)
      .add("mixed-precision-type", f.mixed_precision_type)
      .add("max-grad-norm", f.max_grad_norm)
      .add("device", f.device)
      .add("num-workers", f.num_workers)
      .add("max-image-pixels", f.max_image_pixels)
      .add("seed", f.seed)
      .add("lr-schedule", f.lr_schedule)
      .add("lr-warmup-steps", f.lr_warmup_steps)
      .add("lr-min", f.lr_min)
      .add("keep-last-checkpoints", f.keep_last_checkpoints)
      .add("save-best-and-latest-only", f.save_best_and_latest_only);
  return toml.str();
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a denoising diffusion model on a folder of images"};
  app.set_config("--config", "",
                 "Read options from a TOML file such as a results folder's "
                 "config.toml");
  // A misspelt key in a config file fails instead of being ignored.
  app.allow_config_extras(CLI::config_extras_mode::error);
  ddpm::cli::ModelFlags model_flags;
  TrainFlags flags;
  ddpm::cli::add_model_flags(app, model_flags);
  add_train_flags(app, flags);
  ddpm::cli::take_last_repeated_values(app);
  CLI11_PARSE(app, argc, argv);

  ddpm::cli::show_library_messages(flags.verbose);
  if (flags.retain_freed_memory) {
    ddpm::retain_freed_memory();
  }
  try {
    torch::manual_seed(flags.seed);
    if (flags.threads > 0) {
      torch::set_num_threads(int(flags.threads));
    }
    auto diffusion = ddpm::cli::make_diffusion(model_flags);

    ddpm::TrainerOptions options(flags.folder);
    options.train_batch_size(flags.train_batch_size)
        .gradient_accumulate_every(flags.gradient_accumulate_every)
        .augment_horizontal_flip(flags.augment_horizontal_flip)
        .train_lr(flags.train_lr)
        .train_num_steps(flags.train_num_steps)
        .ema_update_every(flags.ema_update_every)
        .ema_decay(flags.ema_decay)
        .adam_betas({flags.adam_betas.at(0), flags.adam_betas.at(1)})
        .save_and_sample_every(flags.save_and_sample_every)
        .num_samples(flags.num_samples)
        .results_folder(flags.results_folder)
        .amp(flags.amp)
        .mixed_precision_type(
            ddpm::mixed_precision_from_string(flags.mixed_precision_type))
        .max_grad_norm(flags.max_grad_norm)
        .device(torch::Device(flags.device))
        .cudnn_benchmark(flags.cudnn_benchmark)
        .channels_last(flags.channels_last)
        .fused_adam(flags.fused_adam)
        .num_workers(flags.num_workers)
        .max_image_pixels(flags.max_image_pixels)
        .seed(flags.seed)
        .lr_schedule(ddpm::lr_schedule_from_string(flags.lr_schedule))
        .lr_warmup_steps(flags.lr_warmup_steps)
        .lr_min(flags.lr_min)
        .keep_last_checkpoints(flags.keep_last_checkpoints)
        .save_best_and_latest_only(flags.save_best_and_latest_only);
    check_no_old_checkpoints(flags);
    ddpm::Trainer trainer(diffusion, options);
    if (!flags.resume.empty()) {
      trainer.load(flags.resume);
    }

    // The flags next to the checkpoints let ddpm-sample rebuild the model
    // and ddpm-train resume with --config. They are written only once the
    // data and any resumed checkpoint loaded, so a failed start leaves an
    // earlier run's config.toml alone.
    const auto config = training_config(model_flags, flags);
    ddpm::write_file_atomically(
        (std::filesystem::path(flags.results_folder) / "config.toml")
            .string(),
        std::vector<char>(config.begin(), config.end()));
    trainer.model()->set_sample_callback(
        ddpm::cli::sampling_progress_line("sampling"));
    trainer.ema_model()->set_sample_callback(
        ddpm::cli::sampling_progress_line("sampling"));

    trainer.set_progress_callback([](const ddpm::TrainProgress& p) {
      // Off a terminal, one line every 100 steps keeps logs short.
      const bool terminal = ddpm::cli::stderr_is_terminal();
      if (!terminal && p.step % 100 != 0 && p.step != p.total_steps &&
          !p.checkpoint_path) {
        return;
      }
      std::fprintf(stderr,
                   "%sstep %lld/%lld  loss %.4f  %.2f steps/s  "
                   "data wait %.0f ms  left %s%s",
                   ddpm::cli::clear_line(), static_cast<long long>(p.step),
                   static_cast<long long>(p.total_steps), p.loss,
                   p.steps_per_second, p.data_wait_seconds * 1000.0,
                   ddpm::cli::format_duration(p.seconds_left).c_str(),
                   terminal ? "" : "\n");
      if (p.checkpoint_path) {
        std::fprintf(stderr, "\nsaved %s\n", p.checkpoint_path->c_str());
      }
      std::fflush(stderr);
    });
    trainer.train();
    std::fprintf(stderr, "\n");
    std::printf("trained to step %lld, results in %s\n",
                static_cast<long long>(trainer.step()),
                flags.results_folder.c_str());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "\nddpm-train: %s\n",
                 ddpm::cli::error_message(error).c_str());
    return 1;
  }
  return 0;
}
