#include "ddpm/unet.h"

#include <cmath>
#include <string>

#include <torch/nn/functional/normalization.h>
#include <torch/nn/modules/pixelshuffle.h>
#include <torch/nn/modules/upsampling.h>
#include <torch/torch.h>

namespace ddpm {
namespace {

namespace F = torch::nn::functional;

constexpr double kPi = 3.14159265358979323846;

std::string join(const std::vector<int64_t>& values) {
  std::string text = "(";
  for (size_t i = 0; i < values.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(values[i]);
  }
  return text + ")";
}

// Python's cast_tuple: one value applies to every stage.
template <typename T>
std::vector<T> per_stage(const std::vector<T>& values, size_t stages,
                         const char* name) {
  TORCH_CHECK(values.size() == 1 || values.size() == stages,
              "Unet ", name, " must have 1 or ", stages,
              " entries (one per stage of dim_mults), got ", values.size());
  if (values.size() == stages) {
    return values;
  }
  return std::vector<T>(stages, values.front());
}

torch::nn::Conv2d conv2d(int64_t in, int64_t out, int64_t kernel,
                         bool bias = true) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                               .padding(kernel / 2)
                               .bias(bias));
}

// Splits the output of a to_qkv convolution, [B, 3 * heads * d, H, W], into
// q, k and v views of shape [B, heads, d, H * W] without copying. unbind's
// backward stacks the three gradients into one tensor in the memory format
// of the input. chunk's backward would concatenate them in NCHW, which a
// channels-last to_qkv convolution then has to convert.
std::vector<torch::Tensor> split_qkv(const torch::Tensor& qkv,
                                     int64_t heads) {
  const int64_t b = qkv.size(0);
  const int64_t n = qkv.size(2) * qkv.size(3);
  if (qkv.is_contiguous(torch::MemoryFormat::ChannelsLast) &&
      !qkv.is_contiguous()) {
    // Memory is [B, H, W, 3, heads, d].
    auto parts =
        qkv.permute({0, 2, 3, 1}).reshape({b, n, 3, heads, -1}).unbind(2);
    for (auto& part : parts) {
      part = part.permute({0, 2, 3, 1}); // [B, n, heads, d] -> [B, heads, d, n]
    }
    return parts;
  }
  return qkv.reshape({b, 3, heads, -1, n}).unbind(1);
}

} // namespace

// ~~~ RMSNorm ~~~

namespace {

// F.normalize's floor on the norm.
constexpr double kNormEps = 1e-12;

// x / max(||x||_channels, eps) * (g * scale), Python's RMSNorm with g and
// scale multiplied first, which saves a pass and changes values only by
// rounding. The backward pass keeps only x and the per-pixel norm, where
// autograd through the expression would also keep the normalized tensor.
class RMSNormFunction : public torch::autograd::Function<RMSNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const torch::Tensor& x, const torch::Tensor& g,
                               double scale) {
    auto denom = x.norm(2, {1}, /*keepdim=*/true).clamp_min(kNormEps);
    ctx->save_for_backward({x, g, denom});
    ctx->saved_data["scale"] = scale;
    return x / denom * (g * scale);
  }

  static torch::autograd::tensor_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& g = saved[1];
    const auto& denom = saved[2];
    const double scale = ctx->saved_data["scale"].toDouble();
    const auto& grad = grad_outputs[0];

    // Under bf16 autocast x is bf16 and grad float32. One conversion here
    // saves the implicit ones in each mixed-dtype operation below.
    const auto normalized = (x / denom).to(grad.scalar_type());
    const auto gain = g * scale;
    // grad * normalized feeds both gradients: summed over pixels it is g's,
    // and weighted by the gain and summed over channels it is the component
    // of x's gradient along x.
    const auto product = grad * normalized;
    torch::Tensor grad_g;
    if (ctx->needs_input_grad(1)) {
      grad_g = product.sum({0, 2, 3}, /*keepdim=*/true) * scale;
    }
    torch::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      // d(x / n)/dx = (I - xn xn^T) / n where the norm is above the floor,
      // and I / eps where it is clamped.
      auto along = (product * gain).sum(1, /*keepdim=*/true) *
                   (denom > kNormEps).to(product.scalar_type());
      grad_x = torch::addcmul(grad * gain, normalized, along, -1.0) / denom;
    }
    return {grad_x, grad_g, torch::Tensor()};
  }
};

} // namespace

RMSNormImpl::RMSNormImpl(int64_t dim) : scale(std::sqrt(double(dim))) {
  g = register_parameter("g", torch::ones({1, dim, 1, 1}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (torch::GradMode::is_enabled() &&
      (x.requires_grad() || g.requires_grad())) {
    return RMSNormFunction::apply(x, g, scale);
  }
  auto denom = x.norm(2, {1}, /*keepdim=*/true).clamp_min(kNormEps);
  return x / denom * (g * scale);
}

// ~~~ Time embeddings ~~~

SinusoidalPosEmbImpl::SinusoidalPosEmbImpl(int64_t dim, double theta)
    : dim(dim), theta(theta) {}

torch::Tensor SinusoidalPosEmbImpl::forward(const torch::Tensor& time) {
  const int64_t half_dim = dim / 2;
  const double step = std::log(theta) / double(half_dim - 1);
  // Same operation order and dtypes as the Python module, for parity.
  auto freqs = torch::exp(
      torch::arange(half_dim, torch::TensorOptions().device(time.device())) *
      -step);
  auto angles = time.unsqueeze(1) * freqs.unsqueeze(0); // [B, half_dim]
  return torch::cat({angles.sin(), angles.cos()}, -1);
}

RandomOrLearnedSinusoidalPosEmbImpl::RandomOrLearnedSinusoidalPosEmbImpl(
    int64_t dim, bool is_random) {
  TORCH_CHECK(dim >= 2 && dim % 2 == 0,
              "Unet learned_sinusoidal_dim must be even and at least 2, got ",
              dim);
  weights = register_parameter("weights", torch::randn({dim / 2}),
                               /*requires_grad=*/!is_random);
}

torch::Tensor RandomOrLearnedSinusoidalPosEmbImpl::forward(
    const torch::Tensor& time) {
  auto x = time.unsqueeze(1); // [B, 1]
  auto freqs = x * weights.unsqueeze(0) * 2 * kPi;
  auto fouriered = torch::cat({freqs.sin(), freqs.cos()}, -1);
  return torch::cat({x, fouriered}, -1); // [B, dim + 1]
}

// ~~~ Blocks ~~~

BlockImpl::BlockImpl(int64_t dim, int64_t dim_out, double dropout_p) {
  proj = register_module("proj", conv2d(dim, dim_out, 3));
  norm = register_module("norm", RMSNorm(dim_out));
  act = register_module("act", torch::nn::SiLU());
  dropout = register_module("dropout", torch::nn::Dropout(dropout_p));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x,
                                 const torch::Tensor& scale,
                                 const torch::Tensor& shift) {
  auto h = norm(proj(x));
  if (scale.defined()) {
    h = torch::addcmul(shift, h, scale + 1);
  }
  return dropout(act(h));
}

ResnetBlockImpl::ResnetBlockImpl(int64_t dim, int64_t dim_out,
                                 int64_t time_emb_dim, double dropout) {
  mlp = register_module(
      "mlp", torch::nn::Sequential(torch::nn::SiLU(),
                                   torch::nn::Linear(time_emb_dim,
                                                     dim_out * 2)));
  block1 = register_module("block1", Block(dim, dim_out, dropout));
  block2 = register_module("block2", Block(dim_out, dim_out, 0.0));
  if (dim != dim_out) {
    auto conv = conv2d(dim, dim_out, 1);
    register_module("res_conv", conv);
    res_conv = torch::nn::AnyModule(conv);
  } else {
    torch::nn::Identity identity;
    register_module("res_conv", identity);
    res_conv = torch::nn::AnyModule(identity);
  }
}

torch::Tensor ResnetBlockImpl::forward(const torch::Tensor& x,
                                       const torch::Tensor& time_emb) {
  auto film = mlp->forward(time_emb);                    // [B, 2 * C]
  auto chunks = film.view({film.size(0), film.size(1), 1, 1}).chunk(2, 1);
  auto h = block1(x, chunks[0], chunks[1]);
  h = block2(h);
  return h + res_conv.forward(x);
}

// ~~~ Resampling ~~~

DownsampleImpl::DownsampleImpl(int64_t dim, int64_t dim_out) {
  unshuffle = register_module(
      "0", torch::nn::PixelUnshuffle(torch::nn::PixelUnshuffleOptions(2)));
  conv = register_module("1", conv2d(dim * 4, dim_out, 1));
}

torch::Tensor DownsampleImpl::forward(const torch::Tensor& x) {
  return conv(unshuffle(x));
}

UpsampleImpl::UpsampleImpl(int64_t dim, int64_t dim_out) {
  conv = register_module("1", conv2d(dim, dim_out, 3));
}

torch::Tensor UpsampleImpl::forward(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  auto doubled = F::interpolate(
      x, F::InterpolateFuncOptions()
             .scale_factor(std::vector<double>{2.0, 2.0})
             .mode(torch::kNearest));
  return conv(doubled);
}

// ~~~ Attention ~~~

LinearAttentionImpl::LinearAttentionImpl(int64_t dim, int64_t heads,
                                         int64_t dim_head, int64_t num_mem_kv)
    : heads(heads), scale(1.0 / std::sqrt(double(dim_head))) {
  const int64_t hidden = dim_head * heads;
  norm = register_module("norm", RMSNorm(dim));
  mem_kv = register_parameter("mem_kv",
                              torch::randn({2, heads, dim_head, num_mem_kv}));
  to_qkv = register_module("to_qkv", conv2d(dim, hidden * 3, 1, false));
  to_out = register_module(
      "to_out", torch::nn::Sequential(conv2d(hidden, dim, 1), RMSNorm(dim)));
}

torch::Tensor LinearAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  auto qkv = split_qkv(to_qkv(norm(x)), heads); // 3 x [B, heads, d, n]
  auto q = qkv[0];
  auto k = qkv[1];
  auto v = qkv[2];

  auto mem_k = mem_kv[0].unsqueeze(0).expand({b, -1, -1, -1});
  auto mem_v = mem_kv[1].unsqueeze(0).expand({b, -1, -1, -1});
  k = torch::cat({mem_k, k}, -1);
  v = torch::cat({mem_v, v}, -1);

  q = q.softmax(-2) * scale;
  k = k.softmax(-1);
  auto context = torch::matmul(k, v.transpose(-1, -2));     // [B, h, d, e]
  auto out = torch::matmul(context.transpose(-1, -2), q);   // [B, h, e, n]
  return to_out->forward(out.reshape({b, -1, h, w}));
}

AttentionImpl::AttentionImpl(int64_t dim, int64_t heads, int64_t dim_head,
                             bool flash, int64_t num_mem_kv)
    : heads(heads), flash(flash) {
  const int64_t hidden = dim_head * heads;
  norm = register_module("norm", RMSNorm(dim));
  mem_kv = register_parameter("mem_kv",
                              torch::randn({2, heads, num_mem_kv, dim_head}));
  to_qkv = register_module("to_qkv", conv2d(dim, hidden * 3, 1, false));
  to_out = register_module("to_out", conv2d(hidden, dim, 1));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  auto qkv = split_qkv(to_qkv(norm(x)), heads);
  auto q = qkv[0].transpose(-1, -2); // [B, heads, n, d]
  auto k = qkv[1].transpose(-1, -2);
  auto v = qkv[2].transpose(-1, -2);

  auto mem_k = mem_kv[0].unsqueeze(0).expand({b, -1, -1, -1});
  auto mem_v = mem_kv[1].unsqueeze(0).expand({b, -1, -1, -1});
  k = torch::cat({mem_k, k}, -2);
  v = torch::cat({mem_v, v}, -2);

  torch::Tensor out;
  if (flash) {
    out = at::scaled_dot_product_attention(q.contiguous(), k.contiguous(),
                                           v.contiguous());
  } else {
    const double scale = 1.0 / std::sqrt(double(q.size(-1)));
    auto sim = torch::matmul(q, k.transpose(-1, -2)) * scale;
    out = torch::matmul(sim.softmax(-1), v);
  }
  // [B, h, n, d] -> [B, h * d, H, W]
  return to_out(out.transpose(-1, -2).reshape({b, -1, h, w}));
}

// ~~~ Unet ~~~

UnetImpl::UnetImpl(UnetOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, "Unet dim must be positive, got ", o.dim());
  TORCH_CHECK(!o.dim_mults().empty(),
              "Unet dim_mults must have at least one entry, got ()");
  for (auto mult : o.dim_mults()) {
    TORCH_CHECK(mult > 0, "Unet dim_mults must be positive, got ",
                join(o.dim_mults()));
  }
  TORCH_CHECK(o.channels() > 0, "Unet channels must be positive, got ",
              o.channels());
  TORCH_CHECK(o.dropout() >= 0.0 && o.dropout() < 1.0,
              "Unet dropout must be in [0, 1), got ", o.dropout());
  TORCH_CHECK(o.sinusoidal_pos_emb_theta() > 0 &&
                  std::isfinite(o.sinusoidal_pos_emb_theta()),
              "Unet sinusoidal_pos_emb_theta must be positive and finite, "
              "got ", o.sinusoidal_pos_emb_theta());
  TORCH_CHECK(!o.out_dim() || *o.out_dim() > 0,
              "Unet out_dim must be positive, got ", o.out_dim().value_or(0));
  const size_t stages = o.dim_mults().size();
  const int64_t init_dim = o.init_dim().value_or(o.dim());
  TORCH_CHECK(init_dim > 0, "Unet init_dim must be positive, got ",
              init_dim);

  std::vector<bool> full_attn = o.full_attn();
  if (full_attn.empty()) {
    full_attn.assign(stages, false);
    full_attn.back() = true;
  }
  full_attn = per_stage(full_attn, stages, "full_attn");
  auto heads = per_stage(o.attn_heads(), stages, "attn_heads");
  auto dim_heads = per_stage(o.attn_dim_head(), stages, "attn_dim_head");
  for (size_t i = 0; i < stages; ++i) {
    TORCH_CHECK(heads[i] > 0 && dim_heads[i] > 0,
                "Unet attn_heads and attn_dim_head must be positive, got ",
                heads[i], " and ", dim_heads[i], " at stage ", i);
  }

  init_conv = register_module(
      "init_conv",
      conv2d(o.channels() * (o.self_condition() ? 2 : 1), init_dim, 7));

  // Time embedding: sinusoidal features, then an MLP to 4 * dim.
  const int64_t time_dim = o.dim() * 4;
  int64_t fourier_dim = o.dim();
  torch::nn::Sequential time_layers;
  if (random_or_learned_sinusoidal_cond()) {
    time_layers->push_back(RandomOrLearnedSinusoidalPosEmb(
        o.learned_sinusoidal_dim(), o.random_fourier_features()));
    fourier_dim = o.learned_sinusoidal_dim() + 1;
  } else {
    TORCH_CHECK(o.dim() >= 4 && o.dim() % 2 == 0,
                "Unet dim must be even and at least 4 for the sinusoidal "
                "time embedding, got ", o.dim());
    time_layers->push_back(
        SinusoidalPosEmb(o.dim(), o.sinusoidal_pos_emb_theta()));
  }
  time_layers->push_back(torch::nn::Linear(fourier_dim, time_dim));
  time_layers->push_back(torch::nn::GELU());
  time_layers->push_back(torch::nn::Linear(time_dim, time_dim));
  time_mlp = register_module("time_mlp", time_layers);

  // Python registers `downs` and `ups` before the middle blocks, and the
  // order of registration fixes the order of parameters() (and so the
  // optimizer's parameter indices).
  downs = register_module("downs", torch::nn::ModuleList());
  ups = register_module("ups", torch::nn::ModuleList());

  std::vector<int64_t> dims{init_dim};
  for (auto mult : o.dim_mults()) {
    dims.push_back(o.dim() * mult);
  }

  auto make_attention = [&](int64_t dim, size_t stage) {
    if (full_attn[stage]) {
      return torch::nn::AnyModule(
          Attention(dim, heads[stage], dim_heads[stage], o.flash_attn()));
    }
    return torch::nn::AnyModule(
        LinearAttention(dim, heads[stage], dim_heads[stage]));
  };
  auto add_stage = [&](torch::nn::ModuleList& list, UnetStage stage) {
    torch::nn::ModuleList inner;
    inner->push_back(stage.block1);
    inner->push_back(stage.block2);
    inner->push_back(stage.attn.ptr());
    inner->push_back(stage.resample.ptr());
    list->push_back(inner);
    return stage;
  };

  for (size_t i = 0; i < stages; ++i) {
    const int64_t dim_in = dims[i], dim_out = dims[i + 1];
    const bool is_last = i + 1 == stages;
    UnetStage stage;
    stage.block1 = ResnetBlock(dim_in, dim_in, time_dim, o.dropout());
    stage.block2 = ResnetBlock(dim_in, dim_in, time_dim, o.dropout());
    stage.attn = make_attention(dim_in, i);
    stage.resample = is_last
        ? torch::nn::AnyModule(conv2d(dim_in, dim_out, 3))
        : torch::nn::AnyModule(Downsample(dim_in, dim_out));
    down_stages_.push_back(add_stage(downs, std::move(stage)));
  }

  const int64_t mid_dim = dims.back();
  mid_block1 = register_module(
      "mid_block1", ResnetBlock(mid_dim, mid_dim, time_dim, o.dropout()));
  mid_attn = register_module(
      "mid_attn",
      Attention(mid_dim, heads.back(), dim_heads.back(), o.flash_attn()));
  mid_block2 = register_module(
      "mid_block2", ResnetBlock(mid_dim, mid_dim, time_dim, o.dropout()));

  for (size_t j = 0; j < stages; ++j) {
    const size_t i = stages - 1 - j;
    const int64_t dim_in = dims[i], dim_out = dims[i + 1];
    const bool is_last = j + 1 == stages;
    UnetStage stage;
    stage.block1 =
        ResnetBlock(dim_out + dim_in, dim_out, time_dim, o.dropout());
    stage.block2 =
        ResnetBlock(dim_out + dim_in, dim_out, time_dim, o.dropout());
    stage.attn = make_attention(dim_out, i);
    stage.resample = is_last
        ? torch::nn::AnyModule(conv2d(dim_out, dim_in, 3))
        : torch::nn::AnyModule(Upsample(dim_out, dim_in));
    up_stages_.push_back(add_stage(ups, std::move(stage)));
  }

  out_dim_ = o.out_dim().value_or(o.channels() *
                                  (o.learned_variance() ? 2 : 1));
  TORCH_CHECK(out_dim_ > 0, "Unet out_dim must be positive, got ", out_dim_);
  final_res_block = register_module(
      "final_res_block",
      ResnetBlock(init_dim * 2, init_dim, time_dim, o.dropout()));
  final_conv = register_module("final_conv", conv2d(init_dim, out_dim_, 1));
}

int64_t UnetImpl::downsample_factor() const {
  return int64_t{1} << (options.dim_mults().size() - 1);
}

torch::Tensor UnetImpl::forward(const torch::Tensor& x_in,
                                const torch::Tensor& time,
                                const torch::Tensor& x_self_cond) {
  TORCH_CHECK(x_in.dim() == 4,
              "Unet input must have 4 dimensions [B, C, H, W], got ",
              x_in.sizes());
  TORCH_CHECK(x_in.size(1) == channels(), "Unet input must have ",
              channels(), " channels, got ", x_in.size(1));
  const int64_t factor = downsample_factor();
  TORCH_CHECK(x_in.size(2) % factor == 0 && x_in.size(3) % factor == 0,
              "image height and width must be divisible by ", factor,
              " (2^(stages - 1) for ", options.dim_mults().size(),
              " stages), got ", x_in.size(2), " x ", x_in.size(3));
  TORCH_CHECK(time.dim() == 1 && time.size(0) == x_in.size(0),
              "Unet time must have shape [", x_in.size(0), "], got ",
              time.sizes());

  torch::Tensor x = x_in;
  if (self_condition()) {
    auto cond = x_self_cond.defined() ? x_self_cond : torch::zeros_like(x);
    x = torch::cat({cond, x}, 1);
  }

  x = init_conv(x);
  auto r = x.clone();
  auto t = time_mlp->forward(time);

  std::vector<torch::Tensor> skips;
  for (auto& stage : down_stages_) {
    x = stage.block1(x, t);
    skips.push_back(x);
    x = stage.block2(x, t);
    x = stage.attn.forward(x) + x;
    skips.push_back(x);
    x = stage.resample.forward(x);
  }

  x = mid_block1(x, t);
  x = mid_attn(x) + x;
  x = mid_block2(x, t);

  for (auto& stage : up_stages_) {
    x = torch::cat({x, skips.back()}, 1);
    skips.pop_back();
    x = stage.block1(x, t);
    x = torch::cat({x, skips.back()}, 1);
    skips.pop_back();
    x = stage.block2(x, t);
    x = stage.attn.forward(x) + x;
    x = stage.resample.forward(x);
  }

  x = torch::cat({x, r}, 1);
  x = final_res_block(x, t);
  return final_conv(x);
}

void set_memory_format(torch::nn::Module& module, c10::MemoryFormat format) {
  torch::NoGradGuard no_grad;
  auto convert = [format](torch::Tensor& tensor) {
    if (tensor.defined() && tensor.dim() == 4) {
      tensor.set_data(tensor.contiguous(format));
    }
  };
  for (auto& parameter : module.parameters()) {
    convert(parameter);
  }
  for (auto& buffer : module.buffers()) {
    convert(buffer);
  }
}

} // namespace ddpm
