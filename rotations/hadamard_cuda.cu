// The fast Walsh-Hadamard transform as a CUDA kernel (interface and conventions:
// rotations/hadamard_cuda.h; the same transform as the CPU kernel in rotations/hadamard.cpp).
#include "rotations/hadamard_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

namespace sqlab::cuda {
namespace {

template <class T>
__device__ __forceinline__ float load_float(const T* p, int64_t i);
template <>
__device__ __forceinline__ float load_float<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ __forceinline__ float load_float<__half>(const __half* p, int64_t i) { return __half2float(p[i]); }
template <>
__device__ __forceinline__ float load_float<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

template <class T>
__device__ __forceinline__ void store_float(T* p, int64_t i, float v);
template <>
__device__ __forceinline__ void store_float<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
__device__ __forceinline__ void store_float<__half>(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
template <>
__device__ __forceinline__ void store_float<__nv_bfloat16>(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// One block per row (in and out may be the same rows: a row is read whole before it is
// written). Shared memory: the row (n floats), then the base (unit x unit floats).
template <class T>
__global__ void walsh_hadamard_rows(const T* in, T* out, int n, int unit,
                                    const float* __restrict__ pre, float scale,
                                    const float* __restrict__ post, const float* __restrict__ base) {
  extern __shared__ float shared[];
  float* row = shared;
  float* base_matrix = shared + n;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n;
  for (int j = threadIdx.x; j < n; j += blockDim.x)
    row[j] = load_float(in, offset + j) * (pre ? pre[j] : scale);
  if (base)
    for (int j = threadIdx.x; j < unit * unit; j += blockDim.x) base_matrix[j] = base[j];
  __syncthreads();
  // Butterflies at distances h = unit * 2^s: pair t (of n / 2) is element i of its group of
  // 2h and its partner i + h.
  const int half = n / 2;
  for (int h = unit; h < n; h *= 2) {
    for (int t = threadIdx.x; t < half; t += blockDim.x) {
      const int i = (t / h) * 2 * h + t % h;
      const float a = row[i], b = row[i + h];
      row[i] = a + b;
      row[i + h] = a - b;
    }
    __syncthreads();
  }
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    float v;
    if (base) {
      const int c = j % unit;
      const float* run = row + (j - c);
      v = 0.0f;
      for (int k = 0; k < unit; ++k) v += run[k] * base_matrix[k * unit + c];
    } else {
      v = row[j];
    }
    if (post) v *= post[j];
    store_float(out, offset + j, v);
  }
}

template <class T>
std::string launch(const WalshHadamardJob& job) {
  const int n = static_cast<int>(job.n);
  const int unit = static_cast<int>(job.unit);
  const size_t shared_bytes = sizeof(float) * (job.n + (job.base ? job.unit * job.unit : 0));
  auto kernel = walsh_hadamard_rows<T>;
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared_bytes));
  if (status != cudaSuccess) return cudaGetErrorString(status);
  // Enough threads for n / 2 butterflies per stage, at most 1024 (a multiple of a warp).
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (job.n / 2 + 31) / 32 * 32)));
  kernel<<<static_cast<unsigned>(job.rows), threads, shared_bytes, static_cast<cudaStream_t>(job.stream)>>>(
      static_cast<const T*>(job.in), static_cast<T*>(job.out), n, unit, job.pre, job.scale, job.post, job.base);
  status = cudaGetLastError();
  return status == cudaSuccess ? std::string() : std::string(cudaGetErrorString(status));
}

}  // namespace

int64_t max_row_length(int device) {
  int bytes = 0;
  if (cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return 0;
  return bytes / static_cast<int64_t>(sizeof(float)) - kMaxKernelBase * kMaxKernelBase;
}

std::string walsh_hadamard(const WalshHadamardJob& job) {
  if (job.rows == 0) return {};
  switch (job.dtype) {
    case RowDtype::float32: return launch<float>(job);
    case RowDtype::float16: return launch<__half>(job);
    case RowDtype::bfloat16: return launch<__nv_bfloat16>(job);
  }
  return "walsh_hadamard: unknown dtype";
}

}  // namespace sqlab::cuda
