// Byte-level BPE tokenizer: a hand-made vocabulary whose ids are derived by hand, the GPT-2
// byte mapping, round trips of arbitrary bytes, config errors, and SmolLM2's real
// vocabulary against tests/fixtures/smollm2/tokenizer_ids.json (made by
// tools/smollm2_tokenizer_reference.py with Hugging Face tokenizers).
#include "model/bpe_tokenizer.h"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/gguf_checkpoint.h"
#include "tests/test_util.h"

#ifndef SQLAB_SOURCE_DIR
#define SQLAB_SOURCE_DIR "."
#endif
#ifndef SQLAB_SHARED_DATA
#define SQLAB_SHARED_DATA SQLAB_SOURCE_DIR "/../shared/data"
#endif

namespace sqlab {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int64_t>;
using testing::expect_config_error;
using testing::smollm2_gguf_path;
using testing::smollm2_missing_message;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// --- a hand-made vocabulary: ids 0..255 are the 256 byte characters (id = byte), then
const int32_t kBC = 256, kAB = 257, kCD = 258, kABC = 259, kAA = 260, kSpaceA = 261, kEnd = 262, kTool = 263;

BpeVocab tiny_vocab(const std::string& pre = "gpt2") {
  BpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(bpe_byte_to_unicode(static_cast<uint8_t>(b)));
  for (const char* t : {"bc", "ab", "cd", "abc", "aa", "\xC4\xA0" "a", "<|end|>", "<tool>"}) v.tokens.push_back(t);
  v.token_types.assign(v.tokens.size(), 1);
  v.token_types[kEnd] = 3;   // control
  v.token_types[kTool] = 4;  // user-defined
  // By rank: "b c" first, "a b" before "c d"; "a bc" exists, "ab c" does not.
  v.merges = {"b c", "a b", "c d", "a bc", "a a", "\xC4\xA0 a"};
  v.bos_id = kEnd;
  v.eos_id = kEnd;
  v.pre = pre;
  return v;
}

TEST(BpeByteMap, Gpt2BytesToUnicode) {
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) {
    const std::string& c = bpe_byte_to_unicode(static_cast<uint8_t>(b));
    EXPECT_EQ(bpe_unicode_to_byte(c), b);
    seen.insert(c);
  }
  EXPECT_EQ(seen.size(), 256u);
  EXPECT_EQ(bpe_byte_to_unicode(' '), "\xC4\xA0");    // U+0120 'Ġ'
  EXPECT_EQ(bpe_byte_to_unicode('\n'), "\xC4\x8A");   // U+010A 'Ċ'
  EXPECT_EQ(bpe_byte_to_unicode(0x00), "\xC4\x80");   // U+0100
  EXPECT_EQ(bpe_byte_to_unicode(0x7F), "\xC4\xA1");   // U+0121: the 34th unprintable byte
  EXPECT_EQ(bpe_byte_to_unicode(0xAD), "\xC5\x83");   // U+0143 (soft hyphen, the last one)
  EXPECT_EQ(bpe_byte_to_unicode('a'), "a");
  EXPECT_EQ(bpe_byte_to_unicode(0xE9), "\xC3\xA9");   // 'é' stands for itself
  EXPECT_EQ(bpe_unicode_to_byte("\xC4\xA0"), 0x20);
  EXPECT_EQ(bpe_unicode_to_byte("\xE4\xB8\xAD"), -1);  // '中' stands for no byte
  EXPECT_EQ(bpe_unicode_to_byte("ab"), -1);
}

TEST(BpeTokenizer, MergesByRankNotLeftToRight) {
  const auto tok = make_bpe_tokenizer(tiny_vocab(), "tiny");
  // "abcd": (b,c) has rank 0 -> a bc d; then (a,bc) rank 3 -> abc d. A greedy left-to-right
  // merge would take (a,b) first and give ab cd.
  EXPECT_EQ(tok->encode("abcd", false), (Ids{kABC, 'd'}));
  // " abcd" is one piece; (b,c) rank 0, (a,bc) rank 3 beat (Ġ,a) rank 5.
  EXPECT_EQ(tok->encode(" abcd", false), (Ids{' ', kABC, 'd'}));
  // " ab": (a,b) rank 1 beats (Ġ,a) rank 5.
  EXPECT_EQ(tok->encode("ab ab", false), (Ids{kAB, ' ', kAB}));
  EXPECT_EQ(tok->encode(" a", false), (Ids{kSpaceA}));
  EXPECT_EQ(tok->encode("cd", false), (Ids{kCD}));
  // Ties go to the leftmost pair.
  EXPECT_EQ(tok->encode("aaa", false), (Ids{kAA, 'a'}));
  EXPECT_EQ(tok->encode("aaaa", false), (Ids{kAA, kAA}));
  // Merges never cross pieces: "a" and " bc" are two pieces of the GPT-2 regex.
  EXPECT_EQ(tok->encode("a bc", false), (Ids{'a', ' ', kBC}));
  EXPECT_EQ(tok->encode("", false), Ids{});
  EXPECT_EQ(tok->encode("", true), Ids{kEnd});
  EXPECT_EQ(tok->encode("abcd", true), (Ids{kEnd, kABC, 'd'}));
}

TEST(BpeTokenizer, PreTokenizers) {
  const auto gpt2 = make_bpe_tokenizer(tiny_vocab("gpt2"), "tiny");
  using Pieces = std::vector<std::string>;
  EXPECT_EQ(bpe_pre_tokenize(*gpt2, "Hello world's 123  x\n\n"),
            (Pieces{"Hello", " world", "'s", " 123", " ", " x", "\n\n"}));
  EXPECT_EQ(bpe_pre_tokenize(*gpt2, "don't  stop!!"), (Pieces{"don", "'t", " ", " stop", "!!"}));
  const auto smollm = make_bpe_tokenizer(tiny_vocab("smollm"), "tiny");
  // Every digit alone first, then the GPT-2 regex on each part separately.
  EXPECT_EQ(bpe_pre_tokenize(*smollm, "x  12,5"), (Pieces{"x", "  ", "1", "2", ",", "5"}));
  EXPECT_EQ(smollm->encode("a1b", false), (Ids{'a', '1', 'b'}));
  const auto llama3 = make_bpe_tokenizer(tiny_vocab("llama-bpe"), "tiny");
  EXPECT_EQ(bpe_pre_tokenize(*llama3, "I'LL 12345 ok\n\n x"), (Pieces{"I", "'LL", " ", "123", "45", " ok", "\n\n", " x"}));
  const auto qwen2 = make_bpe_tokenizer(tiny_vocab("qwen2"), "tiny");
  EXPECT_EQ(bpe_pre_tokenize(*qwen2, "a 123"), (Pieces{"a", " ", "1", "2", "3"}));
  // Unicode White_Space, U+0085 (NEL) included, as Oniguruma's \s.
  EXPECT_EQ(bpe_pre_tokenize(*gpt2, "a\xC2\x85 b"), (Pieces{"a", "\xC2\x85", " b"}));
  for (const std::string& name : bpe_pre_tokenizer_names()) EXPECT_FALSE(bpe_pre_tokenizer_regexes(name, "x").empty());
}

TEST(BpeTokenizer, SpecialTokensAreCutOutWhole) {
  const auto tok = make_bpe_tokenizer(tiny_vocab(), "tiny");
  EXPECT_EQ(tok->encode("x<|end|>y<tool>", false), (Ids{'x', kEnd, 'y', kTool}));
  EXPECT_EQ(tok->encode("<|end|><|end|>", false), (Ids{kEnd, kEnd}));
  EXPECT_EQ(tok->encode("<|end", false), (Ids{'<', '|', 'e', 'n', 'd'}));
  // decode skips control tokens; user-defined ones give their text.
  EXPECT_EQ(tok->decode({'x', kEnd, 'y', kTool}), "xy<tool>");
  EXPECT_EQ(tok->decode({' ', kABC, 'd'}), " abcd");
  EXPECT_EQ(tok->piece(kSpaceA), "\xC4\xA0" "a");
  EXPECT_EQ(tok->vocab_size(), 264);
  EXPECT_EQ(tok->bos_id(), kEnd);
  EXPECT_EQ(tok->origin(), "tiny");
  expect_config_error([&] { tok->decode({264}); }, {"tiny", "264"});
  expect_config_error([&] { tok->decode({-1}); }, {"tiny", "-1"});
  expect_config_error([&] { tok->piece(999); }, {"tiny", "999"});
}

// Invalid UTF-8 is accepted: the regexes never match across an invalid sequence, so its
// bytes form pieces of their own and are encoded as byte tokens; every byte string comes back.
TEST(BpeTokenizer, ArbitraryBytesRoundTrip) {
  for (const char* pre : {"smollm", "gpt2", "llama-bpe", "qwen2"}) {
    const auto tok = make_bpe_tokenizer(tiny_vocab(pre), "tiny");
    std::mt19937 rng(7);
    for (int trial = 0; trial < 300; ++trial) {
      std::string s(rng() % 64, '\0');
      for (char& c : s) c = static_cast<char>(trial % 2 ? rng() % 256 : "ab cd\n\xC3\xA9\xFF\x80 1'"[rng() % 14]);
      const Ids ids = tok->encode(s, false);
      for (const int64_t id : ids) ASSERT_TRUE(id >= 0 && id < 262) << pre;
      ASSERT_EQ(tok->decode(ids), s) << pre << " trial " << trial;
    }
    const std::string invalid = "ok\xFF\xFE" "ab\xC3" " \xE2\x82" "x\xED\xA0\x80";  // bad, truncated, surrogate
    EXPECT_EQ(tok->decode(tok->encode(invalid, false)), invalid) << pre;
  }
  const auto tok = make_bpe_tokenizer(tiny_vocab("gpt2"), "tiny");
  EXPECT_EQ(bpe_pre_tokenize(*tok, "ab\xFF" "cd"), (std::vector<std::string>{"ab", "\xFF", "cd"}));
}

// A byte whose character is no token is dropped before merging (HF BPE without unk,
// llama.cpp): its neighbours in the piece merge as if it were not there.
TEST(BpeTokenizer, BytesWithoutTokenAreDropped) {
  BpeVocab v = tiny_vocab();
  v.tokens[0x04] = "t4";
  v.tokens[0xFF] = "t255";
  const auto tok = make_bpe_tokenizer(v, "tiny");
  EXPECT_EQ(bpe_unencodable_bytes(*tok), (std::vector<uint8_t>{0x04, 0xFF}));
  EXPECT_EQ(tok->encode("\x04", false), Ids{});
  EXPECT_EQ(tok->encode("a\x04" "b", false), (Ids{'a', 'b'}));           // three pieces: letters, control, letters
  EXPECT_EQ(tok->encode("!\x04!", false), (Ids{'!', '!'}));           // one piece, no "!!" token
  EXPECT_EQ(tok->encode("\xFF\xFF" "ab\xFF", false), (Ids{kAB}));      // invalid bytes: own pieces
  EXPECT_EQ(tok->decode(tok->encode("a\x04" "b", false)), "ab");
}

TEST(BpeTokenizer, ConfigErrors) {
  expect_config_error([] { make_bpe_tokenizer(tiny_vocab("nope"), "m.gguf"); },
                      {"m.gguf", "tokenizer.ggml.pre", "'nope'", "smollm", "gpt2", "llama-bpe", "qwen2"});
  {
    BpeVocab v = tiny_vocab();
    v.merges.push_back("a zz");
    expect_config_error([&] { make_bpe_tokenizer(v, "m.gguf"); }, {"m.gguf", "tokenizer.ggml.merges[6]", "'zz'"});
  }
  {
    BpeVocab v = tiny_vocab();
    v.merges.push_back("ab c");  // "abc" exists, but the merge must name existing tokens: it does
    EXPECT_NO_THROW(make_bpe_tokenizer(v, "m.gguf"));
    v.merges.push_back("cd d");  // "cdd" is no token
    expect_config_error([&] { make_bpe_tokenizer(v, "m.gguf"); }, {"tokenizer.ggml.merges[7]", "'cdd'"});
  }
  {
    BpeVocab v = tiny_vocab();
    v.merges.push_back("abc");
    expect_config_error([&] { make_bpe_tokenizer(v, "m.gguf"); }, {"tokenizer.ggml.merges[6]", "one space"});
  }
  {
    BpeVocab v = tiny_vocab();
    for (int b = 0; b < 256; ++b) v.tokens[b] = "t" + std::to_string(b);  // no byte characters at all
    v.merges.clear();
    expect_config_error([&] { make_bpe_tokenizer(v, "m.gguf"); }, {"m.gguf", "no GPT-2 byte characters"});
  }
  {
    BpeVocab v = tiny_vocab();
    v.token_types.pop_back();
    expect_config_error([&] { make_bpe_tokenizer(v, "m.gguf"); }, {"m.gguf", "tokenizer.ggml.token_type"});
  }
  {
    BpeVocab v = tiny_vocab();
    v.bos_id = 9999;
    expect_config_error([&] { make_bpe_tokenizer(v, "m.gguf"); }, {"m.gguf", "tokenizer.ggml.bos_token_id", "9999"});
    v.bos_id = -1;
    const auto tok = make_bpe_tokenizer(v, "m.gguf");
    expect_config_error([&] { tok->encode("a", true); }, {"m.gguf", "BOS"});
  }
  expect_config_error([] { bpe_pre_tokenizer_regexes("llama9", "x.gguf"); }, {"x.gguf", "'llama9'", "smollm"});
}

// --- SmolLM2 against the reference fixture

std::string model_path() { return smollm2_gguf_path(); }

// The vocabulary as the product reads it: the GGUF's tokenizer.ggml.* metadata.
BpeVocab smollm2_vocab() {
  const std::string model = model_path();
  if (!fs::exists(model)) throw std::runtime_error(smollm2_missing_message());
  const GgufFile file(model);
  return bpe_vocab_from_gguf(file.metadata(), model);
}

class SmolLM2Tokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      const auto start = std::chrono::steady_clock::now();
      tokenizer_ = make_bpe_tokenizer(smollm2_vocab(), model_path()).release();
      std::cout << "[ build    ] SmolLM2 tokenizer in "
                << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s\n";
    } catch (const std::exception& e) {
      error_ = e.what();
    }
    const fs::path fixture = fs::path(SQLAB_SOURCE_DIR) / "tests" / "fixtures" / "smollm2" / "tokenizer_ids.json";
    if (fs::exists(fixture)) fixture_ = json::parse(read_file(fixture));
    else error_ += " the fixture " + fixture.string() + " is missing;";
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    if (!tokenizer_ || fixture_.is_null()) FAIL() << "SmolLM2 tokenizer unavailable: " << error_;
  }
  static fs::path shared() { return SQLAB_SHARED_DATA; }
  // What decode(encode(text)) gives: the text less the control tokens that decode skips
  // and the bytes that have no token.
  static std::string decoded_text(const std::string& text) {
    const std::vector<uint8_t> missing = bpe_unencodable_bytes(*tokenizer_);
    const std::set<uint8_t> unencodable(missing.begin(), missing.end());
    std::string out;
    for (const char c : text)
      if (!unencodable.count(static_cast<uint8_t>(c))) out.push_back(c);
    for (const char* s : {"<|im_start|>", "<|im_end|>", "<|endoftext|>"})
      for (size_t p; (p = out.find(s)) != std::string::npos;) out.erase(p, std::strlen(s));
    return out;
  }
  static Ids ids_of(const json& a) { return a.get<Ids>(); }

  static const Tokenizer* tokenizer_;
  static json fixture_;
  static std::string error_;
};
const Tokenizer* SmolLM2Tokenizer::tokenizer_ = nullptr;
json SmolLM2Tokenizer::fixture_;
std::string SmolLM2Tokenizer::error_;

// SHA-256 (FIPS 180-4) of the ids as little-endian int32, as the fixture stores it.
std::string sha256_of_ids(const Ids& ids) {
  std::string msg;
  msg.reserve(ids.size() * 4);
  for (const int64_t id : ids)
    for (int k = 0; k < 4; ++k) msg.push_back(static_cast<char>((static_cast<uint32_t>(id) >> (8 * k)) & 0xFF));
  static const uint32_t K[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
      0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
      0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
      0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
      0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
      0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
      0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const uint64_t bits = static_cast<uint64_t>(msg.size()) * 8;
  msg.push_back(static_cast<char>(0x80));
  while (msg.size() % 64 != 56) msg.push_back('\0');
  for (int k = 7; k >= 0; --k) msg.push_back(static_cast<char>((bits >> (8 * k)) & 0xFF));
  const auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  for (size_t off = 0; off < msg.size(); off += 64) {
    uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = (static_cast<uint32_t>(static_cast<uint8_t>(msg[off + 4 * t])) << 24) |
             (static_cast<uint32_t>(static_cast<uint8_t>(msg[off + 4 * t + 1])) << 16) |
             (static_cast<uint32_t>(static_cast<uint8_t>(msg[off + 4 * t + 2])) << 8) |
             static_cast<uint32_t>(static_cast<uint8_t>(msg[off + 4 * t + 3]));
    for (int t = 16; t < 64; ++t) {
      const uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; ++t) {
      const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  std::ostringstream out;
  for (const uint32_t x : h) {
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", x);
    out << buf;
  }
  return out.str();
}

TEST(BpeSha256, KnownVector) {
  // sha256 of the 4 bytes 01 00 00 00 (the id 1).
  EXPECT_EQ(sha256_of_ids({1}), "67abdd721024f0ff4e0b3f4c2fc13bc5bad42d0b7851d456d88d203d15aaa450");
}

TEST_F(SmolLM2Tokenizer, VocabularyFacts) {
  EXPECT_EQ(tokenizer_->vocab_size(), 49152);
  EXPECT_EQ(tokenizer_->bos_id(), 1);
  EXPECT_EQ(tokenizer_->eos_id(), 2);
  EXPECT_EQ(tokenizer_->piece(1), "<|im_start|>");
  EXPECT_EQ(fixture_.at("tokenizer").at("tokens").get<int64_t>(), tokenizer_->vocab_size());
}

TEST_F(SmolLM2Tokenizer, EdgeCasesMatchReference) {
  EXPECT_EQ(bpe_unencodable_bytes(*tokenizer_).size(), 21u);
  for (const json& c : fixture_.at("edge_cases")) {
    const std::string text = c.at("text").get<std::string>();
    const Ids expected = ids_of(c.at("ids"));
    const Ids ids = tokenizer_->encode(text, false);
    EXPECT_EQ(ids, expected) << "text: '" << text << "'";
    EXPECT_EQ(tokenizer_->decode(ids), decoded_text(text)) << "text: '" << text << "'";
  }
  EXPECT_EQ(tokenizer_->encode("hi", true).front(), 1);
}

TEST_F(SmolLM2Tokenizer, DataSlicesMatchReference) {
  if (!fs::exists(shared())) GTEST_SKIP() << "no shared data at " << shared() << ": data slices not checked";
  int checked = 0;
  for (const json& s : fixture_.at("slices")) {
    const fs::path file = shared() / s.at("file").get<std::string>();
    if (!fs::exists(file)) GTEST_SKIP() << "no " << file;
    const std::string all = read_file(file);
    const size_t offset = s.at("offset").get<size_t>(), length = s.at("length").get<size_t>();
    ASSERT_LE(offset + length, all.size()) << file;
    const std::string text = all.substr(offset, length);
    const Ids ids = tokenizer_->encode(text, false);
    EXPECT_EQ(ids, ids_of(s.at("ids"))) << s.at("name");
    EXPECT_TRUE(tokenizer_->decode(ids) == decoded_text(text)) << "decode differs: " << s.at("name");
    ++checked;
  }
  for (const json& d : fixture_.at("c4_docs")) {
    const fs::path file = shared() / d.at("file").get<std::string>();
    if (!fs::exists(file)) GTEST_SKIP() << "no " << file;
    std::ifstream in(file, std::ios::binary);
    std::string line;
    for (size_t i = 0, want = d.at("line").get<size_t>(); i <= want; ++i) ASSERT_TRUE(std::getline(in, line)) << file;
    const std::string text = json::parse(line).at("text").get<std::string>();
    const Ids ids = tokenizer_->encode(text, false);
    EXPECT_EQ(ids, ids_of(d.at("ids"))) << file << " line " << d.at("line");
    EXPECT_TRUE(tokenizer_->decode(ids) == decoded_text(text)) << "decode differs: line " << d.at("line");
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

TEST_F(SmolLM2Tokenizer, WholeFilesMatchReference) {
  if (!fs::exists(shared())) GTEST_SKIP() << "no shared data at " << shared() << ": whole files not checked";
  for (const json& w : fixture_.at("whole")) {
    const fs::path file = shared() / w.at("file").get<std::string>();
    if (!fs::exists(file)) GTEST_SKIP() << "no " << file;
    std::string text;
    if (w.contains("docs")) {  // the first `docs` JSONL documents' text joined
      std::ifstream in(file, std::ios::binary);
      std::string line;
      const size_t docs = w.at("docs").get<size_t>();
      for (size_t i = 0; i < docs; ++i) {
        ASSERT_TRUE(std::getline(in, line)) << file;
        if (i) text += w.at("joiner").get<std::string>();
        text += json::parse(line).at("text").get<std::string>();
      }
    } else {
      text = read_file(file);
    }
    // A fresh tokenizer, so that the timing includes filling the piece cache.
    const auto fresh = make_bpe_tokenizer(smollm2_vocab(), model_path());
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = fresh->encode(text, false);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "[ speed    ] " << w.at("name").get<std::string>() << ": " << text.size() << " bytes -> "
              << ids.size() << " tokens in " << seconds << " s (" << text.size() / seconds / 1e6 << " MB/s)\n";
    EXPECT_EQ(static_cast<int64_t>(ids.size()), w.at("count").get<int64_t>()) << w.at("name");
    EXPECT_EQ(sha256_of_ids(ids), w.at("sha256").get<std::string>()) << w.at("name");
    EXPECT_TRUE(fresh->decode(ids) == decoded_text(text)) << "decode differs: " << w.at("name");
  }
}

}  // namespace
}  // namespace sqlab
