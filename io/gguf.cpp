#include "io/gguf.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "core/error.h"
#include "io/mapped_file.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF files are read as little-endian");

namespace sqlab {
namespace {

constexpr uint64_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr const char* kAlignmentKey = "general.alignment";

[[noreturn]] void fail(const std::string& origin, const std::string& message) {
  throw config_error(fmt::format("gguf file '{}': {}", origin, message));
}

[[noreturn]] void fail_tensor(const std::string& origin, const std::string& name, const std::string& message) {
  fail(origin, fmt::format("tensor '{}': {}", name, message));
}

bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::uint8 || t == GgufValueType::uint16 || t == GgufValueType::uint32 ||
         t == GgufValueType::uint64;
}

bool is_signed(GgufValueType t) {
  return t == GgufValueType::int8 || t == GgufValueType::int16 || t == GgufValueType::int32 ||
         t == GgufValueType::int64;
}

bool is_float(GgufValueType t) { return t == GgufValueType::float32 || t == GgufValueType::float64; }

// Bytes of one scalar of this type; 0 for string and array.
uint64_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::uint8: case GgufValueType::int8: case GgufValueType::boolean: return 1;
    case GgufValueType::uint16: case GgufValueType::int16: return 2;
    case GgufValueType::uint32: case GgufValueType::int32: case GgufValueType::float32: return 4;
    case GgufValueType::uint64: case GgufValueType::int64: case GgufValueType::float64: return 8;
    default: return 0;
  }
}

// The fewest bytes one element of this type takes in a file: what a count is checked
// against before anything is allocated.
uint64_t min_encoded_size(GgufValueType t) {
  if (t == GgufValueType::string) return 8;   // the length
  if (t == GgufValueType::array) return 12;   // element type and count
  return scalar_size(t);
}

// The range of values each integer type holds, as __int128 so that one comparison
// serves signed and unsigned alike.
std::pair<__int128, __int128> int_range(GgufValueType t) {
  switch (t) {
    case GgufValueType::uint8: return {0, UINT8_MAX};
    case GgufValueType::uint16: return {0, UINT16_MAX};
    case GgufValueType::uint32: return {0, UINT32_MAX};
    case GgufValueType::uint64: return {0, UINT64_MAX};
    case GgufValueType::int8: return {INT8_MIN, INT8_MAX};
    case GgufValueType::int16: return {INT16_MIN, INT16_MAX};
    case GgufValueType::int32: return {INT32_MIN, INT32_MAX};
    case GgufValueType::int64: return {INT64_MIN, INT64_MAX};
    default: return {1, 0};  // empty: not an integer type
  }
}

std::string int128_text(__int128 v) {
  if (v < 0) return "-" + int128_text(-v);
  return std::to_string(static_cast<uint64_t>(v));  // every GGUF integer fits in 64 bits
}

// For messages: "UINT32 7", "STRING", "ARRAY of STRING (3 elements)".
std::string describe(const GgufValue& v) {
  const std::string type = gguf_value_type_name(v.type);
  if (const auto* u = std::get_if<uint64_t>(&v.data)) return fmt::format("{} {}", type, *u);
  if (const auto* i = std::get_if<int64_t>(&v.data)) return fmt::format("{} {}", type, *i);
  if (const auto* f = std::get_if<double>(&v.data)) return fmt::format("{} {}", type, *f);
  if (const auto* a = std::get_if<GgufArray>(&v.data))
    return fmt::format("ARRAY of {} ({} elements)", gguf_value_type_name(a->type), a->size());
  return type;
}

// ---------------------------------------------------------------- reading

// Reads little-endian values from the header bytes; every read is checked against the
// bytes left, and a failure names what was being read (`context`: the key or tensor).
class Cursor {
 public:
  Cursor(const uint8_t* bytes, size_t available, const std::string& origin)
      : bytes_(bytes), available_(available), origin_(origin) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return available_ - pos_; }
  const std::string& origin() const { return origin_; }

  void need(uint64_t n, const std::string& context, const char* what) const {
    if (n > left())
      fail(origin_, fmt::format("{}: truncated: {} needs {} bytes at offset {}, but only {} are left", context, what, n,
                                pos_, left()));
  }

  template <class T>
  T read(const std::string& context, const char* what) {
    need(sizeof(T), context, what);
    T value;
    std::memcpy(&value, bytes_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const std::string& context, const char* what) {
    const uint64_t length = read<uint64_t>(context, what);
    if (length > left())  // checked before the string is allocated
      fail(origin_, fmt::format("{}: {} claims {} bytes at offset {}, but only {} are left (truncated or corrupt)",
                                context, what, length, pos_, left()));
    std::string s(reinterpret_cast<const char*>(bytes_ + pos_), static_cast<size_t>(length));
    pos_ += length;
    return s;
  }

  // A count of items each at least `min_size` bytes long must fit in the bytes left.
  void check_count(uint64_t count, uint64_t min_size, const std::string& context, const char* what) const {
    if (min_size > 0 && count > left() / min_size)
      fail(origin_, fmt::format("{}: {} {} cannot fit in the {} bytes left (each takes at least {})", context, what,
                                count, left(), min_size));
  }

 private:
  const uint8_t* bytes_;
  uint64_t available_;
  uint64_t pos_ = 0;
  const std::string& origin_;
};

GgufValueType read_value_type(Cursor& c, const std::string& context, const char* what) {
  const uint32_t raw = c.read<uint32_t>(context, what);
  if (raw > static_cast<uint32_t>(GgufValueType::float64))
    fail(c.origin(), fmt::format("{}: unknown value type {}", context, raw));
  return static_cast<GgufValueType>(raw);
}

// A scalar of an integer type, widened: uint64_t for unsigned, int64_t for signed.
template <class T>
T read_integer(Cursor& c, GgufValueType t, const std::string& context) {
  switch (t) {
    case GgufValueType::uint8: return static_cast<T>(c.read<uint8_t>(context, "the value"));
    case GgufValueType::int8: return static_cast<T>(c.read<int8_t>(context, "the value"));
    case GgufValueType::uint16: return static_cast<T>(c.read<uint16_t>(context, "the value"));
    case GgufValueType::int16: return static_cast<T>(c.read<int16_t>(context, "the value"));
    case GgufValueType::uint32: return static_cast<T>(c.read<uint32_t>(context, "the value"));
    case GgufValueType::int32: return static_cast<T>(c.read<int32_t>(context, "the value"));
    case GgufValueType::uint64: return static_cast<T>(c.read<uint64_t>(context, "the value"));
    default: return static_cast<T>(c.read<int64_t>(context, "the value"));
  }
}

double read_float(Cursor& c, GgufValueType t, const std::string& context) {
  if (t == GgufValueType::float32) return c.read<float>(context, "the value");
  return c.read<double>(context, "the value");
}

uint64_t read_bool(Cursor& c, const std::string& context) {
  const uint8_t b = c.read<uint8_t>(context, "the value");
  if (b > 1) fail(c.origin(), fmt::format("{}: BOOL value {} (must be 0 or 1)", context, b));
  return b;
}

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& context, int depth);

GgufArray read_array(Cursor& c, const std::string& context, int depth) {
  if (depth > kGgufMaxArrayDepth)
    fail(c.origin(), fmt::format("{}: arrays nested deeper than {} levels", context, kGgufMaxArrayDepth));
  GgufArray a;
  a.type = read_value_type(c, context, "the array's element type");
  const uint64_t count = c.read<uint64_t>(context, "the array's count");
  c.check_count(count, min_encoded_size(a.type), context, "array count");
  const size_t n = static_cast<size_t>(count);
  if (is_unsigned(a.type) || a.type == GgufValueType::boolean) {
    a.uints.reserve(n);
    for (size_t i = 0; i < n; ++i)
      a.uints.push_back(a.type == GgufValueType::boolean ? read_bool(c, context) : read_integer<uint64_t>(c, a.type, context));
  } else if (is_signed(a.type)) {
    a.ints.reserve(n);
    for (size_t i = 0; i < n; ++i) a.ints.push_back(read_integer<int64_t>(c, a.type, context));
  } else if (is_float(a.type)) {
    a.floats.reserve(n);
    for (size_t i = 0; i < n; ++i) a.floats.push_back(read_float(c, a.type, context));
  } else if (a.type == GgufValueType::string) {
    a.strings.reserve(n);
    for (size_t i = 0; i < n; ++i) a.strings.push_back(c.read_string(context, "a string element"));
  } else {
    a.arrays.reserve(n);
    for (size_t i = 0; i < n; ++i) a.arrays.push_back(read_value(c, GgufValueType::array, context, depth + 1));
  }
  return a;
}

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& context, int depth) {
  GgufValue v;
  v.type = type;
  if (type == GgufValueType::boolean) v.data = read_bool(c, context);
  else if (is_unsigned(type)) v.data = read_integer<uint64_t>(c, type, context);
  else if (is_signed(type)) v.data = read_integer<int64_t>(c, type, context);
  else if (is_float(type)) v.data = read_float(c, type, context);
  else if (type == GgufValueType::string) v.data = c.read_string(context, "the string value");
  else v.data = read_array(c, context, depth);
  return v;
}

void read_metadata(Cursor& c, uint64_t kv_count, GgufMetadata& metadata) {
  // A pair takes at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes.
  c.check_count(kv_count, 14, "header", "kv_count");
  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string number = fmt::format("key #{}", i);
    std::string key = c.read_string(number, "the key");
    if (key.empty()) fail(c.origin(), fmt::format("{} is empty", number));
    const std::string context = fmt::format("key '{}'", key);
    if (metadata.has(key)) fail(c.origin(), fmt::format("duplicate {}", context));
    const GgufValueType type = read_value_type(c, context, "the value type");
    metadata.set(key, read_value(c, type, context, 1));
  }
}

uint64_t read_alignment(const GgufMetadata& metadata) {
  if (!metadata.has(kAlignmentKey)) return kGgufDefaultAlignment;
  const uint32_t alignment = metadata.get_u32(kAlignmentKey);
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    fail(metadata.origin(), fmt::format("key '{}': {} is not a power of two", kAlignmentKey, alignment));
  return alignment;
}

GgufTensorInfo read_tensor_info(Cursor& c, uint64_t index, uint64_t alignment) {
  GgufTensorInfo t;
  const std::string& origin = c.origin();
  t.name = c.read_string(fmt::format("tensor info #{}", index), "the tensor name");
  if (t.name.empty()) fail(origin, fmt::format("tensor info #{} has an empty name", index));
  const std::string context = fmt::format("tensor '{}'", t.name);
  const uint32_t n_dims = c.read<uint32_t>(context, "n_dims");
  if (n_dims == 0 || n_dims > kMaxDims) fail_tensor(origin, t.name, fmt::format("n_dims {} (must be 1 to {})", n_dims, kMaxDims));
  uint64_t numel = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t dim = c.read<uint64_t>(context, "a dimension");
    if (dim == 0) fail_tensor(origin, t.name, fmt::format("dimension {} is 0", d));
    if (dim > static_cast<uint64_t>(INT64_MAX) / numel)
      fail_tensor(origin, t.name, fmt::format("dimensions overflow at dimension {} ({})", d, dim));
    numel *= dim;
    t.dims.push_back(dim);
  }
  t.type = c.read<uint32_t>(context, "the ggml type");
  const GgmlTypeTraits* traits = ggml_type_traits(t.type);
  if (!traits) fail_tensor(origin, t.name, ggml_type_text(t.type));
  if (t.dims[0] % traits->block_size != 0)
    fail_tensor(origin, t.name, fmt::format("row size ne[0] = {} is not a multiple of the block size {} of {}",
                                            t.dims[0], traits->block_size, ggml_type_text(t.type)));
  // Checked before multiplying: 2^62 F32 values would wrap around to 0 bytes.
  const uint64_t blocks = numel / traits->block_size;
  if (blocks > UINT64_MAX / traits->type_size)
    fail_tensor(origin, t.name, fmt::format("data size overflows ({} blocks of {} bytes)", blocks, traits->type_size));
  t.nbytes = blocks * traits->type_size;
  t.offset = c.read<uint64_t>(context, "the data offset");
  if (t.offset % alignment != 0)
    fail_tensor(origin, t.name, fmt::format("data offset {} is not a multiple of the alignment {}", t.offset, alignment));
  return t;
}

// Every tensor's data lies inside the data section, and no two overlap (gaps are the
// alignment padding).
void check_layout(const std::vector<GgufTensorInfo>& tensors, uint64_t data_start, uint64_t file_size,
                  const std::string& origin) {
  if (tensors.empty()) return;  // a file of metadata alone may omit the final padding
  const uint64_t data_size = data_start <= file_size ? file_size - data_start : 0;
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
  const GgufTensorInfo* previous = nullptr;
  for (size_t i : order) {
    const GgufTensorInfo& t = tensors[i];
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail_tensor(origin, t.name, fmt::format("data [{}, {}) run past the end of the file: the data section (from byte "
                                              "{} of {}) holds {} bytes", t.offset, t.offset + t.nbytes, data_start,
                                              file_size, data_size));
    if (previous && t.offset < previous->offset + previous->nbytes)
      fail_tensor(origin, t.name, fmt::format("data [{}, {}) overlap tensor '{}' [{}, {})", t.offset,
                                              t.offset + t.nbytes, previous->name, previous->offset,
                                              previous->offset + previous->nbytes));
    previous = &t;
  }
}

uint32_t read_version(Cursor& c) {
  const uint32_t version = c.read<uint32_t>("header", "the version");
  if (version == 2 || version == 3) return version;
  if (version == 1)
    fail(c.origin(), "GGUF version 1 is not supported (only 2 and 3): re-convert the model with a current llama.cpp");
  if ((version & 0xFFFF) == 0 && ((version >> 24) == 2 || (version >> 24) == 3))
    fail(c.origin(), "big-endian GGUF files are not supported");
  fail(c.origin(), fmt::format("unknown GGUF version {} (only 2 and 3 are supported)", version));
}

// ---------------------------------------------------------------- writing

class ByteWriter {
 public:
  std::string bytes;
  template <class T>
  void put(T value) {
    bytes.append(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.append(s);
  }
};

[[noreturn]] void fail_write(const std::string& path, const std::string& message) {
  throw Error(fmt::format("gguf file '{}': {}", path, message));
}

void put_integer(ByteWriter& w, GgufValueType t, __int128 v, const std::string& path, const std::string& key) {
  const auto [lo, hi] = int_range(t);
  if (v < lo || v > hi)
    fail_write(path, fmt::format("key '{}': {} does not fit {}", key, int128_text(v), gguf_value_type_name(t)));
  switch (t) {
    case GgufValueType::uint8: w.put(static_cast<uint8_t>(v)); break;
    case GgufValueType::int8: w.put(static_cast<int8_t>(v)); break;
    case GgufValueType::uint16: w.put(static_cast<uint16_t>(v)); break;
    case GgufValueType::int16: w.put(static_cast<int16_t>(v)); break;
    case GgufValueType::uint32: w.put(static_cast<uint32_t>(v)); break;
    case GgufValueType::int32: w.put(static_cast<int32_t>(v)); break;
    case GgufValueType::uint64: w.put(static_cast<uint64_t>(v)); break;
    default: w.put(static_cast<int64_t>(v)); break;
  }
}

void put_float(ByteWriter& w, GgufValueType t, double v) {
  if (t == GgufValueType::float32) w.put(static_cast<float>(v));
  else w.put(v);
}

void put_array(ByteWriter& w, const GgufArray& a, const std::string& path, const std::string& key);

void put_value(ByteWriter& w, const GgufValue& v, const std::string& path, const std::string& key) {
  const auto mismatch = [&] {
    fail_write(path, fmt::format("key '{}': a {} value holding another kind of payload", key, gguf_value_type_name(v.type)));
  };
  if (is_unsigned(v.type) || v.type == GgufValueType::boolean) {
    const auto* u = std::get_if<uint64_t>(&v.data);
    if (!u) mismatch();
    if (v.type == GgufValueType::boolean && *u > 1) fail_write(path, fmt::format("key '{}': BOOL value {}", key, *u));
    put_integer(w, v.type == GgufValueType::boolean ? GgufValueType::uint8 : v.type, *u, path, key);
  } else if (is_signed(v.type)) {
    const auto* i = std::get_if<int64_t>(&v.data);
    if (!i) mismatch();
    put_integer(w, v.type, *i, path, key);
  } else if (is_float(v.type)) {
    const auto* f = std::get_if<double>(&v.data);
    if (!f) mismatch();
    put_float(w, v.type, *f);
  } else if (v.type == GgufValueType::string) {
    const auto* s = std::get_if<std::string>(&v.data);
    if (!s) mismatch();
    w.put_string(*s);
  } else if (v.type == GgufValueType::array) {
    const auto* a = std::get_if<GgufArray>(&v.data);
    if (!a) mismatch();
    put_array(w, *a, path, key);
  } else {
    fail_write(path, fmt::format("key '{}': {}", key, gguf_value_type_name(v.type)));
  }
}

void put_array(ByteWriter& w, const GgufArray& a, const std::string& path, const std::string& key) {
  const size_t others = a.uints.size() + a.ints.size() + a.floats.size() + a.strings.size() + a.arrays.size() - a.size();
  if (others != 0 || a.type > GgufValueType::float64)
    fail_write(path, fmt::format("key '{}': an ARRAY of {} holding elements of another kind", key,
                                 gguf_value_type_name(a.type)));
  w.put(static_cast<uint32_t>(a.type));
  w.put<uint64_t>(a.size());
  if (a.type == GgufValueType::boolean) {
    for (uint64_t u : a.uints) {
      if (u > 1) fail_write(path, fmt::format("key '{}': BOOL element {}", key, u));
      w.put(static_cast<uint8_t>(u));
    }
  } else if (is_unsigned(a.type)) {
    for (uint64_t u : a.uints) put_integer(w, a.type, u, path, key);
  } else if (is_signed(a.type)) {
    for (int64_t i : a.ints) put_integer(w, a.type, i, path, key);
  } else if (is_float(a.type)) {
    for (double f : a.floats) put_float(w, a.type, f);
  } else if (a.type == GgufValueType::string) {
    for (const std::string& s : a.strings) w.put_string(s);
  } else {
    for (const GgufValue& v : a.arrays) {
      if (v.type != GgufValueType::array) fail_write(path, fmt::format("key '{}': a nested element is not an ARRAY", key));
      put_value(w, v, path, key);
    }
  }
}

uint64_t align_up(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

// A tensor checked and converted for writing: float32, contiguous, on the CPU.
struct PreparedTensor {
  const GgufWriteTensor* source;
  at::Tensor values;
  std::vector<uint64_t> dims;  // ne order
  uint64_t nbytes;
  uint64_t offset;
};

PreparedTensor prepare_tensor(const GgufWriteTensor& t, const std::string& path) {
  const auto bad = [&](const std::string& message) { fail_write(path, fmt::format("tensor '{}': {}", t.name, message)); };
  if (t.name.empty()) fail_write(path, "a tensor has an empty name");
  if (!ggml_type_supported(t.type)) bad(fmt::format("cannot write {}", ggml_type_text(static_cast<uint32_t>(t.type))));
  if (!t.tensor.defined() || !t.tensor.is_floating_point()) bad("needs a floating-point tensor");
  if (t.tensor.dim() < 1 || t.tensor.dim() > static_cast<int64_t>(kMaxDims))
    bad(fmt::format("has {} dimensions (GGUF holds 1 to {})", t.tensor.dim(), kMaxDims));
  if (t.tensor.numel() == 0) bad("is empty");
  const GgmlTypeTraits* traits = ggml_type_traits(static_cast<uint32_t>(t.type));
  PreparedTensor p{&t, t.tensor.detach().to(at::kCPU, at::kFloat).contiguous(), {}, 0, 0};
  for (int64_t d = t.tensor.dim() - 1; d >= 0; --d) p.dims.push_back(static_cast<uint64_t>(t.tensor.size(d)));
  if (p.dims[0] % traits->block_size != 0)
    bad(fmt::format("last dimension {} is not a multiple of the block size {} of {}", p.dims[0], traits->block_size,
                    traits->name));
  // ggml's quantizers turn NaN and Inf into garbage nibbles (and undefined casts).
  if (traits->block_size > 1 && !at::isfinite(p.values).all().item<bool>()) bad("holds NaN or Inf values");
  p.nbytes = static_cast<uint64_t>(p.values.numel()) / traits->block_size * traits->type_size;
  return p;
}

void write_tensor_info(ByteWriter& w, const PreparedTensor& p) {
  w.put_string(p.source->name);
  w.put(static_cast<uint32_t>(p.dims.size()));
  for (uint64_t d : p.dims) w.put(d);
  w.put(static_cast<uint32_t>(p.source->type));
  w.put(p.offset);
}

void write_padding(std::ofstream& out, uint64_t written, uint64_t alignment) {
  static const char zeros[256] = {};
  for (uint64_t pad = align_up(written, alignment) - written; pad > 0;) {
    const uint64_t n = std::min<uint64_t>(pad, sizeof(zeros));
    out.write(zeros, static_cast<std::streamsize>(n));
    pad -= n;
  }
}

}  // namespace

// ---------------------------------------------------------------- values

std::string gguf_value_type_name(GgufValueType type) {
  static const char* const names[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32", "FLOAT32",
                                      "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
  const auto i = static_cast<uint32_t>(type);
  return i < std::size(names) ? names[i] : fmt::format("unknown value type {}", i);
}

size_t GgufArray::size() const {
  if (is_unsigned(type) || type == GgufValueType::boolean) return uints.size();
  if (is_signed(type)) return ints.size();
  if (is_float(type)) return floats.size();
  if (type == GgufValueType::string) return strings.size();
  return arrays.size();
}

GgufValue GgufValue::of_uint(GgufValueType type, uint64_t v) {
  if (!is_unsigned(type) || v > int_range(type).second)
    throw std::invalid_argument(fmt::format("GgufValue::of_uint: {} as {}", v, gguf_value_type_name(type)));
  return GgufValue{type, v};
}

GgufValue GgufValue::of_int(GgufValueType type, int64_t v) {
  const auto [lo, hi] = int_range(type);
  if (!is_signed(type) || v < lo || v > hi)
    throw std::invalid_argument(fmt::format("GgufValue::of_int: {} as {}", v, gguf_value_type_name(type)));
  return GgufValue{type, v};
}

GgufValue GgufValue::of_float(GgufValueType type, double v) {
  if (!is_float(type)) throw std::invalid_argument("GgufValue::of_float: " + gguf_value_type_name(type));
  // A float32 value is stored as it will read back.
  return GgufValue{type, type == GgufValueType::float32 ? static_cast<double>(static_cast<float>(v)) : v};
}

GgufValue GgufValue::of_bool(bool v) { return GgufValue{GgufValueType::boolean, uint64_t{v}}; }
GgufValue GgufValue::of_string(std::string v) { return GgufValue{GgufValueType::string, std::move(v)}; }
GgufValue GgufValue::of_array(GgufArray v) { return GgufValue{GgufValueType::array, std::move(v)}; }

GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufArray a;
  a.type = GgufValueType::string;
  a.strings = std::move(v);
  return of_array(std::move(a));
}

GgufValue GgufValue::i32_array(const std::vector<int32_t>& v) {
  GgufArray a;
  a.type = GgufValueType::int32;
  a.ints.assign(v.begin(), v.end());
  return of_array(std::move(a));
}

GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  GgufArray a;
  a.type = GgufValueType::float32;
  a.floats.assign(v.begin(), v.end());
  return of_array(std::move(a));
}

// ---------------------------------------------------------------- metadata

const GgufValue* GgufMetadata::find(const std::string& key) const {
  const auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

void GgufMetadata::fail_key(const std::string& key, const std::string& message) const {
  fail(origin_, fmt::format("key '{}': {}", key, message));
}

const GgufValue& GgufMetadata::at(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail_key(key, "missing");
  return *v;
}

const GgufValue& GgufMetadata::require(const std::string& key, const char* wanted) const {
  const GgufValue* v = find(key);
  if (!v) fail_key(key, fmt::format("missing (expected {})", wanted));
  return *v;
}

const GgufArray& GgufMetadata::require_array(const std::string& key, const char* wanted) const {
  const GgufValue& v = require(key, wanted);
  const auto* a = std::get_if<GgufArray>(&v.data);
  if (!a) fail_key(key, fmt::format("expected {}, got {}", wanted, describe(v)));
  return *a;
}

void GgufMetadata::set(const std::string& key, GgufValue value) {
  const auto it = index_.find(key);
  if (it != index_.end()) {
    entries_[it->second].second = std::move(value);
    return;
  }
  index_[key] = entries_.size();
  entries_.emplace_back(key, std::move(value));
}

namespace {

// The value as an integer when it is of an integer type.
bool integer_of(const GgufValue& v, __int128& out) {
  if (v.type == GgufValueType::boolean) return false;
  if (const auto* u = std::get_if<uint64_t>(&v.data)) out = *u;
  else if (const auto* i = std::get_if<int64_t>(&v.data)) out = *i;
  else return false;
  return true;
}

template <class T>
bool fits(__int128 v) {
  return v >= static_cast<__int128>(std::numeric_limits<T>::min()) &&
         v <= static_cast<__int128>(std::numeric_limits<T>::max());
}

}  // namespace

#define SQLAB_GGUF_INTEGER_GETTER(NAME, T, WANTED)                                  \
  T GgufMetadata::NAME(const std::string& key) const {                              \
    const GgufValue& v = require(key, WANTED);                                      \
    __int128 i = 0;                                                                 \
    if (!integer_of(v, i) || !fits<T>(i)) fail_key(key, fmt::format("expected {}, got {}", WANTED, describe(v))); \
    return static_cast<T>(i);                                                       \
  }

SQLAB_GGUF_INTEGER_GETTER(get_u32, uint32_t, "an integer in the UINT32 range")
SQLAB_GGUF_INTEGER_GETTER(get_u64, uint64_t, "an integer in the UINT64 range")
SQLAB_GGUF_INTEGER_GETTER(get_i32, int32_t, "an integer in the INT32 range")
SQLAB_GGUF_INTEGER_GETTER(get_i64, int64_t, "an integer in the INT64 range")
#undef SQLAB_GGUF_INTEGER_GETTER

double GgufMetadata::get_f64(const std::string& key) const {
  const GgufValue& v = require(key, "FLOAT32 or FLOAT64");
  if (!is_float(v.type)) fail_key(key, fmt::format("expected FLOAT32 or FLOAT64, got {}", describe(v)));
  return std::get<double>(v.data);
}

float GgufMetadata::get_f32(const std::string& key) const { return static_cast<float>(get_f64(key)); }

bool GgufMetadata::get_bool(const std::string& key) const {
  const GgufValue& v = require(key, "BOOL");
  if (v.type != GgufValueType::boolean) fail_key(key, fmt::format("expected BOOL, got {}", describe(v)));
  return std::get<uint64_t>(v.data) != 0;
}

const std::string& GgufMetadata::get_string(const std::string& key) const {
  const GgufValue& v = require(key, "STRING");
  if (v.type != GgufValueType::string) fail_key(key, fmt::format("expected STRING, got {}", describe(v)));
  return std::get<std::string>(v.data);
}

const std::vector<std::string>& GgufMetadata::get_string_array(const std::string& key) const {
  const GgufArray& a = require_array(key, "ARRAY of STRING");
  if (a.type != GgufValueType::string) fail_key(key, fmt::format("expected ARRAY of STRING, got {}", describe(at(key))));
  return a.strings;
}

std::vector<int64_t> GgufMetadata::get_i64_array(const std::string& key) const {
  const GgufArray& a = require_array(key, "ARRAY of integers");
  std::vector<int64_t> out;
  if (is_signed(a.type)) return a.ints;
  if (!is_unsigned(a.type)) fail_key(key, fmt::format("expected ARRAY of integers, got {}", describe(at(key))));
  out.reserve(a.uints.size());
  for (size_t i = 0; i < a.uints.size(); ++i) {
    if (a.uints[i] > static_cast<uint64_t>(INT64_MAX))
      fail_key(key, fmt::format("element {} = {} does not fit INT64", i, a.uints[i]));
    out.push_back(static_cast<int64_t>(a.uints[i]));
  }
  return out;
}

std::vector<int32_t> GgufMetadata::get_i32_array(const std::string& key) const {
  const std::vector<int64_t> wide = get_i64_array(key);
  std::vector<int32_t> out;
  out.reserve(wide.size());
  for (size_t i = 0; i < wide.size(); ++i) {
    if (!fits<int32_t>(wide[i])) fail_key(key, fmt::format("element {} = {} does not fit INT32", i, wide[i]));
    out.push_back(static_cast<int32_t>(wide[i]));
  }
  return out;
}

std::vector<float> GgufMetadata::get_f32_array(const std::string& key) const {
  const GgufArray& a = require_array(key, "ARRAY of FLOAT32 or FLOAT64");
  if (!is_float(a.type)) fail_key(key, fmt::format("expected ARRAY of FLOAT32 or FLOAT64, got {}", describe(at(key))));
  return std::vector<float>(a.floats.begin(), a.floats.end());
}

// ---------------------------------------------------------------- tensor infos

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (uint64_t d : dims) n *= static_cast<int64_t>(d);
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const {
  return std::vector<int64_t>(dims.rbegin(), dims.rend());
}

// ---------------------------------------------------------------- header

GgufHeader parse_gguf_header(const uint8_t* bytes, size_t available, uint64_t file_size, const std::string& origin) {
  Cursor c(bytes, std::min<uint64_t>(available, file_size), origin);
  c.need(4, "header", "the magic");
  if (std::memcmp(bytes, "GGUF", 4) != 0) fail(origin, "not a GGUF file (the first 4 bytes are not \"GGUF\")");
  c.read<uint32_t>("header", "the magic");
  GgufHeader h{read_version(c), GgufMetadata(origin), {}, kGgufDefaultAlignment, 0};
  const uint64_t tensor_count = c.read<uint64_t>("header", "tensor_count");
  const uint64_t kv_count = c.read<uint64_t>("header", "kv_count");
  read_metadata(c, kv_count, h.metadata);
  h.alignment = read_alignment(h.metadata);
  // A tensor info takes at least 8 (name length) + 1 (name) + 4 + 8 (one dim) + 4 + 8 bytes.
  c.check_count(tensor_count, 33, "header", "tensor_count");
  h.tensors.reserve(static_cast<size_t>(tensor_count));
  std::map<std::string, size_t> seen;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    h.tensors.push_back(read_tensor_info(c, i, h.alignment));
    if (!seen.emplace(h.tensors.back().name, i).second) fail_tensor(origin, h.tensors.back().name, "duplicate tensor name");
  }
  h.data_start = align_up(c.pos(), h.alignment);
  check_layout(h.tensors, h.data_start, file_size, origin);
  return h;
}

// ---------------------------------------------------------------- GgufFile

GgufFile::GgufFile(const std::string& path) : path_(path), file_(path, "gguf") {
  header_ = parse_gguf_header(file_.data(), file_.size(), file_.size(), path);
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

const GgufTensorInfo* GgufFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const GgufTensorInfo& GgufFile::info(const std::string& name) const {
  const GgufTensorInfo* t = find(name);
  if (!t) fail_tensor(path_, name, "not in the file");
  return *t;
}

std::vector<std::string> GgufFile::names() const {
  std::vector<std::string> result;
  for (const GgufTensorInfo& t : header_.tensors) result.push_back(t.name);
  return result;
}

std::pair<const uint8_t*, size_t> GgufFile::bytes(const std::string& name) const {
  const GgufTensorInfo& t = info(name);
  return {file_.data() + header_.data_start + t.offset, static_cast<size_t>(t.nbytes)};
}

at::Tensor GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo& t = info(name);
  if (!ggml_type_supported(t.ggml_type()))
    fail_tensor(path_, name, fmt::format("{} cannot be dequantized (sqlab reads {})", ggml_type_text(t.type),
                                         ggml_supported_types_text()));
  at::Tensor out = at::empty(t.shape(), at::TensorOptions().dtype(at::kFloat));
  const auto [data, size] = bytes(name);
  dequantize_row(t.ggml_type(), data, out.data_ptr<float>(), t.numel());
  file_.release(static_cast<size_t>(data - file_.data()), size);  // dequantized: the pages may go
  return out;
}

// ---------------------------------------------------------------- writer

void write_gguf(const std::string& path, const GgufMetadata& metadata, const std::vector<GgufWriteTensor>& tensors,
                uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    fail_write(path, fmt::format("alignment {} is not a power of two", alignment));
  GgufMetadata kv = metadata;
  if (alignment != kGgufDefaultAlignment || kv.has(kAlignmentKey)) kv.set(kAlignmentKey, GgufValue::u32(alignment));

  std::vector<PreparedTensor> prepared;
  std::map<std::string, int> names;
  uint64_t offset = 0;
  for (const GgufWriteTensor& t : tensors) {
    if (!names.emplace(t.name, 0).second) fail_write(path, fmt::format("tensor '{}': duplicate name", t.name));
    prepared.push_back(prepare_tensor(t, path));
    prepared.back().offset = offset;
    offset = align_up(offset + prepared.back().nbytes, alignment);
  }

  ByteWriter header;
  header.bytes.append("GGUF", 4);
  header.put<uint32_t>(3);
  header.put<uint64_t>(prepared.size());
  header.put<uint64_t>(kv.size());
  for (const auto& [key, value] : kv.entries()) {
    if (key.empty()) fail_write(path, "an empty key");
    header.put_string(key);
    header.put(static_cast<uint32_t>(value.type));
    put_value(header, value, path, key);
  }
  for (const PreparedTensor& p : prepared) write_tensor_info(header, p);

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(header.bytes.data(), static_cast<std::streamsize>(header.bytes.size()));
    write_padding(out, header.bytes.size(), alignment);
    std::vector<uint8_t> data;
    for (const PreparedTensor& p : prepared) {  // one tensor's bytes in memory at a time
      data.resize(p.nbytes);
      quantize_row(p.source->type, p.values.data_ptr<float>(), data.data(), p.values.numel());
      out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
      write_padding(out, p.nbytes, alignment);
    }
    out.flush();
    if (!out) {
      const int err = errno;
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      fail_write(path, fmt::format("cannot write: {}", std::strerror(err)));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail_write(path, fmt::format("cannot rename the temporary file: {}", ec.message()));
  }
}

}  // namespace sqlab
