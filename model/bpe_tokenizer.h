// GPT-2 style byte-level BPE (SmolLM2, GPT-2; LLaMA-3 and Qwen2 splits as well), built
// from a GGUF file's tokenizer metadata (tokenizer.ggml.model "gpt2").
//
// encode(text) =
//  1. special tokens: every control (type 3) and user-defined (type 4) token that occurs
//     literally in the text is cut out whole, leftmost-longest first, as Hugging Face
//     `tokenizers` does with added tokens (transformers' GGUF loader adds exactly these
//     two types; llama.cpp does the same with parse_special=true). The rest of the text
//     is split by the next steps, each part on its own.
//  2. pre-tokenization by the regex list of `tokenizer.ggml.pre` (PCRE2, UTF + UCP, JIT):
//     each regex in turn splits every current piece into its matches and the unmatched
//     gaps between them (HF Split "isolated"; llama.cpp unicode_regex_split). `\s` is
//     spelled as the Unicode White_Space set [\t-\r\x{85}\p{Z}] that Oniguruma (HF) uses.
//  3. byte-level: each piece's bytes become the tokens of their GPT-2 byte characters
//     (byte 0x20 -> U+0120 'Ġ', ...), then merged by merge rank (lowest rank first,
//     leftmost on ties) — the HF BPE / llama.cpp result, not a greedy left-to-right one.
//     Results are cached per piece.
//     A byte whose GPT-2 character is not in the vocabulary is dropped before merging,
//     as HF's BPE (without an unk token) and llama.cpp drop it: SmolLM2's vocabulary lacks
//     21 of them (control bytes 0x04 0x06 0x13 0x14 0x16 0x1D; 0xC0 0xC1 0xF1 0xF2 0xF5-0xFF,
//     never or hardly ever in UTF-8). See bpe_unencodable_bytes.
// Invalid UTF-8 input is accepted, not rejected: PCRE2_MATCH_INVALID_UTF makes no
// regex match across an invalid sequence, so each run of invalid bytes ends up in a gap
// piece of its own and is encoded byte by byte like any other piece; decode(encode(x))
// == x for every byte string x that contains no special-token text and no unencodable byte.
//
// decode(ids): control tokens (BOS/EOS/<|im_start|>...) are skipped, as the llama2.c and
// sentencepiece tokenizers skip theirs; user-defined tokens give their text as it is;
// normal tokens are mapped back from GPT-2 byte characters to bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace sqlab {

// GGUF tokenizer.ggml.token_type values.
enum class BpeTokenType : int32_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

// What the GGUF metadata holds for a "gpt2" tokenizer.
struct BpeVocab {
  std::vector<std::string> tokens;    // tokenizer.ggml.tokens, in the GPT-2 byte alphabet
  std::vector<int32_t> token_types;   // tokenizer.ggml.token_type; empty: all normal
  std::vector<std::string> merges;    // tokenizer.ggml.merges: "left right", by rank
  int64_t bos_id = -1;                // tokenizer.ggml.bos_token_id; -1: none
  int64_t eos_id = -1;                // tokenizer.ggml.eos_token_id; -1: none
  std::string pre = "default";        // tokenizer.ggml.pre
  bool add_bos = false;               // tokenizer.ggml.add_bos_token (for the caller: encode's
                                      // `bos` argument decides)
};

// Throws sqlab::config_error naming `origin` and the key for: an unknown `pre`, token_types
// of another length than tokens, a merge that is not "a b" or names an unknown token or
// merges into a string that is no token, a vocabulary without any GPT-2 byte character,
// bos/eos ids outside the vocabulary. (Single missing byte characters are no error: those
// bytes are dropped, as the reference does.)
std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeVocab vocab, std::string origin);

// The tokenizer.ggml.pre names make_bpe_tokenizer knows, sorted.
std::vector<std::string> bpe_pre_tokenizer_names();

// The regexes (PCRE2 syntax, applied in order) of one pre-tokenizer name; config_error
// naming the name and the known ones for an unknown name.
std::vector<std::string> bpe_pre_tokenizer_regexes(const std::string& pre, const std::string& origin);

// GPT-2's bytes_to_unicode: the UTF-8 of the character that stands for `byte`
// (printable Latin-1 bytes stand for themselves, the others for U+0100 + n).
const std::string& bpe_byte_to_unicode(uint8_t byte);

// The byte a GPT-2 byte character (one code point, UTF-8) stands for; -1 if none.
int bpe_unicode_to_byte(const std::string& utf8_char);

// The bytes that a BPE tokenizer drops because their GPT-2 character is no token.
std::vector<uint8_t> bpe_unencodable_bytes(const Tokenizer& bpe_tokenizer);

// The pre-tokenizer's split of `text` (step 2 above, no special tokens), for tests and
// diagnostics.
std::vector<std::string> bpe_pre_tokenize(const Tokenizer& bpe_tokenizer, const std::string& text);

}  // namespace sqlab
