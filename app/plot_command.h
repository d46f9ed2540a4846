// `sqlab plot RESULTS_DIR [--out DIR]`: the figures of a results directory, drawn by
// the analysis/ Python package (matplotlib, h5py from Debian via /usr/bin/python3).
#pragma once

#include <string>
#include <vector>

namespace sqlab {

struct Experiment;

int command_plot(const std::vector<std::string>& args);

struct PlotOutcome {
  int exit_code = 0;               // sqlab's: 0 drawn, 1 a figure failed, 2 set-up/usage, 130 interrupted
  std::vector<std::string> paths;  // the files written
};

// Runs `python3 -m analysis RESULTS_DIR --out OUT [--only A,B]` (out_dir "" means
// RESULTS_DIR/figures). Python's messages go to stderr as they come; the written
// paths are collected, not printed. Never throws.
PlotOutcome draw_figures(const std::string& results_dir, const std::string& out_dir,
                         const std::vector<std::string>& only);

// The figure families analysis/figures.py draws (its FIGURES), so `plots: [...]` can be
// checked before any run starts. A test keeps the two lists equal.
const std::vector<std::string>& figure_families();

// Throws a config error naming the file and line when `plots:` lists an unknown figure.
void check_plot_names(const Experiment& ex);

// `figures: DIR/figures (N files)` after `sqlab run`, or how to redraw them when drawing failed.
void print_figures_line(const std::string& results_dir, const PlotOutcome& outcome);

}  // namespace sqlab
