// The dataset plugin interface: a source of linear sites (activations and weights).
#pragma once

#include <cstdint>
#include <map>
#include <string>
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

  // Streaming, for sources too large to hold at once (a whole model's weights, e.g.
  // datasets/llama_shapes.cpp): when site_count() >= 0 the runner takes the sites one at a
  // time with load_site, evaluates each and drops it. The default (-1) means "load them all
  // with load()", which the runner keeps for the next run of the same data.
  virtual int64_t site_count() const { return -1; }
  // Site `index` (0 <= index < site_count()) of the run with `seed`; adds the seconds spent
  // per stage (e.g. "generate", "statistics") to `timing`. The default goes through load().
  virtual Site load_site(uint64_t seed, int64_t index, std::map<std::string, double>& timing) const {
    return load(seed).at(static_cast<size_t>(index));
  }
};

using DatasetRegistry = Registry<Dataset>;

}  // namespace sqlab
