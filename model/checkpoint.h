// Checkpoint loaders and writers for LLaMA-architecture models:
//  - llama2.c `.bin` files (the legacy header and the version-1 "ak42" header),
//  - Hugging Face directories (config.json + model.safetensors or a sharded index),
//  - llama.cpp GGUF files (model/gguf_checkpoint.h),
// and a small random model for tests. Every loader returns weights in the layout of
// model/llama.h: PyTorch Linear (C_out x C_in) float32, q/k rows in the Hugging Face
// rotate-half rotary layout (llama2.c's interleaved rows are permuted on load).
// Every error the input causes is a sqlab::config_error naming the file and the
// tensor or key.
#pragma once

#include "model/llama.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace sqlab {

// format: "auto" | "hf" | "llama2c" | "gguf". auto: a directory holding config.json -> hf;
// a file starting with "GGUF" -> gguf; a file ending in .bin or starting with a llama2.c
// header -> llama2c.
LlamaWeights load_checkpoint(const std::string& path, const std::string& format = "auto");

// The format "auto" would pick for `path` ("hf", "llama2c" or "gguf"); throws naming the path
// when it is neither.
std::string detect_checkpoint_format(const std::string& path);

LlamaWeights load_llama2c(const std::string& path);
LlamaWeights load_hf(const std::string& dir);

// version 0: legacy header (7 int32, negative vocab_size = separate classifier);
// version 1: "ak42" header padded to 256 bytes, norms first. Atomic (.tmp renamed).
void save_llama2c(const LlamaWeights& weights, const std::string& path, int version = 0);

// config.json + model.safetensors (shards == 1) or model-0000K-of-0000N.safetensors
// files and model.safetensors.index.json. dtype: "F32" | "F16" | "BF16".
void save_hf(const LlamaWeights& weights, const std::string& dir, const std::string& dtype = "F32",
             int shards = 1);

// Any weight source written as a sharded Hugging Face checkpoint, one layer at a time (a
// 7B model never whole in memory): whole layers per shard, about shard_bytes each,
// model-0000K-of-0000N.safetensors files with model.safetensors.index.json, written to
// DIR.tmp and renamed to DIR when complete.
class WeightSource;
void save_hf(const WeightSource& source, const std::string& dir, const std::string& dtype, int64_t shard_bytes);

// A small random model for tests: norm gains 1 + N(0, 0.1^2), linear weights
// N(0, 1/fan_in) (std 1/sqrt(fan_in)), embedding N(0, 1). Deterministic in `seed`.
// config.check() is applied first; the output head is the embedding when
// config.tied_embeddings.
LlamaWeights random_llama(const LlamaConfig& config, uint64_t seed);

// --- pure parsers (no file access; never crash on any input: fuzzable)

// llama2.c header from the first `available` bytes of a file of `file_size` bytes.
// Checks every number (positive, dim % n_heads == 0, even head_dim, n_heads %
// n_kv_heads == 0, sizes that fit int64) and that file_size equals exactly the size the
// header implies. Outputs the header length in bytes (28 legacy, 256 version 1) and
// whether the classifier is shared with the embedding.
LlamaConfig parse_llama2c_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                 const std::string& origin, size_t* header_bytes, bool* shared_classifier);

// Hugging Face config.json text -> config (checked). Rejects rope_scaling other than
// null, missing keys, non-integers, non-positive sizes.
LlamaConfig parse_hf_config_json(const std::string& json_text, const std::string& origin);

// The number of float32 values a llama2.c file of this config holds after the header
// (version 0 includes the two unused freq_cis tables). Throws on int64 overflow.
int64_t llama2c_float_count(const LlamaConfig& config, int version, bool shared_classifier,
                            const std::string& origin);

// Rotary row permutations between llama2.c's interleaved layout (pair (2i, 2i+1) of
// each head rotates together) and HF's rotate-half layout (pair (i, i + head_dim/2)).
// `w` has n_heads*head_dim rows.
at::Tensor interleaved_to_rotate_half(const at::Tensor& w, int64_t n_heads);
at::Tensor rotate_half_to_interleaved(const at::Tensor& w, int64_t n_heads);

// --- checks shared by the loaders and writers

// The numbers make a model whose sizes fit int64 (positive sizes, dim % n_heads == 0,
// even head_dim, n_heads % n_kv_heads == 0, norm_eps in (0, 1), rope_theta > 0).
// Throws sqlab::config_error naming `origin` and all the numbers.
void check_checkpoint_config(const LlamaConfig& config, const std::string& origin);
// Every tensor of `weights` has the shape its config implies; throws naming the tensor.
void check_weights_shapes(const LlamaWeights& weights, const std::string& origin);
// Non-negative int64 arithmetic that throws a config_error naming `origin` on overflow.
int64_t checked_mul(int64_t a, int64_t b, const std::string& origin);
int64_t checked_add(int64_t a, int64_t b, const std::string& origin);

}  // namespace sqlab
