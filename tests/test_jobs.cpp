// `sqlab run --jobs N` through the real binary: the same runs, ids, statuses, errors and
// metrics as a serial run, in the same order (shards and merge: tests/test_cli.cpp).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <set>

#include "tests/test_util.h"

namespace sqlab {
namespace {
namespace fs = std::filesystem;
using testing::read_text;
using testing::TempDir;
using testing::write_text;

// 8 runs; the group size 5 does not divide 32 channels, so 4 of them fail at run time.
const char* kSweep = R"(name: jobs
seeds: [0, 1]
data: {source: synthetic, tokens: 64, channels: 32, massive: {count: 1, magnitude: 300}}
quant: {a_granularity: per_group}
methods:
  - {label: rtn, method: identity}
  - {label: rot, method: random_orthogonal}
sweep: {grid: {quant.a_group_size: [8, 5]}}
record: {histogram_bins: 16}
)";

bool is_timing(const std::string& metric) { return metric.find("seconds") != std::string::npos; }

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

void expect_same_runs(const nlohmann::json& serial, const nlohmann::json& parallel) {
  ASSERT_EQ(serial["runs"].size(), parallel["runs"].size());
  for (size_t i = 0; i < serial["runs"].size(); ++i) {
    const auto& a = serial["runs"][i];
    const auto& b = parallel["runs"][i];
    EXPECT_EQ(a["run_id"], b["run_id"]) << "position " << i;
    EXPECT_EQ(a["status"], b["status"]) << a["run_id"];
    EXPECT_EQ(a.value("error", ""), b.value("error", "")) << a["run_id"];
    ASSERT_EQ(a["metrics"].size(), b["metrics"].size()) << a["run_id"];
    for (const auto& [name, value] : a["metrics"].items()) {
      ASSERT_TRUE(b["metrics"].contains(name)) << name;
      if (is_timing(name) || value.is_null()) continue;
      const double x = value.get<double>(), y = b["metrics"][name].get<double>();
      EXPECT_NEAR(x, y, 1e-6 * std::max(1.0, std::fabs(x))) << a["run_id"] << " " << name;
    }
  }
}

TEST(Jobs, WorkersGiveTheSerialRunsInTheSameOrder) {
  TempDir dir;
  write_text(dir.file("e.yaml"), kSweep);
  const auto serial = testing::run_cli(dir.path(), "run e.yaml --out serial --json");
  ASSERT_EQ(serial.code, 1) << serial.err;  // the group-size-5 runs fail, the others complete
  const auto parallel = testing::run_cli(dir.path(), "run e.yaml --out parallel --jobs 2 --json");
  ASSERT_EQ(parallel.code, 1) << parallel.err;
  const auto a = nlohmann::json::parse(serial.out), b = nlohmann::json::parse(parallel.out);
  expect_same_runs(a, b);
  // The summaries on disk hold the same rows and groups; the workers' scratch is gone.
  expect_same_runs(nlohmann::json::parse(read_text(dir.file("serial/summary.json"))),
                   nlohmann::json::parse(read_text(dir.file("parallel/summary.json"))));
  EXPECT_EQ(a["groups"].size(), b["groups"].size());
  const std::string csv_a = read_text(dir.file("serial/summary.csv")), csv_b = read_text(dir.file("parallel/summary.csv"));
  EXPECT_EQ(csv_a.substr(0, csv_a.find('\n')), csv_b.substr(0, csv_b.find('\n')));  // same columns
  EXPECT_EQ(std::count(csv_a.begin(), csv_a.end(), '\n'), std::count(csv_b.begin(), csv_b.end(), '\n'));
  EXPECT_EQ(files_in(dir.file("serial/runs")), files_in(dir.file("parallel/runs")));
  EXPECT_EQ(files_in(dir.file("serial/runs")).size(), 4u);
  EXPECT_FALSE(fs::exists(dir.file("parallel/.jobs")));
}

TEST(Jobs, WithShardsResumeAndABadCount) {
  TempDir dir;
  write_text(dir.file("e.yaml"), kSweep);
  // More workers than runs, inside a shard: the shard's runs, each once.
  const auto serial = testing::run_cli(dir.path(), "run e.yaml --out s --shard 1/2 --json");
  const auto parallel = testing::run_cli(dir.path(), "run e.yaml --out p --shard 1/2 --jobs 9 --json");
  ASSERT_EQ(parallel.code, serial.code) << parallel.err;
  expect_same_runs(nlohmann::json::parse(serial.out), nlohmann::json::parse(parallel.out));
  // --resume keeps complete runs; the rows stay complete.
  const auto resumed = testing::run_cli(dir.path(), "run e.yaml --out p --shard 1/2 --jobs 2 --resume --json");
  expect_same_runs(nlohmann::json::parse(serial.out), nlohmann::json::parse(resumed.out));
  EXPECT_EQ(testing::run_cli(dir.path(), "run e.yaml --out x --jobs 0").code, 2);
}

}  // namespace
}  // namespace sqlab
