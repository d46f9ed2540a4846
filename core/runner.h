// Runs an expanded experiment: validates every run before the first starts, then
// fits, evaluates and records each run, keeping going past failures.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/experiment.h"
#include "core/method.h"
#include "core/progress.h"
#include "core/registries.h"
#include "core/run_record.h"
#include "core/summary.h"

namespace sqlab {

struct RecordOptions {
  bool histograms = true;
  bool traces = true;
  bool rotations = false;
  int histogram_bins = 128;
  // Output-error metrics on the first N tokens only (0: all). The rotation is still built
  // from every token and fused into the whole W; at 7B shapes the three T x C_out products
  // of every site would otherwise dominate a pass (experiments/bench_llama2_7b_shapes.yaml).
  int64_t eval_tokens = 0;
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
  // data.device: where the site's tensors go for the build and the evaluation ("cpu",
  // "cuda", "cuda:N"; CUDA needs a CUDA build, README "LibTorch 2.x and CUDA builds").
  std::string device = "cpu";
  std::string data_key;  // equal keys load equal data (cache)
  // Model-level run (the experiment has `model:`): its plan; no dataset then.
  std::shared_ptr<const ModelRunPlan> model;
  // The results directory (set by run_experiment): model-level runs keep their
  // full-precision numbers under cache/ there, for --resume and later runs.
  std::string results_dir;
};

// Reads the run's configuration through the registries; config errors name the
// experiment file, the line and the key.
PreparedRun prepare_run(const Experiment& experiment, const RunSpec& run, const Registries& registries);

// A run file's record with the run's identity and resolved configuration filled in (the
// site-level runner and the model-level backend fill in the rest).
RunRecord new_run_record(const RunSpec& spec);

// Closes a run's /timing, whose stages are disjoint: `unattributed` = total minus the sum of
// the stages recorded (what no stage measured), then `total`.
void finish_timing(RunRecord& record, double total_seconds);

// For load_experiment: prepare_run as the check of the first sweep point's runs.
RunCheck prepare_check(const Registries& registries);

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
  ProgressMode progress = ProgressMode::off;  // the caller decides (core/progress.h)
  bool fail_fast = false;  // stop at the first failed run (default: keep going)
  // `sqlab run --jobs N` (app/run_jobs.cpp): worker W of N runs every N-th run of its shard,
  // leaves the directory to the parent (which prepared it) and writes its summaries to
  // `summary_dir`; the parent joins them in the runs' order.
  int64_t worker_index = 0;
  int64_t worker_count = 1;
  std::string summary_dir;  // empty: out_dir
};

struct RunnerResult {
  std::vector<SummaryRow> rows;
  int exit_code = 0;  // 0 all complete, 1 a run failed, 128 + signal when interrupted (130, 143)
};

RunnerResult run_experiment(const Experiment& experiment, const Registries& registries,
                            const RunnerOptions& options);

// Creates OUT/runs, removes run files left half-written (*.tmp) and writes OUT/config.yaml.
void prepare_results_directory(const Experiment& experiment, const std::string& out_dir);

// A device key (data.device, model.device): "cpu", "cuda" or "cuda:N"; CUDA only when this
// sqlab's LibTorch has it (a configuration error naming the key otherwise).
std::string parse_device(ConfigReader& reader, const std::string& key);

}  // namespace sqlab
