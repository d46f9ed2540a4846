// libFuzzer target: parse_llama2c_tokenizer (model/tokenizer.h). Input: one byte, the
// vocabulary size as a signed number (<= 0: read tokens up to the end), then the file.
#include "fuzz/fuzz_util.h"
#include "model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int64_t vocab_size = static_cast<int8_t>(data[0]);
  return sqlab::fuzz::expect_clean(
      [&] { sqlab::parse_llama2c_tokenizer(data + 1, size - 1, vocab_size, "fuzz/tokenizer.bin"); });
}
