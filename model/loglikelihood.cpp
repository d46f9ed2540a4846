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

LoglikelihoodBatches loglikelihood_batches(const Tokenizer& tokenizer, const std::vector<LoglikelihoodRequest>& requests,
                                           const LoglikelihoodOptions& options, int64_t model_context) {
  const int64_t max_length = options.max_length > 0 ? options.max_length : model_context;
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

  LoglikelihoodBatches out;
  out.requests = requests.size();
  for (size_t start = 0; start < order.size();) {
    const int64_t width = static_cast<int64_t>(rows[order[start]].input.size());
    const auto same_input = [&](size_t r) { return r > start && rows[order[r]].input == rows[order[r - 1]].input; };
    size_t end = start;
    int64_t distinct = 0;  // rows of the forward pass
    for (; end < order.size(); ++end) {
      if (same_input(end)) continue;
      if (distinct == options.batch || (distinct + 1) * width > std::max(options.batch_tokens, width)) break;
      ++distinct;
    }
    TokenBatch batch;
    batch.tokens = at::zeros({distinct, width}, at::kLong);
    std::vector<std::pair<size_t, size_t>> owners;  // (request, continuation tokens) in selection order
    int64_t b = -1;
    for (size_t r = start; r < end; ++r) {
      const Row& row = rows[order[r]];
      const int64_t n = static_cast<int64_t>(row.input.size());
      if (!same_input(r)) batch.tokens[++b].narrow(0, 0, n).copy_(at::tensor(row.input, at::kLong));
      const int64_t c = static_cast<int64_t>(row.continuation.size());
      for (int64_t j = 0; j < c; ++j) {
        batch.select.push_back(b * width + n - c + j);
        batch.targets.push_back(row.continuation[static_cast<size_t>(j)]);
      }
      owners.emplace_back(row.request, row.continuation.size());
    }
    out.batches.push_back(std::move(batch));
    out.owners.push_back(std::move(owners));
    start = end;
  }
  return out;
}

std::vector<LoglikelihoodResult> loglikelihood_results(const LoglikelihoodBatches& batches,
                                                       const std::vector<ScoredTokens>& scores) {
  if (scores.size() != batches.batches.size())
    throw Error(fmt::format("loglikelihood: {} batches scored of {}", scores.size(), batches.batches.size()));
  std::vector<LoglikelihoodResult> results(batches.requests);
  for (size_t i = 0; i < scores.size(); ++i) {
    size_t k = 0;
    for (const auto& [request, count] : batches.owners[i]) {
      LoglikelihoodResult& out = results[request];
      out.greedy = true;
      for (size_t j = 0; j < count; ++j, ++k) {
        out.loglikelihood += scores[i].logprob[k];
        out.greedy = out.greedy && scores[i].greedy[k];
      }
    }
  }
  return results;
}

std::vector<LoglikelihoodResult> score_loglikelihoods(const LlamaWeights& weights, ForwardHooks* hooks,
                                                      const Tokenizer& tokenizer,
                                                      const std::vector<LoglikelihoodRequest>& requests,
                                                      const LoglikelihoodOptions& options) {
  const LoglikelihoodBatches batches = loglikelihood_batches(tokenizer, requests, options, weights.config.max_seq_len);
  return loglikelihood_results(batches, score_batches(weights, batches.batches, hooks));
}

}  // namespace sqlab
