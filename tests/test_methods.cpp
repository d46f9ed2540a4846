// Every registered method, by being registered: orthogonality (or, for an invertible
// transform such as smoothquant, W -> W T^-T), invariance X W^T = (X R)(W R)^T, fast
// apply against the dense matrix, inverse, determinism.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/config.h"
#include "core/method.h"
#include "core/quant_config.h"
#include "core/random.h"
#include "datasets/synthetic.h"
#include "methods/builtin.h"

namespace sqlab {
namespace {

class NullLog : public FitLog {
 public:
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string&) override {}
};

MethodRegistry& registry() {
  static MethodRegistry r = [] {
    MethodRegistry methods("method");
    register_builtin_methods(methods);
    return methods;
  }();
  return r;
}

// A small LLaMA-like site (n = 64 = 8 x 8, so Kronecker and Hadamard methods apply).
Site test_site(int64_t n = 64) {
  SyntheticOptions o;
  o.tokens = 256;
  o.channels = n;
  o.out_features = 48;
  o.massive_count = 2;
  o.massive_magnitude = {500.0};
  o.normal_count = 4;
  return SyntheticDataset(o).load(11).front();
}

RotationPtr fit(const std::string& name, const Site& site, uint64_t seed) {
  ConfigReader options(YAML::Node(), "test", "methods." + name);
  const auto method = registry().create(name, options);
  NullLog log;
  QuantConfig quant;
  return method->fit(FitContext{site, quant, seed, log});
}

class EveryMethod : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryMethod, IsOrthogonalInvariantAndMatchesDense) {
  const Site site = test_site();
  const RotationPtr r = fit(GetParam(), site, 3);
  ASSERT_EQ(r->size(), 64);
  const at::Tensor R = r->dense();
  ASSERT_EQ(R.scalar_type(), at::kDouble);
  const at::Tensor X = site.X.to(at::kDouble), W = site.W.to(at::kDouble);
  const at::Tensor xr = r->apply(X), wr = r->fuse_into(W);
  if (r->orthogonal()) {
    EXPECT_LT((R.t().matmul(R) - at::eye(64, at::kDouble)).abs().max().item<double>(), 1e-10);
  } else {
    // An invertible transform T (e.g. smoothquant): the weight side is W T^-T.
    const at::Tensor t_inv_t = at::linalg_inv(R).t();
    EXPECT_LT(((wr - W.matmul(t_inv_t)).norm() / W.norm()).item<double>(), 1e-10);
  }
  const at::Tensor y = X.matmul(W.t());
  EXPECT_LT(((xr.matmul(wr.t()) - y).norm() / y.norm()).item<double>(), 1e-10);
  EXPECT_LT(((xr - X.matmul(R)).norm() / X.norm()).item<double>(), 1e-10);
  EXPECT_LT(((r->apply_inverse(xr) - X).norm() / X.norm()).item<double>(), 1e-10);
  // float32 path: same rotation within float tolerance.
  const at::Tensor xr32 = r->apply(site.X);
  EXPECT_EQ(xr32.scalar_type(), at::kFloat);
  EXPECT_LT(((xr32.to(at::kDouble) - X.matmul(R)).norm() / X.norm()).item<double>(), 1e-5);
}

TEST_P(EveryMethod, IsDeterministicForASeed) {
  const Site site = test_site();
  EXPECT_TRUE(at::equal(fit(GetParam(), site, 5)->dense(), fit(GetParam(), site, 5)->dense()));
}

TEST_P(EveryMethod, RecordsItsFactors) {
  const RotationPtr r = fit(GetParam(), test_site(), 1);
  const auto factors = r->factors();
  ASSERT_FALSE(factors.empty());
  if (factors.count("R")) {
    EXPECT_TRUE(at::allclose(factors.at("R").to(at::kDouble), r->dense()));
  }
  if (factors.count("T")) {  // not orthogonal: x -> x T, W -> W T_w
    EXPECT_FALSE(r->orthogonal());
    EXPECT_TRUE(at::allclose(factors.at("T").to(at::kDouble), r->dense()));
    EXPECT_TRUE(at::allclose(factors.at("T_w").to(at::kDouble), at::linalg_inv(r->dense()).t()));
  }
  if (factors.count("R1")) {
    EXPECT_TRUE(at::allclose(at::kron(factors.at("R1").to(at::kDouble), factors.at("R2").to(at::kDouble)), r->dense()));
  }
}

INSTANTIATE_TEST_SUITE_P(AllMethods, EveryMethod, ::testing::ValuesIn(registry().names()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(RandomOrthogonal, HaarSampleIsOrthogonalAndSeeded) {
  const at::Tensor a = random_orthogonal_matrix(256, make_generator(1, "x"));
  const at::Tensor b = random_orthogonal_matrix(256, make_generator(2, "x"));
  EXPECT_LT((a.t().matmul(a) - at::eye(256, at::kDouble)).abs().max().item<double>(), 1e-12);
  EXPECT_FALSE(at::allclose(a, b));
  // Sign fix: no systematic sign on the diagonal of the QR's R, so the mean of the
  // diagonal of Q is near 0 (it would be near +0.8/sqrt(n)*n^... without the fix).
  EXPECT_LT(std::abs(a.diagonal().sum().item<double>()), 5.0);
}

TEST(Registry, UnknownAndDuplicateNames) {
  MethodRegistry methods("method");
  register_builtin_methods(methods);
  ConfigReader options(YAML::Node(), "test", "methods.x");
  try {
    methods.create("nope", options);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown method 'nope' (valid: "), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("identity, random_orthogonal"), std::string::npos);
  }
  EXPECT_THROW(register_builtin_methods(methods), Error);
}

// A width with no Hadamard matrix (944 = 16 x 59): a config error naming the width and the
// fallbacks; with a fallback, an orthogonal rotation of the documented structure.
TEST(HadamardFallback, RefusedWithoutAndStructuredWith) {
  ConfigReader plain(YAML::Load("{}"), "exp.yaml", "methods.h");
  const auto none = registry().create("hadamard", plain);
  try {
    none->check_width(944);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::config);
    for (const char* part : {"order 944", "width 944", "fallback: block", "59 blocks of Hadamard(16)",
                             "fallback: kronecker_random"})
      EXPECT_NE(message.find(part), std::string::npos) << part << " not in: " << message;
  }
  EXPECT_NO_THROW(none->check_width(5632));  // TinyLlama's MLP: 128 x 44
  const Site site = test_site(944);
  for (const char* fallback : {"block", "kronecker_random"}) {
    SCOPED_TRACE(fallback);
    ConfigReader options(YAML::Load(std::string("{fallback: ") + fallback + "}"), "exp.yaml", "methods.h");
    const auto method = registry().create("hadamard", options);
    EXPECT_NO_THROW(method->check_width(944));
    struct Log : NullLog {
      std::vector<std::string> warnings;
      void warn(const std::string& w) override { warnings.push_back(w); }
    } log;
    QuantConfig quant;
    const RotationPtr r = method->fit(FitContext{site, quant, 3, log});
    ASSERT_EQ(r->size(), 944);
    const at::Tensor dense = r->dense();
    EXPECT_LT((dense.t().mm(dense) - at::eye(944, at::kDouble)).abs().max().item<double>(), 1e-12);
    ASSERT_EQ(log.warnings.size(), 1u);
    EXPECT_NE(log.warnings[0].find("Hadamard factor of order 16 x 59"), std::string::npos) << log.warnings[0];
    // Every entry of the 16 x 16 Hadamard blocks has magnitude 1/4: block-diagonal means
    // entries outside the diagonal blocks are exactly 0.
    if (std::string(fallback) == "block") {
      EXPECT_EQ(r->factors().count("blocks"), 1u);
      EXPECT_DOUBLE_EQ(dense.slice(0, 0, 16).slice(1, 16, 944).abs().max().item<double>(), 0.0);
      EXPECT_NEAR(dense.slice(0, 0, 16).slice(1, 0, 16).abs().min().item<double>(), 0.25, 1e-15);
    } else {
      EXPECT_EQ(r->factors().count("R1"), 1u);
      EXPECT_EQ(r->factors().at("R2").size(0), 16);
    }
  }
  ConfigReader bad(YAML::Load("{fallback: dense}"), "exp.yaml", "methods.h");
  EXPECT_THROW(registry().create("hadamard", bad), Error);
}

}  // namespace
}  // namespace sqlab
