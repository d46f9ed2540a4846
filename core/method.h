// The rotation-method plugin interface: a RotationMethod holds its options (read from
// YAML when it is created) and fits a Rotation on one site's calibration data.
#pragma once

#include <cstdint>
#include <string>

#include "core/registry.h"
#include "core/rotation.h"
#include "core/site.h"
#include "quant/quant.h"

namespace sqlab {

// What a method may record while fitting; the runner stores it in the run file.
class FitLog {
 public:
  virtual ~FitLog() = default;
  // One point of a trace (/traces/NAME), e.g. loss or grad_norm per step.
  virtual void trace(const std::string& name, int64_t step, double value) = 0;
  // A scalar about the fit (e.g. outliers detected), stored with the site's metrics.
  virtual void metric(const std::string& name, double value) = 0;
  // A warning for the user (printed, and kept in the run file's attributes).
  virtual void warn(const std::string& message) = 0;
};

struct FitContext {
  const Site& site;
  const QuantConfig& quant;
  uint64_t seed;
  FitLog& log;
};

class RotationMethod {
 public:
  virtual ~RotationMethod() = default;
  virtual RotationPtr fit(const FitContext& context) const = 0;
  // Throws a config error when the method cannot act on a site of width n (e.g. a
  // Kronecker pair that does not factor n). Called before any run starts, for every
  // width the dataset knows in advance.
  virtual void check_width(int64_t n) const {}
  // False when fit reads only the site's X: a site may then come with W empty (0 x n).
  // The model's residual site stacks every layer's reading weights (18 GB in float32 for
  // LLaMA-2-7B), which the layer-by-layer pipeline collects only for methods that read them.
  virtual bool reads_weights() const { return true; }
  // False when fit reads only the site's width from X (data-free rotations: hadamard,
  // identity, random_orthogonal): a site may then come with X empty (0 x n), and the model
  // pipeline makes no calibration forward pass for the fit.
  virtual bool reads_activations() const { return true; }
};

using MethodRegistry = Registry<RotationMethod>;

}  // namespace sqlab
