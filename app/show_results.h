// `sqlab show RESULTS_DIR [--format table|markdown|json] [--metric NAME]...`: the grouped
// summary of a results directory (mean ± standard error over seeds per label and sweep
// point), read from its summary.json, for the terminal or a paper draft.
#pragma once

#include <string>
#include <vector>

namespace sqlab {

// Prints the summary of `dir` on stdout; returns the exit code. Throws config errors
// (exit 2) for a missing summary.json, an unknown format or an unknown metric.
int show_results(const std::string& dir, const std::string& format, const std::vector<std::string>& metrics);

}  // namespace sqlab
