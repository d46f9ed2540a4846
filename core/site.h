// A linear site (method-notes.md section 1): calibration activations X (T x n) that
// enter linear layers with weights W (C_out x n; several layers stacked by rows).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace sqlab {

struct Site {
  std::string name;
  at::Tensor X;  // T x n, float32
  at::Tensor W;  // C_out x n, float32
};

}  // namespace sqlab
