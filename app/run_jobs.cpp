#include "app/run_jobs.h"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <thread>

#include "core/error.h"
#include "core/summary.h"
#include "core/system.h"

namespace sqlab {
namespace fs = std::filesystem;
namespace {

struct Worker {
  pid_t pid = -1;
  int status = 0;  // waitpid's
  bool done = false;
};

// fork + exec of this binary with `args`; the child gets its own process group (the parent
// forwards Ctrl-C exactly once, see wait_all), stdout on /dev/null (the parent prints the
// table) and SQLAB_THREADS = threads.
pid_t spawn_worker(const std::vector<std::string>& args, int threads) {
  std::vector<char*> argv;
  static const std::string self = "sqlab";
  argv.push_back(const_cast<char*>(self.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const std::string thread_text = std::to_string(threads);
  const pid_t pid = fork();
  if (pid < 0) throw Error(fmt::format("run --jobs: cannot start a worker process: fork failed"));
  if (pid == 0) {
    setpgid(0, 0);
    const int null_fd = open("/dev/null", O_WRONLY);
    if (null_fd >= 0) dup2(null_fd, STDOUT_FILENO);
    setenv("SQLAB_THREADS", thread_text.c_str(), 1);
    setenv("OMP_NUM_THREADS", thread_text.c_str(), 1);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for every worker; a signal that reached the parent (Ctrl-C, SIGTERM) is passed on
// once, so each worker finishes its current run and stops as a serial run would.
void wait_all(std::vector<Worker>& workers) {
  bool forwarded = false;
  for (size_t alive = workers.size(); alive > 0;) {
    if (interrupted() && !forwarded) {
      for (const Worker& w : workers)
        if (!w.done) kill(w.pid, interrupt_signal());
      forwarded = true;
    }
    for (Worker& w : workers) {
      if (w.done) continue;
      if (waitpid(w.pid, &w.status, WNOHANG) == w.pid) {
        w.done = true;
        --alive;
      }
    }
    if (alive > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string describe_end(const Worker& w) {
  if (WIFSIGNALED(w.status)) return fmt::format("was killed by signal {}", WTERMSIG(w.status));
  return fmt::format("exited with code {}", WEXITSTATUS(w.status));
}

// A worker that ended by itself (0: all complete, 1: a run failed) wrote a row for every run
// it reached; any other end (a crash, the OOM killer, exit 2) leaves runs without one.
bool ended_normally(const Worker& w) {
  return WIFEXITED(w.status) && (WEXITSTATUS(w.status) == 0 || WEXITSTATUS(w.status) == 1);
}

std::map<std::string, SummaryRow> worker_rows(const std::string& dir) {
  std::map<std::string, SummaryRow> rows;
  if (!fs::exists(fs::path(dir) / "summary.json")) return rows;
  for (SummaryRow& row : read_summary_rows(dir)) rows[row.run_id] = std::move(row);
  return rows;
}

}  // namespace

std::string worker_summary_dir(const std::string& out_dir, int64_t worker) {
  return (fs::path(out_dir) / ".jobs" / fmt::format("worker-{}", worker)).string();
}

RunnerResult run_jobs(const Experiment& ex, const Registries& registries, const RunnerOptions& options,
                      int jobs, const std::vector<std::string>& worker_args) {
  prepare_all(ex, registries);  // every configuration error before any worker starts
  // The runs of this shard, in order; worker W takes positions W, W + N, ...
  std::vector<const RunSpec*> runs;
  for (size_t i = 0; i < ex.runs.size(); ++i)
    if (static_cast<int64_t>(i) % options.shard_count == options.shard_index) runs.push_back(&ex.runs[i]);
  jobs = std::max(1, std::min<int>(jobs, static_cast<int>(runs.size())));

  prepare_results_directory(ex, options.out_dir);
  fs::remove_all(fs::path(options.out_dir) / ".jobs");
  for (int w = 0; w < jobs; ++w) fs::create_directories(worker_summary_dir(options.out_dir, w));
  const int threads = std::max(1, at::get_num_threads() / jobs);
  fmt::print(stderr, "sqlab: {} runs in {} worker processes, {} thread{} each\n", runs.size(), jobs, threads,
             threads == 1 ? "" : "s");

  std::vector<Worker> workers(jobs);
  for (int w = 0; w < jobs; ++w) {
    std::vector<std::string> args = worker_args;
    args.insert(args.end(), {"--worker", fmt::format("{}/{}", w, jobs)});
    workers[w].pid = spawn_worker(args, threads);
  }
  wait_all(workers);

  std::vector<std::map<std::string, SummaryRow>> rows_of(jobs);
  for (int w = 0; w < jobs; ++w) rows_of[w] = worker_rows(worker_summary_dir(options.out_dir, w));
  RunnerResult result;
  for (size_t j = 0; j < runs.size(); ++j) {
    const Worker& worker = workers[j % jobs];
    auto& rows = rows_of[j % jobs];
    auto it = rows.find(runs[j]->run_id);
    if (it != rows.end()) {
      result.rows.push_back(it->second);
    } else if (!ended_normally(worker) && !interrupted()) {
      // Not reached (an interrupted or --fail-fast worker leaves the rest out, as a serial run).
      SummaryRow row;
      row.run_id = runs[j]->run_id;
      row.label = runs[j]->label;
      row.method = runs[j]->method;
      row.seed = runs[j]->seed;
      row.point = runs[j]->point;
      row.status = "failed";
      row.error = fmt::format("worker {} of --jobs {} {} before this run finished", j % jobs, jobs,
                              describe_end(worker));
      result.rows.push_back(row);
    }
  }
  for (const SummaryRow& row : result.rows)
    if (row.status != "complete") result.exit_code = 1;
  const fs::path out(options.out_dir);
  write_file_atomic((out / "summary.csv").string(), summary_csv(result.rows, ex.swept_keys));
  write_file_atomic((out / "summary.json").string(), summary_json(ex.name, result.rows, ex.swept_keys).dump(2) + "\n");
  std::error_code ec;
  fs::remove_all(out / ".jobs", ec);
  if (interrupted()) result.exit_code = 128 + interrupt_signal();
  for (const Worker& w : workers)  // a worker stopped by a signal sent to it alone
    if (WIFEXITED(w.status) && WEXITSTATUS(w.status) > 128 && result.exit_code < 128)
      result.exit_code = WEXITSTATUS(w.status);
  return result;
}

}  // namespace sqlab
