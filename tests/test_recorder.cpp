// Tests for the HDF5 run file (core/recorder.h): round trip of every group, the
// atomic write, completeness checks, name validation, and the layout as h5py sees it.
//   g++ -std=c++17 -O1 -I. -I/usr/include/hdf5/serial core/recorder.cpp tests/test_recorder.cpp
//       -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5_cpp -lhdf5 -ltorch -ltorch_cpu -lc10
//       -lgtest -lgtest_main -pthread -o /tmp/rec_test && /tmp/rec_test
#include "core/recorder.h"

#include <ATen/ATen.h>
#include <H5Cpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "core/error.h"

namespace sqlab {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kProvenance = {"sqlab_version", "git_sha", "created"};

class RecorderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::random_device rd;
    dir_ = fs::temp_directory_path() /
           ("sqlab_recorder_" + std::to_string(::getpid()) + "_" + info->name() + "_" +
            std::to_string(rd()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// Every group filled, names with the characters sites and metrics really use.
RunRecord sample_record() {
  RunRecord r;
  r.run_id = "quickstart-hadamard-bits=4-s1";
  r.label = "ρ-sweep µ";  // UTF-8
  r.method = "hadamard";
  r.seed = -1234567890123LL;
  r.config_yaml = "method: hadamard\nquant: {bits: 4}\nnote: \"ρ ≤ 1\"\n";
  r.attributes = {{"sweep.quant.bits", "4"}, {"host", "node-7@lab"}};
  r.metrics = {{"rel_output_error", 0.125}, {"ppl", 5.678901234567891}, {"act_mse@w4a4", 1e-300}};
  r.site_metrics["layers.0.attn.q_proj+k_proj+v_proj"] = {{"sqnr_db", 21.5}, {"act_kurtosis", 3.25}};
  r.site_metrics["layers.0.mlp.down_proj"] = {{"sqnr_db", -0.5}};
  Trace loss;
  for (int64_t i = 0; i < 5000; ++i) {  // longer than one 4096 chunk
    loss.step.push_back(i * 10);
    loss.value.push_back(1.0 / (1.0 + static_cast<double>(i)));
  }
  r.traces["loss"] = loss;
  r.traces["grad-norm"] = Trace{};  // empty
  r.histograms["act_before"] = {{-2.0, -1.0, 0.0, 1.0, 2.0}, {1.0, 10.0, 12.0, 3.0}};
  at::manual_seed(7);
  r.rotations["layers.0.mlp.down_proj"]["R"] = at::randn({8, 8}, at::kDouble);
  r.rotations["layers.0.attn.q_proj+k_proj+v_proj"]["R1"] = at::randn({4, 4}, at::kDouble);
  r.rotations["layers.0.attn.q_proj+k_proj+v_proj"]["R2"] = at::randn({2, 3}, at::kDouble);
  r.timing = {{"build", 0.25}, {"apply", 1.5}, {"total", 1.75}};
  return r;
}

void expect_same_traces(const RunRecord& a, const RunRecord& b) {
  ASSERT_EQ(a.traces.size(), b.traces.size());
  for (const auto& [name, trace] : a.traces) {
    ASSERT_EQ(b.traces.count(name), 1u) << name;
    EXPECT_EQ(trace.step, b.traces.at(name).step) << name;
    EXPECT_EQ(trace.value, b.traces.at(name).value) << name;
  }
}

void expect_same_histograms(const RunRecord& a, const RunRecord& b) {
  ASSERT_EQ(a.histograms.size(), b.histograms.size());
  for (const auto& [tag, hist] : a.histograms) {
    ASSERT_EQ(b.histograms.count(tag), 1u) << tag;
    EXPECT_EQ(hist.edges, b.histograms.at(tag).edges) << tag;
    EXPECT_EQ(hist.counts, b.histograms.at(tag).counts) << tag;
  }
}

void expect_same_rotations(const RunRecord& a, const RunRecord& b) {
  ASSERT_EQ(a.rotations.size(), b.rotations.size());
  for (const auto& [site, factors] : a.rotations) {
    ASSERT_EQ(b.rotations.count(site), 1u) << site;
    const auto& other = b.rotations.at(site);
    ASSERT_EQ(factors.size(), other.size()) << site;
    for (const auto& [name, tensor] : factors) {
      ASSERT_EQ(other.count(name), 1u) << site << "/" << name;
      const at::Tensor& got = other.at(name);
      EXPECT_EQ(got.scalar_type(), at::kDouble);
      EXPECT_EQ(got.sizes(), tensor.sizes()) << site << "/" << name;
      EXPECT_TRUE(at::equal(got, tensor)) << site << "/" << name;
    }
  }
}

// "2026-11-23T21:16:56Z"
bool is_iso8601_utc(const std::string& text) {
  const std::string shape = "dddd-dd-ddTdd:dd:ddZ";
  if (text.size() != shape.size()) return false;
  for (size_t i = 0; i < text.size(); ++i)
    if (shape[i] == 'd' ? !std::isdigit(static_cast<unsigned char>(text[i])) : text[i] != shape[i])
      return false;
  return true;
}

// Provenance attributes are added by the writer: check them, then drop them.
std::map<std::string, std::string> without_provenance(std::map<std::string, std::string> attrs) {
  EXPECT_FALSE(attrs["sqlab_version"].empty());
  EXPECT_FALSE(attrs["git_sha"].empty());
  EXPECT_TRUE(is_iso8601_utc(attrs["created"])) << attrs["created"];
  for (const auto& key : kProvenance) attrs.erase(key);
  return attrs;
}

bool has_root_attribute(const std::string& path, const std::string& name) {
  H5::H5File f(path, H5F_ACC_RDONLY);
  return f.openGroup("/").attrExists(name);
}

TEST_F(RecorderTest, RoundTripOfEveryGroup) {
  const RunRecord in = sample_record();
  const std::string path = file("run.h5");
  write_run_file(path, in);
  RunRecord out = read_run_file(path);

  EXPECT_EQ(out.run_id, in.run_id);
  EXPECT_EQ(out.label, in.label);
  EXPECT_EQ(out.method, in.method);
  EXPECT_EQ(out.seed, in.seed);
  EXPECT_EQ(out.status, "complete");
  EXPECT_EQ(out.error, "");
  EXPECT_FALSE(has_root_attribute(path, "error"));
  EXPECT_EQ(out.config_yaml, in.config_yaml);
  EXPECT_EQ(without_provenance(out.attributes), in.attributes);
  EXPECT_EQ(out.metrics, in.metrics);
  EXPECT_EQ(out.site_metrics, in.site_metrics);
  expect_same_traces(in, out);
  expect_same_histograms(in, out);
  expect_same_rotations(in, out);
  EXPECT_EQ(out.timing, in.timing);

  // The atomic write leaves nothing but the run file.
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator{}), 1);
}

TEST_F(RecorderTest, RewritingAReadRecordReplacesTheFile) {
  const std::string path = file("run.h5");
  write_run_file(path, sample_record());
  RunRecord again = read_run_file(path);  // carries sqlab_version, git_sha, created
  again.metrics["ppl"] = 6.0;
  again.rotations.clear();
  write_run_file(path, again);
  RunRecord out = read_run_file(path);
  EXPECT_EQ(out.metrics.at("ppl"), 6.0);
  EXPECT_TRUE(out.rotations.empty());
  EXPECT_EQ(without_provenance(out.attributes), sample_record().attributes);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(RecorderTest, SummaryReadsMetricsAttributesConfigAndTiming) {
  const RunRecord in = sample_record();
  const std::string path = file("run.h5");
  write_run_file(path, in);
  RunRecord s = read_run_summary(path);
  EXPECT_EQ(s.run_id, in.run_id);
  EXPECT_EQ(s.label, in.label);
  EXPECT_EQ(s.seed, in.seed);
  EXPECT_EQ(s.status, "complete");
  EXPECT_EQ(without_provenance(s.attributes), in.attributes);
  EXPECT_EQ(s.config_yaml, in.config_yaml);
  EXPECT_EQ(s.metrics, in.metrics);
  EXPECT_EQ(s.site_metrics, in.site_metrics);
  EXPECT_EQ(s.timing, in.timing);
  EXPECT_TRUE(s.traces.empty());
  EXPECT_TRUE(s.histograms.empty());
  EXPECT_TRUE(s.rotations.empty());
}

TEST_F(RecorderTest, FailedRunKeepsItsErrorAndIsNotComplete) {
  RunRecord in = sample_record();
  in.status = "failed";
  in.error = "rotation: Cayley solve did not converge";
  const std::string path = file("failed.h5");
  write_run_file(path, in);
  EXPECT_TRUE(has_root_attribute(path, "error"));
  RunRecord out = read_run_summary(path);
  EXPECT_EQ(out.status, "failed");
  EXPECT_EQ(out.error, in.error);
  EXPECT_EQ(out.attributes.count("error"), 0u);
  EXPECT_FALSE(run_file_complete(path));
}

TEST_F(RecorderTest, CompleteOnlyForWholeCompleteRunFiles) {
  const std::string path = file("run.h5");
  write_run_file(path, sample_record());
  EXPECT_TRUE(run_file_complete(path));
  EXPECT_FALSE(run_file_complete(file("missing.h5")));
  EXPECT_FALSE(run_file_complete(dir_.string()));  // a directory

  const std::string garbage = file("garbage.h5");
  std::ofstream(garbage, std::ios::binary) << std::string(4096, '\x5a') << "not hdf5";
  EXPECT_FALSE(run_file_complete(garbage));

  std::ifstream src(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
  const std::string truncated = file("truncated.h5");
  std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  EXPECT_FALSE(run_file_complete(truncated));
  EXPECT_THROW(read_run_file(truncated), Error);
}

TEST_F(RecorderTest, ReadErrorsNameTheFile) {
  const std::string missing = file("missing.h5");
  const std::string garbage = file("garbage.h5");
  std::ofstream(garbage) << "garbage";
  for (const std::string& path : {missing, garbage}) {
    try {
      read_run_file(path);
      ADD_FAILURE() << "no error for " << path;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
}

TEST_F(RecorderTest, NamesWithSlashAreRejectedBeforeWriting) {
  const std::string path = file("run.h5");
  std::vector<RunRecord> bad(5, sample_record());
  bad[0].metrics["a/b"] = 1.0;
  bad[1].site_metrics["layers/0"]["sqnr_db"] = 1.0;
  bad[2].traces["loss/x"] = Trace{};
  bad[3].histograms["act/after"] = Histogram{};
  bad[4].rotations["site"]["R/1"] = at::eye(2, at::kDouble);
  for (const RunRecord& r : bad) {
    try {
      write_run_file(path, r);
      ADD_FAILURE() << "no error for a name with '/'";
    } catch (const Error& e) {
      std::string message = e.what();
      EXPECT_NE(message.find(path), std::string::npos) << message;
      EXPECT_NE(message.find("contain no '/'"), std::string::npos) << message;
    }
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(RecorderTest, InconsistentRecordsAreRejected) {
  const std::string path = file("run.h5");
  RunRecord uneven = sample_record();
  uneven.traces["loss"].step.pop_back();
  RunRecord bins = sample_record();
  bins.histograms["act_before"].counts.pop_back();
  RunRecord reserved = sample_record();
  reserved.attributes["status"] = "complete";
  RunRecord status = sample_record();
  status.status = "done";
  for (const RunRecord& r : {uneven, bins, reserved, status})
    EXPECT_THROW(write_run_file(path, r), Error);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(RecorderTest, MissingDirectoryThrowsNamingThePath) {
  const std::string path = file("no/such/dir/run.h5");
  try {
    write_run_file(path, sample_record());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// The serial HDF5 library is not thread-safe; the recorder's lock makes --jobs safe.
TEST_F(RecorderTest, ConcurrentWritesAndReads) {
  const RunRecord in = sample_record();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        const std::string path = file("run" + std::to_string(t) + "_" + std::to_string(i) + ".h5");
        write_run_file(path, in);
        EXPECT_TRUE(run_file_complete(path));
        EXPECT_EQ(read_run_summary(path).metrics, in.metrics);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator{}), 20);
}

// The layout as users' scripts see it: h5py gives str for every string attribute,
// the config is a UTF-8 string dataset, traces are extensible and of equal length.
TEST_F(RecorderTest, H5pyReadsTheLayout) {
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 missing";
  if (std::system("/usr/bin/python3 -c 'import h5py' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "h5py missing";
  const RunRecord in = sample_record();
  const std::string path = file("run.h5");
  write_run_file(path, in);
  const std::string script = file("check.py");
  std::ofstream(script) << R"PY(
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
for key in ["run_id", "label", "method", "status", "sqlab_version", "git_sha", "created",
            "sweep.quant.bits", "host"]:
    assert isinstance(f.attrs[key], str), (key, type(f.attrs[key]))
assert f.attrs["label"] == "ρ-sweep µ", f.attrs["label"]
assert f.attrs["status"] == "complete"
assert "error" not in f.attrs
assert f.attrs["seed"] == -1234567890123 and f.attrs["seed"].dtype == np.int64
assert h5py.check_string_dtype(f["config"].dtype).encoding == "utf-8"
assert "ρ ≤ 1" in f["config"].asstr()[()]
assert f["metrics/ppl"][()] == 5.678901234567891
assert f["sites/layers.0.attn.q_proj+k_proj+v_proj/metrics/sqnr_db"][()] == 21.5
step, value = f["traces/loss/step"], f["traces/loss/value"]
assert len(step) == len(value) == 5000, (len(step), len(value))
assert step.dtype == np.int64 and value.dtype == np.float64
assert step.maxshape == (None,) and step.chunks is not None
assert f["traces/grad-norm/step"].shape == (0,) and f["traces/grad-norm/value"].maxshape == (None,)
assert f["histograms/act_before/edges"].shape == (5,)
assert f["histograms/act_before/counts"].shape == (4,)
assert f["rotations/layers.0.attn.q_proj+k_proj+v_proj/R2"].shape == (2, 3)
assert f["rotations/layers.0.mlp.down_proj/R"].dtype == np.float64
assert f["timing/total"][()] == 1.75
print("h5py ok")
)PY";
  const std::string log = file("check.log");
  int rc = std::system(("/usr/bin/python3 " + script + " " + path + " >" + log + " 2>&1").c_str());
  std::ifstream log_in(log);
  std::string output((std::istreambuf_iterator<char>(log_in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("h5py ok"), std::string::npos) << output;
}

}  // namespace
}  // namespace sqlab
