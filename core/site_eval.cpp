#include "core/site_eval.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <chrono>

#include "core/error.h"
#include "core/histogram.h"
#include "core/metrics.h"

namespace sqlab {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void check_tensor(const Site& site, const at::Tensor& t, const char* name) {
  if (!t.defined() || t.dim() != 2 || t.numel() == 0)
    throw Error(fmt::format("site {}: {} must be a non-empty 2-D matrix", site.name, name));
  if (!at::isfinite(t).all().item<bool>())
    throw Error(fmt::format("site {}: {} contains NaN or Inf", site.name, name));
}

}  // namespace

void check_site(const Site& site) {
  check_tensor(site, site.X, "X");
  check_tensor(site, site.W, "W");
  if (site.X.size(1) != site.W.size(1))
    throw Error(fmt::format("site {}: X has {} channels but W has {} input features", site.name,
                            site.X.size(1), site.W.size(1)));
}

SiteEvaluation evaluate_site(const Site& site, const Rotation& rotation, const QuantConfig& quant,
                             int histogram_bins) {
  at::NoGradGuard no_grad;
  SiteEvaluation result;
  const auto start = std::chrono::steady_clock::now();
  const at::Tensor xr = rotation.apply(site.X);
  const at::Tensor wr = rotation.fuse_into(site.W);
  result.apply_seconds = seconds_since(start);

  const at::Tensor xq = fake_quant(xr, quant.act);
  const at::Tensor wq = fake_quant(wr, quant.weight);
  const at::Tensor reference = at::matmul(site.X, site.W.t());
  const at::Tensor quantized = at::matmul(xq, wq.t());

  auto& m = result.metrics;
  m["rel_output_error"] = relative_error(quantized, reference);
  m["sqnr_db"] = sqnr_db(quantized, reference);
  m["act_mse"] = mean_squared_error(xq, xr);
  m["weight_mse"] = mean_squared_error(wq, wr);
  m["act_absmax"] = abs_max(xr);
  m["act_kurtosis"] = kurtosis(xr);
  m["act_absmax_before"] = abs_max(site.X);
  m["act_kurtosis_before"] = kurtosis(site.X);
  // Without quantization the rotation must cancel: (XR)(WR)^T = X W^T.
  m["invariance_error"] = relative_error(at::matmul(xr, wr.t()), reference);
  if (histogram_bins > 0) {
    result.act_before = make_histogram(site.X, histogram_bins);
    result.act_after = make_histogram(xr, histogram_bins);
  }
  return result;
}

}  // namespace sqlab
