// Child processes for the reliability harnesses (tests/test_kill.cpp,
// tests/test_bad_inputs.cpp): start the real `sqlab` binary with fork/exec, signal it,
// and wait for it with a hang guard.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace sqlab::testing {

// A running `sqlab ARGS` in `dir`, stdout and stderr going to files in `dir`.
class Child {
 public:
  Child(const std::filesystem::path& dir, const std::vector<std::string>& args,
        const std::string& tag = "child")
      : out_((dir / (tag + ".stdout")).string()), err_((dir / (tag + ".stderr")).string()) {
    std::vector<std::string> argv_text = {SQLAB_BINARY};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;  // built before fork: the child may not allocate
    for (std::string& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string dir_text = dir.string();
    pid_ = fork();
    if (pid_ == 0) {
      // In the child: only async-signal-safe calls until exec.
      if (chdir(dir_text.c_str()) != 0) _exit(126);
      const int out = open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out < 0 || err < 0) _exit(126);
      dup2(out, STDOUT_FILENO);
      dup2(err, STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !done_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
    }
  }

  bool started() const { return pid_ > 0; }
  void signal(int sig) { kill(pid_, sig); }

  // Waits up to `seconds`; on a hang kills it (SIGKILL) and returns false.
  bool wait(double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (true) {
      if (poll()) return true;
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status_, 0);
        done_ = true;
        hung_ = true;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  // True (and the status kept) once it has ended.
  bool poll() {
    if (done_) return true;
    if (waitpid(pid_, &status_, WNOHANG) == pid_) done_ = true;
    return done_;
  }

  bool hung() const { return hung_; }
  bool exited() const { return done_ && WIFEXITED(status_); }
  int exit_code() const { return exited() ? WEXITSTATUS(status_) : -1; }
  int term_signal() const { return done_ && WIFSIGNALED(status_) ? WTERMSIG(status_) : 0; }
  std::string out() const { return read_text(out_); }
  std::string err() const { return read_text(err_); }
  // "exit 2", "signal 9", "hung"
  std::string describe() const {
    if (hung_) return "hung (killed after the time limit)";
    if (term_signal()) return "killed by signal " + std::to_string(term_signal()) + " (" + strsignal(term_signal()) + ")";
    return "exit " + std::to_string(exit_code());
  }

 private:
  std::string out_, err_;
  pid_t pid_ = -1;
  int status_ = 0;
  bool done_ = false;
  bool hung_ = false;
};

}  // namespace sqlab::testing
