// Everything the runner can instantiate by name.
#pragma once

#include "core/dataset.h"
#include "core/method.h"

namespace sqlab {

struct Registries {
  MethodRegistry methods{"method"};
  DatasetRegistry datasets{"dataset"};
};

}  // namespace sqlab
