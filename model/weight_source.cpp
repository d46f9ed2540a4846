#include "model/weight_source.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "core/random.h"
#include "model/checkpoint.h"

namespace sqlab {
namespace {

class MemoryWeights final : public WeightSource {
 public:
  explicit MemoryWeights(LlamaWeights weights) : w_(std::move(weights)) {}
  const LlamaConfig& config() const override { return w_.config; }
  const std::string& origin() const override { return w_.origin; }
  at::Tensor embedding() const override { return w_.embedding; }
  at::Tensor final_norm() const override { return w_.final_norm; }
  at::Tensor output() const override { return w_.output; }
  LlamaLayer layer(int64_t index) const override {
    if (index < 0 || index >= static_cast<int64_t>(w_.layers.size()))
      throw Error(fmt::format("{}: no layer {} (the model has {})", w_.origin, index, w_.layers.size()));
    return w_.layers[static_cast<size_t>(index)];
  }

 private:
  LlamaWeights w_;
};

// Tensors drawn per name; nothing is kept.
class RandomWeights final : public WeightSource {
 public:
  RandomWeights(const LlamaConfig& config, uint64_t seed)
      : config_(config), seed_(seed), origin_(fmt::format("random weights (seed {})", seed)) {
    check_checkpoint_config(config_, origin_);
  }
  const LlamaConfig& config() const override { return config_; }
  const std::string& origin() const override { return origin_; }
  at::Tensor embedding() const override { return normal("embedding", {config_.vocab_size, config_.dim}, 1.0); }
  at::Tensor final_norm() const override { return gain("final_norm", config_.dim); }
  at::Tensor output() const override {
    if (config_.tied_embeddings) return embedding();
    return linear("output", config_.vocab_size, config_.dim);
  }
  LlamaLayer layer(int64_t l) const override {
    const LlamaConfig& c = config_;
    const std::string p = fmt::format("layer{}.", l);
    LlamaLayer L;
    L.attn_norm = gain(p + "attn_norm", c.dim);
    L.wq = linear(p + "wq", c.q_dim(), c.dim);
    L.wk = linear(p + "wk", c.kv_dim(), c.dim);
    L.wv = linear(p + "wv", c.kv_dim(), c.dim);
    L.wo = linear(p + "wo", c.dim, c.q_dim());
    L.mlp_norm = gain(p + "mlp_norm", c.dim);
    L.w_gate = linear(p + "w_gate", c.hidden_dim, c.dim);
    L.w_up = linear(p + "w_up", c.hidden_dim, c.dim);
    L.w_down = linear(p + "w_down", c.dim, c.hidden_dim);
    if (c.attention_bias) {
      L.bq = normal(p + "bq", {c.q_dim()}, 0.1);
      L.bk = normal(p + "bk", {c.kv_dim()}, 0.1);
      L.bv = normal(p + "bv", {c.kv_dim()}, 0.1);
    }
    if (c.output_bias) L.bo = normal(p + "bo", {c.dim}, 0.1);
    if (c.qk_norm) {
      L.q_norm = gain(p + "q_norm", c.head_dim());
      L.k_norm = gain(p + "k_norm", c.head_dim());
    }
    return L;
  }

 private:
  at::Tensor normal(const std::string& name, at::IntArrayRef shape, double std) const {
    at::Generator g = make_generator(seed_, "random_weights/" + name);
    return at::randn(shape, g, at::kFloat).mul_(std);
  }
  at::Tensor linear(const std::string& name, int64_t out, int64_t in) const {
    return normal(name, {out, in}, 1.0 / std::sqrt(static_cast<double>(in)));
  }
  at::Tensor gain(const std::string& name, int64_t n) const { return normal(name, {n}, 0.1).add_(1.0); }

  LlamaConfig config_;
  uint64_t seed_;
  std::string origin_;
};

struct Shape {
  const char* name;
  int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, context;
  double rope_theta;
};

// From the models' config.json files (hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads, vocab_size, max_position_embeddings, rope_theta).
constexpr Shape kShapes[] = {
    {"llama-2-7b", 4096, 11008, 32, 32, 32, 32000, 4096, 10000.0},
    {"llama-2-13b", 5120, 13824, 40, 40, 40, 32000, 4096, 10000.0},
    {"llama-2-70b", 8192, 28672, 80, 64, 8, 32000, 4096, 10000.0},
    {"llama-3-8b", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0},
    {"tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000, 2048, 10000.0},
};

}  // namespace

WeightSourcePtr random_weights(const LlamaConfig& config, uint64_t seed) {
  return std::make_shared<RandomWeights>(config, seed);
}

const LlamaConfig* generated_shape(const std::string& name) {
  static const std::map<std::string, LlamaConfig> shapes = [] {
    std::map<std::string, LlamaConfig> out;
    for (const Shape& s : kShapes) {
      LlamaConfig c;
      c.dim = s.dim;
      c.hidden_dim = s.hidden_dim;
      c.n_layers = s.n_layers;
      c.n_heads = s.n_heads;
      c.n_kv_heads = s.n_kv_heads;
      c.vocab_size = s.vocab_size;
      c.max_seq_len = s.context;
      c.rope_theta = s.rope_theta;
      c.norm_eps = 1e-5;
      out[s.name] = c;
    }
    return out;
  }();
  const auto it = shapes.find(name);
  return it == shapes.end() ? nullptr : &it->second;
}

std::vector<std::string> generated_shape_names() {
  std::vector<std::string> out;
  for (const Shape& s : kShapes) out.push_back(s.name);
  return out;
}

WeightSourcePtr weights_in_memory(LlamaWeights weights) { return std::make_shared<MemoryWeights>(std::move(weights)); }

WeightSourcePtr open_weights(const std::string& path, const std::string& format) {
  const std::string chosen = format == "auto" ? detect_checkpoint_format(path) : format;
  if (chosen == "llama2c") return weights_in_memory(load_llama2c(path));
  if (chosen == "hf") return open_hf_weights(path);
  if (chosen == "gguf") return open_gguf_weights(path);
  throw config_error(
      fmt::format("checkpoint '{}': unknown format '{}' (expected auto, hf, llama2c or gguf)", path, format));
}

LlamaWeights read_all_weights(const WeightSource& source) {
  LlamaWeights w;
  w.config = source.config();
  w.origin = source.origin();
  w.embedding = source.embedding();
  for (int64_t l = 0; l < w.config.n_layers; ++l) w.layers.push_back(source.layer(l));
  w.final_norm = source.final_norm();
  w.output = w.config.tied_embeddings ? w.embedding : source.output();
  return w;
}

}  // namespace sqlab
