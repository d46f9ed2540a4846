// A linear site (method-notes.md section 1): calibration activations X (T x n) that
// enter linear layers with weights W (C_out x n; several layers stacked by rows).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sqlab {

struct Site {
  std::string name;
  at::Tensor X;  // T x n, float32
  at::Tensor W;  // C_out x n, float32
  // Tokens the source knows to carry massive outliers (the synthetic dataset plants
  // them); empty when unknown. Recorded next to the detected ones.
  std::vector<int64_t> known_outlier_tokens;
};

}  // namespace sqlab
