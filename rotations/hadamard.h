// Normalized Hadamard rotations of order n = 2^k * m (QuaRot-style), applied with a fast
// Walsh-Hadamard transform on the 2^k part and a small matmul on the m part.
//
// Convention (dense() matches apply() exactly):
//   H_n = (H_{2^k} (x) H_m) / sqrt(n),
// with H_{2^k} the Sylvester matrix (entry (i, j) = (-1)^popcount(i & j), symmetric) and H_m
// the base matrix of hadamard_base_matrix(m) (+-1 entries, not necessarily symmetric). In the
// Kronecker convention of rotations/kronecker.h, a token x (1 x n) is read as M = x.reshape(2^k, m),
// row-major, and x H_n = vec(H_{2^k} M H_m) / sqrt(n): the m part acts on contiguous runs of m
// channels (one GEMM for a whole block of tokens), and the Walsh-Hadamard butterflies pair
// channels m * 2^s apart. (QuaRot orders the factors the other way round, H_m (x) H_{2^k}; the
// two differ by a permutation of channels and are equally valid Hadamard rotations.)
//
// With random signs, R = D H_n, D = diag(s), s in {+1, -1}^n: x R = (x * s) H_n, and
// R^-1 = R^T = H_n^T D (H_n^T = (H_{2^k} (x) H_m^T) / sqrt(n)).
//
// apply()/apply_inverse() work on (..., n) tensors of float32 or float64 (other floating
// dtypes are computed in float32 and cast back). They are not differentiable (raw kernels).
// On the CPU they run the SIMD kernel below; on a CUDA device (a SQLAB_CUDA build) the CUDA
// kernel of rotations/hadamard_cuda.h in the tensor's own dtype (float32, float16, bfloat16;
// float32 arithmetic in shared memory); elsewhere, and for float64 on a device, the same
// transform in ATen operations (apply_portable).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

#include "core/rotation.h"
#include "rotations/device_copies.h"
#include "rotations/simd.h"

namespace sqlab {

// SimdLevel, simd_level(), set_simd_level(): rotations/simd.h.

// The dense normalized Hadamard matrix (H_{2^k} (x) H_m) / sqrt(n), float64, n x n.
// Unsupported n throws the sqlab::Error of hadamard_base_matrix (it lists the base orders).
at::Tensor hadamard_matrix(int64_t n);

// The dense Sylvester matrix of order p = 2^k (entries +-1, not normalized), float64.
at::Tensor sylvester_matrix(int64_t p);

// n random signs (+1/-1, float64) drawn from `generator`.
at::Tensor random_signs(int64_t n, at::Generator generator);

class HadamardRotation : public Rotation {
 public:
  // `signs`: optional (undefined tensor = none), n entries of +1/-1 (any dtype).
  // Throws sqlab::Error (config kind) when n has no Hadamard matrix of the form 2^k * m.
  explicit HadamardRotation(int64_t n, const at::Tensor& signs = at::Tensor(),
                            std::string description = "");

  int64_t size() const override { return n_; }
  at::Tensor apply(const at::Tensor& x) const override;
  at::Tensor apply_inverse(const at::Tensor& y) const override;
  at::Tensor dense() const override;
  // The same transform in ATen operations on x's device (log2(p) butterfly passes and one
  // GEMM): what a device without sqlab's kernels runs, and what the tests compare the
  // kernels with. float64 stays float64, other dtypes are computed in float32.
  at::Tensor apply_portable(const at::Tensor& x, bool inverse = false) const;
  // {"R": dense()} for n <= kDenseFactorLimit; above it (a dense 28672 x 28672 float64 matrix
  // is 6.6 GB) the compact form {"H_base": (m x m, +-1), "signs": (1 x n, all +1 without
  // signs)}, from which R = diag(signs) (S_p (x) H_base) / sqrt(n), p = n / m, S_p the
  // Sylvester matrix (sylvester_matrix(p): entry (i, j) = (-1)^popcount(i & j)).
  std::map<std::string, at::Tensor> factors() const override;
  std::string describe() const override { return description_; }

  static constexpr int64_t kDenseFactorLimit = 8192;

  int64_t base_order() const { return m_; }   // m
  int64_t pow2_order() const { return p_; }   // 2^k
  bool has_signs() const { return signs64_.defined(); }
  const at::Tensor& signs() const { return signs64_; }  // float64, undefined without signs

 private:
  at::Tensor run(const at::Tensor& x, bool inverse) const;
  at::Tensor run_on_device(const at::Tensor& x, bool inverse) const;
  at::Tensor run_cuda(const at::Tensor& x, bool inverse) const;  // undefined: not taken

  int64_t n_ = 0, m_ = 1, p_ = 1;
  at::Tensor base64_;                     // H_m (+-1), m x m, float64
  // H_m (apply) and H_m^T (inverse), +-1, zero-padded to m x base_stride_ for the kernel;
  // index [double][inverse].
  at::Tensor padded_base_[2][2];
  int64_t base_stride_ = 0;
  at::Tensor signs64_, signs32_;          // s (+-1)
  at::Tensor scaled_signs64_, scaled_signs32_;  // s / sqrt(n)
  at::Tensor base_[2][2];                 // H_m and H_m^T, contiguous, [double][inverse]
  DeviceCopies on_device_;                // the parameters above on a tensor's device
  std::string description_;
};

}  // namespace sqlab
