// Cayley SGD on the Stiefel manifold (rotations/stiefel.h) and the cayley_sgd method:
// orthogonality of the fixed-point update, convergence on a smooth loss, the STE's
// gradient against finite differences, schedules, traces, options.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/config.h"
#include "core/method.h"
#include "core/quant_config.h"
#include "core/random.h"
#include "datasets/synthetic.h"
#include "methods/builtin.h"
#include "methods/cayley_sgd.h"
#include "rotations/stiefel.h"

namespace sqlab {
namespace {

// An orthogonal matrix with determinant +1 (on the identity's component of O(n)).
at::Tensor special_orthogonal(int64_t n, uint64_t seed) {
  at::Tensor q = random_orthogonal_matrix(n, make_generator(seed, "test"));
  if (at::det(q).item<double>() < 0) q.select(1, 0).neg_();
  return q;
}

CayleySGDOptions plain_options(double lr, int64_t steps, LrSchedule schedule) {
  CayleySGDOptions o;
  o.lr = lr;
  o.total_steps = steps;
  o.schedule = schedule;
  o.normalize_rows = false;  // nothing but the Cayley update itself
  o.random_reorth = false;
  return o;
}

// A fresh random direction every step (no convergence: every step is a full one, as
// under the STE's noise), ||G||_F = 1, no row normalization, no re-orthonormalization.
double fixed_point_drift(int64_t n, double lr, int iters, int64_t steps) {
  at::Tensor R = special_orthogonal(n, 1);
  CayleySGDOptions o = plain_options(lr, steps, LrSchedule::constant);
  o.fixed_point_iters = iters;
  CayleySGD optimizer(o, 0);
  at::Generator g = make_generator(2, "gradients");
  double worst = 0.0;
  for (int64_t step = 0; step < steps; ++step) {
    at::Tensor G = at::randn({n, n}, g, at::kDouble);
    const CayleyStepStats stats = optimizer.step(R, G / G.norm());
    EXPECT_GT(stats.step_size, 0.0);
    worst = std::max(worst, stats.orth_error);
  }
  EXPECT_EQ(optimizer.steps_done(), steps);
  return worst;
}

TEST(CayleySGD, FixedPointUpdateStaysOrthogonalOver1000Steps) {
  // SpinQuant's update (5 iterations from R^T + a V). Each step leaves an orthogonality
  // defect of about (a ||A||_2 / 2)^5 a ||V||: tiny while the lr caps the step.
  EXPECT_LT(fixed_point_drift(32, 0.5, 5, 1000), 1e-5);
  // Where a = 1 / ||A||_1 caps it instead, a ||A||_2 = ||A||_2 / ||A||_1 is large at small
  // n (~0.4 at n = 32: ~4e-5 per step with 5 iterations, which SpinQuant's row
  // normalization and occasional QR keep in check); more iterations converge.
  EXPECT_LT(fixed_point_drift(32, 100.0, 12, 1000), 1e-5);
}

TEST(CayleySGD, SolveRetractionIsOrthogonalToRoundingError) {
  const int64_t n = 24;
  at::Tensor R = special_orthogonal(n, 3);
  CayleySGDOptions o = plain_options(1.5, 200, LrSchedule::constant);
  o.retraction = CayleyRetraction::solve;
  CayleySGD optimizer(o, 0);
  at::Generator g = make_generator(4, "gradients");
  for (int step = 0; step < 200; ++step) optimizer.step(R, at::randn({n, n}, g, at::kDouble));
  EXPECT_LT(orthogonality_error(R), 1e-11);
}

// Loss 0.5 ||R - T||_F^2 (gradient R - T): smooth, minimized at R = T.
struct AlignmentRun {
  std::vector<double> loss, grad_norm;
  double orth_error = 0.0;
};

AlignmentRun align(CayleySGDOptions o, int64_t n, int64_t steps) {
  const at::Tensor T = special_orthogonal(n, 5);
  at::Tensor R = special_orthogonal(n, 6);
  CayleySGD optimizer(o, 7);
  AlignmentRun run;
  for (int64_t step = 0; step < steps; ++step) {
    const at::Tensor G = R - T;
    run.loss.push_back(0.5 * G.pow(2).sum().item<double>());
    run.grad_norm.push_back(optimizer.step(R, G).grad_norm);
  }
  run.orth_error = orthogonality_error(R);
  return run;
}

TEST(CayleySGD, SmoothAlignmentLossFallsByOrdersOfMagnitude) {
  for (LrSchedule schedule : {LrSchedule::constant, LrSchedule::linear, LrSchedule::cosine}) {
    CayleySGDOptions o = plain_options(1.5, 400, schedule);
    const AlignmentRun run = align(o, 16, 400);
    EXPECT_GT(run.loss.front(), 1.0) << schedule_name(schedule);
    EXPECT_LT(run.loss.back(), 1e-6 * run.loss.front()) << schedule_name(schedule);
    EXPECT_LT(run.grad_norm.back(), 1e-3 * run.grad_norm.front()) << schedule_name(schedule);
    EXPECT_LT(run.grad_norm.back(), 1e-3) << schedule_name(schedule);
    // The first, large steps (capped by 1 / ||A||_1) leave ~1e-3 at n = 16 (see above).
    EXPECT_LT(run.orth_error, 1e-2) << schedule_name(schedule);
  }
  // The exact Cayley transform: the same convergence, orthogonal to rounding error.
  CayleySGDOptions o = plain_options(1.5, 400, LrSchedule::linear);
  o.retraction = CayleyRetraction::solve;
  const AlignmentRun exact = align(o, 16, 400);
  EXPECT_LT(exact.loss.back(), 1e-12 * exact.loss.front());
  EXPECT_LT(exact.orth_error, 1e-12);
}

TEST(CayleySGD, SpinQuantDefaultsAndMomentumAlsoConverge) {
  CayleySGDOptions o;  // row normalization, random QR, linear decay
  o.lr = 1.5;
  o.total_steps = 400;
  o.momentum = 0.5;
  o.grad_clip = 1.0;
  const AlignmentRun run = align(o, 16, 400);
  EXPECT_LT(run.loss.back(), 1e-6 * run.loss.front());
  EXPECT_LT(run.grad_norm.back(), 1e-3);
  EXPECT_LT(run.orth_error, 1e-2);
}

TEST(CayleySGD, SchedulesGiveTheExpectedRates) {
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::constant, 1.5, 0, 100), 1.5);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::constant, 1.5, 99, 100), 1.5);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::linear, 1.5, 0, 100), 1.5);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::linear, 1.5, 50, 100), 0.75);
  EXPECT_NEAR(scheduled_lr(LrSchedule::linear, 1.5, 99, 100), 0.015, 1e-15);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::linear, 1.5, 100, 100), 0.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::cosine, 1.5, 0, 100), 1.5);
  EXPECT_NEAR(scheduled_lr(LrSchedule::cosine, 1.5, 50, 100), 0.75, 1e-15);
  EXPECT_NEAR(scheduled_lr(LrSchedule::cosine, 1.5, 25, 100), 0.75 * (1 + std::sqrt(0.5)), 1e-15);
  EXPECT_NEAR(scheduled_lr(LrSchedule::cosine, 1.5, 100, 100), 0.0, 1e-15);

  // The optimizer reports the scheduled rate of each step, and caps its step by it.
  const int64_t n = 8;
  at::Tensor R = at::eye(n, at::kDouble);
  CayleySGD optimizer(plain_options(0.2, 10, LrSchedule::linear), 0);
  for (int64_t step = 0; step < 10; ++step) {
    const CayleyStepStats stats = optimizer.step(R, 1e-3 * at::randn({n, n}, at::kDouble));
    EXPECT_EQ(stats.step, step);
    EXPECT_NEAR(stats.lr, 0.2 * (1.0 - step / 10.0), 1e-15);
    EXPECT_LE(stats.step_size, stats.lr);
  }
  EXPECT_EQ(optimizer.steps_done(), 10);
}

TEST(CayleySGD, GradientNormsAndClipping) {
  const int64_t n = 12;
  at::Tensor R = special_orthogonal(n, 9);
  const at::Tensor G = at::randn({n, n}, make_generator(1, "g"), at::kDouble) * 10;
  const at::Tensor R0 = R.clone();
  CayleySGDOptions o = plain_options(0.01, 1, LrSchedule::constant);
  o.grad_clip = 1.0;
  CayleySGD optimizer(o, 0);
  const CayleyStepStats stats = optimizer.step(R, G);
  EXPECT_NEAR(stats.euclid_grad_norm, G.norm().item<double>(), 1e-9);  // before clipping
  const at::Tensor riemann = G.mm(R0.t()) - R0.mm(G.t());
  EXPECT_NEAR(stats.grad_norm, riemann.norm().item<double>(), 1e-9);
  // Clipped to norm 1, the step is the same as an unclipped one with G / ||G||.
  at::Tensor R2 = R0.clone();
  CayleySGD unclipped(plain_options(0.01, 1, LrSchedule::constant), 0);
  unclipped.step(R2, G / (G.norm() + 1e-6));
  EXPECT_LT((R - R2).abs().max().item<double>(), 1e-12);
}

TEST(CayleySGD, RowsOfNonSquareParametersStayOrthonormal) {
  const at::Tensor T = special_orthogonal(10, 11).narrow(0, 0, 4);
  at::Tensor R = special_orthogonal(10, 12).narrow(0, 0, 4).contiguous();
  CayleySGDOptions o = plain_options(1.0, 300, LrSchedule::constant);
  o.retraction = CayleyRetraction::solve;
  CayleySGD optimizer(o, 0);
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 300; ++step) {
    const at::Tensor G = R - T;
    last = G.pow(2).sum().item<double>();
    if (step == 0) first = last;
    optimizer.step(R, G);
  }
  EXPECT_LT(orthogonality_error(R), 1e-10);
  EXPECT_LT(last, 1e-4 * first);
}

// --- the loss: STE gradient against finite differences of its smooth part

TEST(CayleyLoss, SteGradientIsTheGradientOfTheSmoothPart) {
  // STE: Q(z) = z + (round-off at z0), the round-off held constant. So at R0 the STE
  // gradient of the loss is the exact gradient of S(R) = ||(XR + dx)(WR + dw)^T - Y||^2/||Y||^2,
  // with dx = Q(X R0) - X R0 and dw = Q(W R0) - W R0 frozen. Symmetric quantizers, so
  // nothing is clamped (the extreme of each row maps onto the grid's +-7).
  const int64_t n = 16, T = 40, C = 12;
  at::Generator g = make_generator(3, "ste");
  const at::Tensor X = at::randn({T, n}, g, at::kDouble);
  const at::Tensor W = at::randn({C, n}, g, at::kDouble);
  const at::Tensor Y = X.mm(W.t());
  QuantConfig quant;
  quant.act.symmetric = true;
  const at::Tensor R0 = special_orthogonal(n, 13);

  const at::Tensor R = R0.clone().requires_grad_(true);
  quantized_output_loss(X.mm(R), W.mm(R), Y, quant).backward();
  const at::Tensor G = R.grad();
  ASSERT_GT(G.norm().item<double>(), 0.0);

  const at::Tensor dx = fake_quant(X.mm(R0), quant.act) - X.mm(R0);
  const at::Tensor dw = fake_quant(W.mm(R0), quant.weight) - W.mm(R0);
  ASSERT_GT(dx.abs().max().item<double>(), 1e-3);  // rounding does something
  auto smooth_part = [&](const at::Tensor& r) {
    return ((X.mm(r) + dx).mm((W.mm(r) + dw).t()) - Y).pow(2).sum().item<double>() /
           Y.pow(2).sum().item<double>();
  };
  EXPECT_NEAR(smooth_part(R0), quantized_output_loss(X.mm(R0), W.mm(R0), Y, quant).item<double>(), 1e-12);
  for (int d = 0; d < 5; ++d) {
    const at::Tensor D = at::randn({n, n}, g, at::kDouble);
    const double h = 1e-6;
    const double fd = (smooth_part(R0 + h * D) - smooth_part(R0 - h * D)) / (2 * h);
    EXPECT_NEAR((G * D).sum().item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd))) << d;
  }
}

TEST(CayleyLoss, SmoothRoundingIsDifferentiableAndExactAtIntegers) {
  QuantSpec spec;
  spec.symmetric = false;
  spec.rounding = Rounding::smooth;
  at::Generator g = make_generator(4, "smooth");
  const at::Tensor x = at::randn({6, 20}, g, at::kDouble);
  const at::Tensor c = at::randn({6, 20}, g, at::kDouble);
  auto f = [&](const at::Tensor& v) { return (fake_quant_ste(v, spec) * c).sum(); };
  const at::Tensor xv = x.clone().requires_grad_(true);
  f(xv).backward();
  // Directional derivatives with the scale held at x's (moving only interior entries).
  const at::Tensor interior = (x > x.amin(1, true)) & (x < x.amax(1, true));
  for (int d = 0; d < 4; ++d) {
    const at::Tensor D = at::randn({6, 20}, g, at::kDouble) * interior;
    const double h = 1e-6;
    const double fd = (f(x + h * D).item<double>() - f(x - h * D).item<double>()) / (2 * h);
    EXPECT_NEAR((xv.grad() * D).sum().item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd))) << d;
  }
  // Same values as rounding where the scaled values are integers: symmetric, absmax 7 c.
  QuantSpec sym = spec;
  sym.symmetric = true;
  const at::Tensor on_grid = at::tensor({-7.0, -3.0, 0.0, 2.0, 5.0, 7.0}, at::kDouble).reshape({1, 6}) * 0.37;
  QuantSpec sym_rtn = sym;
  sym_rtn.rounding = Rounding::ste;
  EXPECT_LT((fake_quant_ste(on_grid, sym) - on_grid).abs().max().item<double>(), 1e-12);
  EXPECT_LT((fake_quant_ste(on_grid, sym_rtn) - on_grid).abs().max().item<double>(), 1e-12);
  // Half-way between grid points it keeps the value (slope 2 there), unlike rounding.
  const at::Tensor half = at::tensor({-7.0, 2.5, 7.0}, at::kDouble).reshape({1, 3});
  EXPECT_NEAR(fake_quant_ste(half, sym)[0][1].item<double>(), 2.5, 1e-12);
  QuantSpec rtn = spec;
  rtn.rounding = Rounding::ste;
  const at::Tensor b = fake_quant(x, rtn);
  // fake_quant ignores the smooth setting (evaluation always rounds).
  EXPECT_TRUE(at::allclose(fake_quant(x, spec), b));
  EXPECT_TRUE(at::allclose(fake_quant(x.to(at::kFloat), spec), fake_quant(x.to(at::kFloat), rtn)));
}

TEST(CayleyLoss, QuantRoundingKeyParses) {
  ConfigReader smooth(YAML::Load("{rounding: smooth, a_bits: 8}"), "test.yaml", "quant");
  const QuantConfig q = parse_quant_config(smooth);
  EXPECT_EQ(q.act.rounding, Rounding::smooth);
  EXPECT_EQ(q.weight.rounding, Rounding::smooth);
  EXPECT_EQ(q.act.bits, 8);
  ConfigReader plain(YAML::Load("{}"), "test.yaml", "quant");
  EXPECT_EQ(parse_quant_config(plain).act.rounding, Rounding::ste);
  ConfigReader bad(YAML::Load("{rounding: soft}"), "test.yaml", "quant");
  EXPECT_THROW(parse_quant_config(bad), Error);
}

// --- the method

class RecordingLog : public FitLog {
 public:
  void trace(const std::string& name, int64_t step, double value) override {
    traces[name].emplace_back(step, value);
  }
  void metric(const std::string& name, double value) override { metrics[name] = value; }
  void warn(const std::string&) override {}
  std::map<std::string, std::vector<std::pair<int64_t, double>>> traces;
  std::map<std::string, double> metrics;
};

Site small_site(int64_t n = 32) {
  SyntheticOptions o;
  o.tokens = 96;
  o.channels = n;
  o.out_features = 24;
  o.massive_count = 1;
  o.massive_magnitude = {300.0};
  o.normal_count = 2;
  return SyntheticDataset(o).load(2).front();
}

RotationPtr fit_cayley(const std::string& options_yaml, const Site& site, RecordingLog& log,
                       const QuantConfig& quant = QuantConfig()) {
  MethodRegistry methods("method");
  register_builtin_methods(methods);
  ConfigReader options(YAML::Load(options_yaml), "test.yaml", "methods.cayley_sgd");
  const auto method = methods.create("cayley_sgd", options);
  return method->fit(FitContext{site, quant, 3, log});
}

TEST(CayleySgdMethod, TracesHaveOneEntryPerStep) {
  const Site site = small_site();
  RecordingLog log;
  const RotationPtr r = fit_cayley("{steps: 7, lr: 1.0, schedule: cosine}", site, log);
  for (const char* name : {"loss", "grad_norm", "euclid_grad_norm", "lr", "orth_error", "step_size"}) {
    ASSERT_EQ(log.traces[name].size(), 7u) << name;
    for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(log.traces[name][i].first, i) << name;
  }
  EXPECT_DOUBLE_EQ(log.traces["lr"][0].second, 1.0);
  EXPECT_NEAR(log.traces["lr"][6].second, scheduled_lr(LrSchedule::cosine, 1.0, 6, 7), 1e-15);
  EXPECT_EQ(log.metrics["opt_steps"], 7);
  EXPECT_EQ(log.metrics["opt_schedule"], 2);
  EXPECT_LT(log.metrics["orth_error_before_fix"], 1e-3);
  EXPECT_LE(log.metrics["best_loss"], log.metrics["initial_loss"]);
  const at::Tensor R = r->dense();
  EXPECT_LT((R.t().mm(R) - at::eye(32, at::kDouble)).abs().max().item<double>(), 1e-12);
  // The initial loss is the loss of the random Hadamard start.
  EXPECT_NEAR(log.traces["loss"][0].second, log.metrics["initial_loss"], 0.0);
}

TEST(CayleySgdMethod, SmoothControlSettlesAndSteEqualsRounding) {
  const Site site = small_site();
  RecordingLog smooth;
  QuantConfig quant;
  quant.act.rounding = quant.weight.rounding = Rounding::smooth;
  fit_cayley("{steps: 60, precision: float64}", site, smooth, quant);
  EXPECT_LT(smooth.metrics["final_loss"], 0.2 * smooth.metrics["initial_loss"]);
  EXPECT_LT(smooth.metrics["grad_norm_last"], 0.5 * smooth.metrics["grad_norm_first"]);
  // With the STE the traced loss is the round-to-nearest loss itself.
  RecordingLog ste;
  fit_cayley("{steps: 3, init: identity, precision: float64}", site, ste);
  EXPECT_DOUBLE_EQ(ste.metrics["final_loss"], ste.metrics["final_quant_loss"]);
  const double rtn = quantized_output_loss(site.X.to(at::kDouble), site.W.to(at::kDouble),
                                           site.X.to(at::kDouble).mm(site.W.to(at::kDouble).t()),
                                           QuantConfig()).item<double>();
  EXPECT_NEAR(ste.traces["loss"][0].second, rtn, 1e-12);
  EXPECT_EQ(ste.traces.count("quant_loss"), 0u);
}

TEST(CayleySgdMethod, SmoothControlRecordsBothLosses) {
  const Site site = small_site();
  RecordingLog log;
  QuantConfig quant;
  quant.act.rounding = quant.weight.rounding = Rounding::smooth;
  fit_cayley("{steps: 5, batch_tokens: 32, keep: best}", site, log, quant);
  EXPECT_EQ(log.metrics["smooth_rounding"], 1);
  RecordingLog own;
  fit_cayley("{steps: 2, rounding: smooth}", site, own);
  EXPECT_EQ(own.metrics["smooth_rounding"], 1);
  EXPECT_NE(own.metrics["final_loss"], own.metrics["final_quant_loss"]);
  EXPECT_EQ(log.traces["loss"].size(), 5u);
  EXPECT_EQ(log.traces["quant_loss"].size(), 5u);  // the real-rounding loss along the way
  EXPECT_GT(log.metrics["final_quant_loss"], 0.0);
  EXPECT_NE(log.metrics["final_loss"], log.metrics["final_quant_loss"]);
}

TEST(CayleySgdMethod, KroneckerFactorsAreLearnedJointly) {
  const Site site = small_site(32);
  RecordingLog log;
  const RotationPtr r = fit_cayley("{steps: 10, structure: kronecker, kronecker: [4, 8]}", site, log);
  const auto factors = r->factors();
  ASSERT_TRUE(factors.count("R1") && factors.count("R2"));
  EXPECT_EQ(factors.at("R1").size(0), 4);
  EXPECT_EQ(factors.at("R2").size(0), 8);
  EXPECT_TRUE(at::allclose(at::kron(factors.at("R1").to(at::kDouble), factors.at("R2").to(at::kDouble)), r->dense()));
  EXPECT_EQ(log.traces["grad_norm"].size(), 10u);
  EXPECT_EQ(log.metrics["n1"], 4);
  // The learned loss is the one the rotation gives.
  const at::Tensor X = site.X.to(at::kDouble), W = site.W.to(at::kDouble);
  const double direct = quantized_output_loss(r->apply(site.X), r->fuse_into(site.W),
                                              site.X.mm(site.W.t()), QuantConfig()).item<double>();
  EXPECT_NEAR(direct, log.metrics["final_loss"], 1e-4 * log.metrics["final_loss"]);
}

TEST(CayleySgdMethod, BadOptionsAreConfigErrors) {
  const Site site = small_site();
  RecordingLog log;
  for (const char* yaml : {"{lr: -1}", "{schedule: step}", "{init: zeros}", "{kronecker: [4, 8]}",
                           "{structure: kronecker, kronecker: [3, 8]}", "{steps: 5, unknown_key: 1}",
                           "{structure: kronecker, kronecker: [4, 4, 2]}"}) {
    try {
      fit_cayley(yaml, site, log);
      ADD_FAILURE() << yaml;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config) << yaml << ": " << e.what();
    }
  }
}

}  // namespace
}  // namespace sqlab
