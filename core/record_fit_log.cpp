#include "core/record_fit_log.h"

#include <fmt/format.h>

namespace sqlab {

void RunWarnings::add(const std::string& site, const std::string& message) {
  const std::string line = site.empty() ? message : site + ": " + message;
  lines_.push_back(line);
  if (lines_.size() <= printed_) fmt::print(stderr, "warning: {} {}\n", run_id_, line);
  if (lines_.size() == printed_ + 1)
    fmt::print(stderr, "warning: {}: further warnings are kept in its run file (attribute `warnings`)\n", run_id_);
}

void RunWarnings::store(RunRecord& record) const {
  if (!lines_.empty()) record.attributes["warnings"] = fmt::format("{}", fmt::join(lines_, "\n"));
}

void RecordFitLog::trace(const std::string& name, int64_t step, double value) {
  if (!keep_traces_) return;
  Trace& t = record_.traces[prefix_ + name];
  t.step.push_back(step);
  t.value.push_back(value);
}

}  // namespace sqlab
