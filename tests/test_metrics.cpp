// Metrics on known inputs, histograms, and the site evaluation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/random.h"
#include "quant/histogram.h"
#include "quant/metrics.h"
#include "quant/site_eval.h"
#include "rotations/dense.h"

namespace sqlab {
namespace {

TEST(Metrics, KnownValues) {
  const at::Tensor ref = at::tensor({1.0, 1.0});
  const at::Tensor approx = at::tensor({1.1, 0.9});
  EXPECT_NEAR(relative_error(approx, ref), 0.1, 1e-12);
  EXPECT_NEAR(sqnr_db(approx, ref), 20.0, 1e-9);
  EXPECT_NEAR(mean_squared_error(approx, ref), 0.01, 1e-12);
  EXPECT_DOUBLE_EQ(abs_max(at::tensor({-3.0, 2.0})), 3.0);
  EXPECT_NEAR(kurtosis(at::tensor({1.0, -1.0, 1.0, -1.0})), 1.0, 1e-12);
  EXPECT_TRUE(std::isinf(sqnr_db(ref, ref)));
  EXPECT_EQ(relative_error(ref, ref), 0.0);
}

TEST(Metrics, KurtosisSeesOutliers) {
  at::manual_seed(0);
  const at::Tensor gaussian = at::randn({200000}, at::kDouble);
  EXPECT_NEAR(kurtosis(gaussian), 3.0, 0.1);
  at::Tensor spiky = gaussian.clone();
  spiky[0] = 1000.0;
  EXPECT_GT(kurtosis(spiky), 100.0);
}

TEST(Histograms, CountsEverythingOnSymmetricEdges) {
  const at::Tensor x = at::tensor({-2.0f, -1.0f, 0.5f, 2.0f, 0.0f});
  const Histogram h = make_histogram(x, 4);
  ASSERT_EQ(h.edges.size(), 5u);
  ASSERT_EQ(h.counts.size(), 4u);
  EXPECT_DOUBLE_EQ(h.edges.front(), -2.0);
  EXPECT_DOUBLE_EQ(h.edges.back(), 2.0);
  EXPECT_EQ(h.counts, (std::vector<double>{1, 1, 2, 1}));
  const Histogram zeros = make_histogram(at::zeros({3}), 2);
  EXPECT_DOUBLE_EQ(zeros.edges.back(), 1.0);
  EXPECT_DOUBLE_EQ(zeros.counts[0] + zeros.counts[1], 3.0);
}

Site random_site(int64_t t, int64_t n, int64_t c) {
  at::manual_seed(7);
  return Site{"s", at::randn({t, n}), at::randn({c, n}), {}};
}

TEST(SiteEvaluation, NoQuantizationNoError) {
  const Site site = random_site(32, 16, 8);
  QuantConfig q;
  q.weight.bits = 16;
  q.act.bits = 16;
  const SiteEvaluation e = evaluate_site(site, IdentityRotation(16), q, EvalOptions{8, 10.0});
  EXPECT_LT(e.metrics.at("rel_output_error"), 1e-6);
  EXPECT_LT(e.metrics.at("invariance_error"), 1e-7);
  EXPECT_EQ(e.act_before.counts.size(), 8u);
}

TEST(SiteEvaluation, RotationKeepsTheOutputAndSpreadsOutliers) {
  Site site = random_site(64, 32, 16);
  site.X.select(1, 3).mul_(50.0);  // one outlier channel
  DenseRotation rotation(random_orthogonal_matrix(32, make_generator(1, "test")));
  const SiteEvaluation plain = evaluate_site(site, IdentityRotation(32), QuantConfig{}, EvalOptions{0, 10.0});
  const SiteEvaluation rotated = evaluate_site(site, rotation, QuantConfig{}, EvalOptions{0, 10.0});
  EXPECT_LT(rotated.metrics.at("invariance_error"), 1e-5);
  EXPECT_LT(rotated.metrics.at("act_absmax"), plain.metrics.at("act_absmax"));
  EXPECT_LT(rotated.metrics.at("rel_output_error"), plain.metrics.at("rel_output_error"));
  EXPECT_DOUBLE_EQ(rotated.metrics.at("act_absmax_before"), plain.metrics.at("act_absmax"));
  // The error metric is what it says: recompute it by hand.
  const at::Tensor y = at::matmul(site.X, site.W.t());
  const at::Tensor yq = at::matmul(fake_quant(site.X, QuantConfig{}.act), fake_quant(site.W, QuantConfig{}.weight).t());
  EXPECT_NEAR(plain.metrics.at("rel_output_error"), ((yq - y).norm() / y.norm()).item<double>(), 1e-5);
}

TEST(SiteEvaluation, BadSitesAreNamed) {
  Site site = random_site(4, 8, 2);
  site.X[1][2] = std::nanf("");
  try {
    check_site(site);
    FAIL() << "NaN not detected";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("site s: X contains NaN"), std::string::npos) << e.what();
  }
  Site mismatched = random_site(4, 8, 2);
  mismatched.W = at::randn({2, 9});
  EXPECT_THROW(check_site(mismatched), std::exception);
}

// The one-pass check (float32 and float64, contiguous or not): a single NaN, +Inf or -Inf
// anywhere in a matrix larger than one parallel chunk, and the largest finite values pass.
TEST(SiteEvaluation, NonFiniteFoundAnywhere) {
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    Site site = random_site(1200, 1024, 3);  // X has 1.2 M entries: more than one 2^20 chunk
    site.X = site.X.to(dtype);
    site.W = site.W.to(dtype);
    site.X[0][0] = dtype == at::kFloat ? std::numeric_limits<float>::max() : std::numeric_limits<double>::max();
    site.X[1199][1023] = -site.X[0][0];
    EXPECT_NO_THROW(check_site(site));
    for (const double bad : {std::nan(""), HUGE_VAL, -HUGE_VAL}) {
      for (const int64_t flat : {int64_t{0}, int64_t{700000}, int64_t{1200 * 1024 - 1}}) {
        Site broken = site;
        broken.X = site.X.clone();
        broken.X.view({-1})[flat] = bad;
        EXPECT_THROW(check_site(broken), std::exception) << bad << " at " << flat;
        broken.X = broken.X.t().contiguous().t();  // not contiguous: the ATen path
        EXPECT_THROW(check_site(broken), std::exception) << bad << " at " << flat << " (strided)";
      }
    }
  }
}

TEST(Metrics, FusedSumsMatchFloat64) {
  const at::Tensor a = at::randn({1500, 1000}, make_generator(2, "a"), at::kFloat) * 1e3;
  const at::Tensor b = a + at::randn({1500, 1000}, make_generator(2, "b"), at::kFloat);
  const double exact = (a.to(at::kDouble) - b.to(at::kDouble)).pow(2).sum().item<double>() /
                       b.to(at::kDouble).pow(2).sum().item<double>();
  EXPECT_NEAR(relative_error(a, b), std::sqrt(exact), 1e-12 * std::sqrt(exact));
  EXPECT_NEAR(relative_error(a.t(), b.t()), std::sqrt(exact), 1e-12 * std::sqrt(exact));  // strided: ATen path
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

TEST(OutlierTokenSplit, FindsPlantedTokensAndRecombines) {
  at::manual_seed(5);
  at::Tensor x = at::randn({64, 32});
  x[3][7] = 400.0f;
  x[40][1] = -300.0f;
  const std::vector<int64_t> tokens = detect_outlier_tokens(x, 10.0);
  EXPECT_EQ(tokens, (std::vector<int64_t>{3, 40}));
  const at::Tensor w = at::randn({16, 32});
  const at::Tensor y = at::matmul(x, w.t());
  const at::Tensor yq = at::matmul(fake_quant(x, QuantConfig{}.act), fake_quant(w, QuantConfig{}.weight).t());
  std::map<std::string, double> m;
  outlier_token_split(yq, y, tokens, m);
  const double overall = relative_error(yq, y);
  const double share = m.at("outlier_token_energy_share");
  EXPECT_GT(share, 0.5);  // two huge tokens dominate the output energy here
  EXPECT_NEAR(overall * overall,
              share * std::pow(m.at("rel_output_error_outlier_tokens"), 2) +
                  (1 - share) * std::pow(m.at("rel_output_error_other_tokens"), 2),
              1e-9);
  EXPECT_EQ(m.at("outlier_tokens"), 2.0);
  // By hand for the outlier part: rows 3 and 40 only.
  const at::Tensor rows = at::tensor({3, 40}, at::kLong);
  EXPECT_NEAR(m.at("rel_output_error_outlier_tokens"),
              relative_error(yq.index_select(0, rows), y.index_select(0, rows)), 1e-9);
  std::map<std::string, double> none;
  outlier_token_split(yq, y, {}, none);
  EXPECT_NEAR(none.at("rel_output_error_other_tokens"), overall, 1e-9);
  EXPECT_EQ(none.at("outlier_token_energy_share"), 0.0);
}

TEST(OutlierTokenSplit, SiteEvaluationRecordsChannelsAndSplit) {
  at::manual_seed(6);
  Site site{"s", at::randn({32, 16}), at::randn({8, 16}), {0}};
  site.X[0][2] = 500.0f;
  const SiteEvaluation e = evaluate_site(site, IdentityRotation(16), QuantConfig{}, EvalOptions{0, 10.0});
  EXPECT_EQ(e.metrics.at("outlier_tokens"), 1.0);
  EXPECT_EQ(e.metrics.at("known_outlier_tokens"), 1.0);
  ASSERT_EQ(e.channel_absmax_before.size(), 16u);
  EXPECT_DOUBLE_EQ(e.channel_absmax_before[2], 500.0);
  EXPECT_EQ(e.channel_absmax_after, e.channel_absmax_before);  // identity
}

}  // namespace
}  // namespace sqlab
