// Where the layer-by-layer pipeline (model/layerwise.h) reads a model's weights: a
// checkpoint opened, its every header, name, dtype and shape checked, but its tensors not
// read; each decoder layer is read from the memory mapping and converted to float32 when
// that layer is processed, and dropped after. The full-precision model is never whole in
// memory (issue #18): a 7B checkpoint in BF16 costs one layer's float32 copy (~0.8 GB)
// at a time, plus the embedding and the head.
//
// Hugging Face directories and GGUF files are read this way; llama2.c files (the small
// stories models) are read whole and served from memory, as are models built in memory
// (tests, random models).
#pragma once

#include <memory>
#include <string>

#include "model/llama.h"

namespace sqlab {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const LlamaConfig& config() const = 0;
  // The file or directory (for messages and the run file).
  virtual const std::string& origin() const = 0;
  // Fresh float32 tensors on the CPU, read on each call (callers keep what they need).
  // A NaN or infinite value is a config error naming the file and the tensor.
  virtual at::Tensor embedding() const = 0;  // vocab x dim
  virtual at::Tensor final_norm() const = 0;
  virtual at::Tensor output() const = 0;  // the head; the embedding again when the model is tied
  virtual LlamaLayer layer(int64_t index) const = 0;
};

using WeightSourcePtr = std::shared_ptr<const WeightSource>;

// format: "auto" | "hf" | "llama2c" | "gguf" (model/checkpoint.h load_checkpoint).
WeightSourcePtr open_weights(const std::string& path, const std::string& format = "auto");
WeightSourcePtr open_hf_weights(const std::string& dir);
WeightSourcePtr open_gguf_weights(const std::string& path);

// A model already in memory; its layers are shared, not copied (the pipeline never
// changes a tensor in place).
WeightSourcePtr weights_in_memory(LlamaWeights weights);

// Random weights of `config`'s shape, each tensor drawn on request from its own stream
// (seeded by `seed` and the tensor's name: the same values whenever it is asked for) with
// random_llama's distributions: linear weights N(0, 1/fan_in), norm gains 1 + N(0, 0.1^2),
// embedding N(0, 1). What `model.generate` writes (with save_hf) for the scale benchmarks.
WeightSourcePtr random_weights(const LlamaConfig& config, uint64_t seed);

// The shapes model.generate knows (LLaMA-2 7B/13B/70B, LLaMA-3-8B, TinyLlama-1.1B), by
// lower-case name, e.g. "llama-2-7b"; nullptr for another name.
const LlamaConfig* generated_shape(const std::string& name);
std::vector<std::string> generated_shape_names();

// Every tensor read (the head tied to the embedding when the config says so): what
// load_checkpoint returns.
LlamaWeights read_all_weights(const WeightSource& source);

}  // namespace sqlab
