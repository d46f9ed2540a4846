// Tests for the explicit base Hadamard matrices (rotations/hadamard_matrices.h). No LibTorch:
//   g++ -std=c++17 -O2 -I. rotations/hadamard_matrices.cpp tests/test_hadamard_matrices.cpp
//       -lgtest -lgtest_main -pthread -o /tmp/hm_test && /tmp/hm_test
#include "rotations/hadamard_matrices.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace sqlab {
namespace {

const std::vector<int64_t>& kExpectedOrders = hadamard_base_orders();

TEST(HadamardBaseOrders, SmallestConstructibleOrderPerOddPart) {
  const std::vector<int64_t>& orders = hadamard_base_orders();
  ASSERT_TRUE(std::is_sorted(orders.begin(), orders.end()));
  EXPECT_EQ(orders.front(), 1);
  // The orders of the first list (12 ... 172) and those the model families need
  // (README "Hadamard orders"): 44 (TinyLlama 5632), 68 (Qwen3-14B 17408), 76 (Qwen2.5-0.5B
  // 4864), 100 (Qwen3-32B 25600), 148 (Qwen2.5-7B 18944), 924 (Qwen2.5-72B 29568).
  for (int64_t m : {12, 20, 28, 36, 52, 60, 108, 140, 156, 172, 44, 68, 76, 100, 148, 924})
    EXPECT_NE(std::find(orders.begin(), orders.end(), m), orders.end()) << m;
  // 40 = 2 * 20 is constructible but never a base: 20 leaves the larger power of two.
  EXPECT_EQ(std::find(orders.begin(), orders.end(), 40), orders.end());
  EXPECT_EQ(hadamard_construction(40), "doubling of 20");
  // 59: none of 236, 472, 944, 1888 has a construction sqlab knows.
  for (int64_t m : {236, 472, 944, 1888}) EXPECT_EQ(hadamard_construction(m), "") << m;
  EXPECT_EQ(hadamard_construction(1904), "28 (x) 68");  // 8 * 7 * 17 * 2: only as a Kronecker product
  EXPECT_EQ(hadamard_construction(924), "Paley II, q = 461");
  EXPECT_EQ(hadamard_construction(100), "Paley II, q = 49");  // GF(7^2)
  EXPECT_EQ(hadamard_construction(172), "Goethals-Seidel, w = 43");
  for (int64_t m : orders) EXPECT_FALSE(hadamard_construction(m).empty()) << m;
}

class HadamardBaseMatrix : public ::testing::TestWithParam<int64_t> {};

TEST_P(HadamardBaseMatrix, EntriesArePlusMinusOne) {
  const int64_t m = GetParam();
  std::vector<int8_t> h = hadamard_base_matrix(m);
  ASSERT_EQ(static_cast<int64_t>(h.size()), m * m);
  for (int8_t v : h) ASSERT_TRUE(v == 1 || v == -1) << "entry " << int(v);
}

TEST_P(HadamardBaseMatrix, RowsAreOrthogonal) {
  const int64_t m = GetParam();
  std::vector<int8_t> h = hadamard_base_matrix(m);
  ASSERT_EQ(static_cast<int64_t>(h.size()), m * m);
  if (m > 512) {
    // H (H^T v) == m v for 4 pseudo-random +-1 vectors v, exactly in integers: O(m^2) each;
    // H H^T != m I fails it with probability >= 1/2 per vector.
    uint64_t state = 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(m);
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<int64_t> v(m), t(m, 0), u(m, 0);
      for (auto& x : v) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        x = (state >> 63) ? 1 : -1;
      }
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < m; ++j) t[j] += int64_t{h[i * m + j]} * v[i];  // H^T v
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < m; ++j) u[i] += int64_t{h[i * m + j]} * t[j];  // H (H^T v)
      for (int64_t i = 0; i < m; ++i) ASSERT_EQ(u[i], m * v[i]) << "order " << m << ", trial " << trial;
    }
    return;
  }
  // H H^T == m I, exactly, in integer arithmetic.
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) {
      int64_t dot = 0;
      for (int64_t k = 0; k < m; ++k) dot += int64_t{h[i * m + k]} * h[j * m + k];
      ASSERT_EQ(dot, i == j ? m : 0) << "rows " << i << " and " << j << " of order " << m;
    }
}

TEST_P(HadamardBaseMatrix, RepeatedCallsReturnTheSameMatrix) {
  EXPECT_EQ(hadamard_base_matrix(GetParam()), hadamard_base_matrix(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(AllBaseOrders, HadamardBaseMatrix, ::testing::ValuesIn(kExpectedOrders),
                         [](const auto& info) { return "m" + std::to_string(info.param); });

TEST(HadamardBaseMatrix, UnsupportedOrderThrowsConfigErrorNamingIt) {
  // 236 = 4 * 59: a Hadamard order (conjecturally every multiple of 4 is), but not one of
  // sqlab's constructions.
  try {
    hadamard_base_matrix(236);
    FAIL() << "expected sqlab::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    std::string msg = e.what();
    EXPECT_NE(msg.find("order 236"), std::string::npos) << msg;
    EXPECT_NE(msg.find("odd part 59"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sqlab list hadamard"), std::string::npos) << msg;
  }
}

TEST(HadamardBaseMatrix, NonBaseOrdersThrowEvenWhenSplittable) {
  // 24 = 12 * 2 is handled by hadamard_split, but it is not a base order itself.
  EXPECT_THROW(hadamard_base_matrix(24), Error);
  EXPECT_THROW(hadamard_base_matrix(2), Error);
  EXPECT_THROW(hadamard_base_matrix(0), Error);
  EXPECT_THROW(hadamard_base_matrix(-12), Error);
}

struct SplitCase {
  int64_t n, m, pow2;
};

TEST(HadamardSplit, LlamaWidths) {
  const SplitCase cases[] = {
      {288, 36, 8},     {768, 12, 64},     {1376, 172, 8},   {5120, 20, 256},
      {11008, 172, 64}, {13824, 108, 128}, {14336, 28, 512}, {28672, 28, 1024},
  };
  for (const SplitCase& c : cases) {
    int64_t m = -1, pow2 = -1;
    ASSERT_TRUE(hadamard_split(c.n, &m, &pow2)) << c.n;
    EXPECT_EQ(m, c.m) << c.n;
    EXPECT_EQ(pow2, c.pow2) << c.n;
  }
}

TEST(HadamardSplit, PowersOfTwoUseOrderOne) {
  for (int k = 0; k <= 40; ++k) {
    int64_t n = int64_t{1} << k, m = -1, pow2 = -1;
    ASSERT_TRUE(hadamard_split(n, &m, &pow2)) << n;
    EXPECT_EQ(m, 1) << n;
    EXPECT_EQ(pow2, n) << n;
  }
  int64_t m = -1, pow2 = -1;
  ASSERT_TRUE(hadamard_split(64, &m, &pow2));
  EXPECT_EQ(m, 1);
  EXPECT_EQ(pow2, 64);
}

TEST(HadamardSplit, BaseOrdersAndLargestPowerOfTwo) {
  int64_t m = -1, pow2 = -1;
  ASSERT_TRUE(hadamard_split(172, &m, &pow2));
  EXPECT_EQ(m, 172);
  EXPECT_EQ(pow2, 1);
  ASSERT_TRUE(hadamard_split(288, &m, &pow2));
  EXPECT_EQ(m, 36);
  EXPECT_EQ(pow2, 8);
  // 40 = 20 * 2 = 40 * 1: the larger power of two wins.
  ASSERT_TRUE(hadamard_split(40, &m, &pow2));
  EXPECT_EQ(m, 20);
  EXPECT_EQ(pow2, 2);
}

TEST(HadamardSplit, NoSplitForUnsupportedOrders) {
  // 236 = 4*59, 944 = 16*59, 4095 is odd, 6 = 2*3: no cofactor 2^-k * n is a base order.
  for (int64_t n : {int64_t{236}, int64_t{944}, int64_t{4095}, int64_t{6}}) {
    int64_t m = -7, pow2 = -7;
    EXPECT_FALSE(hadamard_split(n, &m, &pow2)) << n;
    EXPECT_EQ(m, -7) << n;  // outputs untouched on failure
    EXPECT_EQ(pow2, -7) << n;
  }
}

TEST(HadamardSplit, EveryBaseOrderTimesPowerOfTwoRoundTrips) {
  for (int64_t base : kExpectedOrders) {
    for (int k = 0; k <= 12; ++k) {
      int64_t m = -1, pow2 = -1;
      ASSERT_TRUE(hadamard_split(base << k, &m, &pow2)) << base << " << " << k;
      EXPECT_EQ(m * pow2, base << k);
      // The split may pull factors of two out of the base order (40 -> 20 * 2) but the
      // cofactor is always a base order that hadamard_base_matrix accepts.
      EXPECT_NO_THROW(hadamard_base_matrix(m));
    }
  }
}

}  // namespace
}  // namespace sqlab
