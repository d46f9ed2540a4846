// A one-line progress display (runs done / total, elapsed, ETA) on a terminal.
#pragma once

#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "core/system.h"

namespace sqlab {

class Progress {
 public:
  Progress(size_t total, bool enabled) : total_(total), enabled_(enabled), start_(now_seconds()) {}
  ~Progress() { finish(); }

  void update(size_t done, const std::string& current) {
    if (!enabled_) return;
    const double elapsed = now_seconds() - start_;
    const double eta = done > 0 ? elapsed / done * (total_ - done) : 0.0;
    std::string line = fmt::format("[{}/{}] {:.1f}s elapsed, ETA {}  {}", done, total_, elapsed,
                                   done > 0 ? fmt::format("{:.1f}s", eta) : std::string("?"), current);
    if (line.size() > 100) line.resize(100);
    fmt::print(stderr, "\r\033[K{}", line);
    std::fflush(stderr);
    drawn_ = true;
  }

  void finish() {
    if (drawn_) fmt::print(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  size_t total_;
  bool enabled_;
  double start_;
  bool drawn_ = false;
};

}  // namespace sqlab
