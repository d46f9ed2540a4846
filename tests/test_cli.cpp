// End to end through the real binary: files, attributes, exit codes, resume.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/progress.h"
#include "core/recorder.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {
namespace fs = std::filesystem;
using testing::read_text;
using testing::TempDir;
using testing::write_text;

using Result = testing::CliResult;
Result sqlab_cli(const TempDir& dir, const std::string& args) { return testing::run_cli(dir.path(), args); }

const char* kTiny = R"(name: tiny
description: a tiny test experiment
seeds: [0, 1]
data: {source: synthetic, tokens: 64, channels: 32, massive: {count: 1, magnitude: 300}}
methods:
  - {label: rtn, method: identity}
  - {label: rot, method: random_orthogonal}
record: {rotations: true, histogram_bins: 16}
)";

std::vector<fs::path> run_files(const fs::path& dir) {
  std::vector<fs::path> files;
  if (!fs::exists(dir)) return files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  return files;
}

TEST(Cli, RunWritesTheResultsLayout) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), kTiny);
  const Result r = sqlab_cli(dir, "run tiny.yaml --out out");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("results: "), std::string::npos);
  EXPECT_NE(r.out.find("rel_output_error"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir.file("out/config.yaml")));
  const auto files = run_files(dir.file("out/runs"));
  ASSERT_EQ(files.size(), 4u);
  for (const auto& f : files) {
    EXPECT_EQ(f.extension(), ".h5");
    const RunRecord rec = read_run_file(f.string());
    EXPECT_EQ(rec.status, "complete");
    EXPECT_EQ(f.stem().string(), rec.run_id);
    EXPECT_TRUE(rec.metrics.count("rel_output_error"));
    EXPECT_TRUE(rec.metrics.count("act_kurtosis"));
    EXPECT_EQ(rec.histograms.at("act_after").counts.size(), 16u);
    EXPECT_EQ(rec.rotations.at("layer0").at("R").size(0), 32);
    EXPECT_TRUE(rec.timing.count("build"));
    EXPECT_NE(rec.config_yaml.find("method:"), std::string::npos);
    EXPECT_TRUE(rec.attributes.count("git_sha"));
    EXPECT_EQ(rec.site_channels.at("layer0").at("absmax_before").size(), 32u);
    EXPECT_EQ(rec.site_channels.at("layer0").at("absmax_after").size(), 32u);
    EXPECT_EQ(rec.metrics.at("outlier_tokens"), 1.0);  // the planted massive token
  }
  const std::string csv = read_text(dir.file("out/summary.csv"));
  EXPECT_EQ(csv.rfind("run_id,label,method,seed,status", 0), 0u) << csv;
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);
  const auto json = nlohmann::json::parse(read_text(dir.file("out/summary.json")));
  EXPECT_EQ(json["runs"].size(), 4u);
  ASSERT_EQ(json["groups"].size(), 2u);
  EXPECT_EQ(json["groups"][0]["runs"], 2);
  EXPECT_TRUE(json["groups"][0]["metrics"]["rel_output_error"].contains("stderr"));
}

// Where stderr is not a terminal (a log file), progress comes as plain lines at most every
// SQLAB_PROGRESS_SECONDS: every run's start at 0, none for a sweep shorter than the default
// minute; never the terminal's redrawing escape codes.
TEST(Cli, ProgressInALogIsALineAtTheChosenInterval) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), kTiny);
  const Result every = testing::run_cli(dir.path(), "run tiny.yaml --out every", "SQLAB_PROGRESS_SECONDS=0");
  ASSERT_EQ(every.code, 0) << every.err;
  for (const char* line : {"progress: [0/4] ", "progress: [3/4] "}) EXPECT_NE(every.err.find(line), std::string::npos) << every.err;
  EXPECT_EQ(every.err.find('\r'), std::string::npos);
  const Result quiet = sqlab_cli(dir, "run tiny.yaml --out quiet");
  ASSERT_EQ(quiet.code, 0) << quiet.err;
  EXPECT_EQ(quiet.err.find("progress:"), std::string::npos) << quiet.err;
}

TEST(Progress, LogLinesAreRateLimitedAndTerminalLinesRedraw) {
  ::testing::internal::CaptureStderr();
  {
    Progress log(5, ProgressMode::log, 0.0);
    log.update(2, "run-a");
    Progress rare(5, ProgressMode::log, 1e9);  // a line only after 10^9 s
    rare.update(3, "run-b");
    Progress off(5, ProgressMode::off, 0.0);
    off.update(4, "run-c");
  }
  const std::string logged = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(logged.rfind("progress: [2/5] ", 0), 0u) << logged;
  EXPECT_NE(logged.find("run-a\n"), std::string::npos) << logged;
  EXPECT_EQ(logged.find("run-b"), std::string::npos) << logged;
  EXPECT_EQ(logged.find("run-c"), std::string::npos) << logged;
  ::testing::internal::CaptureStderr();
  {
    Progress terminal(5, ProgressMode::terminal, 1e9);  // the interval is the log's only
    terminal.update(1, "run-d");
  }
  const std::string drawn = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(drawn.rfind("\r\033[K[1/5] ", 0), 0u) << drawn;
  EXPECT_NE(drawn.find("run-d\r\033[K"), std::string::npos) << drawn;  // erased when done
}

TEST(Cli, BadInputExitsTwoAndRunsNothing) {
  TempDir dir;
  write_text(dir.file("bad.yaml"), std::string(kTiny) + "quant: {a_bitz: 4}\n");
  Result r = sqlab_cli(dir, "run bad.yaml --out out");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("bad.yaml:9:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("quant.a_bitz: unknown key"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("out")));
  EXPECT_EQ(sqlab_cli(dir, "run missing.yaml").code, 2);
  EXPECT_EQ(sqlab_cli(dir, "run").code, 2);
  EXPECT_EQ(sqlab_cli(dir, "frobnicate").code, 2);
  EXPECT_EQ(sqlab_cli(dir, "run bad.yaml --no-such-flag").code, 2);
  write_text(dir.file("tiny.yaml"), kTiny);
  r = sqlab_cli(dir, "run tiny.yaml --set methods.rot.method=nope --out out");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown method 'nope'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("out")));
}

TEST(Cli, FailedRunsDoNotStopTheOthers) {
  TempDir dir;
  // Group size 5 does not divide 32 channels: those runs fail at run time.
  write_text(dir.file("tiny.yaml"), std::string(kTiny) +
             "quant: {a_granularity: per_group}\nsweep: {grid: {quant.a_group_size: [8, 5]}}\n");
  const Result r = sqlab_cli(dir, "run tiny.yaml --out out --json");
  EXPECT_EQ(r.code, 1) << r.err;
  const auto json = nlohmann::json::parse(r.out);
  int complete = 0, failed = 0;
  for (const auto& run : json["runs"]) {
    if (run["status"] == "complete") ++complete;
    if (run["status"] == "failed") {
      ++failed;
      EXPECT_NE(run["error"].get<std::string>().find("group size 5"), std::string::npos);
    }
  }
  EXPECT_EQ(complete, 4);
  EXPECT_EQ(failed, 4);
  EXPECT_EQ(run_files(dir.file("out/runs")).size(), 4u);
  EXPECT_NE(read_text(dir.file("out/summary.csv")).find(",failed,"), std::string::npos);
}

TEST(Cli, ResumeSkipsCompleteRuns) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), kTiny);
  ASSERT_EQ(sqlab_cli(dir, "run tiny.yaml --out out").code, 0);
  auto files = run_files(dir.file("out/runs"));
  ASSERT_EQ(files.size(), 4u);
  const auto kept_time = fs::last_write_time(files[1]);
  fs::remove(files[0]);
  write_text(dir.file("out/runs/" + files[2].filename().string() + ".tmp"), "partial");
  const Result r = sqlab_cli(dir, "run tiny.yaml --out out --resume --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(files[0]));                       // redone
  EXPECT_EQ(fs::last_write_time(files[1]), kept_time);     // skipped
  EXPECT_EQ(run_files(dir.file("out/runs")).size(), 4u);   // the stale .tmp is gone
  EXPECT_EQ(nlohmann::json::parse(r.out)["runs"].size(), 4u);
}

TEST(Cli, ShowDryRunListVersion) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), kTiny);
  Result r = sqlab_cli(dir, "show tiny.yaml --set quant.a_bits=8");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("a_bits: 8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("runs (4):"), std::string::npos) << r.out;
  r = sqlab_cli(dir, "run tiny.yaml --dry-run --out out");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("rtn-s0-"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir.file("out")));
  r = sqlab_cli(dir, "list methods --json");
  ASSERT_EQ(r.code, 0);
  const auto methods = nlohmann::json::parse(r.out);
  bool has_identity = false;
  for (const auto& m : methods) has_identity |= m["name"] == "identity";
  EXPECT_TRUE(has_identity);
  r = sqlab_cli(dir, "list datasets");
  EXPECT_NE(r.out.find("synthetic"), std::string::npos);
  fs::create_directories(dir.file("experiments"));
  write_text(dir.file("experiments/tiny.yaml"), kTiny);
  r = sqlab_cli(dir, "list experiments");
  EXPECT_NE(r.out.find("a tiny test experiment"), std::string::npos) << r.out;
  EXPECT_EQ(sqlab_cli(dir, "list colours").code, 2);
  r = sqlab_cli(dir, "list factorizations 172");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("[43, 4]  n2 has a Hadamard matrix"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[4, 43]  no Hadamard"), std::string::npos) << r.out;
  EXPECT_EQ(sqlab_cli(dir, "list factorizations").code, 2);
  r = sqlab_cli(dir, "--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("sqlab ", 0), 0u);
  EXPECT_EQ(sqlab_cli(dir, "--help").code, 0);
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

TEST(Compare, MatchesGroupsMarksDifferencesAndRefusesOtherSettings) {
  TempDir dir;
  const std::string base = R"(seeds: [0, 1, 2]
data: {source: synthetic, tokens: 128, channels: 128, normal: {count: 16, scale: 8}}
record: {histograms: false}
)";
  write_text(dir.file("a.yaml"), base + "methods: [{label: rtn, method: identity}, {label: rot, method: random_orthogonal}]\n");
  // In b, `rot` is no rotation at all (a difference far beyond the seeds' noise), `rtn`
  // is the same (no difference), and `extra` exists only in b.
  write_text(dir.file("b.yaml"), base + "methods: [{label: rtn, method: identity}, {label: rot, method: identity},"
                                        " {label: extra, method: random_orthogonal}]\n");
  ASSERT_EQ(sqlab_cli(dir, "run a.yaml --out A").code, 0);
  ASSERT_EQ(sqlab_cli(dir, "run b.yaml --out B").code, 0);
  Result r = sqlab_cli(dir, "compare A B --format json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  std::map<std::string, nlohmann::json> rows;
  for (const auto& row : j["rows"]) rows[row["group"].get<std::string>()] = row;
  EXPECT_TRUE(rows.at("rot")["values"][1]["significant"].get<bool>());
  EXPECT_GT(rows.at("rot")["values"][1]["diff"].get<double>(), 0.0);  // identity is worse
  EXPECT_FALSE(rows.at("rtn")["values"][1]["significant"].get<bool>());
  EXPECT_DOUBLE_EQ(rows.at("rtn")["values"][1]["diff"].get<double>(), 0.0);
  EXPECT_TRUE(rows.at("extra")["values"][0].is_null());
  r = sqlab_cli(dir, "compare A B --format markdown --metric sqnr_db");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| rot | sqnr_db |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("extra (only in B)"), std::string::npos) << r.out;

  ASSERT_EQ(sqlab_cli(dir, "run a.yaml --out C --set quant.a_bits=8").code, 0);
  r = sqlab_cli(dir, "compare A C");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("differ in quant.a_bits"), std::string::npos) << r.err;
  EXPECT_EQ(sqlab_cli(dir, "compare A C --force").code, 0);
  EXPECT_EQ(sqlab_cli(dir, "compare A").code, 2);
  EXPECT_EQ(sqlab_cli(dir, "compare A nowhere").code, 2);
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

std::set<std::string> run_ids_in(const std::string& dir) {
  std::set<std::string> ids;
  for (const auto& f : run_files(dir)) ids.insert(f.stem().string());
  return ids;
}

TEST(Shards, PartitionTheRunsAndMergeBack) {
  TempDir dir;
  write_text(dir.file("s.yaml"), std::string(kTiny) + "sweep: {grid: {quant.a_bits: [3, 4, 8]}}\n");
  ASSERT_EQ(sqlab_cli(dir, "run s.yaml --out all").code, 0);
  const std::set<std::string> all = run_ids_in(dir.file("all/runs"));
  ASSERT_EQ(all.size(), 12u);
  for (int n : {2, 3}) {
    std::set<std::string> seen;
    std::string merge_args;
    for (int k = 0; k < n; ++k) {
      const std::string out = "shard" + std::to_string(n) + "_" + std::to_string(k);
      ASSERT_EQ(sqlab_cli(dir, "run s.yaml --out " + out + " --shard " + std::to_string(k) + "/" + std::to_string(n)).code, 0);
      for (const auto& id : run_ids_in(dir.file(out + "/runs"))) EXPECT_TRUE(seen.insert(id).second) << "twice: " << id;
      merge_args += " " + out;
    }
    EXPECT_EQ(seen, all) << "n = " << n;  // none lost, none twice
    const std::string merged = "merged" + std::to_string(n);
    const Result r = sqlab_cli(dir, "merge " + merged + merge_args);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(run_ids_in(dir.file(merged + "/runs")), all);
    const auto json = nlohmann::json::parse(read_text(dir.file(merged + "/summary.json")));
    EXPECT_EQ(json["runs"].size(), 12u);
    EXPECT_EQ(json["swept_keys"][0], "quant.a_bits");
  }
  EXPECT_EQ(sqlab_cli(dir, "run s.yaml --out x --shard 2/2").code, 2);
  EXPECT_EQ(sqlab_cli(dir, "run s.yaml --out x --shard one").code, 2);
  // Shards of different experiments do not merge.
  ASSERT_EQ(sqlab_cli(dir, "run s.yaml --out other --set quant.w_bits=8 --shard 0/2").code, 0);
  const Result bad = sqlab_cli(dir, "merge m shard2_1 other");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("differ in quant"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace sqlab
