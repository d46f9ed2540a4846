// W4A4 evaluation of one linear site under a rotation (method-notes.md section 1).
#pragma once

#include <map>
#include <string>

#include "core/quant.h"
#include "core/rotation.h"
#include "core/run_record.h"
#include "core/site.h"

namespace sqlab {

struct SiteEvaluation {
  // rel_output_error, act_mse, weight_mse, sqnr_db, act_absmax, act_kurtosis,
  // act_absmax_before, act_kurtosis_before, invariance_error.
  std::map<std::string, double> metrics;
  Histogram act_before;  // of X      (empty when histogram_bins == 0)
  Histogram act_after;   // of X R
  double apply_seconds = 0.0;
};

// Rotates X and W, fake-quantizes both and compares Q(XR) Q(WR)^T with X W^T.
SiteEvaluation evaluate_site(const Site& site, const Rotation& rotation, const QuantConfig& quant,
                             int histogram_bins);

// Throws sqlab::Error naming the site and tensor when X or W has a bad shape or a
// NaN/Inf entry.
void check_site(const Site& site);

}  // namespace sqlab
