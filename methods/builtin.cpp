#include "methods/builtin.h"

namespace sqlab {

void register_identity(MethodRegistry& registry);
void register_random_orthogonal(MethodRegistry& registry);
void register_art(MethodRegistry& registry);
void register_urt(MethodRegistry& registry);
void register_singlequant(MethodRegistry& registry);
void register_hadamard(MethodRegistry& registry);
void register_cayley_sgd(MethodRegistry& registry);
void register_smoothquant(MethodRegistry& registry);
void register_duquant(MethodRegistry& registry);
void register_compose(MethodRegistry& registry);

void register_builtin_methods(MethodRegistry& registry) {
  register_identity(registry);
  register_random_orthogonal(registry);
  register_art(registry);
  register_urt(registry);
  register_singlequant(registry);
  register_hadamard(registry);
  register_cayley_sgd(registry);
  register_smoothquant(registry);
  register_duquant(registry);
  register_compose(registry);
}

const MethodRegistry& builtin_method_registry() {
  static const MethodRegistry registry = [] {
    MethodRegistry methods("method");
    register_builtin_methods(methods);
    return methods;
  }();
  return registry;
}

}  // namespace sqlab
