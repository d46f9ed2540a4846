#include "model/fold.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"

namespace sqlab {

LlamaWeights clone_weights(const LlamaWeights& w) {
  LlamaWeights c;
  c.config = w.config;
  c.origin = w.origin;
  c.embedding = w.embedding.clone();
  c.final_norm = w.final_norm.clone();
  const bool tied = w.output.defined() && w.output.is_same(w.embedding);
  c.output = tied ? c.embedding : w.output.clone();
  for (const LlamaLayer& l : w.layers) {
    LlamaLayer n = l;
    for (at::Tensor* t : n.tensors())
      if (t->defined()) *t = t->clone();
    c.layers.push_back(std::move(n));
  }
  return c;
}

namespace {

// A tied head becomes its own tensor, so that changing it leaves the embedding alone.
void untie(LlamaWeights& w) {
  if (w.output.is_same(w.embedding)) w.output = w.embedding.clone();
  w.config.tied_embeddings = false;
}

// W diag(g): scales the input columns.
at::Tensor scale_columns(const at::Tensor& w, const at::Tensor& g) { return w * g.unsqueeze(0); }

// Q^T W_out for a writer W_out (dim x in): (W_out^T Q)^T.
at::Tensor rotate_writer(const at::Tensor& w, const Rotation& q) { return q.apply(w.t()).t().contiguous(); }

}  // namespace

void fold_layer_norm_gains(LlamaLayer& l) {
  for (at::Tensor* t : {&l.wq, &l.wk, &l.wv}) *t = scale_columns(*t, l.attn_norm);
  for (at::Tensor* t : {&l.w_gate, &l.w_up}) *t = scale_columns(*t, l.mlp_norm);
  l.attn_norm = at::ones_like(l.attn_norm);
  l.mlp_norm = at::ones_like(l.mlp_norm);
}

void fold_head_norm_gain(at::Tensor& final_norm, at::Tensor& output) {
  output = scale_columns(output, final_norm);
  final_norm = at::ones_like(final_norm);
}

void fold_norm_gains(LlamaWeights& w) {
  untie(w);
  for (LlamaLayer& l : w.layers) fold_layer_norm_gains(l);
  fold_head_norm_gain(w.final_norm, w.output);
}

bool layer_norm_gains_folded(const LlamaLayer& l) {
  const auto ones = [](const at::Tensor& g) { return at::equal(g, at::ones_like(g)); };
  return ones(l.attn_norm) && ones(l.mlp_norm);
}

bool norm_gains_folded(const LlamaWeights& w) {
  for (const LlamaLayer& l : w.layers)
    if (!layer_norm_gains_folded(l)) return false;
  return at::equal(w.final_norm, at::ones_like(w.final_norm));
}

void check_residual_rotation(const Rotation& q, int64_t dim) {
  if (!q.orthogonal())
    throw Error(fmt::format("residual rotation ({}) is not orthogonal: it would not commute with RMSNorm",
                            q.describe()));
  if (q.size() != dim) throw Error(fmt::format("residual rotation of size {} for a model of dim {}", q.size(), dim));
}

void fuse_residual_into_layer(LlamaLayer& l, const Rotation& q) {
  if (!layer_norm_gains_folded(l)) throw Error("fuse_residual_rotation: fold the RMSNorm gains first");
  for (at::Tensor* t : {&l.wq, &l.wk, &l.wv, &l.w_gate, &l.w_up}) *t = q.fuse_into(*t).contiguous();
  l.wo = rotate_writer(l.wo, q);
  l.w_down = rotate_writer(l.w_down, q);
  // A writer's bias is part of its output, which now lives in the rotated basis: b <- b Q.
  // (A reader's bias, q/k/v, adds after W x and stays as it is.)
  if (l.bo.defined()) l.bo = q.apply(l.bo.unsqueeze(0)).squeeze(0).contiguous();
}

void fuse_residual_rotation(LlamaWeights& w, const Rotation& q) {
  check_residual_rotation(q, w.config.dim);
  if (!norm_gains_folded(w)) throw Error("fuse_residual_rotation: fold the RMSNorm gains first");
  untie(w);
  w.embedding = q.apply(w.embedding).contiguous();
  for (LlamaLayer& l : w.layers) fuse_residual_into_layer(l, q);
  w.output = q.fuse_into(w.output).contiguous();
}

void check_value_head_rotation(const Rotation& h, const LlamaConfig& c) {
  if (!h.orthogonal() || h.size() != c.head_dim())
    throw Error(fmt::format("value head rotation must be orthogonal of size head_dim = {}", c.head_dim()));
}

void fuse_value_head_into_layer(LlamaLayer& l, const LlamaConfig& c, const Rotation& h) {
  const int64_t hd = c.head_dim();
  // v_h' = v_h H: rows of head h of W_v become H^T W_v,h = (W_v,h^T H)^T.
  at::Tensor v = l.wv.reshape({c.n_kv_heads, hd, c.dim}).transpose(1, 2);  // KV x dim x hd
  l.wv = h.apply(v).transpose(1, 2).reshape({c.n_kv_heads * hd, c.dim}).contiguous();
  // v_h = x W_v,h^T + b_v,h, so v_h H needs b_v,h H as well (Qwen2's value bias).
  if (l.bv.defined()) l.bv = h.apply(l.bv.reshape({c.n_kv_heads, hd})).reshape({-1}).contiguous();
  // o reads attn_h H: columns of head h of W_o become W_o,h H.
  at::Tensor o = l.wo.reshape({c.dim, c.n_heads, hd});
  l.wo = h.fuse_into(o).reshape({c.dim, c.n_heads * hd}).contiguous();
}

void fuse_value_head_rotation(LlamaWeights& w, const Rotation& h) {
  check_value_head_rotation(h, w.config);
  for (LlamaLayer& l : w.layers) fuse_value_head_into_layer(l, w.config, h);
}

void fuse_down_input_rotation(LlamaWeights& w, const Rotation& h) {
  for (LlamaLayer& l : w.layers) l.w_down = h.fuse_into(l.w_down).contiguous();
}

std::vector<at::Tensor*> layer_site_linears(LlamaLayer& l, LinearSite site) {
  switch (site) {
    case LinearSite::attn_in: return {&l.wq, &l.wk, &l.wv};
    case LinearSite::attn_out: return {&l.wo};
    case LinearSite::mlp_in: return {&l.w_gate, &l.w_up};
    case LinearSite::mlp_out: return {&l.w_down};
    case LinearSite::head: break;
  }
  return {};
}

std::vector<at::Tensor*> site_linears(LlamaWeights& w, int64_t layer, LinearSite site) {
  if (site == LinearSite::head) return {&w.output};
  return layer_site_linears(w.layers.at(layer), site);
}

at::Tensor layer_site_weight(const LlamaLayer& l, LinearSite site) {
  std::vector<at::Tensor> parts;
  for (at::Tensor* t : layer_site_linears(const_cast<LlamaLayer&>(l), site)) parts.push_back(*t);
  return at::cat(parts, 0);
}

at::Tensor site_weight(const LlamaWeights& w, int64_t layer, LinearSite site) {
  return site == LinearSite::head ? w.output : layer_site_weight(w.layers.at(layer), site);
}

}  // namespace sqlab
