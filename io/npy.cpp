#include "io/npy.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy data is read as little-endian");

namespace sqlab {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[] = "\x93NUMPY";
constexpr uint64_t kMaxHeader = 1ull << 20;

[[noreturn]] void fail(const std::string& origin, const std::string& message) {
  throw config_error(fmt::format("npy file '{}': {}", origin, message));
}

// The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False,
// 'shape': (3, 4), }. Values are strings, True/False/None, integers, or tuples/lists
// of values (a list descr is a structured dtype, rejected later).
struct Value {
  enum Kind { string, boolean, none, integer, sequence } kind = none;
  std::string text;
  bool flag = false;
  int64_t number = 0;
  std::vector<Value> items;
};

class DictParser {
 public:
  DictParser(const std::string& text, const std::string& origin) : s_(text), origin_(origin) {}

  std::map<std::string, Value> parse() {
    std::map<std::string, Value> dict;
    expect('{');
    while (true) {
      skip();
      if (peek() == '}') break;
      const Value key = value(0);
      if (key.kind != Value::string) error("dictionary keys must be strings");
      expect(':');
      dict[key.text] = value(0);
      skip();
      if (peek() == ',') ++i_;
      else if (peek() != '}') error("expected ',' or '}'");
    }
    ++i_;
    return dict;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail(origin_, fmt::format("cannot parse the header \"{}\" at character {}: {}", s_, i_, what));
  }
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void expect(char c) {
    skip();
    if (peek() != c) error(fmt::format("expected '{}'", c));
    ++i_;
  }

  Value value(int depth) {
    if (depth > 8) error("nested too deeply");
    skip();
    Value v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = Value::string;
      ++i_;
      while (i_ < s_.size() && s_[i_] != c) {
        if (s_[i_] == '\\' && i_ + 1 < s_.size()) ++i_;
        v.text += s_[i_++];
      }
      if (i_ >= s_.size()) error("unterminated string");
      ++i_;
    } else if (c == '(' || c == '[') {
      v.kind = Value::sequence;
      const char close = c == '(' ? ')' : ']';
      ++i_;
      while (true) {
        skip();
        if (peek() == close) break;
        v.items.push_back(value(depth + 1));
        skip();
        if (peek() == ',') ++i_;
        else if (peek() != close) error(fmt::format("expected ',' or '{}'", close));
      }
      ++i_;
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '-') {
      v.kind = Value::integer;
      const size_t start = i_;
      if (c == '-') ++i_;
      while (std::isdigit(static_cast<unsigned char>(peek()))) ++i_;
      const std::string digits = s_.substr(start, i_ - start);
      if (digits == "-" || digits.size() > 18) error("bad integer '" + digits + "'");
      v.number = std::stoll(digits);
      if (peek() == 'L') ++i_;  // Python 2 long
    } else if (s_.compare(i_, 4, "True") == 0 || s_.compare(i_, 5, "False") == 0) {
      v.kind = Value::boolean;
      v.flag = c == 'T';
      i_ += v.flag ? 4 : 5;
    } else if (s_.compare(i_, 4, "None") == 0) {
      i_ += 4;
    } else {
      error("unexpected character");
    }
    return v;
  }

  const std::string& s_;
  const std::string& origin_;
  size_t i_ = 0;
};

void check_descr(const Value& descr, NpyHeader& h, const std::string& origin) {
  if (descr.kind == Value::sequence)
    fail(origin, "structured dtypes (records with named fields) are not supported; save a plain float array");
  if (descr.kind != Value::string) fail(origin, "'descr' must be a string");
  h.descr = descr.text;
  if (h.descr == "<f2" || h.descr == "<f4" || h.descr == "<f8") {
    h.itemsize = static_cast<size_t>(h.descr[2] - '0');
    h.dtype = h.itemsize == 2 ? at::kHalf : h.itemsize == 4 ? at::kFloat : at::kDouble;
    return;
  }
  if (h.descr.find('O') != std::string::npos)
    fail(origin, fmt::format("dtype '{}' is an object array (pickled Python objects); save a float array", h.descr));
  if (!h.descr.empty() && h.descr[0] == '>')
    fail(origin, fmt::format("dtype '{}' is big-endian; convert with arr.astype('<{}') (supported: <f2, <f4, <f8)",
                             h.descr, h.descr.substr(1)));
  fail(origin, fmt::format("unsupported dtype '{}' (supported: <f2, <f4, <f8)", h.descr));
}

}  // namespace

int64_t NpyHeader::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

NpyHeader parse_npy_header(const uint8_t* bytes, size_t size, uint64_t file_size, const std::string& origin) {
  if (size < 10 || std::memcmp(bytes, kMagic, 6) != 0)
    fail(origin, "not a .npy file (the magic string \\x93NUMPY is missing)");
  NpyHeader h;
  h.major_version = bytes[6];
  if (h.major_version < 1 || h.major_version > 3)
    fail(origin, fmt::format("unsupported format version {}.{} (supported: 1.0, 2.0, 3.0)", bytes[6], bytes[7]));
  uint64_t length = 0;
  uint64_t prefix = 0;
  if (h.major_version == 1) {
    length = static_cast<uint64_t>(bytes[8]) | static_cast<uint64_t>(bytes[9]) << 8;
    prefix = 10;
  } else {
    if (size < 12) fail(origin, "the header is truncated");
    length = static_cast<uint64_t>(bytes[8]) | static_cast<uint64_t>(bytes[9]) << 8 |
             static_cast<uint64_t>(bytes[10]) << 16 | static_cast<uint64_t>(bytes[11]) << 24;
    prefix = 12;
  }
  if (length > kMaxHeader) fail(origin, fmt::format("header length {} exceeds the 1 MiB limit", length));
  if (prefix + length > file_size)
    fail(origin, fmt::format("header length {} runs past the end of the file ({} bytes)", length, file_size));
  if (prefix + length > size) fail(origin, "the header is truncated");
  const std::string text(reinterpret_cast<const char*>(bytes + prefix), length);
  h.data_offset = prefix + length;

  std::map<std::string, Value> dict = DictParser(text, origin).parse();
  for (const char* key : {"descr", "fortran_order", "shape"})
    if (!dict.count(key)) fail(origin, fmt::format("the header has no '{}'", key));
  check_descr(dict["descr"], h, origin);
  const Value& order = dict["fortran_order"];
  if (order.kind != Value::boolean) fail(origin, "'fortran_order' must be True or False");
  h.fortran_order = order.flag;
  const Value& shape = dict["shape"];
  if (shape.kind != Value::sequence) fail(origin, "'shape' must be a tuple of integers");
  uint64_t numel = 1;
  for (const Value& dim : shape.items) {
    if (dim.kind != Value::integer || dim.number < 0) fail(origin, "'shape' must hold non-negative integers");
    const uint64_t d = static_cast<uint64_t>(dim.number);
    if (d > (1ull << 40) || (d > 0 && numel > (1ull << 60) / d)) fail(origin, "'shape' is absurdly large");
    numel *= d;
    h.shape.push_back(dim.number);
  }
  const uint64_t need = numel * h.itemsize;
  const uint64_t have = file_size - h.data_offset;
  if (need != have)
    fail(origin, fmt::format("the header says shape ({}) of {} = {} bytes of data, but the file holds {}",
                             fmt::join(h.shape, ", "), h.descr, need, have));
  return h;
}

NpyHeader read_npy_header(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(path, "no such file");
  const uint64_t file_size = fs::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, fmt::format("cannot open: {}", std::strerror(errno)));
  std::vector<uint8_t> head(static_cast<size_t>(std::min<uint64_t>(file_size, 12)));
  in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  if (head.size() >= 12 && std::memcmp(head.data(), kMagic, 6) == 0 && head[6] >= 1 && head[6] <= 3) {
    // Read the whole header (its length is in the prefix; capped by the parser).
    uint64_t length = head[6] == 1 ? (head[8] | head[9] << 8)
                                   : (head[8] | head[9] << 8 | head[10] << 16 | static_cast<uint64_t>(head[11]) << 24);
    const uint64_t total = std::min<uint64_t>((head[6] == 1 ? 10 : 12) + std::min(length, kMaxHeader), file_size);
    head.resize(static_cast<size_t>(total));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  }
  return parse_npy_header(head.data(), head.size(), file_size, path);
}

at::Tensor read_npy(const std::string& path) {
  const NpyHeader h = read_npy_header(path);
  std::vector<int64_t> shape = h.shape;
  if (h.fortran_order) std::reverse(shape.begin(), shape.end());
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(h.dtype));
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(h.data_offset));
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(h.numel() * h.itemsize));
  if (!in) fail(path, "cannot read the array data");
  if (h.fortran_order && t.dim() > 1) {
    std::vector<int64_t> order(t.dim());
    for (int64_t i = 0; i < t.dim(); ++i) order[i] = t.dim() - 1 - i;
    t = t.permute(order).contiguous();
  }
  return t;
}

void write_npy(const std::string& path, const at::Tensor& tensor) {
  const char* descr = tensor.scalar_type() == at::kHalf    ? "<f2"
                      : tensor.scalar_type() == at::kFloat  ? "<f4"
                      : tensor.scalar_type() == at::kDouble ? "<f8"
                                                            : nullptr;
  if (!descr)
    throw Error(fmt::format("npy file '{}': cannot write dtype {} (float16, float32, float64 only)", path,
                            c10::toString(tensor.scalar_type())));
  const at::Tensor c = tensor.cpu().contiguous();
  // Python tuple syntax: (), (3,), (3, 4).
  std::string shape = fmt::format("{}", fmt::join(c.sizes(), ", "));
  if (c.dim() == 1) shape += ",";
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, shape);
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(kMagic, 6);
    const char version[2] = {1, 0};
    out.write(version, 2);
    const uint16_t length = static_cast<uint16_t>(header.size());
    out.write(reinterpret_cast<const char*>(&length), 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
    out.flush();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw Error(fmt::format("npy file '{}': cannot write: {}", path, std::strerror(errno)));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw Error(fmt::format("npy file '{}': cannot rename the temporary file: {}", path, ec.message()));
  }
}

}  // namespace sqlab
