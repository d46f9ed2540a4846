// The merge loop both of sqlab's subword tokenizers share: repeatedly merge the best
// adjacent pair of token ids until no pair merges, the leftmost pair on ties. A heap of
// the current pairs over a linked list, with stale entries skipped when popped, picks the
// same pair as a full scan per merge in O(log n) instead of O(n).
//   llama2.c (run.c): the pair whose concatenation is the token of the highest score;
//   byte-level BPE:   the pair of the lowest merge rank (HF tokenizers' order).
#pragma once

#include <cstdint>
#include <queue>
#include <vector>

namespace sqlab {

// `best(a, b, &priority, &merged)` says whether ids a, b merge, into which id, and with
// what priority: the lowest priority merges first.
template <class Best>
std::vector<int32_t> merge_adjacent_pairs(std::vector<int32_t> ids, const Best& best) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < 2) return ids;
  std::vector<int64_t> next(n), prev(n);
  for (int64_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  struct Candidate {
    double priority;
    int64_t left;  // position of the left token in the initial sequence (= order)
    int32_t left_id, right_id, merged;
  };
  struct Worse {  // the heap's top: the lowest priority, then the leftmost pair
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.priority != b.priority ? a.priority > b.priority : a.left > b.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, Worse> heap;
  const auto consider = [&](int64_t i) {
    if (i < 0 || next[i] < 0) return;
    double priority = 0;
    int32_t merged = -1;
    if (best(ids[i], ids[next[i]], &priority, &merged)) heap.push({priority, i, ids[i], ids[next[i]], merged});
  };
  for (int64_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int64_t i = c.left, j = next[i];
    if (ids[i] != c.left_id || j < 0 || ids[j] != c.right_id) continue;  // stale
    ids[i] = c.merged;
    ids[j] = -1;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    consider(prev[i]);
    consider(i);
  }
  std::vector<int32_t> out;
  out.reserve(n);
  for (int64_t i = 0; i >= 0; i = next[i]) out.push_back(ids[i]);
  return out;
}

}  // namespace sqlab
