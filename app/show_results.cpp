#include "app/show_results.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "core/error.h"
#include "core/recorder.h"
#include "core/summary.h"

namespace sqlab {
namespace fs = std::filesystem;
namespace {

std::vector<std::string> choose_metrics(const std::vector<SummaryRow>& rows, const std::vector<std::string>& asked) {
  std::set<std::string> present;
  for (const auto& row : rows)
    for (const auto& [name, value] : row.metrics) present.insert(name);
  if (asked.empty()) return headline_metrics(rows);
  for (const auto& name : asked)
    if (!present.count(name))
      throw config_error(fmt::format("show: unknown metric '{}' (valid: {})", name, fmt::join(present, ", ")));
  return asked;
}

nlohmann::json number(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr); }

nlohmann::json groups_json(const nlohmann::json& summary, const std::vector<SummaryRow>& rows,
                           const std::vector<std::string>& metrics) {
  nlohmann::json groups = nlohmann::json::array();
  for (const auto& g : group_rows(rows)) {
    nlohmann::json point = nlohmann::json::object();
    for (const auto& [k, v] : g.point) point[k] = v;
    nlohmann::json values = nlohmann::json::object();
    for (const auto& m : metrics) {
      auto it = g.metrics.find(m);
      if (it != g.metrics.end()) values[m] = {{"mean", number(it->second.first)}, {"stderr", number(it->second.second)}};
    }
    groups.push_back({{"label", g.label}, {"point", point}, {"runs", g.runs}, {"metrics", values}});
  }
  return {{"name", summary.value("name", "")}, {"swept_keys", summary.value("swept_keys", nlohmann::json::array())},
          {"metrics", metrics}, {"groups", groups}};
}

// The per-site metrics a site table shows when none is asked for: where each site's largest
// activation is and how large (README "A real trained LLM: SmolLM2"), then ART's detections.
const std::vector<std::string> kSiteDefaults = {"act_absmax_before", "act_absmax_token_before",
                                                "act_absmax_channel_before", "act_absmax_to_median_before",
                                                "act_kurtosis_before", "art_detected"};

std::string cell(double value) {
  if (!std::isfinite(value)) return fmt::format("{}", value);
  if (value == std::floor(value) && std::abs(value) < 1e9) return fmt::format("{:.0f}", value);
  return fmt::format("{:.4g}", value);
}

// One run's sites as rows (largest first by the first metric when `top` > 0).
void print_site_table(const RunRecord& run, const std::vector<std::string>& metrics, int64_t top, bool markdown) {
  std::vector<std::pair<std::string, const std::map<std::string, double>*>> sites;
  for (const auto& [name, values] : run.site_metrics) sites.emplace_back(name, &values);
  const auto value = [&](const std::map<std::string, double>& m, const std::string& key) {
    auto it = m.find(key);
    return it == m.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
  };
  if (top > 0) {
    std::stable_sort(sites.begin(), sites.end(), [&](const auto& a, const auto& b) {
      return value(*a.second, metrics.front()) > value(*b.second, metrics.front());
    });
    if (static_cast<int64_t>(sites.size()) > top) sites.resize(static_cast<size_t>(top));
  }
  size_t width = 4;
  for (const auto& site : sites) width = std::max(width, site.first.size());
  std::vector<size_t> widths;
  for (const auto& m : metrics) widths.push_back(std::max<size_t>(m.size(), 10));
  fmt::print("{} (label {}, seed {}){}\n", run.run_id, run.label, run.seed, top > 0 ? fmt::format(", top {} by {}", top, metrics.front()) : "");
  if (markdown) {
    fmt::print("| site | {} |\n|---|{}\n", fmt::join(metrics, " | "), std::string(metrics.size() * 4, '-') + "|");
    for (const auto& [name, values] : sites) {
      std::vector<std::string> cells;
      for (const auto& m : metrics) cells.push_back(cell(value(*values, m)));
      fmt::print("| {} | {} |\n", name, fmt::join(cells, " | "));
    }
  } else {
    fmt::print("{:<{}}", "site", width + 2);
    for (size_t i = 0; i < metrics.size(); ++i) fmt::print("{:>{}}", metrics[i], widths[i] + 2);
    fmt::print("\n");
    for (const auto& [name, values] : sites) {
      fmt::print("{:<{}}", name, width + 2);
      for (size_t i = 0; i < metrics.size(); ++i) fmt::print("{:>{}}", cell(value(*values, metrics[i])), widths[i] + 2);
      fmt::print("\n");
    }
  }
  fmt::print("\n");
}

}  // namespace

int show_sites(const std::string& dir, const std::string& format, const std::vector<std::string>& asked,
               int64_t top) {
  if (format != "table" && format != "markdown")
    throw config_error(fmt::format("show --sites: unknown format '{}' (valid: table, markdown)", format));
  const std::vector<SummaryRow> rows = rows_from_summary_json(read_summary_json(dir));
  size_t shown = 0;
  for (const SummaryRow& row : rows) {
    if (row.status != "complete") continue;
    const RunRecord run = read_run_summary((fs::path(dir) / "runs" / (row.run_id + ".h5")).string());
    if (run.site_metrics.empty()) continue;
    std::set<std::string> present;
    for (const auto& [site, values] : run.site_metrics)
      for (const auto& [name, v] : values) present.insert(name);
    std::vector<std::string> metrics;
    for (const std::string& m : asked.empty() ? kSiteDefaults : asked) {
      if (present.count(m)) metrics.push_back(m);
      else if (!asked.empty())
        throw config_error(fmt::format("show --sites: run {} has no site metric '{}' (valid: {})", row.run_id, m,
                                       fmt::join(present, ", ")));
    }
    if (metrics.empty()) metrics.assign(present.begin(), present.end());
    print_site_table(run, metrics, top, format == "markdown");
    ++shown;
  }
  if (!shown) fmt::print(stderr, "sqlab: no complete run in {} has per-site metrics\n", dir);
  return 0;
}

int show_results(const std::string& dir, const std::string& format, const std::vector<std::string>& asked) {
  if (format != "table" && format != "markdown" && format != "json")
    throw config_error(fmt::format("show: unknown format '{}' (valid: table, markdown, json)", format));
  const nlohmann::json summary = read_summary_json(dir);
  const std::vector<SummaryRow> rows = rows_from_summary_json(summary);
  const std::vector<std::string> metrics = choose_metrics(rows, asked);
  const auto swept = summary.value("swept_keys", std::vector<std::string>{});
  size_t failed = 0;
  for (const auto& row : rows) failed += row.status != "complete";
  if (format == "json") {
    fmt::print("{}\n", groups_json(summary, rows, metrics).dump(2));
  } else if (format == "markdown") {
    fmt::print("**{}**: mean ± standard error over seeds\n\n{}", summary.value("name", dir),
               metrics_markdown(rows, metrics, swept));
  } else {
    fmt::print("{}: mean ± standard error over seeds\n\n{}", summary.value("name", dir), metrics_table(rows, metrics));
  }
  if (failed) fmt::print(stderr, "sqlab: {} of {} runs failed and are left out (see summary.csv)\n", failed, rows.size());
  return 0;
}

}  // namespace sqlab
