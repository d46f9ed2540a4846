#include "datasets/builtin.h"

namespace sqlab {

void register_synthetic(DatasetRegistry& registry);

void register_builtin_datasets(DatasetRegistry& registry) { register_synthetic(registry); }

}  // namespace sqlab
