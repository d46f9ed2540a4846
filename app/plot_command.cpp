#include "app/plot_command.h"
#include "app/cli_args.h"

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "core/experiment.h"

namespace sqlab {
namespace po = boost::program_options;
namespace fs = std::filesystem;
namespace {

// Debian's Python, not the first python3 on PATH: a pyenv or venv python3 cannot see
// python3-matplotlib / python3-h5py (toolchain.md). SQLAB_PYTHON overrides it.
std::string python_path() {
  const char* env = std::getenv("SQLAB_PYTHON");
  return env && *env ? env : "/usr/bin/python3";
}

const char* kPackages = "python3 python3-matplotlib python3-h5py python3-numpy python3-yaml";

// The folder that holds analysis/ (the source tree this binary was built from).
std::string analysis_root() {
  const fs::path root(SQLAB_SOURCE_DIR);
  if (!fs::exists(root / "analysis" / "__main__.py"))
    throw config_error(fmt::format("plot: the analysis package is not at {}/analysis (sqlab looks for "
                                   "it in the source tree it was built from)", root.string()));
  return root.string();
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : sep) + item;
  return text;
}

struct ChildResult {
  int status = 0;      // waitpid status
  bool exec_failed = false;
  std::string out;     // the child's stdout
};

// This process's environment with `changes` (NAME=value) replacing or adding entries.
std::vector<std::string> environment_with(const std::vector<std::string>& changes) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    bool replaced = false;
    for (const auto& change : changes)
      replaced = replaced || entry.compare(0, change.find('=') + 1, change, 0, change.find('=') + 1) == 0;
    if (!replaced) env.push_back(entry);
  }
  env.insert(env.end(), changes.begin(), changes.end());
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& items) {
  std::vector<char*> pointers;
  for (auto& item : items) pointers.push_back(item.data());
  pointers.push_back(nullptr);
  return pointers;
}

// fork + execve with stdout captured through a pipe; stderr is inherited so Python's
// messages reach the user as they are written. Everything the child needs is built
// before fork: between fork and exec only async-signal-safe calls (threads of LibTorch
// may hold the allocator's lock at fork time).
ChildResult run_child(std::vector<std::string> argv, const std::string& pythonpath) {
  std::vector<std::string> env = environment_with({"PYTHONPATH=" + pythonpath, "MPLBACKEND=Agg"});
  std::vector<char*> cargv = c_strings(argv);
  std::vector<char*> cenv = c_strings(env);
  int fds[2];
  if (pipe(fds) != 0) throw Error(fmt::format("plot: pipe failed: {}", std::strerror(errno)));
  const pid_t pid = fork();
  if (pid < 0) throw Error(fmt::format("plot: fork failed: {}", std::strerror(errno)));
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  close(fds[1]);
  ChildResult result;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fds[0], buffer, sizeof buffer);
    if (n > 0) result.out.append(buffer, static_cast<size_t>(n));
    else if (n == 0 || errno != EINTR) break;
  }
  close(fds[0]);
  while (waitpid(pid, &result.status, 0) < 0 && errno == EINTR) {
  }
  result.exec_failed = WIFEXITED(result.status) && WEXITSTATUS(result.status) == 127;
  return result;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

// The analysis entry point's exit codes (analysis/__main__.py) -> sqlab's (contract.md).
int map_exit(const ChildResult& child, const std::string& python) {
  if (child.exec_failed) {
    fmt::print(stderr, "sqlab plot: cannot run {}; install Debian's Python and its plotting packages:\n"
               "  sudo apt-get install {}\n", python, kPackages);
    return 2;
  }
  if (WIFSIGNALED(child.status)) return WTERMSIG(child.status) == SIGINT ? 130 : 1;
  switch (WEXITSTATUS(child.status)) {
    case 0: return 0;
    case 2: return 2;  // usage, or not a results directory (the message is printed)
    case 3: return 2;  // packages missing (the install hint is printed)
    case 130: return 130;
    default: return 1;
  }
}

}  // namespace

const std::vector<std::string>& figure_families() {
  // The keys of analysis/figures.py FIGURES, in its order (analysis/tests checks they agree).
  static const std::vector<std::string> names = {"convergence", "traces", "ablation", "outliers", "error_split",
                                                 "channels", "histograms", "sweep", "sweep_map", "time",
                                                 "scaling", "zero_shot"};
  return names;
}

void check_plot_names(const Experiment& ex) {
  const auto& valid = figure_families();
  for (const auto& name : ex.plot_names) {
    if (std::find(valid.begin(), valid.end(), name) != valid.end()) continue;
    const YAML::Node node = ex.document["plots"];
    const std::string where = node ? fmt::format("{}:{}", ex.file, node.Mark().line + 1) : ex.file;
    throw config_error(fmt::format("{}: plots: unknown figure '{}' (valid: true, false, or a list of {})", where,
                                   name, join(valid, ", ")));
  }
}

void print_figures_line(const std::string& results_dir, const PlotOutcome& outcome) {
  if (!outcome.paths.empty()) {
    const fs::path dir = fs::path(outcome.paths.front()).parent_path();
    fmt::print("\nfigures: {} ({} files)\n", fs::absolute(dir).lexically_normal().string(), outcome.paths.size());
  }
  if (outcome.exit_code != 0)
    fmt::print(stderr, "sqlab: drawing the figures failed (the runs are saved); redraw with `sqlab plot {}`\n",
               results_dir);
}

PlotOutcome draw_figures(const std::string& results_dir, const std::string& out_dir,
                         const std::vector<std::string>& only) {
  PlotOutcome outcome;
  try {
    if (!fs::is_directory(results_dir))
      throw config_error(fmt::format("plot: {}: no such results directory", results_dir));
    const std::string python = python_path();
    std::vector<std::string> argv = {python, "-m", "analysis", results_dir};
    if (!out_dir.empty()) argv.insert(argv.end(), {"--out", out_dir});
    if (!only.empty()) argv.insert(argv.end(), {"--only", join(only, ",")});
    const char* old = std::getenv("PYTHONPATH");
    const std::string pythonpath = analysis_root() + (old && *old ? std::string(":") + old : "");
    const ChildResult child = run_child(argv, pythonpath);
    outcome.paths = lines_of(child.out);
    outcome.exit_code = map_exit(child, python);
  } catch (const Error& e) {
    fmt::print(stderr, "sqlab: {}\n", e.what());
    outcome.exit_code = e.kind() == ErrorKind::config ? 2 : 1;
  }
  return outcome;
}

int command_plot(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("results", po::value<std::string>(), "results directory (holds runs/*.h5)")(
      "out", po::value<std::string>(), "where the figures go (default: RESULTS_DIR/figures)")(
      "only", po::value<std::vector<std::string>>()->composing(),
      "draw only these figure families (repeat or comma-separate)");
  po::positional_options_description positional;
  positional.add("results", 1);
  po::variables_map vm;
  const std::string usage = "sqlab plot RESULTS_DIR [--out DIR] [--only FIGURE,...]\n\nfigures: " +
                            join(figure_families(), ", ") +
                            "\n(each is drawn when the results hold what it shows; PNG and PDF)";
  if (!parse_args("plot", args, options, positional, usage, vm)) return 0;
  if (!vm.count("results")) throw config_error("plot: missing RESULTS_DIR (see `sqlab plot --help`)");
  std::vector<std::string> only;
  if (vm.count("only"))
    for (const auto& item : vm["only"].as<std::vector<std::string>>()) {
      std::istringstream in(item);
      for (std::string name; std::getline(in, name, ',');)
        if (!name.empty()) only.push_back(name);
    }
  const PlotOutcome outcome =
      draw_figures(vm["results"].as<std::string>(), vm.count("out") ? vm["out"].as<std::string>() : "", only);
  for (const auto& path : outcome.paths) fmt::print("{}\n", path);
  return outcome.exit_code;
}

}  // namespace sqlab
