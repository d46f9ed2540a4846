#include "quant/site_eval.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/torch_compat.h"
#include "quant/histogram.h"
#include "quant/metrics.h"
#include "quant/weight_quant.h"

namespace sqlab {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One pass over a contiguous CPU float32/float64 tensor (at::isfinite(t).all() makes a bool
// tensor in several passes: 3 of the 7B-shaped pass's 60 s went to it); other tensors go
// through ATen.
bool all_finite(const at::Tensor& t) {
  if (!t.device().is_cpu() || !t.is_contiguous() || (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble))
    return at::isfinite(t).all().item<bool>();
  std::atomic<bool> finite{true};
  auto scan = [&](const auto* bits, auto exponent_mask, int64_t n) {
    at::parallel_for(0, n, 1 << 20, [&](int64_t begin, int64_t end) {
      // NaN and +-Inf are the values whose exponent bits are all ones; integer ops with no
      // branch, so the loop vectorizes.
      bool bad = false;
      for (int64_t i = begin; i < end; ++i) bad |= (bits[i] & exponent_mask) == exponent_mask;
      if (bad) finite = false;
    });
  };
  if (t.scalar_type() == at::kFloat)
    scan(reinterpret_cast<const uint32_t*>(t.data_ptr<float>()), uint32_t{0x7f800000u}, t.numel());
  else
    scan(reinterpret_cast<const uint64_t*>(t.data_ptr<double>()), uint64_t{0x7ff0000000000000ull}, t.numel());
  return finite;
}

void check_tensor(const Site& site, const at::Tensor& t, const char* name) {
  if (!t.defined() || t.dim() != 2 || t.numel() == 0)
    throw Error(fmt::format("site {}: {} must be a non-empty 2-D matrix", site.name, name));
  if (!all_finite(t))
    throw Error(fmt::format("site {}: {} contains NaN or Inf", site.name, name));
}

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kCPU, at::kDouble).contiguous();  // (data.device: cuda)
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

}  // namespace

// Where the largest |x| of a site's input is (massive activations: Sun et al. 2024 find
// them at the first token and a few fixed channels of the residual stream), and how far
// it stands above the typical entry: |x|max / median |x| over all entries.
void record_largest_activation(const at::Tensor& x, std::map<std::string, double>& metrics) {
  const at::Tensor magnitude = x.abs();
  const int64_t flat = magnitude.argmax().item<int64_t>();
  const double median = magnitude.flatten().median().item<double>();
  const double largest = magnitude.flatten()[flat].item<double>();
  metrics["act_absmax_token_before"] = static_cast<double>(flat / x.size(1));
  metrics["act_absmax_channel_before"] = static_cast<double>(flat % x.size(1));
  metrics["act_absmax_to_median_before"] = median > 0 ? largest / median : std::numeric_limits<double>::infinity();
}

void check_site(const Site& site) {
  check_tensor(site, site.X, "X");
  check_tensor(site, site.W, "W");
  if (site.X.size(1) != site.W.size(1))
    throw Error(fmt::format("site {}: X has {} channels but W has {} input features", site.name,
                            site.X.size(1), site.W.size(1)));
}

std::vector<int64_t> detect_outlier_tokens(const at::Tensor& x, double threshold) {
  const at::Tensor token_absmax = x.abs().amax(1).to(at::kDouble);
  const double median = token_absmax.median().item<double>();
  const at::Tensor picked = at::nonzero(token_absmax > threshold * median).reshape({-1}).to(at::kCPU).contiguous();
  return std::vector<int64_t>(picked.data_ptr<int64_t>(), picked.data_ptr<int64_t>() + picked.numel());
}

void outlier_token_split(const at::Tensor& quantized, const at::Tensor& reference,
                         const std::vector<int64_t>& outlier_tokens, std::map<std::string, double>& metrics) {
  const at::Tensor error_energy = (quantized.to(at::kDouble) - reference.to(at::kDouble)).pow(2).sum(1);
  const at::Tensor signal_energy = reference.to(at::kDouble).pow(2).sum(1);
  at::Tensor is_outlier = at::zeros({reference.size(0)}, at::kBool);
  for (int64_t t : outlier_tokens) is_outlier[t] = true;
  is_outlier = is_outlier.to(error_energy.device());
  const double err_out = error_energy.masked_select(is_outlier).sum().item<double>();
  const double ref_out = signal_energy.masked_select(is_outlier).sum().item<double>();
  const double err_other = error_energy.sum().item<double>() - err_out;
  const double ref_other = signal_energy.sum().item<double>() - ref_out;
  metrics["outlier_tokens"] = static_cast<double>(outlier_tokens.size());
  metrics["outlier_token_energy_share"] = ref_out / (ref_out + ref_other);
  metrics["rel_output_error_outlier_tokens"] = ref_out > 0 ? std::sqrt(err_out / ref_out) : 0.0;
  metrics["rel_output_error_other_tokens"] = ref_other > 0 ? std::sqrt(err_other / ref_other) : 0.0;
}

SiteEvaluation evaluate_site(const Site& site, const Rotation& rotation, const QuantConfig& quant,
                             const EvalOptions& options) {
  at::NoGradGuard no_grad;
  SiteEvaluation result;
  auto start = std::chrono::steady_clock::now();
  const at::Tensor xr = rotation.apply(site.X);
  wait_for_device(xr);  // data.device: cuda runs asynchronously
  result.rotate_seconds = seconds_since(start);
  start = std::chrono::steady_clock::now();
  const at::Tensor wr = rotation.fuse_into(site.W);
  wait_for_device(wr);
  result.fuse_seconds = seconds_since(start);
  result.apply_seconds = result.rotate_seconds + result.fuse_seconds;

  // RTN or GPTQ; GPTQ's Hessian comes from the rotated activations X R.
  start = std::chrono::steady_clock::now();
  const at::Tensor wq = quantize_weights(wr, &xr, quant);
  wait_for_device(wq);
  result.weight_quant_seconds = seconds_since(start);

  start = std::chrono::steady_clock::now();
  const at::Tensor xq = fake_quant(xr, quant.act);
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
  record_largest_activation(site.X, m);
  // Without quantization the rotation must cancel: (XR)(WR)^T = X W^T. A numerical identity,
  // checked on the first kInvarianceTokens tokens: on all of them it was a third of a
  // 7B-shaped pass's evaluation time.
  const int64_t checked = std::min<int64_t>(kInvarianceTokens, xr.size(0));
  m["invariance_error"] = relative_error(at::matmul(xr.narrow(0, 0, checked), wr.t()), reference.narrow(0, 0, checked));
  outlier_token_split(quantized, reference, detect_outlier_tokens(site.X, options.outlier_token_threshold), m);
  m["outlier_token_threshold"] = options.outlier_token_threshold;
  if (!site.known_outlier_tokens.empty()) m["known_outlier_tokens"] = static_cast<double>(site.known_outlier_tokens.size());
  result.channel_absmax_before = to_vector(site.X.abs().amax(0));
  result.channel_absmax_after = to_vector(xr.abs().amax(0));
  result.metrics_seconds = seconds_since(start);
  if (options.histogram_bins > 0) {
    start = std::chrono::steady_clock::now();
    result.act_before = make_histogram(site.X, options.histogram_bins);
    result.act_after = make_histogram(xr, options.histogram_bins);
    result.histogram_seconds = seconds_since(start);
  }
  return result;
}

}  // namespace sqlab
