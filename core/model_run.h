// Model-level runs: an experiment with a `model:` key evaluates a whole model
// (perplexity of the fake-quantized model) instead of linear sites. The runner only
// dispatches; the implementation lives in model/ (model/model_runner.h) and is handed
// in by the app through Registries::model_runs, so core does not depend on model/.
#pragma once

#include <memory>

namespace sqlab {

struct Experiment;
struct PreparedRun;
struct QuantConfig;
struct RunRecord;
struct RunSpec;
class RotationMethod;

// A run's model, eval, calib and quant settings, read and checked.
class ModelRunPlan {
 public:
  virtual ~ModelRunPlan() = default;
};

class ModelRunBackend {
 public:
  virtual ~ModelRunBackend() = default;
  // Reads the run's `model`, `eval`, `calib` and `quant` keys (config errors name the
  // key); fills `quant` with the quantizer the method fits against.
  virtual std::shared_ptr<const ModelRunPlan> prepare(const Experiment& experiment, const RunSpec& run,
                                                      QuantConfig& quant) const = 0;
  // Checks the files (checkpoint, tokenizer, texts) and the method against the model's
  // widths; config errors. Called once per distinct model/eval/calib block.
  virtual void validate(const ModelRunPlan& plan, const RotationMethod& method) const = 0;
  // Builds, evaluates and records one run.
  virtual RunRecord execute(const PreparedRun& run) const = 0;
};

}  // namespace sqlab
