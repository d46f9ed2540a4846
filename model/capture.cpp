#include "model/capture.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "core/system.h"
#include "core/torch_compat.h"

namespace sqlab {

std::string site_key_name(const SiteKey& key) {
  if (key.second == LinearSite::head) return "head";
  return fmt::format("layer{}.{}", key.first, linear_site_name(key.second));
}

std::vector<SiteKey> all_site_keys(const LlamaConfig& config, bool with_head) {
  std::vector<SiteKey> keys;
  for (int64_t l = 0; l < config.n_layers; ++l)
    for (LinearSite s : {LinearSite::attn_in, LinearSite::attn_out, LinearSite::mlp_in, LinearSite::mlp_out})
      keys.emplace_back(l, s);
  if (with_head) keys.emplace_back(-1, LinearSite::head);
  return keys;
}

at::Tensor CaptureHooks::input(int64_t layer, LinearSite site, const at::Tensor& x_in) {
  at::Tensor x = inner_ ? inner_->input(layer, site, x_in) : x_in;
  const SiteKey key{layer, site};
  if (select_.empty() || std::find(select_.begin(), select_.end(), key) != select_.end())
    parts_[key].push_back(x.detach().reshape({-1, x.size(-1)}).to(at::kFloat).cpu());
  return x;
}

std::map<SiteKey, at::Tensor> CaptureHooks::take() {
  std::map<SiteKey, at::Tensor> out;
  for (auto& [key, parts] : parts_) out[key] = at::cat(parts, 0).contiguous();
  parts_.clear();
  return out;
}

std::map<SiteKey, at::Tensor> capture_site_inputs(const LlamaWeights& weights, const at::Tensor& windows,
                                                  const std::vector<SiteKey>& select, ForwardHooks* inner,
                                                  int64_t batch) {
  at::NoGradGuard no_grad;
  CaptureHooks hooks(select, inner);
  batch = std::max<int64_t>(1, batch);
  for (int64_t i = 0; i < windows.size(0); i += batch) {
    throw_if_interrupted();
    llama_forward(weights, windows.narrow(0, i, std::min(batch, windows.size(0) - i)), &hooks);
  }
  return hooks.take();
}

at::Tensor token_windows(const at::Tensor& tokens, int64_t seq_len, const std::string& what) {
  const at::Tensor flat = tokens.reshape({-1}).to(at::kLong);
  if (seq_len < 1) throw Error(fmt::format("{}: seq_len {} must be positive", what, seq_len));
  const int64_t count = flat.numel() / seq_len;
  if (count < 1)
    throw Error(fmt::format("{}: {} tokens do not fill one window of {}", what, flat.numel(), seq_len));
  return flat.narrow(0, 0, count * seq_len).reshape({count, seq_len});
}

}  // namespace sqlab
