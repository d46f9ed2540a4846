#include "quant/metrics.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace sqlab {
namespace {

// Sums in float64 over blocks of 2^20 entries: no float64 copy of a whole matrix (a 7B MLP
// weight has 45 M entries; whole-matrix float64 temporaries cost 1.4 GB and most of a
// 7B-shaped pass's evaluation time, experiments/bench_llama2_7b_shapes.yaml).
constexpr int64_t kBlock = 1 << 20;

double squared_norm(const at::Tensor& x) {
  const at::Tensor flat = x.reshape({-1});
  double total = 0.0;
  for (int64_t start = 0; start < flat.numel(); start += kBlock) {
    const int64_t len = std::min(kBlock, flat.numel() - start);
    total += flat.narrow(0, start, len).to(at::kDouble).pow(2).sum().item<double>();
  }
  return total;
}

// ||a - b||^2 in float64, block by block.
double squared_distance(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor fa = a.reshape({-1}), fb = b.reshape({-1});
  double total = 0.0;
  for (int64_t start = 0; start < fa.numel(); start += kBlock) {
    const int64_t len = std::min(kBlock, fa.numel() - start);
    total += (fa.narrow(0, start, len).to(at::kDouble) - fb.narrow(0, start, len).to(at::kDouble))
                 .pow(2).sum().item<double>();
  }
  return total;
}

}  // namespace

double relative_error(const at::Tensor& approx, const at::Tensor& reference) {
  const double ref = squared_norm(reference);
  const double err = squared_distance(approx, reference);
  if (ref == 0.0) return err == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(err / ref);
}

double mean_squared_error(const at::Tensor& approx, const at::Tensor& reference) {
  if (reference.numel() == 0) return 0.0;
  return squared_distance(approx, reference) / static_cast<double>(reference.numel());
}

double sqnr_db(const at::Tensor& approx, const at::Tensor& reference) {
  const double err = squared_distance(approx, reference);
  if (err == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(squared_norm(reference) / err);
}

double abs_max(const at::Tensor& x) {
  return x.numel() ? x.abs().max().item<double>() : 0.0;
}

double kurtosis(const at::Tensor& x) {
  const at::Tensor v = x.to(at::kDouble).reshape({-1});
  if (v.numel() < 2) return 0.0;
  const at::Tensor centered = v - v.mean();
  const double var = centered.pow(2).mean().item<double>();
  if (var == 0.0) return 0.0;
  return centered.pow(4).mean().item<double>() / (var * var);
}

}  // namespace sqlab
