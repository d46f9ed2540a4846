// Model-level Cayley SGD (SpinQuant, method-notes.md section 6): the residual rotation
// R (dim x dim) learned on the Stiefel manifold by the shared optimizer (rotations/stiefel.h),
// with the next-token cross-entropy of the fake-quantized model as the loss:
//   loss(R) = CE(model with E R, W_in R, R^T W_out, weights and activations fake-quantized
//                with the straight-through estimator; calibration windows)
// The fixed parts (folded norms, per-head and down_proj Hadamards) are already in the
// model it is given. Traces per step, as the site-level cayley_sgd: loss, grad_norm
// (Riemannian), euclid_grad_norm, lr, step_size, orth_error; metrics initial_loss,
// final_loss, best_loss, best_step, step_seconds, grad_norm_first / _last / _ratio,
// loss_tail_mean / _range / _std.
#pragma once

#include <ATen/core/Tensor.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/config.h"
#include "core/method.h"
#include "model/quantized_model.h"
#include "rotations/stiefel.h"

namespace sqlab {

struct ModelCayleyOptions {
  CayleySGDOptions sgd;
  std::string init = "random_hadamard";  // random_hadamard | identity | random_orthogonal
  int64_t batch_windows = 0;             // windows per step (0: all calibration windows)
  bool keep_best = false;
};

// The cayley_sgd method entry's keys that the model-level trainer uses: steps, lr,
// schedule, momentum, cayley, fixed_point_iters, fixed_point_start, grad_clip,
// normalize_rows, random_reorth, reorth_every, init, keep, batch_tokens (tokens per
// step, rounded down to whole windows of `seq_len`). The entry's other keys were
// checked by the method itself and are ignored here.
ModelCayleyOptions parse_model_cayley_options(const YAML::Node& method, const std::string& file,
                                              const std::string& path, std::shared_ptr<const SourceMap> sources,
                                              int64_t seq_len);

// `model`: folded, fixed rotations fused, not quantized. `hooks`: the quantized model's
// activation hooks (copied, switched to the STE). Returns the learned R (float64, QR
// re-orthonormalized).
RotationPtr train_residual_rotation(const LlamaWeights& model, const QuantizedModelHooks& hooks,
                                    const QuantConfig& quant, int head_bits, const at::Tensor& calib_windows,
                                    const ModelCayleyOptions& options, uint64_t seed, FitLog& log);

// The training loss at a given R (differentiable in R), exposed for tests.
at::Tensor model_quantized_loss(const LlamaWeights& model, QuantizedModelHooks& ste_hooks, const QuantConfig& quant,
                                int head_bits, const at::Tensor& R, const at::Tensor& windows);

}  // namespace sqlab
