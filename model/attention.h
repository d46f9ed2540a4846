// Softmax attention of the decoder layers (model/llama.cpp) with transformers' eager
// numerics in every compute dtype: the scores q k^T rounded to the dtype, scaled (rounded
// again), masked, the softmax in float32, the probabilities rounded to the dtype, and their
// product with v accumulated in float32 and rounded once.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sqlab {

// softmax(q k^T * scale, masked) v for q of B x H x T x hd and k, v of B x H x S x hd
// (`masked`: true where a query may not look, T x S for every row (the causal mask: true
// above the diagonal) or B x 1 x T x S), a group of heads at a time so that the
// B x heads x T x S scores (three copies: product, masked, softmax) stay under
// max_score_bytes: LLaMA-2-7B's 32 heads at T = S = 2048 would hold 0.5 GB per copy. Each
// head is computed as it would be alone. Plain ATen ops: autograd flows through it.
constexpr int64_t kAttentionScoreBytes = 128ll << 20;
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& masked,
                            double scale, int64_t max_score_bytes = kAttentionScoreBytes);

// The attention of B rows that may each go on from a prefix, with grouped-query heads:
// q is B x H x T x hd; k and v are B x KV x (W + T) x hd, KV dividing H (query head i reads
// KV head i / (H / KV)). Row b's first W keys are its prefix's, of which it sees the first
// prefix_length[b] (B int64; undefined when W = 0); its last T keys are its own, which
// query t sees up to t (causal). Returns B x H x T x hd in q's dtype.
//
// On a CPU in float32, bfloat16 or float16 without autograd it is computed on float32
// buffers: one product per KV head for all its query heads (no copies of the keys per
// query head), the masks as bounds, and the softmax as one pass before and one after an
// in-place exp, where ATen's ops take eight passes over the scores. Elsewhere (a GPU, double,
// autograd) it is causal_attention with the mask spelled out, which is also the reference
// the tests hold it to. Either way the scores stay under max_score_bytes.
at::Tensor prefixed_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& prefix_length, int64_t prefix_width, double scale,
                                     int64_t max_score_bytes = kAttentionScoreBytes);

// The same through causal_attention whatever the device and dtype (the reference).
at::Tensor prefixed_causal_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& prefix_length, int64_t prefix_width, double scale,
                                               int64_t max_score_bytes = kAttentionScoreBytes);

}  // namespace sqlab
