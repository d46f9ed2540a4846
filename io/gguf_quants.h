// ggml's tensor types as they appear in GGUF files: the type table (names, block
// sizes, bytes per block) and the block formats sqlab reads and writes (F32, F16,
// BF16, Q4_0, Q4_1, Q8_0). Pure code, no LibTorch: the GGUF parser and the fuzzer use
// the table, the reader and writer the conversions.
//
// Block layouts (little-endian, 32 values a block, ggml-common.h):
//   Q4_0: fp16 d, 16 bytes qs          x[j] = ((qs[j] & 15) - 8) * d, x[j+16] = ((qs[j] >> 4) - 8) * d
//   Q4_1: fp16 d, fp16 m, 16 bytes qs  x[j] = (qs[j] & 15) * d + m,   x[j+16] = (qs[j] >> 4) * d + m
//   Q8_0: fp16 d, 32 int8 qs           x[j] = qs[j] * d
// The quantizers are ggml's reference ones (quantize_row_*_ref), so a file written here
// holds the same bytes llama.cpp's reference path would write for the same floats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sqlab {

// ggml_type values (ggml.h). Gaps are types ggml has removed (4, 5, 31-33, 36-38).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
  MXFP4 = 39,
};

// What the table knows of one type: its name, how many values a block holds and how
// many bytes it takes. The parser needs the sizes of every type, supported or not, to
// check a file's layout.
struct GgmlTypeTraits {
  GgmlType type;
  const char* name;
  uint32_t block_size;  // values per block (1 for plain element types)
  uint32_t type_size;   // bytes per block
};

// nullptr for a number that names no ggml type.
const GgmlTypeTraits* ggml_type_traits(uint32_t type);
// "Q5_K (type 13)", or "unknown ggml type 99": the form error messages use.
std::string ggml_type_text(uint32_t type);
// Whether dequantize_row / quantize_row handle this type.
bool ggml_type_supported(GgmlType type);
// "F32, F16, BF16, Q4_0, Q4_1, Q8_0": for messages.
const char* ggml_supported_types_text();

// Exact IEEE conversions, round-to-nearest-even (the same results as c10::Half and
// c10::BFloat16, and as ggml's GGML_FP32_TO_FP16 / ggml_compute_fp32_to_bf16).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);

// Converts `n` values stored as `type` at `src` (unaligned is fine) to float32.
// For block types n must be a multiple of the block size. Only supported types.
void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n);
// The reverse, writing n / block_size * type_size bytes to `dst`.
void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n);

}  // namespace sqlab
