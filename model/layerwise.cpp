#include "model/layerwise.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"
#include "core/system.h"

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
    const at::Tensor picked = flat.index_select(0, select.narrow(0, begin, count).to(device));
    const at::Tensor logp = at::log_softmax(at::linear(picked, output).to(at::kDouble), -1);
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

int64_t HiddenStream::hidden_bytes() const {
  int64_t bytes = 0;
  for (const at::Tensor& h : hidden_) bytes += h.numel() * static_cast<int64_t>(h.element_size());
  return bytes;
}

void HiddenStream::embed(const LlamaConfig& config, const at::Tensor& embedding, const std::string& origin) {
  at::NoGradGuard no_grad;
  hidden_.clear();
  for (const TokenBatch& b : batches_) hidden_.push_back(llama_embed(config, embedding, b.tokens, origin));
}

void HiddenStream::advance(const LlamaConfig& config, const LlamaLayer& layer, int64_t index, ForwardHooks* hooks) {
  at::NoGradGuard no_grad;
  for (at::Tensor& h : hidden_) {
    throw_if_interrupted();
    h = llama_layer(config, layer, index, h, hooks);
  }
}

at::Tensor HiddenStream::head_input(size_t i, const LlamaConfig& config, const at::Tensor& final_norm,
                                    ForwardHooks* hooks) const {
  at::NoGradGuard no_grad;
  return llama_head_input(config, final_norm, hidden_.at(i), hooks);
}

std::vector<ScoredTokens> HiddenStream::score(const LlamaConfig& config, const at::Tensor& final_norm,
                                              const at::Tensor& output, ForwardHooks* hooks) {
  at::NoGradGuard no_grad;
  std::vector<ScoredTokens> out;
  for (size_t i = 0; i < batches_.size(); ++i) {
    out.push_back(score_positions(llama_head_input(config, final_norm, hidden_[i], hooks), batches_[i], output));
    hidden_[i] = at::Tensor();  // done with it
  }
  return out;
}

std::vector<ScoredTokens> score_batches(const LlamaWeights& weights, const std::vector<TokenBatch>& batches,
                                        ForwardHooks* hooks) {
  at::NoGradGuard no_grad;
  std::vector<ScoredTokens> out;
  for (const TokenBatch& b : batches) {
    throw_if_interrupted();
    const at::Tensor tokens = b.tokens.to(weights.embedding.device());
    out.push_back(score_positions(llama_hidden(weights, tokens, hooks), b, weights.output));
  }
  return out;
}

}  // namespace sqlab
