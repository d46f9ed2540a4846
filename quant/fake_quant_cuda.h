// Round-to-nearest fake quantization on a CUDA device (quant/fake_quant_cuda.cu), behind a
// plain interface (no ATen or CUDA types; fake_quant in quant/quant.cpp calls it for CUDA
// tensors in a SQLAB_CUDA build). The arithmetic is the CPU kernel's, in float32, per group
// of `length` contiguous values (a row, or a group of a row):
//   range (lo, hi) * clip -> scale s and zero z (QuantSpec's grid),
//   q = clamp(x * (1 / s), qmin - z, qmax - z) rounded to nearest-even, out = q * s,
// written in the tensor's dtype (float32, float16, bfloat16).
#pragma once

#include <cstdint>
#include <string>

#include "rotations/hadamard_cuda.h"  // RowDtype

namespace sqlab::cuda {

struct FakeQuantJob {
  const void* in;
  void* out;
  int64_t groups;
  int64_t length;  // values per group
  bool symmetric;
  float qmin, qmax;
  float clip;
  RowDtype dtype;
  void* stream;  // cudaStream_t
};

// Launches the quantization; returns an error message, empty on success.
std::string fake_quant(const FakeQuantJob& job);

}  // namespace sqlab::cuda
