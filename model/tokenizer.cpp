// Tokenizers: llama2.c's tokenizer.bin (encoded exactly as run.c does, with a heap in
// place of its quadratic merge loop), sentencepiece models through the dlopen'ed
// wrapper library, and pre-tokenized id files.
#include "model/tokenizer.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "model/gguf_checkpoint.h"
#include "model/pair_merge.h"

namespace sqlab {

namespace fs = std::filesystem;

namespace {

std::string read_binary(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw config_error(fmt::format("{} '{}': no such file", what, path));
  if (!fs::is_regular_file(path, ec)) throw config_error(fmt::format("{} '{}': not a regular file", what, path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw config_error(fmt::format("{} '{}': cannot open: {}", what, path, std::strerror(errno)));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void check_ids(const std::vector<int64_t>& ids, int64_t vocab_size, const std::string& origin) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_size)
      throw config_error(fmt::format("tokenizer '{}': token id {} (position {}) is outside the vocabulary [0, {})",
                                     origin, ids[i], i, vocab_size));
}

// "<0xAB>" -> 0xAB (llama2.c and sentencepiece byte-fallback pieces); -1 otherwise.
int byte_piece_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

// --- llama2.c

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(Llama2cVocab vocab, std::string origin) : vocab_(std::move(vocab)), origin_(std::move(origin)) {
    for (size_t i = 0; i < vocab_.pieces.size(); ++i) lookup_.emplace(vocab_.pieces[i], static_cast<int32_t>(i));
    // run.c's byte fallback maps byte b to id b + 3 (after <unk>, <s>, </s>); only
    // usable where those ids hold the "<0xXX>" pieces.
    for (int b = 0; b < 256; ++b) byte_ok_[b] = b + 3 < vocab_size() && byte_piece_value(vocab_.pieces[b + 3]) == b;
  }

  std::vector<int64_t> encode(const std::string& text, bool bos) const override {
    std::vector<int32_t> ids = initial_tokens(text);
    merge(ids);
    std::vector<int64_t> out;
    out.reserve(ids.size() + 1);
    if (bos) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  // As run.c's decode: the space that encode's dummy prefix added is dropped after BOS.
  std::string decode(const std::vector<int64_t>& ids) const override {
    check_ids(ids, vocab_size(), origin_);
    std::string text;
    int64_t previous = -1;
    for (const int64_t id : ids) {
      if (id == bos_id() || id == eos_id()) {
        previous = id;
        continue;
      }
      const std::string& p = vocab_.pieces[id];
      const int byte = byte_piece_value(p);
      if (byte >= 0) text.push_back(static_cast<char>(byte));
      else if (previous == bos_id() && !p.empty() && p[0] == ' ') text.append(p, 1, std::string::npos);
      else text += p;
      previous = id;
    }
    return text;
  }

  std::string piece(int64_t id) const override {
    check_ids({id}, vocab_size(), origin_);
    return vocab_.pieces[id];
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.pieces.size()); }
  int64_t bos_id() const override { return 1; }  // run.c's fixed ids
  int64_t eos_id() const override { return 2; }
  const std::string& origin() const override { return origin_; }

 private:
  int32_t find(const std::string& piece) const {
    const auto it = lookup_.find(piece);
    return it == lookup_.end() ? -1 : it->second;
  }

  void push_bytes(const std::string& bytes, std::vector<int32_t>& ids) const {
    for (const unsigned char b : bytes) {
      if (!byte_ok_[b])
        throw config_error(fmt::format("tokenizer '{}': cannot encode byte 0x{:02X}: it is not a token and the "
                                       "vocabulary has no byte-fallback piece <0x{:02X}> at id {}",
                                       origin_, b, b, b + 3));
      ids.push_back(b + 3);
    }
  }

  // run.c: the dummy-prefix space token, then each UTF-8 code point (at most 4 bytes)
  // as its token, or its bytes as byte-fallback tokens.
  std::vector<int32_t> initial_tokens(const std::string& text) const {
    std::vector<int32_t> ids;
    ids.reserve(text.size() + 1);
    if (text.empty()) return ids;
    const int32_t space = find(" ");
    if (space >= 0) ids.push_back(space);
    else push_bytes(" ", ids);
    std::string buffer;
    for (size_t i = 0; i < text.size(); ++i) {
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) buffer.clear();
      buffer.push_back(text[i]);
      const bool continues = i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (continues && buffer.size() < 4) continue;
      const int32_t id = find(buffer);
      if (id >= 0) ids.push_back(id);
      else push_bytes(buffer, ids);
      buffer.clear();
    }
    return ids;
  }

  // run.c merges, until none applies, the adjacent pair whose concatenation is a token
  // of the highest score (the first such pair on ties): model/pair_merge.h.
  void merge(std::vector<int32_t>& ids) const {
    ids = merge_adjacent_pairs(std::move(ids), [&](int32_t a, int32_t b, double* priority, int32_t* merged) {
      *merged = find(vocab_.pieces[a] + vocab_.pieces[b]);
      *priority = *merged >= 0 ? -static_cast<double>(vocab_.scores[*merged]) : 0.0;
      return *merged >= 0;
    });
  }

  Llama2cVocab vocab_;
  std::string origin_;
  std::unordered_map<std::string, int32_t> lookup_;  // first id of each piece
  bool byte_ok_[256] = {};
};

// --- sentencepiece through the wrapper library

struct SpmApi {
  int (*abi_version)();
  void* (*load)(const char*, char*, size_t);
  void (*free_handle)(void*);
  void (*free_buffer)(void*);
  int (*encode)(void*, const char*, size_t, int32_t**, size_t*, char*, size_t);
  char* (*decode)(void*, const int32_t*, size_t, size_t*, char*, size_t);
  char* (*piece)(void*, int32_t, size_t*);
  int32_t (*vocab_size)(void*);
  int32_t (*bos_id)(void*);
  int32_t (*eos_id)(void*);
};

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SQLAB_ASAN_BUILD 1
#endif
#endif
#if defined(SQLAB_SANITIZE) || defined(__SANITIZE_ADDRESS__)
#define SQLAB_ASAN_BUILD 1
#endif

// Opened once per process and never closed (its protobuf registers global state).
const SpmApi& spm_api(const std::string& model_path) {
#ifdef SQLAB_ASAN_BUILD
  throw Error(fmt::format("sentencepiece tokenizer '{}': not available in a sanitizer build (ASan does not allow "
                          "the RTLD_DEEPBIND that keeps sentencepiece's protobuf apart from LibTorch's); use a "
                          "llama2.c tokenizer.bin or a token-id file there",
                          model_path));
#else
  static std::mutex mutex;
  static SpmApi api{};
  static bool loaded = false;
  const std::lock_guard<std::mutex> lock(mutex);
  if (loaded) return api;
  const std::string library = sentencepiece_wrapper_path();
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!handle)
    throw Error(fmt::format("sentencepiece tokenizer '{}': cannot open the wrapper library '{}': {} (build the "
                            "sqlab_spm target, or point SQLAB_SPM_WRAPPER at libsqlab_spm.so)",
                            model_path, library, dlerror()));
  const auto symbol = [&](const char* name) {
    void* s = dlsym(handle, name);
    if (!s) throw Error(fmt::format("sentencepiece wrapper '{}': missing symbol {}", library, name));
    return s;
  };
  api.abi_version = reinterpret_cast<int (*)()>(symbol("sqlab_spm_abi_version"));
  if (api.abi_version() != 1)
    throw Error(fmt::format("sentencepiece wrapper '{}': interface version {}, expected 1 (rebuild it)", library,
                            api.abi_version()));
  api.load = reinterpret_cast<decltype(api.load)>(symbol("sqlab_spm_load"));
  api.free_handle = reinterpret_cast<decltype(api.free_handle)>(symbol("sqlab_spm_free"));
  api.free_buffer = reinterpret_cast<decltype(api.free_buffer)>(symbol("sqlab_spm_free_buffer"));
  api.encode = reinterpret_cast<decltype(api.encode)>(symbol("sqlab_spm_encode"));
  api.decode = reinterpret_cast<decltype(api.decode)>(symbol("sqlab_spm_decode"));
  api.piece = reinterpret_cast<decltype(api.piece)>(symbol("sqlab_spm_piece"));
  api.vocab_size = reinterpret_cast<decltype(api.vocab_size)>(symbol("sqlab_spm_vocab_size"));
  api.bos_id = reinterpret_cast<decltype(api.bos_id)>(symbol("sqlab_spm_bos_id"));
  api.eos_id = reinterpret_cast<decltype(api.eos_id)>(symbol("sqlab_spm_eos_id"));
  loaded = true;
  return api;
#endif
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : api_(spm_api(path)), origin_(path) {
    char error[1024] = {};
    handle_ = api_.load(path.c_str(), error, sizeof error);
    if (!handle_) throw config_error(fmt::format("sentencepiece tokenizer '{}': cannot load: {}", path, error));
    vocab_size_ = api_.vocab_size(handle_);
    bos_ = api_.bos_id(handle_);
    eos_ = api_.eos_id(handle_);
  }
  ~SentencePieceTokenizer() override { api_.free_handle(handle_); }
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  std::vector<int64_t> encode(const std::string& text, bool bos) const override {
    char error[1024] = {};
    int32_t* ids = nullptr;
    size_t count = 0;
    if (api_.encode(handle_, text.data(), text.size(), &ids, &count, error, sizeof error) != 0)
      throw Error(fmt::format("sentencepiece tokenizer '{}': cannot encode: {}", origin_, error));
    std::vector<int64_t> out;
    out.reserve(count + 1);
    if (bos) {
      if (bos_ < 0) {
        api_.free_buffer(ids);
        throw config_error(fmt::format("sentencepiece tokenizer '{}': the model has no BOS token", origin_));
      }
      out.push_back(bos_);
    }
    out.insert(out.end(), ids, ids + count);
    api_.free_buffer(ids);
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    check_ids(ids, vocab_size_, origin_);
    const std::vector<int32_t> narrow(ids.begin(), ids.end());
    char error[1024] = {};
    size_t length = 0;
    char* text = api_.decode(handle_, narrow.data(), narrow.size(), &length, error, sizeof error);
    if (!text) throw Error(fmt::format("sentencepiece tokenizer '{}': cannot decode: {}", origin_, error));
    std::string out(text, length);
    api_.free_buffer(text);
    return out;
  }

  std::string piece(int64_t id) const override {
    check_ids({id}, vocab_size_, origin_);
    size_t length = 0;
    char* p = api_.piece(handle_, static_cast<int32_t>(id), &length);
    if (!p) throw Error(fmt::format("sentencepiece tokenizer '{}': no piece for id {}", origin_, id));
    std::string out(p, length);
    api_.free_buffer(p);
    return out;
  }

  int64_t vocab_size() const override { return vocab_size_; }
  int64_t bos_id() const override { return bos_; }
  int64_t eos_id() const override { return eos_; }
  const std::string& origin() const override { return origin_; }

 private:
  const SpmApi& api_;
  std::string origin_;
  void* handle_ = nullptr;
  int64_t vocab_size_ = 0, bos_ = -1, eos_ = -1;
};

std::string executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : exe.parent_path().string();
}

// A serialized sentencepiece ModelProto starts with field 1 (repeated pieces,
// length-delimited): byte 0x0A, then a non-zero varint length. A llama2.c file starts
// with a little-endian int32 max_token_length, whose second byte is 0 for any sane one.
bool looks_like_sentencepiece(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char head[2] = {};
  if (!in.read(reinterpret_cast<char*>(head), 2)) return false;
  return head[0] == 0x0A && head[1] != 0;
}

}  // namespace

Llama2cVocab parse_llama2c_tokenizer(const uint8_t* bytes, size_t size, int64_t vocab_size,
                                     const std::string& origin) {
  const auto fail = [&](const std::string& message) -> void {
    throw config_error(fmt::format("llama2.c tokenizer '{}': {}", origin, message));
  };
  if (bytes == nullptr) size = 0;
  if (size < 4) fail(fmt::format("{} bytes is too short (an int32 max_token_length comes first)", size));
  Llama2cVocab v;
  std::memcpy(&v.max_token_length, bytes, 4);
  if (v.max_token_length <= 0 || v.max_token_length > (1 << 20))
    fail(fmt::format("max_token_length {} is not in [1, 1048576] (not a llama2.c tokenizer?)", v.max_token_length));
  size_t at = 4;
  for (int64_t i = 0; vocab_size > 0 ? i < vocab_size : at < size; ++i) {
    if (size - at < 8)
      fail(fmt::format("token {}: the file ends ({} bytes) before its score and length", i, size));
    float score;
    int32_t length;
    std::memcpy(&score, bytes + at, 4);
    std::memcpy(&length, bytes + at + 4, 4);
    at += 8;
    if (!std::isfinite(score)) fail(fmt::format("token {}: score is not finite", i));
    if (length < 0 || static_cast<size_t>(length) > size - at)
      fail(fmt::format("token {}: length {} runs past the end of the file ({} bytes left)", i, length, size - at));
    v.pieces.emplace_back(reinterpret_cast<const char*>(bytes + at), static_cast<size_t>(length));
    v.scores.push_back(score);
    at += static_cast<size_t>(length);
  }
  if (at != size) fail(fmt::format("{} bytes left after the {} tokens", size - at, v.pieces.size()));
  if (v.pieces.size() < 3) fail(fmt::format("only {} tokens (llama2.c's ids 1 and 2 are BOS and EOS)", v.pieces.size()));
  if (v.pieces.size() > static_cast<size_t>(INT32_MAX)) fail("too many tokens");
  return v;
}

std::unique_ptr<Tokenizer> make_llama2c_tokenizer(Llama2cVocab vocab, std::string origin) {
  return std::make_unique<Llama2cTokenizer>(std::move(vocab), std::move(origin));
}

std::string sentencepiece_wrapper_path() {
  if (const char* env = std::getenv("SQLAB_SPM_WRAPPER"); env && *env) return env;
  const std::string beside = executable_dir();
  std::error_code ec;
  if (!beside.empty() && fs::exists(fs::path(beside) / "libsqlab_spm.so", ec))
    return (fs::path(beside) / "libsqlab_spm.so").string();
#ifdef SQLAB_SPM_WRAPPER_DEFAULT
  return SQLAB_SPM_WRAPPER_DEFAULT;
#else
  return "libsqlab_spm.so";
#endif
}

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw config_error(fmt::format("sentencepiece tokenizer '{}': no such file", path));
  return std::make_unique<SentencePieceTokenizer>(path);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw config_error(fmt::format("tokenizer '{}': no such file or directory", path));
  if (fs::is_directory(path, ec)) {
    for (const char* name : {"tokenizer.model", "tokenizer.bin"})
      if (fs::exists(fs::path(path) / name, ec)) return load_tokenizer((fs::path(path) / name).string());
    throw config_error(fmt::format("tokenizer '{}': a directory without tokenizer.model or tokenizer.bin", path));
  }
  if (is_gguf_file(path)) return load_gguf_tokenizer(path);
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".json")
    throw config_error(fmt::format("tokenizer '{}': Hugging Face tokenizer.json is not supported; use the "
                                   "sentencepiece tokenizer.model or a llama2.c tokenizer.bin",
                                   path));
  if (ext == ".model" || (ext != ".bin" && looks_like_sentencepiece(path))) return load_sentencepiece_tokenizer(path);
  const std::string bytes = read_binary(path, "llama2.c tokenizer");
  return make_llama2c_tokenizer(
      parse_llama2c_tokenizer(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, path), path);
}

std::vector<int64_t> read_token_ids(const std::string& path) {
  if (ends_with(path, ".npy"))
    throw config_error(fmt::format("token-id file '{}': .npy token ids are not supported (io/npy reads float "
                                   "arrays only); write the ids as whitespace-separated text (.ids)",
                                   path));
  std::istringstream lines(read_binary(path, "token-id file"));
  std::vector<int64_t> ids;
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string word;
    while (words >> word) {
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(word.c_str(), &end, 10);
      if (word[0] == '-' || word[0] == '+' || end != word.c_str() + word.size() || errno == ERANGE)
        throw config_error(fmt::format("token-id file '{}': line {}: '{}' is not a non-negative integer id", path,
                                       number, word));
      ids.push_back(v);
    }
  }
  return ids;
}

std::string read_jsonl_text(const std::string& path, const TextSelection& selection) {
  std::ifstream in(path);
  if (!in) throw config_error(fmt::format("evaluation text '{}': cannot open: {}", path, std::strerror(errno)));
  std::string text, line;
  int64_t documents = 0;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (selection.documents > 0 && documents == selection.documents) break;
    const nlohmann::json doc = nlohmann::json::parse(line, nullptr, false);
    if (doc.is_discarded() || !doc.is_object())
      throw config_error(fmt::format("evaluation text '{}': line {} is not a JSON object", path, number));
    const auto field = doc.find(selection.field);
    if (field == doc.end() || !field->is_string())
      throw config_error(fmt::format("evaluation text '{}': line {} has no string field '{}'", path, number,
                                     selection.field));
    if (documents++ > 0) text += selection.join;
    text += field->get<std::string>();
  }
  if (selection.documents > 0 && documents < selection.documents)
    throw config_error(fmt::format("evaluation text '{}': {} documents asked for, the file holds {}", path,
                                   selection.documents, documents));
  return text;
}

std::vector<int64_t> load_eval_tokens(const std::string& path, const Tokenizer* tokenizer, bool bos,
                                      int64_t max_tokens, const TextSelection& selection) {
  std::vector<int64_t> ids;
  if (ends_with(path, ".ids") || ends_with(path, ".npy")) {
    ids = read_token_ids(path);
    if (ids.empty()) throw config_error(fmt::format("token-id file '{}': holds no ids", path));
    if (tokenizer)
      for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] >= tokenizer->vocab_size())
          throw config_error(fmt::format("token-id file '{}': id {} (position {}) is not below the vocabulary size "
                                         "{} of tokenizer '{}'",
                                         path, ids[i], i, tokenizer->vocab_size(), tokenizer->origin()));
  } else {
    const std::string text = ends_with(path, ".jsonl") ? read_jsonl_text(path, selection)
                                                       : read_binary(path, "evaluation text");
    if (text.empty()) throw config_error(fmt::format("evaluation text '{}': the file is empty", path));
    if (!tokenizer)
      throw config_error(fmt::format("evaluation text '{}': a text file needs a tokenizer (or give token ids in "
                                     "a .ids file)",
                                     path));
    ids = tokenizer->encode(text, bos);
  }
  if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(static_cast<size_t>(max_tokens));
  return ids;
}

}  // namespace sqlab
