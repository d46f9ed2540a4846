// Reliability (issue #8): the bad-input corpus in tests/bad_inputs/ through the real
// binary. One directory per case, tests/bad_inputs/CATEGORY_WHAT/, holding its input
// files and case.yaml:
//   description: what is wrong
//   command: [run, experiment.yaml, --out, out]   # sqlab's arguments, cwd = the case
//   exit: 2                                       # the exit code it must give
//   message: "a fragment of stderr"               # or a list of fragments
// Each case runs in a copy of its directory with a hang guard (killed after 60 s: a
// hang is a failure, this is no speed assertion). None may crash (die by a signal),
// hang or exit 0; each gives its exit code and every fragment of its message, and a
// `run` that exits 2 creates no results directory (nothing ran).
//
// The categories are split into ctest suites (BadInputsYaml, BadInputsData, ...) so
// that `ctest -j` spreads them; inside a suite the cases run in parallel.
// FuzzRegressions feeds every input the fuzzers once crashed on (fuzz/regressions/)
// to the parser in process.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/experiment.h"
#include "fuzz/fuzz_util.h"
#include "io/gguf.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "tests/reliability_util.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {
namespace fs = std::filesystem;
using testing::Child;
using testing::TempDir;

constexpr double kHangGuardSeconds = 60;

const fs::path kCorpus = fs::path(SQLAB_SOURCE_DIR) / "tests" / "bad_inputs";

struct BadCase {
  std::string name;
  fs::path dir;
  std::string description;
  std::vector<std::string> command;
  int exit = 2;
  std::vector<std::string> messages;
};

std::string category_of(const std::string& name) { return name.substr(0, name.find('_')); }

BadCase read_case(const fs::path& dir) {
  BadCase c;
  c.name = dir.filename().string();
  c.dir = dir;
  const YAML::Node node = YAML::LoadFile((dir / "case.yaml").string());
  c.description = node["description"].as<std::string>();
  c.command = node["command"].as<std::vector<std::string>>();
  c.exit = node["exit"].as<int>();
  const YAML::Node message = node["message"];
  if (message.IsSequence()) c.messages = message.as<std::vector<std::string>>();
  else c.messages = {message.as<std::string>()};
  return c;
}

std::vector<fs::path> case_dirs() {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(kCorpus))
    if (entry.is_directory()) dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::vector<BadCase> cases_of(const std::function<bool(const std::string&)>& wanted) {
  std::vector<BadCase> cases;
  for (const fs::path& dir : case_dirs())
    if (wanted(category_of(dir.filename().string()))) cases.push_back(read_case(dir));
  return cases;
}

// Empty when the case behaved as expected; otherwise what went wrong.
std::string run_case(const BadCase& c, const fs::path& scratch) {
  const fs::path work = scratch / c.name;
  fs::copy(c.dir, work, fs::copy_options::recursive);
  Child child(work, c.command, "sqlab");
  if (!child.started()) return "could not start sqlab";
  child.wait(kHangGuardSeconds);
  const std::string err = child.err();
  std::string problem;
  if (child.hung() || child.term_signal()) problem = child.describe();
  else if (child.exit_code() == 0) problem = "exit 0 (accepted a bad input)";
  else if (child.exit_code() != c.exit) problem = "exit " + std::to_string(child.exit_code()) + ", expected " + std::to_string(c.exit);
  for (const std::string& fragment : c.messages)
    if (err.find(fragment) == std::string::npos) problem += (problem.empty() ? "" : "; ") + ("no '" + fragment + "' in stderr");
  const auto out = std::find(c.command.begin(), c.command.end(), "--out");
  if (c.exit == 2 && out != c.command.end() && out + 1 != c.command.end() && fs::exists(work / *(out + 1)))
    problem += (problem.empty() ? "" : "; ") + std::string("a results directory was created (something ran)");
  if (!problem.empty()) problem += "\n    stderr: " + err;
  return problem;
}

// Runs the cases on a few threads (each sqlab start costs ~0.7 s, mostly loading).
void run_all(const std::vector<BadCase>& cases) {
  ASSERT_FALSE(cases.empty());
  TempDir scratch;
  std::vector<std::string> problems(cases.size());
  std::atomic<size_t> next{0};
  const int jobs = std::max(1, std::atoi(std::getenv("SQLAB_BAD_INPUT_JOBS") ? std::getenv("SQLAB_BAD_INPUT_JOBS") : "4"));
  std::vector<std::thread> workers;
  for (int j = 0; j < jobs; ++j)
    workers.emplace_back([&] {
      for (size_t i; (i = next++) < cases.size();) problems[i] = run_case(cases[i], scratch.path());
    });
  for (auto& w : workers) w.join();
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_TRUE(problems[i].empty()) << cases[i].name << " (" << cases[i].description << "): " << problems[i];
}

bool is_yaml(const std::string& category) { return category == "yaml"; }
bool is_data(const std::string& category) { return category == "data"; }
bool is_model(const std::string& category) { return category == "checkpoint" || category == "tokenizer"; }
bool is_other(const std::string& category) { return !is_yaml(category) && !is_data(category) && !is_model(category); }

TEST(BadInputsCorpus, EveryCaseIsWellFormed) {
  std::map<std::string, int> per_category;
  for (const fs::path& dir : case_dirs()) {
    const std::string name = dir.filename().string();
    SCOPED_TRACE(name);
    EXPECT_NE(name.find('_'), std::string::npos) << "name it CATEGORY_WHAT";
    ASSERT_TRUE(fs::exists(dir / "case.yaml"));
    BadCase c;
    ASSERT_NO_THROW(c = read_case(dir));
    EXPECT_FALSE(c.description.empty());
    EXPECT_NE(c.exit, 0);
    EXPECT_FALSE(c.messages.empty());
    for (const std::string& m : c.messages) EXPECT_FALSE(m.empty());
    ++per_category[category_of(name)];
  }
  int total = 0;
  for (const auto& [category, n] : per_category) total += n;
  EXPECT_GE(total, 50);
  std::cerr << "[ bad inputs ] " << total << " cases:";
  for (const auto& [category, n] : per_category) std::cerr << " " << category << " " << n;
  std::cerr << "\n";
}

// The YAML cases in two halves (alternate cases), two ctest entries.
std::vector<BadCase> half(std::vector<BadCase> cases, size_t which) {
  std::vector<BadCase> kept;
  for (size_t i = which; i < cases.size(); i += 2) kept.push_back(std::move(cases[i]));
  return kept;
}

TEST(BadInputsYaml, ExitTwoWithTheirMessage) { run_all(half(cases_of(is_yaml), 0)); }
TEST(BadInputsYaml2, ExitTwoWithTheirMessage) { run_all(half(cases_of(is_yaml), 1)); }
TEST(BadInputsData, ExitTwoWithTheirMessage) { run_all(cases_of(is_data)); }
TEST(BadInputsOther, ExitTwoWithTheirMessage) { run_all(cases_of(is_other)); }
TEST(BadInputsModel, ExitTwoWithTheirMessage) {
  const std::vector<BadCase> cases = cases_of(is_model);
  if (cases.empty()) GTEST_SKIP() << "no checkpoint_* / tokenizer_* cases yet";
  run_all(cases);
}

// ---------------------------------------------------------------- fuzz regressions

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Every file of fuzz/regressions/TARGET/ through `parse`: it must return or throw
// sqlab::Error, nothing else (the fuzzer found a crash, a hang or a stray exception there).
void replay(const std::string& target, const std::function<void(const std::string&)>& parse) {
  const fs::path dir = fs::path(SQLAB_SOURCE_DIR) / "fuzz" / "regressions" / target;
  if (!fs::is_directory(dir)) return;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string bytes = read_bytes(entry.path());
    try {
      parse(bytes);
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << target << "/" << entry.path().filename().string() << ": " << e.what();
    }
  }
}

TEST(FuzzRegressions, ParsersRejectCleanly) {
  replay("safetensors_header", [](const std::string& bytes) {
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(), "fuzz");
  });
  replay("npy_header", [](const std::string& bytes) {
    parse_npy_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(), "fuzz");
  });
  replay("gguf_header", [](const std::string& bytes) {
    parse_gguf_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(), "fuzz");
  });
  TempDir dir;
  for (const char* target : {"experiment", "experiment_yaml"})
    replay(target, [&](const std::string& bytes) {
      const std::string file = dir.file("experiment.yaml");
      std::ofstream(file, std::ios::binary) << bytes;
      load_experiment(file, {}, {{}, fuzz::kMaxRuns});  // as the fuzz targets load them
    });
}

}  // namespace
}  // namespace sqlab
