// libFuzzer target: parse_npy_header (core/npy.h) on a whole .npy file.
#include "core/npy.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return sqlab::fuzz::expect_clean([&] { sqlab::parse_npy_header(data, size, size, "fuzz.npy"); });
}
