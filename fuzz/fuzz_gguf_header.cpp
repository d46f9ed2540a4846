// libFuzzer target: parse_gguf_header (io/gguf.h). The input is the file: its bytes
// and its size, so counts and lengths that lie, nested arrays, offsets past the end and
// every value type are all reachable. Each tensor the header accepts is then
// dequantized straight from the input, as GgufFile::tensor does from its mapping, so
// that the block decoders run on whatever bytes the layout checks let through.
// Seeds: tests/fixtures/gguf/*.gguf.
#include <vector>

#include "fuzz/fuzz_util.h"
#include "io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return sqlab::fuzz::expect_clean([&] {
    const sqlab::GgufHeader header = sqlab::parse_gguf_header(data, size, size, "fuzz.gguf");
    std::vector<float> values;
    for (const sqlab::GgufTensorInfo& t : header.tensors) {
      if (!sqlab::ggml_type_supported(t.ggml_type())) continue;
      values.resize(static_cast<size_t>(t.numel()));  // at most ~2 floats per data byte
      sqlab::dequantize_row(t.ggml_type(), data + header.data_start + t.offset, values.data(), t.numel());
    }
  });
}
