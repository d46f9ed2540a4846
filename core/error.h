// One exception type for the whole project; main maps it to exit codes.
#pragma once

#include <stdexcept>
#include <string>

namespace sqlab {

// Config errors (bad YAML, unknown keys/names, bad shapes in input files) are
// detected before anything runs and exit with 2; runtime errors fail one run.
enum class ErrorKind { config, runtime };

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, ErrorKind kind = ErrorKind::runtime)
      : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Thrown for anything that is the user's input's fault: exit code 2.
inline Error config_error(const std::string& message) {
  return Error(message, ErrorKind::config);
}

}  // namespace sqlab
