#include "rotations/scaling.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"
#include "rotations/dense.h"

namespace sqlab {

DiagonalScaling::DiagonalScaling(const at::Tensor& scales, std::string description)
    : description_(std::move(description)) {
  if (scales.dim() != 1 || scales.numel() == 0)
    throw Error(fmt::format("diagonal scaling: expected a non-empty vector of scales, got [{}]",
                            fmt::join(scales.sizes(), ", ")));
  scales64_ = scales.to(at::kCPU, at::kDouble).contiguous();  // kept on the CPU (device_copies.h)
  if (!(scales64_ > 0).all().item<bool>() || !at::isfinite(scales64_).all().item<bool>())
    throw Error("diagonal scaling: every scale must be positive and finite");
  scales32_ = scales64_.to(at::kFloat);
}

at::Tensor DiagonalScaling::scales_for(const at::Tensor& x) const {
  return on_device_.on_device_of(x.scalar_type() == at::kDouble ? scales64_ : scales32_, x);
}

at::Tensor DiagonalScaling::apply(const at::Tensor& x) const {
  check_rotation_input(*this, x, "diagonal scaling");
  return x / scales_for(x);
}

at::Tensor DiagonalScaling::apply_inverse(const at::Tensor& y) const {
  check_rotation_input(*this, y, "diagonal scaling");
  return y * scales_for(y);
}

at::Tensor DiagonalScaling::fuse_into(const at::Tensor& w) const {
  check_rotation_input(*this, w, "diagonal scaling");
  return w * scales_for(w);
}

at::Tensor DiagonalScaling::dense() const { return at::diag(1.0 / scales64_); }

at::Tensor smoothing_scales(const at::Tensor& x, const at::Tensor& w, double alpha) {
  const at::Tensor act_max = x.abs().amax(0).to(at::kDouble);
  const at::Tensor weight_max = w.abs().amax(0).to(at::kDouble);
  const at::Tensor dead = (act_max <= 0) | (weight_max <= 0);
  const at::Tensor s = act_max.pow(alpha) / weight_max.pow(1.0 - alpha);
  return at::where(dead, at::ones_like(s), s);
}

}  // namespace sqlab
