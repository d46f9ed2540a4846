// The fast Walsh-Hadamard transform on a CUDA device (rotations/hadamard_cuda.cu), behind a
// plain interface: no ATen and no CUDA types here, so that nvcc compiles only the kernel and
// the rest of sqlab stays C++ (HadamardRotation::run in rotations/hadamard.cpp calls it for
// CUDA tensors in a SQLAB_CUDA build).
//
// One thread block per row of n = p * unit values, held in shared memory as float32: the
// row is read (times `pre`, or `scale`), the butterflies of the 2^k part (S_p (x) I_unit,
// distances unit * 2^s) run in shared memory, then each output is the product of its run of
// `unit` values with column c of `base` (unit x unit, row-major; I when null), times `post`,
// written in the row's dtype. Rows longer than max_row_length() (shared memory) are not taken.
#pragma once

#include <cstdint>
#include <string>

namespace sqlab::cuda {

enum class RowDtype { float32, float16, bfloat16 };

struct WalshHadamardJob {
  const void* in;
  void* out;            // may equal `in`
  int64_t rows;
  int64_t n;            // row length, p * unit, p a power of two
  int64_t unit;         // the base order m: distance of the first butterfly stage
  const float* pre;     // n input multipliers on the device, or null: `scale`
  float scale;
  const float* post;    // n output multipliers on the device, or null
  const float* base;    // unit x unit on the device, or null (unit 1, or applied elsewhere)
  RowDtype dtype;
  void* stream;         // cudaStream_t
};

// The largest base order multiplied inside the kernel (the base then sits in shared memory
// next to the row, and each output reads `unit` values); larger bases (36, 52, ..., 172) are
// a GEMM on the tensor cores around the kernel.
constexpr int64_t kMaxKernelBase = 28;

// Rows up to this length fit the device's shared memory (float32, with a kernel base).
int64_t max_row_length(int device);

// Launches the transform; returns an error message, empty on success.
std::string walsh_hadamard(const WalshHadamardJob& job);

}  // namespace sqlab::cuda
