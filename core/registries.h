// Everything the runner can instantiate by name.
#pragma once

#include "core/dataset.h"
#include "core/method.h"
#include "core/model_run.h"

#include <memory>

namespace sqlab {

struct Registries {
  MethodRegistry methods{"method"};
  DatasetRegistry datasets{"dataset"};
  // Model-level runs (experiments with `model:`); null where model/ is not linked.
  std::shared_ptr<const ModelRunBackend> model_runs;
};

}  // namespace sqlab
