#include "model/gemm.h"

namespace sqlab::gemm {

namespace {

// LibTorch's own 16-bit kernels are worth using where the CPU has 16-bit dot products
// (measured on the development machine's AMX Xeon: SmolLM2's bfloat16 forward 8.2 s against
// 12.1 s in float32); the flags as the project's other CPU checks read them (rotations/simd.cpp).
bool cpu_has_dot16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
}

// Those dot products are bfloat16 ones, and LibTorch 1.13 has no float16 GEMM on the CPU at all
// (mm and bmm throw "not implemented for 'Half'" past a few hundred products, found on an
// AVX512-BF16 EPYC): float16 always takes the float32 path.
bool widens(const at::Tensor& t) {
  static const bool widen_bfloat16 = !cpu_has_dot16();
  if (!t.device().is_cpu()) return false;
  return t.scalar_type() == at::kHalf || (t.scalar_type() == at::kBFloat16 && widen_bfloat16);
}

}  // namespace

const std::string& cpu_path16() {
  static const std::string path = cpu_has_dot16() ? "native" : "float32";
  return path;
}

at::Tensor widened_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  // The bias joins the float32 sum before the one rounding (a GEMM's beta = 1 epilogue).
  const at::Tensor y = b.defined() ? at::linear(x.to(at::kFloat), w.to(at::kFloat), b.to(at::kFloat))
                                   : at::linear(x.to(at::kFloat), w.to(at::kFloat));
  return y.to(x.scalar_type());
}

at::Tensor widened_matmul(const at::Tensor& a, const at::Tensor& b) {
  return at::matmul(a.to(at::kFloat), b.to(at::kFloat)).to(a.scalar_type());
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (widens(x)) return widened_linear(x, w, b);
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) { return widens(a) ? widened_matmul(a, b) : at::matmul(a, b); }

}  // namespace sqlab::gemm
