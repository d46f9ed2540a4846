// The LLaMA forward pass (model/llama.h). Written with plain ATen ops so autograd flows
// through it (model-level Cayley SGD differentiates the loss through the whole model).
#include "model/llama.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

namespace sqlab {

void LlamaConfig::check(const std::string& origin) const {
  auto fail = [&](const std::string& what) {
    throw config_error(fmt::format("{}: not a valid LLaMA configuration: {}", origin, what));
  };
  if (dim <= 0 || hidden_dim <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv_heads <= 0 ||
      vocab_size <= 0 || max_seq_len <= 0) {
    fail(fmt::format("sizes must be positive (dim {}, hidden_dim {}, n_layers {}, n_heads {}, "
                     "n_kv_heads {}, vocab_size {}, max_seq_len {})",
                     dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len));
  }
  if (dim % n_heads != 0) fail(fmt::format("dim {} is not a multiple of n_heads {}", dim, n_heads));
  if (head_dim() % 2 != 0) fail(fmt::format("head_dim {} is odd (rotary pairs need it even)", head_dim()));
  if (n_heads % n_kv_heads != 0) {
    fail(fmt::format("n_heads {} is not a multiple of n_kv_heads {}", n_heads, n_kv_heads));
  }
  if (!(norm_eps > 0) || !std::isfinite(norm_eps)) fail(fmt::format("norm_eps {} must be positive", norm_eps));
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    fail(fmt::format("rope_theta {} must be positive", rope_theta));
  }
  if (bos_id < -1 || bos_id >= vocab_size || eos_id < -1 || eos_id >= vocab_size) {
    fail(fmt::format("bos_id {} / eos_id {} outside the vocabulary of {}", bos_id, eos_id, vocab_size));
  }
}

const char* linear_site_name(LinearSite site) {
  switch (site) {
    case LinearSite::attn_in: return "attn_in";
    case LinearSite::attn_out: return "attn_out";
    case LinearSite::mlp_in: return "mlp_in";
    case LinearSite::mlp_out: return "mlp_out";
    case LinearSite::head: return "head";
  }
  return "unknown";
}

namespace {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& gain, double eps) {
  at::Tensor inv = at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps);
  return x * inv * gain;
}

// cos and sin of position t x frequency theta^(-2i/head_dim), i < head_dim/2, repeated
// for the two halves (rotate-half layout: pair (i, i + head_dim/2) rotates together).
std::pair<at::Tensor, at::Tensor> rotary_tables(int64_t seq_len, int64_t head_dim, double theta,
                                                const at::TensorOptions& options) {
  auto f64 = options.dtype(at::kDouble);
  at::Tensor i = at::arange(head_dim / 2, f64);
  at::Tensor freq = at::pow(theta, -2.0 * i / static_cast<double>(head_dim));
  at::Tensor angle = at::outer(at::arange(seq_len, f64), freq);  // T x hd/2
  angle = at::cat({angle, angle}, -1).to(options.dtype());       // T x hd
  return {angle.cos(), angle.sin()};
}

// x: B x H x T x hd.
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

at::Tensor hook(ForwardHooks* hooks, int64_t layer, LinearSite site, const at::Tensor& x) {
  return hooks ? hooks->input(layer, site, x) : x;
}

}  // namespace

at::Tensor llama_forward(const LlamaWeights& weights, const at::Tensor& tokens, ForwardHooks* hooks) {
  const LlamaConfig& c = weights.config;
  if (tokens.dim() != 2) {
    throw Error(fmt::format("llama_forward: tokens must be B x T, got {} dimensions", tokens.dim()));
  }
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t H = c.n_heads, KV = c.n_kv_heads, hd = c.head_dim();
  at::Tensor ids = tokens.to(weights.embedding.device(), at::kLong);
  if (ids.numel() > 0) {
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= c.vocab_size) {
      throw Error(fmt::format("llama_forward: token id {} outside the vocabulary of {} ({})",
                              lo < 0 ? lo : hi, c.vocab_size, weights.origin));
    }
  }
  at::Tensor x = weights.embedding.index_select(0, ids.reshape({-1})).view({B, T, c.dim});
  auto [cos, sin] = rotary_tables(T, hd, c.rope_theta, x.options());
  // Causal mask: position t attends to positions <= t.
  at::Tensor future = at::ones({T, T}, x.options().dtype(at::kBool)).triu(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& layer = weights.layers.at(l);
    at::Tensor h = hook(hooks, l, LinearSite::attn_in, rms_norm(x, layer.attn_norm, c.norm_eps));
    at::Tensor q = at::linear(h, layer.wq).view({B, T, H, hd}).transpose(1, 2);
    at::Tensor k = at::linear(h, layer.wk).view({B, T, KV, hd}).transpose(1, 2);
    at::Tensor v = at::linear(h, layer.wv).view({B, T, KV, hd}).transpose(1, 2);
    q = apply_rotary(q, cos, sin);
    k = apply_rotary(k, cos, sin);
    if (KV != H) {  // grouped-query attention: query head i reads KV head i / (H / KV)
      k = k.repeat_interleave(H / KV, 1);
      v = v.repeat_interleave(H / KV, 1);
    }
    at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;  // B x H x T x T
    scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
    at::Tensor attn = at::matmul(at::softmax(scores, -1), v);        // B x H x T x hd
    attn = attn.transpose(1, 2).reshape({B, T, H * hd});
    attn = hook(hooks, l, LinearSite::attn_out, attn);
    x = x + at::linear(attn, layer.wo);

    h = hook(hooks, l, LinearSite::mlp_in, rms_norm(x, layer.mlp_norm, c.norm_eps));
    at::Tensor g = at::silu(at::linear(h, layer.w_gate)) * at::linear(h, layer.w_up);
    g = hook(hooks, l, LinearSite::mlp_out, g);
    x = x + at::linear(g, layer.w_down);
  }
  at::Tensor h = hook(hooks, -1, LinearSite::head, rms_norm(x, weights.final_norm, c.norm_eps));
  return at::linear(h, weights.output);
}

}  // namespace sqlab
