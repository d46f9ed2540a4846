#include "quant/weight_quant.h"

#include "core/error.h"
#include "quant/gptq.h"

namespace sqlab {

at::Tensor quantize_weights(const at::Tensor& w, const at::Tensor* calib_x, const QuantConfig& quant) {
  if (quant.w_quantizer == WeightQuantizer::rtn || !quant.weight.enabled()) return fake_quant(w, quant.weight);
  if (!calib_x || !calib_x->defined())
    throw Error("quantize_weights: w_quantizer gptq needs calibration activations");
  return gptq_quantize(w, gptq_hessian(*calib_x), quant.weight, quant.gptq);
}

}  // namespace sqlab
