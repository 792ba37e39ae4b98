// Kills ddpm-train with SIGKILL at ten moments, half of them while a
// checkpoint or sample grid is being written, and resumes it each time.
// After every kill each complete checkpoint must load. At the end no
// temporary file may remain, and the weights must equal those of an
// uninterrupted run bit for bit.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/io/checkpoint.h"
#include "ddpm/io/image.h"
#include "test_util.h"

extern char** environ;

namespace ddpm {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using ddpm::testing::TemporaryFolder;

constexpr int kSteps = 2000;

const fs::path kTrainProgram =
    fs::path(DDPM_BINARY_DIR) / "examples" / "ddpm-train";

std::vector<std::string> train_arguments(const fs::path& data,
                                         const fs::path& results) {
  return {kTrainProgram.string(), "--folder", data.string(),
          "--results-folder", results.string(), "--image-size", "8",
          "--channels", "1", "--dim", "8", "--dim-mults", "1", "2",
          "--timesteps", "20", "--sampling-timesteps", "2",
          "--train-batch-size", "4", "--save-and-sample-every", "1",
          "--num-samples", "1", "--keep-last-checkpoints", "2",
          "--train-num-steps", std::to_string(kSteps), "--seed", "4",
          "--num-workers", "1", "--threads", "1"};
}

pid_t start(std::vector<std::string> arguments) {
  std::vector<char*> argv;
  for (auto& argument : arguments) {
    argv.push_back(argument.data());
  }
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int error = posix_spawn(&pid, argv[0], &actions, nullptr,
                                argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(error, 0) << "cannot start " << argv[0];
  return pid;
}

// Returns the exit status, or 128 + signal when a signal ended the process.
int wait_for(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

std::vector<fs::path> files_containing(const fs::path& folder,
                                       const std::string& part) {
  std::vector<fs::path> paths;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(folder, error)) {
    if (entry.path().filename().string().find(part) != std::string::npos) {
      paths.push_back(entry.path());
    }
  }
  return paths;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(KillTest, TenKillsLoseNoCheckpoint) {
  ASSERT_TRUE(fs::exists(kTrainProgram)) << kTrainProgram;
  TemporaryFolder data;
  TemporaryFolder work;
  for (int64_t i = 0; i < 16; ++i) {
    write_png((data.path() / (std::to_string(i) + ".png")).string(),
              torch::rand({1, 8, 8}));
  }

  const auto straight = work.path() / "straight";
  ASSERT_EQ(wait_for(start(train_arguments(data.path(), straight))), 0);

  const auto killed = work.path() / "killed";
  std::mt19937 random(7);
  std::uniform_int_distribution<int> delay_ms(1000, 2500);
  int kills_during_writes = 0;
  // Ten kills, every other one aimed at a checkpoint write. A kill can land
  // just after the rename it aimed at, so up to 20 more kills aimed at writes
  // follow until 5 have landed during one.
  for (int kill = 0; kill < 10 || (kills_during_writes < 5 && kill < 30);
       ++kill) {
    auto arguments = train_arguments(data.path(), killed);
    if (!files_containing(killed, "model-").empty()) {
      arguments.insert(arguments.end(), {"--resume", "latest"});
    }
    const pid_t pid = start(arguments);
    const bool during_write = kill % 2 == 1 || kill >= 10;
    const auto deadline =
        Clock::now() + std::chrono::milliseconds(delay_ms(random));
    if (during_write) {
      // Kill as soon as a temporary file shows that a write is under way.
      const auto give_up = Clock::now() + std::chrono::seconds(60);
      while (files_containing(killed, ".tmp-").empty() &&
             Clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    } else {
      std::this_thread::sleep_for(deadline - Clock::now());
    }
    ::kill(pid, SIGKILL);
    ASSERT_EQ(wait_for(pid), 128 + SIGKILL)
        << "ddpm-train ended before kill " << kill + 1
        << "; raise kSteps";
    if (!files_containing(killed, ".tmp-").empty()) {
      ++kills_during_writes;
    }
    for (const auto& checkpoint : files_containing(killed, "model-")) {
      if (checkpoint.extension() == ".pt") {
        EXPECT_NO_THROW(load_checkpoint(checkpoint.string()))
            << "kill " << kill + 1 << " left " << checkpoint;
      }
    }
  }
  EXPECT_GE(kills_during_writes, 5);

  ASSERT_EQ(wait_for(start([&] {
              auto arguments = train_arguments(data.path(), killed);
              arguments.insert(arguments.end(), {"--resume", "latest"});
              return arguments;
            }())),
            0);
  EXPECT_TRUE(files_containing(killed, ".tmp-").empty());
  const auto name = "model-" + std::to_string(kSteps) + ".pt";
  const auto expected = load_checkpoint((straight / name).string());
  const auto actual = load_checkpoint((killed / name).string());
  EXPECT_EQ(actual.step, kSteps);
  for (const auto& item : expected.model) {
    const auto* value = actual.model.find(item.key());
    ASSERT_NE(value, nullptr) << item.key();
    EXPECT_TRUE(torch::equal(*value, item.value())) << item.key();
  }
}

} // namespace
} // namespace ddpm
