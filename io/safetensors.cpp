#include "io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/mapped_file.h"
#include "core/json_nesting.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

namespace sqlab {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& origin, const std::string& message) {
  throw config_error(fmt::format("safetensors file '{}': {}", origin, message));
}

[[noreturn]] void fail_tensor(const std::string& origin, const std::string& name, const std::string& message) {
  fail(origin, fmt::format("tensor '{}': {}", name, message));
}

struct DtypeInfo {
  const char* name;
  size_t itemsize;
  at::ScalarType aten;  // Undefined: no ATen equivalent in LibTorch 1.13
};

const std::vector<DtypeInfo>& dtype_table() {
  static const std::vector<DtypeInfo> table = {
      {"F64", 8, at::kDouble},  {"F32", 4, at::kFloat},       {"F16", 2, at::kHalf},
      {"BF16", 2, at::kBFloat16}, {"I64", 8, at::kLong},      {"I32", 4, at::kInt},
      {"I16", 2, at::kShort},   {"I8", 1, at::kChar},         {"U8", 1, at::kByte},
      {"BOOL", 1, at::kBool},   {"U64", 8, at::ScalarType::Undefined},
      {"U32", 4, at::ScalarType::Undefined}, {"U16", 2, at::ScalarType::Undefined},
      {"F8_E4M3", 1, at::ScalarType::Undefined}, {"F8_E5M2", 1, at::ScalarType::Undefined},
  };
  return table;
}

const DtypeInfo* dtype_info(const std::string& name) {
  for (const DtypeInfo& d : dtype_table())
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo* dtype_of(at::ScalarType type) {
  for (const DtypeInfo& d : dtype_table())
    if (d.aten == type && type != at::ScalarType::Undefined) return &d;
  return nullptr;
}

std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

uint64_t read_u64(const json& value, const std::string& origin, const std::string& name, const char* what) {
  if (!value.is_number_unsigned())
    fail_tensor(origin, name, fmt::format("{} must hold non-negative integers, got {}", what, value.dump()));
  return value.get<uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& name, const json& info, const std::string& origin) {
  if (name.empty()) fail(origin, "a tensor has an empty name");
  if (!info.is_object()) fail_tensor(origin, name, fmt::format("expected an object, got {}", info.type_name()));
  SafetensorsEntry e;
  e.name = name;
  const auto dtype = info.find("dtype");
  if (dtype == info.end() || !dtype->is_string()) fail_tensor(origin, name, "missing or non-string \"dtype\"");
  e.dtype = dtype->get<std::string>();
  const DtypeInfo* d = dtype_info(e.dtype);
  if (!d) fail_tensor(origin, name, fmt::format("unknown dtype '{}'", e.dtype));
  const auto shape = info.find("shape");
  if (shape == info.end() || !shape->is_array()) fail_tensor(origin, name, "missing or non-array \"shape\"");
  if (shape->size() > 16) fail_tensor(origin, name, fmt::format("shape has {} dimensions", shape->size()));
  uint64_t numel = 1;
  for (const json& dim : *shape) {
    const uint64_t v = read_u64(dim, origin, name, "shape");
    if (v > (1ull << 40) || (v > 0 && numel > (1ull << 62) / v))
      fail_tensor(origin, name, fmt::format("shape {} is absurdly large", shape->dump()));
    numel *= v;
    e.shape.push_back(static_cast<int64_t>(v));
  }
  const auto offsets = info.find("data_offsets");
  if (offsets == info.end() || !offsets->is_array() || offsets->size() != 2)
    fail_tensor(origin, name, "missing \"data_offsets\" [begin, end]");
  e.begin = read_u64((*offsets)[0], origin, name, "data_offsets");
  e.end = read_u64((*offsets)[1], origin, name, "data_offsets");
  if (e.end < e.begin) fail_tensor(origin, name, fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
  if (e.end - e.begin != numel * d->itemsize)
    fail_tensor(origin, name, fmt::format("data_offsets [{}, {}] hold {} bytes, but shape {} of {} needs {}", e.begin,
                                          e.end, e.end - e.begin, shape_text(e.shape), e.dtype, numel * d->itemsize));
  return e;
}

void parse_metadata(const json& value, const std::string& origin, std::map<std::string, std::string>& out) {
  if (!value.is_object()) fail(origin, fmt::format("__metadata__ must be an object of strings, got {}", value.type_name()));
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) fail(origin, fmt::format("__metadata__ '{}' must be a string, got {}", key, v.dump()));
    out[key] = v.get<std::string>();
  }
}

// The entries must tile [0, data_size) in order: no gap, no overlap, nothing after.
void check_layout(std::vector<SafetensorsEntry>& entries, uint64_t data_size, const std::string& origin) {
  std::sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& e : entries) {
    if (e.end > data_size)
      fail_tensor(origin, e.name, fmt::format("data_offsets [{}, {}] run past the end of the data buffer ({} bytes)",
                                              e.begin, e.end, data_size));
    if (e.begin < expected)
      fail_tensor(origin, e.name, fmt::format("data_offsets [{}, {}] overlap tensor '{}' (ends at {})", e.begin, e.end,
                                              previous->name, expected));
    if (e.begin > expected)
      fail_tensor(origin, e.name, fmt::format("data_offsets [{}, {}] leave a gap of {} bytes before them", e.begin,
                                              e.end, e.begin - expected));
    expected = e.end;
    previous = &e;
  }
  if (expected != data_size)
    fail(origin, fmt::format("the data buffer holds {} bytes but the tensors cover only {}", data_size, expected));
}

}  // namespace

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t safetensors_itemsize(const std::string& dtype) {
  const DtypeInfo* d = dtype_info(dtype);
  return d ? d->itemsize : 0;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                           const std::string& origin) {
  if (file_size < 8 || available < 8)
    fail(origin, fmt::format("{} bytes is too short for a safetensors file (8-byte header length, then JSON)", file_size));
  uint64_t length = 0;
  std::memcpy(&length, bytes, 8);
  if (length > kSafetensorsMaxHeader)
    fail(origin, fmt::format("header length {} exceeds the {} MiB limit (not a safetensors file, or corrupt)", length,
                             kSafetensorsMaxHeader >> 20));
  if (length > file_size - 8)
    fail(origin, fmt::format("header length {} exceeds the file ({} bytes)", length, file_size));
  if (available < 8 + length) fail(origin, "header is truncated");
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (json_nesting_depth(text, length) > 32) fail(origin, "header JSON is nested deeper than 32 levels");
  json header;
  try {
    header = json::parse(text, text + length);
  } catch (const json::exception& e) {
    fail(origin, fmt::format("header is not valid JSON ({})", e.what()));
  }
  if (!header.is_object()) fail(origin, fmt::format("header must be a JSON object, got {}", header.type_name()));

  SafetensorsHeader result;
  result.data_start = 8 + length;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") parse_metadata(info, origin, result.metadata);
    else result.entries.push_back(parse_entry(name, info, origin));
  }
  check_layout(result.entries, file_size - result.data_start, origin);
  return result;
}

// ---------------------------------------------------------------- SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path), file_(path, "safetensors") {
  header_ = parse_safetensors_header(file_.data(), file_.size(), file_.size(), path);
  for (size_t i = 0; i < header_.entries.size(); ++i) index_[header_.entries[i].name] = i;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.entries[it->second];
}

const SafetensorsEntry& SafetensorsFile::require(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail_tensor(path_, name, "not in the file");
  return *e;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> result;
  for (const SafetensorsEntry& e : header_.entries) result.push_back(e.name);
  return result;
}

std::pair<const uint8_t*, size_t> SafetensorsFile::bytes(const std::string& name) const {
  const SafetensorsEntry& e = require(name);
  return {file_.data() + header_.data_start + e.begin, static_cast<size_t>(e.end - e.begin)};
}

at::Tensor SafetensorsFile::tensor(const std::string& name, at::ScalarType dtype) const {
  const SafetensorsEntry& e = require(name);
  const DtypeInfo* d = dtype_info(e.dtype);
  if (d->aten == at::ScalarType::Undefined)
    fail_tensor(path_, name, fmt::format("dtype {} cannot be converted to an ATen tensor", e.dtype));
  const auto [data, size] = bytes(name);
  at::Tensor out;
  if (reinterpret_cast<uintptr_t>(data) % d->itemsize == 0) {
    // Aligned: convert straight from the mapping (one pass, a copy in every case).
    const at::Tensor view = at::from_blob(const_cast<uint8_t*>(data), e.shape, at::TensorOptions().dtype(d->aten));
    out = view.to(dtype, /*non_blocking=*/false, /*copy=*/true);
  } else {
    out = at::empty(e.shape, at::TensorOptions().dtype(d->aten));
    if (size) std::memcpy(out.data_ptr(), data, size);
    if (dtype != d->aten) out = out.to(dtype);
  }
  file_.release(static_cast<size_t>(data - file_.data()), size);  // copied: the pages may go
  return out;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = require(name);
  const DtypeInfo* d = dtype_info(e.dtype);
  if (d->aten == at::ScalarType::Undefined)
    fail_tensor(path_, name, fmt::format("dtype {} cannot be converted to an ATen tensor", e.dtype));
  return tensor(name, d->aten);
}

// ---------------------------------------------------------------- writer

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__" || header.contains(name))
      throw Error(fmt::format("safetensors file '{}': tensor '{}': empty, reserved or duplicate name", path, name));
    const DtypeInfo* d = t.defined() ? dtype_of(t.scalar_type()) : nullptr;
    if (!d)
      throw Error(fmt::format("safetensors file '{}': tensor '{}': unsupported dtype {}", path, name,
                              t.defined() ? std::string(c10::toString(t.scalar_type())) : "undefined"));
    const at::Tensor c = t.cpu().contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * d->itemsize;
    header[name] = {{"dtype", d->name}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    const uint64_t length = text.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const at::Tensor& c : data)
      out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
    out.flush();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw Error(fmt::format("safetensors file '{}': cannot write: {}", path, std::strerror(errno)));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw Error(fmt::format("safetensors file '{}': cannot rename the temporary file: {}", path, ec.message()));
  }
}

}  // namespace sqlab
