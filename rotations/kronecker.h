// Kronecker-structured rotations R = R1 (x) R2 (method-notes.md section 3).
//
// Row vectors: a token x (1 x n), n = n1 * n2, is read as M = x.reshape(n1, n2) (row-major)
// and x (R1 (x) R2) = vec(R1^T M R2). Applying R costs O(n (n1 + n2)) per token instead of
// O(n^2). The factors must be orthogonal (apply_inverse uses their transposes).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/rotation.h"
#include "rotations/device_copies.h"

namespace sqlab {
}

namespace sqlab {

class KroneckerRotation : public Rotation {
 public:
  // r1: n1 x n1, r2: n2 x n2, any floating dtype (kept as float64 masters and float32 copies).
  KroneckerRotation(const at::Tensor& r1, const at::Tensor& r2,
                    std::string description = "kronecker");

  int64_t size() const override { return n1_ * n2_; }
  // x R for x of shape (..., n): float32 and float64 natively, other floating dtypes through
  // float32. Not differentiable (computed block-wise into preallocated buffers).
  at::Tensor apply(const at::Tensor& x) const override;
  // y R^T = vec(R1 M R2^T).
  at::Tensor apply_inverse(const at::Tensor& y) const override;
  // kron(R1, R2), float64.
  at::Tensor dense() const override;
  // {"R1": r1, "R2": r2} (float64).
  std::map<std::string, at::Tensor> factors() const override;
  std::string describe() const override { return description_; }

  int64_t n1() const { return n1_; }
  int64_t n2() const { return n2_; }
  const at::Tensor& r1() const { return r1_64_; }  // float64
  const at::Tensor& r2() const { return r2_64_; }  // float64

 private:
  at::Tensor run(const at::Tensor& x, bool inverse) const;

  int64_t n1_ = 0, n2_ = 0;
  at::Tensor r1_64_, r2_64_;
  // Per dtype: left factor (applied as L M, n1 x n1) and right factor (M Q, n2 x n2):
  // apply: L = R1^T, Q = R2; inverse: L = R1, Q = R2^T. Index [double][inverse].
  at::Tensor left_[2][2], right_[2][2];
  at::Tensor right_padded_[2][2];  // right_, zero-padded to n2 x (n2 rounded up to 16)
  DeviceCopies on_device_;
  std::string description_;
};

// Every (n1, n2) with n1 * n2 == n, n1 > 1 and n2 > 1, in increasing n1
// (4096 -> (2, 2048), (4, 1024), ..., (2048, 2)); empty for primes and n < 4.
std::vector<std::pair<int64_t, int64_t>> kronecker_factorizations(int64_t n);

// The most balanced acceptable nontrivial factorization: among the pairs of
// kronecker_factorizations(n) for which `acceptable(n1, n2)` holds (all of them when it is
// empty), the one with the smallest max(n1, n2), n1 <= n2 on ties. Without a predicate this is
// the largest divisor n1 <= sqrt(n): 1024 -> 32 x 32, 4096 -> 64 x 64. With "n2 has a Hadamard
// matrix": 172 -> 43 x 4, 1376 -> 43 x 32. Throws sqlab::Error (config kind) naming n when no
// pair is acceptable (or n has no nontrivial factorization).
std::pair<int64_t, int64_t> balanced_factorization(
    int64_t n, const std::function<bool(int64_t n1, int64_t n2)>& acceptable = {});

}  // namespace sqlab
