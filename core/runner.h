// Runs an expanded experiment: validates every run before the first starts, then
// fits, evaluates and records each run, keeping going past failures.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/registries.h"
#include "core/experiment.h"
#include "core/method.h"
#include "core/summary.h"

namespace sqlab {

struct RecordOptions {
  bool histograms = true;
  bool traces = true;
  bool rotations = false;
  int histogram_bins = 128;
};

// One run with its plugins built from the run's configuration.
struct PreparedRun {
  const RunSpec* spec = nullptr;
  std::string data_source;
  std::unique_ptr<Dataset> dataset;
  std::unique_ptr<RotationMethod> method;
  QuantConfig quant;
  RecordOptions record;
  double outlier_token_threshold = 10.0;  // data.outlier_token_threshold
  std::string data_key;  // equal keys load equal data (cache)
};

// Reads the run's configuration through the registries; config errors name the
// experiment file, the line and the key.
PreparedRun prepare_run(const Experiment& experiment, const RunSpec& run, const Registries& registries);

// prepare_run for every run, and each distinct data source validated once: all
// configuration errors surface before the first run starts.
std::vector<PreparedRun> prepare_all(const Experiment& experiment, const Registries& registries);

struct RunnerOptions {
  std::string out_dir;
  bool resume = false;
  // Run only the runs whose position i satisfies i % shard_count == shard_index, so
  // N machines (a SLURM array, say) share one sweep; `sqlab merge` joins the pieces.
  int64_t shard_index = 0;
  int64_t shard_count = 1;
  bool progress = true;  // on a terminal only (the caller decides)
};

struct RunnerResult {
  std::vector<SummaryRow> rows;
  int exit_code = 0;  // 0 all complete, 1 a run failed, 130 interrupted
};

RunnerResult run_experiment(const Experiment& experiment, const Registries& registries,
                            const RunnerOptions& options);

}  // namespace sqlab
