// libFuzzer target: the experiment YAML parser alone (load_experiment: YAML, duplicate
// keys, presets, sweep expansion, run ids), built from its three source files so that
// it is quick to build; fuzz_experiment adds every plugin's option parsing.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/experiment.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string file = [] {
    const auto dir = std::filesystem::temp_directory_path() / ("sqlab_fuzz_yaml_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    return (dir / "experiment.yaml").string();
  }();
  std::ofstream(file, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), size);
  return sqlab::fuzz::expect_clean([&] { sqlab::load_experiment(file, {}, {{}, sqlab::fuzz::kMaxRuns}); });
}
