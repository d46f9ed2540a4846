#include "model/perplexity.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/system.h"

namespace sqlab {

std::vector<PerplexityWindow> perplexity_windows(int64_t n_tokens, int64_t seq_len, int64_t stride) {
  if (seq_len < 2) throw Error(fmt::format("perplexity: seq_len {} must be at least 2", seq_len));
  if (stride < 1 || stride > seq_len)
    throw Error(fmt::format("perplexity: stride {} must be in [1, seq_len = {}]", stride, seq_len));
  std::vector<PerplexityWindow> windows;
  int64_t scored_until = 0;  // targets < scored_until are done (absolute positions)
  for (int64_t begin = 0; begin + seq_len <= n_tokens; begin += stride) {
    PerplexityWindow w;
    w.begin = begin;
    w.first_scored = std::max<int64_t>(1, scored_until - begin);
    windows.push_back(w);
    scored_until = begin + seq_len;
  }
  return windows;
}

std::vector<TokenBatch> perplexity_batches(const at::Tensor& tokens, int64_t seq_len, int64_t stride,
                                           int64_t batch) {
  const at::Tensor stream = tokens.reshape({-1}).to(at::kLong).cpu();
  const std::vector<PerplexityWindow> windows = perplexity_windows(stream.numel(), seq_len, stride);
  if (windows.empty())
    throw Error(fmt::format("perplexity: {} tokens do not fill one window of {}", stream.numel(), seq_len));
  batch = std::max<int64_t>(1, batch);
  const int64_t* ids = stream.data_ptr<int64_t>();
  std::vector<TokenBatch> out;
  for (size_t i = 0; i < windows.size(); i += static_cast<size_t>(batch)) {
    const size_t end = std::min(windows.size(), i + static_cast<size_t>(batch));
    std::vector<at::Tensor> rows;
    TokenBatch b;
    for (size_t j = i; j < end; ++j) {
      const PerplexityWindow& w = windows[j];
      rows.push_back(stream.narrow(0, w.begin, seq_len));
      // Position p predicts the token at p + 1; the window scores targets first_scored..seq_len-1.
      const int64_t row = static_cast<int64_t>(j - i);
      for (int64_t p = w.first_scored - 1; p < seq_len - 1; ++p) {
        b.select.push_back(row * seq_len + p);
        b.targets.push_back(ids[w.begin + p + 1]);
      }
    }
    b.tokens = at::stack(rows);
    out.push_back(std::move(b));
  }
  return out;
}

PerplexityResult perplexity_result(const std::vector<ScoredTokens>& scores, int64_t seq_len, int64_t stride,
                                   int64_t windows) {
  PerplexityResult r;
  r.seq_len = seq_len;
  r.stride = stride;
  r.windows = windows;
  for (const ScoredTokens& s : scores) {
    // Sum per batch first, then across batches: the order the whole-batch path summed in.
    double batch_sum = 0.0;
    for (double lp : s.logprob) batch_sum -= lp;
    r.nll_sum += batch_sum;
    r.tokens_scored += static_cast<int64_t>(s.logprob.size());
  }
  r.nll_mean = r.nll_sum / static_cast<double>(r.tokens_scored);
  r.ppl = std::exp(r.nll_mean);
  return r;
}

PerplexityResult perplexity(const LlamaWeights& weights, const at::Tensor& tokens, int64_t seq_len,
                            int64_t stride, ForwardHooks* hooks, int64_t batch) {
  const std::vector<TokenBatch> batches = perplexity_batches(tokens, seq_len, stride, batch);
  const int64_t windows = static_cast<int64_t>(perplexity_windows(tokens.numel(), seq_len, stride).size());
  return perplexity_result(score_batches(weights, batches, hooks), seq_len, stride, windows);
}

}  // namespace sqlab
