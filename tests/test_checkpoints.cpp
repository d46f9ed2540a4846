// Checkpoint loaders and writers: llama2.c (legacy, version 1) and Hugging Face (F32,
// F16, BF16, sharded) round trips, the rotary row permutation, both formats giving
// the same logits, the real stories260K file, and every malformed input as a config
// error naming the file and the tensor or key.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>

#include "core/error.h"
#include "core/random.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "test_util.h"

namespace sqlab {
namespace {
using testing::expect_config_error;

using testing::read_text;
using testing::TempDir;
using testing::write_text;
namespace fs = std::filesystem;

LlamaConfig small_config(bool tied, int64_t heads = 4, int64_t kv_heads = 2) {
  LlamaConfig c;
  c.dim = 16;
  c.hidden_dim = 40;
  c.n_layers = 2;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = 29;
  c.max_seq_len = 12;
  c.norm_eps = 1e-5;
  c.tied_embeddings = tied;
  return c;
}

// The tensors of a model in a fixed order, for comparisons.
std::vector<std::pair<std::string, at::Tensor>> tensors_of(const LlamaWeights& w) {
  std::vector<std::pair<std::string, at::Tensor>> out = {{"embedding", w.embedding}};
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayer& L = w.layers[l];
    const std::string p = "layers." + std::to_string(l) + ".";
    for (const auto& [n, t] : std::vector<std::pair<const char*, at::Tensor>>{
             {"attn_norm", L.attn_norm}, {"wq", L.wq}, {"wk", L.wk}, {"wv", L.wv}, {"wo", L.wo},
             {"mlp_norm", L.mlp_norm}, {"w_gate", L.w_gate}, {"w_up", L.w_up}, {"w_down", L.w_down}})
      out.emplace_back(p + n, t);
  }
  out.emplace_back("final_norm", w.final_norm);
  out.emplace_back("output", w.output);
  return out;
}

void expect_same_config(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_seq_len, b.max_seq_len);
  EXPECT_EQ(a.tied_embeddings, b.tied_embeddings);
}

// Every tensor of `b` equals `a`'s after rounding through `dtype`.
void expect_same_weights(const LlamaWeights& a, const LlamaWeights& b, at::ScalarType dtype = at::kFloat) {
  expect_same_config(a.config, b.config);
  const auto ta = tensors_of(a), tb = tensors_of(b);
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    ASSERT_EQ(tb[i].second.scalar_type(), at::kFloat) << tb[i].first;
    EXPECT_TRUE(at::equal(ta[i].second.to(dtype).to(at::kFloat), tb[i].second)) << ta[i].first;
  }
}

at::Tensor logits(const LlamaWeights& w) {
  const at::Tensor tokens = at::tensor(std::vector<int64_t>{1, 5, 9, 3, 28, 0, 7, 11, 2, 14}).view({1, -1});
  return llama_forward(w, tokens);
}

TEST(CheckpointRoundTrip, RandomLlamaIsDeterministicAndScaled) {
  const LlamaWeights a = random_llama(small_config(false), 3), b = random_llama(small_config(false), 3);
  const LlamaWeights c = random_llama(small_config(false), 4);
  EXPECT_TRUE(at::equal(a.layers[1].w_down, b.layers[1].w_down));
  EXPECT_FALSE(at::equal(a.layers[1].w_down, c.layers[1].w_down));
  // std ~ 1/sqrt(fan_in); norm gains around 1.
  EXPECT_NEAR(a.layers[0].w_down.std().item<double>() * std::sqrt(40.0), 1.0, 0.15);
  EXPECT_NEAR(a.layers[0].attn_norm.mean().item<double>(), 1.0, 0.1);
  const LlamaWeights tied = random_llama(small_config(true), 3);
  EXPECT_TRUE(tied.output.is_same(tied.embedding));
  expect_config_error([] { random_llama(small_config(false, 3, 2), 1); }, {"random_llama", "n_heads 3"});
}

TEST(CheckpointRoundTrip, Llama2cLegacyAndVersion1) {
  TempDir dir;
  for (bool tied : {false, true})
    for (int version : {0, 1}) {
      SCOPED_TRACE(::testing::Message() << "tied " << tied << " version " << version);
      const LlamaWeights w = random_llama(small_config(tied), 11);
      const std::string path = dir.file("m" + std::to_string(version) + std::to_string(tied) + ".bin");
      save_llama2c(w, path, version);
      const LlamaConfig& c = w.config;
      const int64_t hd = c.head_dim();
      const int64_t floats = c.vocab_size * c.dim * (tied ? 1 : 2) + c.dim +
                             c.n_layers * (2 * c.dim + 2 * c.dim * c.dim + 2 * c.dim * c.n_kv_heads * hd +
                                           3 * c.dim * c.hidden_dim) +
                             (version == 0 ? c.max_seq_len * hd : 0);
      EXPECT_EQ(fs::file_size(path), static_cast<uint64_t>(floats * 4 + (version == 0 ? 28 : 256)));
      const LlamaWeights back = load_checkpoint(path, "auto");
      expect_same_weights(w, back);
      EXPECT_EQ(back.origin, path);
      if (tied) {
        EXPECT_TRUE(back.output.is_same(back.embedding));
      }
    }
}

TEST(CheckpointRoundTrip, HuggingFaceDtypesAndShards) {
  TempDir dir;
  for (bool tied : {false, true}) {
    const LlamaWeights w = random_llama(small_config(tied), 5);
    const std::vector<std::tuple<std::string, int, at::ScalarType>> cases = {
        {"F32", 1, at::kFloat}, {"F16", 1, at::kHalf}, {"BF16", 1, at::kBFloat16}, {"F32", 3, at::kFloat}};
    for (const auto& [dtype, shards, type] : cases) {
      SCOPED_TRACE(dtype + " shards " + std::to_string(shards) + " tied " + std::to_string(tied));
      const std::string out = dir.file(dtype + std::to_string(shards) + std::to_string(tied));
      save_hf(w, out, dtype, shards);
      EXPECT_EQ(fs::exists(fs::path(out) / "model.safetensors.index.json"), shards > 1);
      if (shards > 1) {
        EXPECT_TRUE(fs::exists(fs::path(out) / "model-00003-of-00003.safetensors"));
      }
      expect_same_weights(w, load_checkpoint(out, "auto"), type);
    }
  }
}

// Rotary embedding of one head vector at position t in either layout.
at::Tensor rotate(const at::Tensor& v, int64_t t, bool interleaved) {
  const int64_t hd = v.size(0), half = hd / 2;
  at::Tensor out = v.clone();
  for (int64_t i = 0; i < half; ++i) {
    const double angle = t * std::pow(10000.0, -2.0 * i / hd);
    const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const double x = v[a].item<double>(), y = v[b].item<double>();
    out[a] = x * std::cos(angle) - y * std::sin(angle);
    out[b] = y * std::cos(angle) + x * std::sin(angle);
  }
  return out;
}

// The permutation maps llama2.c's interleaved q/k rows to rows whose rotate-half rotary
// gives the same attention scores q_m . k_n for every head and pair of positions.
TEST(CheckpointRotary, PermutationKeepsAttentionScores) {
  at::Generator gen = make_generator(1, "rotary test");
  const int64_t heads = 3, hd = 8, dim = 12;
  const at::Tensor wq = at::randn({heads * hd, dim}, gen, at::kDouble);
  const at::Tensor wk = at::randn({heads * hd, dim}, gen, at::kDouble);
  const at::Tensor x = at::randn({2, dim}, gen, at::kDouble);
  const at::Tensor wq_rh = interleaved_to_rotate_half(wq, heads), wk_rh = interleaved_to_rotate_half(wk, heads);
  EXPECT_TRUE(at::equal(rotate_half_to_interleaved(wq_rh, heads), wq));
  EXPECT_FALSE(at::equal(wq_rh, wq));
  for (int64_t h = 0; h < heads; ++h) {
    const auto head = [&](const at::Tensor& w, int64_t token) { return at::mv(w.slice(0, h * hd, (h + 1) * hd), x[token]); };
    for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {3, 1}, {7, 5}}) {
      const double interleaved = at::dot(rotate(head(wq, 0), m, true), rotate(head(wk, 1), n, true)).item<double>();
      const double half = at::dot(rotate(head(wq_rh, 0), m, false), rotate(head(wk_rh, 1), n, false)).item<double>();
      EXPECT_NEAR(interleaved, half, 1e-9 * (1 + std::abs(interleaved)));
    }
  }
}

TEST(CheckpointRoundTrip, BothLoadersGiveTheSameLogits) {
  TempDir dir;
  const LlamaWeights w = random_llama(small_config(false), 21);
  save_llama2c(w, dir.file("m.bin"), 1);
  save_hf(w, dir.file("hf"), "F32", 2);
  const at::Tensor reference = logits(w);
  const at::Tensor from_llama2c = logits(load_checkpoint(dir.file("m.bin"), "llama2c"));
  const at::Tensor from_hf = logits(load_checkpoint(dir.file("hf"), "hf"));
  EXPECT_LE((from_llama2c - from_hf).abs().max().item<double>(), 1e-5);
  EXPECT_LE((from_llama2c - reference).abs().max().item<double>(), 1e-5);
  // The llama2.c file itself holds the interleaved rows: loading it without the
  // permutation would change the logits.
  LlamaWeights raw = load_checkpoint(dir.file("m.bin"));
  for (LlamaLayer& L : raw.layers) {
    L.wq = rotate_half_to_interleaved(L.wq, raw.config.n_heads);
    L.wk = rotate_half_to_interleaved(L.wk, raw.config.n_kv_heads);
  }
  EXPECT_GT((logits(raw) - reference).abs().max().item<double>(), 1e-3);
}

TEST(CheckpointFormat, AutoDetection) {
  TempDir dir;
  const LlamaWeights w = random_llama(small_config(true), 2);
  save_llama2c(w, dir.file("noext"), 0);
  save_hf(w, dir.file("hf"));
  EXPECT_EQ(detect_checkpoint_format(dir.file("noext")), "llama2c");
  EXPECT_EQ(detect_checkpoint_format(dir.file("hf")), "hf");
  write_text(dir.file("notes.txt"), "hello, not a checkpoint at all");
  expect_config_error([&] { load_checkpoint(dir.file("notes.txt")); }, {"notes.txt", "unknown format"});
  expect_config_error([&] { load_checkpoint(dir.file("missing.bin")); }, {"missing.bin", "no such file"});
  fs::create_directories(dir.file("empty"));
  expect_config_error([&] { load_checkpoint(dir.file("empty")); }, {"empty", "config.json"});
  expect_config_error([&] { load_checkpoint(dir.file("hf"), "onnx"); }, {"unknown format 'onnx'"});
  // A format named explicitly is read as that format: a directory is no GGUF file.
  expect_config_error([&] { load_checkpoint(dir.file("hf"), "gguf"); }, {"hf", "not a regular file"});
}

// --- the real llama2.c model

TEST(CheckpointStories260K, LoadsAndPredictsTinyStories) {
  const std::string data = SQLAB_SHARED_DATA;
  const std::string model = data + "/models/stories260K.bin", tok = data + "/models/tok512.bin";
  const std::string text = data + "/tinystories/cs336_tinystories_sample.txt";
  if (!fs::exists(model) || !fs::exists(tok) || !fs::exists(text)) GTEST_SKIP() << "no " << data << " (shared data)";
  const LlamaWeights w = load_checkpoint(model);
  const LlamaConfig& c = w.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_TRUE(w.output.is_same(w.embedding));
  EXPECT_EQ(w.layers[4].wk.sizes(), (std::vector<int64_t>{32, 64}));
  // The trained model predicts TinyStories text well only with the rotary permutation
  // right: mean next-token loss over the first 256 tokens of the sample.
  const auto tokenizer = load_tokenizer(tok);
  std::vector<int64_t> ids = load_eval_tokens(text, tokenizer.get(), true, 256);
  const at::Tensor tokens = at::tensor(ids).view({1, -1});
  const auto loss = [&](const LlamaWeights& weights) {
    const at::Tensor out = llama_forward(weights, tokens.slice(1, 0, -1));
    return at::cross_entropy_loss(out.squeeze(0), tokens.squeeze(0).slice(0, 1)).item<double>();
  };
  const double good = loss(w);
  LlamaWeights unpermuted = w;
  unpermuted.layers.clear();
  for (const LlamaLayer& L : w.layers) {
    LlamaLayer copy = L;
    copy.wq = rotate_half_to_interleaved(L.wq, c.n_heads);
    copy.wk = rotate_half_to_interleaved(L.wk, c.n_kv_heads);
    unpermuted.layers.push_back(copy);
  }
  const double bad = loss(unpermuted);
  RecordProperty("loss", std::to_string(good));
  RecordProperty("loss_unpermuted", std::to_string(bad));
  EXPECT_LT(good, 2.0) << "stories260K's loss on TinyStories";
  EXPECT_GT(bad, good + 0.2) << "the wrong rotary layout should hurt";
}

// --- malformed llama2.c files

std::string legacy_header(std::vector<int32_t> p) {
  return std::string(reinterpret_cast<const char*>(p.data()), p.size() * 4);
}

TEST(CheckpointErrors, Llama2cHeaders) {
  TempDir dir;
  const LlamaWeights w = random_llama(small_config(false), 1);
  save_llama2c(w, dir.file("good.bin"), 0);
  const std::string good = read_text(dir.file("good.bin"));
  // Truncated by 4 bytes: the size check names the header numbers and both sizes.
  write_text(dir.file("trunc.bin"), good.substr(0, good.size() - 4));
  expect_config_error([&] { load_checkpoint(dir.file("trunc.bin")); },
                      {"trunc.bin", "dim=16 hidden_dim=40 n_layers=2 n_heads=4 n_kv_heads=2 vocab_size=-29 seq_len=12",
                       std::to_string(good.size() - 4) + " bytes", "implies " + std::to_string(good.size())});
  write_text(dir.file("long.bin"), good + "xxxx");
  expect_config_error([&] { load_checkpoint(dir.file("long.bin")); }, {"long.bin", "implies"});
  write_text(dir.file("tiny.bin"), "abc");
  expect_config_error([&] { load_checkpoint(dir.file("tiny.bin")); }, {"tiny.bin", "too short"});

  const auto header_error = [&](std::vector<int32_t> p, const std::vector<std::string>& fragments) {
    const std::string bytes = legacy_header(p) + std::string(4096, '\0');
    expect_config_error(
        [&] {
          size_t header = 0;
          bool shared = false;
          parse_llama2c_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(), "h.bin",
                               &header, &shared);
        },
        fragments);
  };
  header_error({-16, 40, 2, 4, 2, 29, 12}, {"h.bin", "dim must be positive, got -16"});
  header_error({16, 0, 2, 4, 2, 29, 12}, {"hidden_dim must be positive, got 0"});
  header_error({16, 40, 0, 4, 2, 29, 12}, {"n_layers must be positive"});
  header_error({16, 40, 2, 4, 2, 0, 12}, {"vocab_size must be positive"});
  header_error({16, 40, 2, 3, 3, 29, 12}, {"dim 16 is not a multiple of n_heads 3"});
  header_error({18, 40, 2, 2, 2, 29, 12}, {"head_dim 9 is odd"});
  header_error({16, 40, 2, 4, 3, 29, 12}, {"n_heads 4 is not a multiple of n_kv_heads 3"});
  header_error({1 << 30, 1 << 30, 1 << 30, 2, 1, 1 << 30, 12}, {"overflow"});
  header_error({16, 40, 2, 4, 2, 29, 12}, {"implies"});  // 4096 bytes of weights is the wrong size

  // Version-1 files: the magic, then the version.
  std::string v1 = legacy_header({0x616b3432, 2, 16, 40, 2, 4, 2, 29, 12});
  v1.resize(256, '\0');
  write_text(dir.file("v2.bin"), v1);
  expect_config_error([&] { load_checkpoint(dir.file("v2.bin")); }, {"v2.bin", "version 2 is not supported"});
  save_llama2c(w, dir.file("v1.bin"), 1);
  std::string bad_flag = read_text(dir.file("v1.bin"));
  bad_flag[36] = 7;
  write_text(dir.file("flag.bin"), bad_flag);
  expect_config_error([&] { load_checkpoint(dir.file("flag.bin")); }, {"flag.bin", "shared_classifier flag is 7"});
  write_text(dir.file("v1short.bin"), read_text(dir.file("v1.bin")).substr(0, 100));
  expect_config_error([&] { load_checkpoint(dir.file("v1short.bin")); }, {"v1short.bin", "too short"});
}

TEST(CheckpointErrors, Llama2cNaNWeights) {
  TempDir dir;
  save_llama2c(random_llama(small_config(true), 1), dir.file("m.bin"), 0);
  std::string bytes = read_text(dir.file("m.bin"));
  const float nan = std::nanf("");
  std::memcpy(&bytes[28 + 4 * 5], &nan, 4);  // inside the token embedding
  write_text(dir.file("nan.bin"), bytes);
  expect_config_error([&] { load_checkpoint(dir.file("nan.bin")); }, {"nan.bin", "token_embedding", "NaN"});
}

// --- malformed Hugging Face directories

// Rewrites model.safetensors of `dir` after `edit` changes its tensor list.
void rewrite_tensors(const std::string& dir,
                     const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit) {
  const std::string path = (fs::path(dir) / "model.safetensors").string();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  {
    const SafetensorsFile file(path);
    for (const std::string& name : file.names()) tensors.emplace_back(name, file.tensor(name));
  }
  edit(tensors);
  write_safetensors(path, tensors);
}

void set_tensor(std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& name, at::Tensor t) {
  for (auto& [n, v] : tensors)
    if (n == name) v = std::move(t);
}

TEST(CheckpointErrors, HuggingFaceTensors) {
  TempDir dir;
  const LlamaWeights w = random_llama(small_config(false), 1);
  int counter = 0;
  const auto fresh = [&] {
    const std::string d = dir.file("hf" + std::to_string(counter++));
    save_hf(w, d);
    return d;
  };
  const std::string up = "model.layers.1.mlp.up_proj.weight";
  std::string d = fresh();
  rewrite_tensors(d, [&](auto& t) {
    t.erase(std::remove_if(t.begin(), t.end(), [&](auto& p) { return p.first == up; }), t.end());
  });
  expect_config_error([&] { load_hf(d); }, {d, "tensor '" + up + "' is missing"});

  d = fresh();
  rewrite_tensors(d, [&](auto& t) { set_tensor(t, up, at::zeros({40, 15})); });
  expect_config_error([&] { load_hf(d); }, {"model.safetensors", up, "shape [40, 15]", "config.json implies [40, 16]"});

  d = fresh();
  rewrite_tensors(d, [&](auto& t) { set_tensor(t, up, at::zeros({40, 16}, at::kInt)); });
  expect_config_error([&] { load_hf(d); }, {"model.safetensors", up, "dtype I32"});

  d = fresh();
  rewrite_tensors(d, [&](auto& t) { t.emplace_back("model.layers.0.self_attn.q_proj.bias", at::zeros({16})); });
  expect_config_error([&] { load_hf(d); }, {"unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"});

  d = fresh();
  rewrite_tensors(d, [&](auto& t) { set_tensor(t, up, at::full({40, 16}, NAN)); });
  expect_config_error([&] { load_hf(d); }, {up, "NaN"});

  // Dtypes the safetensors reader knows but we cannot use (F8), and names it does not
  // know: patch the dtype string in the header (same length keeps the layout).
  d = fresh();
  const std::string file = (fs::path(d) / "model.safetensors").string();
  std::string bytes = read_text(file);
  const std::string norm = "\"model.norm.weight\":{\"dtype\":\"F32\"";
  size_t at = bytes.find(norm);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at + norm.size() - 5, 5, "\"U8\" ");  // 16 floats -> would be 64 U8s: size error
  write_text(file, bytes);
  expect_config_error([&] { load_hf(d); }, {"model.safetensors", "model.norm.weight"});
  d = fresh();
  const std::string file2 = (fs::path(d) / "model.safetensors").string();
  bytes = read_text(file2);
  at = bytes.find(norm);
  bytes.replace(at + norm.size() - 5, 5, "\"F8\" ");
  write_text(file2, bytes);
  expect_config_error([&] { load_hf(d); }, {"model.safetensors", "model.norm.weight", "unknown dtype 'F8'"});

  // U8 and F8_E4M3 (one byte each, consistent sizes): dtypes the reader knows, rejected
  // by the loader.
  d = fresh();
  rewrite_tensors(d, [&](auto& t) { set_tensor(t, "model.norm.weight", at::zeros({16}, at::kByte)); });
  expect_config_error([&] { load_hf(d); }, {"model.norm.weight", "dtype U8", "only F32, F16 and BF16"});
  const std::string file4 = (fs::path(d) / "model.safetensors").string();
  bytes = read_text(file4);
  uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  std::string header = bytes.substr(8, length);
  const std::string u8 = "\"model.norm.weight\":{\"dtype\":\"U8\"";
  at = header.find(u8);
  ASSERT_NE(at, std::string::npos);
  header.replace(at + u8.size() - 4, 4, "\"F8_E4M3\"");
  length = header.size();
  write_text(file4, std::string(reinterpret_cast<const char*>(&length), 8) + header + bytes.substr(8 + (length - 5)));
  expect_config_error([&] { load_hf(d); }, {"model.norm.weight", "dtype F8_E4M3", "only F32, F16 and BF16"});

  // Truncated file: the reader names it.
  d = fresh();
  const std::string file3 = (fs::path(d) / "model.safetensors").string();
  bytes = read_text(file3);
  write_text(file3, bytes.substr(0, bytes.size() - 10));
  expect_config_error([&] { load_hf(d); }, {"model.safetensors"});
  write_text(file3, bytes.substr(0, 5));
  expect_config_error([&] { load_hf(d); }, {"model.safetensors", "too short"});

  // No weights at all.
  d = fresh();
  fs::remove(fs::path(d) / "model.safetensors");
  expect_config_error([&] { load_hf(d); }, {d, "neither model.safetensors nor model.safetensors.index.json"});
}

TEST(CheckpointErrors, HuggingFaceShardIndex) {
  TempDir dir;
  const LlamaWeights w = random_llama(small_config(true), 1);
  const std::string d = dir.file("hf");
  save_hf(w, d, "BF16", 2);
  fs::remove(fs::path(d) / "model-00002-of-00002.safetensors");
  expect_config_error([&] { load_hf(d); }, {"model-00002-of-00002.safetensors", "does not exist", "listed in"});
  write_text((fs::path(d) / "model.safetensors.index.json").string(), "{\"weight_map\": [1, 2]}");
  expect_config_error([&] { load_hf(d); }, {"model.safetensors.index.json", "weight_map"});
  write_text((fs::path(d) / "model.safetensors.index.json").string(),
             "{\"weight_map\": {\"model.norm.weight\": \"../evil.safetensors\"}}");
  expect_config_error([&] { load_hf(d); }, {"model.safetensors.index.json", "not a file name"});
  write_text((fs::path(d) / "model.safetensors.index.json").string(), "{\"weight_map\": {}}");
  expect_config_error([&] { load_hf(d); }, {"model.embed_tokens.weight", "is missing"});
}

TEST(CheckpointErrors, HuggingFaceConfigJson) {
  TempDir dir;
  const std::string d = dir.file("hf");
  save_hf(random_llama(small_config(false), 1), d);
  const std::string config = (fs::path(d) / "config.json").string();
  write_text(config, "{ not json");
  expect_config_error([&] { load_hf(d); }, {"config.json", "not valid JSON"});
  write_text(config, "[1, 2]");
  expect_config_error([&] { load_hf(d); }, {"config.json", "expected a JSON object"});

  const std::string base =
      R"("hidden_size": 16, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "vocab_size": 29, "max_position_embeddings": 12)";
  const auto parse = [&](const std::string& extra) { return parse_hf_config_json("{" + base + extra + "}", "c.json"); };
  const LlamaConfig c = parse("");
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_EQ(parse(R"(, "eos_token_id": [128001, 128009], "rope_theta": 500000.0)").eos_id, 128001);
  expect_config_error([&] { parse(R"(, "rope_scaling": {"type": "yarn", "factor": 2.0})"); },
                      {"c.json", "rope_scaling.rope_type", "yarn"});
  EXPECT_EQ(parse(R"(, "rope_scaling": {"type": "linear", "factor": 2.0})").rope.type, RopeScaling::linear);
  expect_config_error([&] { parse(R"(, "rope_scaling": {"rope_type": "linear", "factor": 0.5})"); },
                      {"c.json", "factor 0.5"});
  expect_config_error([&] { parse(R"(, "rope_parameters": {"rope_type": "llama3", "factor": 8.0})"); },
                      {"c.json", "original_max_position_embeddings"});
  expect_config_error([&] { parse(R"(, "model_type": "gpt2")"); }, {"c.json", "model_type"});
  expect_config_error([&] { parse(R"(, "hidden_act": "gelu")"); }, {"hidden_act"});
  EXPECT_TRUE(parse(R"(, "attention_bias": true)").output_bias);  // LLaMA: q, k, v and o
  expect_config_error([&] { parse(R"(, "model_type": "mistral", "architectures": ["MistralForCausalLM"], )"
                                  R"("attention_bias": true)"); },
                      {"attention_bias"});
  expect_config_error([&] { parse(R"(, "tie_word_embeddings": "yes")"); }, {"tie_word_embeddings", "true or false"});
  expect_config_error([&] { parse_hf_config_json(R"({"hidden_size": 16})", "c.json"); },
                      {"c.json", "missing key 'intermediate_size'"});
  expect_config_error([&] { parse_hf_config_json("{" + base + R"(, "hidden_size": 2.5})", "c.json"); },
                      {"key 'hidden_size' must be an integer"});
  std::string no_heads = base;
  no_heads.replace(no_heads.find("\"num_attention_heads\": 4"), 24, "\"num_attention_heads\": 0");
  expect_config_error([&] { parse_hf_config_json("{" + no_heads + "}", "c.json"); }, {"n_heads must be positive"});
  expect_config_error([&] { parse_hf_config_json(std::string(100, '[') + std::string(100, ']'), "c.json"); },
                      {"nested deeper"});

  // Shapes that do not match config.json: the first mismatching tensor is named.
  write_text(config, "{" + std::string(R"("hidden_size": 16, "intermediate_size": 48, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 29})"));
  expect_config_error([&] { load_hf(d); },
                      {"model.layers.0.mlp.gate_proj.weight", "shape [40, 16]", "config.json implies [48, 16]"});
}

// The pure parsers take any bytes: they return or throw sqlab::Error, never crash.
TEST(CheckpointErrors, ParsersSurviveRandomBytes) {
  std::mt19937_64 rng(7);
  TempDir dir;
  save_llama2c(random_llama(small_config(false), 1), dir.file("m.bin"), 1);
  const std::string seed_v1 = read_text(dir.file("m.bin")).substr(0, 256);
  const std::string seed_json = R"({"hidden_size": 16, "intermediate_size": 40, "num_hidden_layers": 2,
      "num_attention_heads": 4, "vocab_size": 29, "rope_scaling": null, "eos_token_id": [2]})";
  int parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string bytes = i % 2 ? seed_v1 : legacy_header({16, 40, 2, 4, 2, -29, 12});
    for (int k = 0, n = 1 + rng() % 4; k < n; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    bytes.resize(rng() % (bytes.size() + 1));
    size_t header = 0;
    bool shared = false;
    try {
      parse_llama2c_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), rng() % 100000, "f",
                           &header, &shared);
      ++parsed;
    } catch (const Error&) {
    }
    std::string json = seed_json;
    for (int k = 0, n = 1 + rng() % 3; k < n; ++k) json[rng() % json.size()] = " {}[]\":,0123456789-.e"[rng() % 21];
    try {
      parse_hf_config_json(json, "j");
      ++parsed;
    } catch (const Error&) {
    }
    try {
      parse_llama2c_tokenizer(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), rng() % 3, "t");
    } catch (const Error&) {
    }
  }
  EXPECT_GT(parsed, 0);
}

// The checkpoint_* / tokenizer_* cases of the bad-input corpus (written by
// tests/bad_inputs/make_model_cases.py; run through `sqlab generate` by
// test_bad_inputs.cpp) fail in the loaders themselves with their message fragments,
// and their other input is valid.
TEST(CheckpointErrors, BadInputCorpusCasesFailInTheLoaders) {
  const fs::path corpus = fs::path(SQLAB_SOURCE_DIR) / "tests" / "bad_inputs";
  int cases = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    const std::string name = entry.path().filename().string();
    const bool checkpoint = name.rfind("checkpoint_", 0) == 0, tokenizer = name.rfind("tokenizer_", 0) == 0;
    if (!entry.is_directory() || (!checkpoint && !tokenizer)) continue;
    SCOPED_TRACE(name);
    ++cases;
    const YAML::Node node = YAML::LoadFile((entry.path() / "case.yaml").string());
    const auto command = node["command"].as<std::vector<std::string>>();
    std::string model, tok, format = "auto";
    for (size_t i = 0; i + 1 < command.size(); ++i) {
      if (command[i] == "--model") model = (entry.path() / command[i + 1]).string();
      if (command[i] == "--tokenizer") tok = (entry.path() / command[i + 1]).string();
      if (command[i] == "--set" && command[i + 1].rfind("format=", 0) == 0) format = command[i + 1].substr(7);
    }
    const bool one_file = tok.empty() || tok == model;  // a GGUF model carries its tokenizer
    if (tok.empty()) tok = model;
    const std::vector<std::string> fragments = node["message"].IsSequence()
                                                   ? node["message"].as<std::vector<std::string>>()
                                                   : std::vector<std::string>{node["message"].as<std::string>()};
    if (checkpoint) {
      if (!one_file) {
        EXPECT_NO_THROW(load_tokenizer(tok));
      }
      expect_config_error([&] { load_checkpoint(model, format); }, fragments);
    } else {
      EXPECT_NO_THROW(load_checkpoint(model, format));
      expect_config_error([&] { load_tokenizer(tok); }, fragments);
    }
  }
  EXPECT_GE(cases, 23);
}

}  // namespace
}  // namespace sqlab
