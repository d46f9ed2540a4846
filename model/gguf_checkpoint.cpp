#include "model/gguf_checkpoint.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/families.h"
#include "model/weight_source.h"

namespace sqlab {
namespace {

[[noreturn]] void fail(const std::string& origin, const std::string& message) {
  throw config_error(fmt::format("GGUF model '{}': {}", origin, message));
}

int64_t positive(const GgufMetadata& md, const std::string& key, const std::string& origin) {
  const uint64_t v = md.get_u64(key);
  if (v == 0 || v > (1ull << 40)) fail(origin, fmt::format("{} = {} is not a positive size", key, v));
  return static_cast<int64_t>(v);
}

// Reads one tensor, checks its shape and values.
class TensorReader {
 public:
  explicit TensorReader(const GgufFile& file) : file_(file) {}

  // The tensor's presence and shape, without reading it.
  void check(const std::string& name, const std::vector<int64_t>& shape) {
    const GgufTensorInfo* info = file_.find(name);
    if (!info) fail(file_.path(), fmt::format("tensor '{}' is missing", name));
    used_.insert(name);
    if (info->shape() != shape)
      fail(file_.path(), fmt::format("tensor '{}' has shape [{}], the metadata implies [{}]", name,
                                     fmt::join(info->shape(), ", "), fmt::join(shape, ", ")));
  }

  // The tensor dequantized to float32, checked.
  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) {
    check(name, shape);
    at::Tensor t = file_.tensor(name);
    if (!at::isfinite(t).all().item<bool>()) fail(file_.path(), fmt::format("tensor '{}' holds NaN or Inf", name));
    return t;
  }

  // Every tensor of the file was read: an unknown one may change the model (a bias, a
  // rope_freqs table) and is refused rather than ignored.
  void reject_unused() const {
    for (const GgufTensorInfo& info : file_.tensors())
      if (!used_.count(info.name))
        fail(file_.path(), fmt::format("tensor '{}' is not part of a LLaMA model sqlab reads", info.name));
  }

 private:
  const GgufFile& file_;
  std::set<std::string> used_;
};

std::string blk(int64_t layer, const char* rest) { return fmt::format("blk.{}.{}.weight", layer, rest); }
std::string blk_bias(int64_t layer, const char* rest) { return fmt::format("blk.{}.{}.bias", layer, rest); }

}  // namespace

bool is_gguf_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

// The GGUF architectures sqlab reads: llama.cpp writes LLaMA and Mistral as 'llama' (q/k
// rows permuted for its interleaved rotary), Qwen2/2.5 as 'qwen2' and Qwen3 as 'qwen3'
// (rows as in Hugging Face: their rotary is NEOX-style, which is rotate-half).
bool permutes_qk(const std::string& arch) { return arch == "llama"; }

LlamaConfig llama_config_from_gguf(const GgufMetadata& md, const std::string& origin) {
  const std::string& arch = md.get_string("general.architecture");
  std::vector<std::string> readable;  // the GGUF architectures of the families sqlab reads
  for (const ModelFamily& f : model_families())
    if (std::find(readable.begin(), readable.end(), f.gguf_arch) == readable.end()) readable.push_back(f.gguf_arch);
  if (std::find(readable.begin(), readable.end(), arch) == readable.end())
    fail(origin, fmt::format("general.architecture is '{}'; sqlab reads {} GGUF models", arch,
                             fmt::format("'{}'", fmt::join(readable, "', '"))));
  const std::string p = arch + ".";
  LlamaConfig c;
  c.architecture = arch;
  c.attention_bias = arch == "qwen2";
  c.qk_norm = arch == "qwen3";
  if (md.has(p + "attention.key_length")) c.explicit_head_dim = positive(md, p + "attention.key_length", origin);
  c.dim = positive(md, p + "embedding_length", origin);
  c.n_layers = positive(md, p + "block_count", origin);
  c.hidden_dim = positive(md, p + "feed_forward_length", origin);
  c.n_heads = positive(md, p + "attention.head_count", origin);
  c.n_kv_heads = md.has(p + "attention.head_count_kv") ? positive(md, p + "attention.head_count_kv", origin) : c.n_heads;
  c.max_seq_len = positive(md, p + "context_length", origin);
  c.norm_eps = md.get_f64(p + "attention.layer_norm_rms_epsilon");
  c.rope_theta = md.has(p + "rope.freq_base") ? md.get_f64(p + "rope.freq_base") : 10000.0;
  if (md.has(p + "vocab_size"))
    c.vocab_size = positive(md, p + "vocab_size", origin);
  else if (md.has("tokenizer.ggml.tokens"))
    c.vocab_size = static_cast<int64_t>(md.get_string_array("tokenizer.ggml.tokens").size());
  if (c.n_heads > 0 && (c.explicit_head_dim > 0 || c.dim % c.n_heads == 0) && md.has(p + "rope.dimension_count") &&
      positive(md, p + "rope.dimension_count", origin) != c.head_dim())
    fail(origin, fmt::format("{}rope.dimension_count = {} rotates part of each head (head dim {}): not supported", p,
                             md.get_u64(p + "rope.dimension_count"), c.head_dim()));
  if (md.has(p + "rope.scaling.type") && md.get_string(p + "rope.scaling.type") != "none")
    fail(origin, fmt::format("{}rope.scaling.type '{}' is not supported", p, md.get_string(p + "rope.scaling.type")));
  if (md.has("tokenizer.ggml.bos_token_id")) c.bos_id = md.get_i64("tokenizer.ggml.bos_token_id");
  if (md.has("tokenizer.ggml.eos_token_id")) c.eos_id = md.get_i64("tokenizer.ggml.eos_token_id");
  check_checkpoint_config(c, fmt::format("GGUF model '{}'", origin));
  return c;
}

namespace {

using TensorGetter = std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

LlamaLayer read_layer(const TensorGetter& get, const LlamaConfig& c, int64_t l) {
  const int64_t hd = c.head_dim(), q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const bool permuted = permutes_qk(c.architecture);
  // Undefined while only checking (the getter returns no tensor then).
  const auto qk = [&](const at::Tensor& t, int64_t heads) {
    return permuted && t.defined() ? interleaved_to_rotate_half(t, heads) : t;
  };
  // A bias of a permuted q/k is permuted like its rows.
  const auto qk_bias = [&](const at::Tensor& b, int64_t heads) {
    return b.defined() ? qk(b.unsqueeze(1), heads).squeeze(1) : b;
  };
  LlamaLayer L;
  L.attn_norm = get(blk(l, "attn_norm"), {c.dim});
  L.wq = qk(get(blk(l, "attn_q"), {q_dim, c.dim}), c.n_heads);
  L.wk = qk(get(blk(l, "attn_k"), {kv_dim, c.dim}), c.n_kv_heads);
  L.wv = get(blk(l, "attn_v"), {kv_dim, c.dim});
  L.wo = get(blk(l, "attn_output"), {c.dim, q_dim});
  L.mlp_norm = get(blk(l, "ffn_norm"), {c.dim});
  L.w_gate = get(blk(l, "ffn_gate"), {c.hidden_dim, c.dim});
  L.w_up = get(blk(l, "ffn_up"), {c.hidden_dim, c.dim});
  L.w_down = get(blk(l, "ffn_down"), {c.dim, c.hidden_dim});
  if (c.attention_bias) {
    L.bq = qk_bias(get(blk_bias(l, "attn_q"), {q_dim}), c.n_heads);
    L.bk = qk_bias(get(blk_bias(l, "attn_k"), {kv_dim}), c.n_kv_heads);
    L.bv = get(blk_bias(l, "attn_v"), {kv_dim});
  }
  if (c.output_bias) L.bo = get(blk_bias(l, "attn_output"), {c.dim});
  if (c.qk_norm) {
    L.q_norm = get(blk(l, "attn_q_norm"), {hd});
    L.k_norm = get(blk(l, "attn_k_norm"), {hd});
  }
  return L;
}

// A GGUF file opened for the pipeline: every tensor's presence and shape checked on open
// (and no tensor the model does not use), each dequantized on request.
class GgufWeights final : public WeightSource {
 public:
  explicit GgufWeights(const std::string& path) : origin_(path), file_(path), reader_(file_) {
    config_ = llama_config_from_gguf(file_.metadata(), path);
    // A LLaMA GGUF may carry attention biases (attention_bias: true in its config.json).
    if (file_.contains(blk_bias(0, "attn_q"))) config_.attention_bias = true;
    if (file_.contains(blk_bias(0, "attn_output"))) config_.output_bias = true;
    config_.tied_embeddings = !file_.contains("output.weight");
    const LlamaConfig& c = config_;
    const TensorGetter check = [&](const std::string& name, const std::vector<int64_t>& shape) {
      reader_.check(name, shape);
      return at::Tensor();
    };
    check("token_embd.weight", {c.vocab_size, c.dim});
    for (int64_t l = 0; l < c.n_layers; ++l) read_layer(check, c, l);
    check("output_norm.weight", {c.dim});
    if (!c.tied_embeddings) check("output.weight", {c.vocab_size, c.dim});
    reader_.reject_unused();
  }

  const LlamaConfig& config() const override { return config_; }
  const std::string& origin() const override { return origin_; }
  at::Tensor embedding() const override { return reader_.get("token_embd.weight", {config_.vocab_size, config_.dim}); }
  at::Tensor final_norm() const override { return reader_.get("output_norm.weight", {config_.dim}); }
  at::Tensor output() const override {
    if (config_.tied_embeddings) return embedding();
    return reader_.get("output.weight", {config_.vocab_size, config_.dim});
  }
  LlamaLayer layer(int64_t index) const override {
    return read_layer([&](const std::string& name, const std::vector<int64_t>& shape) { return reader_.get(name, shape); },
                      config_, index);
  }

 private:
  LlamaConfig config_;
  std::string origin_;
  GgufFile file_;
  mutable TensorReader reader_;
};

}  // namespace

WeightSourcePtr open_gguf_weights(const std::string& path) { return std::make_shared<GgufWeights>(path); }

LlamaWeights load_gguf(const std::string& path) { return read_all_weights(GgufWeights(path)); }

BpeVocab bpe_vocab_from_gguf(const GgufMetadata& md, const std::string& origin) {
  const std::string& model = md.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    fail(origin, fmt::format("tokenizer.ggml.model is '{}'; sqlab reads 'gpt2' (byte-level BPE) tokenizers from GGUF "
                             "files (a sentencepiece model: give its tokenizer.model as model.tokenizer)",
                             model));
  BpeVocab v;
  v.tokens = md.get_string_array("tokenizer.ggml.tokens");
  if (md.has("tokenizer.ggml.token_type")) v.token_types = md.get_i32_array("tokenizer.ggml.token_type");
  v.merges = md.get_string_array("tokenizer.ggml.merges");
  if (md.has("tokenizer.ggml.bos_token_id")) v.bos_id = md.get_i64("tokenizer.ggml.bos_token_id");
  if (md.has("tokenizer.ggml.eos_token_id")) v.eos_id = md.get_i64("tokenizer.ggml.eos_token_id");
  if (md.has("tokenizer.ggml.pre")) v.pre = md.get_string("tokenizer.ggml.pre");
  if (md.has("tokenizer.ggml.add_bos_token")) v.add_bos = md.get_bool("tokenizer.ggml.add_bos_token");
  return v;
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::string& path) {
  const GgufFile file(path);
  return make_bpe_tokenizer(bpe_vocab_from_gguf(file.metadata(), path), path);
}

void save_gguf(const LlamaWeights& w, const std::string& path, GgmlType type, const BpeVocab& vocab) {
  const LlamaConfig& c = w.config;
  // GGUF says nothing of rope scaling or a sliding window here (llama.cpp keeps llama3's
  // scaling as a rope_freqs tensor): such a model is refused rather than written wrongly.
  if (c.rope.type != RopeScaling::none || c.sliding_window > 0)
    throw config_error(fmt::format("GGUF model '{}': sqlab writes no rope scaling or sliding window to GGUF ({} "
                                   "model); write it as a Hugging Face checkpoint (save_hf)", path, c.architecture));
  const std::string arch = c.architecture == "mistral" ? "llama" : c.architecture;
  const std::string p = arch + ".";
  GgufMetadata md(path);
  md.set("general.architecture", GgufValue::str(arch));
  md.set(p + "context_length", GgufValue::u32(static_cast<uint32_t>(c.max_seq_len)));
  md.set(p + "embedding_length", GgufValue::u32(static_cast<uint32_t>(c.dim)));
  md.set(p + "block_count", GgufValue::u32(static_cast<uint32_t>(c.n_layers)));
  md.set(p + "feed_forward_length", GgufValue::u32(static_cast<uint32_t>(c.hidden_dim)));
  md.set(p + "attention.head_count", GgufValue::u32(static_cast<uint32_t>(c.n_heads)));
  md.set(p + "attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(c.n_kv_heads)));
  md.set(p + "rope.freq_base", GgufValue::f32(static_cast<float>(c.rope_theta)));
  md.set(p + "attention.layer_norm_rms_epsilon", GgufValue::f32(static_cast<float>(c.norm_eps)));
  md.set(p + "rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(c.head_dim())));
  if (c.explicit_head_dim > 0) {
    md.set(p + "attention.key_length", GgufValue::u32(static_cast<uint32_t>(c.head_dim())));
    md.set(p + "attention.value_length", GgufValue::u32(static_cast<uint32_t>(c.head_dim())));
  }
  md.set(p + "vocab_size", GgufValue::u32(static_cast<uint32_t>(c.vocab_size)));
  if (!vocab.tokens.empty()) {
    md.set("tokenizer.ggml.model", GgufValue::str("gpt2"));
    md.set("tokenizer.ggml.pre", GgufValue::str(vocab.pre));
    md.set("tokenizer.ggml.tokens", GgufValue::string_array(vocab.tokens));
    if (!vocab.token_types.empty()) md.set("tokenizer.ggml.token_type", GgufValue::i32_array(vocab.token_types));
    md.set("tokenizer.ggml.merges", GgufValue::string_array(vocab.merges));
    if (vocab.bos_id >= 0) md.set("tokenizer.ggml.bos_token_id", GgufValue::u32(static_cast<uint32_t>(vocab.bos_id)));
    if (vocab.eos_id >= 0) md.set("tokenizer.ggml.eos_token_id", GgufValue::u32(static_cast<uint32_t>(vocab.eos_id)));
    md.set("tokenizer.ggml.add_bos_token", GgufValue::of_bool(vocab.add_bos));
  } else {
    md.set("tokenizer.ggml.bos_token_id", GgufValue::u32(static_cast<uint32_t>(c.bos_id)));
    md.set("tokenizer.ggml.eos_token_id", GgufValue::u32(static_cast<uint32_t>(c.eos_id)));
  }
  std::vector<GgufWriteTensor> tensors;
  auto matrix = [&](std::string name, const at::Tensor& t) { tensors.push_back({std::move(name), t, type}); };
  auto norm = [&](std::string name, const at::Tensor& t) { tensors.push_back({std::move(name), t, GgmlType::F32}); };
  matrix("token_embd.weight", w.embedding);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = w.layers[static_cast<size_t>(l)];
    norm(blk(l, "attn_norm"), L.attn_norm);
    const bool permute = permutes_qk(arch);
    const auto qk = [&](const at::Tensor& t, int64_t heads) { return permute ? rotate_half_to_interleaved(t, heads) : t; };
    matrix(blk(l, "attn_q"), qk(L.wq, c.n_heads));
    matrix(blk(l, "attn_k"), qk(L.wk, c.n_kv_heads));
    matrix(blk(l, "attn_v"), L.wv);
    matrix(blk(l, "attn_output"), L.wo);
    norm(blk(l, "ffn_norm"), L.mlp_norm);
    matrix(blk(l, "ffn_gate"), L.w_gate);
    matrix(blk(l, "ffn_up"), L.w_up);
    matrix(blk(l, "ffn_down"), L.w_down);
    const auto vec = [&](const at::Tensor& b, int64_t heads) { return qk(b.unsqueeze(1), heads).squeeze(1); };
    if (L.bq.defined()) norm(blk_bias(l, "attn_q"), vec(L.bq, c.n_heads));
    if (L.bk.defined()) norm(blk_bias(l, "attn_k"), vec(L.bk, c.n_kv_heads));
    if (L.bv.defined()) norm(blk_bias(l, "attn_v"), L.bv);
    if (L.bo.defined()) norm(blk_bias(l, "attn_output"), L.bo);
    if (L.q_norm.defined()) norm(blk(l, "attn_q_norm"), L.q_norm);
    if (L.k_norm.defined()) norm(blk(l, "attn_k_norm"), L.k_norm);
  }
  norm("output_norm.weight", w.final_norm);
  const bool tied = c.tied_embeddings || (w.output.defined() && w.output.is_same(w.embedding));
  if (!tied) matrix("output.weight", w.output);
  write_gguf(path, md, tensors);
}

}  // namespace sqlab
