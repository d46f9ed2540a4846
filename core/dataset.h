// The dataset plugin interface: a source of linear sites (activations and weights).
#pragma once

#include <cstdint>
#include <vector>

#include "core/registry.h"
#include "core/site.h"

namespace sqlab {

class Dataset {
 public:
  virtual ~Dataset() = default;
  // The sites of one run; `seed` is the run's seed (random sources must use it).
  virtual std::vector<Site> load(uint64_t seed) const = 0;
  // Checks the source in full (files, names, shapes, dtypes, NaN/Inf) before any run
  // starts; throws config errors (exit 2). Called once per distinct data block.
  virtual void validate() const {}
  // The widths n of its sites when known without loading them (empty: unknown).
  virtual std::vector<int64_t> site_widths() const { return {}; }
};

using DatasetRegistry = Registry<Dataset>;

}  // namespace sqlab
