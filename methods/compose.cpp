// compose: T = T_1 T_2 ... T_k (method-notes.md section 8). `steps` lists method entries
// ({method: NAME, ...options}); step i is fitted on the site transformed by the steps
// before it (activations X T_1..T_(i-1), weights fused likewise), and the result is one
// ComposedRotation chain, orthogonal iff every step is. Every step gets the run's seed,
// so `compose` with one step equals that method alone.
#include <fmt/format.h>

#include <vector>

#include "core/method.h"
#include "methods/builtin.h"
#include "rotations/dense.h"

namespace sqlab {
namespace {

// What a step reports is kept under "stepI." (I: the step's index in `steps`).
class StepLog : public FitLog {
 public:
  StepLog(FitLog& parent, std::string prefix) : parent_(parent), prefix_(std::move(prefix)) {}
  void trace(const std::string& name, int64_t step, double value) override { parent_.trace(prefix_ + name, step, value); }
  void metric(const std::string& name, double value) override { parent_.metric(prefix_ + name, value); }
  void warn(const std::string& message) override { parent_.warn(prefix_ + message); }

 private:
  FitLog& parent_;
  std::string prefix_;
};

struct Step {
  std::string name;
  std::unique_ptr<RotationMethod> method;
};

class ComposeMethod : public RotationMethod {
 public:
  explicit ComposeMethod(std::vector<Step> steps) : steps_(std::move(steps)) {}

  bool reads_weights() const override {
    for (const Step& step : steps_)
      if (step.method->reads_weights()) return true;
    return false;
  }

  bool reads_activations() const override {
    for (const Step& step : steps_)
      if (step.method->reads_activations()) return true;
    return false;
  }

  RotationPtr fit(const FitContext& context) const override {
    Site current = context.site;
    RotationPtr chain;
    for (size_t i = 0; i < steps_.size(); ++i) {
      StepLog log(context.log, fmt::format("step{}.", i));
      RotationPtr part = steps_[i].method->fit(FitContext{current, context.quant, context.seed, log});
      current.X = part->apply(current.X);
      current.W = part->fuse_into(current.W);
      chain = chain ? std::make_unique<ComposedRotation>(std::move(chain), std::move(part)) : std::move(part);
    }
    if (!chain) return std::make_unique<IdentityRotation>(context.site.X.size(1));
    return chain;
  }

  void check_width(int64_t n) const override {
    for (const Step& step : steps_) step.method->check_width(n);
  }

 private:
  std::vector<Step> steps_;
};

// Default: SmoothQuant then QuaRot's random Hadamard.
const char* kDefaultSteps = "[{method: smoothquant}, {method: hadamard}]";

std::vector<Step> read_steps(ConfigReader& options) {
  YAML::Node list = options.raw("steps");
  if (!list) list = YAML::Load(kDefaultSteps);
  if (!list.IsSequence()) options.fail("steps", "expected a list of method entries ({method: NAME, ...options})");
  const MethodRegistry& registry = builtin_method_registry();
  std::vector<Step> steps;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string path = options.key_path("steps") + "." + std::to_string(i);
    if (!list[i].IsMap()) options.fail("steps", fmt::format("entry {} must be a mapping {{method: NAME, ...}}", i));
    ConfigReader step(list[i], options.file(), path);
    Step s;
    s.name = step.require<std::string>("method");
    if (!registry.contains(s.name)) step.fail("method", registry.unknown_message(s.name));
    s.method = registry.create(s.name, step);
    steps.push_back(std::move(s));
  }
  return steps;
}

}  // namespace

void register_compose(MethodRegistry& registry) {
  registry.add("compose", "T = T_1 ... T_k: `steps` (method entries), each fitted after the ones before it",
               [](ConfigReader& options) { return std::make_unique<ComposeMethod>(read_steps(options)); });
}

}  // namespace sqlab
