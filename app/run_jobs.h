// `sqlab run --jobs N`: independent runs of one experiment in N worker processes on one
// machine, joined into one results directory whose summaries equal a serial run's.
//
// Why processes and not threads: LibTorch's intra-op thread count (at::set_num_threads) and
// OpenMP's team are global to a process, so threads could not each get their share of the
// cores; Debian's HDF5 is the serial (not thread-safe) build, and every run writes an HDF5
// file; and Ctrl-C handling, tcmalloc arenas and BLAS state stay per process. Each worker is
// this same binary (`/proc/self/exe run ... --worker W/N`) with SQLAB_THREADS = max(1,
// threads / N), running every N-th run of the (shard's) list into the shared OUT/runs (run
// ids are distinct, run files are written under a temporary name and renamed) and writing
// its own summaries under OUT/.jobs/worker-W; the parent then writes OUT/summary.{csv,json}
// from those rows in the experiment's run order and removes OUT/.jobs.
#pragma once

#include <string>
#include <vector>

#include "core/experiment.h"
#include "core/registries.h"
#include "core/runner.h"

namespace sqlab {

// Where worker W writes its summaries.
std::string worker_summary_dir(const std::string& out_dir, int64_t worker);

// Runs `experiment` in `jobs` workers. `worker_args` are the `sqlab` arguments every worker
// gets (`run EXPERIMENT --out OUT [--set ...] [--shard K/N] [--resume] [--fail-fast]`);
// `--worker W/N` is appended. `options` are the parent's (out_dir, shard, ...).
RunnerResult run_jobs(const Experiment& experiment, const Registries& registries,
                      const RunnerOptions& options, int jobs, const std::vector<std::string>& worker_args);

}  // namespace sqlab
