// Matrix products of the model's forward for every compute dtype. On a CPU, LibTorch 1.13
// multiplies bfloat16/float16 tensors with the CPU's own 16-bit dot products (oneDNN on
// AVX512-BF16 / AMX) or, without them, with a scalar loop on one thread: 1.6 GFLOP/s for
// SmolLM2's MLP shape on an AVX2 EPYC against 77 for float32 (OpenBLAS, same core). There
// a 16-bit product is computed as the float32 GEMM of its operands widened exactly and
// rounded once to the 16-bit dtype at the end: the numbers of a 16-bit GEMM that
// accumulates in float32 (as oneDNN and cuBLAS do), up to the order of the sum.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace sqlab::gemm {

// How this process multiplies bfloat16 CPU tensors: "native" (LibTorch's kernels, where the
// CPU has AVX512-BF16 or AMX-BF16 dot products) or "float32" (widened, as above). float16
// CPU tensors always take "float32": LibTorch 1.13 has no float16 CPU GEMM.
const std::string& cpu_path16();

// x W^T (+ b) and a @ b with at::linear's and at::matmul's semantics and dtypes, through
// the path above for 16-bit CPU tensors.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b);

// The "float32" path itself, whatever the CPU: the float32 product of the widened operands
// (the bias inside the sum), rounded once to x's (a's) dtype.
at::Tensor widened_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});
at::Tensor widened_matmul(const at::Tensor& a, const at::Tensor& b);

}  // namespace sqlab::gemm
