// summary.csv / summary.json of a results directory, and the table `sqlab run` prints.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace sqlab {

struct SummaryRow {
  std::string run_id;
  std::string label;
  std::string method;
  int64_t seed = 0;
  std::string status;  // complete | failed
  std::string error;
  std::vector<std::pair<std::string, std::string>> point;  // swept key -> value
  std::map<std::string, double> metrics;
};

// Mean and standard error over the seeds of one (label, sweep point).
struct SummaryGroup {
  std::string label;
  std::vector<std::pair<std::string, std::string>> point;
  int64_t runs = 0;
  std::map<std::string, std::pair<double, double>> metrics;  // name -> (mean, stderr)
};

std::vector<SummaryGroup> group_rows(const std::vector<SummaryRow>& rows);

// DIR/summary.json; a config error naming the directory when there is none readable.
nlohmann::json read_summary_json(const std::string& dir);
// Its runs back into rows (null metrics, written for NaN, come back as NaN).
std::vector<SummaryRow> rows_from_summary_json(const nlohmann::json& summary);
// read_summary_json then rows_from_summary_json.
std::vector<SummaryRow> read_summary_rows(const std::string& dir);

// Columns: run_id, label, method, seed, status, each swept key, each metric, error.
std::string summary_csv(const std::vector<SummaryRow>& rows, const std::vector<std::string>& swept_keys);
nlohmann::json summary_json(const std::string& name, const std::vector<SummaryRow>& rows,
                            const std::vector<std::string>& swept_keys);
// The metrics a table shows when none are asked for, in this order, among those the
// rows have: the overall output error, its outlier-token / other-token split, ppl, ...
std::vector<std::string> headline_metrics(const std::vector<SummaryRow>& rows);
// A fixed-width table of `metrics` (mean ± stderr) per group, for the terminal.
std::string metrics_table(const std::vector<SummaryRow>& rows, const std::vector<std::string>& metrics);
// The same as a Markdown table (label, each swept key, runs, metrics), for a paper draft.
std::string metrics_markdown(const std::vector<SummaryRow>& rows, const std::vector<std::string>& metrics,
                             const std::vector<std::string>& swept_keys);

}  // namespace sqlab
