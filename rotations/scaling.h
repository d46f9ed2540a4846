// Per-channel scaling, the one invertible but non-orthogonal transform in sqlab
// (SmoothQuant, DuQuant's smoothing step; method-notes.md section 8).
//
// Convention: a token x becomes x T with T = diag(1/s), and a weight W becomes
// W T^-T = W diag(s), so (X T)(W T^-T)^T = X W^T. orthogonal() is false: anything that
// would use T^T as the inverse must call apply_inverse(), and the weight side must go
// through fuse_into(), never apply().
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "core/rotation.h"
#include "rotations/device_copies.h"

namespace sqlab {

class DiagonalScaling : public Rotation {
 public:
  // `scales`: n positive entries s_j (any floating dtype; kept in float64).
  explicit DiagonalScaling(const at::Tensor& scales, std::string description = "diagonal_scaling");

  int64_t size() const override { return scales64_.size(0); }
  at::Tensor apply(const at::Tensor& x) const override;          // x / s
  at::Tensor apply_inverse(const at::Tensor& y) const override;  // y * s
  at::Tensor fuse_into(const at::Tensor& w) const override;      // W * s
  at::Tensor dense() const override;                             // diag(1/s), float64
  bool orthogonal() const override { return false; }
  std::string describe() const override { return description_; }
  const at::Tensor& scales() const { return scales64_; }  // s, float64

 private:
  at::Tensor scales_for(const at::Tensor& x) const;
  at::Tensor scales64_, scales32_;
  DeviceCopies on_device_;
  std::string description_;
};

// SmoothQuant's migration scales (Xiao et al. 2023, Eq. 4):
//   s_j = max_t |X_tj|^alpha / max_o |W_oj|^(1 - alpha),
// float64, n entries. A channel where either maximum is 0 (dead) gets s_j = 1, so the
// scaling never divides by zero.
at::Tensor smoothing_scales(const at::Tensor& x, const at::Tensor& w, double alpha);

}  // namespace sqlab
