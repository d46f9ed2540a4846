// The plain Rotation implementations: the identity, an explicit dense matrix, and the
// composition of two rotations; plus the input check every implementation shares.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "core/rotation.h"
#include "rotations/device_copies.h"

namespace sqlab {

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
  DeviceCopies on_device_;
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
