// The LLaMA forward pass (model/llama.h). Written with plain ATen ops so autograd flows
// through it (model-level Cayley SGD differentiates the loss through the whole model).
#include "model/llama.h"

#include "core/error.h"
#include "model/gemm.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <vector>

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
  if (explicit_head_dim < 0) fail(fmt::format("head_dim {} is negative", explicit_head_dim));
  if (explicit_head_dim == 0 && dim % n_heads != 0)
    fail(fmt::format("dim {} is not a multiple of n_heads {}", dim, n_heads));
  if (head_dim() % 2 != 0) fail(fmt::format("head_dim {} is odd (rotary pairs need it even)", head_dim()));
  if (n_heads % n_kv_heads != 0) {
    fail(fmt::format("n_heads {} is not a multiple of n_kv_heads {}", n_heads, n_kv_heads));
  }
  if (!(norm_eps > 0) || !std::isfinite(norm_eps)) fail(fmt::format("norm_eps {} must be positive", norm_eps));
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    fail(fmt::format("rope_theta {} must be positive", rope_theta));
  }
  if (sliding_window < 0) fail(fmt::format("sliding_window {} is negative", sliding_window));
  if (output_bias && !attention_bias) fail("an o_proj bias without q/k/v biases is no family sqlab knows");
  if (rope.type != RopeScaling::none && !(rope.factor >= 1.0 && std::isfinite(rope.factor)))
    fail(fmt::format("rope scaling factor {} must be >= 1", rope.factor));
  if (rope.type == RopeScaling::llama3 &&
      (!(rope.high_freq_factor > rope.low_freq_factor) || !(rope.low_freq_factor > 0) || rope.original_max_position <= 0))
    fail(fmt::format("llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor and original_max_position_"
                     "embeddings > 0 (got {}, {}, {})",
                     rope.low_freq_factor, rope.high_freq_factor, rope.original_max_position));
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

// In a 16-bit compute dtype the mean square is taken in float32 and the normalized value
// cast back before the gain, as transformers' LlamaRMSNorm does (a bfloat16 sum of 4096
// squares loses the small ones).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& gain, double eps) {
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) {
    const at::Tensor xf = x.to(at::kFloat);
    return (xf * at::rsqrt(xf.pow(2).mean({-1}, /*keepdim=*/true) + eps)).to(x.scalar_type()) * gain;
  }
  at::Tensor inv = at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps);
  return x * inv * gain;
}

// The rotary frequencies theta^(-2i/head_dim), i < head_dim/2, after the config's scaling
// (RopeConfig; transformers' _compute_linear_scaling / _compute_llama3_parameters).
at::Tensor rotary_frequencies(const LlamaConfig& c) {
  const int64_t hd = c.head_dim();
  at::Tensor freq = at::pow(c.rope_theta, -2.0 * at::arange(hd / 2, at::kDouble) / static_cast<double>(hd));
  const RopeConfig& r = c.rope;
  if (r.type == RopeScaling::linear) return freq / r.factor;
  if (r.type != RopeScaling::llama3) return freq;  // none; dynamic within the original context
  const double old_context = static_cast<double>(r.original_max_position);
  const double low_freq_wavelen = old_context / r.low_freq_factor;
  const double high_freq_wavelen = old_context / r.high_freq_factor;
  const at::Tensor wavelen = 2.0 * M_PI / freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, freq / r.factor, freq);
  const at::Tensor smooth = (old_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  const at::Tensor smoothed = (1.0 - smooth) * scaled / r.factor + smooth * scaled;
  const at::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return at::where(medium, smoothed, scaled);
}

// cos and sin of position t x frequency, repeated for the two halves (rotate-half layout:
// pair (i, i + head_dim/2) rotates together).
std::pair<at::Tensor, at::Tensor> rotary_tables(int64_t seq_len, const LlamaConfig& c,
                                                const at::TensorOptions& options) {
  auto f64 = options.dtype(at::kDouble);
  at::Tensor angle = at::outer(at::arange(seq_len, f64), rotary_frequencies(c).to(f64.device()));  // T x hd/2
  // cos and sin in float32 at least, then the compute dtype (as transformers does).
  const at::ScalarType table = options.dtype() == at::kDouble ? at::kDouble : at::kFloat;
  angle = at::cat({angle, angle}, -1).to(table);  // T x hd
  return {angle.cos().to(options.dtype()), angle.sin().to(options.dtype())};
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

void PrefixKeyValues::keep(int64_t key, int64_t layer, at::Tensor k, at::Tensor v) {
  kept_[{key, layer}] = {std::move(k), std::move(v)};
}

const std::pair<at::Tensor, at::Tensor>& PrefixKeyValues::find(int64_t key, int64_t layer) const {
  const auto it = kept_.find({key, layer});
  if (it == kept_.end())
    throw Error(fmt::format("shared prefixes: prefix {} at layer {} was not computed by an earlier pass", key, layer));
  return it->second;
}

void PrefixKeyValues::drop(int64_t key) {
  kept_.erase(kept_.lower_bound({key, std::numeric_limits<int64_t>::min()}),
              kept_.upper_bound({key, std::numeric_limits<int64_t>::max()}));
}

at::Tensor llama_forward(const LlamaWeights& weights, const at::Tensor& tokens, ForwardHooks* hooks) {
  return gemm::linear(llama_hidden(weights, tokens, hooks), weights.output);
}

at::Tensor llama_hidden(const LlamaWeights& weights, const at::Tensor& tokens, ForwardHooks* hooks) {
  const LlamaConfig& c = weights.config;
  at::Tensor x = llama_embed(c, weights.embedding, tokens, weights.origin);
  for (int64_t l = 0; l < c.n_layers; ++l) x = llama_layer(c, weights.layers.at(l), l, x, hooks);
  return llama_head_input(c, weights.final_norm, x, hooks);
}

void check_positions(const LlamaConfig& c, int64_t T, const std::string& origin) {
  if (c.sliding_window > 0 && T > c.sliding_window)
    throw Error(fmt::format("llama_forward: a window of {} tokens exceeds the model's sliding window of {} ({}): "
                            "sliding-window attention is exact only within it; use eval.seq_len <= {}",
                            T, c.sliding_window, origin, c.sliding_window));
  if (c.rope.type == RopeScaling::dynamic && T > c.max_seq_len)
    throw Error(fmt::format("llama_forward: a window of {} tokens exceeds the original context {} of a model with "
                            "dynamic rope scaling ({}): only windows within it are supported",
                            T, c.max_seq_len, origin));
}

at::Tensor llama_embed(const LlamaConfig& c, const at::Tensor& embedding, const at::Tensor& tokens,
                       const std::string& origin) {
  if (tokens.dim() != 2) {
    throw Error(fmt::format("llama_forward: tokens must be B x T, got {} dimensions", tokens.dim()));
  }
  const int64_t B = tokens.size(0), T = tokens.size(1);
  at::Tensor ids = tokens.to(embedding.device(), at::kLong);
  if (ids.numel() > 0) {
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= c.vocab_size) {
      throw Error(fmt::format("llama_forward: token id {} outside the vocabulary of {} ({})",
                              lo < 0 ? lo : hi, c.vocab_size, origin));
    }
  }
  check_positions(c, T, origin);
  return embedding.index_select(0, ids.reshape({-1})).view({B, T, c.dim});
}

namespace {

struct Projected {
  at::Tensor q, k, v;  // rows x heads x T x hd (q: n_heads, k and v: n_kv_heads), before the rotary
};

// q, k, v of rows x T tokens (h: rows x T x dim, or (rows*T) x dim).
Projected project(const LlamaConfig& c, const LlamaLayer& layer, const at::Tensor& h, int64_t rows, int64_t T) {
  const int64_t H = c.n_heads, KV = c.n_kv_heads, hd = c.head_dim();
  at::Tensor q = gemm::linear(h, layer.wq, layer.bq).view({rows, T, H, hd});
  at::Tensor k = gemm::linear(h, layer.wk, layer.bk).view({rows, T, KV, hd});
  at::Tensor v = gemm::linear(h, layer.wv, layer.bv).view({rows, T, KV, hd});
  if (c.qk_norm) {  // Qwen3: each head of q and k normalized on its own, before the rotary
    q = rms_norm(q, layer.q_norm, c.norm_eps);
    k = rms_norm(k, layer.k_norm, c.norm_eps);
  }
  return {q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)};
}

double attention_scale(const LlamaConfig& c) { return 1.0 / std::sqrt(static_cast<double>(c.head_dim())); }

// Each row on its own, positions 0..T-1: B x T x dim -> B x T x (n_heads*hd).
at::Tensor self_attention(const LlamaConfig& c, const LlamaLayer& layer, const at::Tensor& h) {
  const int64_t B = h.size(0), T = h.size(1);
  auto [cos, sin] = rotary_tables(T, c, h.options());
  Projected p = project(c, layer, h, B, T);
  const at::Tensor attn =
      prefixed_causal_attention(apply_rotary(p.q, cos, sin), apply_rotary(p.k, cos, sin), p.v, {}, 0, attention_scale(c));
  return attn.transpose(1, 2).reshape({B, T, c.q_dim()});
}

// Zero-padded along the positions (dim 2) to `width`.
at::Tensor pad_positions(const at::Tensor& t, int64_t width) {
  return t.size(2) == width ? t : at::constant_pad_nd(t, {0, 0, 0, width - t.size(2)});
}

// Rows after shared prefixes (SharedPrefixes): ((P - borrowed)*Tp + B*T) x dim -> the same
// rows x (n_heads*hd).
at::Tensor shared_prefix_attention(const LlamaConfig& c, const LlamaLayer& layer, int64_t l, const at::Tensor& h,
                                   const SharedPrefixes& s) {
  const int64_t own = s.owned(), Tp = s.prefix_width, B = s.rows, T = s.width;
  if ((s.borrowed > 0 || !s.keys.empty()) && !s.kept)
    throw Error("shared prefixes: keys without a store of prefix keys and values");
  // Every prefix's rotated keys and values (KV heads), padded to the longest: S positions.
  std::vector<at::Tensor> keys, values;
  at::Tensor attn_pre;
  if (own > 0 && Tp > 0) {
    auto [cos, sin] = rotary_tables(Tp, c, h.options());
    Projected pre = project(c, layer, h.narrow(0, 0, own * Tp), own, Tp);
    const at::Tensor k_pre = apply_rotary(pre.k, cos, sin);
    attn_pre = prefixed_causal_attention(apply_rotary(pre.q, cos, sin), k_pre, pre.v, {}, 0, attention_scale(c));
    for (int64_t p = 0; p < own && !s.keys.empty(); ++p) {
      if (s.keys[p] < 0) continue;
      const int64_t n = s.prefix_length[p].item<int64_t>();
      s.kept->keep(s.keys[p], l, k_pre[p].narrow(1, 0, n).clone(), pre.v[p].narrow(1, 0, n).clone());
    }
    keys.push_back(k_pre);
    values.push_back(pre.v);
  } else if (own > 0) {  // owned prefixes without tokens: rows of their own beside borrowed prefixes
    const at::Tensor none = at::zeros({own, c.n_kv_heads, 0, c.head_dim()}, h.options());
    keys.push_back(none);
    values.push_back(none);
  }
  int64_t S = own > 0 ? Tp : 0;
  for (int64_t p = own; p < s.prefixes; ++p) {
    const auto& [k, v] = s.kept->find(s.keys.at(p), l);
    keys.push_back(k.unsqueeze(0));
    values.push_back(v.unsqueeze(0));
    S = std::max(S, k.size(1));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i] = pad_positions(keys[i], S);
    values[i] = pad_positions(values[i], S);
  }
  const at::Tensor k_pre = at::cat(keys, 0), v_pre = at::cat(values, 0);
  // The rows: positions from their prefix's length on; keys = the prefix's, then their own.
  auto [cos, sin] = rotary_tables(S + T, c, h.options());
  const at::Tensor prefix_of = s.prefix_of.to(h.device());
  const at::Tensor start = s.prefix_length.to(h.device()).index_select(0, prefix_of);  // B
  const at::Tensor positions = (start.unsqueeze(1) + at::arange(T, start.options())).reshape({-1});
  const at::Tensor cos_rows = cos.index_select(0, positions).view({B, 1, T, -1});
  const at::Tensor sin_rows = sin.index_select(0, positions).view({B, 1, T, -1});
  Projected row = project(c, layer, h.narrow(0, own * Tp, B * T), B, T);
  const at::Tensor k = at::cat({k_pre.index_select(0, prefix_of), apply_rotary(row.k, cos_rows, sin_rows)}, 2);
  const at::Tensor v = at::cat({v_pre.index_select(0, prefix_of), row.v}, 2);
  // Row b sees its prefix's first start[b] keys (the rest is padding) and its own causally.
  const at::Tensor attn_rows = prefixed_causal_attention(apply_rotary(row.q, cos_rows, sin_rows), k, v, start, S,
                                                         attention_scale(c))
                                   .transpose(1, 2)
                                   .reshape({B * T, c.q_dim()});
  if (own == 0 || Tp == 0) return attn_rows;
  return at::cat({attn_pre.transpose(1, 2).reshape({own * Tp, c.q_dim()}), attn_rows}, 0);
}

}  // namespace

at::Tensor llama_layer(const LlamaConfig& c, const LlamaLayer& layer, int64_t l, const at::Tensor& x_in,
                       ForwardHooks* hooks, const SharedPrefixes* shared) {
  at::Tensor x = x_in;
  at::Tensor h = hook(hooks, l, LinearSite::attn_in, rms_norm(x, layer.attn_norm, c.norm_eps));
  at::Tensor attn = shared ? shared_prefix_attention(c, layer, l, h, *shared) : self_attention(c, layer, h);
  attn = hook(hooks, l, LinearSite::attn_out, attn);
  x = x + gemm::linear(attn, layer.wo, layer.bo);

  h = hook(hooks, l, LinearSite::mlp_in, rms_norm(x, layer.mlp_norm, c.norm_eps));
  at::Tensor g = at::silu(gemm::linear(h, layer.w_gate)) * gemm::linear(h, layer.w_up);
  g = hook(hooks, l, LinearSite::mlp_out, g);
  return x + gemm::linear(g, layer.w_down);
}

at::Tensor llama_head_input(const LlamaConfig& c, const at::Tensor& final_norm, const at::Tensor& x,
                            ForwardHooks* hooks) {
  return hook(hooks, -1, LinearSite::head, rms_norm(x, final_norm, c.norm_eps));
}

}  // namespace sqlab
