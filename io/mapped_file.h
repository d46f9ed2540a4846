// A whole file mapped read-only into memory: the tensor file readers (safetensors, GGUF)
// parse their header from it and read each tensor's bytes only when asked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sqlab {

class MappedFile {
 public:
  // Throws sqlab::config_error "FORMAT file 'PATH': ..." when the path cannot be opened,
  // is not a regular file, or cannot be mapped. An empty file maps to data() == nullptr.
  MappedFile(const std::string& path, const std::string& format);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sqlab
