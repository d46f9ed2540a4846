// An experiment file expanded into runs: overrides (--set) are applied, the sweep
// (grid x zip) is expanded, and every method entry x sweep point x seed becomes a
// RunSpec with a stable id derived from its resolved configuration.
#pragma once

#include <yaml-cpp/yaml.h>

#include "core/config.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sqlab {

struct RunSpec {
  std::string run_id;
  std::string label;
  std::string method;
  int64_t seed = 0;
  // The swept keys that apply to this run, with their values as flow YAML.
  std::vector<std::pair<std::string, std::string>> point;
  // Resolved configuration: name, seed, data, quant, method (the entry), record.
  YAML::Node config;
  // Which file and line each key of the experiment came from (for error messages).
  std::shared_ptr<const SourceMap> sources;
};

struct Experiment {
  std::string file;
  std::string name;
  std::string description;
  std::string output;   // results directory (before --out)
  bool plots = false;   // `plots:` draw figures after the runs
  std::vector<std::string> plot_names;  // figure families to draw; empty: all
  YAML::Node document;  // the file as written
  YAML::Node resolved;  // presets merged (`defaults:`), then --set
  std::shared_ptr<const SourceMap> sources;  // file and line of each key of `resolved`
  std::vector<std::string> swept_keys;
  std::vector<RunSpec> runs;
};

// Checks one run's configuration (core/runner.h prepare_run: every key of its blocks).
using RunCheck = std::function<void(const Experiment&, const RunSpec&)>;

struct LoadOptions {
  // Sees the first sweep point's runs (first seed) before the other points are expanded,
  // so a bad key in a large sweep fails at once.
  RunCheck check_first;
  // More runs than this is a typo (`seeds: 1000000000`, a grid of 14 axes), not a study:
  // a config error before anything is expanded, instead of exhausting memory or minutes
  // spent expanding (~0.15 ms a run: the resolved configuration is emitted to hash the run
  // id). The fuzz targets lower it (expansion under ASan is ~30x slower).
  size_t max_runs = 10000;
};

// Loads, merges presets, applies overrides ("a.b.c=value", or "GROUP=FRAGMENT" for a
// group that `defaults:` names) and expands. Throws config errors that
// name the file, line and key.
Experiment load_experiment(const std::string& file, const std::vector<std::string>& overrides,
                           const LoadOptions& options = {});

// Sets `dotted` in `root` (creating mappings on the way). In the `methods` list a
// part selects the entry by label or index. `origin` names the source in errors.
void set_dotted(YAML::Node root, const std::string& dotted, const YAML::Node& value,
                const std::string& origin);

// The stable id of a run: LABEL-sSEED-HASH8 (hash of the resolved configuration).
std::string make_run_id(const std::string& label, int64_t seed, const YAML::Node& config);

}  // namespace sqlab
