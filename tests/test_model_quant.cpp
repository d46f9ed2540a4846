// Quantized model evaluation: norm folding and every fused rotation leave the
// full-precision logits unchanged (each placement, each method), 16-bit evaluation
// equals full precision, W4A4 really quantizes, and the model-level Cayley SGD loss.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/random.h"
#include "methods/builtin.h"
#include "model/capture.h"
#include "model/checkpoint.h"
#include "model/fold.h"
#include "model/model_cayley.h"
#include "model/quantized_model.h"
#include "quant/gptq.h"
#include "rotations/dense.h"
#include "rotations/hadamard.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

using testing::make_method;

LlamaConfig tiny_config() {
  LlamaConfig c;
  c.dim = 32;
  c.hidden_dim = 40;  // 40 = 2 x 20: has a Hadamard matrix (down_proj's online rotation)
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 50;
  c.max_seq_len = 32;
  return c;
}

double rel_error(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / b.to(at::kDouble).norm().item<double>();
}

struct NullLog : FitLog {
  std::map<std::string, std::vector<double>> traces;
  std::map<std::string, double> metrics;
  void trace(const std::string& name, int64_t, double value) override { traces[name].push_back(value); }
  void metric(const std::string& name, double value) override { metrics[name] = value; }
  void warn(const std::string&) override {}
};

ModelQuantConfig quant_config(const std::string& yaml) {
  return parse_model_quant_config(YAML::Load(yaml), "test", nullptr);
}

at::Tensor calib_windows() { return at::randint(50, {4, 16}, make_generator(5, "calib"), at::kLong); }

QuantizedModel build(const LlamaWeights& fp, const ModelQuantConfig& q, const RotationMethod& method, NullLog& log,
                     uint64_t seed = 0) {
  BuildInputs in;
  in.method = &method;
  in.seed = seed;
  in.calib_windows = calib_windows();
  in.log_for = [&](const std::string&) -> FitLog& { return log; };
  return build_quantized_model(fp, q, in);
}

TEST(ModelFold, NormFoldingAndResidualRotationKeepLogits) {
  for (bool tied : {false, true}) {
    LlamaConfig c = tiny_config();
    c.tied_embeddings = tied;
    const LlamaWeights fp = random_llama(c, 2);
    const at::Tensor tokens = at::randint(50, {2, 12}, at::kLong);
    const at::Tensor reference = llama_forward(fp, tokens);
    LlamaWeights w = clone_weights(fp);
    fold_norm_gains(w);
    EXPECT_TRUE(norm_gains_folded(w));
    EXPECT_LT(rel_error(llama_forward(w, tokens), reference), 1e-5);
    const DenseRotation q(random_orthogonal_matrix(32, make_generator(1, "q")));
    fuse_residual_rotation(w, q);
    EXPECT_LT(rel_error(llama_forward(w, tokens), reference), 1e-5);
    fuse_value_head_rotation(w, HadamardRotation(8, random_signs(8, make_generator(1, "h"))));
    EXPECT_LT(rel_error(llama_forward(w, tokens), reference), 1e-5);
    // The embedding was rotated: the model really changed.
    EXPECT_GT(rel_error(w.embedding, fp.embedding), 0.1);
    // Without folding, a residual rotation is refused (it does not commute with the gains).
    LlamaWeights unfolded = clone_weights(fp);
    EXPECT_THROW(fuse_residual_rotation(unfolded, q), Error);
  }
}

// Each placement x each method: at 16 bits the evaluated model gives the FP logits.
TEST(ModelQuant, FusedRotationsAt16BitsGiveFullPrecisionLogits) {
  const LlamaWeights fp = random_llama(tiny_config(), 4);
  const at::Tensor tokens = at::randint(50, {2, 16}, at::kLong);
  const at::Tensor reference = llama_forward(fp, tokens);
  const std::vector<std::string> methods = {
      "{method: identity}",
      "{method: hadamard}",
      "{method: random_orthogonal}",
      "{method: art}",
      "{method: urt}",
      "{method: singlequant, components: [art, urt]}",
      "{method: cayley_sgd, steps: 3}",
  };
  for (const std::string placement : {"online", "residual"}) {
    for (const std::string& m : methods) {
      const auto method = make_method(m);
      NullLog log;
      const ModelQuantConfig q =
          quant_config("{w_bits: 16, a_bits: 16, placement: " + placement + "}");
      QuantizedModel model = build(fp, q, *method, log, 3);
      const double err = rel_error(llama_forward(model.weights, tokens, model.hooks.get()), reference);
      EXPECT_LT(err, 1e-4) << placement << " " << m;
      std::printf("[ invariance ] %-8s %-46s rel. logit error %.2e\n", placement.c_str(), m.c_str(), err);
      if (placement == "online") {
        EXPECT_EQ(model.hooks->rotations.size(), 8u) << m;
      }
      if (placement == "residual") {
        EXPECT_TRUE(model.residual != nullptr) << m;
      }
    }
  }
  // online without folding the gains: also exact.
  const auto method = make_method("{method: hadamard}");
  NullLog log;
  QuantizedModel model = build(fp, quant_config("{w_bits: 16, a_bits: 16, fold_norms: false}"), *method, log);
  EXPECT_LT(rel_error(llama_forward(model.weights, tokens, model.hooks.get()), reference), 1e-4);
}

// A rotation whose weight side is wrong (it rotates the input but leaves the weights
// alone): the fused model's logits move, and the run fails before anything is quantized.
class WrongFuseRotation : public DenseRotation {
 public:
  using DenseRotation::DenseRotation;
  at::Tensor fuse_into(const at::Tensor& w) const override { return w; }
};
class WrongFuseMethod : public RotationMethod {
 public:
  RotationPtr fit(const FitContext& context) const override {
    return std::make_unique<WrongFuseRotation>(
        random_orthogonal_matrix(context.site.X.size(1), make_generator(context.seed, "wrong")));
  }
};

TEST(ModelQuant, FusedLogitErrorIsMeasuredAndAWrongFusionFailsTheRun) {
  for (bool tied : {false, true}) {
    LlamaConfig c = tiny_config();
    c.tied_embeddings = tied;
    const LlamaWeights fp = random_llama(c, 6);
    NullLog log;
    const auto hadamard = make_method("{method: hadamard}");
    for (const std::string placement : {"online", "residual"}) {
      const QuantizedModel ok =
          build(fp, quant_config("{w_bits: 4, a_bits: 4, placement: " + placement + "}"), *hadamard, log);
      EXPECT_LT(ok.fused_logit_error, 1e-5) << placement;
      EXPECT_GT(ok.fused_logit_error, 0.0) << placement;  // measured, not assumed
      EXPECT_EQ(ok.head_untied, tied) << placement;        // folding the final norm unties it
    }
    const WrongFuseMethod wrong;
    try {
      build(fp, quant_config("{w_bits: 16, a_bits: 16, placement: online}"), wrong, log);
      ADD_FAILURE() << "a wrong fusion was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("logits differ from the original"), std::string::npos) << e.what();
    }
  }
}

TEST(ModelQuant, W4A4QuantizesEveryLinearButTheHead) {
  const LlamaWeights fp = random_llama(tiny_config(), 4);
  const auto method = make_method("{method: identity}");
  NullLog log;
  QuantizedModel model = build(fp, quant_config("{placement: online, fold_norms: false}"), *method, log);
  // Weights: at most 16 levels per output channel (symmetric 4-bit: 15 used).
  const at::Tensor row = model.weights.layers[1].w_up[3];
  EXPECT_LE(std::get<0>(at::_unique(row)).numel(), 16);
  EXPECT_TRUE(at::equal(model.weights.output, fp.output));  // the head stays in full precision
  EXPECT_TRUE(at::equal(model.weights.embedding, fp.embedding));
  // Activations: every site's input is quantized per token to at most 16 levels.
  struct Levels : ForwardHooks {
    QuantizedModelHooks* inner;
    int64_t max_levels = 0, head_levels = 0;
    at::Tensor input(int64_t layer, LinearSite site, const at::Tensor& x) override {
      const at::Tensor y = inner->input(layer, site, x);
      const int64_t levels = std::get<0>(at::_unique(y.reshape({-1, y.size(-1)})[0])).numel();
      (site == LinearSite::head ? head_levels : max_levels) = std::max(site == LinearSite::head ? head_levels : max_levels, levels);
      return y;
    }
  } levels;
  levels.inner = model.hooks.get();
  const at::Tensor tokens = at::randint(50, {1, 16}, at::kLong);
  const at::Tensor logits = llama_forward(model.weights, tokens, &levels);
  EXPECT_LE(levels.max_levels, 16);
  EXPECT_GT(levels.head_levels, 16);
  EXPECT_GT(rel_error(logits, llama_forward(fp, tokens)), 1e-3);
  // head_bits: 4 quantizes the head too.
  QuantizedModel with_head = build(fp, quant_config("{head_bits: 4}"), *method, log);
  EXPECT_LE(std::get<0>(at::_unique(with_head.weights.output[0])).numel(), 16);
}

// GPTQ at model level: layer l is calibrated on the inputs the model gives it with
// layers 0..l-1 already weight-quantized (not on the full-precision model's inputs).
TEST(ModelQuant, GptqCalibratesLayerByLayerOnTheQuantizedPrefix) {
  const LlamaWeights fp = random_llama(tiny_config(), 6);
  const auto method = make_method("{method: identity}");
  NullLog log;
  const ModelQuantConfig q =
      quant_config("{placement: online, fold_norms: false, a_bits: 16, w_quantizer: gptq, gptq: {block_size: 8}}");
  const QuantizedModel model = build(fp, q, *method, log);
  QuantizedModelHooks no_act = *model.hooks;  // identity rotations; activations stay unquantized
  no_act.act.bits = no_act.head_act.bits = 16;

  // Layer 0 sees the full-precision embedding output.
  const SiteKey up0{0, LinearSite::mlp_in};
  const at::Tensor x0 = capture_site_inputs(fp, calib_windows(), {up0}, &no_act).at(up0);
  const at::Tensor expected0 = gptq_quantize(fp.layers[0].w_up, gptq_hessian(x0), q.quant.weight, q.quant.gptq);
  EXPECT_LT(rel_error(model.weights.layers[0].w_up, expected0), 1e-6);

  // Layer 1 sees the output of the weight-quantized layer 0.
  LlamaWeights prefix = fp;
  prefix.layers[0] = model.weights.layers[0];
  const SiteKey up1{1, LinearSite::mlp_in};
  const at::Tensor x1 = capture_site_inputs(prefix, calib_windows(), {up1}, &no_act).at(up1);
  const at::Tensor expected1 = gptq_quantize(fp.layers[1].w_up, gptq_hessian(x1), q.quant.weight, q.quant.gptq);
  EXPECT_LT(rel_error(model.weights.layers[1].w_up, expected1), 1e-6);
  // ... which is not what the full-precision inputs would give.
  const at::Tensor x1_fp = capture_site_inputs(fp, calib_windows(), {up1}, &no_act).at(up1);
  const at::Tensor from_fp = gptq_quantize(fp.layers[1].w_up, gptq_hessian(x1_fp), q.quant.weight, q.quant.gptq);
  EXPECT_GT(rel_error(expected1, from_fp), 1e-4);

  // And GPTQ's weights give a lower calibration loss than RTN's.
  const QuantizedModel rtn =
      build(fp, quant_config("{placement: online, fold_norms: false, a_bits: 16}"), *method, log);
  const at::Tensor windows = calib_windows();
  const at::Tensor ref = llama_forward(fp, windows);
  EXPECT_LT(rel_error(llama_forward(model.weights, windows, model.hooks.get()), ref),
            rel_error(llama_forward(rtn.weights, windows, rtn.hooks.get()), ref));
}

TEST(ModelQuant, ConfigKeysAreChecked) {
  EXPECT_THROW(quant_config("{placement: sideways}"), Error);
  EXPECT_THROW(quant_config("{placement: residual, fold_norms: false}"), Error);
  EXPECT_THROW(quant_config("{head_bits: 12}"), Error);
  EXPECT_THROW(quant_config("{w_bitz: 4}"), Error);
  const ModelQuantConfig q = quant_config("{a_bits: 8, placement: residual, head_bits: 8}");
  EXPECT_EQ(q.quant.act.bits, 8);
  EXPECT_EQ(q.model.placement, Placement::residual);
  EXPECT_EQ(q.model.head_bits, 8);
}

TEST(ModelCayley, LossIsRotationInvariantAt16BitsAndTrainingTraces) {
  const LlamaWeights fp = random_llama(tiny_config(), 6);
  LlamaWeights folded = clone_weights(fp);
  fold_norm_gains(folded);
  const at::Tensor windows = calib_windows();
  QuantizedModelHooks hooks;
  hooks.act.bits = 16;
  hooks.head_act.bits = 16;
  hooks.ste = true;
  QuantConfig q16;
  q16.weight.bits = q16.act.bits = 16;
  const at::Tensor eye = at::eye(32, at::kFloat);
  const at::Tensor r = random_orthogonal_matrix(32, make_generator(2, "r")).to(at::kFloat);
  const double a = model_quantized_loss(folded, hooks, q16, 16, eye, windows).item<double>();
  const double b = model_quantized_loss(folded, hooks, q16, 16, r, windows).item<double>();
  EXPECT_NEAR(a, b, 1e-5 * a);
  // W4A4: the loss depends on R and trains; traces have one point per step.
  QuantizedModelHooks hooks4;
  QuantConfig q4;
  ModelCayleyOptions o;
  o.sgd.total_steps = 6;
  o.batch_windows = 2;
  NullLog log;
  RotationPtr learned = train_residual_rotation(folded, hooks4, q4, 16, windows, o, 1, log);
  EXPECT_EQ(log.traces["loss"].size(), 6u);
  EXPECT_EQ(log.traces["grad_norm"].size(), 6u);
  EXPECT_LT(orthogonality_error(learned->dense()), 1e-10);
  EXPECT_TRUE(log.metrics.count("final_loss"));
  // Through the build: a residual placement with the trainer gives Q = the learned R.
  const auto method = make_method("{method: cayley_sgd, steps: 2}");
  BuildInputs in;
  in.method = method.get();
  in.calib_windows = windows;
  in.log_for = [&](const std::string&) -> FitLog& { return log; };
  in.residual_trainer = [&](const LlamaWeights& m, const QuantizedModelHooks& h) {
    return train_residual_rotation(m, h, q16, 16, windows, o, 1, log);
  };
  const QuantizedModel model = build_quantized_model(fp, quant_config("{w_bits: 16, a_bits: 16, placement: residual}"), in);
  const at::Tensor tokens = at::randint(50, {1, 12}, at::kLong);
  EXPECT_LT(rel_error(llama_forward(model.weights, tokens, model.hooks.get()), llama_forward(fp, tokens)), 1e-4);
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

// End to end through the binary: a random model written as llama2.c, token ids as
// text, both placements; every run records ppl and ppl_fp, and ppl at 16 bits equals ppl_fp.
TEST(ModelRunCli, PerplexityRunsForBothPlacements) {
  testing::TempDir dir;
  LlamaConfig c = tiny_config();
  c.max_seq_len = 16;
  save_llama2c(random_llama(c, 9), dir.file("m.bin"));
  testing::write_token_ids(dir.file("eval.ids"), 400, 50, "ids");
  testing::write_text(dir.file("e.yaml"), R"(name: m
seeds: [0]
model: {path: m.bin}
eval: {text: eval.ids, max_tokens: 256}
calib: {tokens: 64, seq_len: 16}
quant: {w_bits: 16, a_bits: 16}
methods:
  - {label: had, method: hadamard}
  - {label: sgd, method: cayley_sgd, steps: 2}
sweep: {grid: {quant.placement: [online, residual]}}
)");
  const testing::CliResult r = testing::run_cli(dir.path(), "run e.yaml --out out --json", "SQLAB_THREADS=1");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string csv = testing::read_text(dir.file("out/summary.csv"));
  EXPECT_NE(csv.find("ppl_fp"), std::string::npos);
  // Unknown keys are config errors naming the key.
  testing::write_text(dir.file("bad.yaml"), "name: b\nmodel: {path: m.bin}\neval: {text: eval.ids, strides: 3}\n"
                                             "methods: [{method: identity}]\n");
  const testing::CliResult bad = testing::run_cli(dir.path(), "run bad.yaml --out out2");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("strides"), std::string::npos) << bad.err;
}

TEST(ModelRunCli, GenerateGreedyStoryFromEmptyPrompt) {
  const std::string data = SQLAB_SHARED_DATA;
  if (!std::filesystem::exists(data + "/models/stories260K.bin")) GTEST_SKIP() << "no " << data << "/models/stories260K.bin";
  testing::TempDir dir;
  const testing::CliResult r = testing::run_cli(
      dir.path(), "generate --model " + data + "/models/stories260K.bin --tokenizer " + data +
                      "/models/tok512.bin --prompt '' --steps 12",
      "SQLAB_THREADS=1");
  ASSERT_EQ(r.code, 0) << r.err;
  // llama2.c's run.c gives the same greedy start for this model.
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
}

}  // namespace
}  // namespace sqlab
