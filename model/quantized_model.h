// The W4A4 fake-quantized model that perplexity is measured on, built from a
// full-precision LLaMA, a rotation method and a placement (README "Model-level runs"):
//
//  online   (SingleQuant's and FlatQuant's setting): per layer and site (attn_in,
//           attn_out, mlp_in, mlp_out) the method is fitted on that site's captured
//           full-precision inputs X and stacked weights W; its rotation R is fused into
//           the site's weights (W <- R.fuse_into(W)) and applied online to the site's
//           input (x <- x R) before the per-token activation quantizer.
//  residual (QuaRot's and SpinQuant's setting): RMSNorm gains folded into the linears,
//           one rotation Q of the residual stream (fitted on the stream's normalized
//           activations, or learned by model-level Cayley SGD) fused into the embedding,
//           every reading linear (W Q) and writing linear (Q^T W); a per-head Hadamard
//           fused into v/o (`vo_hadamard`, SpinQuant's R2 as a Hadamard), and an online
//           Hadamard before down_proj (`down_hadamard`, QuaRot's / SpinQuant's R4).
//
// Every linear's weight is fake-quantized (quant.weight, per output channel by default)
// and every linear's input activation (quant.act, per token). The output head stays in
// 16 bits unless `head_bits` < 16 (then its weight and input use that many bits, with the
// granularity and symmetry of quant.weight and quant.act). Embeddings and norms stay in
// full precision, as in the papers.
#pragma once

#include <ATen/core/Tensor.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/config.h"
#include "core/method.h"
#include "core/quant_config.h"
#include "core/rotation.h"
#include "model/capture.h"
#include "model/layerwise.h"
#include "model/llama.h"
#include "model/weight_source.h"
#include "quant/quant.h"

namespace sqlab {

enum class Placement { online, residual };

struct ModelQuantOptions {
  Placement placement = Placement::online;
  int head_bits = 16;
  bool fold_norms = true;     // online: optional; residual: required
  bool down_hadamard = true;  // residual only
  bool vo_hadamard = true;    // residual only
};

struct ModelQuantConfig {
  QuantConfig quant;
  ModelQuantOptions model;
};

// The model keys of `quant:` (placement, head_bits, fold_norms, down_hadamard,
// vo_hadamard); the other keys go to parse_quant_config. `path` is "quant".
ModelQuantConfig parse_model_quant_config(const YAML::Node& quant, const std::string& file,
                                          std::shared_ptr<const SourceMap> sources);

const char* placement_name(Placement placement);

// Rotates (online rotations) and fake-quantizes the input of every site.
class QuantizedModelHooks : public ForwardHooks {
 public:
  at::Tensor input(int64_t layer, LinearSite site, const at::Tensor& x) override;

  std::map<SiteKey, std::shared_ptr<const Rotation>> rotations;  // online, per site
  std::shared_ptr<const Rotation> down_rotation;  // every layer's mlp_out (residual placement)
  QuantSpec act;        // every site but the head
  QuantSpec head_act;   // the head's input
  bool ste = false;     // fake_quant_ste (training) instead of fake_quant
};

struct QuantizedModel {
  LlamaWeights weights;                       // transformed and weight-quantized
  std::shared_ptr<QuantizedModelHooks> hooks;
  std::shared_ptr<const Rotation> residual;   // Q (residual placement)
  // ||logits(folded + fused, no quantizer) - logits(fp)||_F / ||logits(fp)||_F on the
  // first calibration window, measured before the weights are quantized.
  double fused_logit_error = 0.0;
  bool head_untied = false;  // the full-precision head was tied and the transformed one is not
};

// Above this fused_logit_error build_quantized_model fails the run: folding and fusing
// are exact in full precision (~1e-6 in float32), so a larger error is a wrong transform.
constexpr double kMaxFusedLogitError = 1e-3;

// The one place where a linear's weight is quantized (quant/weight_quant: RTN or GPTQ). `inputs`
// are the calibration activations that enter it (as the evaluated model sees them; may
// be undefined), for data-aware quantizers such as GPTQ.
at::Tensor quantize_linear_weight(const at::Tensor& w, const QuantSpec& spec, const QuantConfig& quant,
                                  const at::Tensor& inputs);

// Learns the residual rotation Q on the model's own loss (model-level Cayley SGD,
// model/model_cayley.h); given to build_quantized_model for cayley_sgd in the residual
// placement. `transformed` is the folded model with the fixed rotations fused.
using ResidualTrainer = std::function<RotationPtr(const LlamaWeights& transformed,
                                                  const QuantizedModelHooks& hooks_template)>;

struct BuildInputs {
  const RotationMethod* method = nullptr;
  uint64_t seed = 0;
  at::Tensor calib_windows;                            // B x seq_len token ids
  std::function<FitLog&(const std::string& site)> log_for;  // per site ("residual" too)
  ResidualTrainer residual_trainer;                    // set: learn Q instead of fitting
  int64_t max_fit_tokens = 0;                          // 0: every captured token
  bool keep_rotations = false;                         // fill `rotations_out`
  std::map<std::string, std::map<std::string, at::Tensor>>* rotations_out = nullptr;
};

// The quantized model, built one decoder layer at a time (issue #18): the full-precision
// weights are read from a WeightSource layer by layer and never whole; calibration hidden
// states flow through layer l (the folded full-precision layer, capturing its sites' inputs
// for the fit; the fused, weight-quantized one for GPTQ's sequential calibration), layer
// l's rotations are fitted, fused and its weights quantized, and next_layer() hands back
// both forms of the layer for the caller's evaluation streams (model/layerwise.h), which
// advance through it before the next layer is built.
//
// placement residual needs the stream's statistics from every layer before Q is fitted:
// the constructor makes that first pass (the folded full-precision model, capturing every
// layer's attn_in and mlp_in, and the head's input when the head is quantized); model-level
// Cayley SGD (BuildInputs::residual_trainer) instead trains Q on the whole folded model,
// which it reads into memory (SpinQuant's training needs every layer at once).
//
// fused_logit_error (every run): one calibration window goes through the full-precision
// layers and through the transformed ones with their online rotations but no quantizer;
// finish() compares the logits and fails the run above kMaxFusedLogitError.
class LayerwiseBuilder {
 public:
  LayerwiseBuilder(WeightSourcePtr source, const ModelQuantConfig& config, const BuildInputs& inputs,
                   at::Device device = at::kCPU);

  const LlamaConfig& config() const { return source_->config(); }
  const std::string& origin() const { return source_->origin(); }
  // The full-precision embedding and the transformed one (E Q in the residual placement;
  // the same tensor otherwise).
  const at::Tensor& fp_embedding() const { return fp_embedding_; }
  const at::Tensor& embedding() const { return embedding_; }

  // Drops both embeddings (1 GB for LLaMA-2-7B) once the caller's streams are embedded;
  // a tied head is read again at finish().
  void release_embeddings();

  struct Layer {
    LlamaLayer fp;         // as the checkpoint has it
    LlamaLayer quantized;  // folded, fused, weight-quantized: run it with hooks()
  };
  // Layer `layers_done()` (in order; throws past the last).
  Layer next_layer();
  int64_t layers_done() const { return next_; }

  // After the last layer: the heads, the fused-model check (throws above
  // kMaxFusedLogitError), the head's weight quantization.
  void finish();
  const at::Tensor& fp_final_norm() const { return fp_final_norm_; }
  const at::Tensor& fp_output() const { return fp_output_; }
  const at::Tensor& final_norm() const { return final_norm_; }
  const at::Tensor& output() const { return output_; }
  double fused_logit_error() const { return fused_logit_error_; }
  bool head_untied() const { return head_untied_; }
  std::shared_ptr<QuantizedModelHooks> hooks() const { return hooks_; }
  std::shared_ptr<const Rotation> residual() const { return residual_; }

  // Seconds per stage so far (disjoint): read (weights from the checkpoint), calib_forward
  // (calibration hidden states through the layers, captures included), fit, fuse, quantize,
  // check (the fused-model check's window).
  const std::map<std::string, double>& timing() const { return timing_; }

 private:
  QuantizedModelHooks rotate_only() const;  // the hooks without the activation quantizer
  LlamaLayer read_layer(int64_t index);
  void fit_residual_first_pass();
  void set_residual(RotationPtr q);
  void train_residual();
  void transform_online(LlamaLayer& layer, int64_t index);
  void transform_residual(LlamaLayer& layer) const;
  void quantize_layer(LlamaLayer& layer, int64_t index);

  WeightSourcePtr source_;
  ModelQuantConfig config_;
  BuildInputs in_;
  at::Device device_;
  bool fold_ = true;
  bool data_aware_ = false;  // GPTQ: calib_q_ is kept
  int64_t next_ = 0;
  at::Tensor fp_embedding_, embedding_, fp_final_norm_, fp_output_, final_norm_, output_;
  std::shared_ptr<QuantizedModelHooks> hooks_;
  std::shared_ptr<const Rotation> residual_, value_head_;
  HiddenStream calib_;      // online: through the folded full-precision layers (the fit's inputs)
  HiddenStream calib_q_;    // GPTQ: through the transformed, weight-quantized layers, activations unquantized
  HiddenStream check_fp_;   // one window through the full-precision layers
  HiddenStream check_;      // the same window through the transformed layers (rotations, no quantizer)
  double fused_logit_error_ = 0.0;
  bool head_untied_ = false;
  std::map<std::string, double> timing_;
  // timing_[stage] += now - start, after the device's queued work is done (GPU kernels run
  // asynchronously).
  void add_seconds(const char* stage, double start);
};

// The whole quantized model in memory (LayerwiseBuilder's layers collected, the same one
// code path): for text generation (`sqlab generate`, small models) and the tests that
// compare the streamed evaluation with a whole model's.
QuantizedModel build_quantized_model(const LlamaWeights& fp, const ModelQuantConfig& config,
                                     const BuildInputs& inputs);

}  // namespace sqlab
