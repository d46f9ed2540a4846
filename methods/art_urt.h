// ART and URT factor builders shared by the art, urt and singlequant methods
// (method-notes.md sections 4 and 5). A factor acts on a *population*: an N x m matrix
// whose rows are the vectors it rotates (v -> v R). For a dense method the population
// is X itself; inside a Kronecker form it is the columns or rows of every token's
// reshaped matrix (section 3). Populations may be float32 or float64 (kept as given;
// statistics accumulate in float64); the matrices built are float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/method.h"
#include "rotations/givens.h"

namespace sqlab {

enum class ArtComplement { random, identity };
enum class UrtStatistic { mean, absmax, rms, mean_abs };
enum class UrtTarget { uniform, flat, flat_positive };

struct ArtOptions {
  double outlier_threshold = 10.0;  // MO: |v_k| > threshold * median_k(max |v_k|)
  int64_t max_pairs = 0;            // per pass; 0: no cap (every detected MO gets a pair)
  int64_t passes = 1;               // re-detect on the rotated data (paper Fig. 4)
  ArtComplement complement = ArtComplement::random;  // O in Eq. 13
};

struct UrtOptions {
  UrtStatistic statistic = UrtStatistic::mean;
  UrtTarget target = UrtTarget::uniform;
  GivensSweep sweep = GivensSweep::chain;
};

// Keys: outlier_threshold, max_pairs, passes, art_complement.
ArtOptions parse_art_options(ConfigReader& reader);
// Keys: statistic, target, sweep.
UrtOptions parse_urt_options(ConfigReader& reader);

// One ART pass (Eq. 13): R_A = P blockdiag(G_1, ..., G_p, O).
struct ArtPass {
  double scale = 0;      // s: median over coordinates of the population's max |v_k|
  int64_t detected = 0;  // entries with |v_k| > threshold * s
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (i, j): MO coordinate, partner
  std::vector<double> angles;                     // Theorem 2 angle per pair
  at::Tensor matrix;  // m x m float64; undefined when nothing was detected
};

// The pass's detection, pairing and matrix. `complement_seed` seeds O.
ArtPass build_art_pass(const at::Tensor& population, const ArtOptions& options,
                       uint64_t complement_seed);

// All passes: R_A = R_A^(1) R_A^(2) ..., each detected on the population rotated by the
// passes before it; stops at the first pass that detects nothing (R_A = I if the first).
struct ArtFactor {
  at::Tensor matrix;        // m x m float64
  int64_t detected = 0;     // summed over passes
  int64_t paired = 0;       // summed over passes
  int64_t passes_run = 0;   // passes that detected something
  std::vector<ArtPass> passes;
};
ArtFactor build_art_factor(const at::Tensor& population, const ArtOptions& options,
                           uint64_t seed, const std::string& purpose);

// The statistic vector V of a population (per-coordinate mean, absmax, rms, mean |.|).
std::vector<double> urt_statistic(const at::Tensor& population, UrtStatistic statistic);
// The target U with ||U|| = ||V|| (section 5): uniform = midpoints of m equal bins of
// U(-1, 1), ascending, scaled to ||V||; flat = sign(V) ||V|| / sqrt(m) (sign(0) = +1);
// flat_positive = ||V|| / sqrt(m).
std::vector<double> urt_target(const std::vector<double>& v, UrtTarget target);

struct UrtFactor {
  at::Tensor matrix;  // m x m float64, V R_U = U
  int64_t givens = 0;  // rotations used: 2 (m - 1)
  std::vector<double> statistic, target;
};
UrtFactor build_urt_factor(const at::Tensor& population, const UrtOptions& options);

// Metrics art_detected, art_paired, art_passes_run (prefixed), traces per pass, and the
// warning when nothing was detected.
void record_art(FitLog& log, const ArtFactor& art, const std::string& prefix,
                const std::string& where);

}  // namespace sqlab
