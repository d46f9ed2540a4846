// Hugging Face checkpoint directories of the LLaMA family (LLaMA, Mistral, Qwen2, Qwen3;
// model/families.h): config.json plus model.safetensors or
// model.safetensors.index.json ("weight_map": tensor -> shard file). Tensors are read
// through the project's one safetensors reader (io/safetensors.h), memory-mapped,
// converted per tensor from F32/F16/BF16 to float32. HF q/k rows are already in the
// rotate-half rotary layout that llama_forward uses.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/json_nesting.h"
#include "core/system.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/families.h"
#include "model/weight_source.h"

namespace sqlab {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

[[noreturn]] void fail(const std::string& origin, const std::string& message) {
  throw config_error(fmt::format("{}: {}", origin, message));
}

json parse_json_object(const std::string& text, const std::string& origin) {
  if (json_nesting_depth(text.data(), text.size()) > 32) fail(origin, "JSON is nested deeper than 32 levels");
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) fail(origin, "not valid JSON");
  if (!root.is_object()) fail(origin, fmt::format("expected a JSON object, got {}", root.type_name()));
  return root;
}

std::string read_file_text(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw config_error(fmt::format("{} '{}': cannot open", what, path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int64_t integer_value(const json& v, const std::string& key, const std::string& origin) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) fail(origin, fmt::format("key '{}': {} is too large", key, v.dump()));
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  fail(origin, fmt::format("key '{}' must be an integer, got {}", key, v.dump()));
}

int64_t required_int(const json& root, const std::string& key, const std::string& origin) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) fail(origin, fmt::format("missing key '{}'", key));
  return integer_value(*it, key, origin);
}

int64_t optional_int(const json& root, const std::string& key, int64_t fallback, const std::string& origin) {
  const auto it = root.find(key);
  return it == root.end() || it->is_null() ? fallback : integer_value(*it, key, origin);
}

double optional_number(const json& root, const std::string& key, double fallback, const std::string& origin) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail(origin, fmt::format("key '{}' must be a number, got {}", key, it->dump()));
  return it->get<double>();
}

// bos/eos: an integer, or a list of them (Llama 3 lists several eos ids: the first is
// used to stop generation).
int64_t token_id(const json& root, const std::string& key, int64_t fallback, const std::string& origin) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) return fallback;
  if (it->is_array()) {
    if (it->empty()) return fallback;
    return integer_value((*it)[0], key, origin);
  }
  return integer_value(*it, key, origin);
}

bool optional_bool(const json& root, const std::string& key, bool fallback, const std::string& origin) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(origin, fmt::format("key '{}' must be true or false, got {}", key, it->dump()));
  return it->get<bool>();
}

std::string architecture_of(const json& root, const std::string& origin) {
  const auto type = root.find("model_type");
  const std::string supported = model_families_text();
  std::string model_type = "llama";  // old LLaMA configs carry no model_type
  if (type != root.end() && !type->is_null()) {
    if (!type->is_string() || !find_model_family(type->get<std::string>()))
      fail(origin, fmt::format("key 'model_type' is {}: sqlab reads {}", type->dump(), supported));
    model_type = type->get<std::string>();
  }
  if (const auto it = root.find("architectures"); it != root.end() && !it->is_null()) {
    const std::string& expected = find_model_family(model_type)->hf_class;
    if (!it->is_array() || it->size() != 1 || !(*it)[0].is_string() || (*it)[0] != expected)
      fail(origin, fmt::format("key 'architectures' is {}: a '{}' checkpoint must be [\"{}\"] (sqlab reads {})",
                               it->dump(), model_type, expected, supported));
  }
  return model_type;
}

// Rotary scaling: old configs say `rope_theta` and `rope_scaling`, transformers 5 writes
// both into `rope_parameters`. Types other than default, linear, dynamic and llama3 are
// refused by name (yarn, longrope, ... change the math in ways this forward does not do).
void read_rope(const json& root, LlamaConfig& c, const std::string& origin) {
  c.rope_theta = optional_number(root, "rope_theta", 10000.0, origin);
  const char* key = "rope_scaling";
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) {
    key = "rope_parameters";
    it = root.find(key);
  }
  if (it == root.end() || it->is_null()) return;
  if (!it->is_object()) fail(origin, fmt::format("key '{}' must be an object, got {}", key, it->dump()));
  const json& r = *it;
  c.rope_theta = optional_number(r, "rope_theta", c.rope_theta, origin);
  std::string type = "default";
  for (const char* name : {"rope_type", "type"})
    if (const auto t = r.find(name); t != r.end() && t->is_string()) type = t->get<std::string>();
  const std::string where = fmt::format("{}.rope_type", key);
  if (type == "default") return;
  c.rope.factor = optional_number(r, "factor", 1.0, origin);
  if (type == "linear") {
    c.rope.type = RopeScaling::linear;
  } else if (type == "dynamic") {
    c.rope.type = RopeScaling::dynamic;
  } else if (type == "llama3") {
    c.rope.type = RopeScaling::llama3;
    c.rope.low_freq_factor = optional_number(r, "low_freq_factor", 1.0, origin);
    c.rope.high_freq_factor = optional_number(r, "high_freq_factor", 4.0, origin);
    c.rope.original_max_position = optional_int(r, "original_max_position_embeddings", 0, origin);
  } else {
    fail(origin, fmt::format("key '{}' is \"{}\": sqlab implements default, linear, dynamic (within the context) "
                             "and llama3 rotary scaling", where, type));
  }
}

// What the family adds to the LLaMA forward, and the options that would change the math
// in ways this forward does not implement: refused by name, never loaded wrongly.
void read_family_options(const json& root, LlamaConfig& c, const std::string& origin) {
  const std::string& family = c.architecture;
  if (const auto it = root.find("hidden_act"); it != root.end() && !it->is_null() && *it != "silu")
    fail(origin, fmt::format("key 'hidden_act' is {}: only \"silu\" (SwiGLU) is supported", it->dump()));
  if (optional_bool(root, "mlp_bias", false, origin))
    fail(origin, "key 'mlp_bias' is true: biases in the MLP are not supported");
  if (family == "qwen2") {
    c.attention_bias = true;  // Qwen2Attention: q/k/v with bias, o without
  } else if (family == "llama" || family == "qwen3") {
    c.attention_bias = c.output_bias = optional_bool(root, "attention_bias", false, origin);
  } else if (optional_bool(root, "attention_bias", false, origin)) {
    fail(origin, fmt::format("key 'attention_bias' is true: a '{}' checkpoint has no attention biases", family));
  }
  c.qk_norm = family == "qwen3";
  if (const auto it = root.find("head_dim"); it != root.end() && !it->is_null())
    c.explicit_head_dim = integer_value(*it, "head_dim", origin);
  if (family == "mistral") {
    c.sliding_window = optional_int(root, "sliding_window", 0, origin);
  } else if (optional_bool(root, "use_sliding_window", false, origin)) {
    fail(origin, "key 'use_sliding_window' is true: sliding-window attention is supported for Mistral only");
  }
  if (const auto it = root.find("layer_types"); it != root.end() && it->is_array())
    for (const auto& t : *it)
      if (t != "full_attention" && !(family == "mistral" && t == "sliding_attention"))
        fail(origin, fmt::format("key 'layer_types' holds {}: only full attention is supported", t.dump()));
  // Mixture of experts, soft-capping, partial rotary: other architectures' math.
  for (const char* key : {"num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
                          "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"})
    if (const auto it = root.find(key); it != root.end() && !it->is_null() && !(it->is_number() && *it == 0))
      fail(origin, fmt::format("key '{}' is {}: not supported (sqlab reads dense LLaMA-family decoders)", key,
                               it->dump()));
  if (optional_number(root, "partial_rotary_factor", 1.0, origin) != 1.0)
    fail(origin, "key 'partial_rotary_factor' is not 1: partial rotary embeddings are not supported");
}

// Tensors of a checkpoint directory, by name, from the single file or the shards.
class TensorSource {
 public:
  explicit TensorSource(const std::string& dir) : dir_(dir) {
    const fs::path index = fs::path(dir) / kIndexFile, single = fs::path(dir) / kSingleFile;
    std::error_code ec;
    if (fs::exists(index, ec)) {
      read_index(index.string());
    } else if (fs::exists(single, ec)) {
      const SafetensorsFile& file = open(kSingleFile, "");
      for (const std::string& name : file.names()) file_of_[name] = kSingleFile;
    } else {
      fail(origin(), fmt::format("neither {} nor {} is there", kSingleFile, kIndexFile));
    }
  }

  std::string origin() const { return fmt::format("Hugging Face checkpoint '{}'", dir_); }

  bool contains(const std::string& name) const { return file_of_.count(name) > 0; }

  // The tensor's presence, dtype and shape (what config.json implies), without reading it.
  void check(const std::string& name, const std::vector<int64_t>& shape) {
    entry(name, shape);
  }

  // The tensor as float32, checked against the shape config.json implies.
  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) {
    const SafetensorsFile& file = entry(name, shape);
    at::Tensor t = file.tensor(name, at::kFloat);
    if (!at::isfinite(t).all().item<bool>())
      fail(origin(), fmt::format("tensor '{}' in '{}' holds NaN or infinite values", name, file.path()));
    return t;
  }

  void mark_used(const std::string& name) { used_.insert(name); }

  // Tensors this loader does not know (biases, other architectures) are an error rather
  // than silently ignored; old checkpoints' rotary inv_freq buffers are not weights.
  void reject_unused() const {
    for (const auto& [name, file] : file_of_) {
      if (used_.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos) continue;
      fail(origin(), fmt::format("unexpected tensor '{}' in '{}' (not part of a LLaMA checkpoint this loader "
                                 "understands)",
                                 name, (fs::path(dir_) / file).string()));
    }
  }

 private:
  const SafetensorsFile& entry(const std::string& name, const std::vector<int64_t>& shape) {
    const auto it = file_of_.find(name);
    if (it == file_of_.end()) fail(origin(), fmt::format("tensor '{}' is missing{}", name, where()));
    used_.insert(name);
    const SafetensorsFile& file = open(it->second, name);
    const SafetensorsEntry* e = file.find(name);
    if (!e)
      fail(origin(), fmt::format("tensor '{}' is listed in {} for '{}' but is not in that file", name, kIndexFile,
                                 file.path()));
    if (e->dtype != "F32" && e->dtype != "F16" && e->dtype != "BF16")
      fail(origin(), fmt::format("tensor '{}' in '{}' has dtype {}: only F32, F16 and BF16 are supported", name,
                                 file.path(), e->dtype));
    if (e->shape != shape)
      fail(origin(), fmt::format("tensor '{}' in '{}' has shape [{}] but config.json implies [{}]", name, file.path(),
                                 fmt::join(e->shape, ", "), fmt::join(shape, ", ")));
    return file;
  }

  std::string where() const { return shards_listed_ ? fmt::format(" (not in {})", kIndexFile) : fmt::format(" (not in {})", kSingleFile); }

  void read_index(const std::string& path) {
    shards_listed_ = true;
    const std::string origin = fmt::format("Hugging Face index '{}'", path);
    const json root = parse_json_object(read_file_text(path, "Hugging Face index"), origin);
    const auto map = root.find("weight_map");
    if (map == root.end() || !map->is_object()) fail(origin, "missing object 'weight_map'");
    for (const auto& [name, file] : map->items()) {
      if (!file.is_string()) fail(origin, fmt::format("weight_map '{}' must name a file, got {}", name, file.dump()));
      const std::string shard = file.get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
        fail(origin, fmt::format("weight_map '{}' names '{}', not a file name in the directory", name, shard));
      file_of_[name] = shard;
    }
  }

  const SafetensorsFile& open(const std::string& file, const std::string& tensor) {
    auto it = files_.find(file);
    if (it != files_.end()) return *it->second;
    const fs::path path = fs::path(dir_) / file;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
      fail(origin(), shards_listed_ ? fmt::format("shard '{}' (listed in {} for tensor '{}') does not exist", path.string(),
                                                  kIndexFile, tensor)
                                    : fmt::format("'{}' does not exist", path.string()));
    return *files_.emplace(file, std::make_unique<SafetensorsFile>(path.string())).first->second;
  }

  std::string dir_;
  bool shards_listed_ = false;
  std::map<std::string, std::string> file_of_;  // tensor -> file name in dir_
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
  std::set<std::string> used_;
};

std::string layer_name(size_t layer, const char* rest) { return fmt::format("model.layers.{}.{}", layer, rest); }

}  // namespace

LlamaConfig parse_hf_config_json(const std::string& json_text, const std::string& origin) {
  const json root = parse_json_object(json_text, origin);
  LlamaConfig c;
  c.dim = required_int(root, "hidden_size", origin);
  c.hidden_dim = required_int(root, "intermediate_size", origin);
  c.n_layers = required_int(root, "num_hidden_layers", origin);
  c.n_heads = required_int(root, "num_attention_heads", origin);
  c.n_kv_heads = optional_int(root, "num_key_value_heads", c.n_heads, origin);
  c.vocab_size = required_int(root, "vocab_size", origin);
  c.max_seq_len = optional_int(root, "max_position_embeddings", 2048, origin);  // HF LlamaConfig defaults
  c.norm_eps = optional_number(root, "rms_norm_eps", 1e-6, origin);
  c.tied_embeddings = optional_bool(root, "tie_word_embeddings", false, origin);
  c.bos_id = token_id(root, "bos_token_id", 1, origin);
  c.eos_id = token_id(root, "eos_token_id", 2, origin);
  c.architecture = architecture_of(root, origin);
  read_rope(root, c, origin);
  read_family_options(root, c, origin);
  check_checkpoint_config(c, origin);
  return c;
}

namespace {

using TensorGetter = std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

LlamaLayer read_layer(const TensorGetter& get, const LlamaConfig& c, int64_t l) {
  const int64_t hd = c.head_dim(), q_dim = c.q_dim(), kv_dim = c.kv_dim();
  LlamaLayer L;
  L.attn_norm = get(layer_name(l, "input_layernorm.weight"), {c.dim});
  L.wq = get(layer_name(l, "self_attn.q_proj.weight"), {q_dim, c.dim});
  L.wk = get(layer_name(l, "self_attn.k_proj.weight"), {kv_dim, c.dim});
  L.wv = get(layer_name(l, "self_attn.v_proj.weight"), {kv_dim, c.dim});
  L.wo = get(layer_name(l, "self_attn.o_proj.weight"), {c.dim, q_dim});
  L.mlp_norm = get(layer_name(l, "post_attention_layernorm.weight"), {c.dim});
  L.w_gate = get(layer_name(l, "mlp.gate_proj.weight"), {c.hidden_dim, c.dim});
  L.w_up = get(layer_name(l, "mlp.up_proj.weight"), {c.hidden_dim, c.dim});
  L.w_down = get(layer_name(l, "mlp.down_proj.weight"), {c.dim, c.hidden_dim});
  if (c.attention_bias) {
    L.bq = get(layer_name(l, "self_attn.q_proj.bias"), {q_dim});
    L.bk = get(layer_name(l, "self_attn.k_proj.bias"), {kv_dim});
    L.bv = get(layer_name(l, "self_attn.v_proj.bias"), {kv_dim});
  }
  if (c.output_bias) L.bo = get(layer_name(l, "self_attn.o_proj.bias"), {c.dim});
  if (c.qk_norm) {
    L.q_norm = get(layer_name(l, "self_attn.q_norm.weight"), {hd});
    L.k_norm = get(layer_name(l, "self_attn.k_norm.weight"), {hd});
  }
  return L;
}

// A checkpoint directory opened for the pipeline: every tensor's presence, dtype and shape
// checked on open (and no tensor the model does not use), the data read per request.
class HfWeights final : public WeightSource {
 public:
  explicit HfWeights(const std::string& dir) : origin_(dir) {
    const std::string config_path = (fs::path(dir) / "config.json").string();
    std::error_code ec;
    if (!fs::is_regular_file(config_path, ec))
      throw config_error(fmt::format("Hugging Face checkpoint '{}': no config.json", dir));
    config_ = parse_hf_config_json(read_file_text(config_path, "Hugging Face config"),
                                   fmt::format("Hugging Face config '{}'", config_path));
    source_ = std::make_unique<TensorSource>(dir);
    const LlamaConfig& c = config_;
    const TensorGetter check = [&](const std::string& name, const std::vector<int64_t>& shape) {
      source_->check(name, shape);
      return at::Tensor();
    };
    check("model.embed_tokens.weight", {c.vocab_size, c.dim});
    for (int64_t l = 0; l < c.n_layers; ++l) read_layer(check, c, l);
    check("model.norm.weight", {c.dim});
    if (c.tied_embeddings)
      source_->mark_used("lm_head.weight");  // transformers ties the head even when a copy is stored
    else
      check("lm_head.weight", {c.vocab_size, c.dim});
    source_->reject_unused();
  }

  const LlamaConfig& config() const override { return config_; }
  const std::string& origin() const override { return origin_; }
  at::Tensor embedding() const override { return source_->get("model.embed_tokens.weight", {config_.vocab_size, config_.dim}); }
  at::Tensor final_norm() const override { return source_->get("model.norm.weight", {config_.dim}); }
  at::Tensor output() const override {
    if (config_.tied_embeddings) return embedding();
    return source_->get("lm_head.weight", {config_.vocab_size, config_.dim});
  }
  LlamaLayer layer(int64_t index) const override {
    return read_layer([&](const std::string& name, const std::vector<int64_t>& shape) { return source_->get(name, shape); },
                      config_, index);
  }

 private:
  LlamaConfig config_;
  std::string origin_;
  std::unique_ptr<TensorSource> source_;  // opens shards on first use
};

}  // namespace

WeightSourcePtr open_hf_weights(const std::string& dir) { return std::make_shared<HfWeights>(dir); }

LlamaWeights load_hf(const std::string& dir) { return read_all_weights(HfWeights(dir)); }

namespace {

at::ScalarType dtype_for(const std::string& dtype, const std::string& origin) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  fail(origin, fmt::format("dtype '{}' is not one of F32, F16, BF16", dtype));
}

const char* torch_dtype_name(at::ScalarType t) {
  return t == at::kFloat ? "float32" : t == at::kHalf ? "float16" : "bfloat16";
}

json rope_json(const LlamaConfig& c) {
  const RopeConfig& r = c.rope;
  switch (r.type) {
    case RopeScaling::none: return nullptr;
    case RopeScaling::linear: return {{"rope_type", "linear"}, {"factor", r.factor}};
    case RopeScaling::dynamic: return {{"rope_type", "dynamic"}, {"factor", r.factor}};
    case RopeScaling::llama3:
      return {{"rope_type", "llama3"},
              {"factor", r.factor},
              {"low_freq_factor", r.low_freq_factor},
              {"high_freq_factor", r.high_freq_factor},
              {"original_max_position_embeddings", r.original_max_position}};
  }
  return nullptr;
}

json config_json(const LlamaConfig& c, at::ScalarType dtype) {
  json j = {{"architectures", {find_model_family(c.architecture)->hf_class}},
            {"model_type", c.architecture},
            {"hidden_size", c.dim},
            {"intermediate_size", c.hidden_dim},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"head_dim", c.head_dim()},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_seq_len},
            {"rms_norm_eps", c.norm_eps},
            {"rope_theta", c.rope_theta},
            {"rope_scaling", rope_json(c)},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", c.tied_embeddings},
            {"bos_token_id", c.bos_id},
            {"eos_token_id", c.eos_id},
            {"torch_dtype", torch_dtype_name(dtype)}};
  if (c.architecture == "llama" || c.architecture == "qwen3") j["attention_bias"] = c.attention_bias;
  if (c.architecture == "mistral") j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  return j;
}

// The tensors of decoder layer l under their Hugging Face names, in the order they are saved.
std::vector<std::pair<std::string, at::Tensor>> layer_tensors(const LlamaLayer& L, int64_t l) {
  std::vector<std::pair<std::string, at::Tensor>> out = {
      {layer_name(l, "input_layernorm.weight"), L.attn_norm},
      {layer_name(l, "self_attn.q_proj.weight"), L.wq},
      {layer_name(l, "self_attn.k_proj.weight"), L.wk},
      {layer_name(l, "self_attn.v_proj.weight"), L.wv},
      {layer_name(l, "self_attn.o_proj.weight"), L.wo},
      {layer_name(l, "post_attention_layernorm.weight"), L.mlp_norm},
      {layer_name(l, "mlp.gate_proj.weight"), L.w_gate},
      {layer_name(l, "mlp.up_proj.weight"), L.w_up},
      {layer_name(l, "mlp.down_proj.weight"), L.w_down}};
  const std::pair<const char*, const at::Tensor*> optional[] = {
      {"self_attn.q_proj.bias", &L.bq}, {"self_attn.k_proj.bias", &L.bk},     {"self_attn.v_proj.bias", &L.bv},
      {"self_attn.o_proj.bias", &L.bo}, {"self_attn.q_norm.weight", &L.q_norm}, {"self_attn.k_norm.weight", &L.k_norm}};
  for (const auto& [name, t] : optional)
    if (t->defined()) out.emplace_back(layer_name(l, name), *t);
  return out;
}

void check_family_biases(const LlamaConfig& c, const std::string& origin) {
  if (c.architecture == "llama" && c.attention_bias != c.output_bias)
    fail(origin, "a LLaMA checkpoint's attention_bias covers q, k, v and o together; this model has biases on "
                 "some of them only");
  if (c.architecture == "qwen2" && (!c.attention_bias || c.output_bias))
    fail(origin, "a Qwen2 checkpoint has biases on q, k and v and none on o");
}

}  // namespace

void save_hf(const WeightSource& source, const std::string& dir, const std::string& dtype, int64_t shard_bytes) {
  const std::string origin = fmt::format("Hugging Face checkpoint '{}'", dir);
  const LlamaConfig& c = source.config();
  check_family_biases(c, origin);
  const at::ScalarType type = dtype_for(dtype, origin);
  // Whole layers per shard: about shard_bytes each (the embedding rides with the first,
  // the final norm and the head with the last).
  const int64_t per_layer = (2 * c.dim + 2 * c.q_dim() * c.dim + 2 * c.kv_dim() * c.dim + 3 * c.dim * c.hidden_dim) *
                            static_cast<int64_t>(at::elementSize(type));
  const int64_t layers_per_shard = std::max<int64_t>(1, shard_bytes / std::max<int64_t>(1, per_layer));
  const int64_t shards = (c.n_layers + layers_per_shard - 1) / layers_per_shard;
  // Written beside the target and renamed into place: an interrupted write leaves no checkpoint.
  const fs::path final_dir(dir), tmp_dir = fs::path(dir + ".tmp");
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);
  std::ofstream(tmp_dir / "config.json") << config_json(c, type).dump(2) << "\n";
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  json weight_map = json::object();
  int64_t total_bytes = 0;
  for (int64_t s = 0; s < shards; ++s) {
    std::vector<std::pair<std::string, at::Tensor>> part;
    const auto add = [&](std::string name, const at::Tensor& t) {
      part.emplace_back(std::move(name), t.detach().cpu().to(type).contiguous());
    };
    if (s == 0) add("model.embed_tokens.weight", source.embedding());
    for (int64_t l = s * layers_per_shard; l < std::min(c.n_layers, (s + 1) * layers_per_shard); ++l) {
      throw_if_interrupted();
      for (const auto& [name, t] : layer_tensors(source.layer(l), l)) add(name, t);
    }
    if (s == shards - 1) {
      add("model.norm.weight", source.final_norm());
      if (!c.tied_embeddings) add("lm_head.weight", source.output());
    }
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards);
    for (const auto& [name, t] : part) {
      weight_map[name] = file;
      total_bytes += t.numel() * t.element_size();
    }
    write_safetensors((tmp_dir / file).string(), part, metadata);
  }
  const json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  std::ofstream(tmp_dir / kIndexFile) << index.dump(2) << "\n";
  fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
}

void save_hf(const LlamaWeights& w, const std::string& dir, const std::string& dtype, int shards) {
  const std::string origin = fmt::format("Hugging Face checkpoint '{}'", dir);
  check_family_biases(w.config, origin);
  const at::ScalarType type = dtype_for(dtype, origin);
  check_weights_shapes(w, origin);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  const auto add = [&](std::string name, const at::Tensor& t) {
    tensors.emplace_back(std::move(name), t.detach().cpu().to(type).contiguous());
  };
  add("model.embed_tokens.weight", w.embedding);
  for (size_t l = 0; l < w.layers.size(); ++l)
    for (const auto& [name, t] : layer_tensors(w.layers[l], static_cast<int64_t>(l))) add(name, t);
  add("model.norm.weight", w.final_norm);
  if (!w.config.tied_embeddings) add("lm_head.weight", w.output);
  if (shards < 1 || shards > static_cast<int>(tensors.size()))
    fail(origin, fmt::format("shards must be between 1 and {} (the number of tensors), got {}", tensors.size(), shards));

  fs::create_directories(dir);
  std::ofstream(fs::path(dir) / "config.json") << config_json(w.config, type).dump(2) << "\n";
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards == 1) {
    write_safetensors((fs::path(dir) / kSingleFile).string(), tensors, metadata);
    return;
  }
  // Contiguous runs of tensors of about equal count, named as transformers names them.
  json weight_map = json::object();
  int64_t total_bytes = 0;
  const size_t n = tensors.size();
  for (int s = 0; s < shards; ++s) {
    const size_t begin = n * s / shards, end = n * (s + 1) / shards;
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards);
    std::vector<std::pair<std::string, at::Tensor>> part(tensors.begin() + begin, tensors.begin() + end);
    for (const auto& [name, t] : part) {
      weight_map[name] = file;
      total_bytes += t.numel() * t.element_size();
    }
    write_safetensors((fs::path(dir) / file).string(), part, metadata);
  }
  const json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  std::ofstream(fs::path(dir) / kIndexFile) << index.dump(2) << "\n";
}

}  // namespace sqlab
