// SingleQuant's pieces: Theorem 2 Givens angle, URT maps, ART detection/pairing/passes,
// and the full Kronecker rotation (orthogonality, invariance, factorizations, options).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "core/method.h"
#include "core/random.h"
#include "datasets/synthetic.h"
#include "methods/art_urt.h"
#include "methods/builtin.h"
#include "rotations/givens.h"

namespace sqlab {
namespace {

class RecordingLog : public FitLog {
 public:
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string& name, double value) override { metrics[name] = value; }
  void warn(const std::string& message) override { warnings.push_back(message); }
  std::map<std::string, double> metrics;
  std::vector<std::string> warnings;
};

MethodRegistry& registry() {
  static MethodRegistry r = [] {
    MethodRegistry methods("method");
    register_builtin_methods(methods);
    return methods;
  }();
  return r;
}

Site llama_like_site(int64_t n, int64_t tokens = 128, uint64_t seed = 7) {
  SyntheticOptions o;
  o.tokens = tokens;
  o.channels = n;
  o.out_features = 32;
  o.massive_count = 2;
  o.massive_magnitude = {1500.0, 800.0};
  o.normal_count = std::max<int64_t>(2, n / 128);
  return SyntheticDataset(o).load(seed).front();
}

RotationPtr fit(const std::string& method, const std::string& yaml, const Site& site,
                RecordingLog& log, uint64_t seed = 3) {
  ConfigReader options(yaml.empty() ? YAML::Node() : YAML::Load(yaml), "test.yaml",
                       "methods.sq");
  const auto m = registry().create(method, options);
  QuantConfig quant;
  return m->fit(FitContext{site, quant, seed, log});
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

double orthogonality_error(const at::Tensor& r) {
  return (r.t().matmul(r) - at::eye(r.size(0), at::kDouble)).abs().max().item<double>();
}

TEST(Theorem2, BalancesThePairOptimally) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int trial = 0; trial < 200; ++trial) {
    const double scale = std::pow(10.0, trial % 7 - 2);
    double v[2] = {normal(rng) * scale, normal(rng) * scale};
    if (trial % 10 == 0) v[0] *= 1000;  // one huge, one small: the MO case
    const double a = v[0], b = v[1];
    const double optimum = std::sqrt((a * a + b * b) / 2);
    apply_givens(v, theorem2_givens(0, 1, a, b));
    EXPECT_NEAR(std::abs(v[0]), optimum, 1e-12 * optimum);
    EXPECT_NEAR(std::abs(v[1]), optimum, 1e-12 * optimum);
    // No rotation or reflection on a fine grid does better.
    if (trial % 20 == 0) {
      for (int k = 0; k < 20000; ++k) {
        const double t = 2 * M_PI * k / 20000, c = std::cos(t), s = std::sin(t);
        const double rot = std::max(std::abs(a * c + b * s), std::abs(-a * s + b * c));
        const double ref = std::max(std::abs(a * c + b * s), std::abs(a * s - b * c));
        EXPECT_GE(rot, optimum * (1 - 1e-12));
        EXPECT_GE(ref, optimum * (1 - 1e-12));
      }
    }
  }
}

TEST(Theorem2, HandlesAPlusBZero) {
  for (const auto& [a, b] : std::vector<std::pair<double, double>>{{3, -3}, {-2, 2}, {1e-150, -1e-150}, {0, 0}}) {
    const double theta = theorem2_angle(a, b);
    ASSERT_TRUE(std::isfinite(theta));
    double v[2] = {a, b};
    apply_givens(v, givens_from_angle(0, 1, theta));
    const double optimum = std::sqrt((a * a + b * b) / 2);
    EXPECT_NEAR(std::abs(v[0]), optimum, 1e-12 * std::max(optimum, 1e-300));
    EXPECT_NEAR(std::abs(v[1]), optimum, 1e-12 * std::max(optimum, 1e-300));
  }
  EXPECT_NEAR(std::abs(theorem2_angle(3, -3)), M_PI / 2, 1e-15);
}

TEST(Givens, ProductMatchesSequentialApplication) {
  std::vector<Givens> rotations{givens_from_angle(0, 3, 0.3), givens_from_angle(2, 1, -1.1),
                                givens_from_angle(4, 0, 2.5)};
  const at::Tensor r = givens_product(5, rotations);
  EXPECT_LT(orthogonality_error(r), 1e-14);
  std::vector<double> v{1, -2, 3, 0.5, 7};
  const at::Tensor vr = at::tensor(v, at::kDouble).unsqueeze(0).matmul(r).squeeze(0);
  for (const Givens& g : rotations) apply_givens(v.data(), g);
  for (int k = 0; k < 5; ++k) EXPECT_NEAR(vr[k].item<double>(), v[k], 1e-14);
  const at::Tensor m = at::randn({3, 5}, at::kDouble);
  EXPECT_LT(rel(apply_givens_right(m, rotations), m.matmul(r)), 1e-14);
}

TEST(Urt, MapsTheStatisticOntoTheTargetForEveryOption) {
  for (int64_t m : {2, 7, 64, 172}) {
    at::Tensor pop = at::randn({300, m}, make_generator(m, "urt"), at::kDouble) * 2 +
                     at::linspace(-3, 5, m, at::kDouble);
    for (auto statistic : {UrtStatistic::mean, UrtStatistic::absmax, UrtStatistic::rms, UrtStatistic::mean_abs})
      for (auto target : {UrtTarget::uniform, UrtTarget::flat, UrtTarget::flat_positive})
        for (auto sweep : {GivensSweep::chain, GivensSweep::star}) {
          const UrtFactor u = build_urt_factor(pop, UrtOptions{statistic, target, sweep});
          EXPECT_EQ(u.givens, 2 * (m - 1));
          const at::Tensor v = at::tensor(u.statistic, at::kDouble).unsqueeze(0);
          const at::Tensor want = at::tensor(u.target, at::kDouble).unsqueeze(0);
          EXPECT_LT(rel(v.matmul(u.matrix), want), 1e-10) << m;
          EXPECT_LT(orthogonality_error(u.matrix), 1e-12);
          EXPECT_NEAR(want.norm().item<double>(), v.norm().item<double>(), 1e-10 * v.norm().item<double>());
        }
  }
  // The uniform target: ascending bin midpoints of U(-1, 1), scaled.
  const std::vector<double> u = urt_target({3, 4}, UrtTarget::uniform);
  EXPECT_NEAR(u[0], -5 / std::sqrt(2.0), 1e-12);
  EXPECT_NEAR(u[1], 5 / std::sqrt(2.0), 1e-12);
  const std::vector<double> flat = urt_target({-3, 0, 4}, UrtTarget::flat);
  EXPECT_LT(flat[0], 0);
  EXPECT_GT(flat[1], 0);
  // A mismatched norm is refused: no rotation exists.
  EXPECT_THROW(build_urt_map({1, 0}, {2, 0}, GivensSweep::chain), Error);
}

// Gaussian population with planted massive outliers (row, coordinate, value).
at::Tensor planted(int64_t m, const std::vector<std::tuple<int64_t, int64_t, double>>& outliers) {
  at::Tensor pop = at::randn({512, m}, make_generator(1, "art"), at::kDouble);
  for (const auto& [row, col, value] : outliers) pop[row][col] = value;
  return pop;
}

TEST(Art, PairsAPlantedOutlierAndBalancesIt) {
  for (auto complement : {ArtComplement::random, ArtComplement::identity}) {
    const at::Tensor pop = planted(32, {{5, 7, 1000.0}});
    ArtOptions options;
    options.complement = complement;
    const ArtPass pass = build_art_pass(pop, options, 11);
    EXPECT_EQ(pass.detected, 1);
    ASSERT_EQ(pass.pairs.size(), 1u);
    EXPECT_EQ(pass.pairs[0].first, 7);
    const at::Tensor v = pop[5];
    at::Tensor others = v.abs().clone();
    others[7] = 1e300;
    EXPECT_EQ(pass.pairs[0].second, others.argmin().item<int64_t>());
    EXPECT_LT(orthogonality_error(pass.matrix), 1e-12);
    const at::Tensor out = v.unsqueeze(0).matmul(pass.matrix).squeeze(0);
    const double a = v[7].item<double>(), b = v[pass.pairs[0].second].item<double>();
    const double optimum = std::sqrt((a * a + b * b) / 2);
    // x P moves the pair to the front; the Givens rotation balances it.
    EXPECT_NEAR(out[0].abs().item<double>(), optimum, 1e-10 * optimum);
    EXPECT_NEAR(out[1].abs().item<double>(), optimum, 1e-10 * optimum);
    EXPECT_LT(out.abs().max().item<double>(), 1000.0 / std::sqrt(2.0) + 1);
    if (complement == ArtComplement::identity) {
      // O = I: the other coordinates pass through in order.
      EXPECT_NEAR(out[2].item<double>(), v[0].item<double>(), 1e-15);
    }
  }
}

TEST(Art, MaxPairsPassesAndNothingDetected) {
  // Five outliers in distinct coordinates (largest first), two more in coordinate 3.
  const at::Tensor pop = planted(32, {{0, 3, 900}, {1, 9, 800}, {2, 12, -700}, {3, 20, 600},
                                      {4, 25, 500}, {9, 3, 400}, {10, 3, 300}});
  ArtOptions options;
  ArtPass pass = build_art_pass(pop, options, 1);
  EXPECT_EQ(pass.detected, 7);
  ASSERT_EQ(pass.pairs.size(), 5u);  // coordinate 3 is paired once
  const std::vector<int64_t> order{3, 9, 12, 20, 25};
  for (size_t k = 0; k < 5; ++k) EXPECT_EQ(pass.pairs[k].first, order[k]);
  options.max_pairs = 2;
  pass = build_art_pass(pop, options, 1);
  ASSERT_EQ(pass.pairs.size(), 2u);
  EXPECT_EQ(pass.pairs[1].first, 9);

  // Passes: re-detect on the rotated data; stop at the first pass that finds nothing.
  options.max_pairs = 0;
  options.passes = 10;
  const ArtFactor art = build_art_factor(planted(32, {{0, 3, 60}}), options, 1, "t");
  EXPECT_GE(art.passes_run, 1);
  EXPECT_LT(art.passes_run, 10);
  EXPECT_EQ(art.passes.back().detected, 0);
  EXPECT_EQ(static_cast<int64_t>(art.passes.size()), art.passes_run + 1);
  EXPECT_LT(orthogonality_error(art.matrix), 1e-12);
  // A huge outlier stays above the threshold after one halving: several passes run.
  options.passes = 3;
  const ArtFactor deep = build_art_factor(planted(32, {{0, 3, 1e5}}), options, 1, "t");
  EXPECT_EQ(deep.passes_run, 3);
  EXPECT_GE(deep.paired, 3);
  options.passes = 1;
  EXPECT_EQ(build_art_factor(planted(32, {{0, 3, 1e5}}), options, 1, "t").passes_run, 1);

  // Nothing detected: identity and a warning.
  const Site site = [] {
    SyntheticOptions o;
    o.tokens = 256;
    o.channels = 64;
    o.out_features = 16;
    o.bulk_dof = 0;  // Gaussian: no value reaches 10x the median channel max
    return SyntheticDataset(o).load(1).front();
  }();
  RecordingLog log;
  const RotationPtr r = fit("art", "", site, log);
  EXPECT_TRUE(at::allclose(r->dense(), at::eye(64, at::kDouble)));
  EXPECT_EQ(log.metrics.at("art_detected"), 0);
  EXPECT_EQ(log.metrics.at("art_passes_run"), 0);
  ASSERT_EQ(log.warnings.size(), 1u);
  EXPECT_NE(log.warnings[0].find("no massive outlier"), std::string::npos);
}

void expect_valid(const Rotation& r, const Site& site, double tol = 1e-10) {
  const int64_t n = site.X.size(1);
  ASSERT_EQ(r.size(), n);
  const at::Tensor x = site.X.to(at::kDouble), w = site.W.to(at::kDouble);
  const auto factors = r.factors();
  if (factors.count("R1")) {
    const at::Tensor r1 = factors.at("R1").to(at::kDouble), r2 = factors.at("R2").to(at::kDouble);
    EXPECT_EQ(r1.size(0) * r2.size(0), n);
    EXPECT_LT(orthogonality_error(r1), tol);
    EXPECT_LT(orthogonality_error(r2), tol);
  }
  if (n <= 1376) {
    const at::Tensor dense = r.dense();
    EXPECT_LT(orthogonality_error(dense), tol);
    EXPECT_LT(rel(r.apply(x), x.matmul(dense)), tol);
    if (factors.count("R1")) {
      const at::Tensor kron = at::kron(factors.at("R1").to(at::kDouble), factors.at("R2").to(at::kDouble));
      EXPECT_LT(rel(kron, dense), 1e-12);
    }
  }
  const at::Tensor y = x.matmul(w.t());
  EXPECT_LT(rel(r.apply(x).matmul(r.fuse_into(w).t()), y), tol);
  EXPECT_LT(rel(r.apply_inverse(r.apply(x)), x), tol);
}

TEST(SingleQuant, OrthogonalAndInvariantAtModelWidths) {
  const std::map<int64_t, std::pair<int64_t, int64_t>> expected{
      {64, {8, 8}}, {172, {43, 4}}, {288, {18, 16}}, {768, {24, 32}}, {1376, {43, 32}}, {4096, {64, 64}}};
  for (const auto& [n, split] : expected) {
    SCOPED_TRACE(n);
    const Site site = llama_like_site(n, n == 4096 ? 256 : 128);
    RecordingLog log;
    const RotationPtr r = fit("singlequant", "", site, log);
    expect_valid(*r, site);
    EXPECT_EQ(log.metrics.at("n1"), split.first);
    EXPECT_EQ(log.metrics.at("n2"), split.second);
    EXPECT_GE(log.metrics.at("art_detected"), 1);
    EXPECT_GE(log.metrics.at("art_paired"), 1);
    EXPECT_EQ(log.metrics.at("art_passes_run"), 1);
    EXPECT_EQ(log.metrics.at("urt_givens"), 2 * (split.first - 1) + 2 * (split.second - 1));
    EXPECT_TRUE(log.warnings.empty());
  }
}

TEST(SingleQuant, ExplicitKroneckerAndInvalidPairs) {
  const Site site = llama_like_site(64);
  for (const char* pair : {"[8, 8]", "[4, 16]", "[16, 4]", "[2, 32]"}) {
    RecordingLog log;
    const RotationPtr r = fit("singlequant", std::string("{kronecker: ") + pair + "}", site, log);
    expect_valid(*r, site);
    EXPECT_EQ(r->factors().at("R1").size(0), log.metrics.at("n1"));
  }
  auto config_error_of = [&](const std::string& yaml, const Site& at_site) -> std::string {
    RecordingLog log;
    try {
      fit("singlequant", yaml, at_site, log);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "no error for " << yaml;
    return "";
  };
  auto error_names = [&](const std::string& yaml, const std::string& key, const Site& at_site) {
    const std::string message = config_error_of(yaml, at_site);
    EXPECT_NE(message.find(key), std::string::npos) << yaml << ": " << message;
  };
  // 7 * 9 != 64 (found at fit time, naming the key); malformed values (found on reading).
  error_names("{kronecker: [7, 9]}", "methods.sq.kronecker", site);
  error_names("{kronecker: [8]}", "methods.sq.kronecker", site);
  error_names("{kronecker: [0, 64]}", "methods.sq.kronecker", site);
  error_names("{kronecker: banana}", "methods.sq.kronecker", site);
  // No Hadamard matrix of order 43: [4, 43] with H on n2 is refused (172 = 43 x 4 is fine).
  const Site s172 = llama_like_site(172);
  error_names("{kronecker: [4, 43]}", "methods.sq.kronecker", s172);
  error_names("{kronecker: [43, 4], hadamard_factor: both}", "order 43", s172);
  error_names("{hadamard_factor: both}", "methods.sq.kronecker", s172);  // auto finds none
  RecordingLog log;
  expect_valid(*fit("singlequant", "{kronecker: [4, 43], hadamard_factor: n1}", s172, log), s172);
  error_names("{passes: 0}", "methods.sq.passes", site);
  error_names("{hadamard_side: false, hadamard_factor: n1}", "hadamard_side", site);
  error_names("{components: [art, art]}", "components", site);
  error_names("{components: [hadamard]}", "components", site);
  error_names("{statistic: median}", "statistic", site);
  error_names("{art_axis: n2}", "art_axis", site);
  error_names("{no_such_option: 1}", "no_such_option", site);
}

TEST(SingleQuant, EveryOptionBuildsAValidRotation) {
  const Site site = llama_like_site(256);
  const std::vector<std::string> configs{
      "{components: []}",
      "{kronecker: auto}",
      "{components: [art]}",
      "{components: [urt]}",
      "{components: [art, urt], passes: 3, max_pairs: 1, outlier_threshold: 5}",
      "{art_complement: identity}",
      "{art_axis: dense}",
      "{statistic: absmax, target: flat, sweep: star}",
      "{statistic: rms, target: flat_positive}",
      "{statistic: mean_abs}",
      "{urt_placement: dense_after}",
      "{urt_placement: dense_after, art_axis: dense}",
      "{hadamard_factor: n1}",
      "{hadamard_factor: both}",
      "{hadamard_factor: none}",
      "{hadamard_side: false}",
      "{hadamard_side: true, hadamard_factor: both}",
      "{hadamard_signs: true}",
      "{factor_order: r2_r1}",
      "{factor_order: r2_r1, kronecker: [8, 32]}",
      "{composition: literal}",
      "{composition: literal, hadamard_factor: both, components: [art]}",
  };
  for (const std::string& yaml : configs) {
    SCOPED_TRACE(yaml);
    RecordingLog log;
    const RotationPtr r = fit("singlequant", yaml, site, log);
    expect_valid(*r, site);
    RecordingLog again;
    EXPECT_TRUE(at::equal(r->dense(), fit("singlequant", yaml, site, again)->dense()));
  }
}

TEST(SingleQuant, MatchesTheDefaultReading) {
  // R = (R_A R1_U) (x) (H R2_U): with components [art] and no Hadamard, R2 = I and
  // R1 = the ART of the n1 population; R1 of the literal composition is its transpose.
  const Site site = llama_like_site(64);
  RecordingLog log;
  const auto art_only = fit("singlequant", "{components: [art], hadamard_factor: none}", site, log)->factors();
  EXPECT_TRUE(at::allclose(art_only.at("R2"), at::eye(8, at::kDouble)));
  const at::Tensor pop = site.X.to(at::kDouble).reshape({-1, 8, 8}).transpose(1, 2).reshape({-1, 8});
  const ArtFactor art = build_art_factor(pop, ArtOptions{}, 3, "singlequant/" + site.name + "/art");
  EXPECT_TRUE(at::allclose(art_only.at("R1"), art.matrix));
  const auto literal =
      fit("singlequant", "{components: [art], hadamard_factor: none, composition: literal}", site, log)->factors();
  EXPECT_TRUE(at::allclose(literal.at("R1"), art.matrix.t()));
  // The default's n2 factor starts with the normalized Sylvester Hadamard.
  const auto h_only = fit("singlequant", "{components: []}", site, log)->factors();
  EXPECT_NEAR(h_only.at("R2").abs().min().item<double>(), 1 / std::sqrt(8.0), 1e-12);
  // ART then URT on n1: the n1 population's mean, after R1, is the uniform target.
  const auto full = fit("singlequant", "{hadamard_factor: none}", site, log)->factors();
  const at::Tensor v = pop.matmul(full.at("R1")).mean(0);
  const std::vector<double> u = urt_target(urt_statistic(pop.matmul(art.matrix), UrtStatistic::mean),
                                           UrtTarget::uniform);
  EXPECT_LT(rel(v, at::tensor(u, at::kDouble)), 1e-10);
}

}  // namespace
}  // namespace sqlab
