// Scalar error and distribution metrics (method-notes.md section 1). Norms are
// accumulated in float64 whatever the input dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace sqlab {

// ||approx - reference||_F / ||reference||_F.
double relative_error(const at::Tensor& approx, const at::Tensor& reference);
// mean((approx - reference)^2) over all entries.
double mean_squared_error(const at::Tensor& approx, const at::Tensor& reference);
// Signal-to-quantization-noise ratio in dB: 10 log10(||reference||^2 / ||approx - reference||^2).
double sqnr_db(const at::Tensor& approx, const at::Tensor& reference);
// max |x|.
double abs_max(const at::Tensor& x);
// Pearson kurtosis E[(x - mu)^4] / var^2 over all entries (3 for a Gaussian): high
// values mean outliers, which low-bit grids handle badly.
double kurtosis(const at::Tensor& x);

}  // namespace sqlab
