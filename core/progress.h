// Progress of a long loop (runs of a sweep, layers of a model run): on a terminal one line
// redrawn in place (done / total, elapsed, ETA); elsewhere (a log file under nohup or SLURM)
// a plain line at most every SQLAB_PROGRESS_SECONDS (default 60), so that a log shows how a
// run of an hour is going before it ends.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "core/system.h"

namespace sqlab {

enum class ProgressMode { off, terminal, log };

// terminal when stderr is one, log otherwise.
inline ProgressMode default_progress_mode() { return stderr_is_terminal() ? ProgressMode::terminal : ProgressMode::log; }

// Seconds between log lines: SQLAB_PROGRESS_SECONDS when it is a number >= 0, else 60.
inline double progress_log_seconds() {
  const char* env = std::getenv("SQLAB_PROGRESS_SECONDS");
  if (!env || !*env) return 60.0;
  char* end = nullptr;
  const double seconds = std::strtod(env, &end);
  return *end == '\0' && seconds >= 0.0 ? seconds : 60.0;
}

class Progress {
 public:
  Progress(size_t total, ProgressMode mode, double log_seconds = progress_log_seconds())
      : total_(total), mode_(mode), log_seconds_(log_seconds), start_(now_seconds()), last_line_(start_) {}
  ~Progress() { finish(); }

  void update(size_t done, const std::string& current) {
    if (mode_ == ProgressMode::off) return;
    const double now = now_seconds();
    if (mode_ == ProgressMode::log && now - last_line_ < log_seconds_) return;
    const double elapsed = now - start_;
    const double eta = done > 0 ? elapsed / done * (total_ - done) : 0.0;
    std::string line = fmt::format("[{}/{}] {:.1f}s elapsed, ETA {}  {}", done, total_, elapsed,
                                   done > 0 ? fmt::format("{:.1f}s", eta) : std::string("?"), current);
    if (mode_ == ProgressMode::log) {
      fmt::print(stderr, "progress: {}\n", line);
      last_line_ = now;
    } else {
      if (line.size() > 100) line.resize(100);
      fmt::print(stderr, "\r\033[K{}", line);
      drawn_ = true;
    }
    std::fflush(stderr);
  }

  void finish() {
    if (drawn_) fmt::print(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  size_t total_;
  ProgressMode mode_;
  double log_seconds_;
  double start_, last_line_;
  bool drawn_ = false;
};

}  // namespace sqlab
