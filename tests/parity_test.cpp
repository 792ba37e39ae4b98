// Compares the library with the Python package on the same weights, inputs
// and random seeds. The fixtures come from tests/fixtures/generate.py; each
// comparison prints its largest difference, which docs/PARITY.md collects.

#include <cstdio>
#include <filesystem>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ddpm/gaussian_diffusion.h"
#include "ddpm/io/checkpoint.h"
#include "test_util.h"

namespace ddpm {
namespace {

using c10::IValue;
using ddpm::testing::load_fixture;
using GenericDict = c10::impl::GenericDict;

// ~~~ Reading Python values ~~~

// Python ints and tuples or lists of ints (cast_tuple accepts both).
std::vector<int64_t> int_list(const IValue& value) {
  std::vector<int64_t> values;
  if (value.isInt()) {
    values.push_back(value.toInt());
  } else if (value.isTuple()) {
    for (const auto& element : value.toTupleRef().elements()) {
      values.push_back(element.toInt());
    }
  } else {
    for (const auto& element : value.toList()) {
      values.push_back(IValue(element).toInt());
    }
  }
  return values;
}

std::vector<bool> bool_list(const IValue& value) {
  std::vector<bool> values;
  for (const auto& element : value.toTupleRef().elements()) {
    values.push_back(element.toBool());
  }
  return values;
}

double number(const IValue& value) {
  return value.isDouble() ? value.toDouble() : double(value.toInt());
}

UnetOptions unet_options(const GenericDict& kwargs) {
  UnetOptions options(kwargs.at("dim").toInt());
  for (const auto& entry : kwargs) {
    const auto& key = entry.key().toStringRef();
    const IValue value = entry.value();
    if (key == "dim") {
      continue;
    } else if (key == "dim_mults") {
      options.dim_mults(int_list(value));
    } else if (key == "channels") {
      options.channels(value.toInt());
    } else if (key == "init_dim") {
      options.init_dim(value.toInt());
    } else if (key == "out_dim") {
      options.out_dim(value.toInt());
    } else if (key == "self_condition") {
      options.self_condition(value.toBool());
    } else if (key == "learned_variance") {
      options.learned_variance(value.toBool());
    } else if (key == "learned_sinusoidal_cond") {
      options.learned_sinusoidal_cond(value.toBool());
    } else if (key == "random_fourier_features") {
      options.random_fourier_features(value.toBool());
    } else if (key == "learned_sinusoidal_dim") {
      options.learned_sinusoidal_dim(value.toInt());
    } else if (key == "sinusoidal_pos_emb_theta") {
      options.sinusoidal_pos_emb_theta(number(value));
    } else if (key == "dropout") {
      options.dropout(number(value));
    } else if (key == "attn_dim_head") {
      options.attn_dim_head(int_list(value));
    } else if (key == "attn_heads") {
      options.attn_heads(int_list(value));
    } else if (key == "full_attn") {
      options.full_attn(bool_list(value));
    } else if (key == "flash_attn") {
      options.flash_attn(value.toBool());
    } else {
      ADD_FAILURE() << "unknown Unet keyword " << key;
    }
  }
  return options;
}

GaussianDiffusionOptions diffusion_options(const GenericDict& kwargs) {
  GaussianDiffusionOptions options(kwargs.at("image_size").toInt());
  for (const auto& entry : kwargs) {
    const auto& key = entry.key().toStringRef();
    const IValue value = entry.value();
    if (key == "image_size") {
      continue;
    } else if (key == "timesteps") {
      options.timesteps(value.toInt());
    } else if (key == "sampling_timesteps") {
      options.sampling_timesteps(value.toInt());
    } else if (key == "objective") {
      options.objective(objective_from_string(value.toStringRef()));
    } else if (key == "beta_schedule") {
      options.beta_schedule(beta_schedule_from_string(value.toStringRef()));
    } else if (key == "schedule_fn_kwargs") {
      BetaScheduleArgs args;
      for (const auto& item : value.toGenericDict()) {
        const auto& name = item.key().toStringRef();
        const double v = number(item.value());
        if (name == "s") {
          args.s = v;
        } else if (name == "start") {
          args.start = v;
        } else if (name == "end") {
          args.end = v;
        } else if (name == "tau") {
          args.tau = v;
        } else {
          ADD_FAILURE() << "unknown schedule argument " << name;
        }
      }
      options.schedule_fn_kwargs(args);
    } else if (key == "ddim_sampling_eta") {
      options.ddim_sampling_eta(number(value));
    } else if (key == "auto_normalize") {
      options.auto_normalize(value.toBool());
    } else if (key == "offset_noise_strength") {
      options.offset_noise_strength(number(value));
    } else if (key == "min_snr_loss_weight") {
      options.min_snr_loss_weight(value.toBool());
    } else if (key == "min_snr_gamma") {
      options.min_snr_gamma(number(value));
    } else {
      ADD_FAILURE() << "unknown GaussianDiffusion keyword " << key;
    }
  }
  return options;
}

StateDict state_dict(const IValue& value) {
  StateDict state;
  for (const auto& entry : value.toGenericDict()) {
    state.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return state;
}

// Prints and checks the largest absolute difference.
void expect_close(const std::string& name, const torch::Tensor& actual,
                  const torch::Tensor& expected, double tolerance) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << name;
  const double difference =
      (actual.to(torch::kFloat64) - expected.to(torch::kFloat64))
          .abs()
          .max()
          .item<double>();
  std::printf("parity %s: max_abs_diff=%.3g tolerance=%.3g\n", name.c_str(),
              difference, tolerance);
  EXPECT_LE(difference, tolerance) << name;
}

// A diffusion around the fixture's Unet of the given name with its
// weights, in eval mode.
GaussianDiffusion diffusion_from(const GenericDict& record,
                                 const std::string& unet,
                                 const GenericDict& kwargs) {
  auto unet_kwargs = record.at("unet_kwargs").toGenericDict();
  Unet model(unet_options(unet_kwargs.at(unet).toGenericDict()));
  load_module_state_dict(
      *model, state_dict(record.at("unets").toGenericDict().at(unet)),
      "Unet " + unet);
  GaussianDiffusion diffusion(model, diffusion_options(kwargs));
  diffusion->eval();
  return diffusion;
}

// ~~~ Unet ~~~

TEST(ParityTest, UnetOutputsMatchPython) {
  const std::filesystem::path folder = ddpm::testing::fixture_path("");
  int cases = 0;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const auto file = entry.path().filename().string();
    if (file.rfind("unet_", 0) != 0) {
      continue;
    }
    SCOPED_TRACE(file);
    ++cases;
    auto record = load_fixture(file).toGenericDict();
    Unet unet(unet_options(record.at("kwargs").toGenericDict()));
    unet->eval();
    // Every key used, none left over, shapes equal.
    load_module_state_dict(*unet, state_dict(record.at("state")), file);

    torch::NoGradGuard no_grad;
    auto x = record.at("x").toTensor();
    auto time = record.at("time").toTensor();
    torch::Tensor self_cond;
    if (record.contains("x_self_cond")) {
      self_cond = record.at("x_self_cond").toTensor();
    }
    expect_close("unet/" + file.substr(5, file.size() - 8),
                 unet(x, time, self_cond), record.at("out").toTensor(),
                 1e-5);
  }
  EXPECT_GE(cases, 10);
}

// ~~~ GaussianDiffusion ~~~

TEST(ParityTest, ScheduleBuffersMatchPython) {
  auto record = load_fixture("diffusion_schedules.pt").toGenericDict();
  Unet unet(unet_options(record.at("unet_kwargs").toGenericDict()));
  for (const auto& value : record.at("cases").toList()) {
    auto item = IValue(value).toGenericDict();
    const auto name = item.at("name").toStringRef();
    SCOPED_TRACE(name);
    GaussianDiffusion diffusion(
        unet, diffusion_options(item.at("kwargs").toGenericDict()));
    auto buffers = diffusion->named_buffers();
    double worst = 0;
    for (const auto& buffer : item.at("buffers").toGenericDict()) {
      const auto& key = buffer.key().toStringRef();
      auto expected = buffer.value().toTensor().to(torch::kFloat64);
      auto actual = buffers[key].to(torch::kFloat64);
      ASSERT_EQ(actual.sizes(), expected.sizes()) << key;
      // Relative to each entry's magnitude; exact zeros must stay zero.
      auto relative = (actual - expected).abs() /
          expected.abs().clamp_min(1e-30);
      const double difference = relative.max().item<double>();
      worst = std::max(worst, difference);
      EXPECT_LE(difference, 1e-7) << key;
    }
    std::printf("parity schedule/%s: max_rel_diff=%.3g tolerance=1e-07\n",
                name.c_str(), worst);
  }
}

TEST(ParityTest, TrainingLossesMatchPython) {
  auto record = load_fixture("diffusion_losses.pt").toGenericDict();
  auto images = record.at("images").toTensor();
  auto times = record.at("times").toTensor();
  auto noise = record.at("noise").toTensor();
  int cases = 0;
  for (const auto& value : record.at("cases").toList()) {
    auto item = IValue(value).toGenericDict();
    const auto name = item.at("name").toStringRef();
    SCOPED_TRACE(name);
    ++cases;
    auto kwargs = diffusion_options(item.at("kwargs").toGenericDict());
    kwargs.loss_type(loss_type_from_string(item.at("loss_type").toStringRef()));
    auto unet_kwargs = record.at("unet_kwargs").toGenericDict();
    const auto unet_name = item.at("unet").toStringRef();
    Unet unet(unet_options(unet_kwargs.at(unet_name).toGenericDict()));
    load_module_state_dict(
        *unet, state_dict(record.at("unets").toGenericDict().at(unet_name)));
    GaussianDiffusion diffusion(unet, kwargs);

    std::optional<bool> self_condition;
    if (!item.at("self_condition").isNone()) {
      self_condition = item.at("self_condition").toBool();
    }
    torch::NoGradGuard no_grad;
    // The offset noise is the first draw after the seed on both sides.
    torch::manual_seed(item.at("seed").toInt());
    auto loss = diffusion->p_losses(diffusion->normalize(images), times,
                                    noise, {}, self_condition);
    // Relative: with min-SNR off, pred_x0 and self-conditioned pred_noise
    // weight early times by up to 1e4, which scales float32 rounding.
    auto expected = item.at("loss").toTensor();
    const double scale = std::max(1.0, expected.abs().item<double>());
    const double difference = (loss - expected).abs().item<double>() / scale;
    std::printf("parity loss/%s: max_rel_diff=%.3g tolerance=1e-06\n",
                name.c_str(), difference);
    EXPECT_LE(difference, 1e-6);
  }
  EXPECT_EQ(cases, 36);
}

TEST(ParityTest, SamplerStepsMatchPython) {
  auto record = load_fixture("diffusion_steps.pt").toGenericDict();
  auto x = record.at("x").toTensor();
  auto self_cond_input = record.at("x_self_cond").toTensor();
  int cases = 0;
  for (const auto& value : record.at("cases").toList()) {
    auto item = IValue(value).toGenericDict();
    const auto name = item.at("name").toStringRef();
    SCOPED_TRACE(name);
    ++cases;
    const auto unet = item.at("unet").toStringRef();
    auto diffusion =
        diffusion_from(record, unet, item.at("kwargs").toGenericDict());
    auto self_cond = unet == "plain" ? torch::Tensor() : self_cond_input;
    const int64_t time = item.at("time").toInt();

    torch::manual_seed(item.at("seed").toInt());
    std::pair<torch::Tensor, torch::Tensor> result;
    if (item.at("kind").toStringRef() == "ddpm") {
      result = diffusion->p_sample(x, time, self_cond);
    } else {
      result = diffusion->ddim_step(x, time, item.at("time_next").toInt(),
                                    self_cond);
    }
    expect_close("step/" + name + "/img", result.first,
                 item.at("img").toTensor(), 1e-5);
    expect_close("step/" + name + "/x_start", result.second,
                 item.at("x_start").toTensor(), 1e-5);
  }
  EXPECT_EQ(cases, 30);
}

TEST(ParityTest, SeededSamplesMatchPython) {
  auto record = load_fixture("diffusion_sampling.pt").toGenericDict();
  for (const auto& value : record.at("cases").toList()) {
    auto item = IValue(value).toGenericDict();
    const auto name = item.at("name").toStringRef();
    SCOPED_TRACE(name);
    auto diffusion = diffusion_from(record, item.at("unet").toStringRef(),
                                    item.at("kwargs").toGenericDict());
    torch::manual_seed(item.at("seed").toInt());
    auto out = diffusion->sample(
        2, item.at("return_all_timesteps").toBool());
    expect_close("sample/" + name, out, item.at("out").toTensor(), 1e-4);
  }

  auto item = record.at("interpolate").toGenericDict();
  auto diffusion = diffusion_from(record, item.at("unet").toStringRef(),
                                  item.at("kwargs").toGenericDict());
  torch::manual_seed(item.at("seed").toInt());
  auto mixed = diffusion->interpolate(
      item.at("x1").toTensor(), item.at("x2").toTensor(),
      item.at("t").toInt(), number(item.at("lam")));
  expect_close("sample/interpolate", mixed, item.at("out").toTensor(), 1e-4);
}

} // namespace
} // namespace ddpm
