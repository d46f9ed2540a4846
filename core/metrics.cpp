#include "core/metrics.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace sqlab {
namespace {

double squared_norm(const at::Tensor& x) {
  return x.to(at::kDouble).pow(2).sum().item<double>();
}

}  // namespace

double relative_error(const at::Tensor& approx, const at::Tensor& reference) {
  const double ref = squared_norm(reference);
  const double err = squared_norm(approx.to(at::kDouble) - reference.to(at::kDouble));
  if (ref == 0.0) return err == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(err / ref);
}

double mean_squared_error(const at::Tensor& approx, const at::Tensor& reference) {
  if (reference.numel() == 0) return 0.0;
  return squared_norm(approx.to(at::kDouble) - reference.to(at::kDouble)) /
         static_cast<double>(reference.numel());
}

double sqnr_db(const at::Tensor& approx, const at::Tensor& reference) {
  const double err = squared_norm(approx.to(at::kDouble) - reference.to(at::kDouble));
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
