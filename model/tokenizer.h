// Tokenizers for evaluation and generation:
//  - llama2.c `tokenizer.bin` (scores + pieces; encoded as llama2.c's run.c does),
//  - sentencepiece `tokenizer.model`, through a small wrapper shared library opened
//    with dlopen (linking sentencepiece and LibTorch into one executable crashes before
//    main: toolchain.md "sentencepiece and LibTorch in one process"),
// plus pre-tokenized id files. Errors the input causes are sqlab::config_error naming
// the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sqlab {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text`, with the BOS id first when `bos`.
  virtual std::vector<int64_t> encode(const std::string& text, bool bos) const = 0;
  // The text of `ids` (BOS/EOS skipped; byte pieces become raw bytes). Ids outside
  // [0, vocab_size) throw naming the id.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  // The stored piece of one id (llama2.c: with ' ' for the word-start mark).
  virtual std::string piece(int64_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  // The file it was loaded from (for messages).
  virtual const std::string& origin() const = 0;
};

// By extension and content: a directory -> its tokenizer.model or tokenizer.bin; a GGUF
// file -> its byte-level BPE tokenizer (model/bpe_tokenizer.h); `.model` or a protobuf
// start -> sentencepiece; otherwise llama2.c's format.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// --- llama2.c tokenizer.bin: int32 max_token_length, then per token: float32 score,
// int32 length, the piece's bytes.
struct Llama2cVocab {
  int32_t max_token_length = 0;
  std::vector<std::string> pieces;
  std::vector<float> scores;
};

// Pure (fuzzable): parses `size` bytes; vocab_size > 0 reads exactly that many tokens
// (trailing bytes are an error), vocab_size <= 0 reads tokens up to the end. Throws
// sqlab::config_error naming `origin` and the token index; never reads past `size`.
Llama2cVocab parse_llama2c_tokenizer(const uint8_t* bytes, size_t size, int64_t vocab_size,
                                     const std::string& origin);

std::unique_ptr<Tokenizer> make_llama2c_tokenizer(Llama2cVocab vocab, std::string origin);

// sentencepiece .model through the wrapper library (see sentencepiece_wrapper_path).
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path);

// Where the sentencepiece wrapper library is looked for: $SQLAB_SPM_WRAPPER, then
// libsqlab_spm.so next to the running executable, then the build directory's copy.
std::string sentencepiece_wrapper_path();

// --- pre-tokenized input

// Whitespace-separated integer ids (text; '#' starts a comment to the end of the
// line). Errors name the file and the line.
std::vector<int64_t> read_token_ids(const std::string& path);

// Which documents of a JSON-lines file make the text: the `field` of the first
// `documents` lines (0: all) joined with `join`. The defaults with documents = 1100 are
// GPTQ's "c4_new" C4 protocol (the validation documents' text joined with ' ').
struct TextSelection {
  int64_t documents = 0;
  std::string join = " ";
  std::string field = "text";
};

// The text of a .jsonl file by `selection`. Errors name the file and the line.
std::string read_jsonl_text(const std::string& path, const TextSelection& selection);

// Evaluation tokens: a path ending in .ids is read with read_token_ids; a .jsonl file's
// documents are joined by `selection` and tokenized whole; anything else is a text file
// tokenized whole (as GPTQ/QuaRot evaluate WikiText-2: the test split joined with blank
// lines, one encode call). At most max_tokens (<= 0: all). Errors name the file:
// missing, empty, ids >= the tokenizer's vocabulary.
std::vector<int64_t> load_eval_tokens(const std::string& path, const Tokenizer* tokenizer, bool bos,
                                      int64_t max_tokens, const TextSelection& selection = {});

}  // namespace sqlab
