// The model families sqlab reads (each a small difference on the one LLaMA forward,
// model/llama.h) and the published shapes of the models researchers quantize, with the
// Hadamard order sqlab uses at each of their widths: what `sqlab list models` prints and
// the README's tables are generated from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama.h"

namespace sqlab {

struct ModelFamily {
  std::string model_type;  // config.json's model_type
  std::string hf_class;    // config.json's architectures[0]
  std::string gguf_arch;   // general.architecture of llama.cpp's GGUF files
  std::string differs;     // what the family changes in the LLaMA forward
};

const std::vector<ModelFamily>& model_families();

// The family of a config.json model_type; nullptr when sqlab does not read it.
const ModelFamily* find_model_family(const std::string& model_type);

// "llama (LlamaForCausalLM), mistral (...), ...": what error messages list.
std::string model_families_text();

// A published model's widths (from its config.json).
struct PublishedShape {
  std::string family;
  std::string model;
  int64_t dim, hidden_dim, n_heads, head_dim;
  bool read_by_sqlab;  // its family is one of model_families()
};

const std::vector<PublishedShape>& published_shapes();

// How `hadamard` rotates width n: n = base x 2^k with base a constructed Hadamard order
// (rotations/hadamard_matrices.h); the fast transform (a Walsh-Hadamard butterfly over 2^k
// and an m x m product) applies whenever it exists.
struct HadamardPlan {
  bool supported = false;
  int64_t base = 0, pow2 = 0;
  std::string construction;  // of the base order
};
HadamardPlan hadamard_plan(int64_t n);
// "11008 = 172 x 2^6 (Goethals-Seidel, w = 43)", "4096 = 2^12", "944: none (fallback)".
std::string hadamard_plan_text(int64_t n);

// The README's two tables (markdown), as `sqlab list models --markdown` prints them.
std::string model_families_markdown();

// The config of a checkpoint without reading its weights (HF: config.json; GGUF: its
// metadata and tensor names; llama2.c: its header), `format` as load_checkpoint takes it.
LlamaConfig read_checkpoint_config(const std::string& path, const std::string& format = "auto");

// What `sqlab show-model PATH` prints: family, config, parameter count, widths with their
// Hadamard orders, tied head or not.
std::string describe_checkpoint(const std::string& path, const std::string& format = "auto");

}  // namespace sqlab
