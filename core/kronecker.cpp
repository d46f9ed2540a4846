#include "core/kronecker.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace sqlab {
namespace {

at::Tensor checked_factor(const at::Tensor& r, const char* name) {
  if (!r.defined() || r.dim() != 2 || r.size(0) != r.size(1) || r.size(0) < 1)
    throw Error(fmt::format("kronecker rotation: factor {} must be a square matrix, got [{}]", name,
                            r.defined() ? fmt::format("{}", fmt::join(r.sizes(), ", ")) : "undefined"));
  if (!at::isFloatingType(r.scalar_type()))
    throw Error(fmt::format("kronecker rotation: factor {} must be floating point", name));
  return r.to(at::kDouble).contiguous();
}

// Tokens are processed in chunks of about this many elements, so that the intermediate
// layouts of a chunk stay in L2 (three buffers of this size per thread).
constexpr int64_t kChunkElements = 1 << 16;

// Copies a (a, b, c) block into (b, a, c) order: contiguous runs of c elements.
template <class T>
void swap_outer_axes(const T* src, T* dst, int64_t a, int64_t b, int64_t c) {
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j) {
      const T* s = src + (i * b + j) * c;
      T* d = dst + (j * a + i) * c;
      if (c >= 16)
        std::memcpy(d, s, c * sizeof(T));
      else
        for (int64_t k = 0; k < c; ++k) d[k] = s[k];
    }
}

// out (T x n1 x n2) = L M Q for every token M (n1 x n2) of x. Per chunk of tc tokens:
//   Y = M Q as one (tc*n1, n2) x (n2, n2) GEMM      (rows ordered (t, i))
//   S = Y reordered to (i, t): an (n1, tc*n2) matrix  (runs of n2 elements)
//   U = L S as one (n1, n1) x (n1, tc*n2) GEMM
//   out = U reordered back to (t, i).
template <class T>
void kronecker_apply(const at::Tensor& x, at::Tensor& out, const at::Tensor& left,
                     const at::Tensor& right, int64_t n1, int64_t n2) {
  const int64_t n = n1 * n2;
  const int64_t tokens = x.size(0);
  const int64_t chunk = std::max<int64_t>(1, std::min(tokens, kChunkElements / n));
  const int64_t chunks = (tokens + chunk - 1) / chunk;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const auto options = x.options();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor buffers = at::empty({3, chunk * n}, options);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t t0 = c * chunk, tc = std::min(chunk, tokens - t0);
      at::Tensor y = buffers[0].narrow(0, 0, tc * n).view({tc * n1, n2});
      at::Tensor s = buffers[1].narrow(0, 0, tc * n).view({n1, tc * n2});
      at::Tensor u = buffers[2].narrow(0, 0, tc * n).view({n1, tc * n2});
      at::mm_out(y, x.narrow(0, t0, tc).view({tc * n1, n2}), right);
      swap_outer_axes(y.data_ptr<T>(), s.data_ptr<T>(), tc, n1, n2);
      at::mm_out(u, left, s);
      swap_outer_axes(u.data_ptr<T>(), op + t0 * n, n1, tc, n2);
    }
  });
}

}  // namespace

KroneckerRotation::KroneckerRotation(const at::Tensor& r1, const at::Tensor& r2,
                                     std::string description)
    : description_(std::move(description)) {
  r1_64_ = checked_factor(r1, "R1");
  r2_64_ = checked_factor(r2, "R2");
  n1_ = r1_64_.size(0);
  n2_ = r2_64_.size(0);
  for (int d = 0; d < 2; ++d) {
    const at::ScalarType dtype = d ? at::kDouble : at::kFloat;
    left_[d][0] = r1_64_.t().contiguous().to(dtype);  // apply: R1^T M R2
    right_[d][0] = r2_64_.to(dtype);
    left_[d][1] = r1_64_.to(dtype);  // inverse: R1 M R2^T
    right_[d][1] = r2_64_.t().contiguous().to(dtype);
  }
}

at::Tensor KroneckerRotation::apply(const at::Tensor& x) const {
  check_rotation_input(*this, x, "kronecker rotation");
  return run(x, false);
}

at::Tensor KroneckerRotation::apply_inverse(const at::Tensor& y) const {
  check_rotation_input(*this, y, "kronecker rotation");
  return run(y, true);
}

at::Tensor KroneckerRotation::run(const at::Tensor& x, bool inverse) const {
  const at::ScalarType dtype = x.scalar_type();
  if (!at::isFloatingType(dtype))
    throw Error(fmt::format("kronecker rotation: expected a floating-point tensor, got {}",
                            c10::toString(dtype)));
  const bool is_double = dtype == at::kDouble;
  const at::Tensor input = (is_double || dtype == at::kFloat ? x : x.to(at::kFloat)).contiguous();
  const int64_t n = size();
  const int64_t tokens = input.numel() / n;
  const at::Tensor flat = input.view({tokens, n});
  const at::Tensor& left = left_[is_double][inverse];
  const at::Tensor& right = right_[is_double][inverse];

  at::Tensor result;
  if (n1_ == 1) {
    result = at::mm(flat, right * left);  // left is the 1 x 1 factor
  } else if (n2_ == 1) {
    result = at::mm(flat, left.t() * right);
  } else {
    result = at::empty_like(flat);
    if (tokens > 0) {
      if (is_double)
        kronecker_apply<double>(flat, result, left, right, n1_, n2_);
      else
        kronecker_apply<float>(flat, result, left, right, n1_, n2_);
    }
  }
  result = result.view(x.sizes());
  return result.scalar_type() == dtype ? result : result.to(dtype);
}

at::Tensor KroneckerRotation::dense() const { return at::kron(r1_64_, r2_64_); }

std::map<std::string, at::Tensor> KroneckerRotation::factors() const {
  return {{"R1", r1_64_}, {"R2", r2_64_}};
}

std::vector<std::pair<int64_t, int64_t>> kronecker_factorizations(int64_t n) {
  std::vector<std::pair<int64_t, int64_t>> result;
  for (int64_t n1 = 2; n1 <= n / 2; ++n1)
    if (n % n1 == 0) result.emplace_back(n1, n / n1);
  return result;
}

std::pair<int64_t, int64_t> balanced_factorization(
    int64_t n, const std::function<bool(int64_t n1, int64_t n2)>& acceptable) {
  std::pair<int64_t, int64_t> best{0, 0};
  int64_t best_max = std::numeric_limits<int64_t>::max();
  for (const auto& [n1, n2] : kronecker_factorizations(n)) {
    if (acceptable && !acceptable(n1, n2)) continue;
    const int64_t larger = std::max(n1, n2);
    if (larger < best_max) {  // increasing n1: the first of a tie has n1 <= n2
      best = {n1, n2};
      best_max = larger;
    }
  }
  if (best_max == std::numeric_limits<int64_t>::max())
    throw config_error(fmt::format(
        "kronecker: no acceptable factorization n1 x n2 of n = {} (n1, n2 > 1; {} candidates)", n,
        kronecker_factorizations(n).size()));
  return best;
}

}  // namespace sqlab
