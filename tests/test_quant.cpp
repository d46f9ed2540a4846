// Quantizers: hand-computed cases, error bounds, the fast path against the tensor
// path, and the straight-through gradient.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "quant/quant.h"

namespace sqlab {
namespace {

QuantSpec spec(int bits, bool sym, Granularity g = Granularity::per_row, int64_t group = 4, double clip = 1.0) {
  return QuantSpec{bits, sym, g, group, clip};
}

at::Tensor row(std::vector<float> values) {
  return at::tensor(values, at::kFloat).reshape({1, static_cast<int64_t>(values.size())});
}

TEST(QuantHandCases, AsymmetricPerToken) {
  // lo = -1, hi = 2: scale = 3 / 15 = 0.2, zero = 5.
  const at::Tensor q = fake_quant(row({-1.0f, 0.0f, 0.62f, 2.0f}), spec(4, false));
  const std::vector<float> expected{-1.0f, 0.0f, 0.6f, 2.0f};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(q[0][i].item<float>(), expected[i], 1e-6) << i;
}

TEST(QuantHandCases, SymmetricPerChannel) {
  // absmax 8 over qmax 7: scale 8/7; 3.2 -> 2.8 -> 3; 7 -> 6.125 -> 6.
  const at::Tensor q = fake_quant(row({-8.0f, 3.2f, 7.0f}), spec(4, true));
  EXPECT_NEAR(q[0][0].item<float>(), -8.0f, 1e-5);
  EXPECT_NEAR(q[0][1].item<float>(), 3.0f * 8.0f / 7.0f, 1e-5);
  EXPECT_NEAR(q[0][2].item<float>(), 6.0f * 8.0f / 7.0f, 1e-5);
}

TEST(QuantHandCases, ClipAndSixteenBits) {
  const at::Tensor x = row({-4.0f, 1.0f, 4.0f});
  const at::Tensor q = fake_quant(x, spec(2, true, Granularity::per_row, 4, 0.5));
  // clip 0.5: absmax 2, qmax 1, scale 2; 4 -> clamp(2, -2, 1) = 1 -> 2; -4 -> -2 -> -4.
  EXPECT_NEAR(q[0][2].item<float>(), 2.0f, 1e-6);
  EXPECT_NEAR(q[0][0].item<float>(), -4.0f, 1e-6);
  EXPECT_TRUE(at::equal(fake_quant(x, spec(16, true)), x));
  EXPECT_THROW(fake_quant(x, spec(9, true)), Error);
  EXPECT_THROW(fake_quant(at::zeros({2, 2, 2}), spec(4, true)), Error);
  EXPECT_THROW(fake_quant(at::zeros({2, 6}), spec(4, true, Granularity::per_group, 4)), Error);
  // An all-zero row stays zero (no division by zero).
  EXPECT_TRUE(at::equal(fake_quant(at::zeros({2, 8}), spec(4, false)), at::zeros({2, 8})));
}

// |Q(x) - x| <= scale / 2 for every entry of a group, where scale is the group's step.
TEST(QuantBounds, ErrorAtMostHalfAStep) {
  at::manual_seed(0);
  const at::Tensor x = at::randn({16, 64}) * 3;
  for (int bits = 2; bits <= 8; ++bits)
    for (bool sym : {true, false})
      for (Granularity g : {Granularity::per_tensor, Granularity::per_row, Granularity::per_group}) {
        const QuantSpec s = spec(bits, sym, g, 16);
        const at::Tensor q = fake_quant(x, s);
        const int64_t len = g == Granularity::per_tensor ? x.numel() : g == Granularity::per_row ? 64 : 16;
        const at::Tensor grouped = x.reshape({-1, len});
        const at::Tensor err = (q.reshape({-1, len}) - grouped).abs().amax(1);
        const double levels = sym ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
        const at::Tensor range = sym ? grouped.abs().amax(1) : grouped.amax(1) - grouped.amin(1);
        const at::Tensor step = range / levels;
        EXPECT_TRUE((err <= step * 0.5 + 1e-5).all().item<bool>()) << "bits " << bits << " sym " << sym;
        // More bits, smaller error.
        if (bits > 2) {
          const at::Tensor coarser = fake_quant(x, spec(bits - 1, sym, g, 16));
          EXPECT_LT((q - x).pow(2).mean().item<double>(), (coarser - x).pow(2).mean().item<double>());
        }
      }
}

TEST(QuantBounds, SymmetricIsIdempotentAndGridSized) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({8, 32});
  const QuantSpec s = spec(3, true);
  const at::Tensor q = fake_quant(x, s);
  EXPECT_TRUE(at::allclose(fake_quant(q, s), q, 1e-6, 1e-6));
  for (int64_t r = 0; r < 8; ++r) EXPECT_LE(std::get<0>(at::_unique(q[r])).numel(), 8);  // 2^3 levels
}

TEST(QuantPaths, FastFloatPathMatchesTensorPath) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({64, 256}) * at::rand({64, 1}) * 10;
  for (bool sym : {true, false})
    for (Granularity g : {Granularity::per_row, Granularity::per_group}) {
      const QuantSpec s = spec(4, sym, g, 32);
      const at::Tensor fast = fake_quant(x, s);
      const at::Tensor reference = fake_quant(x.to(at::kDouble), s).to(at::kFloat);
      const double mismatch = ((fast - reference).abs() > 1e-4).to(at::kDouble).mean().item<double>();
      EXPECT_LT(mismatch, 1e-3) << "sym " << sym;  // only rounding ties may differ
    }
}

TEST(QuantSte, GradientPassesThroughRoundingNotClamping) {
  at::manual_seed(3);
  const at::Tensor x = (at::randn({4, 16}) * 2).requires_grad_(true);
  fake_quant_ste(x, spec(4, false)).sum().backward();
  EXPECT_TRUE(at::allclose(x.grad(), at::ones_like(x)));  // clip 1: nothing clamped

  const at::Tensor y = at::tensor({-4.0f, 1.0f, 4.0f}).reshape({1, 3}).requires_grad_(true);
  fake_quant_ste(y, spec(2, true, Granularity::per_row, 4, 0.5)).sum().backward();
  EXPECT_FLOAT_EQ(y.grad()[0][0].item<float>(), 1.0f);  // -4 -> -2 at the grid's minimum, inside
  EXPECT_FLOAT_EQ(y.grad()[0][1].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(y.grad()[0][2].item<float>(), 0.0f);  // clamped: no gradient
}

}  // namespace
}  // namespace sqlab
