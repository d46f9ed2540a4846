// LLaMA models in GGUF files (model/gguf_checkpoint.h): a random model written the way
// llama.cpp's converter writes it (q/k rows interleaved) reads back as the same model with
// the same logits, in every written type; a tied head stays tied; the format is detected
// by its magic; and every malformed model file is a config error naming the file and the
// tensor or key.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"
#include "model/checkpoint.h"
#include "model/gguf_checkpoint.h"
#include "model/llama.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

using testing::expect_config_error;
using testing::TempDir;

// Widths that are multiples of 32, as block-quantized rows need.
LlamaConfig gguf_config(bool tied) {
  LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.max_seq_len = 32;
  c.rope_theta = 50000.0;
  c.norm_eps = 1e-6;
  c.tied_embeddings = tied;
  return c;
}

double rel_error(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / b.to(at::kDouble).norm().item<double>();
}

at::Tensor some_tokens() { return at::arange(0, 24, at::kLong).remainder(40).view({2, 12}); }

TEST(GgufCheckpoint, F32RoundTripIsTheSameModel) {
  TempDir dir;
  for (bool tied : {false, true}) {
    const LlamaWeights w = random_llama(gguf_config(tied), 7);
    save_gguf(w, dir.file("m.gguf"), GgmlType::F32);
    const LlamaWeights r = load_gguf(dir.file("m.gguf"));
    EXPECT_EQ(r.config.dim, 64);
    EXPECT_EQ(r.config.hidden_dim, 96);
    EXPECT_EQ(r.config.n_heads, 4);
    EXPECT_EQ(r.config.n_kv_heads, 2);
    EXPECT_EQ(r.config.max_seq_len, 32);
    EXPECT_DOUBLE_EQ(r.config.rope_theta, 50000.0);
    EXPECT_NEAR(r.config.norm_eps, 1e-6, 1e-12);
    EXPECT_EQ(r.config.tied_embeddings, tied);
    EXPECT_EQ(r.output.is_same(r.embedding), tied);
    EXPECT_TRUE(at::equal(r.layers[1].wq, w.layers[1].wq));
    EXPECT_TRUE(at::equal(r.layers[1].wk, w.layers[1].wk));
    EXPECT_TRUE(at::equal(r.layers[0].w_down, w.layers[0].w_down));
    EXPECT_TRUE(at::equal(r.output, w.output));
    const at::Tensor tokens = some_tokens();
    EXPECT_LT(rel_error(llama_forward(r, tokens), llama_forward(w, tokens)), 1e-6);
  }
}

// The file holds q/k rows in llama.cpp's interleaved rotary layout, not HF's: read raw,
// they differ from the model's rows; undone on load, the logits are the model's.
TEST(GgufCheckpoint, QueryKeyRowsAreStoredInterleavedAndUndoneOnLoad) {
  TempDir dir;
  const LlamaWeights w = random_llama(gguf_config(false), 3);
  save_gguf(w, dir.file("m.gguf"));
  const GgufFile file(dir.file("m.gguf"));
  const at::Tensor raw_q = file.tensor("blk.0.attn_q.weight");
  const at::Tensor raw_k = file.tensor("blk.0.attn_k.weight");
  EXPECT_FALSE(at::equal(raw_q, w.layers[0].wq));
  EXPECT_TRUE(at::equal(raw_q, rotate_half_to_interleaved(w.layers[0].wq, 4)));
  EXPECT_TRUE(at::equal(raw_k, rotate_half_to_interleaved(w.layers[0].wk, 2)));
  // Reading the raw rows as if they were HF's changes the model.
  LlamaWeights wrong = load_gguf(dir.file("m.gguf"));
  wrong.layers[0].wq = raw_q;
  wrong.layers[0].wk = raw_k;
  const at::Tensor tokens = some_tokens();
  EXPECT_GT(rel_error(llama_forward(wrong, tokens), llama_forward(w, tokens)), 1e-3);
  EXPECT_LT(rel_error(llama_forward(load_gguf(dir.file("m.gguf")), tokens), llama_forward(w, tokens)), 1e-6);
}

// The same random model through the HF writer/loader and through GGUF: equal logits.
TEST(GgufCheckpoint, AgreesWithTheHuggingFaceLoader) {
  TempDir dir;
  const LlamaWeights w = random_llama(gguf_config(true), 9);
  save_hf(w, dir.file("hf"), "F32");
  save_gguf(w, dir.file("m.gguf"));
  const at::Tensor tokens = some_tokens();
  EXPECT_LT(rel_error(llama_forward(load_gguf(dir.file("m.gguf")), tokens), llama_forward(load_hf(dir.file("hf")), tokens)),
            1e-6);
  EXPECT_EQ(detect_checkpoint_format(dir.file("m.gguf")), "gguf");
  EXPECT_LT(rel_error(load_checkpoint(dir.file("m.gguf"), "auto").layers[1].w_up, w.layers[1].w_up), 1e-7);
}

// Lossy types: the logits move by the quantization noise only, and less for more bits.
TEST(GgufCheckpoint, QuantizedTypesGiveNearbyLogits) {
  TempDir dir;
  const LlamaWeights w = random_llama(gguf_config(false), 5);
  const at::Tensor tokens = some_tokens();
  const at::Tensor reference = llama_forward(w, tokens);
  std::map<std::string, double> error;
  for (auto [name, type] : std::vector<std::pair<std::string, GgmlType>>{
           {"F16", GgmlType::F16}, {"BF16", GgmlType::BF16}, {"Q8_0", GgmlType::Q8_0},
           {"Q4_1", GgmlType::Q4_1}, {"Q4_0", GgmlType::Q4_0}}) {
    save_gguf(w, dir.file(name + ".gguf"), type);
    const LlamaWeights r = load_gguf(dir.file(name + ".gguf"));
    EXPECT_EQ(GgufFile(dir.file(name + ".gguf")).info("blk.1.ffn_down.weight").ggml_type(), type) << name;
    EXPECT_EQ(GgufFile(dir.file(name + ".gguf")).info("blk.1.attn_norm.weight").ggml_type(), GgmlType::F32) << name;
    error[name] = rel_error(llama_forward(r, tokens), reference);
    EXPECT_GT(error[name], 0.0) << name;
    EXPECT_LT(error[name], 0.3) << name;
  }
  EXPECT_LT(error["F16"], error["Q8_0"]);
  EXPECT_LT(error["Q8_0"], error["Q4_1"]);
  EXPECT_LT(error["F16"], 1e-3);
}

TEST(GgufCheckpoint, TokenizerTravelsInTheFile) {
  TempDir dir;
  LlamaConfig c = gguf_config(true);
  BpeVocab vocab;
  for (int b = 'a'; b <= 'z'; ++b) vocab.tokens.push_back(std::string(1, static_cast<char>(b)));
  vocab.tokens.push_back("ab");
  vocab.tokens.push_back("<s>");
  vocab.token_types.assign(vocab.tokens.size(), 1);
  vocab.token_types.back() = 3;  // control
  vocab.merges = {"a b"};
  vocab.bos_id = 27;
  vocab.eos_id = 27;
  vocab.pre = "gpt2";
  c.vocab_size = static_cast<int64_t>(vocab.tokens.size()) + 4;
  save_gguf(random_llama(c, 1), dir.file("m.gguf"), GgmlType::F32, vocab);
  const auto tok = load_tokenizer(dir.file("m.gguf"));
  EXPECT_EQ(tok->encode("abc", false), (std::vector<int64_t>{26, 2}));
  EXPECT_EQ(tok->encode("abc", true), (std::vector<int64_t>{27, 26, 2}));
  EXPECT_EQ(tok->decode({27, 26, 2}), "abc");
}

// --- malformed model files: a valid file read back, changed, and written again.

using Edit = std::function<void(GgufMetadata&, std::vector<GgufWriteTensor>&)>;

std::string rewritten(const TempDir& dir, const std::string& name, const Edit& edit) {
  const std::string source = dir.file("good.gguf");
  save_gguf(random_llama(gguf_config(true), 2), source);
  const GgufFile file(source);
  GgufMetadata metadata = file.metadata();
  std::vector<GgufWriteTensor> tensors;
  for (const GgufTensorInfo& info : file.tensors())
    tensors.push_back({info.name, file.tensor(info.name), info.ggml_type()});
  edit(metadata, tensors);
  write_gguf(dir.file(name), metadata, tensors);
  return dir.file(name);
}

void drop(std::vector<GgufWriteTensor>& tensors, const std::string& name) {
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [&](const auto& t) { return t.name == name; }),
                tensors.end());
}

GgufWriteTensor& find(std::vector<GgufWriteTensor>& tensors, const std::string& name) {
  for (GgufWriteTensor& t : tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

TEST(GgufCheckpointErrors, EveryBadModelFileNamesTheTensorOrKey) {
  TempDir dir;
  const auto bad = [&](const std::string& name, const Edit& edit, const std::vector<std::string>& fragments) {
    const std::string path = rewritten(dir, name, edit);
    std::vector<std::string> expected = fragments;
    expected.push_back(name);
    expect_config_error([&] { load_gguf(path); }, expected);
  };
  bad("missing.gguf", [](auto&, auto& t) { drop(t, "blk.1.ffn_up.weight"); }, {"blk.1.ffn_up.weight", "missing"});
  bad("shape.gguf", [](auto&, auto& t) { find(t, "blk.0.attn_v.weight").tensor = at::zeros({40, 64}); },
      {"blk.0.attn_v.weight", "shape [40, 64]", "[32, 64]"});
  bad("nan.gguf",
      [](auto&, auto& t) {
        find(t, "blk.0.ffn_gate.weight").tensor[3][5] = std::numeric_limits<float>::quiet_NaN();
      },
      {"blk.0.ffn_gate.weight", "NaN"});
  bad("extra.gguf", [](auto&, auto& t) { t.push_back({"rope_freqs.weight", at::ones({8}), GgmlType::F32}); },
      {"rope_freqs.weight", "not part of"});
  bad("arch.gguf", [](auto& m, auto&) { m.set("general.architecture", GgufValue::str("gemma2")); },
      {"general.architecture", "gemma2"});
  bad("rope.gguf", [](auto& m, auto&) { m.set("llama.rope.dimension_count", GgufValue::u32(8)); },
      {"rope.dimension_count"});
  bad("scaling.gguf", [](auto& m, auto&) { m.set("llama.rope.scaling.type", GgufValue::str("yarn")); },
      {"rope.scaling.type", "yarn"});
  bad("heads.gguf", [](auto& m, auto&) { m.set("llama.attention.head_count", GgufValue::u32(5)); },
      {"n_heads 5"});
  bad("zero.gguf", [](auto& m, auto&) { m.set("llama.block_count", GgufValue::u32(0)); },
      {"llama.block_count", "not a positive size"});
  bad("type.gguf", [](auto& m, auto&) { m.set("llama.embedding_length", GgufValue::str("576")); },
      {"llama.embedding_length"});
  // A missing required key is named.
  const std::string no_eps = rewritten(dir, "noeps.gguf", [](auto& m, auto&) {
    GgufMetadata copy(m.origin());
    for (const auto& [key, value] : m.entries())
      if (key != "llama.attention.layer_norm_rms_epsilon") copy.set(key, value);
    m = copy;
  });
  expect_config_error([&] { load_gguf(no_eps); }, {"noeps.gguf", "llama.attention.layer_norm_rms_epsilon"});
  // A file with no tokenizer, or a sentencepiece one, cannot be a tokenizer.
  expect_config_error([&] { load_gguf_tokenizer(dir.file("good.gguf")); }, {"good.gguf", "tokenizer.ggml.model"});
  const std::string spm = rewritten(dir, "spm.gguf", [](auto& m, auto&) {
    m.set("tokenizer.ggml.model", GgufValue::str("llama"));
  });
  expect_config_error([&] { load_gguf_tokenizer(spm); }, {"spm.gguf", "tokenizer.ggml.model", "'llama'"});
}

}  // namespace
}  // namespace sqlab
