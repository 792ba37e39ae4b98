#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pixelshuffle.h>
#include <torch/nn/pimpl.h>
#include <torch/arg.h>

namespace ddpm {

// ~~~ Building blocks ~~~
// Each block registers its children under the attribute names of the Python
// package, so named_parameters() keys equal a Python state dict's keys.

/// Channel-wise RMS normalisation: x / ||x||_2 over channels * g * sqrt(dim).
class RMSNormImpl : public torch::nn::Module {
 public:
  explicit RMSNormImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor g; // [1, dim, 1, 1]
  double scale;
};
TORCH_MODULE(RMSNorm);

/// Fixed sinusoidal embedding of the (integer) timestep, width `dim`.
class SinusoidalPosEmbImpl : public torch::nn::Module {
 public:
  SinusoidalPosEmbImpl(int64_t dim, double theta);
  torch::Tensor forward(const torch::Tensor& time); // [B] -> [B, dim]

  int64_t dim;
  double theta;
};
TORCH_MODULE(SinusoidalPosEmb);

/// Random Fourier features (frozen) or learned sinusoidal embedding; output
/// width is dim + 1 because the raw time is concatenated first.
class RandomOrLearnedSinusoidalPosEmbImpl : public torch::nn::Module {
 public:
  RandomOrLearnedSinusoidalPosEmbImpl(int64_t dim, bool is_random);
  torch::Tensor forward(const torch::Tensor& time); // [B] -> [B, dim + 1]

  torch::Tensor weights; // [dim / 2]
};
TORCH_MODULE(RandomOrLearnedSinusoidalPosEmb);

/// 3x3 convolution, RMSNorm, optional FiLM scale and shift, SiLU, dropout.
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(int64_t dim, int64_t dim_out, double dropout);
  torch::Tensor forward(const torch::Tensor& x,
                        const torch::Tensor& scale = {},
                        const torch::Tensor& shift = {});

  torch::nn::Conv2d proj{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::SiLU act{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Block);

/// Two Blocks with a time-conditioned scale and shift and a residual path.
class ResnetBlockImpl : public torch::nn::Module {
 public:
  ResnetBlockImpl(int64_t dim, int64_t dim_out, int64_t time_emb_dim,
                  double dropout);
  torch::Tensor forward(const torch::Tensor& x,
                        const torch::Tensor& time_emb);

  torch::nn::Sequential mlp{nullptr}; // SiLU, Linear(time, 2 * dim_out)
  Block block1{nullptr};
  Block block2{nullptr};
  torch::nn::AnyModule res_conv; // Conv2d 1x1, or Identity when dims match
};
TORCH_MODULE(ResnetBlock);

/// Python's Downsample: space-to-depth by 2 ("0", no weights), then a 1x1
/// convolution ("1").
class DownsampleImpl : public torch::nn::Module {
 public:
  DownsampleImpl(int64_t dim, int64_t dim_out);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::PixelUnshuffle unshuffle{nullptr};
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Downsample);

/// Python's Upsample: nearest-neighbour doubling ("0", no weights), then a
/// 3x3 convolution ("1").
class UpsampleImpl : public torch::nn::Module {
 public:
  UpsampleImpl(int64_t dim, int64_t dim_out);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample);

/// Linear attention over pixels with learned memory key/values.
class LinearAttentionImpl : public torch::nn::Module {
 public:
  LinearAttentionImpl(int64_t dim, int64_t heads, int64_t dim_head,
                      int64_t num_mem_kv = 4);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t heads;
  double scale;
  RMSNorm norm{nullptr};
  torch::Tensor mem_kv; // [2, heads, dim_head, num_mem_kv]
  torch::nn::Conv2d to_qkv{nullptr};
  torch::nn::Sequential to_out{nullptr}; // Conv2d 1x1, RMSNorm
};
TORCH_MODULE(LinearAttention);

/// Full softmax attention over pixels with learned memory key/values. With
/// `flash` set it runs through scaled_dot_product_attention, which picks a
/// fused kernel where the device has one.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t dim, int64_t heads, int64_t dim_head, bool flash,
                int64_t num_mem_kv = 4);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t heads;
  bool flash;
  RMSNorm norm{nullptr};
  torch::Tensor mem_kv; // [2, heads, num_mem_kv, dim_head]
  torch::nn::Conv2d to_qkv{nullptr};
  torch::nn::Conv2d to_out{nullptr};
};
TORCH_MODULE(Attention);

// ~~~ Unet ~~~

/// Options of Unet, named and defaulted as the keyword arguments of the
/// Python `Unet`. Changing them after construction has no effect.
struct UnetOptions {
  explicit UnetOptions(int64_t dim) : dim_(dim) {}

  /// Base channel width; stage i has dim * dim_mults[i] channels.
  TORCH_ARG(int64_t, dim);
  /// Width after the 7x7 input convolution. Default: dim.
  TORCH_ARG(std::optional<int64_t>, init_dim) = std::nullopt;
  /// Output channels. Default: channels, or 2 * channels with
  /// learned_variance.
  TORCH_ARG(std::optional<int64_t>, out_dim) = std::nullopt;
  /// Width multiplier of each stage; its length is the number of stages.
  TORCH_ARG(std::vector<int64_t>, dim_mults) =
      std::vector<int64_t>{1, 2, 4, 8};
  /// Image channels.
  TORCH_ARG(int64_t, channels) = 3;
  /// Concatenate a previous x_0 estimate to the input.
  TORCH_ARG(bool, self_condition) = false;
  /// Double the default output channels (mean and variance).
  TORCH_ARG(bool, learned_variance) = false;
  /// Learned sinusoidal time embedding of width learned_sinusoidal_dim.
  TORCH_ARG(bool, learned_sinusoidal_cond) = false;
  /// Random (frozen) Fourier time embedding of width learned_sinusoidal_dim.
  TORCH_ARG(bool, random_fourier_features) = false;
  TORCH_ARG(int64_t, learned_sinusoidal_dim) = 16;
  /// Base of the fixed sinusoidal time embedding's frequencies.
  TORCH_ARG(double, sinusoidal_pos_emb_theta) = 10000.0;
  /// Dropout probability in the first Block of each ResnetBlock.
  TORCH_ARG(double, dropout) = 0.0;
  /// Channels per attention head, per stage (one value: every stage).
  TORCH_ARG(std::vector<int64_t>, attn_dim_head) = std::vector<int64_t>{32};
  /// Attention heads, per stage (one value: every stage).
  TORCH_ARG(std::vector<int64_t>, attn_heads) = std::vector<int64_t>{4};
  /// Full (true) or linear (false) attention per stage. Default: full
  /// attention in the innermost stage only. One value applies to all.
  TORCH_ARG(std::vector<bool>, full_attn) = std::vector<bool>{};
  /// Compute full attention with scaled_dot_product_attention.
  TORCH_ARG(bool, flash_attn) = false;
};

/// One encoder or decoder stage, held for forward() without name lookups.
struct UnetStage {
  ResnetBlock block1{nullptr};
  ResnetBlock block2{nullptr};
  torch::nn::AnyModule attn;
  torch::nn::AnyModule resample; // down- or upsampling, or a 3x3 Conv2d
};

/// The denoising U-Net of the Python package `denoising-diffusion-pytorch`:
/// forward(x [B, C, H, W], time [B]) -> [B, out_dim, H, W]. H and W must be
/// divisible by downsample_factor().
class UnetImpl : public torch::nn::Module {
 public:
  explicit UnetImpl(UnetOptions options);
  UnetImpl(int64_t dim) : UnetImpl(UnetOptions(dim)) {}

  /// `x_self_cond` is used only with self_condition (zeros when undefined).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& time,
                        const torch::Tensor& x_self_cond = {});

  /// 2^(stages - 1): the factor H and W must be divisible by.
  int64_t downsample_factor() const;
  int64_t channels() const { return options.channels(); }
  int64_t out_dim() const { return out_dim_; }
  bool self_condition() const { return options.self_condition(); }
  bool random_or_learned_sinusoidal_cond() const {
    return options.learned_sinusoidal_cond() ||
        options.random_fourier_features();
  }

  UnetOptions options;

  torch::nn::Conv2d init_conv{nullptr};
  torch::nn::Sequential time_mlp{nullptr};
  torch::nn::ModuleList downs{nullptr};
  torch::nn::ModuleList ups{nullptr};
  ResnetBlock mid_block1{nullptr};
  Attention mid_attn{nullptr};
  ResnetBlock mid_block2{nullptr};
  ResnetBlock final_res_block{nullptr};
  torch::nn::Conv2d final_conv{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(torch::Tensor())})

 private:
  int64_t out_dim_ = 0;
  std::vector<UnetStage> down_stages_;
  std::vector<UnetStage> up_stages_;
};
TORCH_MODULE(Unet);

/// Converts every 4-D parameter and buffer of `module` (the convolution
/// weights) to `format` in place, as Python's module.to(memory_format=...).
/// With torch::MemoryFormat::ChannelsLast the CPU convolutions and the
/// channel-wise RMSNorm run on contiguous channels, which is faster for
/// this Unet (docs/BENCHMARKS.md). Values, names and shapes do not change.
void set_memory_format(torch::nn::Module& module, c10::MemoryFormat format);

} // namespace ddpm
