// The layer-by-layer pipeline's evaluation side (issue #18): rows of tokens whose hidden
// states go through a model one decoder layer at a time, so that a model never has to be
// whole in memory (the quantized model is built a layer at a time by
// model/quantized_model.h's LayerwiseBuilder, and each layer is dropped once every
// stream has passed it), and a head that scores chosen positions a chunk of tokens at a
// time, so that no (rows x tokens x vocab) tensor is ever whole.
//
// Perplexity (model/perplexity.h) and the zero-shot log-likelihoods (model/loglikelihood.h)
// are both "the log-probability of the next token at some positions of some rows": a
// TokenBatch says which; ScoredTokens is the answer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/llama.h"

namespace sqlab {

struct TokenBatch {
  at::Tensor tokens;             // B x T int64 (rows padded on the right where lengths differ)
  std::vector<int64_t> select;   // flat positions b * T + t whose next token is scored (+ P * Tp with prefixes)
  std::vector<int64_t> targets;  // the token expected after each selected position
  // Optional shared prefixes (llama.h SharedPrefixes): row b continues prefix
  // prefix_of[b]; the hidden states are the owned prefixes' tokens, then the rows',
  // flattened. The last `borrowed_prefixes` prefixes were computed by an earlier batch of
  // the same stream, which kept their keys and values under prefix_key (a subject's few-shot
  // examples, read once per layer for all its questions).
  at::Tensor prefix_tokens;            // (P - borrowed) x Tp int64, right-padded; undefined: rows of their own
  std::vector<int64_t> prefix_of;      // per row
  std::vector<int64_t> prefix_length;  // per prefix (owned, then borrowed)
  std::vector<int64_t> prefix_key;     // per prefix, or empty: kept for later batches under this key, -1: not kept
  int64_t borrowed_prefixes = 0;

  bool has_prefixes() const { return prefix_tokens.defined(); }
  int64_t token_count() const { return tokens.numel() + (has_prefixes() ? prefix_tokens.numel() : 0); }
};

// The SharedPrefixes of a batch with prefixes (checked: every row has one, lengths fit,
// borrowed prefixes have keys); none for a batch of rows of their own.
std::optional<SharedPrefixes> shared_prefixes(const TokenBatch& batch);

// Prefix keys that batches borrow, each with the last batch that borrows it (after which
// its keys and values are dropped); checked: an earlier batch keeps every borrowed key.
std::vector<std::vector<int64_t>> last_borrowers(const std::vector<TokenBatch>& batches);
// `from` after `to` in one stream, its prefix keys renumbered to stay apart from to's.
void append_batches(std::vector<TokenBatch>& to, const std::vector<TokenBatch>& from);

// A batch's embedded tokens: B x T x dim, or (P*Tp + B*T) x dim with shared prefixes.
at::Tensor embed_batch(const LlamaConfig& config, const at::Tensor& embedding, const TokenBatch& batch,
                       const std::string& origin);

struct ScoredTokens {
  std::vector<double> logprob;  // log p(target | tokens up to the position), float64 log-softmax
  std::vector<bool> greedy;     // target is the argmax there
};

// Positions of the head's log-softmax per chunk: 512 x vocab float64 (200 MB at 49152).
constexpr int64_t kHeadChunkTokens = 512;

// The selected positions of `head_input` (B x T x dim: llama_head_input's output) through
// the head `output` (vocab x dim), log-softmax in float64, kHeadChunkTokens at a time.
ScoredTokens score_positions(const at::Tensor& head_input, const TokenBatch& batch, const at::Tensor& output,
                             int64_t chunk = kHeadChunkTokens);

// The hidden states of a list of batches, advanced one layer at a time, in the compute
// dtype (model.compute_dtype: float32 by default, or bfloat16: each layer is cast to it as
// it arrives, norms and the attention's softmax still reduce in float32, online rotations
// and activation quantizers work in float32; the head's log-softmax stays float64): a 7B
// model's 4 windows of 2048 tokens take 134 MB in float32, 67 MB in bfloat16. Batches beyond a
// budget of bytes (`spill_beyond`) live in a scratch file (unlinked on creation, so nothing
// is left behind), read back and written again around each layer: the same numbers as in
// memory, bit for bit.
class HiddenStream {
 public:
  HiddenStream() = default;
  explicit HiddenStream(std::vector<TokenBatch> batches, at::ScalarType dtype = at::kFloat)
      : batches_(std::move(batches)), dtype_(dtype) {}
  // Keep at most `bytes` of hidden states in memory; the rest go to a scratch file in `dir`.
  void spill_beyond(int64_t bytes, const std::string& dir);
  int64_t spilled_bytes() const { return spilled_bytes_; }

  const std::vector<TokenBatch>& batches() const { return batches_; }
  bool empty() const { return batches_.empty(); }

  void embed(const LlamaConfig& config, const at::Tensor& embedding, const std::string& origin);
  void advance(const LlamaConfig& config, const LlamaLayer& layer, int64_t index, ForwardHooks* hooks = nullptr);
  // After the last layer: the final norm, the head hook, then score_positions per batch.
  std::vector<ScoredTokens> score(const LlamaConfig& config, const at::Tensor& final_norm, const at::Tensor& output,
                                  ForwardHooks* hooks = nullptr);
  // Batch i's hidden states, and its head input (the final norm, then the head hook).
  at::Tensor hidden(size_t i) const;
  at::Tensor head_input(size_t i, const LlamaConfig& config, const at::Tensor& final_norm,
                        ForwardHooks* hooks = nullptr) const;

 private:
  void store(size_t i, const at::Tensor& h);
  std::vector<TokenBatch> batches_;
  at::ScalarType dtype_ = at::kFloat;
  std::vector<at::Tensor> hidden_;       // undefined where spilled
  std::vector<int64_t> offsets_;         // scratch-file offset per batch, -1 in memory
  std::vector<std::vector<int64_t>> shapes_;
  int64_t budget_ = -1;                  // -1: everything in memory
  std::string scratch_dir_;
  std::shared_ptr<int> scratch_fd_;      // closed with the last copy of the stream
  std::vector<std::optional<SharedPrefixes>> shared_;  // per batch, built once by embed()
  std::vector<std::vector<int64_t>> drop_after_;       // per batch: prefix keys it borrows last
  PrefixKeyValues kept_;                               // this layer's kept prefix keys and values
  int64_t in_memory_ = 0, spilled_bytes_ = 0;
};

// The layer's tensors in `dtype` (the same tensors when they already are).
LlamaLayer layer_in_dtype(const LlamaLayer& layer, at::ScalarType dtype);

// "float32" | "bfloat16" -> the ScalarType; the names model.compute_dtype accepts.
at::ScalarType compute_dtype_named(const std::string& name);
const char* compute_dtype_name(at::ScalarType dtype);

// The whole model in memory, one batch at a time (every layer per batch): the same
// numbers as a HiddenStream through the same layers.
std::vector<ScoredTokens> score_batches(const LlamaWeights& weights, const std::vector<TokenBatch>& batches,
                                        ForwardHooks* hooks = nullptr);

}  // namespace sqlab
