#include "app/commands.h"

#include "app/cli_args.h"
#include "app/plot_command.h"
#include "app/run_jobs.h"
#include "app/show_results.h"

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>
#include <map>
#include <tuple>

#include "core/config.h"
#include "core/error.h"
#include "core/experiment.h"
#include "core/progress.h"
#include "core/runner.h"
#include "core/summary.h"
#include "core/system.h"
#include "model/families.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/kronecker.h"

namespace sqlab {
namespace po = boost::program_options;
namespace fs = std::filesystem;
namespace {

// Parses a subcommand's arguments; returns false when --help was printed.
std::string require_file(const po::variables_map& vm, const std::string& command) {
  if (!vm.count("experiment"))
    throw config_error(fmt::format("{}: missing EXPERIMENT.yaml (see `sqlab {} --help`)", command, command));
  return vm["experiment"].as<std::string>();
}

std::vector<std::string> overrides_of(const po::variables_map& vm) {
  return vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
}

std::string point_text(const RunSpec& run) {
  std::string text;
  for (const auto& [key, value] : run.point) text += fmt::format(" {}={}", key, value);
  return text;
}

void print_runs(const Experiment& ex) {
  fmt::print("runs ({}):\n", ex.runs.size());
  for (const auto& run : ex.runs)
    fmt::print("  {}  label={} method={} seed={}{}\n", run.run_id, run.label, run.method, run.seed, point_text(run));
}

// "K/N" with 0 <= K < N.
std::pair<int64_t, int64_t> parse_shard(const std::string& text) {
  const size_t slash = text.find('/');
  try {
    if (slash != std::string::npos) {
      size_t used_k = 0, used_n = 0;
      const int64_t k = std::stoll(text.substr(0, slash), &used_k);
      const int64_t n = std::stoll(text.substr(slash + 1), &used_n);
      if (used_k == slash && used_n == text.size() - slash - 1 && n > 0 && k >= 0 && k < n) return {k, n};
    }
  } catch (const std::exception&) {
  }
  throw config_error(fmt::format("run: --shard {}: expected K/N with 0 <= K < N", text));
}

void validate(const Experiment& ex, const Registries& registries) { prepare_all(ex, registries); }

// What each --jobs worker runs: the same experiment, overrides, directory and shard.
std::vector<std::string> worker_args(const po::variables_map& vm, const std::string& out_dir) {
  std::vector<std::string> args{"run", vm["experiment"].as<std::string>(), "--out", out_dir};
  for (const std::string& set : overrides_of(vm)) args.insert(args.end(), {"--set", set});
  if (vm.count("shard")) args.insert(args.end(), {"--shard", vm["shard"].as<std::string>()});
  if (vm["resume"].as<bool>()) args.push_back("--resume");
  if (vm["fail-fast"].as<bool>()) args.push_back("--fail-fast");
  return args;
}

nlohmann::json run_json(const Experiment& ex) {
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& run : ex.runs) {
    nlohmann::json point = nlohmann::json::object();
    for (const auto& [k, v] : run.point) point[k] = v;
    runs.push_back({{"run_id", run.run_id}, {"label", run.label}, {"method", run.method},
                    {"seed", run.seed}, {"point", point}});
  }
  return runs;
}

std::string source_text(const KeySource& source) {
  if (source.mark.is_null()) return source.file;
  return fmt::format("{}:{}", source.file, source.mark.line + 1);
}

nlohmann::json sources_json(const SourceMap& sources) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [key, source] : sources) j[key] = source_text(source);
  return j;
}

// YAML -> JSON for --json output (scalars stay strings unless they read as numbers/bools).
nlohmann::json yaml_to_json(const YAML::Node& node) {
  if (!node || node.IsNull()) return nullptr;
  if (node.IsSequence()) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& item : node) list.push_back(yaml_to_json(item));
    return list;
  }
  if (node.IsMap()) {
    nlohmann::json map = nlohmann::json::object();
    for (const auto& item : node) map[item.first.as<std::string>()] = yaml_to_json(item.second);
    return map;
  }
  const std::string text = node.Scalar();
  if (node.Tag() != "!") {  // unquoted: a number or a bool when it reads as one
    int64_t i;
    double d;
    bool b;
    if (YAML::convert<int64_t>::decode(node, i)) return i;
    if (YAML::convert<double>::decode(node, d)) return d;
    if (YAML::convert<bool>::decode(node, b)) return b;
  }
  return text;
}

}  // namespace

int command_run(const std::vector<std::string>& args, const Registries& registries) {
  po::options_description options("options");
  options.add_options()("experiment", po::value<std::string>(), "experiment YAML file")(
      "set", po::value<std::vector<std::string>>()->composing(), "override a key: --set a.b.c=VALUE")(
      "out", po::value<std::string>(), "results directory (default: the experiment's `output`)")(
      "resume", po::bool_switch(), "skip runs whose file is complete")(
      "fail-fast", po::bool_switch(), "stop at the first failed run (default: run every other run, exit 1)")(
      "shard", po::value<std::string>(), "run only shard K of N (K/N, 0-based), e.g. from SLURM_ARRAY_TASK_ID")(
      "jobs,j", po::value<int>()->default_value(1), "run N runs at once in N worker processes (threads divided)")(
      "worker", po::value<std::string>(), "(internal) worker W/N of --jobs")(
      "dry-run", po::bool_switch(), "validate and list the runs, run nothing")(
      "json", po::bool_switch(), "print a machine-readable summary on stdout");
  po::positional_options_description positional;
  positional.add("experiment", 1);
  po::variables_map vm;
  if (!parse_args("run", args, options, positional, "sqlab run EXPERIMENT.yaml [options]", vm)) return 0;

  const Experiment ex = load_experiment(require_file(vm, "run"), overrides_of(vm), {prepare_check(registries)});
  check_plot_names(ex);
  const bool json = vm["json"].as<bool>();
  if (vm["dry-run"].as<bool>()) {
    validate(ex, registries);
    if (json) fmt::print("{}\n", nlohmann::json{{"name", ex.name}, {"runs", run_json(ex)}}.dump(2));
    else print_runs(ex);
    return 0;
  }
  RunnerOptions runner;
  runner.out_dir = vm.count("out") ? vm["out"].as<std::string>() : ex.output;
  runner.resume = vm["resume"].as<bool>();
  runner.fail_fast = vm["fail-fast"].as<bool>();
  if (vm.count("shard")) std::tie(runner.shard_index, runner.shard_count) = parse_shard(vm["shard"].as<std::string>());
  runner.progress = default_progress_mode();
  const int jobs = vm["jobs"].as<int>();
  if (jobs < 1) throw config_error(fmt::format("run: --jobs {}: expected a positive number of processes", jobs));
  const bool worker = vm.count("worker") > 0;
  if (worker) {  // one of a --jobs parent's processes (app/run_jobs.h)
    std::tie(runner.worker_index, runner.worker_count) = parse_shard(vm["worker"].as<std::string>());
    runner.summary_dir = worker_summary_dir(runner.out_dir, runner.worker_index);
    runner.progress = ProgressMode::off;
  }
  const RunnerResult result = jobs > 1 && !worker
                                  ? run_jobs(ex, registries, runner, jobs, worker_args(vm, runner.out_dir))
                                  : run_experiment(ex, registries, runner);
  // `plots:` figures come after the runs; their failure is reported, not the exit code.
  const bool stopped = result.exit_code > 128;  // by SIGINT (130) or SIGTERM (143)
  const bool plot = ex.plots && !stopped && !worker;
  const PlotOutcome figures = plot ? draw_figures(runner.out_dir, "", ex.plot_names) : PlotOutcome{};
  if (json) {
    nlohmann::json j = summary_json(ex.name, result.rows, ex.swept_keys);
    j["output"] = runner.out_dir;
    j["exit_code"] = result.exit_code;
    if (plot) j["figures"] = figures.paths;
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("results: {}\n\n{}", fs::absolute(runner.out_dir).lexically_normal().string(),
               metrics_table(result.rows, headline_metrics(result.rows)));
    if (plot) print_figures_line(runner.out_dir, figures);
  }
  if (stopped) fmt::print(stderr, "sqlab: interrupted; completed runs are saved (use --resume)\n");
  return result.exit_code;
}

int command_show(const std::vector<std::string>& args, const Registries& registries) {
  po::options_description options("options");
  options.add_options()("experiment", po::value<std::string>(), "experiment YAML file or results directory")(
      "set", po::value<std::vector<std::string>>()->composing(), "override a key: --set a.b.c=VALUE")(
      "format", po::value<std::string>()->default_value("table"), "results directory: table | markdown | json")(
      "metric", po::value<std::vector<std::string>>()->composing(), "results directory: a metric to show (repeat)")(
      "sites", po::bool_switch(), "results directory: per-site metrics of every run, a row per site")(
      "top", po::value<int64_t>()->default_value(0), "with --sites: the N largest sites by the first metric")(
      "json", po::bool_switch(), "experiment: print config, key sources and runs as JSON");
  po::positional_options_description positional;
  positional.add("experiment", 1);
  po::variables_map vm;
  if (!parse_args("show", args, options, positional,
                  "sqlab show EXPERIMENT.yaml [--set KEY=VALUE]...\n"
                  "       sqlab show RESULTS_DIR [--format table|markdown|json] [--metric NAME]...\n"
                  "       sqlab show RESULTS_DIR --sites [--metric NAME]... [--top N] [--format table|markdown]",
                  vm))
    return 0;
  if (vm.count("experiment") && fs::is_directory(vm["experiment"].as<std::string>()) && vm["sites"].as<bool>())
    return show_sites(vm["experiment"].as<std::string>(), vm["format"].as<std::string>(),
                      vm.count("metric") ? vm["metric"].as<std::vector<std::string>>() : std::vector<std::string>{},
                      vm["top"].as<int64_t>());
  if (vm.count("experiment") && fs::is_directory(vm["experiment"].as<std::string>()))
    return show_results(vm["experiment"].as<std::string>(), vm["format"].as<std::string>(),
                        vm.count("metric") ? vm["metric"].as<std::vector<std::string>>() : std::vector<std::string>{});
  const Experiment ex = load_experiment(require_file(vm, "show"), overrides_of(vm), {prepare_check(registries)});
  validate(ex, registries);
  if (vm["json"].as<bool>()) {
    fmt::print("{}\n", nlohmann::json{{"config", yaml_to_json(ex.resolved)}, {"sources", sources_json(*ex.sources)},
                                      {"runs", run_json(ex)}}.dump(2));
    return 0;
  }
  YAML::Emitter out;
  out << ex.resolved;
  fmt::print("# resolved configuration of {}\n{}\n\n# where each key comes from\n", ex.file, out.c_str());
  for (const auto& [key, source] : *ex.sources) fmt::print("{}: {}\n", key, source_text(source));
  fmt::print("\n");
  print_runs(ex);
  return 0;
}

namespace {

// name -> (file, description) of the experiments in ./experiments and the installed ones.
std::map<std::string, std::pair<std::string, std::string>> find_experiments() {
  std::map<std::string, std::pair<std::string, std::string>> found;
  for (const fs::path& dir : {fs::path("experiments"), fs::path(SQLAB_SOURCE_DIR) / "experiments"}) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() != ".yaml" || found.count(entry.path().stem().string())) continue;
      std::string description;
      try {
        const YAML::Node doc = load_yaml_file(entry.path().string());
        if (doc["description"]) description = doc["description"].as<std::string>();
      } catch (const std::exception& e) {
        description = "(unreadable: " + std::string(e.what()) + ")";
      }
      found[entry.path().stem().string()] = {entry.path().string(), description};
    }
  }
  return found;
}

}  // namespace

namespace {

bool has_hadamard(int64_t n) {
  int64_t m = 0, pow2 = 0;
  return hadamard_split(n, &m, &pow2);
}

}  // namespace

int command_show_model(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("path", po::value<std::string>(), "checkpoint (HF directory, GGUF or llama2.c file)")(
      "format", po::value<std::string>()->default_value("auto"), "auto | hf | gguf | llama2c");
  po::positional_options_description positional;
  positional.add("path", 1);
  po::variables_map vm;
  if (!parse_args("show-model", args, options, positional, "sqlab show-model CHECKPOINT [--format FORMAT]", vm))
    return 0;
  if (!vm.count("path")) throw config_error("show-model: give a checkpoint (usage: sqlab show-model CHECKPOINT)");
  fmt::print("{}", describe_checkpoint(vm["path"].as<std::string>(), vm["format"].as<std::string>()));
  return 0;
}

int command_list(const std::vector<std::string>& args, const Registries& registries) {
  po::options_description options("options");
  options.add_options()("what", po::value<std::string>(),
                        "methods | datasets | experiments | models | hadamard | factorizations N")(
      "n", po::value<int64_t>(), "the width whose Kronecker factorizations to list")(
      "markdown", po::bool_switch(), "models: the README's tables")(
      "path", po::value<std::string>(), "models: describe this checkpoint (as show-model)")(
      "json", po::bool_switch(), "machine-readable output");
  po::positional_options_description positional;
  positional.add("what", 1).add("n", 1);
  po::variables_map vm;
  if (!parse_args("list", args, options, positional,
                  "sqlab list methods|datasets|experiments|models|hadamard|factorizations N [--json]", vm))
    return 0;
  const std::string what = vm.count("what") ? vm["what"].as<std::string>() : "";
  std::vector<std::pair<std::string, std::string>> items;  // name, description
  if (what == "methods") {
    for (const auto& e : registries.methods.entries()) items.emplace_back(e.name, e.description);
  } else if (what == "datasets") {
    for (const auto& e : registries.datasets.entries()) items.emplace_back(e.name, e.description);
  } else if (what == "experiments") {
    for (const auto& [name, info] : find_experiments()) items.emplace_back(name, info.second + "  [" + info.first + "]");
  } else if (what == "models") {
    if (vm.count("path")) {
      fmt::print("{}", describe_checkpoint(vm["path"].as<std::string>()));
      return 0;
    }
    if (vm["markdown"].as<bool>()) {
      fmt::print("{}", model_families_markdown());
      return 0;
    }
    for (const ModelFamily& f : model_families())
      items.emplace_back(f.model_type, fmt::format("{} (GGUF '{}'): {}", f.hf_class, f.gguf_arch, f.differs));
    for (const PublishedShape& s : published_shapes())
      items.emplace_back(fmt::format("{} {}", s.family, s.model),
                         fmt::format("{}{}; MLP {}; head_dim {}", s.read_by_sqlab ? "" : "(widths only) hidden ",
                                     hadamard_plan_text(s.dim), hadamard_plan_text(s.hidden_dim),
                                     hadamard_plan_text(s.head_dim)));
  } else if (what == "hadamard") {
    // The base orders sqlab builds and how: n = base x 2^k has a fast Hadamard transform.
    for (int64_t m : hadamard_base_orders())
      items.emplace_back(std::to_string(m), hadamard_construction(m));
  } else if (what == "factorizations") {
    // Every `kronecker: [n1, n2]` a sweep over n may list.
    if (!vm.count("n") || vm["n"].as<int64_t>() < 4)
      throw config_error("list factorizations: give the width, e.g. `sqlab list factorizations 4096`");
    for (const auto& [n1, n2] : kronecker_factorizations(vm["n"].as<int64_t>()))
      items.emplace_back(fmt::format("[{}, {}]", n1, n2), has_hadamard(n2) ? "n2 has a Hadamard matrix"
                                                                        : "no Hadamard matrix of order n2");
  } else {
    throw config_error(fmt::format(
        "list: unknown category '{}' (valid: methods, datasets, experiments, models, hadamard, factorizations)", what));
  }
  if (vm["json"].as<bool>()) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& [name, description] : items) j.push_back({{"name", name}, {"description", description}});
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  size_t width = 0;
  for (const auto& item : items) width = std::max(width, item.first.size());
  for (const auto& [name, description] : items) fmt::print("{:<{}}  {}\n", name, width, description);
  return 0;
}

}  // namespace sqlab
