// A fitted rotation R (n x n, orthogonal) acting on row vectors: a token x becomes x R,
// and a weight W (C_out x n) becomes W R, so (X R)(W R)^T = X W^T. Implementations
// keep their own fast form (dense, Kronecker, Walsh-Hadamard, ...) behind this one
// interface (rotations/); dense() materializes R for tests and small n. The default
// factors() and the shared input check live with the implementations (rotations/dense.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace sqlab {

class Rotation {
 public:
  virtual ~Rotation() = default;

  virtual int64_t size() const = 0;
  // x R for x of shape (..., n).
  virtual at::Tensor apply(const at::Tensor& x) const = 0;
  // y R^-1 (= y R^T for orthogonal R).
  virtual at::Tensor apply_inverse(const at::Tensor& y) const = 0;
  // The weight matching apply(): W R for orthogonal R (W T^-T for a general T).
  virtual at::Tensor fuse_into(const at::Tensor& w) const { return apply(w); }
  // R as a dense float64 n x n matrix.
  virtual at::Tensor dense() const = 0;
  // What is stored under /rotations/SITE: {"R": dense} or {"R1", "R2"} factors. A
  // transform that is not orthogonal stores {"T": dense, "T_w": fuse_into(I)}: a token
  // row x maps to x @ T and a weight W to W @ T_w (T_w = T^-T), never W @ T.
  virtual std::map<std::string, at::Tensor> factors() const;
  // False for invertible transforms that are not rotations (rotations/scaling.h): then the
  // inverse is apply_inverse(), not the transpose, and weights need fuse_into().
  virtual bool orthogonal() const { return true; }
  virtual std::string describe() const = 0;
};

using RotationPtr = std::unique_ptr<Rotation>;

}  // namespace sqlab
