// Histograms of activation values, for the before/after-rotation figures.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/run_record.h"

namespace sqlab {

// `bins` equal bins over [-max|x|, max|x|] (symmetric, so before/after plots line up
// around zero). An all-zero x gets the range [-1, 1].
Histogram make_histogram(const at::Tensor& x, int bins);

}  // namespace sqlab
