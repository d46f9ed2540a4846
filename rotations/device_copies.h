// Rotations keep their parameters (matrices, factors, signs, scales) on the CPU. A tensor on
// another device (`data.device: cuda`, `model.device: cuda`) needs them on its device: the
// copy is made on first use and kept, so that a rotation applied to thousands of blocks on a
// GPU pays one host-to-device transfer per parameter, not one per call.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

namespace sqlab {

class DeviceCopies {
 public:
  // `parameter` itself when it already lives on `like`'s device; else its copy there (kept).
  at::Tensor on_device_of(const at::Tensor& parameter, const at::Tensor& like) const;

 private:
  struct State {
    std::mutex mutex;
    std::map<std::tuple<const void*, std::string>, at::Tensor> copies;  // (CPU data, device)
  };
  // Shared between copies of the rotation: the parameters are immutable once built.
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace sqlab
