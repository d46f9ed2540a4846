// What differs between the LibTorch versions sqlab builds against (README "LibTorch 2.x and
// CUDA builds"), in one place: Debian's libtorch-dev 1.13 (C++17) and a pip PyTorch 2.x's
// LibTorch (its headers want C++20). Everything else in sqlab is written once for both.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>  // at::NoGradGuard: <ATen/ATen.h> pulls it in on 1.13, not on 2.x
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/macros/Macros.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR, _MINOR, _PATCH

#include <string>

#ifdef SQLAB_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace sqlab {

// "1.13.1", "2.15.0": recorded in run files next to the CUDA versions.
inline std::string libtorch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

// CUDA devices LibTorch sees (0 in a CPU build or on a CPU machine). at::Context has no
// device count on 1.13, and torch::cuda::device_count changed its return type in 2.x; the
// CUDA hooks have the same call on both.
inline int cuda_device_count() {
  return at::detail::getCUDAHooks().hasCUDA() ? at::detail::getCUDAHooks().getNumGPUs() : 0;
}

// Waits for the work queued on `device` (or t's device): GPU kernels run asynchronously, so
// a stage's seconds are read after this. Nothing to wait for on the CPU (or in a CPU build).
inline void wait_for_device(const at::Device& device) {
#ifdef SQLAB_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
}
inline void wait_for_device(const at::Tensor& t) {
  if (t.defined()) wait_for_device(t.device());
}

}  // namespace sqlab
