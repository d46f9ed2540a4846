#include "app/compare_command.h"
#include "app/cli_args.h"

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include "core/config.h"
#include "core/error.h"
#include "core/quant_config.h"
#include "core/summary.h"
#include "quant/quant.h"

namespace sqlab {
namespace po = boost::program_options;
namespace fs = std::filesystem;
namespace {

struct ResultsDir {
  std::string path;
  YAML::Node config;  // config.yaml: the resolved experiment
  std::map<std::string, SummaryGroup> groups;  // key: label + point
};

std::string group_key(const SummaryGroup& g) {
  std::string key = g.label;
  for (const auto& [k, v] : g.point) key += fmt::format(" {}={}", k, v);
  return key;
}

ResultsDir load_dir(const std::string& path) {
  ResultsDir dir;
  dir.path = path;
  const fs::path config = fs::path(path) / "config.yaml";
  if (!fs::exists(config)) throw config_error(fmt::format("compare: {}: no config.yaml (is this a sqlab results directory?)", path));
  dir.config = load_yaml_file(config.string());
  for (const auto& g : group_rows(read_summary_rows(path))) dir.groups[group_key(g)] = g;
  return dir;
}

std::map<std::string, std::string> effective_quant(const ResultsDir& dir) {
  ConfigReader reader(dir.config["quant"], dir.path + "/config.yaml", "quant");
  return quant_settings(parse_quant_config(reader));
}

// Results are comparable only on the same data and quantizer (defaults filled in).
void check_comparable(const std::vector<ResultsDir>& dirs) {
  const auto base_quant = effective_quant(dirs[0]);
  for (size_t i = 1; i < dirs.size(); ++i) {
    std::vector<std::string> keys;
    for (const auto& [key, value] : effective_quant(dirs[i]))
      if (base_quant.at(key) != value) keys.push_back("quant." + key);
    for (const auto& key : yaml_differences(dirs[0].config["data"], dirs[i].config["data"], "data")) keys.push_back(key);
    if (!keys.empty())
      throw config_error(fmt::format("compare: {} and {} differ in {} (use --force to compare anyway)",
                                     dirs[0].path, dirs[i].path, fmt::join(keys, ", ")));
  }
}

struct Cell {
  bool present = false;
  double mean = NAN, stderr_ = NAN;
};

Cell cell_of(const ResultsDir& dir, const std::string& key, const std::string& metric) {
  auto g = dir.groups.find(key);
  if (g == dir.groups.end()) return {};
  auto m = g->second.metrics.find(metric);
  if (m == g->second.metrics.end()) return {};
  return {true, m->second.first, m->second.second};
}

// A difference beyond twice the combined standard error is marked.
bool significant(const Cell& a, const Cell& b) {
  return std::fabs(b.mean - a.mean) > 2.0 * std::sqrt(a.stderr_ * a.stderr_ + b.stderr_ * b.stderr_);
}

std::vector<std::string> all_keys(const std::vector<ResultsDir>& dirs) {
  std::vector<std::string> keys;
  for (const auto& dir : dirs)
    for (const auto& [key, g] : dir.groups)
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  return keys;
}

nlohmann::json compare_json(const std::vector<ResultsDir>& dirs, const std::vector<std::string>& metrics) {
  nlohmann::json out{{"dirs", nlohmann::json::array()}, {"rows", nlohmann::json::array()}};
  for (const auto& d : dirs) out["dirs"].push_back(d.path);
  for (const auto& key : all_keys(dirs))
    for (const auto& metric : metrics) {
      nlohmann::json row{{"group", key}, {"metric", metric}, {"values", nlohmann::json::array()}};
      const Cell base = cell_of(dirs[0], key, metric);
      for (const auto& d : dirs) {
        const Cell c = cell_of(d, key, metric);
        nlohmann::json v = c.present ? nlohmann::json{{"mean", c.mean}, {"stderr", c.stderr_}} : nlohmann::json(nullptr);
        if (c.present && base.present && &d != &dirs[0]) {
          v["diff"] = c.mean - base.mean;
          v["significant"] = significant(base, c);
        }
        row["values"].push_back(v);
      }
      out["rows"].push_back(row);
    }
  return out;
}

std::string format_cell(const Cell& c) {
  return c.present ? fmt::format("{:.4g} ± {:.2g}", c.mean, c.stderr_) : std::string("(missing)");
}

std::string compare_text(const std::vector<ResultsDir>& dirs, const std::vector<std::string>& metrics, bool markdown) {
  std::vector<std::string> header{"group", "metric"};
  for (size_t i = 0; i < dirs.size(); ++i) {
    header.push_back(dirs[i].path);
    if (i > 0) header.push_back(fmt::format("diff vs {}", dirs[0].path));
  }
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> only_one;
  for (const auto& key : all_keys(dirs)) {
    std::vector<std::string> present;
    for (const auto& d : dirs)
      if (d.groups.count(key)) present.push_back(d.path);
    if (present.size() < dirs.size()) only_one.push_back(fmt::format("{} (only in {})", key, fmt::join(present, ", ")));
    for (const auto& metric : metrics) {
      std::vector<std::string> row{key, metric};
      const Cell base = cell_of(dirs[0], key, metric);
      for (size_t i = 0; i < dirs.size(); ++i) {
        const Cell c = cell_of(dirs[i], key, metric);
        row.push_back(format_cell(c));
        if (i == 0) continue;
        row.push_back(c.present && base.present
                          ? fmt::format("{:+.4g}{}", c.mean - base.mean, significant(base, c) ? " *" : "")
                          : std::string("-"));
      }
      rows.push_back(row);
    }
  }
  std::vector<size_t> width(header.size());
  for (size_t j = 0; j < header.size(); ++j) {
    width[j] = header[j].size();
    for (const auto& r : rows) width[j] = std::max(width[j], r[j].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string text = markdown ? "|" : "";
    for (size_t j = 0; j < cells.size(); ++j)
      text += markdown ? fmt::format(" {} |", cells[j]) : fmt::format("{:<{}}  ", cells[j], width[j]);
    return text + "\n";
  };
  std::string out = line(header);
  if (markdown) {
    std::vector<std::string> rule(header.size(), "---");
    out += line(rule);
  }
  for (const auto& r : rows) out += line(r);
  out += "\n* : difference larger than twice the combined standard error\n";
  if (!only_one.empty()) out += fmt::format("\nin one directory only:\n  {}\n", fmt::join(only_one, "\n  "));
  return out;
}

}  // namespace

int command_compare(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("dirs", po::value<std::vector<std::string>>(), "results directories")(
      "metric", po::value<std::vector<std::string>>()->composing(), "metric to compare (repeatable; default rel_output_error)")(
      "format", po::value<std::string>()->default_value("table"), "table | markdown | json")(
      "force", po::bool_switch(), "compare even when the data or quantization settings differ");
  po::positional_options_description positional;
  positional.add("dirs", -1);
  po::variables_map vm;
  if (!parse_args("compare", args, options, positional,
                  "sqlab compare DIR_A DIR_B [...] [--metric NAME]... [--format table|markdown|json] [--force]", vm))
    return 0;
  const auto paths = vm.count("dirs") ? vm["dirs"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (paths.size() < 2) throw config_error("compare: give at least two results directories");
  const std::string format = vm["format"].as<std::string>();
  if (format != "table" && format != "markdown" && format != "json")
    throw config_error(fmt::format("compare: unknown format '{}' (valid: table, markdown, json)", format));
  const auto metrics = vm.count("metric") ? vm["metric"].as<std::vector<std::string>>()
                                          : std::vector<std::string>{"rel_output_error"};
  std::vector<ResultsDir> dirs;
  for (const auto& p : paths) dirs.push_back(load_dir(p));
  if (!vm["force"].as<bool>()) check_comparable(dirs);
  if (format == "json") std::cout << compare_json(dirs, metrics).dump(2) << "\n";
  else std::cout << compare_text(dirs, metrics, format == "markdown");
  return 0;
}

}  // namespace sqlab
