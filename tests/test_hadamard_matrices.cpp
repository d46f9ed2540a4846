// Tests for the explicit base Hadamard matrices (rotations/hadamard_matrices.h). No LibTorch:
//   g++ -std=c++17 -O2 -I. rotations/hadamard_matrices.cpp tests/test_hadamard_matrices.cpp
//       -lgtest -lgtest_main -pthread -o /tmp/hm_test && /tmp/hm_test
#include "rotations/hadamard_matrices.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace sqlab {
namespace {

const std::vector<int64_t> kExpectedOrders = {1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172};

TEST(HadamardBaseOrders, AscendingListOfAllConstructions) {
  EXPECT_EQ(hadamard_base_orders(), kExpectedOrders);
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

TEST(HadamardBaseMatrix, UnsupportedOrderThrowsConfigErrorListingOrders) {
  // 44 = 4 * 11: a Hadamard order, but neither 44, 22 nor 11 is in the base set.
  try {
    hadamard_base_matrix(44);
    FAIL() << "expected sqlab::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    std::string msg = e.what();
    EXPECT_NE(msg.find("order 44"), std::string::npos) << msg;
    EXPECT_NE(msg.find("{1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172}"), std::string::npos)
        << msg;
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
  // 44 = 4*11, 92 = 4*23, 88 = 8*11, 4095 is odd, 6 = 2*3: no cofactor 2^-k * n is a base order.
  for (int64_t n : {int64_t{44}, int64_t{92}, int64_t{88}, int64_t{4095}, int64_t{6}}) {
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
