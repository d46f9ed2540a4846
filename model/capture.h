// Activation capture: run token windows through a model and keep what enters each
// linear site (model/llama.h ForwardHooks), as T x n float32 matrices with the site's
// stacked weights: the Site a rotation method fits on (core/site.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/site.h"
#include "model/llama.h"

namespace sqlab {

using SiteKey = std::pair<int64_t, LinearSite>;  // (layer, site); layer -1: the head

// "layer3.attn_in", "head".
std::string site_key_name(const SiteKey& key);

// Every (layer, site) of a model in forward order (the head last when `with_head`).
std::vector<SiteKey> all_site_keys(const LlamaConfig& config, bool with_head);

// Records the inputs of the selected sites (all when `select` is empty); passes the
// activations on unchanged, or through `inner` hooks when given (so a transformed
// model's inputs can be captured after its own online rotation).
class CaptureHooks : public ForwardHooks {
 public:
  explicit CaptureHooks(std::vector<SiteKey> select = {}, ForwardHooks* inner = nullptr)
      : select_(std::move(select)), inner_(inner) {}
  at::Tensor input(int64_t layer, LinearSite site, const at::Tensor& x) override;
  // Tokens x n per site (rows of every forward call concatenated).
  std::map<SiteKey, at::Tensor> take();

 private:
  std::vector<SiteKey> select_;
  ForwardHooks* inner_;
  std::map<SiteKey, std::vector<at::Tensor>> parts_;
};

// The windows (B x seq_len) through the model, `batch` windows per forward; the
// inputs of the selected sites (all when empty).
std::map<SiteKey, at::Tensor> capture_site_inputs(const LlamaWeights& weights, const at::Tensor& windows,
                                                  const std::vector<SiteKey>& select = {},
                                                  ForwardHooks* inner = nullptr, int64_t batch = 8);

// Cuts a 1-D token stream into consecutive windows of seq_len (B x seq_len; the tail
// that does not fill a window is dropped). Throws when none fits.
at::Tensor token_windows(const at::Tensor& tokens, int64_t seq_len, const std::string& what);

}  // namespace sqlab
