#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/fused_adam.h"
#include "ddpm/io/image.h"
#include "ddpm/log.h"
#include "ddpm/trainer.h"
#include "test_util.h"

namespace ddpm {
namespace {

namespace fs = std::filesystem;
using ddpm::testing::TemporaryFolder;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    previous_sink_ = set_log_sink(
        [this](LogLevel level, const std::string& message) {
          if (level == LogLevel::kWarning) {
            warnings_.push_back(message);
          }
        });
    // Eight 8x8 grayscale images: bars at different positions.
    fs::create_directories(data_.path() / "nested");
    for (int64_t i = 0; i < 8; ++i) {
      auto image = torch::zeros({1, 8, 8});
      image.select(2, i).fill_(1.0);
      image.select(1, (i + 3) % 8).fill_(0.5);
      const auto folder = i % 2 ? data_.path() / "nested" : data_.path();
      write_png((folder / ("bar" + std::to_string(i) + ".png")).string(),
                image);
    }
  }

  void TearDown() override { set_log_sink(previous_sink_); }

  static GaussianDiffusion small_diffusion(int64_t dim = 8) {
    return GaussianDiffusion(
        Unet(UnetOptions(dim).dim_mults({1, 2}).channels(1)),
        GaussianDiffusionOptions(8).timesteps(100).sampling_timesteps(5));
  }

  TrainerOptions small_options() const {
    return TrainerOptions(data_.str())
        .train_batch_size(8)
        .train_lr(1e-3)
        .num_samples(4)
        .save_and_sample_every(1000)
        .results_folder(results_.str())
        .num_workers(1);
  }

  TemporaryFolder data_;
  TemporaryFolder results_;
  std::vector<std::string> warnings_;
  LogSink previous_sink_;
};

TEST_F(TrainerTest, LossFallsWhileOverfitting) {
  Trainer trainer(small_diffusion(),
                  small_options().augment_horizontal_flip(false));
  // The loss on all eight images at fixed times and noise, before and after
  // training, so that the random draws of training do not blur the result.
  std::vector<torch::Tensor> images;
  for (int64_t i = 0; i < trainer.dataset()->size(); ++i) {
    images.push_back(trainer.dataset()->get(i).to(torch::kFloat32) / 255);
  }
  auto batch = torch::stack(images);
  auto times = torch::arange(5, 100, 12, torch::kLong);
  auto noise = torch::randn_like(batch);
  auto evaluate = [&] {
    torch::NoGradGuard no_grad;
    return trainer.model()->loss(batch, times, noise).item<double>();
  };

  const double before = evaluate();
  for (int i = 0; i < 150; ++i) {
    trainer.train_step();
  }
  const double after = evaluate();
  EXPECT_LT(after, 0.7 * before) << "before " << before << ", after " << after;
  EXPECT_EQ(trainer.step(), 150);
}

TEST_F(TrainerTest, WritesGridAndCheckpointEverySaveInterval) {
  Trainer trainer(small_diffusion(),
                  small_options().save_and_sample_every(2).train_num_steps(4));
  std::vector<std::string> saved;
  trainer.set_progress_callback([&](const TrainProgress& progress) {
    EXPECT_GT(progress.steps_per_second, 0.0);
    EXPECT_GE(progress.data_wait_seconds, 0.0);
    if (progress.checkpoint_path) {
      saved.push_back(*progress.checkpoint_path);
    }
  });
  trainer.train();
  EXPECT_EQ(saved.size(), 2u);
  for (const char* name :
       {"model-1.pt", "model-2.pt", "sample-1.png", "sample-2.png"}) {
    EXPECT_TRUE(fs::exists(results_.path() / name)) << name;
  }
  // 4 samples: a 2 x 2 grid of 8 x 8 images with 2 pixels of padding.
  auto grid = decode_image((results_.path() / "sample-2.png").string(), 1);
  EXPECT_EQ(grid.height, 2 * (8 + 2) + 2);
  EXPECT_EQ(grid.width, 2 * (8 + 2) + 2);
}

TEST_F(TrainerTest, LoadRestoresEveryPart) {
  Trainer trainer(small_diffusion(), small_options());
  for (int i = 0; i < 12; ++i) {
    trainer.train_step();
  }
  trainer.save("7");

  torch::manual_seed(99);
  Trainer resumed(small_diffusion(), small_options());
  resumed.load("7");
  EXPECT_EQ(resumed.step(), 12);
  auto original = trainer.model()->named_parameters();
  for (const auto& item : resumed.model()->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), original[item.key()]))
        << item.key();
  }
  auto ema = trainer.ema_model()->named_parameters();
  for (const auto& item : resumed.ema_model()->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), ema[item.key()])) << item.key();
  }
  EXPECT_EQ(resumed.ema().step(), trainer.ema().step());
  auto& state = resumed.optimizer().state();
  EXPECT_EQ(state.size(), trainer.optimizer().state().size());
  const auto& first = resumed.optimizer().param_groups()[0].params()[0];
  const auto& adam = static_cast<const torch::optim::AdamParamState&>(
      *state.at(first.unsafeGetTensorImpl()));
  EXPECT_EQ(adam.step(), 12);
}

TEST_F(TrainerTest, ResumeIsBitwiseExact) {
  auto options = small_options().train_num_steps(6).save_and_sample_every(3);
  torch::manual_seed(1);
  Trainer uninterrupted(small_diffusion(), options);
  uninterrupted.train();

  torch::manual_seed(2); // a different initialisation, replaced by load()
  Trainer resumed(small_diffusion(), options);
  resumed.load("1");
  EXPECT_EQ(resumed.step(), 3);
  resumed.train();

  auto expected = uninterrupted.model()->named_parameters();
  for (const auto& item : resumed.model()->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), expected[item.key()]))
        << item.key();
  }
  auto expected_ema = uninterrupted.ema_model()->named_parameters();
  for (const auto& item : resumed.ema_model()->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), expected_ema[item.key()]))
        << item.key();
  }
}

TEST_F(TrainerTest, ResumesPythonTrainerCheckpoint) {
  // model-1.pt written by the Python Trainer.save after 3 steps (see
  // tests/fixtures/generate.py): an OrderedDict state dict, Adam state with
  // tensor steps, the EMA with its online copy, and no scaler.
  GaussianDiffusion diffusion(
      Unet(UnetOptions(8).dim_mults({1, 2}).channels(1).attn_dim_head({8})),
      GaussianDiffusionOptions(8).timesteps(20).sampling_timesteps(4));
  Trainer trainer(diffusion, small_options());
  fs::copy_file(ddpm::testing::fixture_path("python_trainer_model-1.pt"),
                results_.path() / "model-1.pt");
  trainer.load("1");

  auto expected =
      ddpm::testing::load_fixture("python_trainer_expected.pt")
          .toGenericDict();
  EXPECT_EQ(trainer.step(), expected.at("step").toInt());
  EXPECT_EQ(trainer.ema().step(), 3);
  const auto& first = trainer.optimizer().param_groups()[0].params()[0];
  const auto& adam = static_cast<const torch::optim::AdamParamState&>(
      *trainer.optimizer().state().at(first.unsafeGetTensorImpl()));
  EXPECT_EQ(adam.step(), 3);

  // The EMA weights sample what Python sampled from the same seed.
  torch::manual_seed(expected.at("seed").toInt());
  auto samples = trainer.ema_model()->sample(2);
  const double difference =
      (samples - expected.at("samples").toTensor()).abs().max().item<double>();
  EXPECT_LE(difference, 1e-4);

  // Training continues from there.
  EXPECT_TRUE(std::isfinite(trainer.train_step()));
  EXPECT_EQ(trainer.step(), 4);
}

TEST_F(TrainerTest, MismatchedCheckpointNamesKeyAndShapes) {
  {
    Trainer trainer(small_diffusion(8), small_options());
    trainer.save("1");
  }
  Trainer other(small_diffusion(16), small_options());
  DDPM_EXPECT_THROW_WITH(other.load("1"),
                         "has \"model.init_conv.weight\" with shape [8, 1, 7, "
                         "7], the model expects [16, 1, 7, 7]");
}

TEST_F(TrainerTest, BfloatAutocastStepStaysFinite) {
  Trainer trainer(small_diffusion(), small_options().amp(true));
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(std::isfinite(trainer.train_step()));
  }
  for (const auto& parameter : trainer.model()->parameters()) {
    EXPECT_EQ(parameter.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(parameter).all().item<bool>());
  }
}

TEST_F(TrainerTest, LearningRateSchedules) {
  auto options = small_options().train_lr(1e-3).train_num_steps(11);
  Trainer constant(small_diffusion(), options);
  EXPECT_DOUBLE_EQ(constant.learning_rate_at(0), 1e-3);

  Trainer warmup(small_diffusion(), options.lr_schedule(LrSchedule::kWarmup)
                                        .lr_warmup_steps(4));
  EXPECT_DOUBLE_EQ(warmup.learning_rate_at(0), 0.25e-3);
  EXPECT_DOUBLE_EQ(warmup.learning_rate_at(3), 1e-3);
  EXPECT_DOUBLE_EQ(warmup.learning_rate_at(9), 1e-3);

  // Warm-up over 4 steps, then cosine from step 4 to the last step, 10.
  Trainer cosine(small_diffusion(), options.lr_schedule(LrSchedule::kCosine)
                                        .lr_warmup_steps(4)
                                        .lr_min(1e-4));
  EXPECT_DOUBLE_EQ(cosine.learning_rate_at(1), 0.5e-3);
  EXPECT_DOUBLE_EQ(cosine.learning_rate_at(4), 1e-3);
  EXPECT_NEAR(cosine.learning_rate_at(7), 1e-4 + 0.5 * 9e-4, 1e-12);
  EXPECT_NEAR(cosine.learning_rate_at(10), 1e-4, 1e-12);

  // The optimizer runs with the scheduled rate.
  cosine.train_step();
  const auto& group = cosine.optimizer().param_groups()[0];
  EXPECT_DOUBLE_EQ(group.options().get_lr(), 0.25e-3);
  DDPM_EXPECT_THROW_WITH(
      Trainer(small_diffusion(), small_options().lr_min(1.0)),
      "lr_min must be in [0, train_lr = 0.001], got 1");
}

TEST_F(TrainerTest, KeepsLastCheckpointsAndLoadsLatest) {
  Trainer trainer(small_diffusion(), small_options()
                                         .save_and_sample_every(1)
                                         .train_num_steps(5)
                                         .keep_last_checkpoints(2));
  trainer.train();
  for (int i = 1; i <= 5; ++i) {
    EXPECT_EQ(fs::exists(results_.path() /
                         ("model-" + std::to_string(i) + ".pt")),
              i >= 4)
        << i;
  }
  Trainer resumed(small_diffusion(), small_options());
  resumed.load("latest");
  EXPECT_EQ(resumed.step(), 5);

  TemporaryFolder empty;
  Trainer fresh(small_diffusion(), small_options().results_folder(empty.str()));
  DDPM_EXPECT_THROW_WITH(fresh.load("latest"), "no model-N.pt in");
}

TEST_F(TrainerTest, SavesBestAndLatestOnly) {
  Trainer trainer(small_diffusion(), small_options()
                                         .save_and_sample_every(2)
                                         .train_num_steps(6)
                                         .save_best_and_latest_only(true));
  std::vector<std::string> saved;
  trainer.set_progress_callback([&](const TrainProgress& progress) {
    if (progress.checkpoint_path) {
      saved.push_back(fs::path(*progress.checkpoint_path).filename());
    }
  });
  trainer.train();
  EXPECT_EQ(saved, std::vector<std::string>(3, "model-latest.pt"));
  EXPECT_TRUE(fs::exists(results_.path() / "model-best.pt"));
  EXPECT_FALSE(fs::exists(results_.path() / "model-1.pt"));
  Trainer resumed(small_diffusion(), small_options());
  resumed.load("latest");
  EXPECT_EQ(resumed.step(), 6);
}

TEST_F(TrainerTest, MetricsFileHasOneLinePerStep) {
  Trainer trainer(small_diffusion(), small_options().train_num_steps(3));
  trainer.train();
  std::ifstream file(results_.path() / "metrics.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(file, line);) {
    lines.push_back(line);
  }
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2].rfind("{\"step\": 3, \"loss\": ", 0), 0u) << lines[2];
  for (const char* key : {"\"lr\": 0.001,", "\"grad_norm\": ",
                          "\"steps_per_second\": ", "\"data_wait_seconds\": ",
                          "\"ema_decay\": "}) {
    EXPECT_NE(lines[2].find(key), std::string::npos) << key;
  }
}

TEST_F(TrainerTest, TrainsOnGivenBatch) {
  Trainer trainer(small_diffusion(),
                  small_options().gradient_accumulate_every(2));
  const double loss = trainer.train_step(torch::rand({4, 1, 8, 8}));
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_EQ(trainer.step(), 1);
  DDPM_EXPECT_THROW_WITH(trainer.train_step(torch::rand({3, 1, 8, 8})),
                         "B divisible by gradient_accumulate_every = 2, got "
                         "[3, 1, 8, 8]");
}

// The fused Adam kernel and LibTorch's Adam give the same weights, here
// with two micro-batches per step, whose losses are summed on the device.
TEST_F(TrainerTest, FusedAdamMatchesPlainAdam) {
  const auto batch = torch::rand({4, 1, 8, 8});
  std::vector<std::vector<torch::Tensor>> weights;
  std::vector<double> losses;
  for (bool fused : {true, false}) {
    torch::manual_seed(5);
    Trainer trainer(small_diffusion(), small_options()
                                           .gradient_accumulate_every(2)
                                           .fused_adam(fused));
    EXPECT_EQ(dynamic_cast<FusedAdam*>(&trainer.optimizer()) != nullptr,
              fused);
    for (int step = 0; step < 3; ++step) {
      losses.push_back(trainer.train_step(batch));
    }
    weights.push_back(trainer.model()->parameters());
  }
  for (int step = 0; step < 3; ++step) {
    EXPECT_NEAR(losses[step], losses[step + 3], 1e-5) << "step " << step;
  }
  for (size_t i = 0; i < weights[0].size(); ++i) {
    EXPECT_LE((weights[0][i] - weights[1][i]).abs().max().item<double>(),
              1e-5)
        << "parameter " << i;
  }
}

TEST_F(TrainerTest, RejectsNonSquareNumSamples) {
  DDPM_EXPECT_THROW_WITH(Trainer(small_diffusion(),
                                 small_options().num_samples(24)),
                         "num_samples must be a perfect square");
}

TEST_F(TrainerTest, RejectsEachInvalidOption) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<TrainerOptions, std::string>> cases = {
      {small_options().train_batch_size(0),
       "train_batch_size must be at least 1, got 0"},
      {small_options().gradient_accumulate_every(-1),
       "gradient_accumulate_every must be at least 1, got -1"},
      {small_options().train_lr(0), "train_lr must be positive and finite, got 0"},
      {small_options().train_lr(-1e-4),
       "train_lr must be positive and finite, got -0.0001"},
      {small_options().train_lr(inf),
       "train_lr must be positive and finite, got inf"},
      {small_options().train_num_steps(-1),
       "train_num_steps must be non-negative, got -1"},
      {small_options().save_and_sample_every(0),
       "save_and_sample_every must be at least 1, got 0"},
      {small_options().num_samples(0),
       "num_samples must be a perfect square (the grid has "
       "sqrt(num_samples) images per row), got 0"},
      {small_options().ema_decay(1.01), "ema_decay must be in [0, 1], got 1.01"},
      {small_options().ema_decay(nan), "ema_decay must be in [0, 1], got nan"},
      {small_options().ema_update_every(0),
       "ema_update_every must be at least 1, got 0"},
      {small_options().adam_betas({0.9, 1.0}),
       "adam_betas must be in [0, 1), got (0.9, 1)"},
      {small_options().max_grad_norm(-1),
       "max_grad_norm must be non-negative, got -1"},
      {small_options().num_workers(-1),
       "num_workers must be non-negative, got -1"},
      {small_options().prefetch(0), "prefetch must be at least 1, got 0"},
      {small_options().cache_max_bytes(-1),
       "cache_max_bytes must be non-negative, got -1"},
      {small_options().max_image_pixels(0),
       "max_image_pixels must be at least 1, got 0"},
      {small_options().lr_warmup_steps(-1),
       "lr_warmup_steps must be non-negative, got -1"},
      {small_options().lr_min(1.0), "lr_min must be in [0, train_lr = 0.001], got 1"},
      {small_options().keep_last_checkpoints(-2),
       "keep_last_checkpoints must be non-negative, got -2"},
  };
  for (const auto& [options, message] : cases) {
    SCOPED_TRACE(message);
    DDPM_EXPECT_THROW_WITH(Trainer(small_diffusion(), options), message);
  }
  DDPM_EXPECT_THROW_WITH(lr_schedule_from_string("linear"),
                         "unknown learning-rate schedule \"linear\"");
  DDPM_EXPECT_THROW_WITH(mixed_precision_from_string("fp8"),
                         "unknown mixed precision type \"fp8\"");
}

TEST_F(TrainerTest, RejectsUnwritableResultsFolder) {
  const auto blocker = results_.path() / "file";
  std::ofstream(blocker) << "x";
  const auto folder = (blocker / "results").string();
  DDPM_EXPECT_THROW_WITH(
      Trainer(small_diffusion(), small_options().results_folder(folder)),
      "cannot create results folder \"" + folder + "\"");
}

TEST_F(TrainerTest, RejectsMissingOrEmptyFolder) {
  const auto missing = (data_.path() / "missing").string();
  DDPM_EXPECT_THROW_WITH(
      Trainer(small_diffusion(), TrainerOptions(missing)
                                     .results_folder(results_.str())),
      missing);
  TemporaryFolder empty;
  DDPM_EXPECT_THROW_WITH(
      Trainer(small_diffusion(),
              TrainerOptions(empty.str()).results_folder(results_.str())),
      "no images found");
}

TEST_F(TrainerTest, WarnsAboutSmallFolderAndBatch) {
  Trainer trainer(small_diffusion(), small_options());
  bool folder_warning = false, batch_warning = false;
  for (const auto& warning : warnings_) {
    folder_warning |= warning.find("only 8 images") != std::string::npos;
    batch_warning |= warning.find("effective batch size") != std::string::npos;
  }
  EXPECT_TRUE(folder_warning);
  EXPECT_TRUE(batch_warning);
}

} // namespace
} // namespace ddpm
