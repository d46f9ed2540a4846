// A fitted rotation R (n x n, orthogonal) acting on row vectors: a token x becomes x R,
// and a weight W (C_out x n) becomes W R, so (X R)(W R)^T = X W^T. Implementations
// keep their own fast form (dense, Kronecker, Walsh-Hadamard, ...) behind this one
// interface; dense() materializes R for tests and small n.
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
  // False for invertible transforms that are not rotations (core/scaling.h): then the
  // inverse is apply_inverse(), not the transpose, and weights need fuse_into().
  virtual bool orthogonal() const { return true; }
  virtual std::string describe() const = 0;
};

using RotationPtr = std::unique_ptr<Rotation>;

// R = I: plain RTN.
class IdentityRotation : public Rotation {
 public:
  explicit IdentityRotation(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  at::Tensor apply(const at::Tensor& x) const override;
  at::Tensor apply_inverse(const at::Tensor& y) const override;
  at::Tensor dense() const override;
  std::string describe() const override { return "identity"; }

 private:
  int64_t n_;
};

// An explicit n x n matrix (stored in float64, applied in the input's dtype).
class DenseRotation : public Rotation {
 public:
  explicit DenseRotation(const at::Tensor& matrix, std::string description = "dense");
  int64_t size() const override;
  at::Tensor apply(const at::Tensor& x) const override;
  at::Tensor apply_inverse(const at::Tensor& y) const override;
  at::Tensor dense() const override { return matrix64_; }
  std::string describe() const override { return description_; }

 private:
  const at::Tensor& matrix_for(const at::Tensor& x) const;
  at::Tensor matrix64_;
  at::Tensor matrix32_;
  std::string description_;
};

// Checks the last dimension of `x` against the rotation's size.
void check_rotation_input(const Rotation& rotation, const at::Tensor& x, const char* what);

// R = R_a R_b: apply_b(apply_a(x)). Orthogonal when both parts are; factors() is dense.
class ComposedRotation : public Rotation {
 public:
  ComposedRotation(RotationPtr first, RotationPtr second, std::string description = "");
  int64_t size() const override { return first_->size(); }
  at::Tensor apply(const at::Tensor& x) const override;
  at::Tensor apply_inverse(const at::Tensor& y) const override;
  at::Tensor fuse_into(const at::Tensor& w) const override;
  at::Tensor dense() const override;
  bool orthogonal() const override { return first_->orthogonal() && second_->orthogonal(); }
  std::string describe() const override { return description_; }
  const Rotation& first() const { return *first_; }
  const Rotation& second() const { return *second_; }

 private:
  RotationPtr first_;
  RotationPtr second_;
  std::string description_;
};

}  // namespace sqlab
