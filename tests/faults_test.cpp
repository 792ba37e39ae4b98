// Faults during training: non-finite losses, a full disk, a results folder
// that disappears, and temporary files that a killed writer left behind.
// Each must stop training with a clear error and leave the last complete
// checkpoint readable.

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/io/checkpoint.h"
#include "ddpm/io/image.h"
#include "ddpm/log.h"
#include "ddpm/trainer.h"
#include "test_util.h"

namespace ddpm {
namespace {

namespace fs = std::filesystem;
using ddpm::testing::TemporaryFolder;

std::vector<std::string> temporary_files(const fs::path& folder) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const auto name = entry.path().filename().string();
    if (name.find(".tmp-") != std::string::npos) {
      names.push_back(name);
    }
  }
  return names;
}

// Restores a resource limit and the SIGXFSZ disposition on scope exit.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &previous_);
    previous_handler_ = signal(SIGXFSZ, SIG_IGN);
    rlimit limit = previous_;
    limit.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &previous_);
    signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit previous_{};
  sighandler_t previous_handler_ = SIG_DFL;
};

class FaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    previous_sink_ = set_log_sink(
        [this](LogLevel level, const std::string& message) {
          messages_.push_back(std::string(to_string(level)) + ": " + message);
        });
    for (int64_t i = 0; i < 8; ++i) {
      auto image = torch::zeros({1, 8, 8});
      image.select(2, i).fill_(1.0);
      write_png((data_.path() / ("bar" + std::to_string(i) + ".png")).string(),
                image);
    }
  }

  void TearDown() override { set_log_sink(previous_sink_); }

  Trainer make_trainer(const fs::path& results) const {
    return Trainer(
        GaussianDiffusion(
            Unet(UnetOptions(8).dim_mults({1, 2}).channels(1)),
            GaussianDiffusionOptions(8).timesteps(100).sampling_timesteps(2)),
        TrainerOptions(data_.str())
            .train_batch_size(8)
            .num_samples(1)
            .save_and_sample_every(2)
            .train_num_steps(4)
            .num_workers(0)
            .results_folder(results.string()));
  }

  TemporaryFolder data_;
  TemporaryFolder results_;
  std::vector<std::string> messages_;
  LogSink previous_sink_;
};

TEST_F(FaultsTest, NonFiniteLossStopsBeforeUpdate) {
  auto trainer = make_trainer(results_.path());
  trainer.train_step(torch::rand({8, 1, 8, 8}));
  std::vector<torch::Tensor> before;
  for (const auto& parameter : trainer.model()->parameters()) {
    before.push_back(parameter.detach().clone());
  }

  auto batch = torch::rand({8, 1, 8, 8});
  batch[3][0][2][2] = std::numeric_limits<float>::quiet_NaN();
  DDPM_EXPECT_THROW_WITH(trainer.train_step(batch),
                         "step 2: the loss is nan");
  EXPECT_EQ(trainer.step(), 1);
  const auto after = trainer.model()->parameters();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(torch::equal(after[i], before[i])) << "parameter " << i;
  }

  // Training goes on from the unchanged weights with finite data.
  EXPECT_TRUE(std::isfinite(trainer.train_step(torch::rand({8, 1, 8, 8}))));
}

TEST_F(FaultsTest, FullDiskKeepsLastCheckpoint) {
  auto trainer = make_trainer(results_.path());
  trainer.train_step();
  trainer.train_step();
  const auto first = trainer.save("1");
  const auto first_size = fs::file_size(first);

  {
    // A file size limit makes writes fail with EFBIG, as a full disk
    // makes them fail with ENOSPC, and needs no privileges.
    FileSizeLimit limit(4096);
    DDPM_EXPECT_THROW_WITH(trainer.save("2"), "failed to write");
  }
  EXPECT_FALSE(fs::exists(results_.path() / "model-2.pt"));
  EXPECT_TRUE(temporary_files(results_.path()).empty());
  EXPECT_EQ(fs::file_size(first), first_size);
  EXPECT_EQ(load_checkpoint(first).step, 2);
}

TEST_F(FaultsTest, FullDiskStopsTraining) {
  auto trainer = make_trainer(results_.path());
  {
    FileSizeLimit limit(4096);
    DDPM_EXPECT_THROW_WITH(trainer.train(), "failed to write");
  }
  // Sampling ran at step 2; its grid or its checkpoint failed to write.
  EXPECT_EQ(trainer.step(), 2);
  EXPECT_TRUE(temporary_files(results_.path()).empty());
  EXPECT_FALSE(fs::exists(results_.path() / "model-1.pt"));
}

TEST_F(FaultsTest, VanishedFolderKeepsLastCheckpoint) {
  const auto results = results_.path() / "run";
  auto trainer = make_trainer(results);
  trainer.train_step();
  trainer.train_step();
  trainer.save("1");

  // The folder moves away and a file takes its name: a write as root
  // fails as it would in a folder without write permission.
  const auto moved = results_.path() / "moved";
  fs::rename(results, moved);
  std::ofstream(results) << "not a folder";
  DDPM_EXPECT_THROW_WITH(trainer.save("2"), "model-2.pt");
  EXPECT_EQ(load_checkpoint((moved / "model-1.pt").string()).step, 2);
  EXPECT_TRUE(temporary_files(moved).empty());
}

TEST_F(FaultsTest, UnwritableFolderStopsSave) {
  if (geteuid() == 0) {
    GTEST_SKIP() << "root writes to folders without write permission";
  }
  auto trainer = make_trainer(results_.path());
  trainer.train_step();
  const auto first = trainer.save("1");
  fs::permissions(results_.path(), fs::perms::owner_read | fs::perms::owner_exec);
  DDPM_EXPECT_THROW_WITH(trainer.save("2"), "cannot create");
  fs::permissions(results_.path(), fs::perms::owner_all);
  EXPECT_EQ(load_checkpoint(first).step, 1);
}

TEST_F(FaultsTest, StaleTemporaryFilesRemoved) {
  // A process that has exited: its PID no longer runs.
  const pid_t child = fork();
  if (child == 0) {
    _exit(0);
  }
  ASSERT_GT(child, 0);
  waitpid(child, nullptr, 0);

  const auto dead = results_.path() / ("model-3.pt.tmp-" +
                                       std::to_string(child));
  const auto alive = results_.path() / ("model-4.pt.tmp-" +
                                        std::to_string(getpid()));
  const auto other = results_.path() / "notes.tmp-draft";
  for (const auto& path : {dead, alive, other}) {
    std::ofstream(path) << "partial";
  }

  make_trainer(results_.path());
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(alive));
  EXPECT_TRUE(fs::exists(other));
  const bool logged = std::any_of(
      messages_.begin(), messages_.end(), [&](const std::string& message) {
        return message.find(dead.filename().string()) != std::string::npos;
      });
  EXPECT_TRUE(logged);
}

} // namespace
} // namespace ddpm
