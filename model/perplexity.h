// Perplexity of a causal language model over a token stream, with the protocol that
// GPTQ, QuaRot and SpinQuant use for WikiText-2 (the test split joined with "\n\n",
// tokenized once, cut into non-overlapping windows of the model's context) as the
// default, and a sliding window (stride < seq_len) as an option.
//
// Windows: window k covers tokens [k*stride, k*stride + seq_len); only full windows
// are evaluated (the tail after the last full window is not scored). Within a window,
// position t predicts token t+1; a target is scored once, in the first window that
// holds it with context: the first window scores its targets 1..seq_len-1, a later
// window only the targets that the previous window did not reach (with stride =
// seq_len: again all but its first token). ppl = exp(sum of NLL / scored targets).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/layerwise.h"
#include "model/llama.h"

namespace sqlab {

struct PerplexityWindow {
  int64_t begin = 0;         // first token of the window
  int64_t first_scored = 0;  // first scored target, as a position inside the window (>= 1)
};

// The windows over `n_tokens` tokens (empty when n_tokens < seq_len). stride in
// [1, seq_len]. Throws sqlab::Error for bad numbers.
std::vector<PerplexityWindow> perplexity_windows(int64_t n_tokens, int64_t seq_len, int64_t stride);

struct PerplexityResult {
  double ppl = 0.0;
  double nll_sum = 0.0;      // natural log
  double nll_mean = 0.0;     // per scored token
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  int64_t seq_len = 0;
  int64_t stride = 0;
};

// The windows as batches of `batch` rows for a HiddenStream (model/layerwise.h): every
// scored target of a window is a selected position. Throws when no full window fits.
std::vector<TokenBatch> perplexity_batches(const at::Tensor& tokens, int64_t seq_len, int64_t stride, int64_t batch);
// ppl from the batches' scores (windows: how many there were, for the record).
PerplexityResult perplexity_result(const std::vector<ScoredTokens>& scores, int64_t seq_len, int64_t stride,
                                   int64_t windows);

// `tokens`: 1-D int64. Windows are evaluated `batch` at a time (same result for any
// batch). Throws when no full window fits.
PerplexityResult perplexity(const LlamaWeights& weights, const at::Tensor& tokens, int64_t seq_len,
                            int64_t stride, ForwardHooks* hooks = nullptr, int64_t batch = 8);

}  // namespace sqlab
