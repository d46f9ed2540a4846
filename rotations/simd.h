// Hand-written SIMD kernels (rotations/hadamard.cpp, rotations/kronecker.cpp): GCC vector-extension
// registers of VB bytes and one run-time dispatch to the widest instruction set the CPU has.
// The project is built for the baseline x86-64 target; a kernel is an always-inline template
// on VB, compiled once per instruction set inside the target-specific entry points below.
#pragma once

#include <cstdint>
#include <cstring>

namespace sqlab {

// Instruction set of the kernels: SIMD registers of 64 (avx512), 32 (avx2) or 16 bytes
// (generic: whatever the baseline target has). The default is the best the CPU supports;
// set_simd_level lets tests and benchmarks run the others (throws sqlab::Error for a level
// the CPU lacks). Results agree across levels up to rounding (bitwise for the Hadamard
// transforms).
enum class SimdLevel { generic, avx2, avx512 };
SimdLevel simd_level();
void set_simd_level(SimdLevel level);
bool simd_level_supported(SimdLevel level);
const char* simd_level_name(SimdLevel level);

namespace simd {

// The kernels pass vector types between always-inline helpers; whether they are zmm/ymm or
// pairs of xmm registers depends on the target each entry point is built for.
#pragma GCC diagnostic ignored "-Wpsabi"
#define SQLAB_ALWAYS_INLINE inline __attribute__((always_inline))

template <class T>
struct IntOf;
template <>
struct IntOf<float> {
  using type = int32_t;
};
template <>
struct IntOf<double> {
  using type = int64_t;
};

// One register of VB bytes holding W values of T (I: the same bits as integers).
template <class T, int VB>
struct Simd {
  using Elem = T;
  using IElem = typename IntOf<T>::type;
  static constexpr int W = VB / static_cast<int>(sizeof(T));
  typedef T V __attribute__((vector_size(VB)));
  typedef IElem I __attribute__((vector_size(VB)));

  static SQLAB_ALWAYS_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static SQLAB_ALWAYS_INLINE void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static SQLAB_ALWAYS_INLINE V splat(T a) { return V{} + a; }
};

// Entry points per instruction set: Kernel::run<VB>(args...) inlined into each.
#if defined(__x86_64__) && defined(__GNUC__)
#define SQLAB_SIMD_X86 1
template <class Kernel, class... Args>
__attribute__((target("avx512f"))) void run_avx512(Args... args) {
  Kernel::template run<64>(args...);
}
template <class Kernel, class... Args>
__attribute__((target("avx2"))) void run_avx2(Args... args) {
  Kernel::template run<32>(args...);
}
#endif
template <class Kernel, class... Args>
void run_baseline(Args... args) {
  Kernel::template run<16>(args...);
}

// Runs `Kernel::run<VB>(args...)` with the registers of simd_level(). Kernel is a struct with
// a static always-inline member template `template <int VB, ...> static void run(...)`.
template <class Kernel, class... Args>
void run_simd(Args... args) {
  switch (simd_level()) {
#ifdef SQLAB_SIMD_X86
    case SimdLevel::avx512: return run_avx512<Kernel>(args...);
    case SimdLevel::avx2: return run_avx2<Kernel>(args...);
#endif
    default: return run_baseline<Kernel>(args...);
  }
}

}  // namespace simd
}  // namespace sqlab
