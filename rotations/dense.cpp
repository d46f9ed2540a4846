#include "rotations/dense.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"

namespace sqlab {

void check_rotation_input(const Rotation& rotation, const at::Tensor& x, const char* what) {
  if (x.dim() < 1 || x.size(-1) != rotation.size())
    throw Error(fmt::format("{}: rotation of size {} cannot act on a tensor of shape [{}]",
                            what, rotation.size(), fmt::join(x.sizes(), ", ")));
}

std::map<std::string, at::Tensor> Rotation::factors() const {
  if (orthogonal()) return {{"R", dense()}};
  return {{"T", dense()}, {"T_w", fuse_into(at::eye(size(), at::kDouble))}};
}

at::Tensor IdentityRotation::apply(const at::Tensor& x) const {
  check_rotation_input(*this, x, "identity");
  return x;
}

at::Tensor IdentityRotation::apply_inverse(const at::Tensor& y) const {
  check_rotation_input(*this, y, "identity");
  return y;
}

at::Tensor IdentityRotation::dense() const { return at::eye(n_, at::kDouble); }

DenseRotation::DenseRotation(const at::Tensor& matrix, std::string description)
    : description_(std::move(description)) {
  if (matrix.dim() != 2 || matrix.size(0) != matrix.size(1))
    throw Error(fmt::format("dense rotation: expected a square matrix, got [{}]",
                            fmt::join(matrix.sizes(), ", ")));
  matrix64_ = matrix.to(at::kCPU, at::kDouble).contiguous();  // kept on the CPU (device_copies.h)
  matrix32_ = matrix64_.to(at::kFloat);
}

int64_t DenseRotation::size() const { return matrix64_.size(0); }

const at::Tensor& DenseRotation::matrix_for(const at::Tensor& x) const {
  return x.scalar_type() == at::kDouble ? matrix64_ : matrix32_;
}

at::Tensor DenseRotation::apply(const at::Tensor& x) const {
  check_rotation_input(*this, x, "dense rotation");
  return at::matmul(x, on_device_.on_device_of(matrix_for(x), x));
}

at::Tensor DenseRotation::apply_inverse(const at::Tensor& y) const {
  check_rotation_input(*this, y, "dense rotation");
  return at::matmul(y, on_device_.on_device_of(matrix_for(y), y).t());
}

ComposedRotation::ComposedRotation(RotationPtr first, RotationPtr second, std::string description)
    : first_(std::move(first)), second_(std::move(second)), description_(std::move(description)) {
  if (!first_ || !second_ || first_->size() != second_->size())
    throw Error("composed rotation: both parts must exist and have the same size");
  if (description_.empty()) description_ = first_->describe() + " then " + second_->describe();
}

at::Tensor ComposedRotation::apply(const at::Tensor& x) const {
  return second_->apply(first_->apply(x));
}

at::Tensor ComposedRotation::apply_inverse(const at::Tensor& y) const {
  return first_->apply_inverse(second_->apply_inverse(y));
}

at::Tensor ComposedRotation::fuse_into(const at::Tensor& w) const {
  return second_->fuse_into(first_->fuse_into(w));
}

at::Tensor ComposedRotation::dense() const { return at::matmul(first_->dense(), second_->dense()); }

}  // namespace sqlab
