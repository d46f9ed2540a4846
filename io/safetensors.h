// The project's one safetensors reader and writer (site files, exported rotations,
// Hugging Face checkpoints). Format: 8 bytes little-endian header length N, N bytes
// of JSON {"NAME": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
// {str: str}}, then the data buffer; offsets are relative to the buffer's start.
// Every header is checked in full before any tensor is touched, and every error
// names the file and the tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/mapped_file.h"

namespace sqlab {

// One header entry. dtype is the safetensors name ("F32", "BF16", "I64", ...): every
// dtype of the format is accepted here; callers reject the ones they cannot use.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer, [begin, end)
  uint64_t end = 0;
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by begin offset (= file order)
  std::map<std::string, std::string> metadata;  // "__metadata__"
  uint64_t data_start = 0;  // 8 + header length
};

// Headers longer than this are rejected before anything is allocated.
constexpr uint64_t kSafetensorsMaxHeader = 100ull << 20;

// Bytes per element of a safetensors dtype name; 0 when the name is unknown.
size_t safetensors_itemsize(const std::string& dtype);

// Parses and checks the header of a file whose first `available` bytes are `bytes`
// and whose total size is `file_size` (available may be shorter: only the header is
// needed). Checks: the length fits the file and the limit; JSON object; each entry has
// a known dtype, a shape of non-negative integers and data_offsets [begin, end] with
// end - begin = numel * itemsize; the entries tile the data buffer in order without
// gaps or overlaps, up to its end; __metadata__ maps strings to strings. Throws
// sqlab::Error (kind config) naming `origin` and the entry. Pure: fuzzable.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                           const std::string& origin);

// A memory-mapped safetensors file: the header is parsed and checked on open; tensors
// are read from the mapping on request (only the bytes of that tensor are touched).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const SafetensorsEntry* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  // Tensor names in file order.
  std::vector<std::string> names() const;
  // The raw little-endian bytes of one tensor inside the mapping (valid while this
  // object lives).
  std::pair<const uint8_t*, size_t> bytes(const std::string& name) const;
  // A fresh contiguous tensor (owning its memory) converted to `dtype`. Source dtypes
  // with an ATen equivalent (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL) are
  // converted; others throw naming the file and the tensor.
  at::Tensor tensor(const std::string& name, at::ScalarType dtype) const;
  // The same in the tensor's own dtype.
  at::Tensor tensor(const std::string& name) const;

 private:
  const SafetensorsEntry& require(const std::string& name) const;
  std::string path_;
  MappedFile file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;  // name -> entries_ position
};

// Writes tensors (in the given order; float64, float32, float16, bfloat16, int64,
// int32, int16, int8, uint8, bool) and string metadata to `path` atomically (a .tmp
// file renamed into place). The header is padded with spaces to a multiple of 8 bytes
// so that every tensor is 8-byte aligned when the tensors before it are. Throws
// sqlab::Error naming the path and the tensor.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace sqlab
