// libFuzzer target: parse_llama2c_header (model/checkpoint.h). Input: 8 bytes of the
// claimed file size (little-endian), then the file's first bytes; a real checkpoint
// holds megabytes of weights after its header, which the parser only counts.
#include "fuzz/fuzz_util.h"
#include "model/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint64_t file_size = sqlab::fuzz::take_u64(data, size);
  return sqlab::fuzz::expect_clean([&] {
    size_t header_bytes = 0;
    bool shared = false;
    sqlab::parse_llama2c_header(data, size, file_size, "fuzz.bin", &header_bytes, &shared);
  });
}
