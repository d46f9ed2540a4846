// Hugging Face LLaMA checkpoint directories: config.json plus model.safetensors or
// model.safetensors.index.json ("weight_map": tensor -> shard file). Tensors are read
// through the project's one safetensors reader (io/safetensors.h), memory-mapped,
// converted per tensor from F32/F16/BF16 to float32. HF q/k rows are already in the
// rotate-half rotary layout that llama_forward uses.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/json_nesting.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

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

// Options of the HF architecture that this forward does not implement: a clear error
// instead of silently wrong logits.
void reject_unsupported(const json& root, const LlamaConfig& c, const std::string& origin) {
  if (const auto it = root.find("model_type"); it != root.end() && !it->is_null()) {
    if (!it->is_string() || (*it != "llama" && *it != "mistral"))
      fail(origin, fmt::format("key 'model_type' is {}: only \"llama\" (and \"mistral\" without sliding window) "
                               "checkpoints are supported",
                               it->dump()));
  }
  if (const auto it = root.find("rope_scaling"); it != root.end() && !it->is_null())
    fail(origin, fmt::format("key 'rope_scaling' is {}: rotary scaling is not supported (only null)", it->dump()));
  if (const auto it = root.find("hidden_act"); it != root.end() && !it->is_null() && *it != "silu")
    fail(origin, fmt::format("key 'hidden_act' is {}: only \"silu\" (SwiGLU) is supported", it->dump()));
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (optional_bool(root, key, false, origin))
      fail(origin, fmt::format("key '{}' is true: biases in linear layers are not supported", key));
  if (const auto it = root.find("head_dim"); it != root.end() && !it->is_null()) {
    const int64_t hd = integer_value(*it, "head_dim", origin);
    if (c.n_heads > 0 && hd != c.dim / c.n_heads)
      fail(origin, fmt::format("key 'head_dim' is {} but hidden_size / num_attention_heads is {}: not supported", hd,
                               c.dim / c.n_heads));
  }
  if (const auto it = root.find("sliding_window"); it != root.end() && !it->is_null()) {
    const int64_t window = integer_value(*it, "sliding_window", origin);
    if (window < c.max_seq_len)
      fail(origin, fmt::format("key 'sliding_window' is {}: sliding-window attention is not supported", window));
  }
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

  // The tensor as float32, checked against the shape config.json implies.
  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) {
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
  c.rope_theta = optional_number(root, "rope_theta", 10000.0, origin);
  c.tied_embeddings = optional_bool(root, "tie_word_embeddings", false, origin);
  c.bos_id = token_id(root, "bos_token_id", 1, origin);
  c.eos_id = token_id(root, "eos_token_id", 2, origin);
  reject_unsupported(root, c, origin);
  check_checkpoint_config(c, origin);
  return c;
}

LlamaWeights load_hf(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(config_path, ec))
    throw config_error(fmt::format("Hugging Face checkpoint '{}': no config.json", dir));
  LlamaWeights w;
  w.config = parse_hf_config_json(read_file_text(config_path, "Hugging Face config"),
                                  fmt::format("Hugging Face config '{}'", config_path));
  w.origin = dir;
  const LlamaConfig& c = w.config;
  const int64_t hd = c.head_dim(), q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  TensorSource source(dir);
  w.embedding = source.get("model.embed_tokens.weight", {c.vocab_size, c.dim});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LlamaLayer L;
    L.attn_norm = source.get(layer_name(l, "input_layernorm.weight"), {c.dim});
    L.wq = source.get(layer_name(l, "self_attn.q_proj.weight"), {q_dim, c.dim});
    L.wk = source.get(layer_name(l, "self_attn.k_proj.weight"), {kv_dim, c.dim});
    L.wv = source.get(layer_name(l, "self_attn.v_proj.weight"), {kv_dim, c.dim});
    L.wo = source.get(layer_name(l, "self_attn.o_proj.weight"), {c.dim, q_dim});
    L.mlp_norm = source.get(layer_name(l, "post_attention_layernorm.weight"), {c.dim});
    L.w_gate = source.get(layer_name(l, "mlp.gate_proj.weight"), {c.hidden_dim, c.dim});
    L.w_up = source.get(layer_name(l, "mlp.up_proj.weight"), {c.hidden_dim, c.dim});
    L.w_down = source.get(layer_name(l, "mlp.down_proj.weight"), {c.dim, c.hidden_dim});
    w.layers.push_back(std::move(L));
  }
  w.final_norm = source.get("model.norm.weight", {c.dim});
  if (c.tied_embeddings) {
    // Transformers ties the head to the embedding even when a copy is stored.
    source.mark_used("lm_head.weight");
    w.output = w.embedding;
  } else {
    w.output = source.get("lm_head.weight", {c.vocab_size, c.dim});
  }
  source.reject_unused();
  return w;
}

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

json config_json(const LlamaConfig& c, at::ScalarType dtype) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", c.dim},
          {"intermediate_size", c.hidden_dim},
          {"num_hidden_layers", c.n_layers},
          {"num_attention_heads", c.n_heads},
          {"num_key_value_heads", c.n_kv_heads},
          {"vocab_size", c.vocab_size},
          {"max_position_embeddings", c.max_seq_len},
          {"rms_norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},
          {"rope_scaling", nullptr},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", c.tied_embeddings},
          {"bos_token_id", c.bos_id},
          {"eos_token_id", c.eos_id},
          {"torch_dtype", torch_dtype_name(dtype)}};
}

}  // namespace

void save_hf(const LlamaWeights& w, const std::string& dir, const std::string& dtype, int shards) {
  const std::string origin = fmt::format("Hugging Face checkpoint '{}'", dir);
  const at::ScalarType type = dtype_for(dtype, origin);
  check_weights_shapes(w, origin);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  const auto add = [&](std::string name, const at::Tensor& t) {
    tensors.emplace_back(std::move(name), t.detach().cpu().to(type).contiguous());
  };
  add("model.embed_tokens.weight", w.embedding);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayer& L = w.layers[l];
    add(layer_name(l, "input_layernorm.weight"), L.attn_norm);
    add(layer_name(l, "self_attn.q_proj.weight"), L.wq);
    add(layer_name(l, "self_attn.k_proj.weight"), L.wk);
    add(layer_name(l, "self_attn.v_proj.weight"), L.wv);
    add(layer_name(l, "self_attn.o_proj.weight"), L.wo);
    add(layer_name(l, "post_attention_layernorm.weight"), L.mlp_norm);
    add(layer_name(l, "mlp.gate_proj.weight"), L.w_gate);
    add(layer_name(l, "mlp.up_proj.weight"), L.w_up);
    add(layer_name(l, "mlp.down_proj.weight"), L.w_down);
  }
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
