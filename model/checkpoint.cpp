// Format dispatch, the random test model and the rotary row permutations shared by the
// llama2.c and Hugging Face checkpoint code (llama2c.cpp, hf_checkpoint.cpp).
#include "model/checkpoint.h"
#include "model/weight_source.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/random.h"
#include "model/gguf_checkpoint.h"

namespace sqlab {

namespace fs = std::filesystem;

void check_checkpoint_config(const LlamaConfig& c, const std::string& origin) {
  const auto bad = [&](const std::string& what) {
    throw config_error(fmt::format("{}: {} (dim={} hidden_dim={} n_layers={} n_heads={} n_kv_heads={} "
                                   "vocab_size={} max_seq_len={})",
                                   origin, what, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                                   c.vocab_size, c.max_seq_len));
  };
  const std::pair<const char*, int64_t> sizes[] = {
      {"dim", c.dim},           {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers},
      {"n_heads", c.n_heads},   {"n_kv_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size},
      {"max_seq_len", c.max_seq_len}};
  for (const auto& [name, value] : sizes)
    if (value <= 0) bad(fmt::format("{} must be positive, got {}", name, value));
  if (c.explicit_head_dim < 0) bad(fmt::format("head_dim {} is negative", c.explicit_head_dim));
  if (c.explicit_head_dim == 0 && c.dim % c.n_heads != 0)
    bad(fmt::format("dim {} is not a multiple of n_heads {}", c.dim, c.n_heads));
  if (c.head_dim() % 2 != 0) bad(fmt::format("head_dim {} is odd (rotary embeddings rotate pairs)", c.head_dim()));
  if (c.n_heads % c.n_kv_heads != 0)
    bad(fmt::format("n_heads {} is not a multiple of n_kv_heads {}", c.n_heads, c.n_kv_heads));
  if (!(c.norm_eps > 0) || !(c.norm_eps < 1)) bad(fmt::format("norm_eps {} is not in (0, 1)", c.norm_eps));
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) bad(fmt::format("rope_theta {} is not positive", c.rope_theta));
  if (c.sliding_window < 0) bad(fmt::format("sliding_window {} is negative", c.sliding_window));
  if (c.rope.type != RopeScaling::none && !(c.rope.factor >= 1.0 && std::isfinite(c.rope.factor)))
    bad(fmt::format("rope scaling factor {} must be >= 1", c.rope.factor));
  if (c.rope.type == RopeScaling::llama3 &&
      (!(c.rope.high_freq_factor > c.rope.low_freq_factor) || !(c.rope.low_freq_factor > 0) ||
       c.rope.original_max_position <= 0))
    bad(fmt::format("llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor and "
                    "original_max_position_embeddings > 0 (got {}, {}, {})",
                    c.rope.low_freq_factor, c.rope.high_freq_factor, c.rope.original_max_position));
  // Every tensor's element count (and the total) must fit int64: a header with
  // absurd numbers is rejected before anything is allocated.
  checked_mul(checked_mul(c.vocab_size, c.dim, origin), 2, origin);
  checked_mul(c.n_heads, c.head_dim(), origin);
  const int64_t per_layer = checked_add(
      checked_mul(checked_mul(c.dim, std::max(c.dim, c.q_dim()), origin), 4, origin),
      checked_mul(checked_mul(c.dim, c.hidden_dim, origin), 3, origin), origin);
  checked_mul(per_layer, c.n_layers, origin);
  checked_mul(c.max_seq_len, c.head_dim(), origin);
}

int64_t checked_mul(int64_t a, int64_t b, const std::string& origin) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    throw config_error(fmt::format("{}: sizes overflow int64 ({} * {})", origin, a, b));
  return r;
}

int64_t checked_add(int64_t a, int64_t b, const std::string& origin) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r))
    throw config_error(fmt::format("{}: sizes overflow int64 ({} + {})", origin, a, b));
  return r;
}

// HF's conversion script permutes q/k rows with view(h, hd/2, 2, C).transpose(1, 2):
// row 2i+p of a head (interleaved pair i, member p) becomes row p*hd/2 + i.
at::Tensor interleaved_to_rotate_half(const at::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1), head_dim = rows / n_heads;
  return w.reshape({n_heads, head_dim / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

at::Tensor rotate_half_to_interleaved(const at::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1), head_dim = rows / n_heads;
  return w.reshape({n_heads, 2, head_dim / 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

LlamaWeights random_llama(const LlamaConfig& config, uint64_t seed) {
  check_checkpoint_config(config, "random_llama");
  at::Generator gen = make_generator(seed, "random_llama");
  const auto linear = [&](int64_t out, int64_t in) {
    return at::randn({out, in}, gen, at::kFloat) / std::sqrt(static_cast<double>(in));
  };
  const auto gain = [&](int64_t n) { return 1.0 + 0.1 * at::randn({n}, gen, at::kFloat); };
  const int64_t hd = config.head_dim();
  LlamaWeights w;
  w.config = config;
  w.origin = fmt::format("random_llama(seed {})", seed);
  w.embedding = at::randn({config.vocab_size, config.dim}, gen, at::kFloat);
  for (int64_t l = 0; l < config.n_layers; ++l) {
    LlamaLayer layer;
    layer.attn_norm = gain(config.dim);
    layer.wq = linear(config.n_heads * hd, config.dim);
    layer.wk = linear(config.n_kv_heads * hd, config.dim);
    layer.wv = linear(config.n_kv_heads * hd, config.dim);
    layer.wo = linear(config.dim, config.n_heads * hd);
    layer.mlp_norm = gain(config.dim);
    layer.w_gate = linear(config.hidden_dim, config.dim);
    layer.w_up = linear(config.hidden_dim, config.dim);
    layer.w_down = linear(config.dim, config.hidden_dim);
    const auto bias = [&](int64_t n) { return 0.1 * at::randn({n}, gen, at::kFloat); };
    if (config.attention_bias) {
      layer.bq = bias(config.q_dim());
      layer.bk = bias(config.kv_dim());
      layer.bv = bias(config.kv_dim());
    }
    if (config.output_bias) layer.bo = bias(config.dim);
    if (config.qk_norm) {
      layer.q_norm = gain(hd);
      layer.k_norm = gain(hd);
    }
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = gain(config.dim);
  w.output = config.tied_embeddings ? w.embedding : linear(config.vocab_size, config.dim);
  return w;
}

void check_weights_shapes(const LlamaWeights& w, const std::string& origin) {
  const LlamaConfig& c = w.config;
  check_checkpoint_config(c, origin);
  const int64_t hd = c.head_dim();
  const auto expect = [&](const at::Tensor& t, std::vector<int64_t> shape, const std::string& name) {
    if (!t.defined() || t.sizes().vec() != shape)
      throw Error(fmt::format("{}: tensor {} has shape [{}], expected [{}]", origin, name,
                              t.defined() ? fmt::format("{}", fmt::join(t.sizes(), ", ")) : "undefined",
                              fmt::join(shape, ", ")));
  };
  if (static_cast<int64_t>(w.layers.size()) != c.n_layers)
    throw Error(fmt::format("{}: {} layers, config says {}", origin, w.layers.size(), c.n_layers));
  expect(w.embedding, {c.vocab_size, c.dim}, "embedding");
  expect(w.final_norm, {c.dim}, "final_norm");
  expect(w.output, {c.vocab_size, c.dim}, "output");
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayer& L = w.layers[l];
    const std::string p = fmt::format("layers.{}.", l);
    expect(L.attn_norm, {c.dim}, p + "attn_norm");
    expect(L.wq, {c.n_heads * hd, c.dim}, p + "wq");
    expect(L.wk, {c.n_kv_heads * hd, c.dim}, p + "wk");
    expect(L.wv, {c.n_kv_heads * hd, c.dim}, p + "wv");
    expect(L.wo, {c.dim, c.n_heads * hd}, p + "wo");
    expect(L.mlp_norm, {c.dim}, p + "mlp_norm");
    expect(L.w_gate, {c.hidden_dim, c.dim}, p + "w_gate");
    expect(L.w_up, {c.hidden_dim, c.dim}, p + "w_up");
    expect(L.w_down, {c.dim, c.hidden_dim}, p + "w_down");
    // The family's optional tensors: present exactly when the config says so.
    const auto optional = [&](const at::Tensor& t, bool wanted, int64_t size, const std::string& name) {
      if (wanted) {
        expect(t, {size}, p + name);
      } else if (t.defined()) {
        throw Error(fmt::format("{}: tensor {} is present but the config has no such tensor", origin, p + name));
      }
    };
    optional(L.bq, c.attention_bias, c.q_dim(), "bq");
    optional(L.bk, c.attention_bias, c.kv_dim(), "bk");
    optional(L.bv, c.attention_bias, c.kv_dim(), "bv");
    optional(L.bo, c.output_bias, c.dim, "bo");
    optional(L.q_norm, c.qk_norm, hd, "q_norm");
    optional(L.k_norm, c.qk_norm, hd, "k_norm");
  }
}

namespace {

constexpr uint32_t kLlama2cMagic = 0x616b3432;  // "ak42"

bool starts_like_llama2c(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  int32_t head[7] = {};
  if (!in.read(reinterpret_cast<char*>(head), sizeof head)) return false;
  if (static_cast<uint32_t>(head[0]) == kLlama2cMagic) return true;
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return false;
  size_t header_bytes = 0;
  bool shared = false;
  try {
    parse_llama2c_header(reinterpret_cast<const uint8_t*>(head), sizeof head, size, path, &header_bytes, &shared);
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::string detect_checkpoint_format(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw config_error(fmt::format("checkpoint '{}': no such file or directory", path));
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / "config.json", ec)) return "hf";
    throw config_error(fmt::format("checkpoint '{}': a directory without config.json (expected a Hugging Face "
                                   "checkpoint directory)",
                                   path));
  }
  if (is_gguf_file(path)) return "gguf";
  if (fs::path(path).extension() == ".bin" || starts_like_llama2c(path)) return "llama2c";
  throw config_error(fmt::format("checkpoint '{}': unknown format (expected a GGUF file, a llama2.c .bin file or a "
                                 "Hugging Face directory with config.json; pass the format explicitly otherwise)",
                                 path));
}

LlamaWeights load_checkpoint(const std::string& path, const std::string& format) {
  return read_all_weights(*open_weights(path, format));
}

}  // namespace sqlab
