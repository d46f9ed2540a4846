// The FitLog every runner gives a method (site level and model level): traces go into
// the run record (with a "SITE." prefix when the run has several sites), metrics into the
// site's metrics, warnings into the run's `warnings` attribute and onto stderr.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "core/method.h"
#include "core/run_record.h"

namespace sqlab {

// The warnings of one run. The first few are printed; the rest only kept (a model with
// 100 sites would otherwise print the same warning 100 times per run).
class RunWarnings {
 public:
  explicit RunWarnings(std::string run_id, size_t printed = 3) : run_id_(std::move(run_id)), printed_(printed) {}
  void add(const std::string& site, const std::string& message);
  // Into the run record's `warnings` attribute (one per line), when there are any.
  void store(RunRecord& record) const;

 private:
  std::string run_id_;
  size_t printed_;
  std::vector<std::string> lines_;
};

class RecordFitLog : public FitLog {
 public:
  // `site` names the site in warnings ("" for a run of one site); `trace_prefix` goes in
  // front of trace names ("" or "SITE.").
  RecordFitLog(RunRecord& record, std::map<std::string, double>& site_metrics, std::string site,
               std::string trace_prefix, bool keep_traces, RunWarnings& warnings)
      : record_(record), site_metrics_(site_metrics), site_(std::move(site)), prefix_(std::move(trace_prefix)),
        keep_traces_(keep_traces), warnings_(warnings) {}

  void trace(const std::string& name, int64_t step, double value) override;
  void metric(const std::string& name, double value) override { site_metrics_[name] = value; }
  void warn(const std::string& message) override { warnings_.add(site_, message); }

 private:
  RunRecord& record_;
  std::map<std::string, double>& site_metrics_;
  std::string site_;
  std::string prefix_;
  bool keep_traces_;
  RunWarnings& warnings_;
};

}  // namespace sqlab
