// Reliability (issue #8): a sweep that is killed at random moments never leaves a number
// that looks valid and is not, and `--resume` finishes exactly what is missing; a sweep
// whose runs fail keeps going (or stops with --fail-fast).
//
// KillTest.RandomKillsNeverLeaveAHalfWrittenResult starts `sqlab run --resume` on one
// results directory again and again and stops it at a random moment, with SIGKILL
// (mostly), SIGINT or SIGTERM. After every stop it checks the whole directory:
//  - runs/ holds only RUN_ID.h5 and RUN_ID.h5.tmp files; every .h5 opens, says
//    `status: complete` and holds every group of the contract's run file (attributes,
//    /config, /metrics, /traces, /histograms, /rotations, /timing);
//  - summary.csv and summary.json parse whole, and every run they list as complete has
//    a complete file;
//  - SIGINT exits 130 and SIGTERM 143 (or 0 when the sweep had finished, or death by
//    the signal when it came before the handlers were installed, during start-up).
// Then one last `--resume` must rewrite none of the complete files and complete every
// other run. SQLAB_KILLS (default 5; `make stress`: 100) sets the number of stops,
// SQLAB_KILL_SEED the random moments (printed, so a failure can be replayed).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "core/recorder.h"
#include "core/summary.h"
#include "tests/reliability_util.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {
namespace fs = std::filesystem;
using testing::Child;
using testing::read_text;
using testing::TempDir;
using testing::write_text;

constexpr double kHangGuardSeconds = 120;  // a stop that never ends is a failure, not slowness

int env_int(const char* name, int fallback) {
  const char* text = std::getenv(name);
  return text && *text ? std::atoi(text) : fallback;
}

// Many short runs whose files have every optional group (traces from cayley_sgd,
// histograms, rotations), so that a kill often lands inside a write. `seeds` scales the
// sweep with the number of kills so that it does not finish before the last one.
std::string sweep_yaml(int seeds) {
  return "name: killme\n"
         "seeds: " + std::to_string(seeds) + "\n"
         "data: {source: synthetic, tokens: 256, channels: 256, massive: {count: 1, magnitude: 300}}\n"
         "methods:\n"
         "  - {label: rtn, method: identity}\n"
         "  - {label: rot, method: random_orthogonal}\n"
         "  - {label: had, method: hadamard}\n"
         "  - {label: sgd, method: cayley_sgd, steps: 3}\n"
         "sweep: {grid: {quant.a_bits: [4, 8]}}\n"
         "record: {rotations: true, histogram_bins: 16}\n";
}

// The run ids `sqlab run --dry-run --json` lists.
std::set<std::string> planned_runs(const fs::path& dir) {
  Child dry(dir, {"run", "killme.yaml", "--dry-run", "--json"}, "dry");
  EXPECT_TRUE(dry.wait(kHangGuardSeconds));
  EXPECT_EQ(dry.exit_code(), 0) << dry.err();
  std::set<std::string> ids;
  const nlohmann::json listed = nlohmann::json::parse(dry.out());
  for (const auto& run : listed["runs"]) ids.insert(run["run_id"].get<std::string>());
  return ids;
}

// Every group the contract's "Run file" lists, for this experiment's record: options.
void expect_whole_run_file(const fs::path& file, const std::string& when) {
  SCOPED_TRACE(when + ": " + file.filename().string());
  ASSERT_TRUE(run_file_complete(file.string())) << "a .h5 that is not complete";
  RunRecord r;
  try {
    r = read_run_file(file.string());
  } catch (const std::exception& e) {
    FAIL() << "does not read back: " << e.what();
  }
  EXPECT_EQ(r.status, "complete");
  EXPECT_EQ(r.run_id, file.stem().string());
  EXPECT_FALSE(r.label.empty());
  EXPECT_FALSE(r.method.empty());
  for (const char* attr : {"sqlab_version", "git_sha", "created"}) EXPECT_TRUE(r.attributes.count(attr)) << attr;
  EXPECT_NE(r.config_yaml.find("method:"), std::string::npos);
  for (const char* metric : {"rel_output_error", "sqnr_db", "act_mse", "weight_mse", "act_kurtosis"})
    EXPECT_TRUE(r.metrics.count(metric)) << metric;
  for (const char* timing : {"load", "build", "apply", "total"}) EXPECT_TRUE(r.timing.count(timing)) << timing;
  ASSERT_TRUE(r.histograms.count("act_after"));
  EXPECT_EQ(r.histograms.at("act_after").counts.size(), 16u);
  EXPECT_EQ(r.histograms.at("act_before").edges.size(), 17u);
  ASSERT_EQ(r.rotations.count("layer0"), 1u);
  EXPECT_FALSE(r.rotations.at("layer0").empty());
  if (r.method == "cayley_sgd") {
    ASSERT_TRUE(r.traces.count("loss"));
    EXPECT_EQ(r.traces.at("loss").value.size(), 3u);
  }
}

// summary.csv: header + one whole line per row, each with the header's column count.
// Returns run_id -> status.
std::map<std::string, std::string> read_csv_status(const fs::path& file, const std::string& when) {
  std::map<std::string, std::string> status;
  const std::string text = read_text(file.string());
  EXPECT_FALSE(text.empty()) << when << ": empty summary.csv";
  if (text.empty()) return status;
  EXPECT_EQ(text.back(), '\n') << when << ": summary.csv does not end with a newline (truncated)";
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line.rfind("run_id,label,method,seed,status", 0), 0u) << when << ": " << line;
  const auto columns = std::count(line.begin(), line.end(), ',');
  while (std::getline(in, line)) {
    EXPECT_EQ(std::count(line.begin(), line.end(), ','), columns) << when << ": short row " << line;
    std::vector<std::string> fields;
    std::stringstream row(line);
    for (std::string field; std::getline(row, field, ',');) fields.push_back(field);
    if (fields.size() >= 5) status[fields[0]] = fields[4];
  }
  return status;
}

struct DirectoryState {
  std::map<std::string, ino_t> complete;  // run id -> inode of its .h5
  int tmp_files = 0;
};

// Everything a stop may leave, checked; returns the complete files and .tmp count.
DirectoryState check_results(const fs::path& out, const std::set<std::string>& planned, const std::string& when) {
  DirectoryState state;
  if (!fs::exists(out / "runs")) return state;
  for (const auto& entry : fs::directory_iterator(out / "runs")) {
    const std::string name = entry.path().filename().string();
    const bool is_tmp = name.size() > 7 && name.compare(name.size() - 7, 7, ".h5.tmp") == 0;
    if (is_tmp) {
      ++state.tmp_files;
      continue;
    }
    if (entry.path().extension() != ".h5") {
      ADD_FAILURE() << when << ": unexpected file " << name;
      continue;
    }
    EXPECT_TRUE(planned.count(entry.path().stem().string())) << when << ": unplanned run " << name;
    expect_whole_run_file(entry.path(), when);
    struct stat st {};
    EXPECT_EQ(stat(entry.path().c_str(), &st), 0);
    state.complete[entry.path().stem().string()] = st.st_ino;
  }
  if (fs::exists(out / "summary.csv")) {
    for (const auto& [id, status] : read_csv_status(out / "summary.csv", when)) {
      EXPECT_TRUE(planned.count(id)) << when << ": summary.csv lists an unplanned run " << id;
      if (status == "complete")
        EXPECT_TRUE(state.complete.count(id)) << when << ": summary.csv lists " << id
                                              << " as complete but its file is not";
      else
        ADD_FAILURE() << when << ": run " << id << " has status " << status;
    }
  }
  if (fs::exists(out / "summary.json")) {
    nlohmann::json summary;
    try {
      summary = nlohmann::json::parse(read_text((out / "summary.json").string()));
    } catch (const std::exception& e) {
      ADD_FAILURE() << when << ": summary.json does not parse (truncated?): " << e.what();
      return state;
    }
    for (const auto& run : summary["runs"])
      if (run["status"] == "complete") {
        EXPECT_TRUE(state.complete.count(run["run_id"].get<std::string>()))
            << when << ": summary.json lists " << run["run_id"] << " as complete but its file is not";
      }
  }
  return state;
}

size_t count_files(const fs::path& dir, const std::string& extension) {
  size_t n = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    n += it->path().extension() == extension;
  return n;
}

// The signal of stop k: mostly SIGKILL (nothing can clean up), some SIGINT and SIGTERM.
int signal_of(int k) {
  switch (k % 5) {
    case 1: return SIGINT;
    case 3: return SIGTERM;
    default: return SIGKILL;
  }
}

TEST(KillTest, RandomKillsNeverLeaveAHalfWrittenResult) {
  const int kills = std::max(1, env_int("SQLAB_KILLS", 5));
  const unsigned seed = static_cast<unsigned>(env_int("SQLAB_KILL_SEED", static_cast<int>(std::random_device{}() >> 1)));
  std::cerr << "[ kill test ] " << kills << " stops, SQLAB_KILL_SEED=" << seed << "\n";
  std::mt19937 rng(seed);
  TempDir dir;
  // 8 runs per seed, a seed per stop: each stop finds work to interrupt (a stop inside
  // the runs lets 1-3 finish) and the final --resume has some left to do.
  write_text(dir.file("killme.yaml"), sweep_yaml(std::max(4, kills)));
  const auto dry_start = std::chrono::steady_clock::now();
  const std::set<std::string> planned = planned_runs(dir.path());
  // A dry run is sqlab's start-up and validation: the scale of "any moment" below.
  const double startup = std::chrono::duration<double>(std::chrono::steady_clock::now() - dry_start).count();
  ASSERT_FALSE(planned.empty());
  const fs::path out = dir.path() / "out";

  // When to stop: sqlab's start-up alone takes 0.7 s to many seconds on a loaded
  // machine, so most stops follow the sweep's progress rather than the clock.
  std::uniform_int_distribution<int> mode_of(0, 4);
  std::uniform_int_distribution<int> files_of(1, 3);
  std::uniform_real_distribution<double> from_start(0.0, 1.5 * startup), in_run(0.0, 0.08), in_write(0.0, 0.004);
  int stops_with_tmp = 0, finished_early = 0;
  std::map<int, int> by_signal;
  for (int k = 0; k < kills; ++k) {
    const int sig = signal_of(k);
    const std::string when = "stop " + std::to_string(k + 1) + " (" + strsignal(sig) + ")";
    const size_t done_before = count_files(out / "runs", ".h5");
    Child child(dir.path(), {"run", "killme.yaml", "--out", "out", "--resume"}, "sweep");
    ASSERT_TRUE(child.started());
    const auto start = std::chrono::steady_clock::now();
    const int mode = mode_of(rng);
    double delay = 0;
    std::function<bool()> ready;
    if (mode == 0) {  // any moment: start-up, the --resume scan, a run
      delay = from_start(rng);
      ready = [&] { return std::chrono::steady_clock::now() - start > std::chrono::duration<double>(delay); };
    } else if (mode == 1) {  // while a run file is being written (after the stale .tmp is cleaned)
      delay = in_write(rng);
      ready = [&, cleaned = count_files(out / "runs", ".tmp") == 0]() mutable {
        const size_t tmp = count_files(out / "runs", ".tmp");
        if (!cleaned) cleaned = tmp == 0;
        return cleaned && tmp > 0;
      };
    } else {  // inside the runs: after 1-3 more files, a moment into the next run
      const size_t target = done_before + files_of(rng);
      delay = in_run(rng);
      ready = [&, target] { return count_files(out / "runs", ".h5") >= target; };  // target: a copy (block-local)
    }
    while (!ready() && !child.poll()) std::this_thread::sleep_for(std::chrono::microseconds(300));
    if (mode != 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    if (!child.poll()) child.signal(sig);
    ASSERT_TRUE(child.wait(kHangGuardSeconds)) << when << ": did not stop";
    if (child.exited() && child.exit_code() == 0) ++finished_early;
    if (sig == SIGKILL) {
      EXPECT_TRUE(child.term_signal() == SIGKILL || child.exit_code() == 0) << when << ": " << child.describe();
    } else if (child.exited() && child.exit_code() != 0) {
      // A clean stop: the handler let the current run finish or abandoned it.
      EXPECT_EQ(child.exit_code(), 128 + sig) << when << ": " << child.err();
      EXPECT_NE(child.err().find("interrupted; completed runs are saved"), std::string::npos) << child.err();
    } else if (!child.exited()) {
      EXPECT_EQ(child.term_signal(), sig) << when << ": " << child.describe();  // before the handlers
    }
    ++by_signal[sig];
    const DirectoryState state = check_results(out, planned, when);
    if (state.tmp_files > 0) ++stops_with_tmp;
    if (sig != SIGKILL && child.exited()) {
      EXPECT_EQ(state.tmp_files, 0) << when << ": a clean stop left a .tmp";
    }
    if (::testing::Test::HasFatalFailure() || ::testing::Test::HasFailure()) {
      std::cerr << when << " (mode " << mode << ", delay " << delay << " s): stderr of sqlab:\n" << child.err() << "\n";
      return;
    }
  }
  const DirectoryState before = check_results(out, planned, "before the final --resume");
  std::cerr << "[ kill test ] start-up " << startup << " s; " << kills << " stops (SIGKILL " << by_signal[SIGKILL] << ", SIGINT "
            << by_signal[SIGINT] << ", SIGTERM " << by_signal[SIGTERM] << "): " << stops_with_tmp
            << " left a .tmp (killed mid-write), " << finished_early << " found the sweep finished; "
            << before.complete.size() << " of " << planned.size() << " runs complete before the final --resume\n";

  Child resume(dir.path(), {"run", "killme.yaml", "--out", "out", "--resume", "--json"}, "resume");
  ASSERT_TRUE(resume.wait(600)) << "the final --resume did not finish";
  ASSERT_EQ(resume.exit_code(), 0) << resume.err();
  const DirectoryState after = check_results(out, planned, "after the final --resume");
  EXPECT_EQ(after.tmp_files, 0);
  ASSERT_EQ(after.complete.size(), planned.size());
  for (const auto& [id, inode] : before.complete)
    EXPECT_EQ(after.complete.at(id), inode) << id << " was complete but --resume wrote it again";
  const auto summary = nlohmann::json::parse(resume.out());
  ASSERT_EQ(summary["runs"].size(), planned.size());
  for (const auto& run : summary["runs"]) EXPECT_EQ(run["status"], "complete") << run["run_id"];
  const auto csv = read_csv_status(out / "summary.csv", "final");
  EXPECT_EQ(csv.size(), planned.size());
}

// One SIGTERM and one SIGINT once the sweep is surely inside its runs: a clean stop
// with exit 143 / 130, no .tmp left behind, and whole summaries.
TEST(KillTest, SigtermAndSigintStopCleanly) {
  TempDir dir;
  write_text(dir.file("killme.yaml"), sweep_yaml(20));
  const std::set<std::string> planned = planned_runs(dir.path());
  for (int sig : {SIGTERM, SIGINT}) {
    const std::string out = std::string("out_") + std::to_string(sig);
    Child child(dir.path(), {"run", "killme.yaml", "--out", out}, out);
    // Wait until the first run file exists: the handlers are installed by then.
    const fs::path runs = dir.path() / out / "runs";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    auto has_h5 = [&] {
      std::error_code ec;
      if (!fs::is_directory(runs, ec)) return false;
      for (const auto& e : fs::directory_iterator(runs, ec))
        if (e.path().extension() == ".h5") return true;
      return false;
    };
    while (!has_h5() && !child.poll() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_FALSE(child.poll()) << "the sweep ended before the signal: " << child.err();
    child.signal(sig);
    ASSERT_TRUE(child.wait(kHangGuardSeconds));
    EXPECT_EQ(child.exit_code(), 128 + sig) << child.describe() << "\n" << child.err();
    EXPECT_NE(child.err().find("interrupted; completed runs are saved (use --resume)"), std::string::npos);
    const DirectoryState state = check_results(dir.path() / out, planned, strsignal(sig));
    EXPECT_EQ(state.tmp_files, 0);
    EXPECT_GE(state.complete.size(), 1u);
    EXPECT_LT(state.complete.size(), planned.size());
    EXPECT_EQ(read_csv_status(dir.path() / out / "summary.csv", strsignal(sig)).size(), state.complete.size());
  }
}

// ---------------------------------------------------------------- keep going

// Two real run-time failures, at some sweep points only: a quantizer group size that
// does not divide the width (the quantizer throws when it meets the data, for every
// method) and massive outliers so large (1e38, near float32's limit) that cayley_sgd's
// loss overflows (it throws; identity quantizes them). Nothing is injected: these are
// inputs a user can write.
const char* kFailingSweep = R"(name: failing
seeds: [0, 1]
data: {source: synthetic, tokens: 64, channels: 32, massive: {count: 1, magnitude: 300}}
quant: {a_granularity: per_group}
methods:
  - {label: rtn, method: identity}
  - {label: sgd, method: cayley_sgd, steps: 4}
sweep: {grid: {quant.a_group_size: [8, 5], data.massive.magnitude: [300, 1.0e+38]}}
record: {histogram_bins: 8}
)";

TEST(KeepGoing, FailedRunsAreRecordedAndTheRestRun) {
  TempDir dir;
  write_text(dir.file("failing.yaml"), kFailingSweep);
  Child child(dir.path(), {"run", "failing.yaml", "--out", "out", "--json"});
  ASSERT_TRUE(child.wait(kHangGuardSeconds));
  ASSERT_EQ(child.exit_code(), 1) << child.describe() << "\n" << child.err();
  const auto summary = nlohmann::json::parse(child.out());
  ASSERT_EQ(summary["runs"].size(), 16u);  // 2 methods x 4 sweep points x 2 seeds
  std::set<std::string> failed;
  for (const auto& run : summary["runs"]) {
    const std::string id = run["run_id"];
    const bool bad_group = run["point"].value("quant.a_group_size", "") == "5";
    const bool overflow = run["point"].value("data.massive.magnitude", "") == "1.0e+38" && run["label"] == "sgd";
    EXPECT_EQ(run["status"], bad_group || overflow ? "failed" : "complete") << run;
    const fs::path file = dir.path() / "out/runs" / (id + ".h5");
    if (!bad_group && !overflow) {
      EXPECT_TRUE(run_file_complete(file.string())) << id;
      continue;
    }
    failed.insert(id);
    EXPECT_FALSE(fs::exists(file)) << id;
    const std::string error = run.value("error", "");
    EXPECT_FALSE(error.empty()) << run;
    if (bad_group) {
      EXPECT_NE(error.find("group size 5 does not divide the row length 32"), std::string::npos) << error;
    } else {
      EXPECT_NE(error.find("cayley_sgd: the loss is not finite"), std::string::npos) << error;
    }
    EXPECT_NE(child.err().find("error: run " + id + " failed: " + error), std::string::npos) << child.err();
  }
  EXPECT_EQ(failed.size(), 10u);  // 8 with group size 5, 2 of cayley_sgd's at 1e38
  // summary.csv: the status column and the message in the error column.
  const std::string csv = read_text(dir.file("out/summary.csv"));
  for (const std::string& id : failed) {
    const size_t row = csv.find(id + ",");
    ASSERT_NE(row, std::string::npos) << csv;
    const std::string line = csv.substr(row, csv.find('\n', row) - row);
    EXPECT_NE(line.find(",failed,"), std::string::npos) << line;
    EXPECT_GT(line.size() - line.rfind(','), 5u) << "no message in the error column: " << line;
  }
  // --resume retries exactly the failed runs (they fail again) and keeps the rest.
  Child resume(dir.path(), {"run", "failing.yaml", "--out", "out", "--resume", "--json"}, "resume");
  ASSERT_TRUE(resume.wait(kHangGuardSeconds));
  EXPECT_EQ(resume.exit_code(), 1);
  size_t retried = 0;
  for (const std::string& id : failed) retried += resume.err().find("error: run " + id + " failed") != std::string::npos;
  EXPECT_EQ(retried, failed.size());
}

TEST(KeepGoing, FailFastStopsAtTheFirstFailure) {
  TempDir dir;
  write_text(dir.file("failing.yaml"), kFailingSweep);
  Child child(dir.path(), {"run", "failing.yaml", "--out", "out", "--json", "--fail-fast"});
  ASSERT_TRUE(child.wait(kHangGuardSeconds));
  ASSERT_EQ(child.exit_code(), 1) << child.describe() << "\n" << child.err();
  const auto summary = nlohmann::json::parse(child.out());
  const auto& runs = summary["runs"];
  ASSERT_GE(runs.size(), 1u);
  // The 4 runs of the first sweep point (group 8, magnitude 300), identity's at the second
  // (magnitude 1e38), then cayley_sgd's failure there.
  ASSERT_EQ(runs.size(), 6u);
  for (size_t i = 0; i + 1 < runs.size(); ++i) EXPECT_EQ(runs[i]["status"], "complete") << runs[i];
  EXPECT_EQ(runs.back()["status"], "failed");
  EXPECT_FALSE(runs.back().value("error", "").empty());
  EXPECT_NE(child.err().find("--fail-fast: stopping after the first failed run"), std::string::npos) << child.err();
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path() / "out/runs")) files += e.path().extension() == ".h5";
  EXPECT_EQ(files, static_cast<int>(runs.size()) - 1);
  // The summaries on disk agree with what was printed.
  EXPECT_EQ(read_summary_rows(dir.file("out")).size(), runs.size());
}

}  // namespace
}  // namespace sqlab
