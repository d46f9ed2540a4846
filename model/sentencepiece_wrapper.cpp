// A tiny shared library around sentencepiece with a C interface. It links
// sentencepiece and NOT LibTorch: both carry their own protobuf, and an executable that
// links the two crashes in static initialization before main (toolchain.md). sqlab
// opens this library with dlopen(RTLD_LOCAL | RTLD_DEEPBIND) so that its protobuf
// symbols bind inside it (model/tokenizer.cpp).
//
// Conventions: functions never throw; buffers they return are malloc'ed and released
// with sqlab_spm_free_buffer; ids are validated by the caller.
#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void copy_message(const std::string& message, char* error, size_t error_size) {
  if (!error || error_size == 0) return;
  const size_t n = std::min(message.size(), error_size - 1);
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

char* malloc_copy(const std::string& text, size_t* length) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (!out) return nullptr;
  std::memcpy(out, text.data(), text.size());
  out[text.size()] = '\0';
  if (length) *length = text.size();
  return out;
}

sentencepiece::SentencePieceProcessor* processor(void* handle) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle);
}

}  // namespace

extern "C" {

// Version of this interface; the loader checks it.
int sqlab_spm_abi_version() { return 1; }

// A processor for the model file, or nullptr with the reason in `error`.
void* sqlab_spm_load(const char* path, char* error, size_t error_size) {
  try {
    auto* p = new sentencepiece::SentencePieceProcessor();
    const auto status = p->Load(path);
    if (!status.ok()) {
      copy_message(status.ToString(), error, error_size);
      delete p;
      return nullptr;
    }
    return p;
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_size);
    return nullptr;
  }
}

void sqlab_spm_free(void* handle) { delete processor(handle); }

void sqlab_spm_free_buffer(void* buffer) { std::free(buffer); }

// 0 on success with a malloc'ed array of *count ids in *ids; nonzero with `error` set.
int sqlab_spm_encode(void* handle, const char* text, size_t length, int32_t** ids, size_t* count, char* error,
                     size_t error_size) {
  try {
    std::vector<int> out;
    const auto status = processor(handle)->Encode(std::string_view(text, length), &out);
    if (!status.ok()) {
      copy_message(status.ToString(), error, error_size);
      return 1;
    }
    *ids = static_cast<int32_t*>(std::malloc(std::max<size_t>(out.size(), 1) * sizeof(int32_t)));
    if (!*ids) {
      copy_message("out of memory", error, error_size);
      return 1;
    }
    for (size_t i = 0; i < out.size(); ++i) (*ids)[i] = out[i];
    *count = out.size();
    return 0;
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_size);
    return 1;
  }
}

// The text of ids (all within [0, vocab size): the caller checks); nullptr on failure.
char* sqlab_spm_decode(void* handle, const int32_t* ids, size_t count, size_t* length, char* error,
                       size_t error_size) {
  try {
    const std::vector<int> in(ids, ids + count);
    std::string text;
    const auto status = processor(handle)->Decode(in, &text);
    if (!status.ok()) {
      copy_message(status.ToString(), error, error_size);
      return nullptr;
    }
    return malloc_copy(text, length);
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_size);
    return nullptr;
  }
}

char* sqlab_spm_piece(void* handle, int32_t id, size_t* length) {
  try {
    return malloc_copy(processor(handle)->IdToPiece(id), length);
  } catch (...) {
    return nullptr;
  }
}

int32_t sqlab_spm_vocab_size(void* handle) { return processor(handle)->GetPieceSize(); }
int32_t sqlab_spm_bos_id(void* handle) { return processor(handle)->bos_id(); }
int32_t sqlab_spm_eos_id(void* handle) { return processor(handle)->eos_id(); }

}  // extern "C"
