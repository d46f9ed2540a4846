#include "quant/histogram.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace sqlab {

Histogram make_histogram(const at::Tensor& x, int bins) {
  if (bins < 1) throw Error("histogram: bins must be positive");
  const at::Tensor values = x.detach().to(at::kFloat).reshape({-1});
  double range = values.numel() ? values.abs().max().item<double>() : 0.0;
  if (!(range > 0.0)) range = 1.0;
  const at::Tensor counts = at::histc(values, bins, -range, range).to(at::kDouble).contiguous();
  Histogram h;
  h.counts.assign(counts.data_ptr<double>(), counts.data_ptr<double>() + bins);
  h.edges.resize(bins + 1);
  for (int i = 0; i <= bins; ++i) h.edges[i] = -range + 2.0 * range * i / bins;
  return h;
}

}  // namespace sqlab
