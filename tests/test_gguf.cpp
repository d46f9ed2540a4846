// io/gguf.h and io/gguf_quants.h: block formats against hand-built blocks and c10's
// fp16/bf16, writer -> reader round trips of every type and every metadata value type,
// files written by another tool (gguf-py, tests/fixtures/gguf/, made by
// tools/make_gguf_fixtures.py), malformed files, and the real SmolLM2 model file.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_quants.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

using sqlab::testing::expect_config_error;
using sqlab::testing::TempDir;
namespace fs = std::filesystem;


std::string fixture(const std::string& name) { return std::string(SQLAB_SOURCE_DIR) + "/tests/fixtures/gguf/" + name; }

uint16_t half_bits(float f) { return c10::Half(f).x; }
float half_value(float f) { return static_cast<float>(c10::Half(f)); }

// ---------------------------------------------------------------- raw files
// Tests build GGUF files byte by byte, so that each malformation is exactly one lie.

struct Bytes {
  std::string b;
  template <class T>
  Bytes& put(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.append(s);
    return *this;
  }
  Bytes& raw(const std::string& s) {
    b.append(s);
    return *this;
  }
};

// One encoded kv pair: key, value type, payload.
std::string kv(const std::string& key, uint32_t type, const std::string& payload) {
  return Bytes().str(key).put(type).raw(payload).b;
}
std::string kv_u32(const std::string& key, uint32_t v) { return kv(key, 4, Bytes().put(v).b); }
std::string kv_str(const std::string& key, const std::string& v) { return kv(key, 8, Bytes().str(v).b); }

struct RawTensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  uint64_t offset;
};

struct RawFile {
  uint32_t version = 3;
  int64_t tensor_count = -1;  // -1: the true count
  int64_t kv_count = -1;
  std::vector<std::string> kvs = {kv_str("general.architecture", "llama")};
  std::vector<RawTensor> tensors;
  uint64_t alignment = 32;
  std::string data;  // the data section

  // The bytes up to the end of the tensor infos, and where the data section starts.
  std::string header() const {
    Bytes h;
    h.raw("GGUF").put(version);
    h.put<uint64_t>(tensor_count < 0 ? tensors.size() : static_cast<uint64_t>(tensor_count));
    h.put<uint64_t>(kv_count < 0 ? kvs.size() : static_cast<uint64_t>(kv_count));
    for (const std::string& k : kvs) h.raw(k);
    for (const RawTensor& t : tensors) {
      h.str(t.name).put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) h.put(d);
      h.put(t.type).put(t.offset);
    }
    return h.b;
  }
  std::string bytes() const {
    std::string b = header();
    b.append((alignment - b.size() % alignment) % alignment, '\0');
    return b + data;
  }
};

std::string write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// A well-formed file: one F32 tensor "w" of 2 x 3 (ne = [3, 2]) holding 0..5.
RawFile valid_file() {
  RawFile f;
  f.kvs.push_back(kv_str("general.name", "tiny"));
  f.tensors.push_back({"w", {3, 2}, 0, 0});
  for (int i = 0; i < 6; ++i) f.data.append(Bytes().put(static_cast<float>(i)).b);
  return f;
}

// A file holding one tensor of `type` with dims `dims` and raw data `data`.
std::string one_tensor_file(const TempDir& dir, uint32_t type, std::vector<uint64_t> dims, const std::string& data) {
  RawFile f;
  f.tensors.push_back({"t", std::move(dims), type, 0});
  f.data = data;
  return write_bytes(dir.file("one.gguf"), f.bytes());
}

std::vector<float> values_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

void expect_same_floats(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << what << " [" << i << "]";
    } else {
      EXPECT_EQ(got[i], want[i]) << what << " [" << i << "]";
    }
  }
}

// ---------------------------------------------------------------- reference quantizers
// Written here from ggml's quantize_row_*_ref / dequantize_row_* (ggml-quants.c), with
// c10::Half for fp16, independently of io/gguf_quants.cpp: the writer must produce these
// bytes and the reader these values.

struct Reference {
  std::string bytes;
  std::vector<float> values;
};

Reference reference_q8_0(const float* x, int64_t n) {
  Reference r;
  for (int64_t b = 0; b < n / 32; ++b, x += 32) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    r.bytes.append(Bytes().put(half_bits(d)).b);
    for (int j = 0; j < 32; ++j) {
      const auto q = static_cast<int8_t>(std::roundf(x[j] * id));
      r.bytes.push_back(static_cast<char>(q));
      r.values.push_back(q * half_value(d));
    }
  }
  return r;
}

Reference reference_q4(const float* x, int64_t n, bool with_min) {
  Reference r;
  for (int64_t b = 0; b < n / 32; ++b, x += 32) {
    float d, m = 0, offset;
    if (with_min) {  // Q4_1
      float lo = FLT_MAX, hi = -FLT_MAX;
      for (int j = 0; j < 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
      d = (hi - lo) / 15, m = lo, offset = 0.5f;
    } else {  // Q4_0: the signed value of largest magnitude
      float amax = 0, max = 0;
      for (int j = 0; j < 32; ++j)
        if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
      d = max / -8, offset = 8.5f;
    }
    const float id = d ? 1.0f / d : 0.0f;
    int q[32];
    for (int j = 0; j < 32; ++j) q[j] = std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - m) * id + offset)));
    r.bytes.append(Bytes().put(half_bits(d)).b);
    if (with_min) r.bytes.append(Bytes().put(half_bits(m)).b);
    for (int j = 0; j < 16; ++j) r.bytes.push_back(static_cast<char>(q[j] | (q[j + 16] << 4)));
    for (int j = 0; j < 32; ++j)
      r.values.push_back(with_min ? q[j] * half_value(d) + half_value(m) : (q[j] - 8) * half_value(d));
  }
  return r;
}

Reference reference(GgmlType type, const at::Tensor& x) {
  const std::vector<float> v = values_of(x);
  if (type == GgmlType::Q8_0) return reference_q8_0(v.data(), static_cast<int64_t>(v.size()));
  return reference_q4(v.data(), static_cast<int64_t>(v.size()), type == GgmlType::Q4_1);
}

// ---------------------------------------------------------------- type table, fp16, bf16

TEST(GgufQuants, TypeTableNamesAndSizes) {
  EXPECT_EQ(ggml_type_text(13), "Q5_K (type 13)");
  EXPECT_EQ(ggml_type_text(4), "unknown ggml type 4");  // Q4_2, removed from ggml
  EXPECT_EQ(ggml_type_traits(2)->type_size, 18u);
  EXPECT_EQ(ggml_type_traits(3)->type_size, 20u);
  EXPECT_EQ(ggml_type_traits(8)->type_size, 34u);
  EXPECT_EQ(ggml_type_traits(30)->block_size, 1u);
  EXPECT_EQ(std::string(ggml_type_traits(14)->name), "Q6_K");
  EXPECT_TRUE(ggml_type_supported(GgmlType::Q4_1));
  EXPECT_FALSE(ggml_type_supported(GgmlType::Q4_K));
}

TEST(GgufQuants, Fp16MatchesC10BitForBit) {
  for (uint32_t h = 0; h < 65536; ++h) {  // every half to float
    const float want = static_cast<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()));
    const float got = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(got, want) << h;
    }
  }
  std::vector<float> cases = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 70000.0f, -1e30f,
                              std::numeric_limits<float>::infinity(), 5.96e-8f, 2.98e-8f, 2.99e-8f, 6.1e-5f,
                              6.097e-5f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 1e-10f};
  std::mt19937 gen(7);
  for (int i = 0; i < 200000; ++i) {  // random bit patterns: every exponent, halfway cases
    uint32_t bits = gen();
    float f;
    std::memcpy(&f, &bits, 4);
    if (!std::isnan(f)) cases.push_back(f);
  }
  for (float f : cases) ASSERT_EQ(fp32_to_fp16(f), half_bits(f)) << f;
  EXPECT_EQ(fp32_to_fp16(std::nanf("")) & 0x7E00, 0x7E00);
}

TEST(GgufQuants, Bf16MatchesC10BitForBit) {
  std::mt19937 gen(8);
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = gen();
    float f;
    std::memcpy(&f, &bits, 4);
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_bf16(f), c10::BFloat16(f).x) << f;
    const uint16_t h = static_cast<uint16_t>(bits);
    const float want = static_cast<float>(c10::BFloat16(h, c10::BFloat16::from_bits()));
    if (!std::isnan(want)) {
      ASSERT_EQ(bf16_to_fp32(h), want);
    }
  }
}

// ---------------------------------------------------------------- hand-built blocks

TEST(GgufBlocks, Q4_0HandBlock) {
  Bytes b;
  b.put<uint16_t>(0x3800);  // d = 0.5
  for (int j = 0; j < 16; ++j) b.put<uint8_t>(static_cast<uint8_t>(j | ((15 - j) << 4)));
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) want[j] = (j - 8) * 0.5f, want[j + 16] = (7 - j) * 0.5f;
  std::vector<float> got(32);
  dequantize_row(GgmlType::Q4_0, reinterpret_cast<const uint8_t*>(b.b.data()), got.data(), 32);
  expect_same_floats(got, want, "Q4_0");
  TempDir dir;  // and through a file: shape [1, 32]
  GgufFile file(one_tensor_file(dir, 2, {32, 1}, b.b));
  EXPECT_EQ(file.tensor("t").sizes().vec(), (std::vector<int64_t>{1, 32}));
  expect_same_floats(values_of(file.tensor("t")), want, "Q4_0 file");
}

TEST(GgufBlocks, Q4_1HandBlock) {
  Bytes b;
  b.put<uint16_t>(0x3800).put<uint16_t>(0xBC00);  // d = 0.5, m = -1
  for (int j = 0; j < 16; ++j) b.put<uint8_t>(static_cast<uint8_t>(j | ((15 - j) << 4)));
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) want[j] = j * 0.5f - 1, want[j + 16] = (15 - j) * 0.5f - 1;
  std::vector<float> got(32);
  dequantize_row(GgmlType::Q4_1, reinterpret_cast<const uint8_t*>(b.b.data()), got.data(), 32);
  expect_same_floats(got, want, "Q4_1");
  EXPECT_EQ(got[0], -1.0f);
  EXPECT_EQ(got[15], 6.5f);
  EXPECT_EQ(got[16], 6.5f);
  TempDir dir;
  GgufFile file(one_tensor_file(dir, 3, {32, 1}, b.b));
  expect_same_floats(values_of(file.tensor("t")), want, "Q4_1 file");
}

TEST(GgufBlocks, Q8_0HandBlock) {
  Bytes b;
  b.put<uint16_t>(0x3400);  // d = 0.25
  std::vector<float> want;
  for (int j = 0; j < 32; ++j) {
    const auto q = static_cast<int8_t>(j * 8 - 128);  // -128 .. 120
    b.put<int8_t>(q);
    want.push_back(q * 0.25f);
  }
  std::vector<float> got(32);
  dequantize_row(GgmlType::Q8_0, reinterpret_cast<const uint8_t*>(b.b.data()), got.data(), 32);
  expect_same_floats(got, want, "Q8_0");
  EXPECT_EQ(got[0], -32.0f);
  TempDir dir;
  GgufFile file(one_tensor_file(dir, 8, {32, 1}, b.b));
  expect_same_floats(values_of(file.tensor("t")), want, "Q8_0 file");
}

// The quantizers on blocks whose scale is exactly 1, so every rounding is visible:
// Q8_0 rounds halves away from zero (roundf), Q4_0 and Q4_1 truncate x/d + 8.5 (+ 0.5)
// and clip at 15.
TEST(GgufBlocks, QuantizeHandBlocks) {
  std::vector<float> x(32, 0.0f);
  x[0] = 127, x[1] = 2.5f, x[2] = -2.5f, x[3] = 0.5f, x[4] = -127, x[5] = 1.49f;
  std::vector<uint8_t> q8(34);
  quantize_row(GgmlType::Q8_0, x.data(), q8.data(), 32);
  EXPECT_EQ(q8[0] | (q8[1] << 8), 0x3C00);  // d = 1
  EXPECT_EQ(std::vector<int>({int8_t(q8[2]), int8_t(q8[3]), int8_t(q8[4]), int8_t(q8[5]), int8_t(q8[6]), int8_t(q8[7])}),
            (std::vector<int>{127, 3, -3, 1, -127, 1}));

  std::fill(x.begin(), x.end(), 0.0f);
  x[0] = -8, x[1] = 0.3f, x[2] = 7, x[3] = -0.5f, x[16] = 7.6f, x[17] = -7.9f;  // max = -8: d = 1
  std::vector<uint8_t> q4(18);
  quantize_row(GgmlType::Q4_0, x.data(), q4.data(), 32);
  EXPECT_EQ(q4[0] | (q4[1] << 8), 0x3C00);
  // q = min(15, trunc(x + 8.5)): -8 -> 0, 0.3 -> 8, 7 -> 15, -0.5 -> 8, 7.6 -> 16 clipped
  // to 15, -7.9 -> 0, 0 -> 8; byte j holds q[j] and q[j + 16] << 4.
  EXPECT_EQ(q4[2], 0 | (15 << 4));
  EXPECT_EQ(q4[3], 8 | (0 << 4));
  EXPECT_EQ(q4[4], 15 | (8 << 4));
  EXPECT_EQ(q4[5], 8 | (8 << 4));

  std::fill(x.begin(), x.end(), 5.0f);
  x[0] = 0, x[1] = 15, x[2] = 2.5f, x[3] = 2.49f;  // min 0, max 15: d = 1, m = 0
  std::vector<uint8_t> q41(20);
  quantize_row(GgmlType::Q4_1, x.data(), q41.data(), 32);
  EXPECT_EQ(q41[0] | (q41[1] << 8), 0x3C00);
  EXPECT_EQ(q41[2] | (q41[3] << 8), 0x0000);
  EXPECT_EQ(q41[4] & 15, 0);
  EXPECT_EQ(q41[5] & 15, 15);
  EXPECT_EQ(q41[6] & 15, 3);  // 2.5 + 0.5 truncates to 3
  EXPECT_EQ(q41[7] & 15, 2);  // 2.49 + 0.5 truncates to 2
  EXPECT_EQ(q41[4] >> 4, 5);
}

TEST(GgufBlocks, F16Bf16F32HandValues) {
  TempDir dir;
  const std::string f16 = Bytes().put<uint16_t>(0x3C00).put<uint16_t>(0xC000).put<uint16_t>(0x0001).put<uint16_t>(0x7BFF).b;
  expect_same_floats(values_of(GgufFile(one_tensor_file(dir, 1, {4}, f16)).tensor("t")),
                     {1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f}, "F16");
  const std::string bf16 = Bytes().put<uint16_t>(0x3F80).put<uint16_t>(0xC040).put<uint16_t>(0x7F80).put<uint16_t>(0x0001).b;
  expect_same_floats(values_of(GgufFile(one_tensor_file(dir, 30, {4}, bf16)).tensor("t")),
                     {1.0f, -3.0f, std::numeric_limits<float>::infinity(), std::ldexp(1.0f, -133)}, "BF16");
  const std::string f32 = Bytes().put(1.5f).put(-0.0f).put(3e38f).put(1e-45f).b;
  expect_same_floats(values_of(GgufFile(one_tensor_file(dir, 0, {2, 2}, f32)).tensor("t")), {1.5f, -0.0f, 3e38f, 1e-45f},
                     "F32");
}

// ---------------------------------------------------------------- writer -> reader

at::Tensor sample(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::kFloat) * 0.3 + 0.05;
}

TEST(GgufRoundTrip, PlainTypes) {
  TempDir dir;
  const at::Tensor x = sample({3, 5, 7}, 1);
  const std::string path = dir.file("plain.gguf");
  write_gguf(path, GgufMetadata(), {{"f32", x, GgmlType::F32}, {"f16", x, GgmlType::F16}, {"bf16", x, GgmlType::BF16}});
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  GgufFile file(path);
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.info("f32").dims, (std::vector<uint64_t>{7, 5, 3}));  // reversed
  EXPECT_EQ(file.info("f16").type, 1u);
  for (const char* name : {"f32", "f16", "bf16"}) EXPECT_EQ(file.tensor(name).sizes().vec(), x.sizes().vec());
  expect_same_floats(values_of(file.tensor("f32")), values_of(x), "F32");
  expect_same_floats(values_of(file.tensor("f16")), values_of(x.to(at::kHalf).to(at::kFloat)), "F16");
  expect_same_floats(values_of(file.tensor("bf16")), values_of(x.to(at::kBFloat16).to(at::kFloat)), "BF16");
  EXPECT_LE((file.tensor("f16") - x).abs().max().item<float>(), x.abs().max().item<float>() * std::ldexp(1.0f, -11));
  EXPECT_LE((file.tensor("bf16") - x).abs().max().item<float>(), x.abs().max().item<float>() * std::ldexp(1.0f, -8));
  EXPECT_EQ(file.bytes("f32").second, 3u * 5 * 7 * 4);
}

// Every element within half a step (d) of its block; Q4_0 clips the one extreme its
// asymmetric range cannot hold (x = -max maps to 7d, not 8d) to within a full step.
void expect_within_step(GgmlType type, const std::vector<float>& x, const std::vector<float>& y) {
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float lo = FLT_MAX, hi = -FLT_MAX, amax = 0;
    for (size_t j = b * 32; j < b * 32 + 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]), amax = std::max(amax, std::fabs(x[j]));
    const float step = type == GgmlType::Q8_0 ? amax / 127 : type == GgmlType::Q4_0 ? amax / 8 : (hi - lo) / 15;
    const float fp16_slack = 16 * amax * std::ldexp(1.0f, -11) + 1e-6f;  // d and m are rounded to fp16
    for (size_t j = b * 32; j < b * 32 + 32; ++j) {
      const bool clipped = type == GgmlType::Q4_0 && std::fabs(x[j]) > 7.5f * step;
      const float bound = (clipped ? step : step / 2) + fp16_slack;
      EXPECT_LE(std::fabs(x[j] - y[j]), bound) << ggml_type_text(static_cast<uint32_t>(type)) << " element " << j;
    }
  }
}

TEST(GgufRoundTrip, BlockTypesMatchTheReferenceBitForBit) {
  TempDir dir;
  const at::Tensor x = sample({4, 96}, 2);
  at::Tensor with_zero_block = sample({2, 64}, 3);
  with_zero_block[1].slice(0, 0, 32).zero_();  // d = 0: the quantizers' division guard
  const std::string path = dir.file("blocks.gguf");
  const std::vector<GgmlType> types = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1};
  std::vector<GgufWriteTensor> tensors;
  for (GgmlType t : types) {
    tensors.push_back({ggml_type_text(static_cast<uint32_t>(t)), x, t});
    tensors.push_back({"zero " + ggml_type_text(static_cast<uint32_t>(t)), with_zero_block, t});
  }
  write_gguf(path, GgufMetadata(), tensors);
  GgufFile file(path);
  for (const GgufWriteTensor& t : tensors) {
    const Reference ref = reference(t.type, t.tensor);
    const auto [data, size] = file.bytes(t.name);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(data), size), ref.bytes) << t.name << ": bytes";
    const at::Tensor y = file.tensor(t.name);
    EXPECT_EQ(y.sizes().vec(), t.tensor.sizes().vec());
    expect_same_floats(values_of(y), ref.values, t.name);
    expect_within_step(t.type, values_of(t.tensor), values_of(y));
  }
  EXPECT_EQ(file.tensor("zero Q4_1 (type 3)")[1].slice(0, 0, 32).abs().max().item<float>(), 0.0f);
}

TEST(GgufRoundTrip, OneAndFourDimensions) {
  TempDir dir;
  const at::Tensor v = sample({64}, 4), t4 = sample({2, 1, 3, 32}, 5);
  const std::string path = dir.file("dims.gguf");
  write_gguf(path, GgufMetadata(), {{"v", v, GgmlType::Q8_0}, {"t4", t4, GgmlType::F32}});
  GgufFile file(path);
  EXPECT_EQ(file.info("t4").dims, (std::vector<uint64_t>{32, 3, 1, 2}));
  EXPECT_EQ(file.tensor("t4").sizes().vec(), (std::vector<int64_t>{2, 1, 3, 32}));
  EXPECT_TRUE(file.tensor("t4").equal(t4));
  EXPECT_EQ(file.tensor("v").sizes().vec(), (std::vector<int64_t>{64}));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"v", "t4"}));
}

TEST(GgufRoundTrip, OtherAlignments) {
  for (uint32_t alignment : {1u, 8u, 64u, 4096u}) {
    TempDir dir;
    const std::string path = dir.file("aligned.gguf");
    // Odd byte sizes, so every tensor after the first needs padding.
    write_gguf(path, GgufMetadata(), {{"a", sample({5}, 6), GgmlType::F32}, {"b", sample({3}, 7), GgmlType::F16},
                                      {"c", sample({32}, 8), GgmlType::Q4_0}}, alignment);
    GgufFile file(path);
    EXPECT_EQ(file.alignment(), alignment);
    EXPECT_EQ(file.metadata().has("general.alignment"), alignment != 32);
    for (const GgufTensorInfo& t : file.tensors()) {
      EXPECT_EQ(t.offset % alignment, 0u) << t.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(file.bytes(t.name).first) % std::min(alignment, 4096u), 0u) << t.name;
    }
    EXPECT_TRUE(file.tensor("a").equal(sample({5}, 6)));
  }
}

// ---------------------------------------------------------------- metadata

GgufArray array_of(GgufValueType type) {
  GgufArray a;
  a.type = type;
  return a;
}

GgufMetadata every_value_type() {
  GgufMetadata m;
  m.set("u8", GgufValue::of_uint(GgufValueType::uint8, 255));
  m.set("i8", GgufValue::of_int(GgufValueType::int8, -128));
  m.set("u16", GgufValue::of_uint(GgufValueType::uint16, 65535));
  m.set("i16", GgufValue::of_int(GgufValueType::int16, -32768));
  m.set("u32", GgufValue::u32(4294967295u));
  m.set("i32", GgufValue::i32(-2147483647 - 1));
  m.set("f32", GgufValue::f32(0.1f));
  m.set("bool", GgufValue::of_bool(true));
  m.set("string", GgufValue::str("héllo\n\0x"));
  m.set("empty string", GgufValue::str(""));
  m.set("u64", GgufValue::of_uint(GgufValueType::uint64, UINT64_MAX));
  m.set("i64", GgufValue::of_int(GgufValueType::int64, INT64_MIN));
  m.set("f64", GgufValue::of_float(GgufValueType::float64, 1.0 / 3.0));
  m.set("strings", GgufValue::string_array({"<s>", "", "Ġthe", std::string("a\0b", 3)}));
  m.set("i32s", GgufValue::i32_array({1, -2, 2147483647}));
  m.set("f32s", GgufValue::f32_array({0.5f, -1e-3f}));
  GgufArray u8s = array_of(GgufValueType::uint8), bools = array_of(GgufValueType::boolean);
  u8s.uints = {0, 7, 255};
  bools.uints = {1, 0};
  m.set("u8s", GgufValue::of_array(u8s));
  m.set("bools", GgufValue::of_array(bools));
  GgufArray f64s = array_of(GgufValueType::float64), i16s = array_of(GgufValueType::int16);
  f64s.floats = {1e300, -2.5};
  i16s.ints = {-5, 300};
  m.set("f64s", GgufValue::of_array(f64s));
  m.set("i16s", GgufValue::of_array(i16s));
  m.set("empty", GgufValue::of_array(array_of(GgufValueType::uint32)));
  // [[1, 2], [3]] of UINT64, and [[["x"]]]: arrays of arrays.
  GgufArray nested = array_of(GgufValueType::array), inner1 = array_of(GgufValueType::uint64), inner2 = inner1;
  inner1.uints = {1, 2};
  inner2.uints = {3};
  nested.arrays = {GgufValue::of_array(inner1), GgufValue::of_array(inner2)};
  m.set("nested", GgufValue::of_array(nested));
  GgufArray deep = array_of(GgufValueType::array), middle = array_of(GgufValueType::array);
  middle.arrays = {GgufValue::string_array({"x"})};
  deep.arrays = {GgufValue::of_array(middle)};
  m.set("deep", GgufValue::of_array(deep));
  return m;
}

bool same_value(const GgufValue& a, const GgufValue& b);

bool same_array(const GgufArray& a, const GgufArray& b) {
  if (a.type != b.type || a.uints != b.uints || a.ints != b.ints || a.floats != b.floats || a.strings != b.strings ||
      a.arrays.size() != b.arrays.size())
    return false;
  for (size_t i = 0; i < a.arrays.size(); ++i)
    if (!same_value(a.arrays[i], b.arrays[i])) return false;
  return true;
}

bool same_value(const GgufValue& a, const GgufValue& b) {
  if (a.type != b.type || a.data.index() != b.data.index()) return false;
  if (const auto* x = std::get_if<GgufArray>(&a.data)) return same_array(*x, std::get<GgufArray>(b.data));
  if (const auto* x = std::get_if<std::string>(&a.data)) return *x == std::get<std::string>(b.data);
  if (const auto* x = std::get_if<double>(&a.data)) return *x == std::get<double>(b.data);
  if (const auto* x = std::get_if<int64_t>(&a.data)) return *x == std::get<int64_t>(b.data);
  return std::get<uint64_t>(a.data) == std::get<uint64_t>(b.data);
}

TEST(GgufMetadataTest, EveryValueTypeRoundTrips) {
  TempDir dir;
  const GgufMetadata m = every_value_type();
  const std::string path = dir.file("meta.gguf");
  write_gguf(path, m, {});
  GgufFile file(path);
  const GgufMetadata& r = file.metadata();
  ASSERT_EQ(r.size(), m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    EXPECT_EQ(r.entries()[i].first, m.entries()[i].first);  // file order kept
    EXPECT_TRUE(same_value(r.entries()[i].second, m.entries()[i].second)) << m.entries()[i].first;
  }
  EXPECT_EQ(r.get_u32("u8"), 255u);  // any integer type that fits
  EXPECT_EQ(r.get_i32("i16"), -32768);
  EXPECT_EQ(r.get_u64("u64"), UINT64_MAX);
  EXPECT_EQ(r.get_i64("i64"), INT64_MIN);
  EXPECT_EQ(r.get_f32("f32"), 0.1f);
  EXPECT_EQ(r.get_f64("f64"), 1.0 / 3.0);
  EXPECT_TRUE(r.get_bool("bool"));
  EXPECT_EQ(r.get_string("string"), std::string("héllo\n\0x"));
  EXPECT_EQ(r.get_string_array("strings")[3], std::string("a\0b", 3));
  EXPECT_EQ(r.get_i32_array("i32s"), (std::vector<int32_t>{1, -2, 2147483647}));
  EXPECT_EQ(r.get_i32_array("u8s"), (std::vector<int32_t>{0, 7, 255}));
  EXPECT_EQ(r.get_f32_array("f32s"), (std::vector<float>{0.5f, -1e-3f}));
  EXPECT_TRUE(r.get_i32_array("empty").empty());
  EXPECT_EQ(std::get<GgufArray>(r.at("nested").data).arrays[1].type, GgufValueType::array);
  EXPECT_FALSE(r.has("general.alignment"));
}

TEST(GgufMetadataTest, GettersNameTheFileAndTheKey) {
  TempDir dir;
  const std::string path = dir.file("meta.gguf");
  write_gguf(path, every_value_type(), {});
  GgufFile file(path);
  const GgufMetadata& r = file.metadata();
  expect_config_error([&] { r.get_u32("llama.block_count"); }, {path, "'llama.block_count'", "missing"});
  expect_config_error([&] { r.get_u32("i32"); }, {path, "'i32'", "UINT32", "INT32 -2147483648"});
  expect_config_error([&] { r.get_u32("u64"); }, {path, "'u64'", "UINT32"});
  expect_config_error([&] { r.get_u32("bool"); }, {path, "'bool'", "BOOL"});
  expect_config_error([&] { r.get_u32("string"); }, {path, "'string'", "STRING"});
  expect_config_error([&] { r.get_f32("u32"); }, {path, "'u32'", "FLOAT32"});
  expect_config_error([&] { r.get_string("u8"); }, {path, "'u8'", "expected STRING", "UINT8 255"});
  expect_config_error([&] { r.get_bool("u8"); }, {path, "'u8'", "BOOL"});
  expect_config_error([&] { r.get_string_array("i32s"); }, {path, "'i32s'", "ARRAY of INT32"});
  expect_config_error([&] { r.get_string_array("string"); }, {path, "'string'", "ARRAY of STRING"});
  expect_config_error([&] { r.get_i32_array("strings"); }, {path, "'strings'"});
  expect_config_error([&] { r.get_f32_array("i32s"); }, {path, "'i32s'"});
  expect_config_error([&] { r.at("nope"); }, {path, "'nope'", "missing"});
  GgufArray big = array_of(GgufValueType::uint64);
  big.uints = {1, 1ull << 40};
  GgufMetadata m(path);
  m.set("big", GgufValue::of_array(big));
  expect_config_error([&] { m.get_i32_array("big"); }, {path, "'big'", "element 1"});
}

TEST(GgufMetadataTest, ValueConstructorsCheckRanges) {
  EXPECT_THROW(GgufValue::of_uint(GgufValueType::uint8, 256), std::invalid_argument);
  EXPECT_THROW(GgufValue::of_uint(GgufValueType::int32, 1), std::invalid_argument);
  EXPECT_THROW(GgufValue::of_int(GgufValueType::int16, 40000), std::invalid_argument);
  EXPECT_THROW(GgufValue::of_float(GgufValueType::string, 1), std::invalid_argument);
  EXPECT_EQ(std::get<double>(GgufValue::f32(0.1f).data), static_cast<double>(0.1f));
}

// ---------------------------------------------------------------- writer errors

TEST(GgufWriter, RefusesWhatItCannotWrite) {
  TempDir dir;
  const std::string path = dir.file("bad.gguf");
  const auto expect_write_error = [&](const std::vector<GgufWriteTensor>& tensors, const std::string& fragment,
                                      uint32_t alignment = 32) {
    try {
      write_gguf(path, GgufMetadata(), tensors, alignment);
      ADD_FAILURE() << "no error; expected " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(path));  // nothing half-written
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  };
  const at::Tensor x = sample({2, 32}, 9);
  expect_write_error({{"w", x, GgmlType::F32}, {"w", x, GgmlType::F32}}, "tensor 'w': duplicate");
  expect_write_error({{"w", sample({2, 48}, 9), GgmlType::Q4_0}}, "block size 32");
  expect_write_error({{"w", x, GgmlType::Q5_K}}, "Q5_K (type 13)");
  at::Tensor nan = x.clone();
  nan[0][3] = std::nanf("");
  expect_write_error({{"w", nan, GgmlType::Q8_0}}, "NaN");
  expect_write_error({{"w", at::zeros({2, 3, 4, 5, 6}), GgmlType::F32}}, "5 dimensions");
  expect_write_error({{"w", at::ones({4}, at::kInt), GgmlType::F32}}, "floating-point");
  expect_write_error({{"w", x, GgmlType::F32}}, "alignment 48", 48);
}

// ---------------------------------------------------------------- files of another tool

std::vector<float> json_values(const nlohmann::json& values) {
  std::vector<float> out;
  for (const auto& v : values) {
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      out.push_back(s == "nan" ? std::nanf("") : s == "inf" ? INFINITY : -INFINITY);
    } else {
      out.push_back(v.get<float>());
    }
  }
  return out;
}

// Every tensor of FIXTURE.gguf dequantizes to gguf-py's values in FIXTURE.json.
void expect_fixture_values(const std::string& name) {
  nlohmann::json expected;
  std::ifstream(fixture(name + ".json")) >> expected;
  GgufFile file(fixture(name + ".gguf"));
  EXPECT_EQ(file.alignment(), expected["alignment"].get<uint64_t>());
  ASSERT_EQ(file.tensors().size(), expected["tensors"].size());
  for (const auto& t : expected["tensors"]) {
    const std::string tname = t["name"].get<std::string>();
    const GgufTensorInfo& info = file.info(tname);
    EXPECT_EQ(std::string(ggml_type_traits(info.type)->name), t["type"].get<std::string>());
    EXPECT_EQ(info.shape(), t["shape"].get<std::vector<int64_t>>()) << tname;
    if (t["values"].is_null()) continue;  // a type sqlab does not dequantize
    expect_same_floats(values_of(file.tensor(tname)), json_values(t["values"]), name + ": " + tname);
  }
}

TEST(GgufFixtures, GgufPyFileOfEveryTypeReadsAsGgufPyDequantizesIt) {
  expect_fixture_values("types");
  const std::string path = fixture("types.gguf");
  GgufFile file(path);
  const GgufMetadata& m = file.metadata();
  EXPECT_EQ(m.get_string("general.architecture"), "sqlabtest");
  EXPECT_EQ(m.at("test.u8").type, GgufValueType::uint8);
  EXPECT_EQ(m.get_u32("test.u8"), 200u);
  EXPECT_EQ(m.get_i32("test.i8"), -100);
  EXPECT_EQ(m.get_u32("test.u16"), 60000u);
  EXPECT_EQ(m.get_i32("test.i16"), -30000);
  EXPECT_EQ(m.get_u32("test.u32"), 4000000000u);
  EXPECT_EQ(m.get_i32("test.i32"), -2000000000);
  EXPECT_EQ(m.get_f32("test.f32"), 0.1f);
  EXPECT_TRUE(m.get_bool("test.bool"));
  EXPECT_EQ(m.get_string("test.string"), "héllo ☃");
  EXPECT_EQ(m.get_u64("test.u64"), (1ull << 63) + 5);
  EXPECT_EQ(m.get_i64("test.i64"), -(1ll << 62));
  EXPECT_EQ(m.get_f64("test.f64"), 2.0 / 3.0);
  EXPECT_EQ(m.get_string_array("test.strings"), (std::vector<std::string>{"a", "", "ü", "tokens with spaces"}));
  EXPECT_EQ(m.get_i32_array("test.i32s"), (std::vector<int32_t>{1, -2, 3}));
  EXPECT_EQ(m.get_f32_array("test.f32s"), (std::vector<float>{0.5f, -1.25f}));
  const GgufArray& nested = std::get<GgufArray>(m.at("test.nested").data);
  ASSERT_EQ(nested.arrays.size(), 2u);
  EXPECT_EQ(std::get<GgufArray>(nested.arrays[1].data).ints, (std::vector<int64_t>{3, 4, 5}));
  // Known to the type table, not to the dequantizer: refused by name and type.
  expect_config_error([&] { file.tensor("q5_k.weight"); }, {path, "'q5_k.weight'", "Q5_K (type 13)"});
  EXPECT_EQ(file.bytes("q5_k.weight").second, 176u);
}

TEST(GgufFixtures, GgufPyFileWithAlignment64) { expect_fixture_values("aligned64"); }

// ---------------------------------------------------------------- malformed files

struct GgufMalformed : ::testing::Test {
  TempDir dir;
  std::string path = dir.file("bad.gguf");
  // Writes `bytes`; opening must fail with a config error holding the path and each fragment.
  void expect_refused(const std::string& bytes, std::vector<std::string> fragments) {
    write_bytes(path, bytes);
    fragments.insert(fragments.begin(), path);
    expect_config_error([&] { GgufFile file(path); }, fragments);
  }
};

TEST_F(GgufMalformed, ValidBaseFileOpens) {
  GgufFile file(write_bytes(path, valid_file().bytes()));
  EXPECT_EQ(file.metadata().get_string("general.name"), "tiny");
  EXPECT_EQ(values_of(file.tensor("w")), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  expect_config_error([&] { file.tensor("v"); }, {path, "'v'", "not in the file"});
  expect_config_error([&] { GgufFile missing(dir.file("absent.gguf")); }, {"absent.gguf", "cannot open"});
}

TEST_F(GgufMalformed, Truncated) {
  const std::string full = valid_file().bytes();
  const std::string header = valid_file().header();
  expect_refused("", {"header", "truncated"});
  expect_refused(full.substr(0, 10), {"header", "truncated", "tensor_count"});
  // Inside the value of general.name ("tiny"): the kv section.
  const size_t in_kv = header.find("tiny") + 2;
  expect_refused(full.substr(0, in_kv), {"key 'general.name'", "truncated"});
  // Inside the tensor info of "w", after its name: the tensor infos.
  const size_t in_info = header.size() - 6;
  expect_refused(full.substr(0, in_info), {"tensor 'w'", "truncated"});
  // Inside the data.
  expect_refused(full.substr(0, full.size() - 3), {"tensor 'w'", "past the end of the file"});
}

TEST_F(GgufMalformed, EveryPrefixIsRefusedCleanly) {
  const std::string full = valid_file().bytes();
  for (size_t n = 0; n < full.size(); ++n) {
    try {
      parse_gguf_header(reinterpret_cast<const uint8_t*>(full.data()), n, n, "prefix");
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config);
    }
  }
}

TEST_F(GgufMalformed, RandomCorruptionOnlyThrowsConfigErrors) {
  RawFile f = valid_file();
  f.kvs.push_back(kv("arr", 9, Bytes().put<uint32_t>(8).put<uint64_t>(2).str("ab").str("c").b));
  f.tensors.push_back({"q", {32}, 3, 32});
  f.data.append(8, '\0');
  f.data.append(20, '\x11');
  const std::string good = f.bytes();
  std::mt19937 gen(11);
  for (int i = 0; i < 3000; ++i) {
    std::string bytes = good;
    for (int k = 0; k <= i % 4; ++k) bytes[gen() % bytes.size()] = static_cast<char>(gen());
    try {
      const GgufHeader h = parse_gguf_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(), "x");
      for (const GgufTensorInfo& t : h.tensors) EXPECT_LE(h.data_start + t.offset + t.nbytes, bytes.size());
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config) << e.what();
    }
  }
}

TEST_F(GgufMalformed, CountsThatLie) {
  RawFile f = valid_file();
  f.tensor_count = 1'000'000'000'000;
  expect_refused(f.bytes(), {"tensor_count", "1000000000000", "cannot fit"});
  f = valid_file();
  f.kv_count = 1ull << 60;
  expect_refused(f.bytes(), {"kv_count", "cannot fit"});
  f = valid_file();
  f.kvs.push_back(kv("general.lie", 8, Bytes().put<uint64_t>(1ull << 40).b));  // string length
  expect_refused(f.bytes(), {"key 'general.lie'", "claims 1099511627776 bytes"});
  f = valid_file();
  f.kvs.push_back(kv("tokenizer.ggml.tokens", 9, Bytes().put<uint32_t>(8).put<uint64_t>(1ull << 40).b));
  expect_refused(f.bytes(), {"key 'tokenizer.ggml.tokens'", "array count 1099511627776"});
  f = valid_file();
  f.kvs.push_back(kv("u32s", 9, Bytes().put<uint32_t>(4).put<uint64_t>(100).put<uint32_t>(1).b));
  expect_refused(f.bytes(), {"key 'u32s'", "array count 100"});
  f = valid_file();
  f.kvs.push_back(Bytes().put<uint64_t>(1ull << 50).b);  // a key's own length
  expect_refused(f.bytes(), {"key #2", "claims"});
}

TEST_F(GgufMalformed, BadMagicAndVersions) {
  std::string bytes = valid_file().bytes();
  bytes[0] = 'G', bytes[1] = 'G', bytes[2] = 'M', bytes[3] = 'L';
  expect_refused(bytes, {"not a GGUF file"});
  RawFile f = valid_file();
  f.version = 1;
  expect_refused(f.bytes(), {"version 1", "not supported"});
  f.version = 3u << 24;
  expect_refused(f.bytes(), {"big-endian"});
  f.version = 4;
  expect_refused(f.bytes(), {"unknown GGUF version 4"});
  f.version = 2;  // version 2 has the same layout as 3
  GgufFile file(write_bytes(path, f.bytes()));
  EXPECT_EQ(file.version(), 2u);
}

TEST_F(GgufMalformed, BadValues) {
  RawFile f = valid_file();
  f.kvs.push_back(kv("general.odd", 13, Bytes().put<uint32_t>(0).b));
  expect_refused(f.bytes(), {"key 'general.odd'", "unknown value type 13"});
  f = valid_file();
  f.kvs.push_back(kv("arr", 9, Bytes().put<uint32_t>(77).put<uint64_t>(1).b));
  expect_refused(f.bytes(), {"key 'arr'", "unknown value type 77"});
  f = valid_file();
  f.kvs.push_back(kv("flag", 7, Bytes().put<uint8_t>(2).b));
  expect_refused(f.bytes(), {"key 'flag'", "BOOL value 2"});
  f = valid_file();
  f.kvs.push_back(kv_str("general.name", "again"));
  expect_refused(f.bytes(), {"duplicate key 'general.name'"});
  f = valid_file();
  f.kvs.push_back(kv_str("", "x"));
  expect_refused(f.bytes(), {"key #2 is empty"});
  f = valid_file();
  Bytes deep;  // 10 nested arrays, each holding the next
  for (int i = 0; i < 10; ++i) deep.put<uint32_t>(9).put<uint64_t>(1);
  deep.put<uint32_t>(4).put<uint64_t>(0);
  f.kvs.push_back(kv("deep", 9, deep.b));
  expect_refused(f.bytes(), {"key 'deep'", "nested deeper than 8"});
}

TEST_F(GgufMalformed, BadAlignment) {
  RawFile f = valid_file();
  f.kvs.push_back(kv_u32("general.alignment", 48));
  expect_refused(f.bytes(), {"key 'general.alignment'", "48 is not a power of two"});
  f = valid_file();
  f.kvs.push_back(kv_str("general.alignment", "32"));
  expect_refused(f.bytes(), {"key 'general.alignment'", "STRING"});
  f = valid_file();
  f.kvs.push_back(kv_u32("general.alignment", 0));
  expect_refused(f.bytes(), {"key 'general.alignment'", "0 is not a power of two"});
}

TEST_F(GgufMalformed, BadTensorInfos) {
  RawFile f = valid_file();
  f.tensors[0].type = 99;
  expect_refused(f.bytes(), {"tensor 'w'", "unknown ggml type 99"});
  f = valid_file();
  f.tensors[0].dims = {3, 2, 1, 1, 1};
  expect_refused(f.bytes(), {"tensor 'w'", "n_dims 5"});
  f.tensors[0].dims = {};
  expect_refused(f.bytes(), {"tensor 'w'", "n_dims 0"});
  f.tensors[0].dims = {3, 0};
  expect_refused(f.bytes(), {"tensor 'w'", "dimension 1 is 0"});
  f.tensors[0].dims = {1ull << 32, 1ull << 32};
  expect_refused(f.bytes(), {"tensor 'w'", "overflow"});
  f.tensors[0].dims = {1ull << 62};  // 2^62 F32 values: 2^64 bytes, 0 if the size wrapped (a fuzzer find)
  expect_refused(f.bytes(), {"tensor 'w'", "data size overflows"});
  f = valid_file();
  f.tensors[0].offset = 4;
  expect_refused(f.bytes(), {"tensor 'w'", "offset 4 is not a multiple of the alignment 32"});
  f = valid_file();
  f.tensors[0].offset = 32;  // aligned, but the data section holds 24 bytes
  expect_refused(f.bytes(), {"tensor 'w'", "past the end of the file"});
  f = valid_file();
  f.tensors.push_back({"w", {1}, 0, 0});
  expect_refused(f.bytes(), {"tensor 'w'", "duplicate tensor name"});
  f = valid_file();
  f.tensors.push_back({"v", {4}, 0, 0});  // [0, 16) inside w's [0, 24)
  expect_refused(f.bytes(), {"tensor", "overlap tensor"});
  f = valid_file();
  f.tensors.push_back({"", {1}, 0, 32});
  expect_refused(f.bytes(), {"tensor info #1 has an empty name"});
  f = valid_file();
  f.tensors[0] = {"q", {16, 2}, 2, 0};  // Q4_0 rows of 16
  expect_refused(f.bytes(), {"tensor 'q'", "ne[0] = 16 is not a multiple of the block size 32 of Q4_0 (type 2)"});
}

TEST_F(GgufMalformed, KnownButUnsupportedTypeParsesAndIsRefusedByName) {
  RawFile f = valid_file();
  f.tensors.push_back({"blk.0.ffn_down.weight", {256}, 13, 32});  // Q5_K: 176 bytes a block
  f.data.append(8, '\0');
  f.data.append(176, '\0');
  GgufFile file(write_bytes(path, f.bytes()));
  EXPECT_EQ(file.info("blk.0.ffn_down.weight").nbytes, 176u);
  expect_config_error([&] { file.tensor("blk.0.ffn_down.weight"); },
                      {path, "'blk.0.ffn_down.weight'", "Q5_K (type 13)", "cannot be dequantized"});
  EXPECT_EQ(values_of(file.tensor("w")).size(), 6u);  // the others still read
}

TEST_F(GgufMalformed, HeaderLongerThanTheBytesGiven) {
  const std::string full = valid_file().bytes();
  const size_t header = valid_file().header().size();
  const auto* data = reinterpret_cast<const uint8_t*>(full.data());
  EXPECT_NO_THROW(parse_gguf_header(data, header, full.size(), "partial"));  // the header alone is enough
  expect_config_error([&] { parse_gguf_header(data, header - 1, full.size(), "partial"); }, {"partial", "truncated"});
}

// ---------------------------------------------------------------- the real model

TEST(GgufModel, SmolLM2Q4_1) {
  const std::string model = sqlab::testing::smollm2_gguf_path();
  if (!fs::exists(model)) FAIL() << sqlab::testing::smollm2_missing_message();
  GgufFile file(model);
  const GgufMetadata& m = file.metadata();
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(m.get_string("general.architecture"), "llama");
  EXPECT_EQ(m.get_u32("llama.block_count"), 30u);
  EXPECT_EQ(m.get_u32("llama.embedding_length"), 576u);
  EXPECT_EQ(m.get_u32("llama.feed_forward_length"), 1536u);
  EXPECT_EQ(m.get_u32("llama.attention.head_count"), 9u);
  EXPECT_EQ(m.get_u32("llama.attention.head_count_kv"), 3u);
  EXPECT_EQ(m.get_f32("llama.rope.freq_base"), 100000.0f);
  EXPECT_FLOAT_EQ(m.get_f32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(file.tensors().size(), 272u);
  EXPECT_EQ(m.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(m.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_EQ(m.get_i32_array("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(m.get_string("tokenizer.ggml.model"), "gpt2");

  // Values from gguf-py's GGUFReader + gguf.quants.dequantize on the same file.
  const at::Tensor down = file.tensor("blk.0.ffn_down.weight");  // Q4_1, ne = [1536, 576]
  EXPECT_EQ(file.info("blk.0.ffn_down.weight").type, 3u);
  EXPECT_EQ(down.sizes().vec(), (std::vector<int64_t>{576, 1536}));
  EXPECT_TRUE(at::isfinite(down).all().item<bool>());
  expect_same_floats(values_of(down.flatten().slice(0, 0, 4)),
                     {-0.330810546875f, 0.3460693359375f, 0.0753173828125f, -0.4661865234375f}, "ffn_down");
  EXPECT_EQ(down.flatten()[-1].item<float>(), -0.181365966796875f);
  EXPECT_NEAR(down.to(at::kDouble).sum().item<double>(), 150.63577270507812, 1e-6);
  EXPECT_NEAR(down.to(at::kDouble).abs().sum().item<double>(), 128458.06286621094, 1e-4);

  const at::Tensor embed = file.tensor("token_embd.weight");  // Q8_0
  EXPECT_EQ(embed.sizes().vec(), (std::vector<int64_t>{49152, 576}));
  expect_same_floats(values_of(embed.flatten().slice(0, 0, 4)),
                     {-0.10654449462890625f, 0.032978057861328125f, 0.048198699951171875f, -0.022830963134765625f},
                     "token_embd");
  EXPECT_NEAR(embed.to(at::kDouble).sum().item<double>(), -15353.04449415207, 1e-5);
  const at::Tensor norm = file.tensor("blk.0.attn_norm.weight");  // F32
  EXPECT_EQ(norm.sizes().vec(), (std::vector<int64_t>{576}));
  EXPECT_EQ(norm[0].item<float>(), 0.01397705078125f);
  EXPECT_NEAR(norm.to(at::kDouble).sum().item<double>(), 0.6129436492919922, 1e-9);
}

}  // namespace
}  // namespace sqlab
