// Shared by the libFuzzer targets: every input must either parse or throw
// sqlab::Error. Anything else escaping (std::out_of_range, YAML::Exception, c10::Error,
// ...) would reach main as an unexplained exit 1, so it is reported as a finding:
// the exception propagates and libFuzzer records the input as a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"

namespace sqlab::fuzz {

// The experiment targets' cap on runs (LoadOptions::max_runs; sqlab's own is 10,000):
// under ASan a valid 8,192-run sweep took 42 s to expand, a timeout, not a bug.
// The cap's own error path is the same code at any value.
constexpr size_t kMaxRuns = 256;

// Reads a little-endian uint64 from the first 8 bytes (0 when shorter) and moves past it.
inline uint64_t take_u64(const uint8_t*& data, size_t& size) {
  uint64_t value = 0;
  if (size >= 8) {
    for (int i = 7; i >= 0; --i) value = (value << 8) | data[i];
    data += 8;
    size -= 8;
  }
  return value;
}

template <class F>
int expect_clean(F&& parse) {
  try {
    parse();
  } catch (const sqlab::Error&) {
  }
  return 0;
}

}  // namespace sqlab::fuzz
