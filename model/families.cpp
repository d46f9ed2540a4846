#include "model/families.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/gguf.h"
#include "model/checkpoint.h"
#include "model/gguf_checkpoint.h"
#include "rotations/hadamard_matrices.h"

namespace sqlab {

const std::vector<ModelFamily>& model_families() {
  static const std::vector<ModelFamily> families = {
      {"llama", "LlamaForCausalLM", "llama",
       "the reference: RMSNorm, rotary, grouped-query attention, SwiGLU; rope scaling linear, dynamic (within the "
       "context) and llama3 (LLaMA-3.1/3.2); optional q/k/v/o biases (attention_bias)"},
      {"mistral", "MistralForCausalLM", "llama",
       "a sliding attention window: exact when the evaluation window fits in it, refused otherwise"},
      {"qwen2", "Qwen2ForCausalLM", "qwen2", "biases on q, k and v (Qwen2, Qwen2.5)"},
      {"qwen3", "Qwen3ForCausalLM", "qwen3",
       "RMSNorm over each head of q and k before the rotary; head_dim set apart from hidden / heads"},
  };
  return families;
}

const ModelFamily* find_model_family(const std::string& model_type) {
  for (const ModelFamily& f : model_families())
    if (f.model_type == model_type) return &f;
  return nullptr;
}

std::string model_families_text() {
  std::vector<std::string> names;
  for (const ModelFamily& f : model_families()) names.push_back(fmt::format("{} ({})", f.model_type, f.hf_class));
  return fmt::format("{}", fmt::join(names, ", "));
}

const std::vector<PublishedShape>& published_shapes() {
  static const std::vector<PublishedShape> shapes = {
      {"LLaMA-2", "7B", 4096, 11008, 32, 128, true},       {"LLaMA-2", "13B", 5120, 13824, 40, 128, true},
      {"LLaMA-2", "70B", 8192, 28672, 64, 128, true},      {"LLaMA-3/3.1", "8B", 4096, 14336, 32, 128, true},
      {"LLaMA-3/3.1", "70B", 8192, 28672, 64, 128, true},  {"LLaMA-3.1", "405B", 16384, 53248, 128, 128, true},
      {"LLaMA-3.2", "1B", 2048, 8192, 32, 64, true},       {"LLaMA-3.2", "3B", 3072, 8192, 24, 128, true},
      {"Mistral", "7B", 4096, 14336, 32, 128, true},       {"Mixtral (dense widths)", "8x7B", 4096, 14336, 32, 128, false},
      {"Mixtral (dense widths)", "8x22B", 6144, 16384, 48, 128, false},
      {"Qwen2.5", "0.5B", 896, 4864, 14, 64, true},        {"Qwen2.5", "1.5B", 1536, 8960, 12, 128, true},
      {"Qwen2.5", "3B", 2048, 11008, 16, 128, true},       {"Qwen2.5", "7B", 3584, 18944, 28, 128, true},
      {"Qwen2.5", "14B", 5120, 13824, 40, 128, true},      {"Qwen2.5", "32B", 5120, 27648, 40, 128, true},
      {"Qwen2.5", "72B", 8192, 29568, 64, 128, true},      {"Qwen3", "0.6B", 1024, 3072, 16, 128, true},
      {"Qwen3", "1.7B", 2048, 6144, 16, 128, true},        {"Qwen3", "4B", 2560, 9728, 32, 128, true},
      {"Qwen3", "8B", 4096, 12288, 32, 128, true},         {"Qwen3", "14B", 5120, 17408, 40, 128, true},
      {"Qwen3", "32B", 5120, 25600, 64, 128, true},        {"SmolLM2", "135M", 576, 1536, 9, 64, true},
      {"SmolLM2", "360M", 960, 2560, 15, 64, true},        {"SmolLM2", "1.7B", 2048, 8192, 32, 64, true},
      {"TinyLlama", "1.1B", 2048, 5632, 32, 64, true},     {"Gemma-2", "2B", 2304, 9216, 8, 256, false},
      {"Gemma-2", "9B", 3584, 14336, 16, 256, false},      {"Gemma-2", "27B", 4608, 36864, 32, 128, false},
      {"Phi-3", "mini", 3072, 8192, 32, 96, false},        {"Phi-3", "medium", 5120, 17920, 40, 128, false},
  };
  return shapes;
}

HadamardPlan hadamard_plan(int64_t n) {
  HadamardPlan plan;
  plan.supported = n >= 1 && hadamard_split(n, &plan.base, &plan.pow2);
  if (plan.supported) plan.construction = hadamard_construction(plan.base);
  return plan;
}

std::string hadamard_plan_text(int64_t n) {
  const HadamardPlan p = hadamard_plan(n);
  if (!p.supported) return fmt::format("{}: none (fallback: block or kronecker_random)", n);
  int k = 0;
  while ((int64_t{1} << k) < p.pow2) ++k;
  if (p.base == 1) return fmt::format("{} = 2^{}", n, k);
  return fmt::format("{} = {} x 2^{} ({})", n, p.base, k, p.construction);
}

std::string model_families_markdown() {
  std::ostringstream out;
  out << "| model_type | Hugging Face class | GGUF architecture | what differs from LLaMA |\n";
  out << "| --- | --- | --- | --- |\n";
  for (const ModelFamily& f : model_families())
    out << fmt::format("| `{}` | `{}` | `{}` | {} |\n", f.model_type, f.hf_class, f.gguf_arch, f.differs);
  out << "\n";
  out << "| model | hidden | MLP | attention (heads x head_dim) | head_dim |\n";
  out << "| --- | --- | --- | --- | --- |\n";
  for (const PublishedShape& s : published_shapes())
    out << fmt::format("| {} {}{} | {} | {} | {} | {} |\n", s.family, s.model, s.read_by_sqlab ? "" : " *",
                       hadamard_plan_text(s.dim), hadamard_plan_text(s.hidden_dim),
                       hadamard_plan_text(s.n_heads * s.head_dim), hadamard_plan_text(s.head_dim));
  return out.str();
}

namespace {

namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw config_error(fmt::format("'{}': cannot open", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int64_t parameter_count(const LlamaConfig& c) {
  const int64_t attention = c.dim * c.q_dim() * 2 + c.dim * c.kv_dim() * 2 +
                            (c.attention_bias ? c.q_dim() + 2 * c.kv_dim() : 0) + (c.output_bias ? c.dim : 0) +
                            (c.qk_norm ? 2 * c.head_dim() : 0);
  const int64_t layer = attention + 3 * c.dim * c.hidden_dim + 2 * c.dim;
  return c.vocab_size * c.dim * (c.tied_embeddings ? 1 : 2) + c.n_layers * layer + c.dim;
}

const char* rope_name(RopeScaling r) {
  switch (r) {
    case RopeScaling::none: return "none";
    case RopeScaling::linear: return "linear";
    case RopeScaling::dynamic: return "dynamic";
    case RopeScaling::llama3: return "llama3";
  }
  return "?";
}

}  // namespace

LlamaConfig read_checkpoint_config(const std::string& path, const std::string& format) {
  const std::string chosen = format == "auto" ? detect_checkpoint_format(path) : format;
  if (chosen == "hf") {
    const std::string config = (fs::path(path) / "config.json").string();
    return parse_hf_config_json(read_text(config), fmt::format("Hugging Face config '{}'", config));
  }
  if (chosen == "gguf") {
    const GgufFile file(path);
    LlamaConfig c = llama_config_from_gguf(file.metadata(), path);
    c.tied_embeddings = !file.contains("output.weight");
    if (file.contains("blk.0.attn_q.bias")) c.attention_bias = true;
    if (file.contains("blk.0.attn_output.bias")) c.output_bias = true;
    return c;
  }
  return load_checkpoint(path, chosen).config;  // llama2.c files are small
}

std::string describe_checkpoint(const std::string& path, const std::string& format) {
  const LlamaConfig c = read_checkpoint_config(path, format);
  std::string family = c.architecture;
  for (const ModelFamily& f : model_families())
    if (f.model_type == c.architecture) family = fmt::format("{} ({})", f.model_type, f.hf_class);
  std::ostringstream out;
  out << fmt::format("{}\n", path);
  out << fmt::format("  family        {}\n", family);
  out << fmt::format("  parameters    {} ({:.3g} B)\n", parameter_count(c), parameter_count(c) / 1e9);
  out << fmt::format("  layers        {}\n", c.n_layers);
  out << fmt::format("  heads         {} query, {} key/value, head_dim {}\n", c.n_heads, c.n_kv_heads, c.head_dim());
  out << fmt::format("  vocabulary    {}\n", c.vocab_size);
  out << fmt::format("  context       {} (rope theta {:g}, scaling {}{})\n", c.max_seq_len, c.rope_theta,
                     rope_name(c.rope.type),
                     c.rope.type == RopeScaling::none ? "" : fmt::format(", factor {:g}", c.rope.factor));
  out << fmt::format("  head          {}\n", c.tied_embeddings ? "tied to the embedding" : "separate");
  out << fmt::format("  biases        {}\n", c.output_bias ? "q, k, v, o" : c.attention_bias ? "q, k, v" : "none");
  if (c.qk_norm) out << "  q/k norm      per head (RMSNorm)\n";
  if (c.sliding_window > 0) out << fmt::format("  sliding window {}\n", c.sliding_window);
  out << "  Hadamard orders (hadamard, the residual and online sites):\n";
  out << fmt::format("    hidden      {}\n", hadamard_plan_text(c.dim));
  out << fmt::format("    MLP         {}\n", hadamard_plan_text(c.hidden_dim));
  out << fmt::format("    attention   {}\n", hadamard_plan_text(c.q_dim()));
  out << fmt::format("    head_dim    {}\n", hadamard_plan_text(c.head_dim()));
  return out.str();
}

}  // namespace sqlab
