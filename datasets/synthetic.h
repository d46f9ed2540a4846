// synthetic: seeded activations and weights that imitate a LLaMA linear site.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dataset.h"

namespace sqlab {

struct SyntheticOptions {
  int64_t tokens = 512;
  int64_t channels = 1024;
  int64_t out_features = 0;  // 0: same as channels
  int64_t sites = 1;
  // Heavy-tailed bulk: Student-t with `bulk_dof` degrees of freedom (0: Gaussian),
  // scaled to standard deviation `bulk_scale`.
  double bulk_dof = 5.0;
  double bulk_scale = 1.0;
  // Massive outliers (MO): huge values at a few tokens in a few channels, the same
  // channels at every such token (LLaMA-2-7B: channels 1415 and 2533 at token 0,
  // magnitudes of hundreds to ~2500).
  int64_t massive_count = 0;
  std::vector<double> massive_magnitude{1000.0};  // one value, or one per channel
  std::vector<int64_t> massive_tokens{0};
  std::vector<int64_t> massive_channels;  // empty: `massive_count` random channels
  // Normal outliers (NO): channels with a consistent offset and a larger scale at
  // every token: x[:, c] = normal_scale * (sign_c * normal_offset + bulk[:, c]).
  int64_t normal_count = 0;
  double normal_scale = 8.0;
  double normal_offset = 1.0;
  // Weights: Gaussian / sqrt(n), each output channel scaled by exp(spread * N(0, 1)).
  double weight_spread = 0.5;
  // Fixed data seed (-1: the run's seed).
  int64_t seed = -1;
};

class SyntheticDataset : public Dataset {
 public:
  explicit SyntheticDataset(SyntheticOptions options) : options_(std::move(options)) {}
  std::vector<Site> load(uint64_t seed) const override;
  std::vector<int64_t> site_widths() const override {
    return std::vector<int64_t>(options_.sites, options_.channels);
  }
  const SyntheticOptions& options() const { return options_; }

 private:
  Site make_site(int64_t index, uint64_t seed) const;
  SyntheticOptions options_;
};

SyntheticOptions parse_synthetic_options(ConfigReader& reader);

}  // namespace sqlab
