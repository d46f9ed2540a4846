// NumPy .npy files (format versions 1.0, 2.0 and 3.0): little-endian float16, float32
// and float64 arrays, C or Fortran order. Everything else (big-endian, object,
// structured, integer dtypes) is rejected with a message naming the file and the dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sqlab {

struct NpyHeader {
  int major_version = 1;
  std::string descr;        // "<f4"
  bool fortran_order = false;
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;  // bytes before the array data
  size_t itemsize = 0;
  at::ScalarType dtype = at::kFloat;
  int64_t numel() const;
};

// Parses and checks the header of `path` (magic, version, the dict literal, the dtype,
// and that the file holds exactly the bytes the shape needs). Throws sqlab::Error
// (kind config) naming the file.
NpyHeader read_npy_header(const std::string& path);

// Parses a header from the first `size` bytes of a file of `file_size` bytes (pure:
// fuzzable). `origin` names the file in errors.
NpyHeader parse_npy_header(const uint8_t* bytes, size_t size, uint64_t file_size, const std::string& origin);

// The array as a contiguous C-order tensor in its own dtype (Fortran order converted).
at::Tensor read_npy(const std::string& path);

// Writes a float16/float32/float64 tensor as a version 1.0 .npy file in C order
// (atomically: a .tmp file renamed into place).
void write_npy(const std::string& path, const at::Tensor& tensor);

}  // namespace sqlab
