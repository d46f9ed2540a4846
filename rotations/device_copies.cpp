#include "rotations/device_copies.h"

#include <ATen/ATen.h>

namespace sqlab {

at::Tensor DeviceCopies::on_device_of(const at::Tensor& parameter, const at::Tensor& like) const {
  if (!parameter.defined() || parameter.device() == like.device()) return parameter;
  const auto key = std::make_tuple(parameter.data_ptr(), like.device().str());
  std::lock_guard<std::mutex> lock(state_->mutex);
  auto found = state_->copies.find(key);
  if (found == state_->copies.end())
    found = state_->copies.emplace(key, parameter.to(like.device())).first;
  return found->second;
}

}  // namespace sqlab
