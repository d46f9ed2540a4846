// The paper's other baselines (issue #11, method-notes.md section 8): GPTQ against an
// unblocked column-by-column reference, SmoothQuant's scales by hand, DuQuant's factors
// and zigzag permutation, compose against its steps applied in sequence, and the
// experiment keys that reach them (per-entry quant, sweeps into steps).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

#include "core/config.h"
#include "core/experiment.h"
#include "core/method.h"
#include "core/quant_config.h"
#include "core/random.h"
#include "datasets/synthetic.h"
#include "methods/builtin.h"
#include "methods/duquant.h"
#include "quant/gptq.h"
#include "quant/weight_quant.h"
#include "rotations/block_rotation.h"
#include "rotations/dense.h"
#include "rotations/scaling.h"
#include "test_util.h"

namespace sqlab {
namespace {

using testing::TempDir;
using testing::write_text;

class NullLog : public FitLog {
 public:
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string&) override {}
};

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }
double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).norm() / b.to(at::kDouble).norm()).item<double>();
}

RotationPtr fit_yaml(const std::string& name, const std::string& options_yaml, const Site& site, uint64_t seed = 1) {
  ConfigReader options(YAML::Load(options_yaml), "test", "methods." + name);
  const auto method = builtin_method_registry().create(name, options);
  NullLog log;
  QuantConfig quant;
  return method->fit(FitContext{site, quant, seed, log});
}

Site llama_like_site(int64_t n, int64_t tokens, uint64_t seed) {
  SyntheticOptions o;
  o.tokens = tokens;
  o.channels = n;
  o.out_features = 48;
  o.massive_count = 2;
  o.massive_magnitude = {800.0, 400.0};
  o.normal_count = 6;
  return SyntheticDataset(o).load(seed).front();
}

// ---------------------------------------------------------------- GPTQ reference
// Written from method-notes section 8 without the blocking: quantize column i, push
// its error onto every later column at once.
struct RefParams {
  at::Tensor scale, zero;  // C
};

RefParams ref_params(const at::Tensor& cols /* C x k */, const QuantSpec& spec) {
  const double qmax = spec.symmetric ? (1 << (spec.bits - 1)) - 1 : (1 << spec.bits) - 1;
  at::Tensor lo = std::get<0>(cols.min(1)) * spec.clip, hi = std::get<0>(cols.max(1)) * spec.clip;
  RefParams p;
  if (spec.symmetric) {
    const at::Tensor m = at::maximum(lo.abs(), hi.abs());
    p.scale = at::where(m > 0, m / qmax, at::ones_like(m));
    p.zero = at::zeros_like(m);
  } else {
    lo = lo.clamp_max(0);
    hi = hi.clamp_min(0);
    p.scale = at::where(hi > lo, (hi - lo) / qmax, at::ones_like(hi));
    p.zero = at::round(-lo / p.scale);
  }
  return p;
}

at::Tensor ref_quant(const at::Tensor& w, const RefParams& p, const QuantSpec& spec) {
  const double qmin = spec.symmetric ? -(1 << (spec.bits - 1)) : 0;
  const double qmax = spec.symmetric ? (1 << (spec.bits - 1)) - 1 : (1 << spec.bits) - 1;
  return (at::clamp(at::round(w / p.scale) + p.zero, qmin, qmax) - p.zero) * p.scale;
}

at::Tensor reference_gptq(at::Tensor w, at::Tensor h, const QuantSpec& spec, double damp, bool act_order) {
  w = w.clone();
  h = h.clone();
  const int64_t n = w.size(1);
  RefParams params;
  if (spec.granularity == Granularity::per_row) params = ref_params(w, spec);
  if (spec.granularity == Granularity::per_tensor) params = ref_params(w.reshape({1, -1}).expand({w.size(0), -1}), spec);
  for (int64_t j = 0; j < n; ++j)
    if (h[j][j].item<double>() == 0) {
      h[j][j] = 1.0;
      w.select(1, j).zero_();
    }
  const at::Tensor original = w.clone();
  at::Tensor perm = at::arange(n, at::kLong);
  if (act_order) perm = std::get<1>(at::sort(h.diagonal(), true, 0, true));
  w = w.index_select(1, perm);
  h = h.index_select(0, perm).index_select(1, perm);
  h += at::eye(n, at::kDouble) * (damp * h.diagonal().mean().item<double>());
  const at::Tensor hinv = at::linalg_cholesky(at::linalg_inv(h)).t();  // upper: (L)^T
  at::Tensor q = at::zeros_like(w);
  for (int64_t i = 0; i < n; ++i) {
    if (spec.granularity == Granularity::per_group) {
      const int64_t g = spec.group_size;
      if (act_order) {
        const int64_t start = perm[i].item<int64_t>() / g * g;
        params = ref_params(original.slice(1, start, start + g), spec);
      } else if (i % g == 0) {
        params = ref_params(w.slice(1, i, i + g), spec);
      }
    }
    const at::Tensor col = w.select(1, i).clone();
    const at::Tensor qc = ref_quant(col, params, spec);
    q.select(1, i).copy_(qc);
    const at::Tensor err = (col - qc) / hinv[i][i];
    for (int64_t j = i + 1; j < n; ++j) w.select(1, j).sub_(err * hinv[i][j]);
  }
  return q.index_select(1, at::argsort(perm));
}

QuantSpec weight_spec(bool sym, Granularity g, int64_t group = 16, double clip = 1.0, int bits = 4) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = sym;
  s.granularity = g;
  s.group_size = group;
  s.clip = clip;
  return s;
}

struct GptqData {
  at::Tensor x, w;
};

GptqData gptq_data(int64_t tokens, int64_t n, int64_t c, uint64_t seed) {
  at::Generator g = make_generator(seed, "test_gptq");
  at::Tensor x = at::randn({tokens, n}, g, at::kDouble);
  // heavier channels and correlated columns: a Hessian far from diagonal
  x = x.matmul(at::eye(n, at::kDouble) + 0.3 * at::randn({n, n}, g, at::kDouble)) *
      at::exp(at::randn({n}, g, at::kDouble));
  const at::Tensor w = at::randn({c, n}, g, at::kDouble) / std::sqrt(static_cast<double>(n));
  return {x, w};
}

TEST(Gptq, BlockedEqualsUnblockedReference) {
  const GptqData d = gptq_data(160, 48, 20, 1);
  const at::Tensor h = gptq_hessian(d.x);
  EXPECT_LT(rel(h, 2.0 * d.x.t().matmul(d.x) / 160.0), 1e-12);
  struct Case {
    QuantSpec spec;
    bool act_order;
  };
  const std::vector<Case> cases = {
      {weight_spec(true, Granularity::per_row), false},
      {weight_spec(false, Granularity::per_row, 16, 0.9), false},
      {weight_spec(true, Granularity::per_tensor), false},
      {weight_spec(true, Granularity::per_group, 16), false},
      {weight_spec(false, Granularity::per_group, 12, 0.95, 3), false},
      {weight_spec(true, Granularity::per_row), true},
      {weight_spec(false, Granularity::per_group, 16), true},
  };
  for (const Case& c : cases) {
    const at::Tensor want = reference_gptq(d.w, h, c.spec, 0.01, c.act_order);
    for (int64_t block : {1, 5, 16, 48, 128}) {
      GptqOptions o;
      o.block_size = block;
      o.act_order = c.act_order;
      const at::Tensor got = gptq_quantize(d.w, h, c.spec, o);
      ASSERT_EQ(got.scalar_type(), at::kDouble);
      EXPECT_LT(max_abs(got - want), 1e-6) << c.spec.describe() << " act_order=" << c.act_order << " block=" << block;
    }
  }
}

TEST(Gptq, DiagonalHessianIsRtn) {
  // Uncorrelated unit-norm channels: Hinv is diagonal, no error moves, GPTQ = RTN.
  const GptqData d = gptq_data(64, 64, 16, 2);
  const at::Tensor x = at::eye(64, at::kDouble) * 3.0;
  for (const QuantSpec& spec : {weight_spec(true, Granularity::per_row), weight_spec(false, Granularity::per_group, 16)}) {
    QuantConfig q;
    q.weight = spec;
    q.w_quantizer = WeightQuantizer::gptq;
    EXPECT_LT(max_abs(quantize_weights(d.w, &x, q) - fake_quant(d.w, spec)), 1e-12) << spec.describe();
  }
}

double weight_only_error(const at::Tensor& x, const at::Tensor& w, const at::Tensor& wq) {
  return rel(x.matmul(wq.t()), x.matmul(w.t()));
}

TEST(Gptq, NeverWorseThanRtnOnRandomSites) {
  for (uint64_t seed = 0; seed < 8; ++seed) {
    const Site site = llama_like_site(64, 256, seed);
    // A rotated site too, as GPTQ runs after QuaRot/SpinQuant.
    const RotationPtr r = fit_yaml("hadamard", "{}", site, seed);
    for (const bool rotated : {false, true}) {
      const at::Tensor x = rotated ? r->apply(site.X) : site.X, w = rotated ? r->fuse_into(site.W) : site.W;
      for (const QuantSpec& spec : {weight_spec(true, Granularity::per_row), weight_spec(false, Granularity::per_group, 16),
                                    weight_spec(true, Granularity::per_row, 16, 1.0, 3)})
        for (const bool act_order : {false, true}) {
          QuantConfig q;
          q.weight = spec;
          q.w_quantizer = WeightQuantizer::gptq;
          q.gptq.act_order = act_order;
          const double e_gptq = weight_only_error(x, w, quantize_weights(w, &x, q));
          const double e_rtn = weight_only_error(x, w, fake_quant(w, spec));
          EXPECT_LE(e_gptq, e_rtn) << "seed " << seed << " rotated " << rotated << " " << spec.describe()
                                   << " act_order " << act_order;
        }
    }
  }
}

TEST(Gptq, DeadColumnsAndFloat32) {
  GptqData d = gptq_data(200, 32, 12, 3);
  d.x.select(1, 5).zero_();
  d.x.select(1, 17).zero_();
  const at::Tensor h = gptq_hessian(d.x);
  for (const bool act_order : {false, true}) {
    GptqOptions o;
    o.act_order = act_order;
    o.damp = 0.0;  // dead columns alone must keep the Hessian invertible
    const at::Tensor q = gptq_quantize(d.w, h, weight_spec(true, Granularity::per_row), o);
    EXPECT_TRUE(at::isfinite(q).all().item<bool>());
    EXPECT_EQ(max_abs(q.select(1, 5)), 0.0);
    EXPECT_EQ(max_abs(q.select(1, 17)), 0.0);
    EXPECT_LT(max_abs(q - reference_gptq(d.w, h, weight_spec(true, Granularity::per_row), 0.0, act_order)), 1e-6);
    // float32 in, float32 out, close to the float64 result
    const at::Tensor q32 = gptq_quantize(d.w.to(at::kFloat), h, weight_spec(true, Granularity::per_row), o);
    EXPECT_EQ(q32.scalar_type(), at::kFloat);
    EXPECT_LT(rel(d.x.matmul(q32.to(at::kDouble).t()), d.x.matmul(q.t())), 1e-2);
  }
  // Rank-deficient without damping: a clear error, not NaNs.
  GptqOptions o;
  o.damp = 0.0;
  const GptqData few = gptq_data(8, 32, 4, 4);
  EXPECT_THROW(gptq_quantize(few.w, gptq_hessian(few.x), weight_spec(true, Granularity::per_row), o), Error);
}

TEST(Gptq, QuantConfigKeys) {
  auto parse = [](const std::string& yaml) {
    ConfigReader r(YAML::Load(yaml), "test.yaml", "quant");
    return parse_quant_config(r);
  };
  const QuantConfig d = parse("{}");
  EXPECT_EQ(d.w_quantizer, WeightQuantizer::rtn);
  const QuantConfig g = parse("{w_quantizer: gptq, gptq: {damp: 0.1, block_size: 32, act_order: true}}");
  EXPECT_EQ(g.w_quantizer, WeightQuantizer::gptq);
  EXPECT_EQ(g.gptq.damp, 0.1);
  EXPECT_EQ(g.gptq.block_size, 32);
  EXPECT_TRUE(g.gptq.act_order);
  EXPECT_EQ(quant_settings(g).at("w_quantizer"), "gptq");
  EXPECT_EQ(quant_settings(g).at("gptq.act_order"), "true");
  EXPECT_THROW(parse("{w_quantizer: awq}"), Error);
  EXPECT_THROW(parse("{gptq: {damping: 0.1}}"), Error);
  EXPECT_THROW(parse("{gptq: {block_size: 0}}"), Error);
  // RTN ignores calibration data; GPTQ needs it.
  const GptqData data = gptq_data(32, 16, 4, 5);
  EXPECT_TRUE(at::equal(quantize_weights(data.w, nullptr, d), fake_quant(data.w, d.weight)));
  EXPECT_THROW(quantize_weights(data.w, nullptr, g), Error);
}

// ---------------------------------------------------------------- SmoothQuant
TEST(SmoothQuant, HandComputedScalesAndInvariance) {
  const at::Tensor x = at::tensor({1.0, -4.0, 0.0, 2.0, 0.5, 0.0}, at::kDouble).reshape({2, 3});
  const at::Tensor w = at::tensor({1.0, 0.25, 3.0, -4.0, 0.5, 1.0}, at::kDouble).reshape({2, 3});
  // max|X| = (2, 4, 0), max|W| = (4, 0.5, 3); alpha = 0.5: s = (sqrt(2/4), sqrt(4/0.5), dead -> 1)
  const at::Tensor s = smoothing_scales(x, w, 0.5);
  EXPECT_LT(max_abs(s - at::tensor({std::sqrt(0.5), std::sqrt(8.0), 1.0}, at::kDouble)), 1e-15);
  // alpha = 0.75: 2^0.75 / 4^0.25, 4^0.75 / 0.5^0.25
  const at::Tensor s75 = smoothing_scales(x, w, 0.75);
  EXPECT_NEAR(s75[0].item<double>(), std::pow(2.0, 0.75) / std::pow(4.0, 0.25), 1e-15);
  EXPECT_NEAR(s75[1].item<double>(), std::pow(4.0, 0.75) / std::pow(0.5, 0.25), 1e-15);

  const Site site{"s", x, w, {}};
  const RotationPtr t = fit_yaml("smoothquant", "{alpha: 0.5}", site);
  EXPECT_FALSE(t->orthogonal());
  EXPECT_LT(max_abs(t->dense() - at::diag(1.0 / s)), 1e-15);
  EXPECT_LT(max_abs(t->apply(x) - x / s), 1e-15);
  EXPECT_LT(max_abs(t->fuse_into(w) - w * s), 1e-15);
  // X W^T = (X T)(W T^-T)^T
  EXPECT_LT(rel(t->apply(x).matmul(t->fuse_into(w).t()), x.matmul(w.t())), 1e-15);
  const auto f = t->factors();
  ASSERT_TRUE(f.count("T") && f.count("T_w"));
  EXPECT_LT(max_abs(f.at("T_w") - at::diag(s)), 1e-15);
  // After smoothing the largest activation channel is tamed.
  const Site big = llama_like_site(64, 128, 3);
  const RotationPtr tb = fit_yaml("smoothquant", "{}", big);
  EXPECT_LT(max_abs(tb->apply(big.X)), max_abs(big.X));
  EXPECT_LT(rel(tb->apply(big.X).matmul(tb->fuse_into(big.W).t()), big.X.matmul(big.W.t())), 1e-6);
  ConfigReader bad(YAML::Load("{alpha: 1.5}"), "test", "methods.sq");
  EXPECT_THROW(builtin_method_registry().create("smoothquant", bad), Error);
}

// ---------------------------------------------------------------- DuQuant
// The parts of a ComposedRotation chain, first to last.
void flatten(const Rotation& r, std::vector<const Rotation*>& out) {
  if (const auto* c = dynamic_cast<const ComposedRotation*>(&r)) {
    flatten(c->first(), out);
    flatten(c->second(), out);
  } else {
    out.push_back(&r);
  }
}

double orthogonality_error(const at::Tensor& r) {
  return max_abs(r.t().matmul(r) - at::eye(r.size(0), at::kDouble));
}

TEST(DuQuant, FactorsAreOrthogonalAndStructured) {
  const Site site = llama_like_site(256, 256, 1);
  const RotationPtr r = fit_yaml("duquant", "{block_size: 32, greedy_steps: 8, smooth_alpha: 0}", site);
  EXPECT_TRUE(r->orthogonal());
  std::vector<const Rotation*> parts;
  flatten(*r, parts);
  ASSERT_EQ(parts.size(), 3u);  // R_1, P, R_2
  const auto* r1 = dynamic_cast<const BlockDiagonalRotation*>(parts[0]);
  const auto* p = dynamic_cast<const PermutationRotation*>(parts[1]);
  const auto* r2 = dynamic_cast<const BlockDiagonalRotation*>(parts[2]);
  ASSERT_TRUE(r1 && p && r2);
  EXPECT_EQ(r1->block_size(), 32);
  EXPECT_EQ(r1->block_count(), 8);
  for (const Rotation* part : parts) {
    EXPECT_LT(orthogonality_error(part->dense()), 1e-10) << part->describe();
    const at::Tensor X = site.X.to(at::kDouble);
    EXPECT_LT(rel(part->apply(X), X.matmul(part->dense())), 1e-12) << part->describe();
    EXPECT_LT(rel(part->apply_inverse(part->apply(X)), X), 1e-12) << part->describe();
  }
  EXPECT_LT(orthogonality_error(r->dense()), 1e-10);
  // Block structure: nothing outside the diagonal blocks.
  const at::Tensor mask = at::kron(at::eye(8, at::kDouble), at::ones({32, 32}, at::kDouble));
  EXPECT_EQ(max_abs(r1->dense() * (1 - mask)), 0.0);
  // Invariance, and the outliers are spread: max |x| goes down.
  const at::Tensor X = site.X.to(at::kDouble), W = site.W.to(at::kDouble);
  EXPECT_LT(rel(r->apply(X).matmul(r->fuse_into(W).t()), X.matmul(W.t())), 1e-10);
  EXPECT_LT(max_abs(r->apply(site.X)), 0.5 * max_abs(site.X));
}

TEST(DuQuant, WithSmoothingInvariantAndLowerMax) {
  const Site site = llama_like_site(128, 256, 2);
  const RotationPtr t = fit_yaml("duquant", "{block_size: 32, greedy_steps: 4}", site);
  EXPECT_FALSE(t->orthogonal());  // the smoothing step
  std::vector<const Rotation*> parts;
  flatten(*t, parts);
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_NE(dynamic_cast<const DiagonalScaling*>(parts[0]), nullptr);
  const at::Tensor X = site.X.to(at::kDouble), W = site.W.to(at::kDouble);
  EXPECT_LT(rel(t->apply(X).matmul(t->fuse_into(W).t()), X.matmul(W.t())), 1e-10);
  EXPECT_LT(max_abs(t->apply(site.X)), max_abs(site.X));
  // permutation: none leaves two block rotations (and the smoothing)
  parts.clear();
  const RotationPtr plain = fit_yaml("duquant", "{block_size: 32, greedy_steps: 4, permutation: none}", site);
  flatten(*plain, parts);
  EXPECT_EQ(parts.size(), 3u);
}

TEST(DuQuant, ZigzagSpreadsTheLargestChannels) {
  const int64_t blocks = 8, b = 6;
  at::Generator g = make_generator(7, "zigzag");
  const at::Tensor absmax = at::rand({blocks * b}, g, at::kDouble);
  const at::Tensor source = zigzag_permutation(absmax, b);
  ASSERT_EQ(std::get<0>(source.sort()).equal(at::arange(blocks * b, at::kLong)), true);
  std::vector<int64_t> block_of(blocks * b);
  for (int64_t i = 0; i < blocks * b; ++i) block_of[source[i].item<int64_t>()] = i / b;
  const at::Tensor ranked = std::get<1>(absmax.sort(0, true));
  // The K largest channels land in K different blocks, in order 0..K-1, the next K in
  // K-1..0 (zigzag), so every block holds one of the top K and one of the next K.
  std::set<int64_t> top;
  for (int64_t r = 0; r < blocks; ++r) {
    top.insert(block_of[ranked[r].item<int64_t>()]);
    EXPECT_EQ(block_of[ranked[r].item<int64_t>()], r);
    EXPECT_EQ(block_of[ranked[blocks + r].item<int64_t>()], blocks - 1 - r);
  }
  EXPECT_EQ(top.size(), static_cast<size_t>(blocks));
  EXPECT_THROW(zigzag_permutation(absmax, 5), Error);
}

// The block GEMMs on column slices equal x R and x R^T with R = diag(B_0, ..., B_3), in
// float64, in float32 on a batch x tokens x n input, and in bfloat16 (computed in float32).
TEST(DuQuant, BlockDiagonalRotationEqualsItsDenseMatrix) {
  at::Generator g = make_generator(5, "blocks");
  const at::Tensor blocks = std::get<0>(at::linalg_qr(at::randn({4, 24, 24}, g, at::kDouble)));
  const BlockDiagonalRotation r(blocks);
  const at::Tensor R = r.dense();
  EXPECT_LT(orthogonality_error(R), 1e-12);
  EXPECT_EQ(max_abs(R.slice(0, 0, 24).slice(1, 24, 96)), 0.0);  // block-diagonal
  const at::Tensor x = at::randn({3, 50, 96}, g, at::kDouble);
  const std::vector<std::pair<at::ScalarType, double>> cases = {
      {at::kDouble, 1e-12}, {at::kFloat, 1e-6}, {at::kBFloat16, 1e-2}};
  for (const auto& [dtype, tolerance] : cases) {
    const at::Tensor in = x.to(dtype);
    const at::Tensor exact = in.to(at::kDouble);
    const at::Tensor y = r.apply(in), back = r.apply_inverse(in);
    EXPECT_EQ(y.scalar_type(), dtype);
    EXPECT_EQ(y.sizes(), x.sizes());
    EXPECT_LT(rel(y.to(at::kDouble), exact.matmul(R)), tolerance) << c10::toString(dtype);
    EXPECT_LT(rel(back.to(at::kDouble), exact.matmul(R.t())), tolerance) << c10::toString(dtype);
  }
  EXPECT_EQ(r.apply(at::empty({0, 96})).size(0), 0);
}

TEST(DuQuant, GreedyBlockRotationNeverRaisesTheBlockMax) {
  const Site site = llama_like_site(64, 128, 4);
  const at::Tensor x = site.X.to(at::kDouble);
  const at::Tensor none = greedy_block_rotation(x, 16, 0, make_generator(1, "g"));
  EXPECT_EQ(max_abs(none - at::eye(16, at::kDouble).expand({4, 16, 16})), 0.0);
  const at::Tensor blocks = greedy_block_rotation(x, 16, 6, make_generator(1, "g"));
  const at::Tensor y = BlockDiagonalRotation(blocks).apply(x);
  for (int64_t k = 0; k < 4; ++k)
    EXPECT_LE(max_abs(y.slice(1, 16 * k, 16 * (k + 1))), max_abs(x.slice(1, 16 * k, 16 * (k + 1))) + 1e-9);
  for (int64_t b : {16, 12, 7}) {  // Hadamard orders and the Householder fallback
    const at::Tensor u = uniform_first_row_matrix(b);
    EXPECT_LT(orthogonality_error(u), 1e-12) << b;
    EXPECT_LT(max_abs(u[0].abs() - 1.0 / std::sqrt(static_cast<double>(b))), 1e-12) << b;
  }
}

// ---------------------------------------------------------------- compose
TEST(Compose, EqualsItsStepsInSequence) {
  const Site site = llama_like_site(64, 128, 5);
  const RotationPtr composed =
      fit_yaml("compose", "{steps: [{method: smoothquant, alpha: 0.6}, {method: hadamard}, {method: singlequant}]}", site, 9);
  // By hand: each step fitted on the site transformed by the ones before it.
  Site current = site;
  at::Tensor product = at::eye(64, at::kDouble);
  const std::vector<std::pair<std::string, std::string>> steps = {
      {"smoothquant", "{alpha: 0.6}"}, {"hadamard", "{}"}, {"singlequant", "{}"}};
  for (const auto& [name, opts] : steps) {
    const RotationPtr part = fit_yaml(name, opts, current, 9);
    current.X = part->apply(current.X);
    current.W = part->fuse_into(current.W);
    product = product.matmul(part->dense());
  }
  EXPECT_FALSE(composed->orthogonal());
  EXPECT_LT(max_abs(composed->dense() - product), 1e-9);
  EXPECT_LT(rel(composed->apply(site.X), current.X), 1e-6);
  EXPECT_LT(rel(composed->fuse_into(site.W), current.W), 1e-6);
  const at::Tensor X = site.X.to(at::kDouble), W = site.W.to(at::kDouble);
  EXPECT_LT(rel(composed->apply(X).matmul(composed->fuse_into(W).t()), X.matmul(W.t())), 1e-10);
  EXPECT_LT(rel(composed->apply_inverse(composed->apply(X)), X), 1e-10);

  // One step is that method alone; all-orthogonal steps give an orthogonal result.
  EXPECT_TRUE(at::equal(fit_yaml("compose", "{steps: [{method: hadamard}]}", site, 9)->dense(),
                        fit_yaml("hadamard", "{}", site, 9)->dense()));
  const RotationPtr orth = fit_yaml("compose", "{steps: [{method: hadamard}, {method: duquant, smooth_alpha: 0, block_size: 16}]}", site);
  EXPECT_TRUE(orth->orthogonal());
  EXPECT_LT(orthogonality_error(orth->dense()), 1e-10);
  EXPECT_TRUE(fit_yaml("compose", "{steps: []}", site)->dense().equal(at::eye(64, at::kDouble)));
}

TEST(Compose, StepErrorsNameTheStep) {
  auto error_of = [](const std::string& yaml) {
    try {
      ConfigReader options(YAML::Load(yaml), "exp.yaml", "methods.c");
      builtin_method_registry().create("compose", options);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("{steps: [{method: hadamard}, {method: smoothquant, alpah: 1}]}").find("methods.c.steps.1.alpah"),
            std::string::npos);
  EXPECT_NE(error_of("{steps: [{method: nope}]}").find("unknown method 'nope'"), std::string::npos);
  EXPECT_NE(error_of("{steps: {method: hadamard}}").find("methods.c.steps"), std::string::npos);
  EXPECT_NE(error_of("{steps: [hadamard]}").find("must be a mapping"), std::string::npos);
}

// ---------------------------------------------------------------- experiment keys
TEST(Compose, SweepKeysReachIntoStepsAndEntriesCarryQuant) {
  TempDir dir;
  const std::string file = write_text(dir.file("exp.yaml"), R"(
name: baselines
data: {source: synthetic, tokens: 64, channels: 64}
quant: {w_bits: 4, gptq: {damp: 0.05}}
methods:
  - {label: had, method: hadamard}
  - {label: had+gptq, method: hadamard, quant: {w_quantizer: gptq, gptq: {act_order: true}}}
  - label: c
    method: compose
    steps: [{method: hadamard}, {method: singlequant, outlier_threshold: 10}]
sweep:
  grid: {methods.c.steps.1.outlier_threshold: [5, 20]}
)");
  const Experiment ex = load_experiment(file, {});
  std::map<std::string, std::vector<YAML::Node>> by_label;
  for (const RunSpec& run : ex.runs) by_label[run.label].push_back(run.config);
  ASSERT_EQ(by_label["c"].size(), 2u);
  EXPECT_EQ(by_label["c"][0]["method"]["steps"][1]["outlier_threshold"].as<int>(), 5);
  EXPECT_EQ(by_label["c"][1]["method"]["steps"][1]["outlier_threshold"].as<int>(), 20);
  ASSERT_EQ(by_label["had"].size(), 1u);  // the sweep does not touch the other labels
  ASSERT_EQ(by_label["had+gptq"].size(), 1u);
  const YAML::Node gq = by_label["had+gptq"][0];
  EXPECT_FALSE(gq["method"]["quant"]);  // merged into the run's quant, not a method option
  EXPECT_EQ(gq["quant"]["w_quantizer"].as<std::string>(), "gptq");
  EXPECT_EQ(gq["quant"]["gptq"]["damp"].as<double>(), 0.05);  // deep merge keeps the global keys
  EXPECT_TRUE(gq["quant"]["gptq"]["act_order"].as<bool>());
  EXPECT_FALSE(by_label["had"][0]["quant"]["w_quantizer"]);
  // --set reaches a step by index too
  const Experiment set = load_experiment(file, {"methods.c.steps.0.random_signs=false"});
  for (const RunSpec& run : set.runs)
    if (run.label == "c") {
      EXPECT_FALSE(run.config["method"]["steps"][0]["random_signs"].as<bool>());
    }
}

}  // namespace
}  // namespace sqlab
