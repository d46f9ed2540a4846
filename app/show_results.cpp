#include "app/show_results.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "core/error.h"
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

}  // namespace

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
