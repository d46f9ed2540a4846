// A LLaMA-architecture decoder in LibTorch (float32, CPU by default): token embedding,
// RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, tied or separate
// output head. Weights are stored as PyTorch Linear weights (C_out x C_in), and the
// q/k rows in the Hugging Face "rotate-half" rotary layout: the llama2.c loader
// converts its interleaved layout on load, so one forward serves both formats.
#pragma once

#include "model/attention.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sqlab {

// Rotary position embedding frequencies: theta^(-2i/head_dim), rescaled for long contexts
// as Hugging Face's `rope_scaling` / `rope_parameters` say (transformers'
// modeling_rope_utils): linear divides every frequency by `factor`; llama3 (LLaMA-3.1/3.2)
// divides the low frequencies (wavelength > original_max_position / low_freq_factor) by
// `factor`, keeps the high ones (wavelength < original_max_position / high_freq_factor) and
// interpolates between; dynamic (NTK) equals none within the original context, which is
// the only place it is accepted.
enum class RopeScaling { none, linear, dynamic, llama3 };

struct RopeConfig {
  RopeScaling type = RopeScaling::none;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position = 0;
};

// The one forward's per-family differences (model/families.h lists the families):
// LLaMA (rope scaling, optional attention biases), Mistral (sliding window), Qwen2/2.5
// (q/k/v biases), Qwen3 (per-head RMSNorm of q and k, head_dim set apart from dim / n_heads).
struct LlamaConfig {
  int64_t dim = 0;          // hidden size (residual stream width)
  int64_t hidden_dim = 0;   // MLP intermediate size
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;   // grouped-query attention: n_heads % n_kv_heads == 0
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;  // the model's context (default perplexity window)
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tied_embeddings = false;  // output head shares the embedding matrix
  int64_t bos_id = 1;
  int64_t eos_id = 2;
  std::string architecture = "llama";  // llama, mistral, qwen2, qwen3: what the checkpoint says
  int64_t explicit_head_dim = 0;  // 0: dim / n_heads (Qwen3 and Gemma set their own)
  bool attention_bias = false;    // q, k, v carry biases (Qwen2; LLaMA/Qwen3 `attention_bias`)
  bool output_bias = false;       // o_proj carries one too (LLaMA/Qwen3 `attention_bias`)
  bool qk_norm = false;           // RMSNorm over each head of q and k before the rotary (Qwen3)
  int64_t sliding_window = 0;     // 0: none; a window of more tokens is refused (Mistral)
  RopeConfig rope;

  int64_t head_dim() const { return explicit_head_dim > 0 ? explicit_head_dim : dim / n_heads; }
  int64_t q_dim() const { return n_heads * head_dim(); }      // the attention's width (attn_out)
  int64_t kv_dim() const { return n_kv_heads * head_dim(); }
  // Throws sqlab::Error naming `origin` when the numbers do not make a model.
  void check(const std::string& origin) const;
};

struct LlamaLayer {
  at::Tensor attn_norm;   // dim
  at::Tensor wq;          // n_heads*head_dim x dim (rotate-half layout)
  at::Tensor wk;          // n_kv_heads*head_dim x dim (rotate-half layout)
  at::Tensor wv;          // n_kv_heads*head_dim x dim
  at::Tensor wo;          // dim x n_heads*head_dim
  at::Tensor mlp_norm;    // dim
  at::Tensor w_gate;      // hidden_dim x dim
  at::Tensor w_up;        // hidden_dim x dim
  at::Tensor w_down;      // dim x hidden_dim
  // Present only where the family has them (undefined otherwise):
  at::Tensor bq, bk, bv;  // attention biases (config.attention_bias)
  at::Tensor bo;          // o_proj bias (config.output_bias)
  at::Tensor q_norm, k_norm;  // head_dim gains of the per-head q/k RMSNorm (config.qk_norm)

  // Every tensor the layer holds, defined or not, for code that treats them alike
  // (copies, device moves): the weights first, then the optional ones.
  std::vector<at::Tensor*> tensors() {
    return {&attn_norm, &wq, &wk, &wv, &wo, &mlp_norm, &w_gate, &w_up, &w_down, &bq, &bk, &bv, &bo, &q_norm, &k_norm};
  }
};

struct LlamaWeights {
  LlamaConfig config;
  at::Tensor embedding;   // vocab x dim
  std::vector<LlamaLayer> layers;
  at::Tensor final_norm;  // dim
  at::Tensor output;      // vocab x dim (the same tensor as `embedding` when tied)
  std::string origin;     // the file or directory it came from (for messages)
};

// The linear sites of a layer (method-notes.md section 1): the activations that enter
// one or more linear layers sharing that input.
enum class LinearSite { attn_in, attn_out, mlp_in, mlp_out, head };

// Name used in site names, YAML and run files: "attn_in", "attn_out", "mlp_in",
// "mlp_out", "head".
const char* linear_site_name(LinearSite site);

// Hooks into the forward pass: `input` sees (and may replace) the activations that
// enter a site's linear layers (layer = -1 for the output head). Quantized evaluation
// rotates and fake-quantizes there; activation capture records there. The default
// leaves them unchanged.
class ForwardHooks {
 public:
  virtual ~ForwardHooks() = default;
  virtual at::Tensor input(int64_t layer, LinearSite site, const at::Tensor& x) { return x; }
};

// Logits (B x T x vocab) for token ids (B x T, int64), causal attention within each
// row, positions 0..T-1. Differentiable (autograd flows into the weights).
at::Tensor llama_forward(const LlamaWeights& weights, const at::Tensor& tokens,
                         ForwardHooks* hooks = nullptr);

// The head's input (B x T x dim): the final norm's output after the head hook, so that
// logits = llama_hidden(...) W_out^T. For scoring a few positions of long rows without a
// (B x T x vocab) tensor: select the positions, then apply the head.
at::Tensor llama_hidden(const LlamaWeights& weights, const at::Tensor& tokens, ForwardHooks* hooks = nullptr);

// The same forward a stage at a time, for the layer-by-layer pipeline (model/layerwise.h),
// which carries many rows through one decoder layer before it reads the next:
// llama_hidden = llama_head_input(llama_layer(... llama_layer(llama_embed(tokens), 0) ..., L-1)).
// llama_embed checks the ids against the vocabulary and the window against the model's
// attention limits (sliding window, dynamic rope), naming `origin`.
at::Tensor llama_embed(const LlamaConfig& config, const at::Tensor& embedding, const at::Tensor& tokens,
                       const std::string& origin);
// Keys and values of prefixes that later passes read again (a subject's few-shot examples:
// computed by the subject's first pass, read by the passes of its other questions), per
// (prefix key, layer): the rotated keys and the values at the model's KV heads, KV x n x hd.
class PrefixKeyValues {
 public:
  void keep(int64_t key, int64_t layer, at::Tensor k, at::Tensor v);
  // Throws when no earlier pass kept `key` at `layer`.
  const std::pair<at::Tensor, at::Tensor>& find(int64_t key, int64_t layer) const;
  void drop(int64_t key);  // every layer's
  size_t size() const { return kept_.size(); }

 private:
  std::map<std::pair<int64_t, int64_t>, std::pair<at::Tensor, at::Tensor>> kept_;
};

// Rows that go on from shared prefixes: zero-shot scoring (model/loglikelihood.h) reads a
// question's context once and its choices after it, and a subject's few-shot examples once
// for all its questions. The hidden states are the owned prefix rows' (P - borrowed) x Tp
// tokens, then the B rows' B x T, flattened to ((P - borrowed)*Tp + B*T) x dim (both
// right-padded). Row b continues prefix prefix_of[b] from position
// prefix_length[prefix_of[b]] on: it attends to that prefix's first prefix_length keys and,
// causally, to its own tokens, so every position sees what it would see in the one row
// (prefix + row): the same forward, computed once for the prefix. The last `borrowed`
// prefixes are not in the hidden states: an earlier pass computed them and kept their keys
// and values in `kept` under keys[p]; an owned prefix with keys[p] >= 0 keeps its own there.
struct SharedPrefixes {
  int64_t prefixes = 0, prefix_width = 0, rows = 0, width = 0;  // P (owned and borrowed), Tp, B, T
  at::Tensor prefix_of;      // B int64: row -> prefix
  at::Tensor prefix_length;  // P int64: the real tokens of each prefix (0 ... Tp for the owned)
  int64_t borrowed = 0;
  std::vector<int64_t> keys;         // P: the key a prefix is kept under, -1: none (empty: none at all)
  PrefixKeyValues* kept = nullptr;   // the caller's store, for the call (needed with keys)
  int64_t owned() const { return prefixes - borrowed; }
};

// Throws naming `origin` where `positions` tokens in a row exceed what the model's attention
// supports exactly (a sliding window, dynamic rope scaling beyond the original context).
void check_positions(const LlamaConfig& config, int64_t positions, const std::string& origin);

// Decoder layer `index` on B x T x dim hidden states (positions 0..T-1, causal), or, with
// `shared`, on rows packed after shared prefixes ((P*Tp + B*T) x dim, as SharedPrefixes says).
at::Tensor llama_layer(const LlamaConfig& config, const LlamaLayer& layer, int64_t index, const at::Tensor& x,
                       ForwardHooks* hooks = nullptr, const SharedPrefixes* shared = nullptr);
// The final RMSNorm and the head's input hook.
at::Tensor llama_head_input(const LlamaConfig& config, const at::Tensor& final_norm, const at::Tensor& x,
                            ForwardHooks* hooks = nullptr);

}  // namespace sqlab
