#include "rotations/simd.h"

#include <fmt/format.h>

#include <atomic>

#include "core/error.h"

namespace sqlab {
namespace {

SimdLevel best_simd_level() {
#ifdef SQLAB_SIMD_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return SimdLevel::avx512;
  if (__builtin_cpu_supports("avx2")) return SimdLevel::avx2;
#endif
  return SimdLevel::generic;
}

std::atomic<int>& current_simd_level() {
  static std::atomic<int> level{static_cast<int>(best_simd_level())};
  return level;
}

}  // namespace

SimdLevel simd_level() { return static_cast<SimdLevel>(current_simd_level().load()); }

bool simd_level_supported(SimdLevel level) {
  return static_cast<int>(level) <= static_cast<int>(best_simd_level());
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return "avx512";
    case SimdLevel::avx2: return "avx2";
    default: return "generic";
  }
}

void set_simd_level(SimdLevel level) {
  if (!simd_level_supported(level))
    throw Error(fmt::format("SIMD level {} is not supported by this CPU (best: {})",
                            simd_level_name(level), simd_level_name(best_simd_level())));
  current_simd_level().store(static_cast<int>(level));
}

}  // namespace sqlab
