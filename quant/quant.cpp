#include "quant/quant.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/torch_compat.h"
#include "rotations/simd.h"

#ifdef SQLAB_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "quant/fake_quant_cuda.h"
#endif

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors: no ABI crosses this file

namespace sqlab {
namespace {

// Integer grid of a spec: symmetric uses [-2^(b-1), 2^(b-1) - 1] with zero at 0
// (QuaRot's convention); asymmetric uses [0, 2^b - 1] with a rounded zero point.
struct Grid {
  float qmin;
  float qmax;
};

Grid grid_of(const QuantSpec& spec) {
  if (spec.symmetric) {
    const float half = static_cast<float>(1 << (spec.bits - 1));
    return {-half, half - 1.0f};
  }
  return {0.0f, static_cast<float>((1 << spec.bits) - 1)};
}

struct ScaleZero {
  float scale;
  float zero;
};

// Scale and zero point of one group from its range (already multiplied by clip).
ScaleZero scale_zero(float lo, float hi, const QuantSpec& spec, const Grid& grid) {
  if (spec.symmetric) {
    const float absmax = std::max(std::fabs(lo), std::fabs(hi));
    const float scale = absmax > 0 ? absmax / grid.qmax : 1.0f;
    return {scale, 0.0f};
  }
  lo = std::min(lo, 0.0f);  // keep 0 exactly representable
  hi = std::max(hi, 0.0f);
  const float scale = hi > lo ? (hi - lo) / grid.qmax : 1.0f;
  return {scale, std::nearbyint(-lo / scale)};
}

// Quantize-dequantize one contiguous group into `out`, vectorized (omp simd; the callers
// below compile it for AVX-512, AVX2 and the baseline). Bitwise equal to the scalar
//   q = clamp(nearbyint(x / s) + z, qmin, qmax),  out = (q - z) s
// in the default rounding mode: z, qmin and qmax are integers, so clamping x / s to
// [qmin - z, qmax - z] before rounding gives the same q, and a clamped value (|v| < 2^9)
// rounds to nearest-even by adding and subtracting 1.5 * 2^23, which the compiler
// vectorizes (nearbyint is a library call on the baseline target). Measured on 2048 x 4096,
// one thread: 17.6 ms before (nearbyint per element, scalar min/max), see bench/.
#define SQLAB_QUANT_INLINE inline __attribute__((always_inline))
SQLAB_QUANT_INLINE void quantize_group_impl(const float* __restrict in, float* __restrict out, int64_t len,
                                            const QuantSpec& spec, const Grid& grid) {
  // Range: 16 lanes of running min / max in one vector (a zmm register, or four xmm ones on
  // the baseline target), then the tail.
  typedef float Lanes __attribute__((vector_size(64)));
  constexpr int kLanes = 16;
  Lanes lo_lanes = Lanes{} + in[0], hi_lanes = lo_lanes;
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    Lanes x;
    std::memcpy(&x, in + i, sizeof x);
    lo_lanes = x < lo_lanes ? x : lo_lanes;
    hi_lanes = x > hi_lanes ? x : hi_lanes;
  }
  float lo = in[0], hi = in[0];
  for (int j = 0; j < kLanes; ++j) {
    lo = std::min(lo, lo_lanes[j]);
    hi = std::max(hi, hi_lanes[j]);
  }
  for (; i < len; ++i) {
    lo = std::min(lo, in[i]);
    hi = std::max(hi, in[i]);
  }
  const ScaleZero sz = scale_zero(lo * static_cast<float>(spec.clip),
                                  hi * static_cast<float>(spec.clip), spec, grid);
  const float inv = 1.0f / sz.scale;
  const float low = grid.qmin - sz.zero, high = grid.qmax - sz.zero;
  const float zero = sz.zero, scale = sz.scale;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float v = std::min(std::max(in[i] * inv, low), high);
    const float q = ((v + kRound) - kRound) + zero;
    out[i] = (q - zero) * scale;
  }
}

// Groups [begin, end) of `len` entries each.
#define SQLAB_QUANT_GROUPS_BODY                                                   \
  for (int64_t g = begin; g < end; ++g) quantize_group_impl(src + g * len, dst + g * len, len, spec, grid);

void quantize_groups_generic(const float* src, float* dst, int64_t begin, int64_t end, int64_t len,
                             const QuantSpec& spec, const Grid& grid) {
  SQLAB_QUANT_GROUPS_BODY
}
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) void quantize_groups_avx2(const float* src, float* dst, int64_t begin,
                                                              int64_t end, int64_t len, const QuantSpec& spec,
                                                              const Grid& grid) {
  SQLAB_QUANT_GROUPS_BODY
}
__attribute__((target("avx512f"))) void quantize_groups_avx512(const float* src, float* dst, int64_t begin,
                                                               int64_t end, int64_t len, const QuantSpec& spec,
                                                               const Grid& grid) {
  SQLAB_QUANT_GROUPS_BODY
}
#endif

// The widest kernel the CPU runs (the same level the Hadamard and Kronecker kernels use).
void quantize_groups(const float* src, float* dst, int64_t begin, int64_t end, int64_t len,
                     const QuantSpec& spec, const Grid& grid) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (simd_level()) {
    case SimdLevel::avx512: return quantize_groups_avx512(src, dst, begin, end, len, spec, grid);
    case SimdLevel::avx2: return quantize_groups_avx2(src, dst, begin, end, len, spec, grid);
    default: break;
  }
#endif
  quantize_groups_generic(src, dst, begin, end, len, spec, grid);
}

int64_t group_length(const QuantSpec& spec, int64_t cols) {
  if (spec.granularity != Granularity::per_group) return cols;
  if (spec.group_size <= 0 || cols % spec.group_size != 0)
    throw Error(fmt::format("quant: group size {} does not divide the row length {}",
                            spec.group_size, cols));
  return spec.group_size;
}

void check_input(const at::Tensor& x, const QuantSpec& spec) {
  if (x.dim() != 2)
    throw Error(fmt::format("quant: expected a 2-D matrix, got {} dimensions", x.dim()));
  if (spec.bits < 2 || (spec.bits > 8 && spec.bits != 16))
    throw Error(fmt::format("quant: bits must be 2..8 or 16, got {}", spec.bits));
}

// Per-group min and max of x viewed as (groups, len) rows, as tensors (autograd path).
std::pair<at::Tensor, at::Tensor> group_range(const at::Tensor& grouped, const QuantSpec& spec) {
  if (spec.granularity == Granularity::per_tensor)
    return {grouped.min().reshape({1, 1}), grouped.max().reshape({1, 1})};
  return {std::get<0>(grouped.min(1, true)), std::get<0>(grouped.max(1, true))};
}

}  // namespace

std::string QuantSpec::describe() const {
  if (!enabled()) return "none";
  const char* gran = granularity == Granularity::per_tensor ? "per_tensor"
                     : granularity == Granularity::per_row  ? "per_row"
                                                            : "per_group";
  return fmt::format("{}bit {} {} clip={}{}", bits, symmetric ? "sym" : "asym", gran, clip,
                     rounding == Rounding::smooth ? " smooth-rounding" : "");
}

#ifdef SQLAB_CUDA
namespace {

// The CUDA kernel (quant/fake_quant_cuda.h) for float32/float16/bfloat16 rows and groups.
at::Tensor fake_quant_cuda(const at::Tensor& x, const QuantSpec& spec) {
  const at::ScalarType dtype = x.scalar_type();
  const cuda::RowDtype row_dtype = dtype == at::kHalf       ? cuda::RowDtype::float16
                                   : dtype == at::kBFloat16 ? cuda::RowDtype::bfloat16
                                                            : cuda::RowDtype::float32;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t len = group_length(spec, in.size(1));
  const Grid grid = grid_of(spec);
  const cuda::FakeQuantJob job{in.data_ptr(), out.data_ptr(), in.numel() / std::max<int64_t>(len, 1),
                               len, spec.symmetric, grid.qmin, grid.qmax, static_cast<float>(spec.clip),
                               row_dtype, at::cuda::getCurrentCUDAStream(x.device().index()).stream()};
  const std::string error = cuda::fake_quant(job);
  if (!error.empty()) throw Error(fmt::format("quant: CUDA kernel failed: {}", error));
  return out;
}

}  // namespace
#endif

at::Tensor fake_quant(const at::Tensor& x, const QuantSpec& spec) {
  check_input(x, spec);
  if (!spec.enabled()) return x;
#ifdef SQLAB_CUDA
  const at::ScalarType dtype = x.scalar_type();
  if (x.is_cuda() && spec.granularity != Granularity::per_tensor &&
      (dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16))
    return fake_quant_cuda(x, spec);
#endif
  // The fused kernel is float32 on the CPU; other dtypes and devices (data.device: cuda) take
  // the tensor path.
  if (x.scalar_type() != at::kFloat || spec.granularity == Granularity::per_tensor || !x.is_cpu()) {
    at::NoGradGuard no_grad;
    QuantSpec rounding_spec = spec;  // fake_quant always rounds (smooth is for training)
    rounding_spec.rounding = Rounding::ste;
    return fake_quant_ste(x, rounding_spec);  // same arithmetic through tensor ops
  }
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t cols = in.size(1);
  const int64_t len = group_length(spec, cols);
  const int64_t groups = in.numel() / std::max<int64_t>(len, 1);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const Grid grid = grid_of(spec);
  at::parallel_for(0, groups, std::max<int64_t>(1, 16384 / std::max<int64_t>(len, 1)), [&](int64_t begin, int64_t end) {
    quantize_groups(src, dst, begin, end, len, spec, grid);
  });
  return out;
}

at::Tensor fake_quant_ste(const at::Tensor& x, const QuantSpec& spec) {
  check_input(x, spec);
  if (!spec.enabled()) return x;
  const int64_t len = spec.granularity == Granularity::per_tensor ? x.numel()
                                                                   : group_length(spec, x.size(1));
  const at::Tensor grouped = x.reshape({-1, len});
  const Grid grid = grid_of(spec);
  at::Tensor scale, zero;
  {
    at::NoGradGuard no_grad;  // the scale is a constant for the gradient
    auto [lo, hi] = group_range(grouped, spec);
    lo = lo * spec.clip;
    hi = hi * spec.clip;
    if (spec.symmetric) {
      const at::Tensor absmax = at::maximum(lo.abs(), hi.abs());
      scale = at::where(absmax > 0, absmax / grid.qmax, at::ones_like(absmax));
      zero = at::zeros_like(scale);
    } else {
      lo = at::clamp_max(lo, 0.0);
      hi = at::clamp_min(hi, 0.0);
      scale = at::where(hi > lo, (hi - lo) / grid.qmax, at::ones_like(hi));
      zero = at::round(-lo / scale);
    }
  }
  const at::Tensor scaled = grouped / scale;
  at::Tensor q;
  if (spec.rounding == Rounding::smooth) {
    // Smooth control: u - sin(2 pi u) / (2 pi), differentiable with slope 1 - cos(2 pi u).
    constexpr double two_pi = 6.283185307179586476925286766559;
    q = at::clamp(scaled - at::sin(scaled * two_pi) / two_pi + zero, grid.qmin, grid.qmax);
  } else {
    // Straight-through rounding: the forward value is exactly clamp(round(u) + z) and the
    // gradient is the identity where round(u) + z lies on the grid, zero where it is clamped.
    // (Written as v + (q - v).detach(), the forward value is off by an ulp, and whether a
    // grid end counts as clamped then depends on the LibTorch version's arithmetic.)
    const at::Tensor target = at::round(scaled).detach() + zero;
    const at::Tensor on_grid = ((target >= grid.qmin) & (target <= grid.qmax)).to(scaled.scalar_type());
    q = at::clamp(target, grid.qmin, grid.qmax) + (scaled - scaled.detach()) * on_grid;
  }
  return ((q - zero) * scale).reshape(x.sizes());
}

std::map<std::string, std::string> quant_settings(const QuantConfig& config) {
  std::map<std::string, std::string> out;
  auto add = [&](const std::string& prefix, const QuantSpec& s, const char* row_name) {
    out[prefix + "bits"] = std::to_string(s.bits);
    out[prefix + "sym"] = s.symmetric ? "true" : "false";
    out[prefix + "granularity"] = s.granularity == Granularity::per_tensor ? "per_tensor"
                                  : s.granularity == Granularity::per_group ? "per_group"
                                                                            : row_name;
    out[prefix + "group_size"] = std::to_string(s.group_size);
    out[prefix + "clip"] = fmt::format("{}", s.clip);
  };
  add("w_", config.weight, "per_channel");
  add("a_", config.act, "per_token");
  out["rounding"] = config.act.rounding == Rounding::smooth ? "smooth" : "ste";
  out["w_quantizer"] = config.w_quantizer == WeightQuantizer::gptq ? "gptq" : "rtn";
  if (config.w_quantizer == WeightQuantizer::gptq) {
    out["gptq.damp"] = fmt::format("{}", config.gptq.damp);
    out["gptq.block_size"] = std::to_string(config.gptq.block_size);
    out["gptq.act_order"] = config.gptq.act_order ? "true" : "false";
  }
  return out;
}

}  // namespace sqlab
