// The layer-by-layer pipeline (issue #18): evaluation streamed through the layers as they
// are built equals the whole quantized model's, for both placements, RTN and GPTQ, a
// quantized head; the residual fit sees the full-precision stream; the chunked head equals
// a direct log-softmax; BF16 and F32 checkpoints of the same values give the same results;
// opening a checkpoint reads no tensor, and building holds about one layer at a time.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "core/recorder.h"
#include "core/registries.h"
#include "datasets/builtin.h"
#include "io/safetensors.h"
#include "model/capture.h"
#include "model/checkpoint.h"
#include "model/fold.h"
#include "model/gemm.h"
#include "model/layerwise.h"
#include "model/perplexity.h"
#include "model/tokenizer.h"
#include "model/quantized_model.h"
#include "model/weight_source.h"
#include "tests/test_util.h"

// tcmalloc's C entry point (the test binary links it; absent under the sanitizers).
extern "C" int MallocExtension_GetNumericProperty(const char* property, size_t* value) __attribute__((weak));

namespace sqlab {
namespace {

using testing::make_method;

LlamaConfig small_config() {
  LlamaConfig c;
  c.dim = 32;
  c.hidden_dim = 40;  // 2 x 20: a Hadamard order (down_proj's online rotation)
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 60;
  c.max_seq_len = 16;
  c.tied_embeddings = true;
  return c;
}

struct SilentLog : FitLog {
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string&) override {}
};

BuildInputs inputs(const RotationMethod& method, SilentLog& log) {
  BuildInputs in;
  in.method = &method;
  in.seed = 3;
  in.calib_windows = at::randint(60, {10, 16}, make_generator(1, "layerwise/calib"), at::kLong);
  in.log_for = [&](const std::string&) -> FitLog& { return log; };
  return in;
}

at::Tensor eval_tokens() { return at::randint(60, {200}, make_generator(2, "layerwise/eval"), at::kLong); }

// What the model runner does: one pass over the layers, the windows advanced through each
// quantized layer as it is built, then the chunked head.
PerplexityResult streamed_perplexity(const WeightSourcePtr& source, const ModelQuantConfig& config,
                                     const BuildInputs& in, const at::Tensor& tokens, int64_t batch,
                                     PerplexityResult* fp = nullptr, at::ScalarType dtype = at::kFloat) {
  const LlamaConfig& c = source->config();
  LayerwiseBuilder builder(source, config, in);
  const std::vector<TokenBatch> batches = perplexity_batches(tokens, 16, 12, batch);
  const int64_t windows = static_cast<int64_t>(perplexity_windows(tokens.numel(), 16, 12).size());
  HiddenStream q(batches, dtype), f(batches, dtype);
  q.embed(c, builder.embedding(), "test");
  f.embed(c, builder.fp_embedding(), "test");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerwiseBuilder::Layer layer = builder.next_layer();
    q.advance(c, layer.quantized, l, builder.hooks().get());
    f.advance(c, layer.fp, l);
  }
  builder.finish();
  if (fp) *fp = perplexity_result(f.score(c, builder.fp_final_norm(), builder.fp_output()), 16, 12, windows);
  return perplexity_result(q.score(c, builder.final_norm(), builder.output(), builder.hooks().get()), 16, 12, windows);
}

TEST(Layerwise, StreamedEvaluationEqualsTheWholeQuantizedModel) {
  const LlamaWeights fp = random_llama(small_config(), 4);
  const at::Tensor tokens = eval_tokens();
  const PerplexityResult fp_whole = perplexity(fp, tokens, 16, 12, nullptr, 3);
  const std::vector<std::string> quants = {
      "{placement: online, w_bits: 4, a_bits: 4}",
      "{placement: online, fold_norms: false, w_bits: 4, a_bits: 4, head_bits: 4}",
      "{placement: online, w_bits: 4, a_bits: 8, w_quantizer: gptq, gptq: {block_size: 8}}",
      "{placement: residual, w_bits: 4, a_bits: 4}",
      "{placement: residual, w_bits: 4, a_bits: 4, head_bits: 4, w_quantizer: gptq, gptq: {block_size: 8}}",
  };
  for (const char* method_yaml : {"{method: hadamard}", "{method: random_orthogonal}", "{method: urt}"}) {
    for (const std::string& quant : quants) {
      SCOPED_TRACE(std::string(method_yaml) + " " + quant);
      const auto method = make_method(method_yaml);
      const ModelQuantConfig config = parse_model_quant_config(YAML::Load(quant), "test", nullptr);
      SilentLog log;
      const QuantizedModel whole = build_quantized_model(fp, config, inputs(*method, log));
      const PerplexityResult expected = perplexity(whole.weights, tokens, 16, 12, whole.hooks.get(), 3);
      PerplexityResult fp_streamed;
      const PerplexityResult got =
          streamed_perplexity(weights_in_memory(fp), config, inputs(*method, log), tokens, 3, &fp_streamed);
      EXPECT_EQ(got.tokens_scored, expected.tokens_scored);
      EXPECT_NEAR(got.nll_mean, expected.nll_mean, 1e-6 * std::abs(expected.nll_mean));
      EXPECT_NEAR(fp_streamed.nll_mean, fp_whole.nll_mean, 1e-6 * std::abs(fp_whole.nll_mean));
      // Quantizing changed something (the comparison is not between two copies of the fp model).
      EXPECT_GT(std::abs(got.nll_mean - fp_whole.nll_mean), 1e-4);
      // Batching does not change the full-precision numbers either (the quantized ones may
      // move by a rounding flip: float32 sums in another order can cross a quantizer step).
      PerplexityResult fp_one;
      streamed_perplexity(weights_in_memory(fp), config, inputs(*method, log), tokens, 1, &fp_one);
      EXPECT_NEAR(fp_one.nll_mean, fp_whole.nll_mean, 1e-6 * std::abs(fp_whole.nll_mean));
    }
  }
}

// The embedding, every layer and the final norm in `dtype`; the head stays float32.
LlamaWeights weights_in_dtype(LlamaWeights weights, at::ScalarType dtype) {
  for (LlamaLayer& layer : weights.layers) layer = layer_in_dtype(layer, dtype);
  weights.embedding = weights.embedding.to(dtype);
  weights.final_norm = weights.final_norm.to(dtype);
  return weights;
}

// model.compute_dtype: bfloat16 evaluates in bfloat16 (the hidden states are 2 bytes, the
// numbers move by bfloat16 rounding, not more), for the full-precision and the quantized
// model of both placements; the whole-model path (zero-shot scoring) gives the streamed
// numbers bit for bit.
TEST(ComputeDtype, Bfloat16EvaluationStaysWithinBfloat16RoundingOfFloat32) {
  const LlamaWeights fp = random_llama(small_config(), 4);
  const at::Tensor tokens = eval_tokens();
  for (const char* quant : {"{placement: online, w_bits: 4, a_bits: 8}", "{placement: residual, w_bits: 4, a_bits: 8}"}) {
    SCOPED_TRACE(quant);
    const auto method = make_method("{method: hadamard}");
    const ModelQuantConfig config = parse_model_quant_config(YAML::Load(quant), "test", nullptr);
    SilentLog log;
    PerplexityResult fp32, fp16;
    const PerplexityResult q32 =
        streamed_perplexity(weights_in_memory(fp), config, inputs(*method, log), tokens, 3, &fp32, at::kFloat);
    const PerplexityResult q16 =
        streamed_perplexity(weights_in_memory(fp), config, inputs(*method, log), tokens, 3, &fp16, at::kBFloat16);
    EXPECT_EQ(q16.tokens_scored, q32.tokens_scored);
    // bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per operation).
    EXPECT_NEAR(fp16.nll_mean, fp32.nll_mean, 1e-2 * fp32.nll_mean);
    EXPECT_NEAR(q16.nll_mean, q32.nll_mean, 2e-2 * q32.nll_mean);
    EXPECT_NE(fp16.nll_sum, fp32.nll_sum);  // it did compute in bfloat16
  }
  const std::vector<TokenBatch> batches = perplexity_batches(tokens, 16, 12, 2);
  HiddenStream stream(batches, at::kBFloat16);
  stream.embed(fp.config, fp.embedding, "test");
  EXPECT_EQ(stream.hidden(0).scalar_type(), at::kBFloat16);
  for (int64_t l = 0; l < fp.config.n_layers; ++l) stream.advance(fp.config, fp.layers[l], l);
  EXPECT_EQ(stream.hidden(0).scalar_type(), at::kBFloat16);
  const PerplexityResult streamed = perplexity_result(stream.score(fp.config, fp.final_norm, fp.output), 16, 12, 1);
  const LlamaWeights narrow = weights_in_dtype(fp, at::kBFloat16);
  EXPECT_EQ(narrow.layers[0].wq.scalar_type(), at::kBFloat16);
  EXPECT_EQ(narrow.output.scalar_type(), at::kFloat);  // the head stays float32, tied or not
  const PerplexityResult whole = perplexity_result(score_batches(narrow, batches), 16, 12, 1);
  EXPECT_EQ(whole.nll_sum, streamed.nll_sum);
}

// The `model` data source reads the checkpoint a layer at a time (issue #18): its sites
// equal the whole model's captured inputs and weights, with and without folded gains, for
// a subset of layers and for the head.
TEST(ModelDataSource, LayerByLayerSitesEqualTheWholeModelsCapture) {
  testing::TempDir dir;
  const LlamaWeights fp = random_llama(small_config(), 21);
  save_hf(fp, dir.file("hf"), "F32", 2);
  testing::write_token_ids(dir.file("t.ids"), 80, 60, "model-source/ids");
  DatasetRegistry registry("dataset");
  register_builtin_datasets(registry);
  for (const bool fold : {false, true}) {
    for (const char* layers : {"[]", "[1]"}) {
      SCOPED_TRACE(std::string("fold ") + (fold ? "true" : "false") + " layers " + layers);
      ConfigReader reader(YAML::Load(fmt::format("{{path: {}, text: {}, tokens: 64, seq_len: 16, layers: {}, fold_norms: {}, "
                                                 "sites: [attn_in, attn_out, mlp_in, mlp_out, head]}}",
                                                 dir.file("hf"), dir.file("t.ids"), layers, fold)),
                          "test.yaml", "data");
      const auto dataset = registry.create("model", reader);
      dataset->validate();
      const std::vector<Site> sites = dataset->load(0);
      LlamaWeights whole = load_checkpoint(dir.file("hf"));
      if (fold) fold_norm_gains(whole);
      const at::Tensor ids = at::tensor(load_eval_tokens(dir.file("t.ids"), nullptr, true, 64), at::kLong);
      const std::map<SiteKey, at::Tensor> expected = capture_site_inputs(whole, ids.reshape({4, 16}));
      ASSERT_EQ(sites.size(), std::string(layers) == "[]" ? 13u : 5u);
      for (const Site& site : sites) {
        SCOPED_TRACE(site.name);
        const SiteKey key = site.name == "head" ? SiteKey{-1, LinearSite::head}
                                                : SiteKey{site.name[5] - '0', site.name.find("attn_in") != std::string::npos    ? LinearSite::attn_in
                                                                              : site.name.find("attn_out") != std::string::npos ? LinearSite::attn_out
                                                                              : site.name.find("mlp_in") != std::string::npos   ? LinearSite::mlp_in
                                                                                                                                : LinearSite::mlp_out};
        EXPECT_TRUE(at::allclose(site.X, expected.at(key), 1e-5, 1e-6));
        EXPECT_TRUE(at::equal(site.W, site_weight(whole, key.first, key.second).contiguous()));
      }
    }
  }
}

// Records the site it is given, then behaves as the identity.
class SpyMethod : public RotationMethod {
 public:
  RotationPtr fit(const FitContext& context) const override {
    seen[context.site.name] = context.site.X.clone();
    seen_w[context.site.name] = context.site.W.clone();
    return make_method("{method: identity}")->fit(context);
  }
  bool reads_weights() const override { return reads; }
  bool reads = false;
  mutable std::map<std::string, at::Tensor> seen, seen_w;
};

TEST(Layerwise, TheResidualFitSeesTheFullPrecisionStream) {
  const LlamaWeights fp = random_llama(small_config(), 5);
  SpyMethod spy;
  SilentLog log;
  const ModelQuantConfig config = parse_model_quant_config(
      YAML::Load("{placement: residual, w_bits: 4, a_bits: 4, head_bits: 8}"), "test", nullptr);
  const BuildInputs in = inputs(spy, log);
  build_quantized_model(fp, config, in);
  // The folded full-precision model's inputs to every reading site, in order.
  LlamaWeights folded = clone_weights(fp);
  fold_norm_gains(folded);
  const std::vector<SiteKey> keys = {{0, LinearSite::attn_in}, {0, LinearSite::mlp_in}, {1, LinearSite::attn_in},
                                     {1, LinearSite::mlp_in},  {2, LinearSite::attn_in}, {2, LinearSite::mlp_in},
                                     {-1, LinearSite::head}};
  const std::map<SiteKey, at::Tensor> captured = capture_site_inputs(folded, in.calib_windows, keys);
  std::vector<at::Tensor> parts;
  for (const SiteKey& key : keys) parts.push_back(captured.at(key));
  const at::Tensor expected = at::cat(parts, 0);
  ASSERT_EQ(spy.seen.count("residual"), 1u);
  ASSERT_EQ(spy.seen.at("residual").sizes(), expected.sizes());
  EXPECT_LT((spy.seen.at("residual") - expected).abs().max().item<double>(), 1e-5);
  // A method that reads only X gets no weights; one that reads them gets every reading linear.
  EXPECT_EQ(spy.seen_w.at("residual").size(0), 0);
  spy.reads = true;
  build_quantized_model(fp, config, in);
  const LlamaConfig& c = fp.config;
  EXPECT_EQ(spy.seen_w.at("residual").size(0),
            c.n_layers * (c.q_dim() + 2 * c.kv_dim() + 2 * c.hidden_dim) + c.vocab_size);
}

TEST(Layerwise, ChunkedHeadEqualsADirectLogSoftmax) {
  const at::Tensor hidden = at::randn({2, 7, 8}, make_generator(7, "head/hidden"));
  const at::Tensor output = at::randn({30, 8}, make_generator(7, "head/output"));
  TokenBatch batch;
  for (int64_t p = 0; p < 14; p += 1) {
    batch.select.push_back(p);
    batch.targets.push_back((p * 7) % 30);
  }
  const at::Tensor logp = at::log_softmax(at::linear(hidden.reshape({14, 8}), output).to(at::kDouble), -1);
  for (int64_t chunk : {1, 3, 5, 512}) {
    const ScoredTokens s = score_positions(hidden, batch, output, chunk);
    ASSERT_EQ(s.logprob.size(), 14u);
    for (int64_t p = 0; p < 14; ++p) {
      const int64_t target = batch.targets[static_cast<size_t>(p)];
      EXPECT_NEAR(s.logprob[static_cast<size_t>(p)], logp[p][target].item<double>(), 1e-6);
      EXPECT_EQ(s.greedy[static_cast<size_t>(p)], logp[p].argmax().item<int64_t>() == target);
    }
  }
}

TEST(Layerwise, Bf16AndF32CheckpointsOfTheSameValuesGiveTheSameResults) {
  LlamaWeights fp = random_llama(small_config(), 8);
  // Values a BF16 file holds exactly.
  fp.embedding = fp.embedding.to(at::kBFloat16).to(at::kFloat);
  fp.output = fp.embedding;
  fp.final_norm = fp.final_norm.to(at::kBFloat16).to(at::kFloat);
  for (LlamaLayer& l : fp.layers)
    for (at::Tensor* t : l.tensors())
      if (t->defined()) *t = t->to(at::kBFloat16).to(at::kFloat);
  testing::TempDir dir;
  save_hf(fp, dir.file("f32"), "F32");
  save_hf(fp, dir.file("bf16"), "BF16", 3);
  const auto method = make_method("{method: hadamard}");
  const ModelQuantConfig config =
      parse_model_quant_config(YAML::Load("{placement: residual, w_bits: 4, a_bits: 4}"), "test", nullptr);
  SilentLog log;
  const at::Tensor tokens = eval_tokens();
  const PerplexityResult a = streamed_perplexity(open_weights(dir.file("f32")), config, inputs(*method, log), tokens, 2);
  const PerplexityResult b = streamed_perplexity(open_weights(dir.file("bf16")), config, inputs(*method, log), tokens, 2);
  EXPECT_EQ(a.nll_sum, b.nll_sum);
  // And the same as the model in memory.
  const PerplexityResult m = streamed_perplexity(weights_in_memory(fp), config, inputs(*method, log), tokens, 2);
  EXPECT_EQ(a.nll_sum, m.nll_sum);
}

// A NaN in the last layer: opening checks every header and shape but reads no tensor, so
// it succeeds; reading that layer fails naming the tensor.
TEST(Layerwise, OpeningACheckpointReadsNoTensor) {
  LlamaWeights fp = random_llama(small_config(), 9);
  fp.layers[2].w_up[0][0] = std::nanf("");
  testing::TempDir dir;
  save_hf(fp, dir.file("hf"), "BF16", 2);
  WeightSourcePtr source;
  ASSERT_NO_THROW(source = open_weights(dir.file("hf")));
  EXPECT_NO_THROW(source->layer(0));
  testing::expect_config_error([&] { source->layer(2); }, {"model.layers.2.mlp.up_proj.weight", "NaN"});
  // Shapes are checked on open, before anything runs: a config.json that lies about the MLP.
  std::string json = testing::read_text(dir.file("hf/config.json"));
  const size_t at = json.find("\"intermediate_size\": 40");
  ASSERT_NE(at, std::string::npos) << json;
  json.replace(at, 23, "\"intermediate_size\": 48");
  testing::write_text(dir.file("hf/config.json"), json);
  testing::expect_config_error([&] { open_weights(dir.file("hf")); },
                               {"model.layers.0.mlp.gate_proj.weight", "[40, 32]", "[48, 32]"});
}

size_t allocated_bytes() {
  size_t value = 0;
  MallocExtension_GetNumericProperty("generic.current_allocated_bytes", &value);
  return value;
}

// The builder holds the layer it builds, not the model: the bytes allocated do not grow from
// one layer to the next, and stay under half the model's float32 size (12 layers).
TEST(Layerwise, BuildingHoldsAboutOneLayerNotTheModel) {
  if (!MallocExtension_GetNumericProperty) GTEST_SKIP() << "no tcmalloc (sanitizer build): bytes not countable";
  LlamaConfig c = small_config();
  c.dim = 256;
  c.hidden_dim = 640;  // 5 x 128
  c.n_layers = 12;
  c.n_heads = 8;
  c.n_kv_heads = 8;
  c.vocab_size = 64;
  testing::TempDir dir;
  {
    const LlamaWeights fp = random_llama(c, 10);
    save_hf(fp, dir.file("hf"), "BF16", 4);
  }
  const int64_t layer_bytes = 4 * (4 * c.dim * c.dim + 3 * c.dim * c.hidden_dim);
  const auto method = make_method("{method: hadamard}");
  const ModelQuantConfig config =
      parse_model_quant_config(YAML::Load("{placement: online, w_bits: 4, a_bits: 4}"), "test", nullptr);
  SilentLog log;
  BuildInputs in = inputs(*method, log);
  const size_t before = allocated_bytes();
  const WeightSourcePtr source = open_weights(dir.file("hf"));
  EXPECT_LT(static_cast<int64_t>(allocated_bytes() - before), layer_bytes / 4) << "opening read tensors";
  LayerwiseBuilder builder(source, config, in);
  int64_t first = 0, most = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    builder.next_layer();  // dropped at once, as the runner drops it after its streams
    const int64_t now = static_cast<int64_t>(allocated_bytes() - before);
    if (l == 0) first = now;
    most = std::max(most, now);
  }
  builder.finish();
  // The first layer may leave LibTorch's one-time caches behind (LibTorch 2.x: ~9.4 MB when
  // other tests ran before in this process, none on 1.13); after it nothing may accumulate:
  // a builder that keeps its layers adds one layer per layer.
  EXPECT_LT(first, c.n_layers / 2 * layer_bytes) << "the model is " << c.n_layers * layer_bytes << " bytes";
  EXPECT_LT(most - first, layer_bytes) << "the model is " << c.n_layers * layer_bytes << " bytes";
  // The check can fail: the whole model read into memory is over the bound.
  const LlamaWeights whole = read_all_weights(*source);
  EXPECT_GT(static_cast<int64_t>(allocated_bytes() - before), 3 * layer_bytes);
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

// Through the binary: a model-level run records the pipeline's stages, peak memory and FLOP
// rates, and keeps the full-precision perplexity in RESULTS/cache/ppl_fp; a later run in the
// same directory reads it from there (shown by planting another value in the file).
TEST(LayerwiseCli, FullPrecisionPerplexityIsCachedInTheResultsDirectory) {
  testing::TempDir dir;
  LlamaConfig c = small_config();
  save_hf(random_llama(c, 11), dir.file("hf"), "BF16", 2);
  testing::write_token_ids(dir.file("eval.ids"), 300, 60, "cli/ids");
  testing::write_text(dir.file("e.yaml"), R"(name: m
seeds: [0]
model: {path: hf}
eval: {text: eval.ids, max_tokens: 200, gemm_reference: true}
calib: {tokens: 64}
quant: {w_bits: 4, a_bits: 4}
methods: [{label: had, method: hadamard}]
)");
  const testing::CliResult first = testing::run_cli(dir.path(), "run e.yaml --out out --json", "SQLAB_THREADS=1");
  ASSERT_EQ(first.code, 0) << first.err;
  for (const char* metric : {"peak_rss_mib", "eval_forward_gflops", "gemm_gflops", "eval_forward_gemm_ratio"})
    EXPECT_NE(first.out.find(metric), std::string::npos) << metric;
  std::vector<std::filesystem::path> cached;
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("out/cache/ppl_fp"))) cached.push_back(entry.path());
  ASSERT_EQ(cached.size(), 1u);
  std::string json = testing::read_text(cached[0].string());
  const size_t at = json.find("\"ppl\": ");
  ASSERT_NE(at, std::string::npos) << json;
  json.replace(at, json.find(',', at) - at, "\"ppl\": 12345.5");
  testing::write_text(cached[0].string(), json);
  const testing::CliResult second =
      testing::run_cli(dir.path(), "run e.yaml --out out --json --set 'methods=[{label: had2, method: hadamard}]'", "SQLAB_THREADS=1");
  ASSERT_EQ(second.code, 0) << second.err;
  EXPECT_NE(second.out.find("12345.5"), std::string::npos) << second.out;
  // eval.hidden_budget_gb: 0 puts every evaluation batch in the scratch file: same ppl.
  const testing::CliResult spilled =
      testing::run_cli(dir.path(), "run e.yaml --out out3 --json --set eval.hidden_budget_gb=0", "SQLAB_THREADS=1");
  ASSERT_EQ(spilled.code, 0) << spilled.err;
  const auto metric = [](const std::string& out, const std::string& name) {
    return nlohmann::json::parse(out)["groups"][0]["metrics"][name]["mean"].get<double>();
  };
  EXPECT_EQ(metric(spilled.out, "ppl"), metric(first.out, "ppl"));
  EXPECT_GT(metric(spilled.out, "hidden_spilled_mib"), 0.0);
  EXPECT_EQ(metric(first.out, "hidden_spilled_mib"), 0.0);
  // model.compute_dtype: bfloat16 is a run of its own (and its own full-precision cache
  // entry), recorded in the run file; another dtype is refused before anything runs.
  const testing::CliResult bf16 =
      testing::run_cli(dir.path(), "run e.yaml --out out --json --set model.compute_dtype=bfloat16", "SQLAB_THREADS=1");
  ASSERT_EQ(bf16.code, 0) << bf16.err;
  EXPECT_NE(metric(bf16.out, "ppl_fp"), 12345.5);
  EXPECT_NEAR(metric(bf16.out, "nll"), metric(first.out, "nll"), 2e-2 * metric(first.out, "nll"));
  int bf16_runs = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("out/runs"))) {
    const RunRecord record = read_run_file(entry.path().string());
    const bool bf16_run = record.attributes.at("compute_dtype") == "bfloat16";
    bf16_runs += bf16_run;
    // How its 16-bit products ran on this CPU (model/gemm.h), recorded for bfloat16 runs only.
    if (bf16_run)
      EXPECT_EQ(record.attributes.at("cpu_gemm16"), gemm::cpu_path16());
    else
      EXPECT_EQ(record.attributes.count("cpu_gemm16"), 0u);
  }
  EXPECT_EQ(bf16_runs, 1);
  const testing::CliResult bad =
      testing::run_cli(dir.path(), "run e.yaml --out out4 --set model.compute_dtype=float8", "SQLAB_THREADS=1");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("compute_dtype"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

// Resident pages of file mappings in this process now, KiB (/proc/self/status RssFile: the
// allocator's own caching does not show there).
int64_t resident_file_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8));
  return -1;
}

// A tensor read from a memory-mapped file leaves no pages of the file in the resident set:
// reading a checkpoint layer by layer does not accumulate it in RSS.
TEST(MappedFileRelease, ReadTensorsLeaveTheResidentSet) {
  testing::TempDir dir;
  const at::Tensor big = at::ones({64, 1024, 1024}, at::kByte);  // 64 MiB
  write_safetensors(dir.file("big.safetensors"), {{"big", big}});
  const SafetensorsFile file(dir.file("big.safetensors"));
  const auto [data, size] = file.bytes("big");
  int64_t sum = 0;  // touch every page of the mapping: 64 MiB resident
  for (size_t i = 0; i < size; i += 4096) sum += data[i];
  ASSERT_EQ(sum, static_cast<int64_t>(size / 4096));
  const int64_t touched = resident_file_kib();
  ASSERT_GE(touched, 64 * 1024);
  const at::Tensor copy = file.tensor("big");  // copies, then releases the tensor's pages
  EXPECT_EQ(copy.numel(), static_cast<int64_t>(size));
  const int64_t after = resident_file_kib();
  EXPECT_LT(after, touched - 48 * 1024) << "touched " << touched << " KiB, after " << after << " KiB";
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

// A method that says it does not read W (or X) gives the same rotation without them: the
// pipeline passes it empty ones (the residual site's stacked weights, a data-free method's
// calibration forward), so a wrong claim would change results silently.
TEST(MethodNeeds, WhatAMethodSaysItDoesNotReadChangesNothing) {
  const at::Tensor x = at::randn({64, 32}, make_generator(12, "needs/x")) * 3.0;
  const at::Tensor w = at::randn({48, 32}, make_generator(12, "needs/w"));
  const std::vector<std::string> methods = {
      "{method: identity}", "{method: random_orthogonal}", "{method: hadamard}", "{method: art}", "{method: urt}",
      "{method: singlequant}", "{method: smoothquant}", "{method: duquant, block_size: 16}",
      "{method: cayley_sgd, steps: 2}", "{method: compose, steps: [{method: hadamard}, {method: identity}]}"};
  QuantConfig quant;
  SilentLog log;
  int claims = 0;
  for (const std::string& yaml : methods) {
    SCOPED_TRACE(yaml);
    const auto method = make_method(yaml);
    const Site full{"s", x, w, {}};
    const at::Tensor reference = method->fit(FitContext{full, quant, 3, log})->dense();
    if (!method->reads_weights()) {
      ++claims;
      const Site no_w{"s", x, at::empty({0, 32}), {}};
      EXPECT_TRUE(at::equal(method->fit(FitContext{no_w, quant, 3, log})->dense(), reference));
    }
    if (!method->reads_activations()) {
      ++claims;
      const Site no_x{"s", at::empty({0, 32}), at::empty({0, 32}), {}};
      EXPECT_TRUE(at::equal(method->fit(FitContext{no_x, quant, 3, log})->dense(), reference));
    }
  }
  EXPECT_GE(claims, 9);  // 6 methods read no W, 3 (and the compose of two) no X
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

// Hidden states spilled to the scratch file give the in-memory numbers bit for bit, whatever
// part of the batches spills.
TEST(HiddenSpill, ScratchFileGivesTheInMemoryResultsBitForBit) {
  const LlamaWeights fp = random_llama(small_config(), 13);
  const std::vector<TokenBatch> batches = perplexity_batches(eval_tokens(), 16, 12, 2);
  ASSERT_GE(batches.size(), 4u);
  at::ScalarType dtype = at::kFloat;
  const auto run = [&](int64_t budget, int64_t* spilled) {
    HiddenStream stream(batches, dtype);
    testing::TempDir dir;
    if (budget >= 0) stream.spill_beyond(budget, dir.path().string());
    stream.embed(fp.config, fp.embedding, "test");
    for (int64_t l = 0; l < fp.config.n_layers; ++l) stream.advance(fp.config, fp.layers[l], l);
    *spilled = stream.spilled_bytes();
    return perplexity_result(stream.score(fp.config, fp.final_norm, fp.output), 16, 12, 1);
  };
  int64_t none = 0, some = 0, all = 0;
  const PerplexityResult memory = run(-1, &none);
  const int64_t one_batch = 2 * 16 * 32 * 4;
  const PerplexityResult part = run(2 * one_batch, &some);
  const PerplexityResult disk = run(0, &all);
  EXPECT_EQ(none, 0);
  EXPECT_GT(some, 0);
  EXPECT_GT(all, some);
  EXPECT_EQ(part.nll_sum, memory.nll_sum);
  EXPECT_EQ(disk.nll_sum, memory.nll_sum);
  // And the scratch file is gone: it was unlinked when made.
  // The same in bfloat16 (half the bytes per batch).
  dtype = at::kBFloat16;
  int64_t all16 = 0;
  const PerplexityResult memory16 = run(-1, &none);
  const PerplexityResult disk16 = run(0, &all16);
  EXPECT_EQ(all16 * 2, all);
  EXPECT_EQ(disk16.nll_sum, memory16.nll_sum);
  EXPECT_NE(memory16.nll_sum, memory.nll_sum);
}

}  // namespace
}  // namespace sqlab
