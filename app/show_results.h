// `sqlab show RESULTS_DIR [--format table|markdown|json] [--metric NAME]...`: the grouped
// summary of a results directory (mean ± standard error over seeds per label and sweep
// point), read from its summary.json, for the terminal or a paper draft.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sqlab {

// Prints the summary of `dir` on stdout; returns the exit code. Throws config errors
// (exit 2) for a missing summary.json, an unknown format or an unknown metric.
int show_results(const std::string& dir, const std::string& format, const std::vector<std::string>& metrics);

// `sqlab show RESULTS_DIR --sites`: per complete run, one row per site with its per-site
// metrics (default: where the largest activation is, its ratio to the median, kurtosis,
// ART's detections); `top` > 0 keeps the largest `top` sites by the first metric.
int show_sites(const std::string& dir, const std::string& format, const std::vector<std::string>& metrics,
               int64_t top);

}  // namespace sqlab
