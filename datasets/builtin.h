#pragma once

#include "core/dataset.h"

namespace sqlab {

// Registers every dataset shipped with sqlab (one register_NAME per file).
void register_builtin_datasets(DatasetRegistry& registry);

}  // namespace sqlab
