// W4A4 evaluation of one linear site under a rotation (method-notes.md section 1).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/rotation.h"
#include "core/run_record.h"
#include "core/site.h"
#include "quant/quant.h"

namespace sqlab {

struct SiteEvaluation {
  // rel_output_error, act_mse, weight_mse, sqnr_db, act_absmax, act_kurtosis,
  // act_absmax_before, act_kurtosis_before, where X's largest |x| is
  // (record_largest_activation), invariance_error, and the split of the output error
  // between outlier tokens and the others (see outlier_token_split).
  std::map<std::string, double> metrics;
  Histogram act_before;  // of X      (empty when histogram_bins == 0)
  Histogram act_after;   // of X R
  std::vector<double> channel_absmax_before;  // max_t |X_tj| per channel j
  std::vector<double> channel_absmax_after;   // max_t |(XR)_tj|
  // Seconds per stage; the stages are disjoint and together are the whole call.
  double rotate_seconds = 0.0;        // X R (the activations)
  double fuse_seconds = 0.0;          // W R (the weight-side pass: fuse, then quantize)
  double weight_quant_seconds = 0.0;  // Q(W R)
  double metrics_seconds = 0.0;       // Q(X R), the two output products and every metric above
  double histogram_seconds = 0.0;     // the two histograms
  double apply_seconds = 0.0;         // rotate + fuse: X R and W R (the per-site apply_seconds metric)
};

// invariance_error is measured on at most this many (the first) tokens.
constexpr int64_t kInvarianceTokens = 16;

struct EvalOptions {
  int histogram_bins = 128;  // 0: no histograms
  // A token is an outlier token when its max |x| exceeds this many times the median
  // over tokens of max |x| (data.outlier_token_threshold).
  double outlier_token_threshold = 10.0;
};

// Rotates X and fuses the rotation into W (fuse_into: W R, or W T^-T for a transform that
// is not orthogonal), fake-quantizes both (weights with quant.w_quantizer: RTN, or GPTQ
// calibrated on X R) and compares Q(XR) Q(WR)^T with X W^T.
SiteEvaluation evaluate_site(const Site& site, const Rotation& rotation, const QuantConfig& quant,
                             const EvalOptions& options = {});

// The largest |x| of X (T x n): act_absmax_token_before, act_absmax_channel_before and
// act_absmax_to_median_before (|x|max / median |x| over all entries).
void record_largest_activation(const at::Tensor& x, std::map<std::string, double>& metrics);

// Tokens whose max |x| exceeds threshold x the median token's max |x|.
std::vector<int64_t> detect_outlier_tokens(const at::Tensor& x, double threshold);

// The output error split by tokens: with per-token activation scales, the few
// tokens that carry massive outliers hold a small share of the output energy, so
// the overall error hides what a method does for them. The parts recombine exactly:
// overall^2 = share * outlier^2 + (1 - share) * other^2. Adds
// rel_output_error_outlier_tokens, rel_output_error_other_tokens,
// outlier_token_energy_share and outlier_tokens (the count) to `metrics`.
void outlier_token_split(const at::Tensor& quantized, const at::Tensor& reference,
                         const std::vector<int64_t>& outlier_tokens, std::map<std::string, double>& metrics);

// Throws sqlab::Error naming the site and tensor when X or W has a bad shape or a
// NaN/Inf entry.
void check_site(const Site& site);

}  // namespace sqlab
