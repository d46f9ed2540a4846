// Byte-level BPE tokenizer (see bpe_tokenizer.h for the encoding steps and the choices).
#include "model/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "model/pair_merge.h"

namespace sqlab {

namespace {

// --- GPT-2 bytes_to_unicode

std::string utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

struct ByteMap {
  std::array<uint32_t, 256> code_point{};
  std::array<std::string, 256> utf8;
  std::unordered_map<uint32_t, uint8_t> byte_of;  // code point -> byte
  ByteMap() {
    // Printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' stand for themselves; the other 68
    // bytes, in increasing order, for U+0100, U+0101, ...
    uint32_t next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      code_point[b] = printable ? static_cast<uint32_t>(b) : 0x100 + next++;
      utf8[b] = utf8_of(code_point[b]);
      byte_of.emplace(code_point[b], static_cast<uint8_t>(b));
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

// Decodes one UTF-8 code point at s[i] (valid UTF-8 assumed: our own token strings are
// checked by the caller's fallback); returns its length, 0 if invalid.
size_t decode_utf8(const std::string& s, size_t i, uint32_t& cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) {
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3F);
  }
  return len;
}

// --- pre-tokenizer regexes

// Unicode White_Space, as Oniguruma's \s (HF tokenizers) matches it; PCRE2 10.42's UCP
// \s leaves out U+0085.
constexpr const char* kSpaceSet = "\\t-\\r\\x{85}\\p{Z}";

// Spells \s and \S as explicit White_Space classes (inside a class: its members).
std::string spell_spaces(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      ++i;
      if (e == 's') out += in_class ? std::string(kSpaceSet) : fmt::format("[{}]", kSpaceSet);
      else if (e == 'S' && !in_class) out += fmt::format("[^{}]", kSpaceSet);
      else if (e == 'S') throw Error("bpe tokenizer: \\S inside a character class is not supported");
      else {
        out.push_back('\\');
        out.push_back(e);
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);  // literal ']'
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}

// GPT-2's pattern (HF ByteLevel use_regex=true; llama.cpp's list omits the final `|\s+`,
// but keeps what it leaves unmatched as a piece of its own, which is the same split).
const char* const kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// transformers' _LLAMA3_SPLIT / Meta-Llama-3 tokenizer.json.
const char* const kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// transformers' qwen2 PRETOKENIZE_REGEX (Qwen2 tokenizer.json).
const char* const kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreSpec {
  std::vector<std::string> regexes;
  bool ignore_merges;  // a piece that is a token as a whole is that token (llama.cpp, HF)
};

const std::map<std::string, PreSpec>& pre_specs() {
  // llama.cpp src/llama-vocab.cpp, llm_tokenizer_bpe: LLAMA_VOCAB_PRE_TYPE_SMOLLM is
  // {"\\p{N}", <GPT-2 pattern>}; SmolLM2's tokenizer.json is Sequence[Digits(individual_digits),
  // ByteLevel(use_regex)], the same split. LLAMA3 sets ignore_merges (llama.cpp and
  // Meta-Llama-3's tokenizer.json).
  static const std::map<std::string, PreSpec> specs = {
      {"default", {{kGpt2}, false}},
      {"gpt2", {{kGpt2}, false}},
      {"smollm", {{R"(\p{N})", kGpt2}, false}},
      {"llama-bpe", {{kLlama3}, true}},
      {"llama3", {{kLlama3}, true}},
      {"llama-v3", {{kLlama3}, true}},
      {"qwen2", {{kQwen2}, false}},
  };
  return specs;
}

std::string known_names() {
  std::string s;
  for (const auto& [name, spec] : pre_specs()) s += (s.empty() ? "" : ", ") + name;
  return s;
}

const PreSpec& pre_spec(const std::string& pre, const std::string& origin) {
  const auto it = pre_specs().find(pre);
  if (it == pre_specs().end())
    throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.pre '{}' is not a known BPE pre-tokenizer "
                                   "(known: {})",
                                   origin, pre, known_names()));
  return it->second;
}

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& origin) {
    const std::string spelled = spell_spaces(pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(spelled.c_str()), spelled.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw Error(fmt::format("tokenizer '{}': cannot compile the pre-tokenizer regex '{}' at {}: {}", origin,
                              spelled, offset, reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // the interpreter is used where JIT is missing
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  const pcre2_code* code() const { return code_; }

 private:
  pcre2_code* code_ = nullptr;
};

// Per encode call: match data and a JIT stack for each regex (not shareable across threads).
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  explicit MatchState(const Regex& regex) {
    data = pcre2_match_data_create_from_pattern(regex.code(), nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!data || !context || !stack) throw Error("bpe tokenizer: out of memory for PCRE2 match data");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

struct Span {
  size_t begin, end;
};

// Splits text[piece] into matches and unmatched gaps, appending them (in order) to out.
void split_piece(const Regex& regex, MatchState& state, const std::string& text, Span piece,
                 const std::string& origin, std::vector<Span>& out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + piece.begin);
  const size_t n = piece.end - piece.begin;
  size_t gap = 0, offset = 0;
  while (offset < n) {
    const int rc = pcre2_match(regex.code(), subject, n, offset, 0, state.data, state.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      throw Error(fmt::format("tokenizer '{}': pre-tokenizer regex failed: {}", origin,
                              reinterpret_cast<const char*>(message)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(state.data);
    const size_t b = ov[0], e = ov[1];
    if (e == b) {  // an empty match (none of our patterns has one): skip one byte into the gap
      offset = b + 1;
      continue;
    }
    if (b > gap) out.push_back({piece.begin + gap, piece.begin + b});
    out.push_back({piece.begin + b, piece.begin + e});
    gap = offset = e;
  }
  if (n > gap) out.push_back({piece.begin + gap, piece.end});
}

// --- the tokenizer

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(BpeVocab vocab, std::string origin) : vocab_(std::move(vocab)), origin_(std::move(origin)) {
    const auto& spec = pre_spec(vocab_.pre, origin_);
    for (const auto& r : spec.regexes) regexes_.push_back(std::make_unique<Regex>(r, origin_));
    ignore_merges_ = spec.ignore_merges;

    const size_t n = vocab_.tokens.size();
    if (n == 0) throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.tokens is empty", origin_));
    if (n > static_cast<size_t>(INT32_MAX))
      throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.tokens has {} tokens", origin_, n));
    if (vocab_.token_types.empty()) vocab_.token_types.assign(n, static_cast<int32_t>(BpeTokenType::normal));
    if (vocab_.token_types.size() != n)
      throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.token_type has {} entries for {} tokens",
                                     origin_, vocab_.token_types.size(), n));
    for (const char* key : {"bos", "eos"}) {
      const int64_t id = key[0] == 'b' ? vocab_.bos_id : vocab_.eos_id;
      if (id < -1 || id >= static_cast<int64_t>(n))
        throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.{}_token_id {} is outside the vocabulary "
                                       "[0, {})",
                                       origin_, key, id, n));
    }

    lookup_.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) lookup_.emplace(vocab_.tokens[i], static_cast<int32_t>(i));

    // A byte whose GPT-2 character is no token cannot be encoded: it is dropped, as HF's BPE
    // (no unk token) and llama.cpp drop it (SmolLM2 lacks 21: 0x04, 0x06, 0x13, 0x14, 0x16,
    // 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, 0xF5..0xFF).
    const ByteMap& bm = byte_map();
    for (int b = 0; b < 256; ++b) {
      const auto it = lookup_.find(bm.utf8[b]);
      byte_id_[b] = it == lookup_.end() ? -1 : it->second;
      if (byte_id_[b] < 0) missing_bytes_.push_back(static_cast<uint8_t>(b));
    }
    if (missing_bytes_.size() == 256)
      throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.tokens has no GPT-2 byte characters at all "
                                     "(not a byte-level BPE vocabulary?)",
                                     origin_));

    merges_.reserve(vocab_.merges.size() * 2);
    for (size_t r = 0; r < vocab_.merges.size(); ++r) {
      const std::string& m = vocab_.merges[r];
      const size_t space = m.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 >= m.size() ||
          m.find(' ', space + 1) != std::string::npos)
        throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.merges[{}] '{}' is not two tokens "
                                       "separated by one space",
                                       origin_, r, m));
      const std::string left = m.substr(0, space), right = m.substr(space + 1);
      const int32_t a = find(left), b = find(right), merged = find(left + right);
      if (a < 0 || b < 0 || merged < 0)
        throw config_error(fmt::format("tokenizer '{}': tokenizer.ggml.merges[{}] '{}' names an unknown token "
                                       "'{}'",
                                       origin_, r, m, a < 0 ? left : b < 0 ? right : left + right));
      merges_.emplace(pair_key(a, b), Merge{static_cast<int32_t>(r), merged});  // first rank wins
    }

    // Special tokens: control and user-defined, matched literally in the text.
    for (size_t i = 0; i < n; ++i) {
      const auto type = static_cast<BpeTokenType>(vocab_.token_types[i]);
      if ((type == BpeTokenType::control || type == BpeTokenType::user_defined) && !vocab_.tokens[i].empty()) {
        specials_.push_back(static_cast<int32_t>(i));
        special_first_[static_cast<unsigned char>(vocab_.tokens[i][0])] = true;
      }
    }
    std::stable_sort(specials_.begin(), specials_.end(), [&](int32_t x, int32_t y) {
      return vocab_.tokens[x].size() > vocab_.tokens[y].size();  // longest first
    });

    // What each id decodes to.
    decoded_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const std::string& t = vocab_.tokens[i];
      const auto type = static_cast<BpeTokenType>(vocab_.token_types[i]);
      if (type == BpeTokenType::control) continue;  // skipped
      if (type == BpeTokenType::user_defined || type == BpeTokenType::unknown) {
        decoded_[i] = t;
        continue;
      }
      if (type == BpeTokenType::byte && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        decoded_[i] = std::string(1, static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
        continue;
      }
      std::string bytes;
      for (size_t k = 0; k < t.size();) {
        uint32_t cp = 0;
        const size_t len = decode_utf8(t, k, cp);
        if (len == 0) {  // not UTF-8: keep the byte
          bytes.push_back(t[k++]);
          continue;
        }
        const auto it = bm.byte_of.find(cp);
        if (it != bm.byte_of.end()) bytes.push_back(static_cast<char>(it->second));
        else bytes.append(t, k, len);  // no GPT-2 byte character: its own UTF-8
        k += len;
      }
      decoded_[i] = std::move(bytes);
    }
  }

  std::vector<int64_t> encode(const std::string& text, bool bos) const override {
    std::vector<int64_t> out;
    out.reserve(text.size() / 3 + 2);
    if (bos) {
      if (vocab_.bos_id < 0)
        throw config_error(fmt::format("tokenizer '{}': BOS requested but the vocabulary has no "
                                       "tokenizer.ggml.bos_token_id",
                                       origin_));
      out.push_back(vocab_.bos_id);
    }
    std::vector<std::unique_ptr<MatchState>> states;
    for (const auto& r : regexes_) states.push_back(std::make_unique<MatchState>(*r));
    std::vector<Span> pieces, next;
    std::vector<int32_t> ids;

    const auto encode_segment = [&](size_t begin, size_t end) {
      if (begin >= end) return;
      pieces.assign(1, Span{begin, end});
      for (size_t r = 0; r < regexes_.size(); ++r) {
        next.clear();
        for (const Span& p : pieces) split_piece(*regexes_[r], *states[r], text, p, origin_, next);
        pieces.swap(next);
      }
      for (const Span& p : pieces) {
        ids.clear();
        encode_piece(text.data() + p.begin, p.end - p.begin, ids);
        out.insert(out.end(), ids.begin(), ids.end());
      }
    };

    size_t segment = 0;
    if (!specials_.empty()) {
      for (size_t i = 0; i < text.size(); ++i) {
        if (!special_first_[static_cast<unsigned char>(text[i])]) continue;
        for (const int32_t id : specials_) {
          const std::string& s = vocab_.tokens[id];
          if (text.compare(i, s.size(), s) == 0) {
            encode_segment(segment, i);
            out.push_back(id);
            segment = i + s.size();
            i = segment - 1;
            break;
          }
        }
      }
    }
    encode_segment(segment, text.size());
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string text;
    for (size_t i = 0; i < ids.size(); ++i) {
      const int64_t id = ids[i];
      if (id < 0 || id >= vocab_size())
        throw config_error(fmt::format("tokenizer '{}': token id {} (position {}) is outside the vocabulary [0, {})",
                                       origin_, id, i, vocab_size()));
      if (id == vocab_.bos_id || id == vocab_.eos_id) continue;
      text += decoded_[id];
    }
    return text;
  }

  // The token as stored (GPT-2 byte characters: "Ġthe" for " the").
  std::string piece(int64_t id) const override {
    if (id < 0 || id >= vocab_size())
      throw config_error(
          fmt::format("tokenizer '{}': token id {} is outside the vocabulary [0, {})", origin_, id, vocab_size()));
    return vocab_.tokens[id];
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.tokens.size()); }
  int64_t bos_id() const override { return vocab_.bos_id; }
  int64_t eos_id() const override { return vocab_.eos_id; }
  const std::string& origin() const override { return origin_; }

  const std::vector<uint8_t>& missing_bytes() const { return missing_bytes_; }

  std::vector<std::string> pre_tokenize(const std::string& text) const {
    std::vector<std::unique_ptr<MatchState>> states;
    for (const auto& r : regexes_) states.push_back(std::make_unique<MatchState>(*r));
    std::vector<Span> pieces{{0, text.size()}}, next;
    if (text.empty()) pieces.clear();
    for (size_t r = 0; r < regexes_.size(); ++r) {
      next.clear();
      for (const Span& p : pieces) split_piece(*regexes_[r], *states[r], text, p, origin_, next);
      pieces.swap(next);
    }
    std::vector<std::string> out;
    for (const Span& p : pieces) out.emplace_back(text, p.begin, p.end - p.begin);
    return out;
  }

 private:
  struct Merge {
    int32_t rank, merged;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  int32_t find(const std::string& token) const {
    const auto it = lookup_.find(token);
    return it == lookup_.end() ? -1 : it->second;
  }

  void encode_piece(const char* data, size_t size, std::vector<int32_t>& ids) const {
    if (size == 1) {
      const int32_t id = byte_id_[static_cast<unsigned char>(data[0])];
      if (id >= 0) ids.push_back(id);
      return;
    }
    std::string key(data, size);
    {
      std::shared_lock<std::shared_mutex> lock(cache_mutex_);
      const auto it = cache_.find(key);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> result = merge_bytes(key);
    ids.insert(ids.end(), result.begin(), result.end());
    std::unique_lock<std::shared_mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheLimit) cache_.clear();
    cache_.emplace(std::move(key), std::move(result));
  }

  // The piece's byte tokens merged by rank: repeatedly the adjacent pair of the lowest
  // merge rank, the leftmost one on ties (HF BPE's heap order): model/pair_merge.h.
  std::vector<int32_t> merge_bytes(const std::string& bytes) const {
    const ByteMap& bm = byte_map();
    if (ignore_merges_) {
      std::string spelled;
      for (const unsigned char b : bytes) spelled += bm.utf8[b];
      const int32_t whole = find(spelled);
      if (whole >= 0) return {whole};
    }
    std::vector<int32_t> ids;  // bytes without a token dropped: their neighbours become adjacent
    ids.reserve(bytes.size());
    for (const unsigned char b : bytes)
      if (byte_id_[b] >= 0) ids.push_back(byte_id_[b]);
    return merge_adjacent_pairs(std::move(ids), [&](int32_t a, int32_t b, double* priority, int32_t* merged) {
      const auto it = merges_.find(pair_key(a, b));
      if (it == merges_.end()) return false;
      *priority = it->second.rank;
      *merged = it->second.merged;
      return true;
    });
  }

  static constexpr size_t kCacheLimit = 1 << 19;

  BpeVocab vocab_;
  std::string origin_;
  std::vector<std::unique_ptr<Regex>> regexes_;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, int32_t> lookup_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_id_{};  // -1: no token (dropped)
  std::vector<uint8_t> missing_bytes_;
  std::vector<int32_t> specials_;  // longest first
  std::array<bool, 256> special_first_{};
  std::vector<std::string> decoded_;
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeVocab vocab, std::string origin) {
  return std::make_unique<BpeTokenizer>(std::move(vocab), std::move(origin));
}

std::vector<std::string> bpe_pre_tokenizer_names() {
  std::vector<std::string> names;
  for (const auto& [name, spec] : pre_specs()) names.push_back(name);
  return names;
}

std::vector<std::string> bpe_pre_tokenizer_regexes(const std::string& pre, const std::string& origin) {
  return pre_spec(pre, origin).regexes;
}

const std::string& bpe_byte_to_unicode(uint8_t byte) { return byte_map().utf8[byte]; }

int bpe_unicode_to_byte(const std::string& utf8_char) {
  uint32_t cp = 0;
  if (utf8_char.empty() || decode_utf8(utf8_char, 0, cp) != utf8_char.size()) return -1;
  const auto it = byte_map().byte_of.find(cp);
  return it == byte_map().byte_of.end() ? -1 : it->second;
}

namespace {
const BpeTokenizer& as_bpe(const Tokenizer& tokenizer) {
  const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tokenizer);
  if (!bpe) throw Error(fmt::format("tokenizer '{}' is not a BPE tokenizer", tokenizer.origin()));
  return *bpe;
}
}  // namespace

std::vector<std::string> bpe_pre_tokenize(const Tokenizer& bpe_tokenizer, const std::string& text) {
  return as_bpe(bpe_tokenizer).pre_tokenize(text);
}

std::vector<uint8_t> bpe_unencodable_bytes(const Tokenizer& bpe_tokenizer) {
  return as_bpe(bpe_tokenizer).missing_bytes();
}

}  // namespace sqlab
