// sqlab: the command line. The only place that wires core to the plugins.
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <strings.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/compare_command.h"
#include "app/export_command.h"
#include "app/generate_command.h"
#include "app/merge_command.h"
#include "app/plot_command.h"
#include "core/error.h"
#include "core/system.h"
#include "datasets/builtin.h"
#include "methods/builtin.h"
#include "model/model_runner.h"

namespace {

const char* kUsage = R"(sqlab: rotation-based quantization experiments for LLMs

usage:
  sqlab run EXPERIMENT.yaml [--set KEY=VALUE]... [--out DIR] [--shard K/N] [--jobs N] [--resume] [--fail-fast] [--dry-run] [--json]
  sqlab show EXPERIMENT.yaml [--set KEY=VALUE]...
  sqlab show RESULTS_DIR [--format table|markdown|json] [--metric NAME]...
  sqlab list methods|datasets|experiments|models|hadamard [--json]
  sqlab list models [--markdown] [--path CHECKPOINT]   # families read, published widths, Hadamard orders
  sqlab show-model CHECKPOINT [--format auto|hf|gguf|llama2c]
  sqlab plot RESULTS_DIR [--out DIR]
  sqlab export RESULTS_DIR [--run RUN_ID] [--format safetensors|npy] [--dense] --out DIR
  sqlab merge OUT DIR...                  # shard directories into one
  sqlab generate --model PATH [--tokenizer PATH] --prompt TEXT [--steps N] [--set KEY=VALUE]...
  sqlab compare DIR_A DIR_B [...] [--metric NAME]... [--format table|markdown|json] [--force]
  sqlab --help | --version

exit codes: 0 all runs complete; 1 a run failed (the others ran and were saved);
            2 usage or configuration error (nothing ran); 130 interrupted (143: SIGTERM).
Run `sqlab COMMAND --help` for a command's options.
)";

// OpenBLAS picks its kernels when the library loads, before main, from OPENBLAS_CORETYPE or
// its own CPU detection, and both can be wrong: an inherited OPENBLAS_CORETYPE=Haswell
// halves f32 GEMM speed on AVX-512 CPUs (toolchain.md), and OpenBLAS 0.3.21 does not know
// recent Xeons and falls back to its generic Prescott kernels (28 instead of 110 GFLOPS on
// one core here; scripts/openblas_coretype.sh makes the same choice for the tests). So
// when the running core is a generic fallback, or a forced Haswell on an AVX-512 CPU, start
// again with the core this CPU's flags call for. SQLAB_KEEP_CORETYPE=1 keeps OpenBLAS's.
const char* core_for_this_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

bool generic_core(std::string name) {
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* generic : {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai",
                              "coppermine", "northwood", "banias", "unknown"})
    if (name == generic) return true;
  return false;
}

void reexec_with_fast_openblas(char** argv) {
  if (std::getenv("SQLAB_KEEP_CORETYPE") || std::getenv("SQLAB_OPENBLAS_CHOSEN")) return;
  const char* best = core_for_this_cpu();
  const std::string running = sqlab::openblas_core_name();
  if (running.empty() || !best) return;
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  const bool slow_forced = forced && strcasecmp(running.c_str(), "Haswell") == 0 && std::string(best) == "SkylakeX";
  if (!generic_core(running) && !slow_forced) return;
  setenv("OPENBLAS_CORETYPE", best, 1);
  setenv("SQLAB_OPENBLAS_CHOSEN", "1", 1);  // once: never loop
  execv("/proc/self/exe", argv);            // returns only on failure: carry on as we are
}

}  // namespace

int main(int argc, char** argv) {
  reexec_with_fast_openblas(argv);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    fmt::print(args.empty() ? stderr : stdout, "{}", kUsage);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--version") {
    fmt::print("sqlab {} ({})\n", SQLAB_VERSION, SQLAB_GIT_SHA);
    return 0;
  }
  sqlab::configure_threads();
  sqlab::install_interrupt_handlers();
  sqlab::Registries registries;
  sqlab::register_builtin_methods(registries.methods);
  sqlab::register_builtin_datasets(registries.datasets);
  registries.model_runs = sqlab::make_model_run_backend();

  const std::string command = args[0];
  args.erase(args.begin());
  try {
    if (command == "run") return sqlab::command_run(args, registries);
    if (command == "show") return sqlab::command_show(args, registries);
    if (command == "list") return sqlab::command_list(args, registries);
    if (command == "show-model") return sqlab::command_show_model(args);
    if (command == "plot") return sqlab::command_plot(args);
    if (command == "export") return sqlab::command_export(args);
    if (command == "compare") return sqlab::command_compare(args);
    if (command == "merge") return sqlab::command_merge(args);
    if (command == "generate") return sqlab::command_generate(args, registries);
    fmt::print(stderr, "sqlab: unknown command '{}' (valid: run, show, show-model, list, plot, export, compare, merge, generate)\n\n{}", command, kUsage);
    return 2;
  } catch (const sqlab::Error& e) {
    fmt::print(stderr, "sqlab: {}\n", e.what());
    return e.kind() == sqlab::ErrorKind::config ? 2 : 1;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "sqlab: {}\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "sqlab: {}\n", e.what());
    return 1;
  }
}
