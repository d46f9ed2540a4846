// libFuzzer target: parse_safetensors_header (io/safetensors.h). The input is the
// file: its bytes and its size, so offsets past the end, lengths that lie and JSON
// of every shape are all reachable.
#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return sqlab::fuzz::expect_clean([&] { sqlab::parse_safetensors_header(data, size, size, "fuzz.safetensors"); });
}
