#include "io/gguf_quants.h"

#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <stdexcept>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF block data is little-endian");

namespace sqlab {
namespace {

// Block sizes and bytes per block from ggml-common.h (QK_K = 256 for the K and IQ types).
constexpr GgmlTypeTraits kTypes[] = {
    {GgmlType::F32, "F32", 1, 4},          {GgmlType::F16, "F16", 1, 2},
    {GgmlType::Q4_0, "Q4_0", 32, 18},      {GgmlType::Q4_1, "Q4_1", 32, 20},
    {GgmlType::Q5_0, "Q5_0", 32, 22},      {GgmlType::Q5_1, "Q5_1", 32, 24},
    {GgmlType::Q8_0, "Q8_0", 32, 34},      {GgmlType::Q8_1, "Q8_1", 32, 40},
    {GgmlType::Q2_K, "Q2_K", 256, 84},     {GgmlType::Q3_K, "Q3_K", 256, 110},
    {GgmlType::Q4_K, "Q4_K", 256, 144},    {GgmlType::Q5_K, "Q5_K", 256, 176},
    {GgmlType::Q6_K, "Q6_K", 256, 210},    {GgmlType::Q8_K, "Q8_K", 256, 292},
    {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66}, {GgmlType::IQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98}, {GgmlType::IQ1_S, "IQ1_S", 256, 50},
    {GgmlType::IQ4_NL, "IQ4_NL", 32, 18},  {GgmlType::IQ3_S, "IQ3_S", 256, 110},
    {GgmlType::IQ2_S, "IQ2_S", 256, 82},   {GgmlType::IQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::I8, "I8", 1, 1},            {GgmlType::I16, "I16", 1, 2},
    {GgmlType::I32, "I32", 1, 4},          {GgmlType::I64, "I64", 1, 8},
    {GgmlType::F64, "F64", 1, 8},          {GgmlType::IQ1_M, "IQ1_M", 256, 56},
    {GgmlType::BF16, "BF16", 1, 2},        {GgmlType::TQ1_0, "TQ1_0", 256, 54},
    {GgmlType::TQ2_0, "TQ2_0", 256, 66},   {GgmlType::MXFP4, "MXFP4", 32, 17},
};

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

constexpr int kBlock = 32;  // values per block of Q4_0, Q4_1 and Q8_0

// ---------------------------------------------------------------- dequantization

void dequantize_q4_0(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 18, dst += kBlock) {
    const float d = fp16_to_fp32(load_u16(src));
    const uint8_t* qs = src + 2;
    for (int j = 0; j < kBlock / 2; ++j) {
      dst[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
      dst[j + kBlock / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

void dequantize_q4_1(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 20, dst += kBlock) {
    const float d = fp16_to_fp32(load_u16(src));
    const float m = fp16_to_fp32(load_u16(src + 2));
    const uint8_t* qs = src + 4;
    for (int j = 0; j < kBlock / 2; ++j) {
      dst[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
      dst[j + kBlock / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

void dequantize_q8_0(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += kBlock) {
    const float d = fp16_to_fp32(load_u16(src));
    for (int j = 0; j < kBlock; ++j) dst[j] = static_cast<float>(static_cast<int8_t>(src[2 + j])) * d;
  }
}

// ---------------------------------------------------------------- quantization
// Each follows ggml's quantize_row_*_ref to the operation: the scale is rounded to
// fp16 for storage, but the values are divided by the unrounded one (times its
// reciprocal), exactly as ggml does, so the nibbles match bit for bit.

void quantize_q4_0(const float* src, uint8_t* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += kBlock, dst += 18) {
    float amax = 0.0f, max = 0.0f;  // the value of largest magnitude, with its sign
    for (int j = 0; j < kBlock; ++j) {
      if (amax < std::fabs(src[j])) {
        amax = std::fabs(src[j]);
        max = src[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_u16(dst, fp32_to_fp16(d));
    for (int j = 0; j < kBlock / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(src[j] * id + 8.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(src[j + kBlock / 2] * id + 8.5f)));
      dst[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_q4_1(const float* src, uint8_t* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += kBlock, dst += 20) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < kBlock; ++j) {
      min = std::min(min, src[j]);
      max = std::max(max, src[j]);
    }
    const float d = (max - min) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_u16(dst, fp32_to_fp16(d));
    store_u16(dst + 2, fp32_to_fp16(min));
    for (int j = 0; j < kBlock / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>((src[j] - min) * id + 0.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>((src[j + kBlock / 2] - min) * id + 0.5f)));
      dst[4 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_q8_0(const float* src, uint8_t* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += kBlock, dst += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_u16(dst, fp32_to_fp16(d));
    for (int j = 0; j < kBlock; ++j) dst[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(src[j] * id)));
  }
}

[[noreturn]] void unsupported(GgmlType type, const char* what) {
  // Callers check ggml_type_supported first; reaching this is a bug in sqlab.
  throw std::logic_error(fmt::format("{}: {} is not supported", what, ggml_type_text(static_cast<uint32_t>(type))));
}

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t type) {
  for (const GgmlTypeTraits& t : kTypes)
    if (static_cast<uint32_t>(t.type) == type) return &t;
  return nullptr;
}

std::string ggml_type_text(uint32_t type) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  return t ? fmt::format("{} (type {})", t->name, type) : fmt::format("unknown ggml type {}", type);
}

bool ggml_type_supported(GgmlType type) {
  switch (type) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q8_0:
      return true;
    default:
      return false;
  }
}

const char* ggml_supported_types_text() { return "F32, F16, BF16, Q4_0, Q4_1, Q8_0"; }

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1F;
  const uint32_t mantissa = h & 0x3FF;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_float(sign | 0x7F800000 | (mantissa << 13));  // inf, NaN
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));  // rebias 15 -> 127
}

uint16_t fp32_to_fp16(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t magnitude = x & 0x7FFFFFFF;
  if (magnitude > 0x7F800000) return sign | 0x7E00;     // NaN stays a (quiet) NaN
  if (magnitude >= 0x47800000) return sign | 0x7C00;    // >= 65536: infinity
  if (magnitude < 0x38800000) {                         // below 2^-14: fp16 subnormal
    // Scaling by 2^24 is exact; nearbyint rounds half to even. 1024 is 2^-14, whose
    // bit pattern is the smallest normal: the carry needs no special case.
    return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(bits_float(magnitude), 24)));
  }
  // Normal: rebias the exponent, keep 10 of 23 mantissa bits, round half to even. A
  // carry out of the mantissa bumps the exponent, up to infinity for [65520, 65536).
  uint32_t h = (magnitude - (112u << 23)) >> 13;
  const uint32_t rest = magnitude & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

float bf16_to_fp32(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

uint16_t fp32_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // keep NaN quiet
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case GgmlType::F16: for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(src + 2 * i)); return;
    case GgmlType::BF16: for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(src + 2 * i)); return;
    case GgmlType::Q4_0: dequantize_q4_0(src, dst, n / kBlock); return;
    case GgmlType::Q4_1: dequantize_q4_1(src, dst, n / kBlock); return;
    case GgmlType::Q8_0: dequantize_q8_0(src, dst, n / kBlock); return;
    default: unsupported(type, "dequantize_row");
  }
}

void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n) {
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case GgmlType::F16: for (int64_t i = 0; i < n; ++i) store_u16(dst + 2 * i, fp32_to_fp16(src[i])); return;
    case GgmlType::BF16: for (int64_t i = 0; i < n; ++i) store_u16(dst + 2 * i, fp32_to_bf16(src[i])); return;
    case GgmlType::Q4_0: quantize_q4_0(src, dst, n / kBlock); return;
    case GgmlType::Q4_1: quantize_q4_1(src, dst, n / kBlock); return;
    case GgmlType::Q8_0: quantize_q8_0(src, dst, n / kBlock); return;
    default: unsupported(type, "quantize_row");
  }
}

}  // namespace sqlab
