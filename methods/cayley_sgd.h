// The site-level SpinQuant loss that cayley_sgd minimizes, exposed for tests and for
// other training methods.
#pragma once

#include <ATen/core/Tensor.h>

#include "quant/quant.h"

namespace sqlab {

// ||Q(X R) Q(W R)^T - Y||_F^2 / ||Y||_F^2 with Y = X W^T (the reference, given), where Q is
// fake_quant_ste with quant.act for the activations XR and quant.weight for the weights WR
// (gradients flow through rounding, or through the smooth surrogate, not through scales).
// Differentiable in XR and WR. With rounding `ste` the value equals the evaluation's
// rel_output_error squared.
at::Tensor quantized_output_loss(const at::Tensor& XR, const at::Tensor& WR, const at::Tensor& Y,
                                 const QuantConfig& quant);

}  // namespace sqlab
