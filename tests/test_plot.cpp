// End to end through the real binary: `sqlab plot`, `plots:` in an experiment, and
// `sqlab show RESULTS_DIR`. Needs Debian's python3-matplotlib / python3-h5py.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "tests/test_util.h"

namespace sqlab {
namespace {
namespace fs = std::filesystem;
using testing::read_text;
using testing::TempDir;
using testing::write_text;

using Result = testing::CliResult;
Result sqlab_cli(const TempDir& dir, const std::string& args, const std::string& env = "") {
  return testing::run_cli(dir.path(), args, env);
}

const char* kTiny = R"(name: tiny_plot
seeds: [0, 1]
data: {source: synthetic, tokens: 64, channels: 32, massive: {count: 1, magnitude: 300}}
methods:
  - {label: rtn, method: identity}
  - {label: rot, method: random_orthogonal}
record: {histogram_bins: 16}
)";

// A PNG file: its signature and a plausible size.
void expect_png(const std::string& path) {
  ASSERT_TRUE(fs::exists(path)) << path;
  const std::string data = read_text(path);
  EXPECT_EQ(data.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  EXPECT_GT(data.size(), 10000u) << path;
}

void expect_pdf(const std::string& path) {
  ASSERT_TRUE(fs::exists(path)) << path;
  const std::string data = read_text(path);
  EXPECT_EQ(data.rfind("%PDF", 0), 0u) << path;
  EXPECT_EQ(data.find("/Type3"), std::string::npos) << path << ": Type 3 fonts";
}

TEST(PlotCli, DrawsTheFiguresOfAResultsDirectory) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), kTiny);
  ASSERT_EQ(sqlab_cli(dir, "run tiny.yaml --out out").code, 0);
  const Result r = sqlab_cli(dir, "plot out");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* stem : {"ablation_rel_output_error", "histograms", "outliers", "time"}) {
    expect_png(dir.file(std::string("out/figures/") + stem + ".png"));
    expect_pdf(dir.file(std::string("out/figures/") + stem + ".pdf"));
    EXPECT_NE(r.out.find(std::string("out/figures/") + stem + ".png\n"), std::string::npos) << r.out;
  }
  EXPECT_FALSE(fs::exists(dir.file("out/figures/convergence.png")));  // no traces in these runs

  const Result elsewhere = sqlab_cli(dir, "plot out --out elsewhere --only time");
  ASSERT_EQ(elsewhere.code, 0) << elsewhere.err;
  expect_png(dir.file("elsewhere/time.png"));
  EXPECT_FALSE(fs::exists(dir.file("elsewhere/histograms.png")));

  // `show RESULTS_DIR`: the grouped summary in each format.
  const Result table = sqlab_cli(dir, "show out");
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("rel_output_error"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("±"), std::string::npos);
  const Result md = sqlab_cli(dir, "show out --format markdown --metric sqnr_db");
  ASSERT_EQ(md.code, 0) << md.err;
  EXPECT_NE(md.out.find("| label | runs | sqnr_db |"), std::string::npos) << md.out;
  EXPECT_NE(md.out.find("| rot | 2 |"), std::string::npos) << md.out;
  const Result js = sqlab_cli(dir, "show out --format json");
  ASSERT_EQ(js.code, 0) << js.err;
  const auto j = nlohmann::json::parse(js.out);
  ASSERT_EQ(j["groups"].size(), 2u);
  EXPECT_EQ(j["groups"][0]["runs"], 2);
  EXPECT_TRUE(j["groups"][1]["metrics"]["rel_output_error"].contains("stderr"));
  EXPECT_EQ(sqlab_cli(dir, "show out --metric nope").code, 2);
  EXPECT_EQ(sqlab_cli(dir, "show out --format xml").code, 2);
}

TEST(PlotCli, UsageErrorsExitWithTwo) {
  TempDir dir;
  const Result missing = sqlab_cli(dir, "plot no_such_dir");
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("no such results directory"), std::string::npos) << missing.err;
  fs::create_directories(dir.file("empty"));
  const Result empty = sqlab_cli(dir, "plot empty");
  EXPECT_EQ(empty.code, 2);
  EXPECT_NE(empty.err.find("no run files"), std::string::npos) << empty.err;
  EXPECT_EQ(sqlab_cli(dir, "plot").code, 2);
}

TEST(PlotCli, MissingPythonPackagesGiveTheInstallHint) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), kTiny);
  ASSERT_EQ(sqlab_cli(dir, "run tiny.yaml --out out").code, 0);
  // A module that shadows h5py and fails to import, as if python3-h5py were absent.
  fs::create_directories(dir.file("fake"));
  write_text(dir.file("fake/h5py.py"), "raise ImportError('No module named h5py')\n");
  const Result r = sqlab_cli(dir, "plot out", "PYTHONPATH=" + dir.file("fake"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("apt-get install python3-h5py"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("out/figures")));
  // No Python at all.
  const Result none = sqlab_cli(dir, "plot out", "SQLAB_PYTHON=/nonexistent/python3");
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.err.find("apt-get install python3"), std::string::npos) << none.err;
}

TEST(PlotCli, RunDrawsTheFiguresTheExperimentAsksFor) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), std::string(kTiny) + "plots: [histograms, time]\n");
  const Result r = sqlab_cli(dir, "run tiny.yaml --out out");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("figures: "), std::string::npos) << r.out;
  expect_png(dir.file("out/figures/histograms.png"));
  expect_png(dir.file("out/figures/time.png"));
  EXPECT_FALSE(fs::exists(dir.file("out/figures/ablation_rel_output_error.png")));

  const Result js = sqlab_cli(dir, "run tiny.yaml --out out2 --set plots=[time] --json");
  ASSERT_EQ(js.code, 0) << js.err;
  const auto j = nlohmann::json::parse(js.out);  // the figure paths do not leak into stdout
  ASSERT_EQ(j["figures"].size(), 2u) << js.out;
  EXPECT_NE(j["figures"][0].get<std::string>().find("out2/figures/time."), std::string::npos);

  ASSERT_EQ(sqlab_cli(dir, "run tiny.yaml --out out4 --set plots=false").code, 0);
  EXPECT_FALSE(fs::exists(dir.file("out4/figures")));

  // A plot failure is reported; the runs' exit code stands.
  fs::create_directories(dir.file("fake"));
  write_text(dir.file("fake/h5py.py"), "raise ImportError('No module named h5py')\n");
  const Result failed = sqlab_cli(dir, "run tiny.yaml --out out3", "PYTHONPATH=" + dir.file("fake"));
  EXPECT_EQ(failed.code, 0) << failed.err;
  EXPECT_NE(failed.err.find("redraw with `sqlab plot"), std::string::npos) << failed.err;
}

TEST(PlotCli, UnknownFigureInPlotsIsAConfigError) {
  TempDir dir;
  write_text(dir.file("tiny.yaml"), std::string(kTiny) + "plots: [histograms, bogus]\n");
  const Result r = sqlab_cli(dir, "run tiny.yaml --out out");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("tiny.yaml:8: plots: unknown figure 'bogus'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("out")));
  write_text(dir.file("bad.yaml"), std::string(kTiny) + "plots: {a: 1}\n");
  EXPECT_EQ(sqlab_cli(dir, "run bad.yaml --out out").code, 2);
}

}  // namespace
}  // namespace sqlab
