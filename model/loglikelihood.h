// The log-likelihood of continuations given contexts under a (quantized) model, computed
// as lm-evaluation-harness's Hugging Face backend does (lm_eval/api/model.py _encode_pair,
// lm_eval/models/huggingface.py _loglikelihood_tokens): the context's trailing whitespace
// moves to the continuation; the continuation's tokens are those of tokenize(context +
// continuation) after tokenize(context)'s; an empty context becomes the BOS (else EOS)
// token; the input is (context + continuation)[-(max_length + 1):][:-1], cut from the left;
// the result is the sum of the continuation tokens' log-probabilities and whether each is
// the argmax (greedy). Rows that begin with the same tokens (a question's choices after its
// context, a subject's questions after the same few-shot examples) are read after one
// shared copy of that beginning (llama.h SharedPrefixes): every position attends to what it
// would in its own row, so the numbers are those of row-by-row scoring (to rounding), for a
// fraction of the tokens. A beginning whose rows fill several passes is computed by the
// first and its keys and values borrowed by the others (SmolLM2, whole splits, batch 16:
// HellaSwag 2.05M tokens per layer instead of 3.14M row by row, MMLU 5-shot 1.63M instead
// of 40.6M, of 2.16M with a copy per pass).
#pragma once

#include <vector>

#include "model/layerwise.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "tasks/task.h"

namespace sqlab {

struct LoglikelihoodOptions {
  int64_t max_length = 0;     // the model's window (0: its context)
  int64_t batch = 8;          // rows per forward pass (besides their prefixes; by length, padded on the right)
  int64_t batch_tokens = 16384;  // and at most this many padded tokens per pass (prefixes included)
  bool bos = false;           // tokenize with the BOS token first (what the tokenizer adds by default)
  // A prefix that rows of several passes share (a subject's few-shot examples) is computed
  // by the first of them, whose keys and values the others read (TokenBatch prefix_key);
  // false: each pass reads its own copy.
  bool reuse_prefixes = true;
};

// Token ids of one request: the context's and the continuation's (lm-eval's _encode_pair).
std::pair<std::vector<int64_t>, std::vector<int64_t>> encode_request(const Tokenizer& tokenizer,
                                                                     const LoglikelihoodRequest& request, bool bos);

// The requests as batches of rows for a HiddenStream (model/layerwise.h), and who owns
// which selected positions. model_context: the window when options.max_length is 0.
struct LoglikelihoodBatches {
  std::vector<TokenBatch> batches;
  std::vector<std::vector<std::pair<size_t, size_t>>> owners;  // per batch: (request, continuation tokens)
  size_t requests = 0;
  int64_t row_tokens = 0;  // the requests' inputs one by one, unpadded (what scoring row by row reads)
  int64_t tokens() const;  // what the batches read, padding and shared prefixes included
};
LoglikelihoodBatches loglikelihood_batches(const Tokenizer& tokenizer, const std::vector<LoglikelihoodRequest>& requests,
                                           const LoglikelihoodOptions& options, int64_t model_context);
std::vector<LoglikelihoodResult> loglikelihood_results(const LoglikelihoodBatches& batches,
                                                       const std::vector<ScoredTokens>& scores);

std::vector<LoglikelihoodResult> score_loglikelihoods(const LlamaWeights& weights, ForwardHooks* hooks,
                                                      const Tokenizer& tokenizer,
                                                      const std::vector<LoglikelihoodRequest>& requests,
                                                      const LoglikelihoodOptions& options);

}  // namespace sqlab
