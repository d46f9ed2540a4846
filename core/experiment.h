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

// Loads, merges presets, applies overrides ("a.b.c=value", or "GROUP=FRAGMENT" for a
// group that `defaults:` names) and expands. Throws config errors that
// name the file, line and key. `check_first` sees the first sweep point's runs (first
// seed) before the other points are expanded, so a bad key in a large sweep fails at once.
Experiment load_experiment(const std::string& file, const std::vector<std::string>& overrides,
                           const RunCheck& check_first = {});

// Sets `dotted` in `root` (creating mappings on the way). In the `methods` list a
// part selects the entry by label or index. `origin` names the source in errors.
void set_dotted(YAML::Node root, const std::string& dotted, const YAML::Node& value,
                const std::string& origin);

// The stable id of a run: LABEL-sSEED-HASH8 (hash of the resolved configuration).
std::string make_run_id(const std::string& label, int64_t seed, const YAML::Node& config);

}  // namespace sqlab
