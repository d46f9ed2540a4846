// Exact (full-precision) rewrites of a LLaMA model that QuaRot and SpinQuant apply
// before quantizing (method-notes.md; QuaRot section 4, SpinQuant section 3):
//  - folding each RMSNorm gain g into the linears that read the norm's output
//    (W <- W diag(g), g <- 1), so that the norm commutes with an orthogonal rotation;
//  - fusing a rotation Q of the residual stream: E <- E Q, every linear that reads the
//    stream W <- W Q (q, k, v, gate, up, head), every linear that writes it
//    W <- Q^T W (o_proj, down_proj); RMSNorm(x Q) = RMSNorm(x) Q once the gains are 1;
//  - a per-head rotation H of the attention values (v rows per head <- H^T, o_proj
//    columns per head <- H: exact because attention mixes tokens, not channels);
//  - an online rotation of the down_proj input: W_down <- fuse_into(W_down), the
//    forward applies x H (model/quantized_model.h).
// Weights are changed through Rotation::apply / fuse_into only, never assuming more.
#pragma once

#include "core/rotation.h"
#include "model/llama.h"

#include <vector>

namespace sqlab {

// A deep copy (tied embeddings stay tied: output is the copy of the embedding).
LlamaWeights clone_weights(const LlamaWeights& weights);

// W <- W diag(g) for q/k/v (attention norm), gate/up (MLP norm) and the head (final
// norm); every gain becomes 1. A tied head is untied first (the embedding does not
// read the final norm). Exact up to rounding.
void fold_norm_gains(LlamaWeights& weights);

// True when every norm gain is exactly 1 (what fuse_residual_rotation needs).
bool norm_gains_folded(const LlamaWeights& weights);

// The residual rotation Q (dim x dim, orthogonal). Throws sqlab::Error when the gains
// are not folded or Q is not orthogonal (a non-orthogonal T does not commute with RMSNorm).
// A tied head is untied (the head gets W Q like every input linear; E Q is the same
// matrix, so tying would still hold, but keeping them apart lets the head be quantized
// on its own).
void fuse_residual_rotation(LlamaWeights& weights, const Rotation& q);

// Per-head rotation of the values (head_dim x head_dim, orthogonal), every layer.
void fuse_value_head_rotation(LlamaWeights& weights, const Rotation& h);

// The down_proj side of an online rotation of its input (hidden_dim): W_down <- fuse_into(W_down).
void fuse_down_input_rotation(LlamaWeights& weights, const Rotation& h);

// Each linear of `site` in layer `layer`, in the order they are stacked for a Site's W
// (attn_in: q, k, v; attn_out: o; mlp_in: gate, up; mlp_out: down; head: output, layer -1).
std::vector<at::Tensor*> site_linears(LlamaWeights& weights, int64_t layer, LinearSite site);
// The stacked weights (C_out x n) of a site.
at::Tensor site_weight(const LlamaWeights& weights, int64_t layer, LinearSite site);

// The same, one decoder layer at a time (the layer-by-layer pipeline, model/layerwise.h);
// the whole-model functions above are loops over these.
void fold_layer_norm_gains(LlamaLayer& layer);
// output <- output diag(final_norm), final_norm <- 1 (the head's side of fold_norm_gains).
void fold_head_norm_gain(at::Tensor& final_norm, at::Tensor& output);
bool layer_norm_gains_folded(const LlamaLayer& layer);
// Throws unless q is orthogonal of size dim.
void check_residual_rotation(const Rotation& q, int64_t dim);
void fuse_residual_into_layer(LlamaLayer& layer, const Rotation& q);
void check_value_head_rotation(const Rotation& h, const LlamaConfig& config);
void fuse_value_head_into_layer(LlamaLayer& layer, const LlamaConfig& config, const Rotation& h);
std::vector<at::Tensor*> layer_site_linears(LlamaLayer& layer, LinearSite site);
at::Tensor layer_site_weight(const LlamaLayer& layer, LinearSite site);

}  // namespace sqlab
