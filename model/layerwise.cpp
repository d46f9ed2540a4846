#include "model/layerwise.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <map>

#include "core/error.h"
#include "core/system.h"
#include "core/torch_compat.h"
#include "model/gemm.h"

namespace sqlab {

ScoredTokens score_positions(const at::Tensor& head_input, const TokenBatch& batch, const at::Tensor& output,
                             int64_t chunk) {
  at::NoGradGuard no_grad;
  const at::Tensor flat = head_input.reshape({-1, head_input.size(-1)});
  const at::Device device = flat.device();
  const int64_t n = static_cast<int64_t>(batch.select.size());
  if (static_cast<int64_t>(batch.targets.size()) != n)
    throw Error(fmt::format("score_positions: {} positions but {} targets", n, batch.targets.size()));
  const at::Tensor select = at::tensor(batch.select, at::kLong);
  const at::Tensor targets = at::tensor(batch.targets, at::kLong);
  ScoredTokens out;
  out.logprob.reserve(static_cast<size_t>(n));
  out.greedy.reserve(static_cast<size_t>(n));
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t count = std::min(chunk, n - begin);
    const at::Tensor picked =
        flat.index_select(0, select.narrow(0, begin, count).to(device)).to(output.scalar_type());
    const at::Tensor logp = at::log_softmax(gemm::linear(picked, output).to(at::kDouble), -1);
    const at::Tensor target = targets.narrow(0, begin, count).to(device).unsqueeze(1);
    const at::Tensor chosen = logp.gather(1, target).squeeze(1).cpu().contiguous();
    const at::Tensor greedy = logp.argmax(1).eq(target.squeeze(1)).cpu().contiguous();
    const double* lp = chosen.data_ptr<double>();
    const bool* g = greedy.data_ptr<bool>();
    for (int64_t i = 0; i < count; ++i) {
      out.logprob.push_back(lp[i]);
      out.greedy.push_back(g[i]);
    }
  }
  return out;
}

namespace {
const SharedPrefixes* pointer_to(const std::optional<SharedPrefixes>& shared) { return shared ? &*shared : nullptr; }
}  // namespace

std::optional<SharedPrefixes> shared_prefixes(const TokenBatch& b) {
  if (!b.has_prefixes()) return std::nullopt;
  SharedPrefixes s;
  s.borrowed = b.borrowed_prefixes;
  s.prefixes = b.prefix_tokens.size(0) + s.borrowed;
  s.prefix_width = b.prefix_tokens.size(1);
  s.rows = b.tokens.size(0);
  s.width = b.tokens.size(1);
  if (s.borrowed < 0 || static_cast<int64_t>(b.prefix_of.size()) != s.rows ||
      static_cast<int64_t>(b.prefix_length.size()) != s.prefixes ||
      (!b.prefix_key.empty() && static_cast<int64_t>(b.prefix_key.size()) != s.prefixes) ||
      (s.borrowed > 0 && b.prefix_key.empty()))
    throw Error(fmt::format("token batch: {} rows with {} prefix indices; {} prefixes ({} borrowed) with {} lengths and "
                            "{} keys",
                            s.rows, b.prefix_of.size(), s.prefixes, s.borrowed, b.prefix_length.size(),
                            b.prefix_key.size()));
  for (int64_t p : b.prefix_of)
    if (p < 0 || p >= s.prefixes) throw Error(fmt::format("token batch: prefix {} of {}", p, s.prefixes));
  for (int64_t p = 0; p < s.prefixes; ++p) {
    const int64_t n = b.prefix_length[static_cast<size_t>(p)];
    const int64_t key = b.prefix_key.empty() ? -1 : b.prefix_key[static_cast<size_t>(p)];
    if (n < 0 || (p < s.owned() && n > s.prefix_width) || (p >= s.owned() && key < 0))
      throw Error(fmt::format("token batch: prefix {} of length {} (owned width {}; {} {})", p, n, s.prefix_width,
                              p < s.owned() ? "owned, key" : "borrowed, key", key));
  }
  s.keys = b.prefix_key;
  s.prefix_of = at::tensor(b.prefix_of, at::kLong);
  s.prefix_length = at::tensor(b.prefix_length, at::kLong);
  return s;
}

std::vector<std::vector<int64_t>> last_borrowers(const std::vector<TokenBatch>& batches) {
  std::map<int64_t, size_t> kept_by, last;
  for (size_t i = 0; i < batches.size(); ++i) {
    const TokenBatch& b = batches[i];
    const int64_t all = static_cast<int64_t>(b.prefix_key.size()), owned = all - b.borrowed_prefixes;
    for (int64_t p = 0; p < all; ++p) {
      const int64_t key = b.prefix_key[static_cast<size_t>(p)];
      if (key < 0) continue;
      if (p < owned) {
        if (!kept_by.emplace(key, i).second)
          throw Error(fmt::format("token batches {} and {} both keep prefix {}", kept_by[key], i, key));
      } else {
        if (!kept_by.count(key))
          throw Error(fmt::format("token batch {}: borrows prefix {}, which no earlier batch keeps", i, key));
        last[key] = i;
      }
    }
  }
  std::vector<std::vector<int64_t>> out(batches.size());
  for (const auto& [key, i] : last) out[i].push_back(key);
  return out;
}

void append_batches(std::vector<TokenBatch>& to, const std::vector<TokenBatch>& from) {
  int64_t next = 0;
  for (const TokenBatch& b : to)
    for (int64_t key : b.prefix_key) next = std::max(next, key + 1);
  for (TokenBatch b : from) {
    for (int64_t& key : b.prefix_key)
      if (key >= 0) key += next;
    to.push_back(std::move(b));
  }
}

at::Tensor embed_batch(const LlamaConfig& config, const at::Tensor& embedding, const TokenBatch& b,
                       const std::string& origin) {
  if (!b.has_prefixes()) return llama_embed(config, embedding, b.tokens, origin);
  int64_t longest = b.prefix_tokens.size(1);
  for (int64_t n : b.prefix_length) longest = std::max(longest, n);
  check_positions(config, longest + b.tokens.size(1), origin);
  const at::Tensor rows = llama_embed(config, embedding, b.tokens, origin).reshape({-1, config.dim});
  if (b.prefix_tokens.numel() == 0) return rows;  // every prefix borrowed
  return at::cat({llama_embed(config, embedding, b.prefix_tokens, origin).reshape({-1, config.dim}), rows}, 0);
}

void HiddenStream::spill_beyond(int64_t bytes, const std::string& dir) {
  budget_ = std::max<int64_t>(0, bytes);
  scratch_dir_ = dir;
}

// The scratch file: created and unlinked at once (it lives while the descriptor is open).
// A batch's slot is fixed the first time it spills: its shape does not change across layers.
void HiddenStream::store(size_t i, const at::Tensor& h_in) {
  const int64_t bytes = h_in.numel() * static_cast<int64_t>(h_in.element_size());
  if (offsets_[i] < 0 && (budget_ < 0 || in_memory_ + bytes <= budget_ || hidden_[i].defined())) {
    if (!hidden_[i].defined()) in_memory_ += bytes;
    hidden_[i] = h_in;
    return;
  }
  // Only a spilled batch comes to the CPU (model.device: cuda keeps the others on the GPU).
  const at::Tensor h = h_in.to(at::kCPU).contiguous();
  if (!scratch_fd_) {
    std::string pattern = (scratch_dir_.empty() ? std::string("/tmp") : scratch_dir_) + "/sqlab_hidden_XXXXXX";
    const int fd = ::mkstemp(pattern.data());
    if (fd < 0) throw Error(fmt::format("hidden states: cannot create a scratch file in '{}'", scratch_dir_));
    ::unlink(pattern.c_str());
    scratch_fd_ = std::shared_ptr<int>(new int(fd), [](int* f) {
      ::close(*f);
      delete f;
    });
  }
  if (offsets_[i] < 0) {
    offsets_[i] = spilled_bytes_;
    spilled_bytes_ += bytes;
    shapes_[i] = h.sizes().vec();
  }
  const char* data = static_cast<const char*>(h.data_ptr());
  for (int64_t done = 0; done < bytes;) {
    const ssize_t n = ::pwrite(*scratch_fd_, data + done, static_cast<size_t>(bytes - done), offsets_[i] + done);
    if (n <= 0) throw Error(fmt::format("hidden states: writing the scratch file in '{}' failed (disk full?)", scratch_dir_));
    done += n;
  }
  hidden_[i] = at::Tensor();
}

at::Tensor HiddenStream::hidden(size_t i) const {
  if (offsets_.at(i) < 0) return hidden_.at(i);
  at::Tensor h = at::empty(shapes_[i], dtype_);
  const int64_t bytes = h.numel() * static_cast<int64_t>(h.element_size());
  char* data = static_cast<char*>(h.data_ptr());
  for (int64_t done = 0; done < bytes;) {
    const ssize_t n = ::pread(*scratch_fd_, data + done, static_cast<size_t>(bytes - done), offsets_[i] + done);
    if (n <= 0) throw Error("hidden states: reading the scratch file failed");
    done += n;
  }
  return h;
}

void HiddenStream::embed(const LlamaConfig& config, const at::Tensor& embedding, const std::string& origin) {
  at::NoGradGuard no_grad;
  hidden_.assign(batches_.size(), at::Tensor());
  offsets_.assign(batches_.size(), -1);
  shapes_.assign(batches_.size(), {});
  in_memory_ = spilled_bytes_ = 0;
  scratch_fd_.reset();
  shared_.clear();
  drop_after_ = last_borrowers(batches_);
  for (size_t i = 0; i < batches_.size(); ++i) {
    shared_.push_back(shared_prefixes(batches_[i]));
    store(i, embed_batch(config, embedding, batches_[i], origin).to(dtype_));
  }
}

void HiddenStream::advance(const LlamaConfig& config, const LlamaLayer& layer_in, int64_t index, ForwardHooks* hooks) {
  at::NoGradGuard no_grad;
  if (batches_.empty()) return;
  const LlamaLayer layer = layer_in_dtype(layer_in, dtype_);
  for (size_t i = 0; i < batches_.size(); ++i) {
    throw_if_interrupted();
    const at::Device device = layer.wq.device();
    if (shared_.at(i)) shared_[i]->kept = &kept_;
    store(i, llama_layer(config, layer, index, hidden(i).to(device), hooks, pointer_to(shared_.at(i))));
    for (int64_t key : drop_after_.at(i)) kept_.drop(key);
  }
}

LlamaLayer layer_in_dtype(const LlamaLayer& layer, at::ScalarType dtype) {
  LlamaLayer out = layer;
  for (at::Tensor* t : out.tensors())
    if (t->defined() && t->scalar_type() != dtype) *t = t->to(dtype);
  return out;
}

at::ScalarType compute_dtype_named(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  throw Error(fmt::format("unknown compute dtype '{}' (float32 or bfloat16)", name));
}

const char* compute_dtype_name(at::ScalarType dtype) { return dtype == at::kBFloat16 ? "bfloat16" : "float32"; }

at::Tensor HiddenStream::head_input(size_t i, const LlamaConfig& config, const at::Tensor& final_norm,
                                    ForwardHooks* hooks) const {
  at::NoGradGuard no_grad;
  return llama_head_input(config, final_norm.to(dtype_), hidden(i).to(final_norm.device()), hooks);
}

std::vector<ScoredTokens> HiddenStream::score(const LlamaConfig& config, const at::Tensor& final_norm,
                                              const at::Tensor& output, ForwardHooks* hooks) {
  at::NoGradGuard no_grad;
  std::vector<ScoredTokens> out;
  for (size_t i = 0; i < batches_.size(); ++i) {
    out.push_back(score_positions(head_input(i, config, final_norm, hooks), batches_[i], output));
    hidden_[i] = at::Tensor();  // done with it
  }
  return out;
}

std::vector<ScoredTokens> score_batches(const LlamaWeights& weights, const std::vector<TokenBatch>& batches,
                                        ForwardHooks* hooks) {
  at::NoGradGuard no_grad;
  std::vector<ScoredTokens> out;
  const LlamaConfig& c = weights.config;
  // Prefixes that later batches borrow are kept at every layer until their last borrower.
  const std::vector<std::vector<int64_t>> drop_after = last_borrowers(batches);
  PrefixKeyValues kept;
  for (size_t i = 0; i < batches.size(); ++i) {
    throw_if_interrupted();
    const TokenBatch& b = batches[i];
    std::optional<SharedPrefixes> shared = shared_prefixes(b);
    if (shared) shared->kept = &kept;
    at::Tensor x = embed_batch(c, weights.embedding, b, weights.origin);
    for (int64_t l = 0; l < c.n_layers; ++l)
      x = llama_layer(c, weights.layers.at(l), l, x, hooks, pointer_to(shared));
    for (int64_t key : drop_after[i]) kept.drop(key);
    out.push_back(score_positions(llama_head_input(c, weights.final_norm, x, hooks), b, weights.output));
  }
  return out;
}

}  // namespace sqlab
