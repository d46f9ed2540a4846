// Everything one run produces, as plain data: the recorder writes it to one HDF5
// file (contract.md, "Run file") and reads it back for --resume and summaries.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sqlab {

struct Trace {
  std::vector<int64_t> step;
  std::vector<double> value;
};

struct Histogram {
  std::vector<double> edges;   // B + 1
  std::vector<double> counts;  // B
};

struct RunRecord {
  std::string run_id;
  std::string label;
  std::string method;
  int64_t seed = 0;
  std::string status = "complete";  // "complete" or "failed"
  std::string error;                // message when failed
  std::string config_yaml;          // the run's resolved YAML
  std::map<std::string, std::string> attributes;  // extra root attributes
  std::map<std::string, double> metrics;
  std::map<std::string, std::map<std::string, double>> site_metrics;  // site -> name -> value
  // site -> name -> one value per channel (/sites/SITE/channels/NAME).
  std::map<std::string, std::map<std::string, std::vector<double>>> site_channels;
  std::map<std::string, Trace> traces;
  std::map<std::string, Histogram> histograms;
  // site -> factor name -> tensor (float64 on disk): the rotation's factors(), one stored form
  // per rotation type (rotations/stored_form.h: R; R1, R2; H_base, signs; blocks; source; T, T_w).
  std::map<std::string, std::map<std::string, at::Tensor>> rotations;
  std::map<std::string, double> timing;  // seconds
};

}  // namespace sqlab
