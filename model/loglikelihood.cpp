#include "model/loglikelihood.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/system.h"

namespace sqlab {

std::pair<std::vector<int64_t>, std::vector<int64_t>> encode_request(const Tokenizer& tokenizer,
                                                                     const LoglikelihoodRequest& request, bool bos) {
  std::string context = request.context, continuation = request.continuation;
  if (context.empty()) {
    std::vector<int64_t> cont = tokenizer.encode(continuation, false);
    const int64_t prefix = tokenizer.bos_id() >= 0 ? tokenizer.bos_id() : tokenizer.eos_id();
    if (!cont.empty() && cont.front() == prefix) return {{cont.front()}, {cont.begin() + 1, cont.end()}};
    return {{prefix}, cont};
  }
  const size_t kept = context.find_last_not_of(" \t\n\r\f\v");
  const size_t cut = kept == std::string::npos ? 0 : kept + 1;
  continuation = context.substr(cut) + continuation;  // trailing whitespace moves over
  context.resize(cut);
  const std::vector<int64_t> whole = tokenizer.encode(context + continuation, bos);
  const std::vector<int64_t> ctx = tokenizer.encode(context, bos);
  if (ctx.size() > whole.size()) return {ctx, {}};
  return {ctx, std::vector<int64_t>(whole.begin() + static_cast<int64_t>(ctx.size()), whole.end())};
}

namespace {

struct Row {
  size_t request;
  std::vector<int64_t> input;  // what the model reads
  std::vector<int64_t> continuation;
};

}  // namespace

std::vector<LoglikelihoodResult> score_loglikelihoods(const LlamaWeights& weights, ForwardHooks* hooks,
                                                      const Tokenizer& tokenizer,
                                                      const std::vector<LoglikelihoodRequest>& requests,
                                                      const LoglikelihoodOptions& options) {
  at::NoGradGuard no_grad;
  const int64_t max_length = options.max_length > 0 ? options.max_length : weights.config.max_seq_len;
  std::vector<Row> rows;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto [ctx, cont] = encode_request(tokenizer, requests[i], options.bos);
    if (cont.empty())
      throw Error(fmt::format("request {}: the continuation \"{}\" has no tokens of its own", i, requests[i].continuation));
    std::vector<int64_t> all = ctx;
    all.insert(all.end(), cont.begin(), cont.end());
    const size_t keep = std::min<size_t>(all.size(), static_cast<size_t>(max_length) + 1);
    std::vector<int64_t> input(all.end() - static_cast<int64_t>(keep), all.end() - 1);
    if (cont.size() > input.size()) cont.erase(cont.begin(), cont.end() - static_cast<int64_t>(input.size()));
    rows.push_back({i, std::move(input), std::move(cont)});
  }
  // Longest first (lm-eval's order too), so a batch pads little; equal inputs next to each
  // other, so that they share one row of the forward pass: the choices of a question whose
  // continuations are one token each (MMLU's " A".." D", BoolQ's " no"/" yes") read the same
  // input and differ only in the token scored at its last position.
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (rows[a].input.size() != rows[b].input.size()) return rows[a].input.size() > rows[b].input.size();
    return rows[a].input < rows[b].input;
  });

  std::vector<LoglikelihoodResult> results(requests.size());
  const at::Device device = weights.embedding.device();
  for (size_t start = 0; start < order.size();) {
    throw_if_interrupted();
    const int64_t width = static_cast<int64_t>(rows[order[start]].input.size());
    const auto same_input = [&](size_t r) { return r > start && rows[order[r]].input == rows[order[r - 1]].input; };
    size_t end = start;
    int64_t distinct = 0;  // rows of the forward pass
    for (; end < order.size(); ++end) {
      if (same_input(end)) continue;
      if (distinct == options.batch || (distinct + 1) * width > std::max(options.batch_tokens, width)) break;
      ++distinct;
    }
    at::Tensor tokens = at::zeros({distinct, width}, at::kLong);
    std::vector<int64_t> select;  // flat positions whose next token is a continuation token
    std::vector<int64_t> targets;
    int64_t b = -1;
    for (size_t r = start; r < end; ++r) {
      const Row& row = rows[order[r]];
      const int64_t n = static_cast<int64_t>(row.input.size());
      if (!same_input(r)) tokens[++b].narrow(0, 0, n).copy_(at::tensor(row.input, at::kLong));
      const int64_t c = static_cast<int64_t>(row.continuation.size());
      for (int64_t j = 0; j < c; ++j) {
        select.push_back(b * width + n - c + j);
        targets.push_back(row.continuation[static_cast<size_t>(j)]);
      }
    }
    const at::Tensor hidden = llama_hidden(weights, tokens.to(device), hooks);
    const at::Tensor picked = hidden.reshape({-1, hidden.size(-1)}).index_select(0, at::tensor(select, at::kLong).to(device));
    const at::Tensor logprobs = at::log_softmax(at::linear(picked, weights.output).to(at::kDouble), -1).cpu();
    const at::Tensor target = at::tensor(targets, at::kLong);
    const at::Tensor chosen = logprobs.gather(1, target.unsqueeze(1)).squeeze(1);
    const at::Tensor greedy = logprobs.argmax(1).eq(target);
    const double* lp = chosen.data_ptr<double>();
    const bool* g = greedy.data_ptr<bool>();
    size_t k = 0;
    for (size_t r = start; r < end; ++r) {
      const Row& row = rows[order[r]];
      LoglikelihoodResult& out = results[row.request];
      out.greedy = true;
      for (size_t j = 0; j < row.continuation.size(); ++j, ++k) {
        out.loglikelihood += lp[k];
        out.greedy = out.greedy && g[k];
      }
    }
    start = end;
  }
  return results;
}

}  // namespace sqlab
