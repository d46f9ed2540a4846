#pragma once

#include "core/method.h"

namespace sqlab {

// Registers every method shipped with sqlab (one register_NAME per file).
void register_builtin_methods(MethodRegistry& registry);

// One registry of the builtin methods, built on first use and never moved: `compose`
// creates its steps from it (a factory cannot keep a reference to the registry it is
// registered in, since registries are returned by value).
const MethodRegistry& builtin_method_registry();

}  // namespace sqlab
