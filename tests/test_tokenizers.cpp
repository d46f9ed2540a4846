// Tokenizers: llama2.c's tokenizer.bin against run.c's algorithm (a direct quadratic
// reference here) and known ids, the real tok512.bin round trip, sentencepiece models
// trained by spm_train in the test against spm_encode, token-id files and evaluation
// tokens, and malformed inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "model/tokenizer.h"
#include "test_util.h"

namespace sqlab {
namespace {
using testing::expect_config_error;

using testing::read_text;
using testing::TempDir;
using testing::write_text;
namespace fs = std::filesystem;

const std::string kShared = SQLAB_SHARED_DATA;

Llama2cVocab read_vocab(const std::string& path) {
  const std::string bytes = read_text(path);
  return parse_llama2c_tokenizer(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, path);
}

// run.c's encode, literally: a full scan for the best pair after every merge.
std::vector<int64_t> reference_encode(const Llama2cVocab& v, const std::string& text) {
  std::unordered_map<std::string, int64_t> look;
  for (size_t i = 0; i < v.pieces.size(); ++i) look.emplace(v.pieces[i], i);
  std::vector<int64_t> ids;
  if (text.empty()) return ids;
  ids.push_back(look.at(" "));
  std::string buffer;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) buffer.clear();
    buffer += text[i];
    if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 && buffer.size() < 4) continue;
    if (look.count(buffer)) ids.push_back(look[buffer]);
    else for (unsigned char b : buffer) ids.push_back(b + 3);
    buffer.clear();
  }
  while (true) {
    float best = -1e10f;
    int64_t at = -1, merged = -1;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const auto it = look.find(v.pieces[ids[i]] + v.pieces[ids[i + 1]]);
      if (it != look.end() && v.scores[it->second] > best) {
        best = v.scores[it->second];
        at = i;
        merged = it->second;
      }
    }
    if (at < 0) break;
    ids[at] = merged;
    ids.erase(ids.begin() + at + 1);
  }
  return ids;
}

bool have_tok512() { return fs::exists(kShared + "/models/tok512.bin"); }

TEST(TokenizerLlama2c, KnownIdsOfTok512) {
  if (!have_tok512()) GTEST_SKIP() << "no " << kShared << "/models/tok512.bin (shared data)";
  const auto tok = load_tokenizer(kShared + "/models/tok512.bin");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  // " the cat": ' '+'t' (score 0) first, then 'h'+'e' (-1), ' t'+'he' -> ' the' (-6),
  // ' '+'c' -> ' c' (-21), 'a'+'t' -> 'at' (-35).
  EXPECT_EQ(tok->encode("the cat", true), (std::vector<int64_t>{1, 265, 280, 294}));
  EXPECT_EQ(tok->piece(265), " the");
  EXPECT_EQ(tok->encode("Once upon a time", false), (std::vector<int64_t>{403, 407, 261, 378}));
  // 'é' is a token of its own (a 2-byte code point); '\n' falls back to byte 0x0A = id 13.
  EXPECT_EQ(tok->encode("h\xc3\xa9llo\n", false), (std::vector<int64_t>{270, 485, 306, 414, 13}));
  EXPECT_EQ(tok->encode("", true), (std::vector<int64_t>{1}));
  EXPECT_EQ(tok->encode("", false), (std::vector<int64_t>{}));
  // Decode drops the dummy-prefix space after BOS only (run.c).
  EXPECT_EQ(tok->decode({1, 265, 280, 294}), "the cat");
  EXPECT_EQ(tok->decode({265, 280, 294}), " the cat");
  EXPECT_EQ(tok->decode({1, 270, 485, 306, 414, 13, 2}), "h\xc3\xa9llo\n");
  expect_config_error([&] { tok->decode({5, 512}); }, {"tok512.bin", "token id 512", "position 1"});
}

TEST(TokenizerLlama2c, RoundTripAndRunCReferenceOnTinyStories) {
  if (!have_tok512()) GTEST_SKIP() << "no tok512.bin (shared data)";
  const std::string sample = kShared + "/tinystories/cs336_tinystories_sample.txt";
  if (!fs::exists(sample)) GTEST_SKIP() << "no " << sample;
  const std::string path = kShared + "/models/tok512.bin";
  const auto tok = load_tokenizer(path);
  const Llama2cVocab vocab = read_vocab(path);
  const std::string text = read_text(sample);
  const std::vector<int64_t> ids = tok->encode(text, true);
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_LT(ids.size(), text.size() / 2) << "merges should compress the text";
  // The heap gives run.c's merges exactly: each line, and the whole text.
  std::istringstream lines(text);
  std::string line;
  int checked = 0;
  while (std::getline(lines, line) && checked < 20)
    if (!line.empty()) {
      EXPECT_EQ(tok->encode(line, false), reference_encode(vocab, line)) << line;
      ++checked;
    }
  std::vector<int64_t> whole = ids;
  whole.erase(whole.begin());
  EXPECT_EQ(whole, reference_encode(vocab, text));
}

// A hand-made vocabulary: ties go to the leftmost pair, bytes fall back to id b + 3.
Llama2cVocab tiny_vocab(bool with_bytes) {
  Llama2cVocab v;
  v.max_token_length = 6;
  for (const char* p : {"<unk>", "<s>", "</s>"}) {
    v.pieces.push_back(p);
    v.scores.push_back(0);
  }
  if (with_bytes)
    for (int b = 0; b < 256; ++b) {
      char piece[8];
      std::snprintf(piece, sizeof piece, "<0x%02X>", b);
      v.pieces.push_back(piece);
      v.scores.push_back(0);
    }
  for (const auto& [p, s] : std::vector<std::pair<const char*, float>>{
           {" ", -1}, {"a", -1}, {"b", -1}, {"ab", -2}, {"ba", -2}, {" a", -5}, {"aba", -3}}) {
    v.pieces.push_back(p);
    v.scores.push_back(s);
  }
  return v;
}

TEST(TokenizerLlama2c, TiesAndByteFallback) {
  const Llama2cVocab v = tiny_vocab(true);
  const auto tok = make_llama2c_tokenizer(v, "tiny.bin");
  const auto id = [&](const std::string& p) {
    for (size_t i = 0; i < v.pieces.size(); ++i)
      if (v.pieces[i] == p) return static_cast<int64_t>(i);
    return int64_t{-1};
  };
  // " aba": "ab" and "ba" tie at -2; the leftmost ("ab" at 'a','b') wins, then "aba".
  EXPECT_EQ(tok->encode("aba", false), (std::vector<int64_t>{id(" "), id("aba")}));
  EXPECT_EQ(tok->encode("aba", false), reference_encode(v, "aba"));
  // "bab": "ba" (-2) beats " b"? (not a token), so "ba" + "b" ... then no "bab".
  EXPECT_EQ(tok->encode("bab", false), reference_encode(v, "bab"));
  EXPECT_EQ(tok->encode("z", false), (std::vector<int64_t>{id(" "), 'z' + 3}));
  EXPECT_EQ(tok->decode({1, id(" "), 'z' + 3}), "z");
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    std::string s;
    for (int k = 0, n = rng() % 12; k < n; ++k) s += "ab z"[rng() % 4];
    EXPECT_EQ(tok->encode(s, false), reference_encode(v, s)) << "'" << s << "'";
    EXPECT_EQ(tok->decode(tok->encode(s, true)), s);
  }
  const auto no_bytes = make_llama2c_tokenizer(tiny_vocab(false), "nobytes.bin");
  expect_config_error([&] { no_bytes->encode("z", false); }, {"nobytes.bin", "byte 0x7A"});
}

std::string tokenizer_file(int32_t max_len, const std::vector<std::pair<float, std::string>>& tokens) {
  std::string out(reinterpret_cast<const char*>(&max_len), 4);
  for (const auto& [score, piece] : tokens) {
    const int32_t length = static_cast<int32_t>(piece.size());
    out.append(reinterpret_cast<const char*>(&score), 4);
    out.append(reinterpret_cast<const char*>(&length), 4);
    out += piece;
  }
  return out;
}

TEST(TokenizerLlama2c, MalformedFiles) {
  const std::vector<std::pair<float, std::string>> good = {{0, "<unk>"}, {0, "<s>"}, {0, "</s>"}, {-1, "a"}};
  const auto parse = [](const std::string& bytes, int64_t vocab = 0) {
    return parse_llama2c_tokenizer(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), vocab, "t.bin");
  };
  EXPECT_EQ(parse(tokenizer_file(5, good)).pieces.size(), 4u);
  EXPECT_EQ(parse(tokenizer_file(5, good), 4).pieces.size(), 4u);
  expect_config_error([&] { parse(tokenizer_file(5, good), 3); }, {"t.bin", "bytes left after the 3 tokens"});
  expect_config_error([&] { parse(tokenizer_file(5, good), 5); }, {"token 4", "ends"});
  expect_config_error([&] { parse("ab"); }, {"t.bin", "too short"});
  expect_config_error([&] { parse(tokenizer_file(0, good)); }, {"max_token_length 0"});
  std::string truncated = tokenizer_file(5, good);
  truncated.pop_back();
  expect_config_error([&] { parse(truncated); }, {"token 3", "runs past the end"});
  std::string negative = tokenizer_file(5, {{0, "<unk>"}, {0, "x"}});
  const int32_t minus = -5;
  std::memcpy(&negative[4 + 4], &minus, 4);
  expect_config_error([&] { parse(negative); }, {"token 0", "length -5"});
  expect_config_error([&] { parse(tokenizer_file(5, {{NAN, "a"}, {0, "b"}, {0, "c"}})); }, {"token 0", "not finite"});
  expect_config_error([&] { parse(tokenizer_file(5, {{0, "a"}})); }, {"only 1 tokens"});
  TempDir dir;
  write_text(dir.file("tok.bin"), tokenizer_file(5, good).substr(0, 10));
  expect_config_error([&] { load_tokenizer(dir.file("tok.bin")); }, {"tok.bin"});
  expect_config_error([&] { load_tokenizer(dir.file("absent.bin")); }, {"absent.bin", "no such file"});
  write_text(dir.file("tokenizer.json"), "{}");
  expect_config_error([&] { load_tokenizer(dir.file("tokenizer.json")); }, {"tokenizer.json", "not supported"});
}

// --- sentencepiece

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':'))
    if (!dir.empty() && access((dir + "/" + name).c_str(), X_OK) == 0) return dir + "/" + name;
  return "";
}

using testing::run_capture;

const char* kCorpus =
    "Once upon a time there was a little cat named Tom.\n"
    "Tom liked to play in the garden with his red ball.\n"
    "One day the ball rolled away under the big green tree.\n"
    "The little cat looked and looked, but he could not find it.\n"
    "Then a kind bird came and showed Tom where the ball was.\n"
    "Tom was happy and thanked the bird. They played all day.\n"
    "The sun went down and Tom went home to sleep.\n"
    "His mother gave him warm milk and a hug.\n";

TEST(TokenizerSentencePiece, MatchesSpmEncodeAndRoundTrips) {
  const std::string train = find_program("spm_train"), encode = find_program("spm_encode");
  if (train.empty() || encode.empty()) GTEST_SKIP() << "spm_train/spm_encode not installed (Debian: sentencepiece)";
  TempDir dir;
  write_text(dir.file("corpus.txt"), kCorpus);
  const std::string log = dir.file("train.log");
  const int rc = std::system((train + " --input=" + dir.file("corpus.txt") + " --model_prefix=" + dir.file("m") +
                              " --vocab_size=80 --character_coverage=1.0 --hard_vocab_limit=false > " + log + " 2>&1")
                                 .c_str());
  ASSERT_EQ(rc, 0) << read_text(log);
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = load_tokenizer(dir.file("m.model"));
  } catch (const Error& e) {
    if (std::string(e.what()).find("sanitizer build") != std::string::npos) GTEST_SKIP() << e.what();
    throw;
  }
  EXPECT_EQ(tok->vocab_size(), 80);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  const std::string ids_text =
      run_capture(encode + " --model=" + dir.file("m.model") + " --output_format=id < " + dir.file("corpus.txt"));
  std::istringstream expected_lines(ids_text), lines(kCorpus);
  std::string line, expected;
  int checked = 0;
  while (std::getline(lines, line) && std::getline(expected_lines, expected)) {
    std::vector<int64_t> want;
    std::istringstream words(expected);
    for (int64_t id; words >> id;) want.push_back(id);
    const std::vector<int64_t> got = tok->encode(line, false);
    EXPECT_EQ(got, want) << line;
    EXPECT_EQ(tok->decode(got), line);
    std::vector<int64_t> with_bos = tok->encode(line, true);
    EXPECT_EQ(with_bos.front(), 1);
    EXPECT_EQ(tok->decode(with_bos), line);
    ++checked;
  }
  EXPECT_EQ(checked, 8);
  // Pieces agree with the .vocab file spm_train wrote.
  std::istringstream vocab(read_text(dir.file("m.vocab")));
  for (int64_t id = 0; std::getline(vocab, line); ++id) EXPECT_EQ(tok->piece(id), line.substr(0, line.find('\t')));
  expect_config_error([&] { tok->decode({3, 80}); }, {"m.model", "token id 80"});
  // A directory holding tokenizer.model is found.
  fs::create_directories(dir.file("hf"));
  fs::copy_file(dir.file("m.model"), dir.file("hf/tokenizer.model"));
  EXPECT_EQ(load_tokenizer(dir.file("hf"))->encode("Tom", false), tok->encode("Tom", false));
  // Garbage .model: sentencepiece's own error, as a config error naming the file.
  write_text(dir.file("bad.model"), "this is not a protobuf");
  expect_config_error([&] { load_tokenizer(dir.file("bad.model")); }, {"bad.model", "cannot load"});
}

TEST(TokenizerSentencePiece, WrapperPathOverride) {
  const char* old = std::getenv("SQLAB_SPM_WRAPPER");
  const std::string saved = old ? old : "";
  setenv("SQLAB_SPM_WRAPPER", "/somewhere/libx.so", 1);
  EXPECT_EQ(sentencepiece_wrapper_path(), "/somewhere/libx.so");
  if (old) setenv("SQLAB_SPM_WRAPPER", saved.c_str(), 1);
  else unsetenv("SQLAB_SPM_WRAPPER");
  EXPECT_NE(sentencepiece_wrapper_path().find("libsqlab_spm.so"), std::string::npos);
}

// --- token ids and evaluation tokens

TEST(TokenizerIds, ReadTokenIds) {
  TempDir dir;
  write_text(dir.file("a.ids"), "# ids of the prompt\n1 265 280\n\n  294\t2 # end\n");
  EXPECT_EQ(read_token_ids(dir.file("a.ids")), (std::vector<int64_t>{1, 265, 280, 294, 2}));
  write_text(dir.file("b.ids"), "1 2\n3 4x 5\n");
  expect_config_error([&] { read_token_ids(dir.file("b.ids")); }, {"b.ids", "line 2", "'4x'"});
  write_text(dir.file("c.ids"), "-3\n");
  expect_config_error([&] { read_token_ids(dir.file("c.ids")); }, {"c.ids", "line 1", "'-3'"});
  write_text(dir.file("d.ids"), "99999999999999999999999\n");
  expect_config_error([&] { read_token_ids(dir.file("d.ids")); }, {"d.ids", "line 1"});
  expect_config_error([&] { read_token_ids(dir.file("none.ids")); }, {"none.ids", "no such file"});
  expect_config_error([&] { read_token_ids(dir.file("x.npy")); }, {"x.npy"});
}

TEST(TokenizerIds, LoadEvalTokens) {
  TempDir dir;
  const auto tok = make_llama2c_tokenizer(tiny_vocab(true), "tiny.bin");
  write_text(dir.file("t.txt"), "ab\n\naba");
  const std::vector<int64_t> all = load_eval_tokens(dir.file("t.txt"), tok.get(), true, 0);
  EXPECT_EQ(all, tok->encode("ab\n\naba", true));
  EXPECT_EQ(load_eval_tokens(dir.file("t.txt"), tok.get(), true, 3), std::vector<int64_t>(all.begin(), all.begin() + 3));
  write_text(dir.file("e.txt"), "");
  expect_config_error([&] { load_eval_tokens(dir.file("e.txt"), tok.get(), true, 0); }, {"e.txt", "empty"});
  expect_config_error([&] { load_eval_tokens(dir.file("m.txt"), tok.get(), true, 0); }, {"m.txt", "no such file"});
  expect_config_error([&] { load_eval_tokens(dir.file("t.txt"), nullptr, true, 0); }, {"t.txt", "needs a tokenizer"});
  write_text(dir.file("a.ids"), "1 2 3 4 5\n");
  EXPECT_EQ(load_eval_tokens(dir.file("a.ids"), nullptr, true, 0), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  write_text(dir.file("big.ids"), "1 2 400\n");
  expect_config_error([&] { load_eval_tokens(dir.file("big.ids"), tok.get(), true, 0); },
                      {"big.ids", "id 400", "position 2", "vocabulary size 266"});
  write_text(dir.file("empty.ids"), "# nothing\n");
  expect_config_error([&] { load_eval_tokens(dir.file("empty.ids"), tok.get(), true, 0); }, {"empty.ids", "no ids"});
}

}  // namespace
}  // namespace sqlab
