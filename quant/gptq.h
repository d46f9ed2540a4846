// GPTQ (Frantar et al. 2022) as QuaRot and SpinQuant run it (method-notes.md section 8):
// quantize the columns of W (C_out x n) one at a time and spread each column's rounding
// error over the columns not yet quantized through the inverse Hessian of the layer's
// input, so that ||X W^T - X Q^T|| stays small.
//
// For a rotated site the weight is W R and the Hessian that of X R. Model-level code
// accumulates the Hessian over calibration batches (sum of 2 X_b^T X_b over tokens / T)
// and calls gptq_quantize; site-level code calls quantize_weights (quant/weight_quant.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "quant/quant.h"

namespace sqlab {

// H = 2 X^T X / T (n x n, float64) for activations x (T x n).
at::Tensor gptq_hessian(const at::Tensor& x);

// Quantize-dequantize w (C_out x n) with GPTQ against `hessian` (n x n). Returns a tensor
// of w's shape and dtype (float64 input is worked in float64, anything else in float32;
// the Hessian's inverse is always formed in float64). Follows the reference algorithm:
//  - dead columns (H_ii = 0) get H_ii = 1 and a zero weight column;
//  - H += damp * mean(diag H) * I, then Hinv = the upper Cholesky factor of H^-1;
//  - column i: q = Q(w_i), err = (w_i - q) / Hinv_ii, w_j -= err * Hinv_ij for j > i
//    (inside a block of block_size columns; the later blocks receive the block's errors
//    at once, which gives the same result as the unblocked loop);
//  - scales: per output channel from the whole original row (per_row), one for the
//    whole matrix (per_tensor), or per group from the group's current (already
//    updated) columns when the group's first column comes up (per_group). With
//    act_order and groups, each group's scales come from the original weights of its
//    contiguous columns (GPTQ's static_groups), so groups stay contiguous in the
//    original channel order, like RTN's;
//  - act_order: columns in order of decreasing H_ii (a stable sort).
// Symmetric or asymmetric grids and the clip ratio follow `spec` exactly as fake_quant
// does. Throws sqlab::Error when the damped Hessian is not positive definite.
at::Tensor gptq_quantize(const at::Tensor& w, const at::Tensor& hessian, const QuantSpec& spec,
                         const GptqOptions& options);

}  // namespace sqlab
