// Round-to-nearest fake quantization as a CUDA kernel (interface and arithmetic:
// quant/fake_quant_cuda.h; the same result as the CPU kernel in quant/quant.cpp, bit for bit
// in float32). Each group is read twice: once for its range, once to quantize (from cache).
#include "quant/fake_quant_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>

namespace sqlab::cuda {
namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct Params {
  bool symmetric;
  float qmin, qmax, clip;
};

// Scale and the clamped range of x / s from the group's range (quant/quant.cpp scale_zero).
struct Step {
  float inv, scale, low, high;
};

__device__ __forceinline__ Step step_of(float lo, float hi, const Params& p) {
  lo *= p.clip;
  hi *= p.clip;
  float scale, zero = 0.0f;
  if (p.symmetric) {
    const float absmax = fmaxf(fabsf(lo), fabsf(hi));
    scale = absmax > 0.0f ? absmax / p.qmax : 1.0f;
  } else {
    lo = fminf(lo, 0.0f);
    hi = fmaxf(hi, 0.0f);
    scale = hi > lo ? (hi - lo) / p.qmax : 1.0f;
    zero = rintf(-lo / scale);
  }
  return {1.0f / scale, scale, p.qmin - zero, p.qmax - zero};
}

__device__ __forceinline__ float quantize(float x, const Step& s) {
  return rintf(fminf(fmaxf(x * s.inv, s.low), s.high)) * s.scale;
}

__device__ __forceinline__ void warp_range(float& lo, float& hi) {
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
}

// Short groups: one warp per group, 8 groups per block of 256 threads.
template <class T>
__global__ void fake_quant_warp_per_group(const T* in, T* out, int64_t groups, int length, Params p) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (group >= groups) return;
  const int lane = threadIdx.x % 32;
  const T* x = in + group * length;
  T* y = out + group * length;
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int j = lane; j < length; j += 32) {
    const float v = to_float(x[j]);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  warp_range(lo, hi);
  const Step s = step_of(lo, hi, p);
  for (int j = lane; j < length; j += 32) y[j] = from_float<T>(quantize(to_float(x[j]), s));
}

// Long groups (rows of thousands of values): one block per group.
template <class T>
__global__ void fake_quant_block_per_group(const T* in, T* out, int length, Params p) {
  __shared__ float warp_lo[32], warp_hi[32];
  const T* x = in + static_cast<int64_t>(blockIdx.x) * length;
  T* y = out + static_cast<int64_t>(blockIdx.x) * length;
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int j = threadIdx.x; j < length; j += blockDim.x) {
    const float v = to_float(x[j]);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  warp_range(lo, hi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) {
    warp_lo[warp] = lo;
    warp_hi[warp] = hi;
  }
  __syncthreads();
  lo = lane < warps ? warp_lo[lane] : FLT_MAX;
  hi = lane < warps ? warp_hi[lane] : -FLT_MAX;
  warp_range(lo, hi);  // every warp reduces the per-warp ranges: all threads get the result
  const Step s = step_of(lo, hi, p);
  for (int j = threadIdx.x; j < length; j += blockDim.x) y[j] = from_float<T>(quantize(to_float(x[j]), s));
}

template <class T>
std::string launch(const FakeQuantJob& job) {
  const Params p{job.symmetric, job.qmin, job.qmax, job.clip};
  const auto stream = static_cast<cudaStream_t>(job.stream);
  const int length = static_cast<int>(job.length);
  if (job.length <= 1024) {
    const int64_t blocks = (job.groups + 7) / 8;
    fake_quant_warp_per_group<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        static_cast<const T*>(job.in), static_cast<T*>(job.out), job.groups, length, p);
  } else {
    fake_quant_block_per_group<T><<<static_cast<unsigned>(job.groups), 512, 0, stream>>>(
        static_cast<const T*>(job.in), static_cast<T*>(job.out), length, p);
  }
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? std::string() : std::string(cudaGetErrorString(status));
}

}  // namespace

std::string fake_quant(const FakeQuantJob& job) {
  if (job.groups == 0 || job.length == 0) return {};
  switch (job.dtype) {
    case RowDtype::float32: return launch<float>(job);
    case RowDtype::float16: return launch<__half>(job);
    case RowDtype::bfloat16: return launch<__nv_bfloat16>(job);
  }
  return "fake_quant: unknown dtype";
}

}  // namespace sqlab::cuda
