// ddpm-bench-pipeline: compares the Trainer's steps per second when it
// reads a folder of images through its threaded loader with the steps per
// second on the same batches already in memory. Runs the two alternately
// and prints each run and the medians.
//
//   ddpm-bench-pipeline --folder data/fashion-mnist --steps 40 --rounds 3

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "ddpm/trainer.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string folder;
  int64_t steps = 40;
  int64_t warmup = 5;
  int64_t rounds = 3;
  int64_t batch_size = 32;
  int64_t image_size = 28;
  int64_t channels = 1;
  int64_t dim = 32;
  std::vector<int64_t> dim_mults{1, 2, 4};
  int64_t num_workers = 2;
  bool amp = true;
};

ddpm::Trainer make_trainer(const Flags& f, const std::string& results) {
  torch::manual_seed(0);
  ddpm::GaussianDiffusion diffusion(
      ddpm::Unet(ddpm::UnetOptions(f.dim).dim_mults(f.dim_mults)
                     .channels(f.channels)),
      ddpm::GaussianDiffusionOptions(f.image_size));
  return ddpm::Trainer(diffusion, ddpm::TrainerOptions(f.folder)
                                      .train_batch_size(f.batch_size)
                                      .num_workers(f.num_workers)
                                      .amp(f.amp)
                                      .results_folder(results)
                                      .save_and_sample_every(1 << 30)
                                      .write_metrics(false));
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"Trainer steps per second: image folder vs batches in memory"};
  Flags f;
  app.add_option("--folder", f.folder, "Folder of training images")
      ->required();
  app.add_option("--steps", f.steps, "Timed steps per run")
      ->capture_default_str();
  app.add_option("--warmup", f.warmup, "Untimed steps before each run")
      ->capture_default_str();
  app.add_option("--rounds", f.rounds, "Runs of each kind, alternating")
      ->capture_default_str();
  app.add_option("--batch-size", f.batch_size, "Images per step")
      ->capture_default_str();
  app.add_option("--image-size", f.image_size, "Image size in pixels")
      ->capture_default_str();
  app.add_option("--channels", f.channels, "Image channels")
      ->capture_default_str();
  app.add_option("--dim", f.dim, "Unet base width")->capture_default_str();
  app.add_option("--dim-mults", f.dim_mults, "Unet stage multipliers")
      ->capture_default_str();
  app.add_option("--num-workers", f.num_workers, "Loader threads")
      ->capture_default_str();
  app.add_flag("--amp,!--no-amp", f.amp, "bf16 autocast (default: on)");
  CLI11_PARSE(app, argc, argv);

  const std::string results =
      (std::filesystem::temp_directory_path() / "ddpm-bench-pipeline")
          .string();
  std::vector<double> folder_rates, memory_rates;
  for (int64_t round = 0; round < f.rounds; ++round) {
    // The folder: decoding, resizing, flips and batching on worker threads.
    auto trainer = make_trainer(f, results);
    for (int64_t i = 0; i < f.warmup; ++i) {
      trainer.train_step();
    }
    auto start = Clock::now();
    for (int64_t i = 0; i < f.steps; ++i) {
      trainer.train_step();
    }
    const double folder_seconds =
        std::chrono::duration<double>(Clock::now() - start).count();

    // The same number of steps on batches prepared beforehand.
    auto memory_trainer = make_trainer(f, results);
    std::vector<torch::Tensor> batches;
    ddpm::BatchLoaderOptions loader_options;
    loader_options.batch_size = f.batch_size;
    loader_options.num_workers = 0;
    loader_options.augment_horizontal_flip = true;
    ddpm::BatchLoader loader(memory_trainer.dataset(), loader_options);
    for (int64_t i = 0; i < f.warmup + f.steps; ++i) {
      batches.push_back(loader.next());
    }
    for (int64_t i = 0; i < f.warmup; ++i) {
      memory_trainer.train_step(batches[i]);
    }
    start = Clock::now();
    for (int64_t i = 0; i < f.steps; ++i) {
      memory_trainer.train_step(batches[f.warmup + i]);
    }
    const double memory_seconds =
        std::chrono::duration<double>(Clock::now() - start).count();

    folder_rates.push_back(double(f.steps) / folder_seconds);
    memory_rates.push_back(double(f.steps) / memory_seconds);
    std::printf("round %lld: folder %.3f steps/s, memory %.3f steps/s, "
                "ratio %.3f\n",
                static_cast<long long>(round + 1), folder_rates.back(),
                memory_rates.back(),
                folder_rates.back() / memory_rates.back());
  }
  const double folder = median(folder_rates), memory = median(memory_rates);
  std::printf("median: folder %.3f steps/s, memory %.3f steps/s, "
              "ratio %.3f\n",
              folder, memory, folder / memory);
  return 0;
}
