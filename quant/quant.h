// Round-to-nearest fake quantization of 2-D matrices (rows = tokens for activations,
// rows = output channels for weights), and its straight-through-estimator variant.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace sqlab {


// Which entries share one scale. For a T x n activation block per_row is per token;
// for a C_out x n weight it is per output channel.
enum class Granularity { per_tensor, per_row, per_group };

// How fake_quant_ste rounds: `ste` rounds in the forward pass and passes the gradient
// straight through; `smooth` replaces round(u) by the Lipschitz-smooth surrogate
// u - sin(2 pi u) / (2 pi) (exact at integers and half-integers, same scale), a
// differentiable control for training experiments. fake_quant always rounds.
enum class Rounding { ste, smooth };

struct QuantSpec {
  int bits = 4;          // 2..8, or 16 (no quantization)
  bool symmetric = true;
  Granularity granularity = Granularity::per_row;
  int64_t group_size = 128;  // per_group: consecutive columns of a row
  double clip = 1.0;         // the range is clip * (min, max) of the group
  Rounding rounding = Rounding::ste;  // fake_quant_ste only

  bool enabled() const { return bits < 16; }
  std::string describe() const;
};

// How weights are quantized (quant/weight_quant.h): round-to-nearest, or GPTQ
// (quant/gptq.h), which spreads each column's rounding error over the later columns
// using the Hessian of the (rotated) calibration activations.
enum class WeightQuantizer { rtn, gptq };

// GPTQ's options (method-notes.md section 8). Groups and clipping come from the weight
// QuantSpec (w_granularity: per_group, w_group_size, w_clip), as for RTN.
struct GptqOptions {
  double damp = 0.01;        // H += damp * mean(diag H) * I
  int64_t block_size = 128;  // columns per lazy block update (the result does not depend on it)
  bool act_order = false;    // quantize columns in order of decreasing H_ii
};

// W4A4 by default (method-notes.md section 1): symmetric per-channel weights,
// asymmetric per-token activations, RTN weights.
struct QuantConfig {
  QuantSpec weight{4, true, Granularity::per_row, 128, 1.0};
  QuantSpec act{4, false, Granularity::per_row, 128, 1.0};
  WeightQuantizer w_quantizer = WeightQuantizer::rtn;
  GptqOptions gptq;
};

// Every `quant:` key with its effective value (defaults filled in), as text, so two
// configurations can be compared key by key.
std::map<std::string, std::string> quant_settings(const QuantConfig& config);

// Quantize-dequantize. x: 2-D floating tensor. No autograd; the float32 path is a
// single fused pass per row.
at::Tensor fake_quant(const at::Tensor& x, const QuantSpec& spec);

// Differentiable version for training rotations (SpinQuant): rounding passes the
// gradient straight through; the scale and zero point are treated as constants;
// values clamped by the grid get zero gradient. With spec.rounding == smooth, rounding
// is the smooth surrogate u - sin(2 pi u) / (2 pi) instead (its true gradient flows).
at::Tensor fake_quant_ste(const at::Tensor& x, const QuantSpec& spec);

}  // namespace sqlab
