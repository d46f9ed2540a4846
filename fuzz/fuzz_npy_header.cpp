// libFuzzer target: parse_npy_header (io/npy.h) on a whole .npy file.
#include "fuzz/fuzz_util.h"
#include "io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return sqlab::fuzz::expect_clean([&] { sqlab::parse_npy_header(data, size, size, "fuzz.npy"); });
}
