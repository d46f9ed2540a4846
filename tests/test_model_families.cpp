// The model families sqlab reads (model/families.h): each tiny random checkpoint in
// tests/fixtures/families/ (written by tools/make_family_fixtures.py with Hugging Face
// transformers) gives transformers' logits; folding and fusing rotations stays exact at 16
// bits for every family and placement, biases and tied heads included; save_hf round-trips.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/method.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/gguf_checkpoint.h"
#include "model/llama.h"
#include "model/quantized_model.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

namespace fs = std::filesystem;
using testing::make_method;

const fs::path kFixtures = fs::path(SQLAB_SOURCE_DIR) / "tests" / "fixtures" / "families";
const std::vector<std::string> kFamilies = {"llama3", "llama_linear_bias", "mistral", "qwen2", "qwen3"};

struct Expected {
  at::Tensor tokens, logits;
};

Expected expected_of(const std::string& family) {
  const SafetensorsFile file((kFixtures / family / "expected.safetensors").string());
  return {file.tensor("tokens", at::kDouble).to(at::kLong), file.tensor("logits", at::kFloat)};
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).norm() / b.to(at::kDouble).norm()).item<double>();
}

TEST(ModelFamilies, LogitsEqualTransformers) {
  for (const std::string& family : kFamilies) {
    SCOPED_TRACE(family);
    const LlamaWeights w = load_checkpoint((kFixtures / family).string());
    const Expected e = expected_of(family);
    const double error = relative_error(llama_forward(w, e.tokens), e.logits);
    EXPECT_LT(error, 1e-5);
    std::printf("[ families ] %-18s %-8s logits vs transformers: %.2e relative\n", family.c_str(),
                w.config.architecture.c_str(), error);
  }
}

TEST(ModelFamilies, EachFamilysDifferenceIsRead) {
  const auto config = [](const std::string& family) { return load_checkpoint((kFixtures / family).string()).config; };
  const LlamaConfig llama3 = config("llama3");
  EXPECT_EQ(llama3.rope.type, RopeScaling::llama3);
  EXPECT_EQ(llama3.rope.original_max_position, 64);
  EXPECT_DOUBLE_EQ(llama3.rope_theta, 500000.0);
  EXPECT_TRUE(llama3.tied_embeddings);
  const LlamaConfig linear = config("llama_linear_bias");
  EXPECT_EQ(linear.rope.type, RopeScaling::linear);
  EXPECT_TRUE(linear.attention_bias && linear.output_bias);
  EXPECT_EQ(config("mistral").sliding_window, 32);
  const LlamaConfig qwen2 = config("qwen2");
  EXPECT_TRUE(qwen2.attention_bias && !qwen2.output_bias && qwen2.tied_embeddings);
  const LlamaConfig qwen3 = config("qwen3");
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_EQ(qwen3.head_dim(), 32);
  EXPECT_EQ(qwen3.q_dim(), 128);  // wider than the residual stream (64)
}

// Dropping one difference changes the logits: the tests above can fail.
TEST(ModelFamilies, EveryDifferenceMatters) {
  const Expected e = expected_of("qwen3");
  LlamaWeights qwen3 = load_checkpoint((kFixtures / "qwen3").string());
  qwen3.config.qk_norm = false;
  EXPECT_GT(relative_error(llama_forward(qwen3, e.tokens), e.logits), 1e-3);
  LlamaWeights qwen2 = load_checkpoint((kFixtures / "qwen2").string());
  for (LlamaLayer& l : qwen2.layers) l.bv = at::Tensor();
  EXPECT_GT(relative_error(llama_forward(qwen2, e.tokens), expected_of("qwen2").logits), 1e-3);
  LlamaWeights llama3 = load_checkpoint((kFixtures / "llama3").string());
  llama3.config.rope.type = RopeScaling::none;
  EXPECT_GT(relative_error(llama_forward(llama3, expected_of("llama3").tokens), expected_of("llama3").logits), 1e-4);
}

TEST(ModelFamilies, SlidingWindowIsExactWithinItAndRefusedBeyond) {
  const LlamaWeights mistral = load_checkpoint((kFixtures / "mistral").string());
  const at::Tensor tokens = at::zeros({1, 33}, at::kLong);
  try {
    llama_forward(mistral, tokens);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sliding window of 32"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(llama_forward(mistral, tokens.narrow(1, 0, 32)));
}

void expect_refused(const LlamaWeights& w, const std::string& path) {
  try {
    save_gguf(w, path, GgmlType::F32, BpeVocab{});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no rope scaling or sliding window"), std::string::npos) << e.what();
  }
}

struct SilentLog : FitLog {
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string&) override {}
};

// Folding and fusing at 16 bits gives the original logits for every family, in both
// placements, with the value-head and down_proj Hadamards of the residual placement (the
// value head rotation must carry Qwen2's value bias; the residual rotation an o_proj bias).
TEST(ModelFamilies, FusedModelsGiveTheOriginalLogits) {
  const std::vector<std::string> quants = {
      "{w_bits: 16, a_bits: 16, placement: online}",
      "{w_bits: 16, a_bits: 16, placement: residual}",
      "{w_bits: 16, a_bits: 16, placement: residual, vo_hadamard: true, down_hadamard: true}",
  };
  for (const std::string& family : kFamilies) {
    const LlamaWeights fp = load_checkpoint((kFixtures / family).string());
    const Expected e = expected_of(family);
    const at::Tensor reference = llama_forward(fp, e.tokens);
    for (const std::string& quant : quants) {
      for (const char* m : {"{method: hadamard}", "{method: singlequant}", "{method: random_orthogonal}"}) {
        SCOPED_TRACE(family + " " + quant + " " + m);
        const auto method = make_method(m);
        SilentLog log;
        BuildInputs in;
        in.method = method.get();
        in.seed = 3;
        in.calib_windows = e.tokens;
        in.log_for = [&](const std::string&) -> FitLog& { return log; };
        const QuantizedModel built =
            build_quantized_model(fp, parse_model_quant_config(YAML::Load(quant), "test", nullptr), in);
        EXPECT_LT(built.fused_logit_error, 1e-5);
        QuantizedModelHooks hooks = *built.hooks;
        const double error = relative_error(llama_forward(built.weights, e.tokens, &hooks), reference);
        EXPECT_LT(error, 1e-5);
        if (fp.config.tied_embeddings && quant.find("residual") != std::string::npos) {
          EXPECT_TRUE(built.head_untied);
        }
      }
    }
  }
}

TEST(ModelFamilies, SaveHfRoundTrips) {
  testing::TempDir dir;
  for (const std::string& family : kFamilies) {
    SCOPED_TRACE(family);
    const LlamaWeights w = load_checkpoint((kFixtures / family).string());
    const std::string out = dir.file(family);
    save_hf(w, out);
    const LlamaWeights back = load_checkpoint(out);
    EXPECT_EQ(back.config.architecture, w.config.architecture);
    EXPECT_EQ(back.config.rope.type, w.config.rope.type);
    EXPECT_EQ(back.config.head_dim(), w.config.head_dim());
    const Expected e = expected_of(family);
    EXPECT_EQ(relative_error(llama_forward(back, e.tokens), llama_forward(w, e.tokens)), 0.0);
  }
}

// GGUF (llama.cpp's layout: 'qwen2'/'qwen3' architectures, rows as in Hugging Face, biases
// and q/k norms as blk.N.* tensors): written and read back with transformers' logits.
TEST(ModelFamilies, GgufRoundTripsAndRefusesWhatItCannotHold) {
  testing::TempDir dir;
  for (const std::string family : {"qwen2", "qwen3", "llama_linear_bias"}) {
    SCOPED_TRACE(family);
    LlamaWeights w = load_checkpoint((kFixtures / family).string());
    if (family == "llama_linear_bias") {
      expect_refused(w, dir.file("linear.gguf"));
      w.config.rope = RopeConfig{};  // without the scaling it is writable; compare against itself
    }
    const std::string path = dir.file(family + ".gguf");
    save_gguf(w, path, GgmlType::F32, BpeVocab{});
    const LlamaWeights back = load_checkpoint(path);
    EXPECT_EQ(back.config.architecture, w.config.architecture);
    EXPECT_EQ(back.config.attention_bias, w.config.attention_bias);
    EXPECT_EQ(back.config.qk_norm, w.config.qk_norm);
    const Expected e = expected_of(family);
    const at::Tensor reference = family == "llama_linear_bias" ? llama_forward(w, e.tokens) : e.logits;
    EXPECT_LT(relative_error(llama_forward(back, e.tokens), reference), 1e-5);
  }
}

// The README's family and Hadamard tables are what the code says.
TEST(ModelFamilies, ReadmeTablesAreGeneratedFromTheCode) {
  testing::TempDir dir;
  const auto listed = testing::run_cli(dir.path(), "list models --markdown");
  ASSERT_EQ(listed.code, 0) << listed.err;
  const std::string readme = testing::read_text((fs::path(SQLAB_SOURCE_DIR) / "README.md").string());
  const std::string begin = "<!-- generated by: sqlab list models --markdown -->\n", end = "<!-- end generated -->";
  const size_t a = readme.find(begin), b = readme.find(end);
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(b, std::string::npos);
  EXPECT_EQ(readme.substr(a + begin.size(), b - a - begin.size()), listed.out)
      << "README.md's generated tables differ from `sqlab list models --markdown`: paste its output there";
  // Every published width of a family sqlab reads has a Hadamard matrix.
  for (const char* missing : {"none (fallback"}) EXPECT_EQ(listed.out.find(missing), std::string::npos);
}

TEST(ModelFamilies, ShowModelDescribesACheckpoint) {
  testing::TempDir dir;
  const auto shown = testing::run_cli(dir.path(), "show-model " + (kFixtures / "qwen2").string());
  ASSERT_EQ(shown.code, 0) << shown.err;
  for (const char* part : {"qwen2 (Qwen2ForCausalLM)", "biases        q, k, v", "tied to the embedding",
                           "MLP         344 = 172 x 2^1 (Goethals-Seidel, w = 43)", "heads         4 query, 2 key/value, head_dim 16"})
    EXPECT_NE(shown.out.find(part), std::string::npos) << part << "\n" << shown.out;
  const auto missing = testing::run_cli(dir.path(), "show-model no/such/dir");
  EXPECT_EQ(missing.code, 2);
  const auto hadamard = testing::run_cli(dir.path(), "list hadamard");
  EXPECT_NE(hadamard.out.find("924   Paley II, q = 461"), std::string::npos) << hadamard.out;
}

}  // namespace
}  // namespace sqlab
