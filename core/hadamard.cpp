#include "core/hadamard.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/hadamard_matrices.h"

// The kernel passes GCC vector-extension types between always-inline helpers; whether they
// are ymm/zmm or pairs of xmm registers depends on the target each entry point is built for.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace sqlab {
namespace {

#define SQLAB_ALWAYS_INLINE inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------------
// Fast Walsh-Hadamard kernel.
//
// One row of n = p * unit values (p = 2^k) is transformed along the p axis: butterflies pair
// elements unit * 2^s apart, s = 0..k-1 (unit = m, the base order; unit = 1 for pure powers of
// two). Per row: a first pass reads the input (times the scaled signs or the scale), and for
// unit == 1 already does the butterflies inside one SIMD register (distances 1 .. W/2, lane
// shuffles); the remaining stages run as radix-8/4/2 passes, first inside L1-sized blocks of the
// row, then across blocks. Rows are independent (at::parallel_for over rows).

template <class T>
struct IntOf;
template <>
struct IntOf<float> {
  using type = int32_t;
};
template <>
struct IntOf<double> {
  using type = int64_t;
};

template <class T, int VB>
struct Simd {
  using Elem = T;
  using IElem = typename IntOf<T>::type;
  static constexpr int W = VB / static_cast<int>(sizeof(T));
  typedef T V __attribute__((vector_size(VB)));
  typedef IElem I __attribute__((vector_size(VB)));

  static SQLAB_ALWAYS_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static SQLAB_ALWAYS_INLINE void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static SQLAB_ALWAYS_INLINE V splat(T a) { return V{} + a; }
};

// Butterfly between lanes l and l ^ H of one register: lane l gets x[l & ~H] +- x[l | H].
template <class S, int H, size_t... L>
SQLAB_ALWAYS_INLINE void lane_butterfly(typename S::V& v, std::index_sequence<L...>) {
  using IElem = typename S::IElem;
  using Elem = typename S::Elem;
  const typename S::I partner = {static_cast<IElem>(L ^ H)...};
  // Sign bit set on the lanes that take (partner - own).
  const typename S::V neg = {((L & H) ? Elem(-0.0) : Elem(0.0))...};
  const typename S::V t = __builtin_shuffle(v, partner);
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

// Radix-2 pass: stage at distance h on p[0 .. len).
template <class S>
SQLAB_ALWAYS_INLINE void radix2(typename S::Elem* p, int64_t len, int64_t h) {
  using V = typename S::V;
  for (int64_t base = 0; base < len; base += 2 * h) {
    typename S::Elem* a = p + base;
    typename S::Elem* b = a + h;
    int64_t i = 0;
    for (; i + S::W <= h; i += S::W) {
      const V x = S::load(a + i), y = S::load(b + i);
      S::store(a + i, x + y);
      S::store(b + i, x - y);
    }
    for (; i < h; ++i) {
      const auto x = a[i], y = b[i];
      a[i] = x + y;
      b[i] = x - y;
    }
  }
}

// Radix-4 pass: stages at distances h and 2h.
template <class S>
SQLAB_ALWAYS_INLINE void radix4(typename S::Elem* p, int64_t len, int64_t h) {
  using V = typename S::V;
  for (int64_t base = 0; base < len; base += 4 * h) {
    typename S::Elem* a = p + base;
    int64_t i = 0;
    for (; i + S::W <= h; i += S::W) {
      const V x0 = S::load(a + i), x1 = S::load(a + h + i);
      const V x2 = S::load(a + 2 * h + i), x3 = S::load(a + 3 * h + i);
      const V b0 = x0 + x1, b1 = x0 - x1, b2 = x2 + x3, b3 = x2 - x3;
      S::store(a + i, b0 + b2);
      S::store(a + h + i, b1 + b3);
      S::store(a + 2 * h + i, b0 - b2);
      S::store(a + 3 * h + i, b1 - b3);
    }
    for (; i < h; ++i) {
      const auto x0 = a[i], x1 = a[h + i], x2 = a[2 * h + i], x3 = a[3 * h + i];
      const auto b0 = x0 + x1, b1 = x0 - x1, b2 = x2 + x3, b3 = x2 - x3;
      a[i] = b0 + b2;
      a[h + i] = b1 + b3;
      a[2 * h + i] = b0 - b2;
      a[3 * h + i] = b1 - b3;
    }
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

// Radix-8 pass: stages at distances h, 2h and 4h.
template <class S>
SQLAB_ALWAYS_INLINE void radix8(typename S::Elem* p, int64_t len, int64_t h) {
  using V = typename S::V;
  using T = typename S::Elem;
  for (int64_t base = 0; base < len; base += 8 * h) {
    T* a = p + base;
    int64_t i = 0;
    for (; i + S::W <= h; i += S::W) {
      V x0 = S::load(a + i), x1 = S::load(a + h + i), x2 = S::load(a + 2 * h + i),
        x3 = S::load(a + 3 * h + i), x4 = S::load(a + 4 * h + i), x5 = S::load(a + 5 * h + i),
        x6 = S::load(a + 6 * h + i), x7 = S::load(a + 7 * h + i);
      butterfly8(x0, x1, x2, x3, x4, x5, x6, x7);
      S::store(a + i, x0);
      S::store(a + h + i, x1);
      S::store(a + 2 * h + i, x2);
      S::store(a + 3 * h + i, x3);
      S::store(a + 4 * h + i, x4);
      S::store(a + 5 * h + i, x5);
      S::store(a + 6 * h + i, x6);
      S::store(a + 7 * h + i, x7);
    }
    for (; i < h; ++i) {
      T x0 = a[i], x1 = a[h + i], x2 = a[2 * h + i], x3 = a[3 * h + i], x4 = a[4 * h + i],
        x5 = a[5 * h + i], x6 = a[6 * h + i], x7 = a[7 * h + i];
      butterfly8(x0, x1, x2, x3, x4, x5, x6, x7);
      a[i] = x0;
      a[h + i] = x1;
      a[2 * h + i] = x2;
      a[3 * h + i] = x3;
      a[4 * h + i] = x4;
      a[5 * h + i] = x5;
      a[6 * h + i] = x6;
      a[7 * h + i] = x7;
    }
  }
}

// Every stage at distances h_from, 2 h_from, ... < h_to on p[0 .. len) (len a multiple of
// h_to; h_to / h_from a power of two).
template <class S>
SQLAB_ALWAYS_INLINE void stages(typename S::Elem* p, int64_t len, int64_t h_from, int64_t h_to) {
  int64_t h = h_from;
  while (h * 8 <= h_to) {
    radix8<S>(p, len, h);
    h *= 8;
  }
  if (h * 4 <= h_to) {
    radix4<S>(p, len, h);
    h *= 4;
  }
  if (h * 2 <= h_to) radix2<S>(p, len, h);
}

template <class T>
struct RowJob {
  const T* in;
  T* out;        // may equal `in`
  int64_t n;     // row length = pow2 * unit
  int64_t unit;  // distance of the first butterfly stage (m)
  const T* pre;  // per-channel input multiplier (scaled signs), or null: use `scale`
  T scale;
  const T* post;  // per-channel output multiplier (signs), or null
};

constexpr int64_t kBlockBytes = 16384;  // a block of a row that stays in L1 across its stages

template <class S>
SQLAB_ALWAYS_INLINE void transform_row(const RowJob<typename S::Elem>& job, int64_t row) {
  using T = typename S::Elem;
  using V = typename S::V;
  const int64_t n = job.n;
  const T* in = job.in + row * n;
  T* out = job.out + row * n;
  const V scale = S::splat(job.scale);
  if (job.unit == 1 && n >= S::W) {
    // n = 2^k >= W: everything in whole registers.
    const int64_t block = std::min<int64_t>(n, std::max<int64_t>(S::W, kBlockBytes / sizeof(T)));
    const T* pre = job.pre;
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
    if (job.pre) {
      for (; j + S::W <= n; j += S::W) {
        __builtin_prefetch(in + n + j, 0, 3);
        S::store(out + j, S::load(in + j) * S::load(job.pre + j));
      }
      for (; j < n; ++j) out[j] = in[j] * job.pre[j];
    } else {
      for (; j + S::W <= n; j += S::W) {
        __builtin_prefetch(in + n + j, 0, 3);
        S::store(out + j, S::load(in + j) * scale);
      }
      for (; j < n; ++j) out[j] = in[j] * job.scale;
    }
    stages<S>(out, n, job.unit, n);
  }
  if (job.post) {
    int64_t j = 0;
    for (; j + S::W <= n; j += S::W) S::store(out + j, S::load(out + j) * S::load(job.post + j));
    for (; j < n; ++j) out[j] *= job.post[j];
  }
}

template <class T, int VB>
SQLAB_ALWAYS_INLINE void transform_rows(const RowJob<T>& job, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) transform_row<Simd<T, VB>>(job, r);
}

// One entry point per instruction set; the best one the CPU supports is picked at run time
// (the project is built for the baseline x86-64 target).
#if defined(__x86_64__) && defined(__GNUC__)
#define SQLAB_HADAMARD_X86 1
__attribute__((target("avx512f"))) void rows_avx512(const RowJob<float>& job, int64_t b, int64_t e) {
  transform_rows<float, 64>(job, b, e);
}
__attribute__((target("avx512f"))) void rows_avx512(const RowJob<double>& job, int64_t b, int64_t e) {
  transform_rows<double, 64>(job, b, e);
}
__attribute__((target("avx2"))) void rows_avx2(const RowJob<float>& job, int64_t b, int64_t e) {
  transform_rows<float, 32>(job, b, e);
}
__attribute__((target("avx2"))) void rows_avx2(const RowJob<double>& job, int64_t b, int64_t e) {
  transform_rows<double, 32>(job, b, e);
}
#endif
template <class T>
void rows_generic(const RowJob<T>& job, int64_t b, int64_t e) {
  transform_rows<T, 16>(job, b, e);
}

enum class Isa { generic, avx2, avx512 };

Isa detect_isa() {
#ifdef SQLAB_HADAMARD_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2")) return Isa::avx2;
#endif
  return Isa::generic;
}

template <class T>
void transform(const RowJob<T>& job, int64_t rows) {
  static const Isa isa = detect_isa();
  const int64_t grain = std::max<int64_t>(1, 32768 / job.n);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    switch (isa) {
#ifdef SQLAB_HADAMARD_X86
      case Isa::avx512:
        rows_avx512(job, begin, end);
        return;
      case Isa::avx2:
        rows_avx2(job, begin, end);
        return;
#endif
      default:
        rows_generic(job, begin, end);
    }
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
  base32_ = base64_.to(at::kFloat);
  base_t64_ = base64_.t().contiguous();
  base_t32_ = base_t64_.to(at::kFloat);
  if (signs.defined()) {
    if (signs.numel() != n)
      throw Error(fmt::format("hadamard: {} signs given for order {}", signs.numel(), n));
    signs64_ = signs.to(at::kDouble).reshape({n}).contiguous();
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

namespace {

template <class T>
void transform_typed(const at::Tensor& in, at::Tensor& out, int64_t unit, const at::Tensor& pre,
                     double scale, const at::Tensor& post) {
  RowJob<T> job{in.data_ptr<T>(),
                out.data_ptr<T>(),
                in.size(1),
                unit,
                pre.defined() ? pre.data_ptr<T>() : nullptr,
                static_cast<T>(scale),
                post.defined() ? post.data_ptr<T>() : nullptr};
  transform(job, in.size(0));
}

}  // namespace

at::Tensor HadamardRotation::run(const at::Tensor& x, bool inverse) const {
  const at::ScalarType dtype = x.scalar_type();
  if (!at::isFloatingType(dtype))
    throw Error(fmt::format("hadamard: expected a floating-point tensor, got {}",
                            c10::toString(dtype)));
  const bool is_double = dtype == at::kDouble;
  const at::Tensor input = (is_double || dtype == at::kFloat ? x : x.to(at::kFloat)).contiguous();
  const int64_t rows = input.numel() / n_;
  const at::Tensor flat = input.view({rows, n_});
  const at::Tensor& base = is_double ? (inverse ? base_t64_ : base64_) : (inverse ? base_t32_ : base32_);
  const at::Tensor pre = inverse || !has_signs() ? at::Tensor()
                                                : (is_double ? scaled_signs64_ : scaled_signs32_);
  const at::Tensor post = !inverse || !has_signs() ? at::Tensor() : (is_double ? signs64_ : signs32_);
  const double scale = inverse_sqrt(n_);

  auto fwht = [&](const at::Tensor& in, at::Tensor& out) {
    if (rows == 0) return;
    if (is_double)
      transform_typed<double>(in, out, m_, pre, scale, post);
    else
      transform_typed<float>(in, out, m_, pre, scale, post);
  };

  at::Tensor result;
  if (m_ == 1) {
    result = at::empty_like(flat);
    fwht(flat, result);
  } else if (!inverse) {
    // (x * s) (H_p (x) H_m) / sqrt(n): Walsh-Hadamard on the p axis, then H_m on runs of m.
    at::Tensor tmp = at::empty_like(flat);
    fwht(flat, tmp);
    result = at::mm(tmp.view({rows * p_, m_}), base).view({rows, n_});
  } else {
    // y (H_p (x) H_m^T) / sqrt(n) * s: H_m^T first, then Walsh-Hadamard (and signs) in place.
    result = at::mm(flat.view({rows * p_, m_}), base).view({rows, n_});
    fwht(result, result);
  }
  result = result.view(x.sizes());
  return result.scalar_type() == dtype ? result : result.to(dtype);
}

at::Tensor HadamardRotation::dense() const {
  at::Tensor h = at::kron(sylvester_matrix(p_), base64_) * inverse_sqrt(n_);
  if (has_signs()) h = signs64_.unsqueeze(1) * h;
  return h;
}

std::map<std::string, at::Tensor> HadamardRotation::factors() const {
  if (n_ <= kDenseFactorLimit) return {{"R", dense()}};
  return {{"H_pow2", sylvester_matrix(p_)},
          {"H_base", base64_},
          {"signs", (has_signs() ? signs64_ : at::ones({n_}, at::kDouble)).view({1, n_})}};
}

}  // namespace sqlab
