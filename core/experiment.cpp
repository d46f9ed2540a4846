#include "core/experiment.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>

#include "core/config.h"
#include "core/error.h"
#include "core/presets.h"

namespace sqlab {
namespace {

const std::vector<std::string> kTopLevelKeys = {"name", "description", "seeds", "data", "quant",
                                                "methods", "sweep", "record", "output", "defaults", "plots",
                                                "model", "eval", "calib"};

// One point of the sweep: the values of every swept key.
using SweepPoint = std::vector<std::pair<std::string, YAML::Node>>;

YAML::Node descend(YAML::Node node, const std::string& part, const std::string& walked,
                   const std::string& origin, bool create) {
  if (node.IsSequence()) {
    YAML::Node entry = find_labelled(node, part);
    if (!entry) throw config_error(fmt::format("{}: {}: no entry labelled '{}'", origin, walked, part));
    return entry;
  }
  if (!node.IsMap() && !(node.IsNull() && create))
    throw config_error(fmt::format("{}: {} is '{}', not a mapping, so it has no key '{}'", origin,
                                   walked, yaml_to_flow(node), part));
  if (!node[part] && create) node[part] = YAML::Node(YAML::NodeType::Map);
  return node[part];
}

std::vector<int64_t> parse_seeds(ConfigReader& root, size_t max_runs) {
  if (!root.has("seeds")) return {0};
  YAML::Node node = root.raw("seeds");
  std::vector<int64_t> seeds;
  if (node.IsScalar()) {
    const int64_t count = root.get<int64_t>("seeds", 1);
    if (count < 1) root.fail("seeds", "a count of seeds must be positive");
    if (static_cast<uint64_t>(count) > max_runs)
      root.fail("seeds", fmt::format("a count of seeds must be at most {}", max_runs));
    for (int64_t s = 0; s < count; ++s) seeds.push_back(s);
  } else {
    seeds = root.get<std::vector<int64_t>>("seeds", {});
    if (seeds.empty()) root.fail("seeds", "must not be empty");
  }
  return seeds;
}

// Reads a `grid:` or `zip:` mapping of dotted key -> non-empty list.
std::vector<std::pair<std::string, YAML::Node>> parse_axes(ConfigReader& sweep, const std::string& key) {
  std::vector<std::pair<std::string, YAML::Node>> axes;
  YAML::Node node = sweep.raw(key);
  if (!node) return axes;
  if (!node.IsMap()) sweep.fail(key, "expected a mapping of dotted keys to lists");
  for (const auto& item : node) {
    const std::string name = item.first.as<std::string>();
    if (!item.second.IsSequence() || item.second.size() == 0)
      sweep.fail(key, fmt::format("'{}' must map to a non-empty list", name));
    axes.emplace_back(name, item.second);
  }
  return axes;
}

std::vector<SweepPoint> expand_sweep(ConfigReader sweep, size_t max_runs) {
  const auto grid = parse_axes(sweep, "grid");
  const auto zip = parse_axes(sweep, "zip");
  sweep.finish();
  size_t product = 1;
  for (const auto& axis : grid) {
    product *= axis.second.size();
    if (product > max_runs) sweep.fail("grid", fmt::format("the grid has more than {} points", max_runs));
  }
  std::vector<SweepPoint> points{{}};
  for (const auto& [key, values] : grid) {  // cartesian product
    std::vector<SweepPoint> next;
    for (const auto& point : points)
      for (const auto& value : values) {
        SweepPoint extended = point;
        extended.emplace_back(key, value);
        next.push_back(extended);
      }
    points = next;
  }
  if (zip.empty()) return points;
  const size_t length = zip.front().second.size();
  for (const auto& [key, values] : zip)
    if (values.size() != length)
      sweep.fail("zip", fmt::format("lists differ in length: '{}' has {}, '{}' has {}",
                                    zip.front().first, length, key, values.size()));
  std::vector<SweepPoint> result;
  for (const auto& point : points)
    for (size_t i = 0; i < length; ++i) {
      SweepPoint extended = point;
      for (const auto& [key, values] : zip) extended.emplace_back(key, values[i]);
      result.push_back(extended);
    }
  return result;
}

struct MethodEntry {
  std::string label;
  std::string method;
};

std::vector<MethodEntry> parse_method_entries(ConfigReader& root) {
  YAML::Node list = root.raw("methods");
  if (!list) root.fail("methods", "required key is missing");
  if (!list.IsSequence() || list.size() == 0) root.fail("methods", "expected a non-empty list of methods");
  std::vector<MethodEntry> entries;
  std::set<std::string> labels;
  for (const auto& entry : list) {
    if (!entry.IsMap() || !entry["method"])
      root.fail("methods", fmt::format("each entry needs a 'method' key, got '{}'", yaml_to_flow(entry)));
    // A mapping or list here would throw yaml-cpp's "bad conversion" (found by fuzzing).
    for (const char* key : {"method", "label"})
      if (entry[key] && !entry[key].IsScalar())
        root.fail("methods", fmt::format("an entry's '{}' must be a name, got '{}'", key, yaml_to_flow(entry[key])));
    MethodEntry e;
    e.method = entry["method"].as<std::string>();
    e.label = entry["label"] ? entry["label"].as<std::string>() : e.method;
    if (e.label.empty() || e.label.find_first_of("./ ") != std::string::npos)
      root.fail("methods", fmt::format("label '{}' must be non-empty without '.', '/' or spaces", e.label));
    if (!labels.insert(e.label).second)
      root.fail("methods", fmt::format("label '{}' is used twice; give each entry a distinct label", e.label));
    entries.push_back(e);
  }
  return entries;
}

// A sweep may change what a run reads (data, quant, record, model, eval, calib, a method
// entry's keys, a preset group); name, seeds, output and the like are read once per
// experiment, and the methods list itself fixes the entries (a sweep that replaced it
// reached make_run as a scalar: found by fuzzing).
void check_sweepable(ConfigReader& root, const std::string& key, const std::vector<std::string>& groups) {
  static const std::vector<std::string> kPerRun = {"data", "quant", "record", "model", "eval", "calib", "methods"};
  if (std::find(groups.begin(), groups.end(), key) != groups.end()) return;
  const auto parts = split_dotted(key);
  if (std::find(kPerRun.begin(), kPerRun.end(), parts.front()) == kPerRun.end())
    root.fail("sweep", fmt::format("'{}' cannot be swept: a sweep changes data, quant, record, model, eval, calib, "
                                   "methods.LABEL.KEY or a preset group",
                                   key));
  if (parts.front() == "methods" && parts.size() < 2)
    root.fail("sweep", fmt::format("'{}' cannot be swept: sweep the keys inside an entry (methods.LABEL.KEY)", key));
}

// A swept key applies to every run, except methods.LABEL.* which applies to LABEL only.
bool applies_to(const std::string& key, const std::string& label) {
  const auto parts = split_dotted(key);
  return parts.size() < 2 || parts[0] != "methods" || parts[1] == label;
}

// --set KEY=VALUE, split into fragment swaps (KEY is a group that `defaults` names
// and VALUE a fragment name) and plain key overrides.
struct Overrides {
  std::map<std::string, std::string> swaps;
  std::vector<std::pair<std::string, YAML::Node>> keys;
  std::vector<std::string> origins;
};

Overrides parse_overrides(const std::vector<std::string>& texts, const std::string& file,
                          const std::vector<std::string>& groups) {
  Overrides result;
  for (const std::string& text : texts) {
    const std::string origin = file + ": --set " + text;
    const size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0) throw config_error(origin + ": expected KEY=VALUE");
    const std::string key = text.substr(0, eq);
    const YAML::Node value = parse_yaml_value(text.substr(eq + 1), origin);
    if (std::find(groups.begin(), groups.end(), key) != groups.end() && value.IsScalar()) {
      result.swaps[key] = value.Scalar();
    } else {
      result.keys.emplace_back(key, value);
      result.origins.push_back(origin);
    }
  }
  return result;
}

// Sets each override and notes where it came from (errors then name the --set).
void apply_overrides(YAML::Node root, SourceMap& sources, const Overrides& overrides) {
  for (size_t i = 0; i < overrides.keys.size(); ++i) {
    const auto& [key, value] = overrides.keys[i];
    set_dotted(root, key, value, overrides.origins[i]);
    erase_sources(key, sources);
    record_sources(value, overrides.origins[i], key, sources);
    sources[key] = KeySource{overrides.origins[i], YAML::Mark::null_mark()};
  }
}

std::string default_name(const std::string& file) {
  const size_t slash = file.find_last_of('/');
  std::string base = slash == std::string::npos ? file : file.substr(slash + 1);
  const size_t dot = base.rfind('.');
  return dot == std::string::npos ? base : base.substr(0, dot);
}

// An entry's own `quant:` keys are read as `quant.KEY` (make_run merges them over the
// global block): their lines are the entry's, not the global block's.
std::shared_ptr<const SourceMap> sources_for_entry(const std::shared_ptr<const SourceMap>& sources,
                                                   const std::string& label) {
  const std::string own = "methods." + label + ".quant";
  auto it = sources->lower_bound(own);
  if (it == sources->end() || it->first.rfind(own, 0) != 0) return sources;
  auto merged = std::make_shared<SourceMap>(*sources);
  for (; it != sources->end() && it->first.rfind(own, 0) == 0; ++it)
    if (it->first.size() > own.size() && it->first[own.size()] == '.')
      (*merged)["quant" + it->first.substr(own.size())] = it->second;
  return merged;
}

// `label` is the entry's label in the file; a sweep point may change the entry
// (but not its position in the list).
RunSpec make_run(const Experiment& ex, const YAML::Node& point_root, const SweepPoint& point,
                 size_t index, const std::string& label, int64_t seed) {
  RunSpec run;
  run.seed = seed;
  YAML::Node entry = clone_yaml(point_root["methods"][index]);
  if (!entry.IsMap() || !entry["method"] || !entry["method"].IsScalar())
    throw config_error(fmt::format("{}: methods.{}: a sweep made this entry '{}', which has no method",
                                   ex.file, label, yaml_to_flow(entry)));
  if (entry["label"] && !entry["label"].IsScalar())
    throw config_error(fmt::format("{}: methods.{}.label: a sweep made it '{}', not a name", ex.file, label,
                                   yaml_to_flow(entry["label"])));
  run.method = entry["method"].as<std::string>();
  if (!entry["label"]) entry["label"] = label;
  run.label = entry["label"].as<std::string>();
  YAML::Node config(YAML::NodeType::Map);
  config["seed"] = seed;
  config["data"] = clone_yaml(point_root["data"]);
  config["quant"] = point_root["quant"] ? clone_yaml(point_root["quant"]) : YAML::Node(YAML::NodeType::Map);
  // An entry's own `quant:` mapping is merged over the global one for this entry's runs
  // (e.g. {label: hadamard+gptq, method: hadamard, quant: {w_quantizer: gptq}}).
  if (entry["quant"]) {
    if (!entry["quant"].IsMap())
      throw config_error(fmt::format("{}: methods.{}.quant: expected a mapping of quant keys, got '{}'", ex.file,
                                     label, yaml_to_flow(entry["quant"])));
    merge_yaml(config["quant"], entry["quant"]);
    entry.remove("quant");
  }
  config["method"] = entry;
  config["record"] = point_root["record"] ? clone_yaml(point_root["record"]) : YAML::Node(YAML::NodeType::Map);
  // Model-level runs (core/model_run.h); absent keys are not added, so site-level ids stay.
  for (const char* key : {"model", "eval", "calib"})
    if (point_root[key]) config[key] = clone_yaml(point_root[key]);
  run.run_id = make_run_id(label, seed, config);
  config["name"] = ex.name;
  run.config = config;
  for (const auto& [key, value] : point)
    if (applies_to(key, label)) run.point.emplace_back(key, yaml_to_flow(value));
  return run;
}

}  // namespace

void set_dotted(YAML::Node root, const std::string& dotted, const YAML::Node& value,
                const std::string& origin) {
  const auto parts = split_dotted(dotted);
  for (const auto& part : parts)
    if (part.empty()) throw config_error(fmt::format("{}: '{}' is not a key path", origin, dotted));
  // Node::reset, not operator=: assigning to a yaml-cpp node rewrites what it refers to.
  YAML::Node node;
  node.reset(root);
  std::string walked;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    node.reset(descend(node, parts[i], walked.empty() ? "(top level)" : walked, origin, true));
    walked += (walked.empty() ? "" : ".") + parts[i];
  }
  const std::string& last = parts.back();
  if (node.IsSequence()) {
    YAML::Node entry = find_labelled(node, last);
    if (!entry) throw config_error(fmt::format("{}: {}: no entry labelled '{}'", origin, walked, last));
    entry = clone_yaml(value);
    return;
  }
  if (!node.IsMap() && !node.IsNull())
    throw config_error(fmt::format("{}: {} is '{}', not a mapping", origin, walked, yaml_to_flow(node)));
  node[last] = clone_yaml(value);
}

std::string make_run_id(const std::string& label, int64_t seed, const YAML::Node& config) {
  YAML::Emitter out;
  out << YAML::Flow << config;
  uint64_t h = 1469598103934665603ull;  // FNV-1a: stable across runs and machines
  for (unsigned char c : std::string(out.c_str())) h = (h ^ c) * 1099511628211ull;
  std::string safe = label;
  for (char& c : safe)
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '_')) c = '_';
  return fmt::format("{}-s{}-{:08x}", safe, seed, static_cast<uint32_t>(h ^ (h >> 32)));
}

namespace {

// Where a swept key was written: its line under `sweep.grid` or `sweep.zip` (the values
// are clones and carry no line numbers).
KeySource swept_key_source(const SourceMap& sources, const std::string& key, const std::string& file) {
  for (const char* axis : {"sweep.grid.", "sweep.zip."}) {
    auto it = sources.find(axis + key);
    if (it != sources.end()) return it->second;
  }
  auto sweep = sources.find("sweep");
  return sweep != sources.end() ? sweep->second : KeySource{file, YAML::Mark::null_mark()};
}

bool is_group(const std::vector<std::string>& groups, const std::string& key) {
  return std::find(groups.begin(), groups.end(), key) != groups.end();
}

// The configuration of one sweep point: presets resolved again when the point swaps
// a fragment, then the point's other keys set; `sources` says where each key came from.
YAML::Node point_config(const Experiment& ex, const Overrides& overrides, const std::vector<std::string>& groups,
                        const SweepPoint& point, SourceMap& sources) {
  std::map<std::string, std::string> swaps = overrides.swaps;
  for (const auto& [key, value] : point)
    if (is_group(groups, key)) {
      if (!value.IsScalar())
        throw config_error(fmt::format("{}: sweep {}: a preset group takes fragment names, got '{}'", ex.file, key,
                                       yaml_to_flow(value)));
      swaps[key] = value.as<std::string>();
    }
  YAML::Node root;
  if (swaps == overrides.swaps) {
    root = clone_yaml(ex.resolved);
    sources = *ex.sources;
  } else {
    ResolvedConfig resolved = resolve_presets(ex.document, ex.file, swaps);
    root = resolved.node;
    sources = std::move(resolved.sources);
    apply_overrides(root, sources, overrides);
  }
  for (const auto& [key, value] : point) {
    if (is_group(groups, key)) continue;
    set_dotted(root, key, value, ex.file + ": sweep " + key);
    erase_sources(key, sources);
    sources[key] = swept_key_source(*ex.sources, key, ex.file);
  }
  return root;
}

}  // namespace

// `plots: true | false | NAME | [NAME, ...]`: draw figures after the runs. The names
// (figure families) are checked by the command line, which knows them.
static void parse_plots(ConfigReader& root, Experiment& ex) {
  const YAML::Node node = root.raw("plots");
  if (!node || node.IsNull()) return;
  bool flag = false;
  if (node.IsScalar() && YAML::convert<bool>::decode(node, flag)) {
    ex.plots = flag;
    return;
  }
  if (node.IsScalar()) ex.plot_names.push_back(node.as<std::string>());
  if (node.IsSequence())
    for (const auto& item : node) {
      if (!item.IsScalar()) root.fail("plots", "expected a list of figure names");
      ex.plot_names.push_back(item.as<std::string>());
    }
  if (ex.plot_names.empty()) root.fail("plots", "expected true, false or a list of figure names");
  ex.plots = true;
}

Experiment load_experiment(const std::string& file, const std::vector<std::string>& override_texts,
                           const LoadOptions& options) {
  const size_t max_runs = options.max_runs;
  Experiment ex;
  ex.file = file;
  ex.document = load_yaml_file(file);
  if (!ex.document.IsMap())
    throw config_error(fmt::format("{}: expected a mapping at the top level", file));
  const std::vector<std::string> groups = preset_groups(ex.document, file);
  const Overrides overrides = parse_overrides(override_texts, file, groups);
  ResolvedConfig resolved = resolve_presets(ex.document, file, overrides.swaps);
  ex.resolved = resolved.node;
  apply_overrides(ex.resolved, resolved.sources, overrides);
  ex.sources = std::make_shared<const SourceMap>(std::move(resolved.sources));

  ConfigReader root(ex.resolved, file, "", ex.sources);
  ex.name = root.get<std::string>("name", default_name(file));
  ex.description = root.get<std::string>("description", "");
  ex.output = root.get<std::string>("output", "results/{name}");
  const size_t brace = ex.output.find("{name}");
  if (brace != std::string::npos) ex.output.replace(brace, 6, ex.name);
  parse_plots(root, ex);
  const std::vector<int64_t> seeds = parse_seeds(root, max_runs);
  const std::vector<MethodEntry> entries = parse_method_entries(root);
  if (!root.has("data") && !root.has("model")) root.fail("data", "required key is missing");
  for (const char* key : {"data", "quant", "record", "model", "eval", "calib"}) root.raw(key);
  const std::vector<SweepPoint> points = expand_sweep(root.child("sweep"), max_runs);
  for (const auto& key : kTopLevelKeys) root.raw(key);
  root.finish();

  if (points.size() * seeds.size() * entries.size() > max_runs)
    root.fail("seeds", fmt::format("{} sweep points x {} seeds x {} methods is more than {} runs", points.size(),
                                   seeds.size(), entries.size(), max_runs));
  for (const auto& [key, value] : points.front()) {
    check_sweepable(root, key, groups);
    ex.swept_keys.push_back(key);
  }
  std::set<std::string> seen;
  for (const SweepPoint& point : points) {
    const bool first = &point == &points.front();
    SourceMap sources;
    const YAML::Node point_root = point_config(ex, overrides, groups, point, sources);
    auto shared_sources = std::make_shared<const SourceMap>(std::move(sources));
    std::vector<std::shared_ptr<const SourceMap>> entry_sources;
    for (const MethodEntry& entry : entries) entry_sources.push_back(sources_for_entry(shared_sources, entry.label));
    for (int64_t seed : seeds)
      for (size_t i = 0; i < entries.size(); ++i) {
        RunSpec run = make_run(ex, point_root, point, i, entries[i].label, seed);
        run.sources = entry_sources[i];
        if (seen.insert(run.run_id).second) ex.runs.push_back(std::move(run));
      }
    // A misspelt key fails on the first point, before thousands of others are expanded.
    if (first && options.check_first)
      for (const RunSpec& run : ex.runs)
        if (run.seed == seeds.front()) options.check_first(ex, run);
  }
  return ex;
}

}  // namespace sqlab
