// The vectorized fake quantization (quant/quant.cpp) against the scalar formula it replaced,
// bitwise, at every SIMD level the CPU has: q = clamp(nearbyint(x / s) + z, qmin, qmax),
// out = (q - z) s, with the group's scale s and zero point z.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "quant/quant.h"
#include "rotations/hadamard.h"

namespace sqlab {
namespace {

at::Tensor scalar_reference(const at::Tensor& x, const QuantSpec& spec) {
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t len = spec.granularity == Granularity::per_group ? spec.group_size : in.size(1);
  const float qmin = spec.symmetric ? -static_cast<float>(1 << (spec.bits - 1)) : 0.0f;
  const float qmax = spec.symmetric ? static_cast<float>(1 << (spec.bits - 1)) - 1.0f
                                    : static_cast<float>((1 << spec.bits) - 1);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t g = 0; g < in.numel() / len; ++g) {
    const float* a = src + g * len;
    float lo = *std::min_element(a, a + len) * static_cast<float>(spec.clip);
    float hi = *std::max_element(a, a + len) * static_cast<float>(spec.clip);
    float scale, zero = 0.0f;
    if (spec.symmetric) {
      const float absmax = std::max(std::fabs(lo), std::fabs(hi));
      scale = absmax > 0 ? absmax / qmax : 1.0f;
    } else {
      lo = std::min(lo, 0.0f);
      hi = std::max(hi, 0.0f);
      scale = hi > lo ? (hi - lo) / qmax : 1.0f;
      zero = std::nearbyint(-lo / scale);
    }
    const float inv = 1.0f / scale;
    for (int64_t i = 0; i < len; ++i) {
      const float q = std::min(std::max(std::nearbyint(a[i] * inv) + zero, qmin), qmax);
      dst[g * len + i] = (q - zero) * scale;
    }
  }
  return out;
}

TEST(FastPaths, FakeQuantEqualsTheScalarFormulaAtEverySimdLevel) {
  at::manual_seed(4);
  // Odd row lengths exercise the vector tails; a massive entry and a constant row the edges.
  at::Tensor x = at::randn({37, 203}) * at::rand({37, 1}) * 10;
  x[0][5] = 2500.0f;
  x[3].fill_(0.0f);
  x[4].fill_(-1.5f);
  const SimdLevel saved = simd_level();
  for (SimdLevel level : {SimdLevel::generic, SimdLevel::avx2, SimdLevel::avx512}) {
    if (!simd_level_supported(level)) continue;
    set_simd_level(level);
    for (bool sym : {true, false})
      for (int bits : {2, 4, 8})
        for (double clip : {1.0, 0.6}) {
          const QuantSpec row{bits, sym, Granularity::per_row, 128, clip};
          EXPECT_TRUE(at::equal(fake_quant(x, row), scalar_reference(x, row)))
              << simd_level_name(level) << " sym " << sym << " bits " << bits << " clip " << clip;
        }
    const at::Tensor grouped = x.narrow(1, 0, 200).contiguous();
    const QuantSpec group{4, false, Granularity::per_group, 40, 1.0};
    EXPECT_TRUE(at::equal(fake_quant(grouped, group), scalar_reference(grouped, group))) << simd_level_name(level);
  }
  set_simd_level(saved);
}

}  // namespace
}  // namespace sqlab
