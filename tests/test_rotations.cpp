// Structured rotations: Kronecker products (rotations/kronecker.h) and fast normalized Hadamard
// transforms (rotations/hadamard.h), each against its dense matrix; the `hadamard` method.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/method.h"
#include "core/random.h"
#include "rotations/hadamard.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/kronecker.h"

namespace sqlab {

void register_hadamard(MethodRegistry& registry);

namespace {

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  return ((g - w).norm() / w.norm()).item<double>();
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

at::Tensor orthogonal(int64_t n, uint64_t seed) {
  return random_orthogonal_matrix(n, make_generator(seed, "test/orthogonal"));
}

at::Tensor gaussian(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype = at::kDouble) {
  return at::randn(shape, make_generator(seed, "test/gaussian"), dtype);
}

bool has_hadamard(int64_t n) {
  int64_t m = 0, p = 0;
  return hadamard_split(n, &m, &p);
}

// ---------------------------------------------------------------------------------------------
// Kronecker

TEST(KroneckerRotation, ApplyMatchesDenseInvertsAndKeepsInvariance) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {2, 3}, {4, 4}, {43, 4}, {4, 43}, {8, 16}, {12, 20}, {32, 32}, {1, 5}, {5, 1},
      {3, 300}, {300, 2}};  // the last two: factors above 256 take the BLAS path
  uint64_t seed = 0;
  for (const auto& [n1, n2] : shapes) {
    SCOPED_TRACE(std::to_string(n1) + " x " + std::to_string(n2));
    const int64_t n = n1 * n2;
    const at::Tensor r1 = orthogonal(n1, ++seed), r2 = orthogonal(n2, ++seed);
    const KroneckerRotation r(r1, r2);
    ASSERT_EQ(r.size(), n);
    ASSERT_EQ(r.n1(), n1);
    ASSERT_EQ(r.n2(), n2);
    const at::Tensor R = r.dense();
    ASSERT_EQ(R.scalar_type(), at::kDouble);
    EXPECT_LT(max_abs(R.matmul(R.t()) - at::eye(n, at::kDouble)), 1e-10);

    // Enough tokens for several chunks (and a partial last one) at the larger widths.
    const at::Tensor X = gaussian({300, n}, ++seed);
    const at::Tensor W = gaussian({24, n}, ++seed);
    const at::Tensor xr = r.apply(X);
    EXPECT_LT(relative_error(xr, X.matmul(R)), 1e-10);
    EXPECT_LT(relative_error(r.apply_inverse(X), X.matmul(R.t())), 1e-10);
    EXPECT_LT(relative_error(r.apply_inverse(xr), X), 1e-10);
    const at::Tensor y = X.matmul(W.t());
    EXPECT_LT(relative_error(xr.matmul(r.fuse_into(W).t()), y), 1e-10);

    // float32 keeps its dtype; leading dimensions are kept.
    const at::Tensor x32 = X.to(at::kFloat).view({3, 100, n});
    const at::Tensor xr32 = r.apply(x32);
    EXPECT_EQ(xr32.scalar_type(), at::kFloat);
    EXPECT_EQ(xr32.sizes(), x32.sizes());
    EXPECT_LT(relative_error(xr32.view({300, n}), X.matmul(R)), 1e-5);
    // A single vector and an empty batch.
    EXPECT_LT(relative_error(r.apply(X[7]), X[7].matmul(R)), 1e-10);
    EXPECT_EQ(r.apply(at::zeros({0, n}, at::kDouble)).size(0), 0);

    const auto factors = r.factors();
    ASSERT_EQ(factors.size(), 2u);
    EXPECT_TRUE(at::equal(at::kron(factors.at("R1"), factors.at("R2")), R));
  }
}

// Runs `body` once per SIMD level this CPU supports, restoring the default afterwards.
class EachSimdLevel {
 public:
  template <class F>
  static void run(F body) {
    const SimdLevel saved = simd_level();
    for (SimdLevel level : {SimdLevel::generic, SimdLevel::avx2, SimdLevel::avx512}) {
      if (!simd_level_supported(level)) continue;
      SCOPED_TRACE(simd_level_name(level));
      set_simd_level(level);
      try {
        body(level);
      } catch (...) {
        set_simd_level(saved);
        throw;
      }
    }
    set_simd_level(saved);
  }
};

TEST(KroneckerRotation, EverySimdLevelAgrees) {
  for (const auto& [n1, n2] : std::vector<std::pair<int64_t, int64_t>>{{43, 4}, {12, 20}, {64, 64}}) {
    SCOPED_TRACE(std::to_string(n1) + " x " + std::to_string(n2));
    const KroneckerRotation r(orthogonal(n1, 1), orthogonal(n2, 2));
    const at::Tensor X = gaussian({50, n1 * n2}, 3);
    const at::Tensor want = X.matmul(r.dense());
    EachSimdLevel::run([&](SimdLevel) {
      EXPECT_LT(relative_error(r.apply(X), want), 1e-12);
      EXPECT_LT(relative_error(r.apply(X.to(at::kFloat)), want), 1e-5);
      EXPECT_LT(relative_error(r.apply_inverse(r.apply(X)), X), 1e-12);
    });
  }
}

TEST(KroneckerRotation, RejectsBadFactorsAndInputs) {
  EXPECT_THROW(KroneckerRotation(at::zeros({2, 3}), at::eye(2)), Error);
  EXPECT_THROW(KroneckerRotation(at::eye(2), at::zeros({4})), Error);
  const KroneckerRotation r(at::eye(2), at::eye(3));
  EXPECT_THROW(r.apply(at::zeros({4, 5})), Error);
  EXPECT_THROW(r.apply(at::zeros({4, 6}, at::kInt)), Error);
  // Other floating dtypes go through float32 and come back in their own dtype.
  const at::Tensor h = at::randn({4, 6}).to(at::kBFloat16);
  EXPECT_EQ(r.apply(h).scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(r.apply(h), h));
}

TEST(KroneckerFactorization, AllPairsAndBalancedPicks) {
  const std::vector<std::pair<int64_t, int64_t>> expected = {
      {2, 2048}, {4, 1024}, {8, 512}, {16, 256}, {32, 128}, {64, 64},
      {128, 32}, {256, 16}, {512, 8}, {1024, 4}, {2048, 2}};
  EXPECT_EQ(kronecker_factorizations(4096), expected);
  EXPECT_TRUE(kronecker_factorizations(13).empty());
  EXPECT_TRUE(kronecker_factorizations(3).empty());
  EXPECT_EQ(kronecker_factorizations(6), (std::vector<std::pair<int64_t, int64_t>>{{2, 3}, {3, 2}}));
  for (int64_t n : {12, 100, 172, 1376, 5120, 11008})
    for (const auto& [n1, n2] : kronecker_factorizations(n)) {
      EXPECT_EQ(n1 * n2, n);
      EXPECT_GT(n1, 1);
      EXPECT_GT(n2, 1);
    }

  using Pair = std::pair<int64_t, int64_t>;
  EXPECT_EQ(balanced_factorization(1024), Pair(32, 32));
  EXPECT_EQ(balanced_factorization(4096), Pair(64, 64));
  EXPECT_EQ(balanced_factorization(2048), Pair(32, 64));
  EXPECT_EQ(balanced_factorization(11008), Pair(86, 128));
  const auto n2_hadamard = [](int64_t, int64_t n2) { return has_hadamard(n2); };
  EXPECT_EQ(balanced_factorization(172, n2_hadamard), Pair(43, 4));
  EXPECT_EQ(balanced_factorization(1376, n2_hadamard), Pair(43, 32));
  EXPECT_EQ(balanced_factorization(4096, n2_hadamard), Pair(64, 64));
  for (const auto& [n, predicate] :
       std::vector<std::pair<int64_t, std::function<bool(int64_t, int64_t)>>>{
           {13, {}}, {129, n2_hadamard}}) {
    try {
      balanced_factorization(n, predicate);
      ADD_FAILURE() << "no error for " << n;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("n = " + std::to_string(n)), std::string::npos)
          << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hadamard

// x R for R = diag(signs) (S_p (x) H_m) / sqrt(n), through the Kronecker class (dense factors,
// two GEMMs): independent of the Walsh-Hadamard kernel and never materializes n x n. Uses
// S_p = S_p1 (x) S_p2 (Sylvester matrices), p1 ~ sqrt(p), so R = (S_p1 / sqrt(p1)) (x)
// ((S_p2 (x) H_m) / sqrt(p2 m)).
at::Tensor kronecker_reference(const HadamardRotation& h, const at::Tensor& x) {
  const int64_t m = h.base_order(), p = h.pow2_order();
  int64_t p1 = 1;
  while (p1 * p1 < p) p1 *= 2;
  const int64_t p2 = p / p1;
  const at::Tensor r1 = sylvester_matrix(p1) / std::sqrt(static_cast<double>(p1));
  const at::Tensor r2 = hadamard_matrix(p2 * m);  // (S_p2 (x) H_m) / sqrt(p2 m)
  const at::Tensor xs = h.has_signs() ? x * h.signs() : x;
  return KroneckerRotation(r1, r2).apply(xs);
}

// Rows of the n x n identity: all of them, or the first and the last `half` ones.
at::Tensor unit_rows(int64_t n, int64_t half) {
  if (2 * half >= n) return at::eye(n, at::kDouble);
  at::Tensor rows = at::zeros({2 * half, n}, at::kDouble);
  for (int64_t i = 0; i < half; ++i) {
    rows[i][i] = 1.0;
    rows[half + i][n - half + i] = 1.0;
  }
  return rows;
}

TEST(HadamardRotation, DenseIsNormalizedOrthogonalAndMatchesFastApply) {
  // Small orders exercise the scalar paths (n below one SIMD register, p = 1 or 2).
  const std::vector<int64_t> widths = {1, 2, 4, 8, 16, 32, 12, 24, 64, 172, 288, 768, 1376, 4096, 5120};
  for (int64_t n : widths) {
    SCOPED_TRACE("n = " + std::to_string(n));
    for (bool signed_ : {false, true}) {
      const at::Tensor signs = signed_ ? random_signs(n, make_generator(n, "test/signs")) : at::Tensor();
      const HadamardRotation h(n, signs);
      ASSERT_EQ(h.size(), n);
      ASSERT_EQ(h.base_order() * h.pow2_order(), n);
      const at::Tensor R = h.dense();
      ASSERT_EQ(R.scalar_type(), at::kDouble);
      ASSERT_EQ(R.sizes(), (std::vector<int64_t>{n, n}));
      EXPECT_LT(max_abs(R.abs() - 1.0 / std::sqrt(static_cast<double>(n))), 1e-15);
      if (!signed_) {
        EXPECT_TRUE(at::equal(R, hadamard_matrix(n)));
      }
      // R R^T = I and apply(I) = R exactly (the same products of +-1 and 1/sqrt(n)); above
      // n = 768 on 64 of the rows (full n^3 float64 products would dominate the suite), and
      // R R^T once per width (diag(s) H keeps H's orthogonality; see RandomSigns below).
      const int64_t half = n <= 768 ? n : 32;
      const at::Tensor picked = unit_rows(n, half);
      const at::Tensor R_rows = R.index_select(0, picked.argmax(1));
      if (!signed_) {
        EXPECT_LT(max_abs(R_rows.matmul(R.t()) - picked), 1e-10);
      }
      EXPECT_LT(max_abs(h.apply(picked) - R_rows), 1e-15);
      const at::Tensor X = gaussian({9, n}, static_cast<uint64_t>(n));
      EXPECT_LT(relative_error(h.apply(X), X.matmul(R)), 1e-10);
      EXPECT_LT(relative_error(h.apply_inverse(X), X.matmul(R.t())), 1e-10);
      EXPECT_LT(relative_error(h.apply_inverse(h.apply(X)), X), 1e-10);
      const at::Tensor x32 = X.to(at::kFloat).view({9, 1, n});
      const at::Tensor y32 = h.apply(x32);
      EXPECT_EQ(y32.scalar_type(), at::kFloat);
      EXPECT_EQ(y32.sizes(), x32.sizes());
      EXPECT_LT(relative_error(y32.view({9, n}), X.matmul(R)), 1e-5);
      EXPECT_LT(relative_error(h.apply_inverse(x32).view({9, n}), X.matmul(R.t())), 1e-5);
      const auto factors = h.factors();
      ASSERT_EQ(factors.count("R"), 1u);
      EXPECT_TRUE(at::equal(factors.at("R"), R));
    }
  }
}

TEST(HadamardRotation, LargeWidthsMatchTheKroneckerStructure) {
  for (int64_t n : {11008, 13824, 14336, 28672, 16384}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const HadamardRotation h(n, random_signs(n, make_generator(n, "test/signs")));
    const at::Tensor X = gaussian({3, n}, static_cast<uint64_t>(n));
    const at::Tensor want = kronecker_reference(h, X);
    EXPECT_LT(relative_error(h.apply(X), want), 1e-10);
    EXPECT_LT(relative_error(h.apply(X.to(at::kFloat)), want), 1e-5);
    EXPECT_LT(relative_error(h.apply_inverse(h.apply(X)), X), 1e-10);
    EXPECT_LT(relative_error(h.apply_inverse(h.apply(X.to(at::kFloat))), X), 1e-5);
    // Norm preserved, entries of a few rows of R are +-1/sqrt(n).
    at::Tensor units = at::zeros({2, n}, at::kDouble);
    units[0][n / 3] = 1.0;
    units[1][n - 1] = 1.0;
    const at::Tensor rows = h.apply(units);
    EXPECT_LT(max_abs(rows.abs() - 1.0 / std::sqrt(static_cast<double>(n))), 1e-15);
    const auto factors = h.factors();
    ASSERT_EQ(factors.count("R"), 0u);
    ASSERT_EQ(factors.at("signs").sizes(), (std::vector<int64_t>{1, n}));
    EXPECT_EQ(factors.at("H_base").size(0), h.base_order());
    EXPECT_TRUE(at::equal(factors.at("signs").view({n}), h.signs()));
  }
}

TEST(HadamardRotation, EverySimdLevelGivesBitwiseTheSameResult) {
  for (int64_t n : {8, 16, 64, 172, 768, 4096, 5120, 16384}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const HadamardRotation h(n, random_signs(n, make_generator(n, "test/signs")));
    const at::Tensor X = gaussian({6, n}, static_cast<uint64_t>(n));
    const at::Tensor X32 = X.to(at::kFloat);
    const at::Tensor want = h.apply(X), want32 = h.apply(X32), back32 = h.apply_inverse(X32);
    EachSimdLevel::run([&](SimdLevel) {
      EXPECT_TRUE(at::equal(h.apply(X), want));
      EXPECT_TRUE(at::equal(h.apply(X32), want32));
      EXPECT_TRUE(at::equal(h.apply_inverse(X32), back32));
    });
  }
  if (!simd_level_supported(SimdLevel::avx512)) {
    EXPECT_THROW(set_simd_level(SimdLevel::avx512), Error);
  }
}

TEST(HadamardRotation, RandomSignsAreSeededAndKeepOrthogonality) {
  const int64_t n = 768;
  const at::Tensor a = random_signs(n, make_generator(1, "hadamard/site"));
  const at::Tensor b = random_signs(n, make_generator(1, "hadamard/site"));
  const at::Tensor c = random_signs(n, make_generator(2, "hadamard/site"));
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, c));
  EXPECT_TRUE(a.abs().eq(1.0).all().item<bool>());
  EXPECT_GT(a.eq(-1.0).sum().item<int64_t>(), n / 4);  // both signs occur
  EXPECT_GT(a.eq(1.0).sum().item<int64_t>(), n / 4);
  const at::Tensor ra = HadamardRotation(n, a).dense(), rc = HadamardRotation(n, c).dense();
  EXPECT_FALSE(at::allclose(ra, hadamard_matrix(n)));
  EXPECT_FALSE(at::allclose(ra, rc));
  EXPECT_LT(max_abs(ra.matmul(ra.t()) - at::eye(n, at::kDouble)), 1e-10);
  EXPECT_TRUE(at::equal(ra, hadamard_matrix(n) * a.unsqueeze(1)));
  EXPECT_THROW(HadamardRotation(n, a.narrow(0, 0, n - 1)), Error);
  EXPECT_THROW(HadamardRotation(n, a * 0.5), Error);
}

TEST(HadamardRotation, UnsupportedWidthsThrowWithTheSupportedOrders) {
  for (int64_t n : {236, 944, 0, 59 * 1024}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    ASSERT_FALSE(has_hadamard(n));
    for (int which = 0; which < 2; ++which) {
      try {
        if (which == 0)
          hadamard_matrix(n);
        else
          HadamardRotation{n};
        ADD_FAILURE() << "no error";
      } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_EQ(e.kind(), ErrorKind::config);
        EXPECT_NE(message.find(std::to_string(n)), std::string::npos) << message;
        EXPECT_NE(message.find("sqlab list hadamard"), std::string::npos)
            << message;
      }
    }
  }
  const HadamardRotation h(64);
  EXPECT_THROW(h.apply(at::zeros({2, 32})), Error);
  EXPECT_THROW(h.apply(at::zeros({2, 64}, at::kLong)), Error);
  const at::Tensor x = at::randn({5, 64});
  EXPECT_LT(relative_error(h.apply(x.to(at::kBFloat16)), h.apply(x)), 1e-2);
  EXPECT_EQ(h.apply(x.to(at::kHalf)).scalar_type(), at::kHalf);
  // Non-contiguous input.
  const at::Tensor wide = at::randn({64, 10});
  EXPECT_LT(relative_error(h.apply(wide.t()), h.apply(wide.t().contiguous())), 1e-12);
}

class NullLog : public FitLog {
 public:
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string&) override {}
};

TEST(HadamardMethod, OptionsSignsAndSeeds) {
  MethodRegistry registry("method");
  register_hadamard(registry);
  const int64_t n = 288;
  Site site;
  site.name = "layer0.qkv";
  site.X = gaussian({16, n}, 1, at::kFloat);
  site.W = gaussian({8, n}, 2, at::kFloat);
  NullLog log;
  QuantConfig quant;
  auto fit = [&](const std::string& yaml, uint64_t seed) {
    ConfigReader options(YAML::Load(yaml), "test", "methods.hadamard");
    const auto method = registry.create("hadamard", options);
    return method->fit(FitContext{site, quant, seed, log});
  };
  const RotationPtr plain = fit("{random_signs: false}", 1);
  EXPECT_TRUE(at::equal(plain->dense(), hadamard_matrix(n)));
  const RotationPtr a = fit("{}", 1), b = fit("{random_signs: true}", 1), c = fit("{}", 2);
  EXPECT_TRUE(at::equal(a->dense(), b->dense()));
  EXPECT_FALSE(at::equal(a->dense(), c->dense()));
  EXPECT_FALSE(at::equal(a->dense(), plain->dense()));
  const at::Tensor expected_signs = random_signs(n, make_generator(1, "hadamard/layer0.qkv"));
  EXPECT_TRUE(at::equal(a->dense(), hadamard_matrix(n) * expected_signs.unsqueeze(1)));
  EXPECT_THROW(fit("{random_sign: false}", 1), Error);
  EXPECT_THROW(fit("{random_signs: maybe}", 1), Error);
}

}  // namespace
}  // namespace sqlab
