// libFuzzer target: the experiment YAML parser and resolver. The input is written to
// an experiment file and goes through load_experiment (YAML, presets, --set-free
// overrides, sweep expansion, run ids) and prepare_all (every method's and dataset's
// options through ConfigReader, data validation), as `sqlab run --dry-run` does.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/experiment.h"
#include "core/runner.h"
#include "datasets/builtin.h"
#include "fuzz/fuzz_util.h"
#include "methods/builtin.h"

namespace {

const sqlab::Registries& registries() {
  static const sqlab::Registries r = [] {
    sqlab::Registries built;
    sqlab::register_builtin_methods(built.methods);
    sqlab::register_builtin_datasets(built.datasets);
    return built;
  }();
  return r;
}

// One private directory per process, so parallel fuzzers (-jobs) do not collide and
// relative paths in `data:` stay inside it.
const std::string& experiment_file() {
  static const std::string file = [] {
    const auto dir = std::filesystem::temp_directory_path() / ("sqlab_fuzz_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    std::filesystem::current_path(dir);
    return (dir / "experiment.yaml").string();
  }();
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& file = experiment_file();
  std::ofstream(file, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), size);
  return sqlab::fuzz::expect_clean([&] {
    const sqlab::Experiment ex = sqlab::load_experiment(file, {}, {sqlab::prepare_check(registries()), sqlab::fuzz::kMaxRuns});
    sqlab::prepare_all(ex, registries());
  });
}
