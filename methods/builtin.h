#pragma once

#include "core/method.h"

namespace sqlab {

// Registers every method shipped with sqlab (one register_NAME per file).
void register_builtin_methods(MethodRegistry& registry);

}  // namespace sqlab
