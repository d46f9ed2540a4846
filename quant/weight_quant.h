// The one entry point for quantizing weights: RTN or GPTQ (quant.w_quantizer). Site
// evaluation and model-level evaluation both call it, on the already rotated (fused)
// weights W R with the rotated calibration activations X R.
#pragma once

#include <ATen/core/Tensor.h>

#include "quant/quant.h"

namespace sqlab {

// Quantize-dequantize w (C_out x n). `calib_x` (T x n): the calibration activations
// that enter the layer, already transformed like w (X R for W R); GPTQ builds its
// Hessian from them, RTN ignores them (it may be null). GPTQ without calibration
// activations throws sqlab::Error.
at::Tensor quantize_weights(const at::Tensor& w, const at::Tensor* calib_x, const QuantConfig& quant);

}  // namespace sqlab
