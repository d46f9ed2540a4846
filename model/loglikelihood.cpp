#include "model/loglikelihood.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
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
  std::vector<int64_t> input;         // what the model reads
  std::vector<int64_t> continuation;  // the targets of the input's last continuation.size() positions
  // A shared prefix ends before the first scored position: those stay in the row's own part.
  int64_t prefix_limit() const { return static_cast<int64_t>(input.size() - continuation.size()); }
};

int64_t common_prefix(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  return static_cast<int64_t>(ia - a.begin());
}

// Rows whose inputs begin with the same `shared` tokens (a question's choices after its
// context, a subject's questions after its few-shot examples).
struct Group {
  std::vector<size_t> rows;
  int64_t shared = 0;
  int64_t distinct = 1;  // distinct inputs: equal ones are one row of the forward pass
};

// In lexicographic order rows that begin alike are neighbours. A group of n distinct rows
// sharing s tokens reads sum(length) - (n - 1) s tokens, so a row joins the group before it
// when that reads fewer: when the shared part it leaves, s', has n s' > (n - 1) s. An input
// equal to the previous one joins for free (the choices " A" .. " D" of MMLU read the same
// input and differ only in the token scored at its end). One look ahead: a row that would
// cut the group's shared part and begins like its successor much more (more than twice
// s') starts a group of its own: the first question of the next MMLU subject does not join
// the previous subject's last one on their common header and leave its subject's few-shot
// examples unshared.
std::vector<Group> group_rows(const std::vector<Row>& rows) {
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a].input < rows[b].input; });
  std::vector<Group> groups;
  for (size_t k = 0; k < order.size(); ++k) {
    const Row& row = rows[order[k]];
    if (!groups.empty()) {
      Group& g = groups.back();
      const Row& previous = rows[g.rows.back()];
      const bool same = row.input == previous.input;
      const int64_t shared = std::min({g.shared, common_prefix(previous.input, row.input), row.prefix_limit()});
      const int64_t ahead = k + 1 < order.size() ? common_prefix(row.input, rows[order[k + 1]].input) : 0;
      const bool cuts = shared < g.shared && ahead > 2 * shared;
      if (same || (shared > 0 && !cuts && g.distinct * shared > (g.distinct - 1) * g.shared)) {
        g.shared = shared;
        g.rows.push_back(order[k]);
        g.distinct += same ? 0 : 1;
        continue;
      }
    }
    groups.push_back({{order[k]}, row.prefix_limit(), 1});
  }
  return groups;
}

// A group's rows, longest remainder first (equal inputs stay neighbours), cut into pieces of
// at most `batch` distinct rows.
struct Piece {
  std::vector<size_t> rows;
  int64_t shared = 0, width = 0, distinct = 0;  // width: the longest remainder
  size_t group = 0;
};

std::vector<Piece> pieces_of(const std::vector<Row>& rows, Group group, size_t index, int64_t batch) {
  std::stable_sort(group.rows.begin(), group.rows.end(), [&](size_t a, size_t b) {
    if (rows[a].input.size() != rows[b].input.size()) return rows[a].input.size() > rows[b].input.size();
    return rows[a].input < rows[b].input;
  });
  std::vector<Piece> out;
  for (size_t k = 0; k < group.rows.size(); ++k) {
    const Row& row = rows[group.rows[k]];
    const bool same = k > 0 && row.input == rows[group.rows[k - 1]].input;
    if (!same && (out.empty() || out.back().distinct == batch)) {
      out.push_back({{}, group.shared, static_cast<int64_t>(row.input.size()) - group.shared, 0, index});
    }
    out.back().rows.push_back(group.rows[k]);
    out.back().distinct += same ? 0 : 1;
  }
  return out;
}

// With reuse, a group whose pieces fall in several passes has its prefix computed by the
// first of them (kept under the group's index as its key) and borrowed by the others;
// otherwise every pass has its own copy. Returns group -> that first pass, kept groups only.
std::map<size_t, size_t> kept_prefixes(const std::vector<std::vector<Piece>>& passes, bool reuse) {
  std::map<size_t, size_t> first, kept;
  for (size_t i = 0; i < passes.size() && reuse; ++i)
    for (const Piece& piece : passes[i]) {
      if (piece.shared == 0) continue;
      const auto [it, fresh] = first.emplace(piece.group, i);
      if (!fresh && it->second != i) kept.emplace(piece.group, it->second);
    }
  return kept;
}

// One forward pass's worth of pieces as a TokenBatch with shared prefixes (or plain rows
// where no piece shares anything), and who owns its selected positions. Its prefixes: the
// ones it computes (one per group; a piece without one has an empty prefix), then the ones
// an earlier pass kept.
void add_batch(const std::vector<Row>& rows, const std::vector<Piece>& pieces, size_t pass,
               const std::map<size_t, size_t>& kept, LoglikelihoodBatches& out) {
  int64_t width = 0, distinct = 0, longest = 0;
  for (const Piece& p : pieces) {
    width = std::max(width, p.width);
    distinct += p.distinct;
    longest = std::max(longest, p.shared);
  }
  const bool prefixed = longest > 0;
  // Prefix slots, one per group: owned first, then borrowed (kept by an earlier pass).
  std::vector<const Piece*> owned, lent;
  std::set<size_t> seen;
  for (const Piece& p : pieces) {
    if (!seen.insert(p.group).second) continue;
    const auto it = kept.find(p.group);
    (it != kept.end() && it->second < pass ? lent : owned).push_back(&p);
  }
  std::map<size_t, int64_t> slot_of;
  int64_t prefix_width = 0;
  for (const Piece* p : owned) {
    prefix_width = std::max(prefix_width, p->shared);
    slot_of.emplace(p->group, static_cast<int64_t>(slot_of.size()));
  }
  for (const Piece* p : lent) slot_of.emplace(p->group, static_cast<int64_t>(slot_of.size()));

  TokenBatch batch;
  batch.tokens = at::zeros({distinct, width}, at::kLong);
  if (prefixed) {
    batch.prefix_tokens = at::zeros({static_cast<int64_t>(owned.size()), prefix_width}, at::kLong);
    batch.borrowed_prefixes = static_cast<int64_t>(lent.size());
    const bool keyed = !kept.empty();
    for (size_t k = 0; k < owned.size(); ++k) {
      const Piece& piece = *owned[k];
      const std::vector<int64_t>& first = rows[piece.rows.front()].input;
      if (piece.shared > 0)
        batch.prefix_tokens[static_cast<int64_t>(k)].narrow(0, 0, piece.shared)
            .copy_(at::tensor(std::vector<int64_t>(first.begin(), first.begin() + piece.shared), at::kLong));
      batch.prefix_length.push_back(piece.shared);
      if (keyed) batch.prefix_key.push_back(kept.count(piece.group) ? static_cast<int64_t>(piece.group) : -1);
    }
    for (const Piece* piece : lent) {
      batch.prefix_length.push_back(piece->shared);
      batch.prefix_key.push_back(static_cast<int64_t>(piece->group));
    }
  }
  const int64_t offset = prefixed ? static_cast<int64_t>(owned.size()) * prefix_width : 0;
  std::vector<std::pair<size_t, size_t>> owners;  // (request, continuation tokens) in selection order
  int64_t b = -1;
  for (const Piece& piece : pieces) {
    for (size_t k = 0; k < piece.rows.size(); ++k) {
      const Row& row = rows[piece.rows[k]];
      const int64_t n = static_cast<int64_t>(row.input.size()) - piece.shared;  // the row's own tokens
      if (k == 0 || row.input != rows[piece.rows[k - 1]].input) {
        batch.tokens[++b].narrow(0, 0, n).copy_(
            at::tensor(std::vector<int64_t>(row.input.begin() + piece.shared, row.input.end()), at::kLong));
        if (prefixed) batch.prefix_of.push_back(slot_of.at(piece.group));
      }
      const int64_t c = static_cast<int64_t>(row.continuation.size());
      for (int64_t j = 0; j < c; ++j) {
        batch.select.push_back(offset + b * width + n - c + j);
        batch.targets.push_back(row.continuation[static_cast<size_t>(j)]);
      }
      owners.emplace_back(row.request, row.continuation.size());
    }
  }
  out.batches.push_back(std::move(batch));
  out.owners.push_back(std::move(owners));
}

}  // namespace

LoglikelihoodBatches loglikelihood_batches(const Tokenizer& tokenizer, const std::vector<LoglikelihoodRequest>& requests,
                                           const LoglikelihoodOptions& options, int64_t model_context) {
  const int64_t max_length = options.max_length > 0 ? options.max_length : model_context;
  LoglikelihoodBatches out;
  out.requests = requests.size();
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
    out.row_tokens += static_cast<int64_t>(input.size());
    rows.push_back({i, std::move(input), std::move(cont)});
  }
  // Rows that begin alike read their common beginning once (SharedPrefixes: the same
  // attention, position by position, as each row alone); pieces of about one width go
  // together, widest first (lm-eval's order too), so that a pass pads little.
  std::vector<Piece> pieces;
  const std::vector<Group> groups = group_rows(rows);
  for (size_t g = 0; g < groups.size(); ++g)
    for (Piece& p : pieces_of(rows, groups[g], g, options.batch)) pieces.push_back(std::move(p));
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    return a.width != b.width ? a.width > b.width : a.shared > b.shared;
  });

  std::vector<std::vector<Piece>> passes;
  for (size_t start = 0; start < pieces.size();) {
    int64_t distinct = 0, prefix_width = 0;
    const int64_t width = pieces[start].width;
    size_t end = start;
    for (; end < pieces.size(); ++end) {
      const int64_t d = distinct + pieces[end].distinct, pw = std::max(prefix_width, pieces[end].shared);
      const int64_t tokens = static_cast<int64_t>(end - start + 1) * pw + d * width;
      if (end > start && (d > options.batch || tokens > options.batch_tokens)) break;
      distinct = d;
      prefix_width = pw;
    }
    passes.emplace_back(pieces.begin() + static_cast<int64_t>(start), pieces.begin() + static_cast<int64_t>(end));
    start = end;
  }
  const std::map<size_t, size_t> kept = kept_prefixes(passes, options.reuse_prefixes);
  for (size_t i = 0; i < passes.size(); ++i) add_batch(rows, passes[i], i, kept, out);
  return out;
}

int64_t LoglikelihoodBatches::tokens() const {
  int64_t n = 0;
  for (const TokenBatch& b : batches) n += b.token_count();
  return n;
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
