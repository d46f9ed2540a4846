// SmolLM2-135M-Instruct, a real trained LLM with real massive outliers, read from its
// Q4_1 GGUF file (the model cache, `make models`) and checked against an independent
// implementation: Hugging Face transformers loading the same file, dequantized to float32
// (tests/fixtures/smollm2/*.json, written by tools/smollm2_reference.py). Its
// full-precision model is the dequantized one. The tests fail, never skip, when the
// model is missing; they skip when ../shared's texts are absent.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/method.h"
#include "core/torch_compat.h"
#include "methods/builtin.h"
#include "model/gguf_checkpoint.h"
#include "model/llama.h"
#include "model/perplexity.h"
#include "model/quantized_model.h"
#include "model/tokenizer.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

using testing::make_method;

namespace fs = std::filesystem;
using json = nlohmann::json;

json fixture(const std::string& name) {
  const fs::path path = fs::path(SQLAB_SOURCE_DIR) / "tests" / "fixtures" / "smollm2" / name;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("missing fixture " + path.string());
  return json::parse(in);
}

// The model is loaded once for the whole suite (0.5 GB of float32).
class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(testing::smollm2_gguf_path())) return;
    model_ = new LlamaWeights(load_gguf(testing::smollm2_gguf_path()));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) FAIL() << testing::smollm2_missing_message();
  }
  static const LlamaWeights& model() { return *model_; }
  static LlamaWeights* model_;
};
LlamaWeights* SmolLM2::model_ = nullptr;

TEST_F(SmolLM2, ConfigComesFromTheMetadata) {
  const LlamaConfig& c = model().config;
  EXPECT_EQ(c.dim, 576);
  EXPECT_EQ(c.hidden_dim, 1536);
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_seq_len, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);
  EXPECT_NEAR(c.norm_eps, 1e-5, 1e-11);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_TRUE(model().output.is_same(model().embedding));
}

// Dequantized (Q4_1, Q8_0) and un-permuted (q/k) exactly as gguf-py + transformers do.
TEST_F(SmolLM2, WeightsEqualTheReferenceDequantization) {
  const json ref = fixture("weights.json").at("tensors");
  const std::map<std::string, at::Tensor> ours = {
      {"blk.0.attn_q.weight", model().layers[0].wq},
      {"blk.0.attn_k.weight", model().layers[0].wk},
      {"blk.0.ffn_down.weight", model().layers[0].w_down},
      {"token_embd.weight", model().embedding},
  };
  for (const auto& [name, t] : ours) {
    const json& r = ref.at(name);
    EXPECT_EQ(t.sizes().vec(), r.at("shape").get<std::vector<int64_t>>()) << name;
    const at::Tensor d = t.to(at::kDouble);
    EXPECT_NEAR(d.sum().item<double>(), r.at("sum").get<double>(), 1e-6 * std::abs(r.at("sum").get<double>()) + 1e-3)
        << name;
    EXPECT_NEAR(d.pow(2).sum().item<double>(), r.at("sum_sq").get<double>(), 1e-7 * r.at("sum_sq").get<double>())
        << name;
    for (int row = 0; row < 2; ++row) {
      const std::vector<double> expected = r.at(row == 0 ? "row0_first8" : "row1_first8").get<std::vector<double>>();
      for (int j = 0; j < 8; ++j) EXPECT_EQ(t[row][j].item<float>(), static_cast<float>(expected[j])) << name;
    }
  }
}

// Logits on three 64-token windows (WikiText-2, C4, TinyStories) to 1e-4 relative.
TEST_F(SmolLM2, LogitsMatchTransformers) {
  const json ref = fixture("logits.json");
  const std::vector<int64_t> subset = ref.at("vocab_subset").get<std::vector<int64_t>>();
  const at::Tensor subset_index = at::tensor(subset, at::kLong);
  for (const json& window : ref.at("windows")) {
    const std::string name = window.at("name").get<std::string>();
    const std::vector<int64_t> ids = window.at("ids").get<std::vector<int64_t>>();
    at::Tensor logits;
    {
      at::NoGradGuard no_grad;
      logits = llama_forward(model(), at::tensor(ids, at::kLong).view({1, -1}))[0].to(at::kDouble);
    }
    std::vector<double> flat;
    for (const auto& row : window.at("logits_subset")) for (double v : row) flat.push_back(v);
    const at::Tensor expected = at::tensor(flat, at::kDouble).view({static_cast<int64_t>(ids.size()), -1});
    const at::Tensor got = logits.index_select(1, subset_index);
    const double full_norm = window.at("logits_l2_norm_full_vocab").get<double>();
    const double subset_error = (got - expected).norm().item<double>() / expected.norm().item<double>();
    EXPECT_LT(subset_error, 1e-4) << name;
    EXPECT_NEAR(logits.norm().item<double>(), full_norm, 1e-5 * full_norm) << name;
    const at::Tensor lse = at::logsumexp(logits, 1);
    const std::vector<double> ref_lse = window.at("logsumexp").get<std::vector<double>>();
    const std::vector<double> ref_lp = window.at("next_token_logprob").get<std::vector<double>>();
    const std::vector<int64_t> ref_argmax = window.at("argmax_id").get<std::vector<int64_t>>();
    const at::Tensor argmax = logits.argmax(1);
    double max_lp_error = 0;
    for (size_t p = 0; p < ids.size(); ++p) {
      EXPECT_NEAR(lse[p].item<double>(), ref_lse[p], 1e-4 * std::abs(ref_lse[p]) + 1e-4) << name << " " << p;
      EXPECT_EQ(argmax[p].item<int64_t>(), ref_argmax[p]) << name << " position " << p;
      if (p + 1 < ids.size()) {
        const double lp = logits[p][ids[p + 1]].item<double>() - lse[p].item<double>();
        max_lp_error = std::max(max_lp_error, std::abs(lp - ref_lp[p]));
      }
    }
    EXPECT_LT(max_lp_error, 1e-3) << name;
    std::printf("[ smollm2 ] %-11s logits rel. error %.2e (subset of %zu ids), max |log p| error %.2e\n",
                name.c_str(), subset_error, subset.size(), max_lp_error);
  }
}

// WikiText-2 tokenized whole without BOS (the model adds none), windows of 2048: the first
// window's NLL against the reference's. The protocol is model/perplexity.h's.
TEST_F(SmolLM2, WikiText2PerplexityMatchesTheReference) {
  const std::string text = std::string(SQLAB_SHARED_DATA) + "/wikitext2/test.txt";
  if (!fs::exists(text)) GTEST_SKIP() << "../shared/data/wikitext2/test.txt is absent";
  const json ref = fixture("perplexity.json").at("datasets").at("wikitext2");
  const auto tokenizer = load_tokenizer(testing::smollm2_gguf_path());
  const std::vector<int64_t> ids = load_eval_tokens(text, tokenizer.get(), false, 0);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), ref.at("n_tokens").get<int64_t>());
  const std::vector<int64_t> first = ref.at("first_16_ids").get<std::vector<int64_t>>();
  EXPECT_EQ(std::vector<int64_t>(ids.begin(), ids.begin() + 16), first);
  const int64_t windows = 1;
  const at::Tensor tokens = at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + 2048 * windows), at::kLong);
  const PerplexityResult ours = perplexity(model(), tokens, 2048, 2048, nullptr, 1);
  ASSERT_EQ(ours.windows, windows);
  ASSERT_EQ(ours.tokens_scored, 2047 * windows);
  double expected = 0;
  for (int64_t w = 0; w < windows; ++w) expected += ref.at("window_nll_sum")[w].get<double>();
  EXPECT_NEAR(ours.nll_sum, expected, 1e-5 * expected);
  std::printf("[ smollm2 ] WikiText-2 window 0: NLL sum %.4f (reference %.4f, rel. %.1e), ppl %.4f\n", ours.nll_sum,
              expected, std::abs(ours.nll_sum - expected) / expected, ours.ppl);
}

struct SilentLog : FitLog {
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string&) override {}
};

// The first layers of SmolLM2 (its real weights and the massive activations they make,
// with the final norm and the tied head): a prefix keeps the test's cost at a few
// layers' worth while the fusion code runs per layer the same way for all 30.
LlamaWeights first_layers(const LlamaWeights& w, int64_t layers) {
  LlamaWeights prefix = w;
  prefix.layers.resize(static_cast<size_t>(layers));
  prefix.config.n_layers = layers;
  return prefix;
}

// Every method in both placements at 16 bits: folding and fusion are exact on the real
// model (fused_logit_error, measured in every model-level run), and the tied head is
// untied by folding the final norm into it, leaving the embedding alone.
TEST_F(SmolLM2, FusedModelsGiveTheOriginalLogitsForEveryMethodAndPlacement) {
  const LlamaWeights prefix = first_layers(model(), 3);
  const std::vector<std::string> methods = {
      "{method: identity}",
      "{method: random_orthogonal}",
      "{method: hadamard}",
      "{method: art}",
      "{method: urt}",
      "{method: singlequant}",
      "{method: singlequant, components: [art]}",
      "{method: smoothquant}",
      "{method: duquant, greedy_steps: 2}",
      "{method: compose}",
      "{method: cayley_sgd, steps: 2}",
  };
  // One calibration window of 32 tokens of ordinary text.
  const auto tokenizer = load_tokenizer(testing::smollm2_gguf_path());
  std::vector<int64_t> ids = tokenizer->encode(
      "The quick brown fox jumps over the lazy dog. Researchers rotate activations before they quantize "
      "a large language model to four bits, because outliers",
      false);
  ids.resize(32);
  const at::Tensor calib = at::tensor(ids, at::kLong).view({1, 32});
  for (const std::string placement : {"online", "residual"}) {
    for (const std::string& m : methods) {
      const auto method = make_method(m);
      SilentLog log;
      BuildInputs in;
      in.method = method.get();
      in.seed = 1;
      in.calib_windows = calib;
      in.log_for = [&](const std::string&) -> FitLog& { return log; };
      const ModelQuantConfig q = parse_model_quant_config(
          YAML::Load("{w_bits: 16, a_bits: 16, placement: " + placement + "}"), "test", nullptr);
      QuantizedModel built;
      try {
        built = build_quantized_model(prefix, q, in);
      } catch (const Error& e) {
        // The residual placement needs an orthogonal Q: smoothing methods are refused.
        const bool smoothing = m.find("smoothquant") != std::string::npos || m.find("duquant") != std::string::npos ||
                               m.find("compose") != std::string::npos;
        EXPECT_TRUE(placement == "residual" && smoothing) << placement << " " << m << ": " << e.what();
        continue;
      }
      EXPECT_LT(built.fused_logit_error, 1e-5) << placement << " " << m;
      EXPECT_TRUE(built.head_untied) << placement << " " << m;
      EXPECT_FALSE(built.weights.output.is_same(built.weights.embedding));
      EXPECT_TRUE(prefix.output.is_same(prefix.embedding));  // the loaded model stays tied
      std::printf("[ smollm2 ] %-8s %-42s fused_logit_error %.2e\n", placement.c_str(), m.c_str(),
                  built.fused_logit_error);
    }
  }
}

}  // namespace
}  // namespace sqlab
