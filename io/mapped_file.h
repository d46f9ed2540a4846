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

  // Done with bytes [offset, offset + length) for now: their pages leave this process's
  // resident set (madvise MADV_DONTNEED; the kernel keeps them in its page cache and maps
  // them again on the next read). Without it a checkpoint read layer by layer would count
  // whole in the resident memory by its last layer. Only whole pages inside the range go.
  void release(size_t offset, size_t length) const;

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sqlab
