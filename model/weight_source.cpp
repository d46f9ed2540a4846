#include "model/weight_source.h"

#include <fmt/format.h>

#include "core/error.h"
#include "model/checkpoint.h"

namespace sqlab {
namespace {

class MemoryWeights final : public WeightSource {
 public:
  explicit MemoryWeights(LlamaWeights weights) : w_(std::move(weights)) {}
  const LlamaConfig& config() const override { return w_.config; }
  const std::string& origin() const override { return w_.origin; }
  at::Tensor embedding() const override { return w_.embedding; }
  at::Tensor final_norm() const override { return w_.final_norm; }
  at::Tensor output() const override { return w_.output; }
  LlamaLayer layer(int64_t index) const override {
    if (index < 0 || index >= static_cast<int64_t>(w_.layers.size()))
      throw Error(fmt::format("{}: no layer {} (the model has {})", w_.origin, index, w_.layers.size()));
    return w_.layers[static_cast<size_t>(index)];
  }

 private:
  LlamaWeights w_;
};

}  // namespace

WeightSourcePtr weights_in_memory(LlamaWeights weights) { return std::make_shared<MemoryWeights>(std::move(weights)); }

WeightSourcePtr open_weights(const std::string& path, const std::string& format) {
  const std::string chosen = format == "auto" ? detect_checkpoint_format(path) : format;
  if (chosen == "llama2c") return weights_in_memory(load_llama2c(path));
  if (chosen == "hf") return open_hf_weights(path);
  if (chosen == "gguf") return open_gguf_weights(path);
  throw config_error(
      fmt::format("checkpoint '{}': unknown format '{}' (expected auto, hf, llama2c or gguf)", path, format));
}

LlamaWeights read_all_weights(const WeightSource& source) {
  LlamaWeights w;
  w.config = source.config();
  w.origin = source.origin();
  w.embedding = source.embedding();
  for (int64_t l = 0; l < w.config.n_layers; ++l) w.layers.push_back(source.layer(l));
  w.final_norm = source.final_norm();
  w.output = w.config.tied_embeddings ? w.embedding : source.output();
  return w;
}

}  // namespace sqlab
