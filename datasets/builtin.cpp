#include "datasets/builtin.h"

namespace sqlab {

void register_synthetic(DatasetRegistry& registry);
void register_hdf5_dataset(DatasetRegistry& registry);
void register_safetensors_dataset(DatasetRegistry& registry);
void register_npy_dataset(DatasetRegistry& registry);
void register_model_dataset(DatasetRegistry& registry);
void register_llama_shapes_dataset(DatasetRegistry& registry);

void register_builtin_datasets(DatasetRegistry& registry) {
  register_synthetic(registry);
  register_hdf5_dataset(registry);
  register_safetensors_dataset(registry);
  register_npy_dataset(registry);
  register_model_dataset(registry);
  register_llama_shapes_dataset(registry);
}

}  // namespace sqlab
