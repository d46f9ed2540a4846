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

PerplexityResult perplexity(const LlamaWeights& weights, const at::Tensor& tokens, int64_t seq_len,
                            int64_t stride, ForwardHooks* hooks, int64_t batch) {
  at::NoGradGuard no_grad;
  const at::Tensor stream = tokens.reshape({-1}).to(at::kLong);
  const std::vector<PerplexityWindow> windows = perplexity_windows(stream.numel(), seq_len, stride);
  if (windows.empty())
    throw Error(fmt::format("perplexity: {} tokens do not fill one window of {}", stream.numel(), seq_len));
  PerplexityResult r;
  r.seq_len = seq_len;
  r.stride = stride;
  r.windows = static_cast<int64_t>(windows.size());
  batch = std::max<int64_t>(1, batch);
  for (size_t i = 0; i < windows.size(); i += batch) {
    throw_if_interrupted();
    const size_t end = std::min(windows.size(), i + static_cast<size_t>(batch));
    std::vector<at::Tensor> rows;
    for (size_t j = i; j < end; ++j) rows.push_back(stream.narrow(0, windows[j].begin, seq_len));
    const at::Tensor input = at::stack(rows);                                     // B x T
    const at::Tensor logits = llama_forward(weights, input, hooks).to(at::kDouble);  // B x T x V
    // nll[b, t] = -log p(token t+1 | tokens <= t)
    const at::Tensor logp = at::log_softmax(logits.narrow(1, 0, seq_len - 1), -1);
    const at::Tensor targets = input.narrow(1, 1, seq_len - 1).to(logp.device()).unsqueeze(-1);
    const at::Tensor nll = -logp.gather(-1, targets).squeeze(-1).cpu();  // B x (T-1)
    for (size_t j = i; j < end; ++j) {
      // Target at window position p is nll[:, p - 1].
      const int64_t first = windows[j].first_scored;
      r.nll_sum += nll[j - i].narrow(0, first - 1, seq_len - first).sum().item<double>();
      r.tokens_scored += seq_len - first;
    }
  }
  r.nll_mean = r.nll_sum / static_cast<double>(r.tokens_scored);
  r.ppl = std::exp(r.nll_mean);
  return r;
}

}  // namespace sqlab
