// ddpm-bench: times one benchmark case with this library and prints one JSON
// line. benchmarks/python_worker.py times the same case with the Python
// package, and benchmarks/compare.py runs the two in turn. Cases:
//
//   S: Unet(dim 32, dim_mults 1 2 4, channels 1) on 28 x 28 images;
//      train = one Trainer step at batch 32, sample = DDIM, 16 images,
//      50 steps.
//   M: Unet(dim 64, dim_mults 1 2 4 8), 3 channels, 64 x 64 images;
//      train = one Trainer step at batch 8, sample = 10 DDPM steps at
//      batch 4.
//
// --task matmul instead times a 2048^3 matrix product in float32 and in
// bfloat16, the practical FLOP/s ceiling of this machine.
//
//   ddpm-bench --config S --task train --amp

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include "ddpm/allocator.h"
#include "ddpm/autocast.h"
#include "ddpm/cuda_graph_sampler.h"
#include "ddpm/io/image.h"
#include "ddpm/log.h"
#include "ddpm/trainer.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  int64_t dim;
  std::vector<int64_t> dim_mults;
  int64_t channels;
  int64_t image_size;
  int64_t train_batch;
  int64_t sample_batch;
  std::optional<int64_t> sampling_timesteps;
  int64_t ddpm_steps;  // 0: sample with the full sampler instead
};

// G: the GPU configuration, Unet(dim 64, dim_mults 1 2 4 8) at 128 x 128;
// train = one Trainer step at batch 32, sample = DDIM, 64 images, 50 steps.

Config config_named(const std::string& name) {
  if (name == "S") {
    return {32, {1, 2, 4}, 1, 28, 32, 16, 50, 0};
  }
  if (name == "G") {
    return {64, {1, 2, 4, 8}, 3, 128, 32, 64, 50, 0};
  }
  return {64, {1, 2, 4, 8}, 3, 64, 8, 4, std::nullopt, 10};
}

struct Flags {
  std::string config = "S";
  std::string task = "train";
  bool amp = false;
  int64_t warmup = 2;
  int64_t iters = 5;
  int64_t threads = 0;
  uint64_t seed = 0;
  std::string profile;
  bool channels_last = true;
  bool fused_adam = true;
  bool retain_freed_memory = true;
  std::string device = "cpu";
  std::string precision;  // fp32, bf16 or fp16; --amp means bf16
  int64_t sample_batch = 0;
  bool cuda_graphs = false;
};

bool on_cuda(const Flags& f) { return torch::Device(f.device).is_cuda(); }

// Waits for queued GPU work, so that a timing covers it.
void synchronize(const Flags& f) {
  if (on_cuda(f)) {
    torch::cuda::synchronize();
  }
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Peak resident memory of this program. VmHWM in /proc/self/status starts
// afresh at exec, while ru_maxrss also counts the parent's resident memory
// at fork, which for a child of compare.py is the size of a Python process
// with torch loaded.
double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::stod(line.substr(6)) / 1024.0; // the value is in kB
    }
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0; // ru_maxrss is in KiB on Linux
}

// Times `run` and prints the JSON line; `images` is images per call.
void time_and_report(const Flags& f, int64_t images,
                     const std::function<void()>& run) {
  for (int64_t i = 0; i < f.warmup; ++i) {
    run();
  }
  synchronize(f);
  std::vector<double> seconds;
  for (int64_t i = 0; i < f.iters; ++i) {
    const auto start = Clock::now();
    run();
    synchronize(f);
    seconds.push_back(seconds_since(start));
  }
  if (!f.profile.empty()) {
    // One more iteration under the Kineto CPU profiler, saved as a Chrome
    // trace that benchmarks/profile_table.py summarizes by operator.
    namespace prof = torch::autograd::profiler;
    prof::prepareProfiler(
        torch::profiler::impl::ProfilerConfig(
            torch::profiler::impl::ProfilerState::KINETO),
        {torch::profiler::impl::ActivityType::CPU});
    prof::enableProfiler(
        torch::profiler::impl::ProfilerConfig(
            torch::profiler::impl::ProfilerState::KINETO,
            /*report_input_shapes=*/true),
        {torch::profiler::impl::ActivityType::CPU});
    run();
    prof::disableProfiler()->save(f.profile);
  }
  const double mid = median(seconds);
  std::string list;
  for (double s : seconds) {
    list += (list.empty() ? "" : ", ") + std::to_string(s);
  }
  std::printf("{\"impl\": \"cpp\", \"config\": \"%s\", \"task\": \"%s\", "
              "\"amp\": %s, \"precision\": \"%s\", \"device\": \"%s\", "
              "\"batch\": %lld, \"cuda_graphs\": %s, \"threads\": %d, "
              "\"median_s\": %.6f, \"images_per_s\": %.6f, "
              "\"peak_rss_mib\": %.3f, \"seconds\": [%s]}\n",
              f.config.c_str(), f.task.c_str(), f.amp ? "true" : "false",
              f.precision.c_str(), f.device.c_str(),
              static_cast<long long>(images),
              f.cuda_graphs ? "true" : "false", torch::get_num_threads(), mid,
              double(images) / mid, peak_rss_mib(), list.c_str());
}

ddpm::GaussianDiffusion make_diffusion(const Config& c) {
  return ddpm::GaussianDiffusion(
      ddpm::Unet(ddpm::UnetOptions(c.dim).dim_mults(c.dim_mults)
                     .channels(c.channels)),
      ddpm::GaussianDiffusionOptions(c.image_size)
          .timesteps(1000)
          .sampling_timesteps(c.sampling_timesteps));
}

void bench_train(const Flags& f, const Config& c) {
  // The Trainer lists a folder at construction; one image satisfies it,
  // and the timed steps take batches in memory.
  const auto folder =
      std::filesystem::temp_directory_path() /
      ("ddpm-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(folder / "images");
  ddpm::write_png((folder / "images" / "0.png").string(),
                  torch::rand({c.channels, c.image_size, c.image_size}));
  {
    ddpm::Trainer trainer(
        make_diffusion(c),
        ddpm::TrainerOptions((folder / "images").string())
            .train_batch_size(c.train_batch)
            .amp(f.precision != "fp32")
            .mixed_precision_type(f.precision == "fp16"
                                      ? ddpm::MixedPrecision::kFloat16
                                      : ddpm::MixedPrecision::kBFloat16)
            .device(torch::Device(f.device))
            .num_workers(0)
            .channels_last(f.channels_last)
            .fused_adam(f.fused_adam)
            .results_folder((folder / "results").string())
            .save_and_sample_every(1 << 30)
            .write_metrics(false));
    const auto batch =
        torch::rand({c.train_batch, c.channels, c.image_size, c.image_size});
    time_and_report(f, c.train_batch, [&] { trainer.train_step(batch); });
  }
  std::filesystem::remove_all(folder);
}

void bench_sample(const Flags& f, const Config& c) {
  auto diffusion = make_diffusion(c);
  diffusion->to(torch::Device(f.device));
  diffusion->eval();
  if (f.channels_last) {
    ddpm::set_memory_format(*diffusion, torch::MemoryFormat::ChannelsLast);
  }
  const int64_t batch = f.sample_batch > 0 ? f.sample_batch : c.sample_batch;
  const auto autocast_dtype =
      f.precision == "fp16" ? torch::kFloat16 : torch::kBFloat16;
  const auto device_type = torch::Device(f.device).type();
  std::unique_ptr<ddpm::CudaGraphSampler> graph;
  if (f.cuda_graphs) {
    ddpm::AutocastScope autocast(f.precision != "fp32", device_type,
                                 autocast_dtype);
    graph = std::make_unique<ddpm::CudaGraphSampler>(diffusion, batch);
    if (!graph->uses_graph()) {
      std::fprintf(stderr, "CUDA Graphs not used: %s\n",
                   graph->fallback_reason().c_str());
    }
  }
  time_and_report(f, batch, [&] {
    c10::InferenceMode inference;
    ddpm::AutocastScope autocast(f.precision != "fp32", device_type,
                                 autocast_dtype);
    if (graph) {
      graph->sample();
      return;
    }
    if (c.ddpm_steps == 0) {
      diffusion->sample(batch);
      return;
    }
    auto img = torch::randn({batch, c.channels, c.image_size, c.image_size},
                            torch::TensorOptions().device(f.device));
    for (int64_t t = 999; t > 999 - c.ddpm_steps; --t) {
      img = diffusion->p_sample(img, t).first;
    }
  });
}

void bench_matmul(const Flags& f) {
  const int64_t n = 2048;
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto a = torch::randn({n, n}).to(dtype);
    auto b = torch::randn({n, n}).to(dtype);
    for (int64_t i = 0; i < f.warmup; ++i) {
      torch::mm(a, b);
    }
    std::vector<double> seconds;
    for (int64_t i = 0; i < f.iters; ++i) {
      const auto start = Clock::now();
      torch::mm(a, b);
      seconds.push_back(seconds_since(start));
    }
    const double flops = 2.0 * double(n) * double(n) * double(n);
    std::printf("{\"impl\": \"cpp\", \"task\": \"matmul\", \"dtype\": "
                "\"%s\", \"n\": %lld, \"threads\": %d, \"gflops\": %.1f}\n",
                dtype == torch::kFloat32 ? "float32" : "bfloat16",
                static_cast<long long>(n), torch::get_num_threads(),
                flops / median(seconds) / 1e9);
  }
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times one training or sampling case of this library"};
  Flags f;
  app.add_option("--config", f.config, "Model and batch sizes: S, M or G")
      ->check(CLI::IsMember({"S", "M", "G"}))
      ->capture_default_str();
  app.add_option("--task", f.task, "train, sample or matmul")
      ->check(CLI::IsMember({"train", "sample", "matmul"}))
      ->capture_default_str();
  app.add_flag("--amp", f.amp, "bf16 autocast (same as --precision bf16)");
  app.add_option("--precision", f.precision,
                 "fp32, or autocast to bf16 or fp16 (fp16 trains with loss "
                 "scaling, CUDA only)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_option("--device", f.device, "Device, e.g. cpu or cuda:0")
      ->capture_default_str();
  app.add_option("--sample-batch", f.sample_batch,
                 "Images per sampling run (0: the configuration's)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--cuda-graphs", f.cuda_graphs,
               "Sample through a captured CUDA Graph (DDIM on CUDA)");
  app.add_option("--warmup", f.warmup, "Untimed iterations first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--iters", f.iters, "Timed iterations")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--threads", f.threads,
                 "Intra-op threads (0: LibTorch's default)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of weights and noise")
      ->capture_default_str();
  app.add_flag("--channels-last,!--no-channels-last", f.channels_last,
               "Convolution weights in channels-last format (default: on)");
  app.add_flag("--fused-adam,!--no-fused-adam", f.fused_adam,
               "Train with the fused Adam kernel (default: on)");
  app.add_flag("--retain-freed-memory,!--no-retain-freed-memory",
               f.retain_freed_memory,
               "Keep freed memory for reuse, as ddpm-train and ddpm-sample "
               "do (default: on)");
  app.add_option("--profile", f.profile,
                 "Profile one more iteration and write a Chrome trace here");
  CLI11_PARSE(app, argc, argv);

  if (f.retain_freed_memory) {
    ddpm::retain_freed_memory();
  }
  if (f.precision.empty()) {
    f.precision = f.amp ? "bf16" : "fp32";
  }
  f.amp = f.precision != "fp32";
  if (f.threads > 0) {
    torch::set_num_threads(int(f.threads));
  }
  torch::manual_seed(f.seed);
  ddpm::set_log_sink([](ddpm::LogLevel, const std::string&) {});
  const Config c = config_named(f.config);
  if (f.task == "train") {
    bench_train(f, c);
  } else if (f.task == "sample") {
    bench_sample(f, c);
  } else {
    bench_matmul(f);
  }
  return 0;
}
