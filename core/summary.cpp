#include "core/summary.h"

#include "core/error.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

namespace sqlab {
namespace {

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::string point_value(const SummaryRow& row, const std::string& key) {
  for (const auto& [k, v] : row.point)
    if (k == key) return v;
  return "";
}

std::vector<std::string> metric_names(const std::vector<SummaryRow>& rows) {
  std::set<std::string> names;
  for (const auto& row : rows)
    for (const auto& [name, value] : row.metrics) names.insert(name);
  return {names.begin(), names.end()};
}

// "methods.art.outlier_threshold" -> "outlier_threshold", for narrow tables.
std::string last_part(const std::string& dotted) {
  const size_t dot = dotted.rfind('.');
  return dot == std::string::npos ? dotted : dotted.substr(dot + 1);
}

// A swept value as a table shows it: a file path by its file name (eval.text sweeps).
std::string shown_value(const std::string& value) {
  const size_t slash = value.rfind('/');
  return slash == std::string::npos || slash + 1 == value.size() ? value : value.substr(slash + 1);
}

// mean ± stderr; a standard error that is rounding noise of a deterministic method's
// mean (1e-15 of it) shows as 0.
std::string mean_pm_stderr(double mean, double stderr_) {
  if (std::abs(stderr_) < 1e-12 * std::abs(mean)) stderr_ = 0.0;
  return fmt::format("{:.4g} ± {:.2g}", mean, stderr_);
}

nlohmann::json point_json(const std::vector<std::pair<std::string, std::string>>& point) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : point) j[k] = v;
  return j;
}

// JSON has no NaN or infinity: write them as null.
nlohmann::json number_json(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
}

}  // namespace

nlohmann::json read_summary_json(const std::string& dir) {
  const std::string path = dir + "/summary.json";
  std::ifstream in(path);
  if (!in) throw config_error(fmt::format("{}: no summary.json (is this a sqlab results directory?)", dir));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw config_error(fmt::format("{}: unreadable: {}", path, e.what()));
  }
}

std::vector<SummaryRow> rows_from_summary_json(const nlohmann::json& summary) {
  std::vector<SummaryRow> rows;
  for (const auto& r : summary.value("runs", nlohmann::json::array())) {
    SummaryRow row;
    row.run_id = r.value("run_id", "");
    row.label = r.value("label", "");
    row.method = r.value("method", "");
    row.seed = r.value("seed", int64_t{0});
    row.status = r.value("status", "");
    row.error = r.value("error", "");
    // Named copies: items() of a temporary would dangle inside the range-for.
    const nlohmann::json point = r.value("point", nlohmann::json::object());
    const nlohmann::json metrics = r.value("metrics", nlohmann::json::object());
    for (const auto& [key, value] : point.items())
      row.point.emplace_back(key, value.is_string() ? value.get<std::string>() : value.dump());
    for (const auto& [key, value] : metrics.items())
      row.metrics[key] = value.is_number() ? value.get<double>() : std::numeric_limits<double>::quiet_NaN();
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<SummaryRow> read_summary_rows(const std::string& dir) {
  return rows_from_summary_json(read_summary_json(dir));
}

std::vector<SummaryGroup> group_rows(const std::vector<SummaryRow>& rows) {
  std::vector<SummaryGroup> groups;
  std::map<std::string, std::map<std::string, std::vector<double>>> samples;
  for (const auto& row : rows) {
    if (row.status != "complete") continue;
    const std::string key = row.label + "|" + point_json(row.point).dump();
    if (!samples.count(key)) groups.push_back({row.label, row.point, 0, {}});
    for (const auto& [name, value] : row.metrics) samples[key][name].push_back(value);
    for (auto& g : groups)
      if (g.label + "|" + point_json(g.point).dump() == key) ++g.runs;
  }
  for (auto& g : groups) {
    for (const auto& [name, values] : samples[g.label + "|" + point_json(g.point).dump()]) {
      double mean = 0.0;
      for (double v : values) mean += v;
      mean /= values.size();
      double var = 0.0;
      for (double v : values) var += (v - mean) * (v - mean);
      const double n = static_cast<double>(values.size());
      const double stderr_ = n > 1 ? std::sqrt(var / (n - 1) / n) : 0.0;
      g.metrics[name] = {mean, stderr_};
    }
  }
  return groups;
}

std::string summary_csv(const std::vector<SummaryRow>& rows, const std::vector<std::string>& swept_keys) {
  const auto metrics = metric_names(rows);
  std::ostringstream out;
  out << "run_id,label,method,seed,status";
  for (const auto& key : swept_keys) out << "," << csv_field(key);
  for (const auto& name : metrics) out << "," << csv_field(name);
  out << ",error\n";
  for (const auto& row : rows) {
    out << csv_field(row.run_id) << "," << csv_field(row.label) << "," << csv_field(row.method) << ","
        << row.seed << "," << row.status;
    for (const auto& key : swept_keys) out << "," << csv_field(point_value(row, key));
    for (const auto& name : metrics) {
      auto it = row.metrics.find(name);
      out << "," << (it == row.metrics.end() ? "" : fmt::format("{:.10g}", it->second));
    }
    out << "," << csv_field(row.error) << "\n";
  }
  return out.str();
}

nlohmann::json summary_json(const std::string& name, const std::vector<SummaryRow>& rows,
                            const std::vector<std::string>& swept_keys) {
  nlohmann::json j;
  j["name"] = name;
  j["swept_keys"] = swept_keys;
  j["runs"] = nlohmann::json::array();
  for (const auto& row : rows) {
    nlohmann::json r{{"run_id", row.run_id}, {"label", row.label}, {"method", row.method},
                     {"seed", row.seed}, {"status", row.status}, {"point", point_json(row.point)}};
    if (!row.error.empty()) r["error"] = row.error;
    r["metrics"] = nlohmann::json::object();
    for (const auto& [k, v] : row.metrics) r["metrics"][k] = number_json(v);
    j["runs"].push_back(r);
  }
  j["groups"] = nlohmann::json::array();
  for (const auto& g : group_rows(rows)) {
    nlohmann::json gj{{"label", g.label}, {"point", point_json(g.point)}, {"runs", g.runs}};
    gj["metrics"] = nlohmann::json::object();
    for (const auto& [k, ms] : g.metrics)
      gj["metrics"][k] = {{"mean", number_json(ms.first)}, {"stderr", number_json(ms.second)}};
    j["groups"].push_back(gj);
  }
  return j;
}

std::vector<std::string> headline_metrics(const std::vector<SummaryRow>& rows) {
  // The seconds are the quantization pass (build + fuse + quantize: the paper's Table 5) and
  // the evaluation around it, apart.
  // The split follows the overall error: one error over all tokens hides what a method
  // does for the few tokens that carry massive outliers.
  static const std::vector<std::string> kHeadline = {
      "rel_output_error", "rel_output_error_outlier_tokens", "rel_output_error_other_tokens", "ppl", "ppl_fp", "sqnr_db",
      "act_absmax", "act_kurtosis", "zero_shot_acc", "zero_shot_acc_fp", "quantization_pass_seconds",
      "evaluation_seconds"};
  std::set<std::string> present;
  for (const auto& row : rows)
    for (const auto& [name, value] : row.metrics) present.insert(name);
  std::vector<std::string> chosen;
  for (const auto& name : kHeadline) {
    if (name == "zero_shot_acc")  // each zero-shot task's acc (eval.tasks: TASK.acc), then their mean
      for (const auto& metric : present)
        if (metric.size() > 4 && metric.compare(metric.size() - 4, 4, ".acc") == 0) chosen.push_back(metric);
    if (present.count(name)) chosen.push_back(name);
  }
  return chosen;
}

std::string metrics_table(const std::vector<SummaryRow>& rows, const std::vector<std::string>& metrics) {
  const auto groups = group_rows(rows);
  std::vector<std::string> names;
  size_t width = 5;
  for (const auto& g : groups) {
    std::string name = g.label;
    for (const auto& [k, v] : g.point) name += fmt::format(" {}={}", last_part(k), shown_value(v));
    width = std::max(width, name.size());
    names.push_back(name);
  }
  std::vector<size_t> column;  // each metric's column: its name or 24, whichever is wider
  for (const auto& m : metrics) column.push_back(std::max<size_t>(24, m.size()));
  std::ostringstream out;
  out << fmt::format("{:<{}}  {:>4}", "label", width, "runs");
  for (size_t j = 0; j < metrics.size(); ++j) out << fmt::format("  {:>{}}", metrics[j], column[j]);
  out << "\n";
  for (size_t i = 0; i < groups.size(); ++i) {
    out << fmt::format("{:<{}}  {:>4}", names[i], width, groups[i].runs);
    for (size_t j = 0; j < metrics.size(); ++j) {
      auto it = groups[i].metrics.find(metrics[j]);
      const std::string cell = it == groups[i].metrics.end()
                                   ? "-"
                                   : mean_pm_stderr(it->second.first, it->second.second);
      // "±" is two bytes and one column: pad by display width, not by bytes.
      const size_t shown = cell.size() - (it == groups[i].metrics.end() ? 0 : 1);
      out << std::string(2 + (column[j] > shown ? column[j] - shown : 0), ' ') << cell;
    }
    out << "\n";
  }
  return out.str();
}

std::string metrics_markdown(const std::vector<SummaryRow>& rows, const std::vector<std::string>& metrics,
                             const std::vector<std::string>& swept_keys) {
  // '|' inside a cell would end it early.
  auto cell = [](std::string text) {
    for (size_t at = text.find('|'); at != std::string::npos; at = text.find('|', at + 2)) text.replace(at, 1, "\\|");
    return text;
  };
  std::ostringstream out;
  out << "| label |";
  for (const auto& key : swept_keys) out << " " << cell(last_part(key)) << " |";
  out << " runs |";
  for (const auto& m : metrics) out << " " << cell(m) << " |";
  out << "\n|---|";
  for (size_t i = 0; i < swept_keys.size(); ++i) out << "---|";
  out << "---:|";
  for (size_t i = 0; i < metrics.size(); ++i) out << "---:|";
  out << "\n";
  for (const auto& g : group_rows(rows)) {
    out << "| " << cell(g.label) << " |";
    for (const auto& key : swept_keys) {
      std::string value = "";
      for (const auto& [k, v] : g.point)
        if (k == key) value = v;
      out << " " << cell(value) << " |";
    }
    out << " " << g.runs << " |";
    for (const auto& m : metrics) {
      auto it = g.metrics.find(m);
      out << " " << (it == g.metrics.end() ? "-" : mean_pm_stderr(it->second.first, it->second.second))
          << " |";
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace sqlab
