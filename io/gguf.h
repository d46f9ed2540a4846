// The project's GGUF reader and writer (llama.cpp's model files). Format, all
// little-endian: "GGUF", uint32 version (2 or 3), uint64 tensor_count, uint64 kv_count;
// kv_count metadata pairs (string key, uint32 value type, value); tensor_count tensor
// infos (string name, uint32 n_dims <= 4, n_dims uint64 dims with ne[0] innermost,
// uint32 ggml type, uint64 offset); then, padded to `general.alignment` (default 32),
// the data section, into which the offsets point. A string is a uint64 length and its
// bytes; an array a uint32 element type, a uint64 count and the elements.
//
// Every header is checked in full before any tensor is touched, every count is checked
// against the bytes left before anything is allocated, and every error names the file
// and the key or tensor (sqlab::Error, kind config: the file's fault, exit code 2).
// Block formats and the ggml type table live in io/gguf_quants.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "io/mapped_file.h"

#include "io/gguf_quants.h"

namespace sqlab {

// gguf_type: the type of a metadata value.
enum class GgufValueType : uint32_t {
  uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6,
  boolean = 7, string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12,
};

// "UINT32", "ARRAY", ...; "unknown value type N" past the table.
std::string gguf_value_type_name(GgufValueType type);

struct GgufValue;

// An array value. Elements are kept by kind rather than one GgufValue each, so that a
// 49,152-entry vocabulary costs what its strings cost: exactly one vector is used,
// chosen by `type` as for GgufValue::data (uint64 for unsigned integers and bool, int64
// for signed, double for floats, strings, and GgufValue for nested arrays).
struct GgufArray {
  GgufValueType type = GgufValueType::uint8;  // the element type
  std::vector<uint64_t> uints;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;  // each of type array
  size_t size() const;
};

// One metadata value: its GGUF type and the payload, widened (uint64_t for the
// unsigned integer types and bool, int64_t for the signed ones, double for float32 and
// float64) so that writing it back gives the same bytes.
struct GgufValue {
  GgufValueType type = GgufValueType::uint8;
  std::variant<uint64_t, int64_t, double, std::string, GgufArray> data;

  // Constructors for the writer. The integer ones throw std::invalid_argument when
  // `type` is not of their kind or the value does not fit it.
  static GgufValue of_uint(GgufValueType type, uint64_t v);
  static GgufValue of_int(GgufValueType type, int64_t v);
  static GgufValue of_float(GgufValueType type, double v);
  static GgufValue of_bool(bool v);
  static GgufValue of_string(std::string v);
  static GgufValue of_array(GgufArray v);
  static GgufValue u32(uint32_t v) { return of_uint(GgufValueType::uint32, v); }
  static GgufValue i32(int32_t v) { return of_int(GgufValueType::int32, v); }
  static GgufValue f32(float v) { return of_float(GgufValueType::float32, v); }
  static GgufValue str(std::string v) { return of_string(std::move(v)); }
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue i32_array(const std::vector<int32_t>& v);
  static GgufValue f32_array(const std::vector<float>& v);
};

// The metadata of one file, in file order, with getters that convert and check. Every
// getter throws config_error naming the file (origin) and the key when the key is
// absent or its value has another type or does not fit.
class GgufMetadata {
 public:
  explicit GgufMetadata(std::string origin = "<memory>") : origin_(std::move(origin)) {}

  const std::string& origin() const { return origin_; }
  // Keys and values in file (or insertion) order.
  const std::vector<std::pair<std::string, GgufValue>>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }
  bool has(const std::string& key) const { return index_.count(key) != 0; }
  // nullptr when absent.
  const GgufValue* find(const std::string& key) const;
  // Throws when absent.
  const GgufValue& at(const std::string& key) const;
  // Adds the key, or replaces its value in place (keeping its position).
  void set(const std::string& key, GgufValue value);

  // Any integer type whose value fits (a uint8 block_count reads as well as a uint32).
  uint32_t get_u32(const std::string& key) const;
  uint64_t get_u64(const std::string& key) const;
  int32_t get_i32(const std::string& key) const;
  int64_t get_i64(const std::string& key) const;
  // float32 or float64 (a float64 is narrowed to float).
  float get_f32(const std::string& key) const;
  double get_f64(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  // Arrays of any integer element type whose values all fit.
  std::vector<int32_t> get_i32_array(const std::string& key) const;
  std::vector<int64_t> get_i64_array(const std::string& key) const;
  // Arrays of float32 or float64.
  std::vector<float> get_f32_array(const std::string& key) const;

 private:
  const GgufValue& require(const std::string& key, const char* wanted) const;
  [[noreturn]] void fail_key(const std::string& key, const std::string& message) const;
  const GgufArray& require_array(const std::string& key, const char* wanted) const;
  std::string origin_;
  std::vector<std::pair<std::string, GgufValue>> entries_;
  std::map<std::string, size_t> index_;  // key -> entries_ position
};

// One tensor info. dims are GGUF's ne order: dims[0] is the innermost (contiguous)
// dimension, so a PyTorch [out, in] weight is stored as dims [in, out].
struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;      // ggml type number (see GgmlType); any known type parses
  uint64_t offset = 0;    // from the start of the data section; a multiple of the alignment
  uint64_t nbytes = 0;    // bytes the data take
  int64_t numel() const;
  // The PyTorch shape: dims reversed.
  std::vector<int64_t> shape() const;
  GgmlType ggml_type() const { return static_cast<GgmlType>(type); }
};

struct GgufHeader {
  uint32_t version = 3;
  GgufMetadata metadata;
  std::vector<GgufTensorInfo> tensors;  // in file order
  uint64_t alignment = 32;
  uint64_t data_start = 0;  // absolute offset of the data section
};

constexpr uint32_t kGgufDefaultAlignment = 32;
// Nested arrays deeper than this are refused (each level recurses in the parser).
constexpr int kGgufMaxArrayDepth = 8;

// Parses and checks the header of a GGUF file whose first `available` bytes are
// `bytes` and whose total size is `file_size` (available may be shorter than the file,
// but must hold the whole header). Checks: magic, version 2 or 3, every length and
// count against the bytes left (before allocating), value types, array nesting depth,
// duplicate keys and tensor names, general.alignment (UINT32, a power of two), n_dims
// in 1..4 (0 is refused too), dims non-zero and their product within int64, known ggml
// types, ne[0] a multiple of the block size, offsets aligned, tensor data within the
// file and not overlapping. Unsupported but known types (Q5_K, ...) parse: only
// GgufFile::tensor refuses them. Throws sqlab::Error (kind config) naming `origin`
// and the key or tensor. Pure: fuzzable.
GgufHeader parse_gguf_header(const uint8_t* bytes, size_t available, uint64_t file_size, const std::string& origin);

// A memory-mapped GGUF file: the header is parsed and checked on open; tensors are
// read from the mapping on request (only the bytes of that tensor are touched).
class GgufFile {
 public:
  explicit GgufFile(const std::string& path);
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return header_.version; }
  uint64_t alignment() const { return header_.alignment; }
  const GgufMetadata& metadata() const { return header_.metadata; }
  const std::vector<GgufTensorInfo>& tensors() const { return header_.tensors; }
  // nullptr when absent.
  const GgufTensorInfo* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  // Throws config_error naming the file and the tensor when absent.
  const GgufTensorInfo& info(const std::string& name) const;
  // Tensor names in file order.
  std::vector<std::string> names() const;
  // The raw bytes of one tensor inside the mapping (any ggml type; valid while this
  // object lives).
  std::pair<const uint8_t*, size_t> bytes(const std::string& name) const;
  // A fresh contiguous float32 tensor of shape info(name).shape() (the GGUF dims
  // reversed), dequantized from F32, F16, BF16, Q4_0, Q4_1 or Q8_0; other types throw
  // naming the tensor and the type ("Q5_K (type 13)"). Values are not checked: a NaN
  // or Inf in the file comes back as is (callers check with at::isfinite if they care).
  at::Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  MappedFile file_;
  GgufHeader header_;
  std::map<std::string, size_t> index_;  // name -> tensors() position
};

// One tensor to write: its name, its values (any floating dtype, any device; converted
// to float32) and the ggml type to store it as (F32, F16, BF16, Q8_0, Q4_0 or Q4_1).
struct GgufWriteTensor {
  std::string name;
  at::Tensor tensor;
  GgmlType type = GgmlType::F32;
};

// Writes a GGUF version 3 file atomically (PATH.tmp, then renamed): the metadata in
// its order, then the tensor infos and data in the given order, each tensor's data at
// a multiple of `alignment` (a power of two; written as general.alignment when it is
// not 32, or when the metadata already holds that key). Tensors are stored with dims =
// their PyTorch shape reversed; block types need the last dimension to be a multiple of
// 32, and quantized types finite values. Quantization is ggml's reference
// (quantize_row_*_ref). Throws sqlab::Error naming the path and the key or tensor.
void write_gguf(const std::string& path, const GgufMetadata& metadata, const std::vector<GgufWriteTensor>& tensors,
                uint32_t alignment = kGgufDefaultAlignment);

}  // namespace sqlab
