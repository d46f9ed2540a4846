#include "rotations/hadamard.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "rotations/dense.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/simd_gemm.h"

#ifdef SQLAB_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "rotations/hadamard_cuda.h"
#endif

namespace sqlab {
namespace {

using simd::Simd;

// ---------------------------------------------------------------------------------------------
// Fast Walsh-Hadamard kernel.
//
// One row of n = p * unit values (p = 2^k) is transformed along the p axis: butterflies pair
// elements unit * 2^s apart, s = 0..k-1 (unit = m, the base order; unit = 1 for pure powers of
// two). Per row: a first pass reads the input (times the scaled signs or the scale), and for
// unit == 1 already does the butterflies inside one SIMD register (distances 1 .. W/2, lane
// shuffles); the remaining stages run as radix-8/4/2 passes, first inside L1-sized blocks of the
// row, then across blocks. Rows are independent (at::parallel_for over rows).

// Butterfly between lanes l and l ^ H of one register: lane l gets x[l & ~H] +- x[l | H].
template <class S, int H, size_t... L>
SQLAB_ALWAYS_INLINE void lane_butterfly(typename S::V& v, std::index_sequence<L...>) {
  using IElem = typename S::IElem;
  using Elem = typename S::Elem;
  // Sign bit set on the lanes that take (partner - own).
  const typename S::V neg = {((L & H) ? Elem(-0.0) : Elem(0.0))...};
#if defined(__clang__)  // clang has no __builtin_shuffle (the fuzz build, make fuzz)
  const typename S::V t = __builtin_shufflevector(v, v, static_cast<int>(L ^ H)...);
#else
  const typename S::I partner = {static_cast<IElem>(L ^ H)...};
  const typename S::V t = __builtin_shuffle(v, partner);
#endif
  const typename S::V flipped = (typename S::V)((typename S::I)v ^ (typename S::I)neg);
  v = t + flipped;
}

template <class S, int H = 1>
SQLAB_ALWAYS_INLINE void in_register_stages(typename S::V& v) {
  if constexpr (H < S::W) {
    lane_butterfly<S, H>(v, std::make_index_sequence<S::W>{});
    in_register_stages<S, 2 * H>(v);
  }
}

// Three butterfly stages (distances h, 2h, 4h) on 8 values held in registers.
template <class X>
SQLAB_ALWAYS_INLINE void butterfly8(X& x0, X& x1, X& x2, X& x3, X& x4, X& x5, X& x6, X& x7) {
  const X a0 = x0 + x1, a1 = x0 - x1, a2 = x2 + x3, a3 = x2 - x3;
  const X a4 = x4 + x5, a5 = x4 - x5, a6 = x6 + x7, a7 = x6 - x7;
  const X b0 = a0 + a2, b2 = a0 - a2, b1 = a1 + a3, b3 = a1 - a3;
  const X b4 = a4 + a6, b6 = a4 - a6, b5 = a5 + a7, b7 = a5 - a7;
  x0 = b0 + b4;
  x4 = b0 - b4;
  x1 = b1 + b5;
  x5 = b1 - b5;
  x2 = b2 + b6;
  x6 = b2 - b6;
  x3 = b3 + b7;
  x7 = b3 - b7;
}

// One register-wide column of a radix-2/4/8 pass at distance h, starting at a.
template <class S>
struct Radix2 {
  static SQLAB_ALWAYS_INLINE void run(typename S::Elem* a, int64_t h) {
    const typename S::V x = S::load(a), y = S::load(a + h);
    S::store(a, x + y);
    S::store(a + h, x - y);
  }
};

template <class S>
struct Radix4 {
  static SQLAB_ALWAYS_INLINE void run(typename S::Elem* a, int64_t h) {
    using V = typename S::V;
    const V x0 = S::load(a), x1 = S::load(a + h), x2 = S::load(a + 2 * h), x3 = S::load(a + 3 * h);
    const V b0 = x0 + x1, b1 = x0 - x1, b2 = x2 + x3, b3 = x2 - x3;
    S::store(a, b0 + b2);
    S::store(a + h, b1 + b3);
    S::store(a + 2 * h, b0 - b2);
    S::store(a + 3 * h, b1 - b3);
  }
};

template <class S>
struct Radix8 {
  static SQLAB_ALWAYS_INLINE void run(typename S::Elem* a, int64_t h) {
    using V = typename S::V;
    V x0 = S::load(a), x1 = S::load(a + h), x2 = S::load(a + 2 * h), x3 = S::load(a + 3 * h),
      x4 = S::load(a + 4 * h), x5 = S::load(a + 5 * h), x6 = S::load(a + 6 * h),
      x7 = S::load(a + 7 * h);
    butterfly8(x0, x1, x2, x3, x4, x5, x6, x7);
    S::store(a, x0);
    S::store(a + h, x1);
    S::store(a + 2 * h, x2);
    S::store(a + 3 * h, x3);
    S::store(a + 4 * h, x4);
    S::store(a + 5 * h, x5);
    S::store(a + 6 * h, x6);
    S::store(a + 7 * h, x7);
  }
};

// A radix-R pass at distance h on p[0 .. len): groups of R h elements, h columns each. Columns
// go a full register at a time, then 16 bytes at a time (h = m 2^s is a multiple of 4), then
// one element at a time (only for n below one register).
template <template <class> class Op, int R, class S>
SQLAB_ALWAYS_INLINE void radix_pass(typename S::Elem* p, int64_t len, int64_t h) {
  using T = typename S::Elem;
  using S16 = Simd<T, 16>;
  using S1 = Simd<T, sizeof(T)>;
  for (int64_t base = 0; base < len; base += R * h) {
    T* a = p + base;
    int64_t i = 0;
    for (; i + S::W <= h; i += S::W) Op<S>::run(a + i, h);
    if constexpr (S::W > S16::W)
      for (; i + S16::W <= h; i += S16::W) Op<S16>::run(a + i, h);
    for (; i < h; ++i) Op<S1>::run(a + i, h);
  }
}

// Every stage at distances h_from, 2 h_from, ... < h_to on p[0 .. len) (len a multiple of
// h_to; h_to / h_from a power of two).
template <class S>
SQLAB_ALWAYS_INLINE void stages(typename S::Elem* p, int64_t len, int64_t h_from, int64_t h_to) {
  int64_t h = h_from;
  while (h * 8 <= h_to) {
    radix_pass<Radix8, 8, S>(p, len, h);
    h *= 8;
  }
  if (h * 4 <= h_to) {
    radix_pass<Radix4, 4, S>(p, len, h);
    h *= 4;
  }
  if (h * 2 <= h_to) radix_pass<Radix2, 2, S>(p, len, h);
}

// The m x m part: out (p x m) = in (p x m) H for one row (p runs of m channels). H is stored
// padded to `stride` >= m columns (zeros beyond m, stride a multiple of 16 elements), so every
// load of H is a whole register (rotations/simd_gemm.h).
template <class S>
SQLAB_ALWAYS_INLINE void base_multiply(const typename S::Elem* in, typename S::Elem* out,
                                       int64_t runs, const typename S::Elem* h, int64_t m,
                                       int64_t stride) {
  simd::small_gemm<S>(in, m, h, stride, m, out, m, runs, m, false);
}

template <class T>
struct RowJob {
  const T* in;
  T* out;        // may equal `in`
  int64_t n;     // row length = pow2 * unit
  int64_t unit;  // m: distance of the first butterfly stage, length of the runs H_m acts on
  const T* pre;  // per-channel input multiplier (scaled signs), or null: use `scale`
  T scale;
  const T* post;  // per-channel output multiplier (signs), or null
  const T* base;  // padded H_m (or H_m^T), unit x base_stride; null when unit == 1
  int64_t base_stride;
  bool base_first;  // H_m part before (inverse) or after (apply) the Walsh-Hadamard part
};

constexpr int64_t kBlockBytes = 16384;  // a block of a row that stays in L1 across its stages

// The Walsh-Hadamard part of one row: out = (in * pre or * scale) (S_p (x) I_unit), then * post.
template <class S>
SQLAB_ALWAYS_INLINE void walsh_hadamard_row(const typename S::Elem* in, typename S::Elem* out,
                                            int64_t n, int64_t unit, const typename S::Elem* pre,
                                            typename S::Elem scale_value,
                                            const typename S::Elem* post) {
  using T = typename S::Elem;
  using V = typename S::V;
  const V scale = S::splat(scale_value);
  if (unit == 1 && n >= S::W) {
    // n = 2^k >= W: everything in whole registers.
    const int64_t block = std::min<int64_t>(n, std::max<int64_t>(S::W, kBlockBytes / sizeof(T)));
    auto first = [&](int64_t j) {
      // The next row streams into cache while this one is transformed (measured: the
      // hardware prefetcher alone leaves ~25% of the time on the table here).
      __builtin_prefetch(in + n + j, 0, 3);
      V v = S::load(in + j) * (pre ? S::load(pre + j) : scale);
      in_register_stages<S>(v);
      return v;
    };
    for (int64_t b0 = 0; b0 < n; b0 += block) {
      if (block >= 8 * S::W) {
        // Eight registers at a time: the in-register stages, then distances W, 2W and 4W.
        for (int64_t j = b0; j < b0 + block; j += 8 * S::W) {
          V x0 = first(j), x1 = first(j + S::W), x2 = first(j + 2 * S::W),
            x3 = first(j + 3 * S::W), x4 = first(j + 4 * S::W), x5 = first(j + 5 * S::W),
            x6 = first(j + 6 * S::W), x7 = first(j + 7 * S::W);
          butterfly8(x0, x1, x2, x3, x4, x5, x6, x7);
          S::store(out + j, x0);
          S::store(out + j + S::W, x1);
          S::store(out + j + 2 * S::W, x2);
          S::store(out + j + 3 * S::W, x3);
          S::store(out + j + 4 * S::W, x4);
          S::store(out + j + 5 * S::W, x5);
          S::store(out + j + 6 * S::W, x6);
          S::store(out + j + 7 * S::W, x7);
        }
        stages<S>(out + b0, block, 8 * S::W, block);
      } else {
        for (int64_t j = b0; j < b0 + block; j += S::W) S::store(out + j, first(j));
        stages<S>(out + b0, block, S::W, block);
      }
    }
    stages<S>(out, n, block, n);
  } else {
    int64_t j = 0;
    if (pre) {
      for (; j + S::W <= n; j += S::W) {
        __builtin_prefetch(in + n + j, 0, 3);
        S::store(out + j, S::load(in + j) * S::load(pre + j));
      }
      for (; j < n; ++j) out[j] = in[j] * pre[j];
    } else {
      for (; j + S::W <= n; j += S::W) {
        __builtin_prefetch(in + n + j, 0, 3);
        S::store(out + j, S::load(in + j) * scale);
      }
      for (; j < n; ++j) out[j] = in[j] * scale_value;
    }
    stages<S>(out, n, unit, n);
  }
  if (post) {
    int64_t j = 0;
    for (; j + S::W <= n; j += S::W) S::store(out + j, S::load(out + j) * S::load(post + j));
    for (; j < n; ++j) out[j] *= post[j];
  }
}

// Rows [begin, end): the whole transform of each row while it is in L1/L2. `scratch` holds one
// row (apply with m > 1: Walsh-Hadamard into scratch, then H_m into out).
template <class T, int VB>
SQLAB_ALWAYS_INLINE void transform_rows(const RowJob<T>& job, int64_t begin, int64_t end,
                                        T* scratch) {
  using S = Simd<T, VB>;
  const int64_t n = job.n, m = job.unit;
  for (int64_t r = begin; r < end; ++r) {
    const T* in = job.in + r * n;
    T* out = job.out + r * n;
    if (!job.base) {
      walsh_hadamard_row<S>(in, out, n, 1, job.pre, job.scale, job.post);
    } else if (job.base_first) {
      base_multiply<S>(in, out, n / m, job.base, m, job.base_stride);
      walsh_hadamard_row<S>(out, out, n, m, job.pre, job.scale, job.post);
    } else {
      walsh_hadamard_row<S>(in, scratch, n, m, job.pre, job.scale, nullptr);
      base_multiply<S>(scratch, out, n / m, job.base, m, job.base_stride);
      // (apply has no output signs; kept general: a multiply-only pass, unit n = no stages)
      if (job.post) walsh_hadamard_row<S>(out, out, n, n, job.post, T(1), nullptr);
    }
  }
}

struct TransformRows {
  template <int VB, class T>
  static SQLAB_ALWAYS_INLINE void run(const RowJob<T>* job, int64_t begin, int64_t end, T* scratch) {
    transform_rows<T, VB>(*job, begin, end, scratch);
  }
};

template <class T>
void transform(const RowJob<T>& job, int64_t rows) {
  const int64_t grain = std::max<int64_t>(1, 32768 / job.n);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(job.base && !job.base_first ? job.n : 0);
    simd::run_simd<TransformRows>(&job, begin, end, scratch.data());
  });
}

double inverse_sqrt(int64_t n) { return 1.0 / std::sqrt(static_cast<double>(n)); }

void split_or_throw(int64_t n, int64_t* m, int64_t* p) {
  if (n >= 1 && hadamard_split(n, m, p)) return;
  hadamard_base_matrix(n);  // throws the error that lists the supported base orders
  throw config_error(fmt::format("hadamard: no Hadamard matrix of order {}", n));  // unreachable
}

at::Tensor base_matrix64(int64_t m) {
  const std::vector<int8_t> entries = hadamard_base_matrix(m);
  at::Tensor h = at::empty({m, m}, at::kDouble);
  double* p = h.data_ptr<double>();
  for (int64_t i = 0; i < m * m; ++i) p[i] = entries[i];
  return h;
}

}  // namespace

at::Tensor sylvester_matrix(int64_t p) {
  if (p < 1 || (p & (p - 1)) != 0)
    throw Error(fmt::format("hadamard: Sylvester order {} is not a power of two", p));
  at::Tensor h = at::empty({p, p}, at::kDouble);
  double* d = h.data_ptr<double>();
  at::parallel_for(0, p, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t j = 0; j < p; ++j) d[i * p + j] = (__builtin_popcountll(i & j) & 1) ? -1.0 : 1.0;
  });
  return h;
}

at::Tensor hadamard_matrix(int64_t n) {
  int64_t m = 1, p = 1;
  split_or_throw(n, &m, &p);
  return at::kron(sylvester_matrix(p), base_matrix64(m)) * inverse_sqrt(n);
}

at::Tensor random_signs(int64_t n, at::Generator generator) {
  return at::randint(0, 2, {n}, generator, at::kDouble) * 2.0 - 1.0;
}

HadamardRotation::HadamardRotation(int64_t n, const at::Tensor& signs, std::string description)
    : n_(n), description_(std::move(description)) {
  split_or_throw(n, &m_, &p_);
  base64_ = base_matrix64(m_);
  base_stride_ = (m_ + 15) / 16 * 16;  // a whole number of registers for every vector width
  for (int inverse = 0; inverse < 2; ++inverse) {
    at::Tensor padded = at::zeros({m_, base_stride_}, at::kDouble);
    padded.narrow(1, 0, m_).copy_(inverse ? base64_.t() : base64_);
    padded_base_[1][inverse] = padded;
    padded_base_[0][inverse] = padded.to(at::kFloat);
    base_[1][inverse] = (inverse ? base64_.t() : base64_).contiguous();
    base_[0][inverse] = base_[1][inverse].to(at::kFloat);
  }
  if (signs.defined()) {
    if (signs.numel() != n)
      throw Error(fmt::format("hadamard: {} signs given for order {}", signs.numel(), n));
    signs64_ = signs.to(at::kCPU, at::kDouble).reshape({n}).contiguous();
    if (!signs64_.abs().eq(1.0).all().item<bool>())
      throw Error("hadamard: signs must be +1 or -1");
    signs32_ = signs64_.to(at::kFloat);
    scaled_signs64_ = signs64_ * inverse_sqrt(n);
    scaled_signs32_ = scaled_signs64_.to(at::kFloat);
  }
  if (description_.empty())
    description_ = fmt::format("hadamard {} = 2^{} x {}{}", n, __builtin_ctzll(p_), m_,
                               signs.defined() ? ", random signs" : "");
}

at::Tensor HadamardRotation::apply(const at::Tensor& x) const {
  check_rotation_input(*this, x, "hadamard");
  return run(x, false);
}

at::Tensor HadamardRotation::apply_inverse(const at::Tensor& y) const {
  check_rotation_input(*this, y, "hadamard");
  return run(y, true);
}

at::Tensor HadamardRotation::run(const at::Tensor& x, bool inverse) const {
  const at::ScalarType dtype = x.scalar_type();
  if (!at::isFloatingType(dtype))
    throw Error(fmt::format("hadamard: expected a floating-point tensor, got {}",
                            c10::toString(dtype)));
  if (!x.is_cpu()) return run_on_device(x, inverse);
  const bool is_double = dtype == at::kDouble;
  const at::Tensor input = (is_double || dtype == at::kFloat ? x : x.to(at::kFloat)).contiguous();
  const int64_t rows = input.numel() / n_;
  at::Tensor result = at::empty({rows, n_}, input.options());
  // apply: x R = (x * s / sqrt(n)) (S_p (x) H_m); inverse: y R^T = (y / sqrt(n)) (S_p (x) H_m^T) * s.
  const at::Tensor none;
  const at::Tensor& pre = inverse || !has_signs() ? none : (is_double ? scaled_signs64_ : scaled_signs32_);
  const at::Tensor& post = !inverse || !has_signs() ? none : (is_double ? signs64_ : signs32_);
  const at::Tensor& base = padded_base_[is_double][inverse];
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    const RowJob<T> job{input.data_ptr<T>(),
                        result.data_ptr<T>(),
                        n_,
                        m_,
                        pre.defined() ? pre.data_ptr<T>() : nullptr,
                        static_cast<T>(inverse_sqrt(n_)),
                        post.defined() ? post.data_ptr<T>() : nullptr,
                        m_ > 1 ? base.data_ptr<T>() : nullptr,
                        base_stride_,
                        inverse};
    transform(job, rows);
  };
  if (rows > 0) {
    if (is_double)
      launch(0.0);
    else
      launch(0.0f);
  }
  result = result.view(x.sizes());
  return result.scalar_type() == dtype ? result : result.to(dtype);
}

at::Tensor HadamardRotation::run_on_device(const at::Tensor& x, bool inverse) const {
  if (x.is_cuda() && x.scalar_type() != at::kDouble) {
    const at::Tensor result = run_cuda(x, inverse);
    if (result.defined()) return result;
  }
  return apply_portable(x, inverse);
}

at::Tensor HadamardRotation::apply_portable(const at::Tensor& x, bool inverse) const {
  check_rotation_input(*this, x, "hadamard");
  const at::ScalarType dtype = x.scalar_type();
  const bool is_double = dtype == at::kDouble;
  at::Tensor y = (is_double ? x : x.to(at::kFloat)).reshape({-1, n_});
  const int64_t rows = y.size(0);
  // apply: x R = (x * s / sqrt(n)) (S_p (x) H_m); inverse: y R^T = (y / sqrt(n)) (S_p (x) H_m^T) * s.
  if (!inverse && has_signs())
    y = y * on_device_.on_device_of(is_double ? scaled_signs64_ : scaled_signs32_, y);
  else
    y = y * inverse_sqrt(n_);
  for (int64_t h = 1; h < p_; h *= 2) {  // S_p (x) I_m: butterflies at distances m 2^s
    const at::Tensor pairs = y.view({rows, p_ / (2 * h), 2, h * m_});
    const at::Tensor a = pairs.select(2, 0), b = pairs.select(2, 1);
    y = at::stack({a + b, a - b}, 2).view({rows, n_});
  }
  if (m_ > 1)  // I_p (x) H_m: one GEMM over runs of m channels
    y = at::matmul(y.view({rows * p_, m_}), on_device_.on_device_of(base_[is_double][inverse], y)).view({rows, n_});
  if (inverse && has_signs()) y = y * on_device_.on_device_of(is_double ? signs64_ : signs32_, y);
  y = y.view(x.sizes());
  return y.scalar_type() == dtype ? y : y.to(dtype);
}

#ifdef SQLAB_CUDA
at::Tensor HadamardRotation::run_cuda(const at::Tensor& x, bool inverse) const {
  const at::ScalarType dtype = x.scalar_type();
  const cuda::RowDtype row_dtype = dtype == at::kHalf       ? cuda::RowDtype::float16
                                   : dtype == at::kBFloat16 ? cuda::RowDtype::bfloat16
                                                            : cuda::RowDtype::float32;
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) return {};
  if (n_ > cuda::max_row_length(x.device().index())) return {};  // beyond shared memory
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = x.contiguous();
  const int64_t rows = input.numel() / n_;
  const bool kernel_base = m_ > 1 && m_ <= cuda::kMaxKernelBase;
  // A larger base is a GEMM (tensor cores) before the kernel (inverse, where the signs come
  // last) or after it (apply); the two parts commute.
  const at::Tensor gemm_base =
      m_ > 1 && !kernel_base ? on_device_.on_device_of(base_[0][inverse], input).to(dtype) : at::Tensor();
  const at::Tensor kernel_in = gemm_base.defined() && inverse
                                   ? at::matmul(input.view({rows * p_, m_}), gemm_base).view({rows, n_})
                                   : input;
  at::Tensor result = at::empty({rows, n_}, input.options());
  const at::Tensor pre = !inverse && has_signs() ? on_device_.on_device_of(scaled_signs32_, input) : at::Tensor();
  const at::Tensor post = inverse && has_signs() ? on_device_.on_device_of(signs32_, input) : at::Tensor();
  const at::Tensor base = kernel_base ? on_device_.on_device_of(base_[0][inverse], input) : at::Tensor();
  const cuda::WalshHadamardJob job{kernel_in.data_ptr(),
                                   result.data_ptr(),
                                   rows,
                                   n_,
                                   m_,
                                   pre.defined() ? pre.data_ptr<float>() : nullptr,
                                   static_cast<float>(inverse_sqrt(n_)),
                                   post.defined() ? post.data_ptr<float>() : nullptr,
                                   base.defined() ? base.data_ptr<float>() : nullptr,
                                   row_dtype,
                                   at::cuda::getCurrentCUDAStream(x.device().index()).stream()};
  const std::string error = cuda::walsh_hadamard(job);
  if (!error.empty()) throw Error(fmt::format("hadamard: CUDA kernel failed at n = {}: {}", n_, error));
  if (gemm_base.defined() && !inverse)
    result = at::matmul(result.view({rows * p_, m_}), gemm_base).view({rows, n_});
  return result.view(x.sizes());
}
#else
at::Tensor HadamardRotation::run_cuda(const at::Tensor&, bool) const { return {}; }
#endif

at::Tensor HadamardRotation::dense() const {
  at::Tensor h = at::kron(sylvester_matrix(p_), base64_) * inverse_sqrt(n_);
  if (has_signs()) h = signs64_.unsqueeze(1) * h;
  return h;
}

std::map<std::string, at::Tensor> HadamardRotation::factors() const {
  if (n_ <= kDenseFactorLimit) return {{"R", dense()}};
  return {{"H_base", base64_},
          {"signs", (has_signs() ? signs64_ : at::ones({n_}, at::kDouble)).view({1, n_})}};
}

}  // namespace sqlab
