// LLaMA-architecture models in llama.cpp's GGUF files (io/gguf.h): the config from the
// `llama.*` metadata, the weights dequantized to float32 in model/llama.h's layout, the
// byte-level BPE tokenizer from `tokenizer.ggml.*`, and a writer so tests make their own
// files.
//
// Tensor names: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
// ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, output (absent: the head is tied
// to the embedding). llama.cpp's converter stores q/k rows permuted for its rotary
// layout (HF rotate-half -> interleaved pairs, per head: w.reshape(h, 2, hd/2, C)
// .swapaxes(1, 2)); the loader undoes it (interleaved_to_rotate_half, with n_heads for q
// and n_kv_heads for k), so the model is its Hugging Face original.
#pragma once

#include <memory>
#include <string>

#include "io/gguf.h"
#include "model/bpe_tokenizer.h"
#include "model/llama.h"

namespace sqlab {

// True when the file starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

// The LlamaConfig of `general.architecture` "llama" metadata (every other architecture is
// refused naming the key): embedding_length, block_count, feed_forward_length,
// attention.head_count(_kv), rope.freq_base, attention.layer_norm_rms_epsilon,
// context_length, vocab_size (else the token list's length); rope.dimension_count must
// be the head dim and rope.scaling.type none. bos/eos from tokenizer.ggml.*_token_id.
// Errors name `origin` and the key.
LlamaConfig llama_config_from_gguf(const GgufMetadata& metadata, const std::string& origin);

// Every tensor dequantized to float32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1), checked against
// the config's shapes and for NaN/Inf; a tensor that is missing, unknown or of another
// type is a config error naming the file and the tensor.
LlamaWeights load_gguf(const std::string& path);

// The tokenizer.ggml.* metadata of a "gpt2" (byte-level BPE) tokenizer.
BpeVocab bpe_vocab_from_gguf(const GgufMetadata& metadata, const std::string& origin);
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::string& path);

// Writes `weights` as a llama.cpp-style GGUF (q/k rows permuted to the interleaved
// layout, as the converter does): norms in F32, every matrix in `type` (F32, F16, BF16,
// Q8_0, Q4_0, Q4_1). The tokenizer metadata of `vocab` is written when it has tokens.
// No `output` tensor when the head is tied. Atomic.
void save_gguf(const LlamaWeights& weights, const std::string& path, GgmlType type = GgmlType::F32,
               const BpeVocab& vocab = {});

}  // namespace sqlab
