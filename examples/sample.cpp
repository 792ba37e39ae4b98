// ddpm-sample: draws images from a checkpoint written by ddpm-train (or by
// the Python Trainer, given the same model flags).
//
//   ddpm-sample --checkpoint results/model-10.pt --output grid.png --seed 1

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "ddpm/allocator.h"
#include "ddpm/cuda_graph_sampler.h"
#include "ddpm/io/checkpoint.h"
#include "ddpm/io/image.h"
#include "ddpm/io/safetensors.h"
#include "model_flags.h"

namespace {

namespace fs = std::filesystem;

struct SampleFlags {
  std::string checkpoint;
  std::string weights = "ema";
  int64_t num_samples = 16;
  int64_t batch_size = 16;
  std::string output = "samples.png";
  std::string output_dir;
  std::string save_safetensors;
  uint64_t seed = 0;
  std::string device = "cpu";
  bool channels_last = true;
  bool retain_freed_memory = true;
  bool cuda_graphs = true;
  int64_t threads = 0;
  bool verbose = false;
};

// The value after `--checkpoint` (or in `--checkpoint=...`), when given.
std::string find_checkpoint_argument(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "--checkpoint" && i + 1 < argc) {
      return argv[i + 1];
    }
    if (argument.rfind("--checkpoint=", 0) == 0) {
      return argument.substr(13);
    }
  }
  return {};
}

ddpm::StateDict select_weights(const ddpm::Checkpoint& checkpoint,
                               const std::string& weights,
                               const std::string& path) {
  if (weights == "model") {
    return checkpoint.model;
  }
  const std::string prefix = "ema_model.";
  ddpm::StateDict state;
  for (const auto& item : checkpoint.ema) {
    if (item.key().rfind(prefix, 0) == 0) {
      state.insert(item.key().substr(prefix.size()), item.value());
    }
  }
  TORCH_CHECK(!state.is_empty(), "checkpoint \"", path,
              "\" has no EMA weights; use --weights model");
  return state;
}

// Checks where the images will go before spending time on sampling.
void check_output(const SampleFlags& flags) {
  std::error_code error;
  if (!flags.output_dir.empty()) {
    fs::create_directories(flags.output_dir, error);
    TORCH_CHECK(!error && fs::is_directory(flags.output_dir),
                "cannot create output folder \"", flags.output_dir, "\": ",
                error ? error.message() : "a file has that name");
    return;
  }
  auto folder = fs::path(flags.output).parent_path();
  if (folder.empty()) {
    folder = ".";
  }
  TORCH_CHECK(fs::is_directory(folder, error), "folder of --output \"",
              flags.output, "\" does not exist; create it first");
  TORCH_CHECK(!fs::is_directory(flags.output, error), "--output \"",
              flags.output, "\" is a folder; name a .png file, or use "
              "--output-dir for one PNG per image");
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"Draw images from a trained denoising diffusion model"};
  // Model flags come from the training run's config.toml beside the
  // checkpoint, unless --config names another file. Flags given on the
  // command line override the file.
  std::string default_config;
  const auto checkpoint_argument = find_checkpoint_argument(argc, argv);
  if (!checkpoint_argument.empty()) {
    const auto candidate =
        fs::path(checkpoint_argument).parent_path() / "config.toml";
    if (fs::exists(candidate)) {
      default_config = candidate.string();
    }
  }
  app.set_config("--config", default_config,
                 "TOML file with the model flags (default: config.toml "
                 "beside the checkpoint)");
  app.allow_config_extras(true);

  ddpm::cli::ModelFlags model_flags;
  SampleFlags flags;
  ddpm::cli::add_model_flags(app, model_flags);
  const std::string group = "Sampling";
  app.add_option("--checkpoint", flags.checkpoint,
                 "model-N.pt written by ddpm-train or the Python Trainer")
      ->required()->group(group)->check(CLI::ExistingFile);
  app.get_option("--checkpoint")
      ->description("model-N.pt written by ddpm-train or the Python Trainer, "
                    "or a .safetensors file of GaussianDiffusion weights");
  app.add_option("--weights", flags.weights,
                 "Weights to sample with: ema or model")
      ->capture_default_str()->group(group)
      ->check(CLI::IsMember({"ema", "model"}));
  app.add_option("--num-samples", flags.num_samples, "Images to draw")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--batch-size", flags.batch_size,
                 "Images denoised at once")
      ->capture_default_str()->group(group)->check(ddpm::cli::positive());
  app.add_option("--output", flags.output,
                 "Grid PNG to write, ceil(sqrt(num-samples)) images per row")
      ->capture_default_str()->group(group);
  app.add_option("--output-dir", flags.output_dir,
                 "Write one PNG per image (000000.png, ...) into this "
                 "folder instead of a grid")
      ->group(group);
  app.add_option("--save-safetensors", flags.save_safetensors,
                 "Also write the selected weights (state-dict keys of the "
                 "Python GaussianDiffusion) to this .safetensors file")
      ->group(group);
  app.add_option("--seed", flags.seed,
                 "Seed of the noise; the same seed and batch size give the "
                 "same images")
      ->capture_default_str()->group(group);
  ddpm::cli::add_channels_last_flag(app, flags.channels_last, group);
  ddpm::cli::add_retain_freed_memory_flag(app, flags.retain_freed_memory,
                                          group);
  app.add_flag("--cuda-graphs,!--no-cuda-graphs", flags.cuda_graphs,
               "On CUDA with the DDIM sampler, replay each denoising step "
               "from a captured CUDA Graph (default: on)")
      ->group(group);
  app.add_option("--device", flags.device, "Device, e.g. cpu or cuda:0")
      ->capture_default_str()->group(group);
  app.add_option("--threads", flags.threads,
                 "Threads for tensor operations (0: LibTorch's default)")
      ->capture_default_str()->group(group)->check(ddpm::cli::non_negative());
  app.add_flag("--verbose", flags.verbose, "Show informational messages")
      ->group(group);
  ddpm::cli::take_last_repeated_values(app);
  CLI11_PARSE(app, argc, argv);

  ddpm::cli::show_library_messages(flags.verbose);
  if (flags.retain_freed_memory) {
    ddpm::retain_freed_memory();
  }
  try {
    if (flags.threads > 0) {
      torch::set_num_threads(int(flags.threads));
    }
    check_output(flags);
    auto diffusion = ddpm::cli::make_diffusion(model_flags);
    const bool safetensors =
        fs::path(flags.checkpoint).extension() == ".safetensors";
    const auto weights = safetensors
        ? ddpm::load_safetensors(flags.checkpoint)
        : select_weights(ddpm::load_checkpoint(flags.checkpoint),
                         flags.weights, flags.checkpoint);
    ddpm::load_module_state_dict(*diffusion, weights,
                                 "checkpoint \"" + flags.checkpoint + "\"");
    if (!flags.save_safetensors.empty()) {
      ddpm::save_safetensors(weights, flags.save_safetensors,
                             {{"format", "pt"}});
    }
    const torch::Device device(flags.device);
    diffusion->to(device);
    diffusion->eval();
    if (flags.channels_last) {
      ddpm::set_memory_format(*diffusion, torch::MemoryFormat::ChannelsLast);
    }
    diffusion->set_sample_callback(ddpm::cli::sampling_progress_line(
        diffusion->is_ddim_sampling() ? "DDIM" : "DDPM"));

    torch::manual_seed(flags.seed);
    std::vector<torch::Tensor> batches;
    std::map<int64_t, std::unique_ptr<ddpm::CudaGraphSampler>> graphs;
    for (int64_t done = 0; done < flags.num_samples;) {
      const int64_t n = std::min(flags.batch_size, flags.num_samples - done);
      if (flags.cuda_graphs && device.is_cuda()) {
        // One graph per batch size: the last batch may be smaller.
        auto& sampler = graphs[n];
        if (!sampler) {
          sampler = std::make_unique<ddpm::CudaGraphSampler>(diffusion, n);
          if (!sampler->uses_graph()) {
            std::fprintf(stderr, "CUDA Graphs not used: %s\n",
                         sampler->fallback_reason().c_str());
          }
        }
        batches.push_back(sampler->sample().cpu());
      } else {
        batches.push_back(diffusion->sample(n).cpu());
      }
      done += n;
    }
    auto images = torch::cat(batches, 0);

    if (!flags.output_dir.empty()) {
      for (int64_t i = 0; i < images.size(0); ++i) {
        char name[32];
        std::snprintf(name, sizeof(name), "%06lld.png",
                      static_cast<long long>(i));
        ddpm::write_png((fs::path(flags.output_dir) / name).string(),
                        images[i]);
      }
      std::printf("wrote %lld images to %s\n",
                  static_cast<long long>(images.size(0)),
                  flags.output_dir.c_str());
    } else {
      const auto per_row = int64_t(
          std::ceil(std::sqrt(double(flags.num_samples))));
      ddpm::save_image_grid(images, flags.output, per_row);
      std::printf("wrote %s\n", flags.output.c_str());
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "\nddpm-sample: %s\n",
                 ddpm::cli::error_message(error).c_str());
    return 1;
  }
  return 0;
}
