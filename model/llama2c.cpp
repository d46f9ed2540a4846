// llama2.c checkpoints (github.com/karpathy/llama2.c, run.c and export.py):
//  - legacy (version 0): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//    vocab_size, seq_len; a negative vocab_size means a separate classifier), then
//    float32 token embedding, rms_att (all layers), wq, wk, wv, wo, rms_ffn, w1, w2, w3
//    (each for all layers), rms_final, freq_cis_real and freq_cis_imag (seq_len x
//    head_dim/2 each, unused: we compute rotary angles ourselves), classifier if separate.
//  - version 1: uint32 magic "ak42", int32 version 1, the 7 int32, uint8
//    shared_classifier, zero padding to 256 bytes; then float32 attention norms, ffn
//    norms, final norm, token embedding, wq, wk, wv, wo, w1, w2, w3, classifier if
//    separate.
// w1 = gate, w3 = up, w2 = down. q/k rows are in the interleaved rotary layout there
// and in the rotate-half layout in LlamaWeights (see checkpoint.cpp).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/mapped_file.h"
#include "model/checkpoint.h"

namespace sqlab {
namespace {

constexpr uint32_t kMagic = 0x616b3432;  // "ak42" read as a little-endian uint32
constexpr size_t kLegacyHeader = 7 * 4;
constexpr size_t kV1Header = 256;
constexpr size_t kV1FlagOffset = 4 + 4 + 7 * 4;

int32_t read_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

std::string origin_of(const std::string& path) { return fmt::format("llama2.c checkpoint '{}'", path); }

// Reads consecutive float32 tensors from the mapping; never past its end.
class TensorCursor {
 public:
  TensorCursor(const MappedFile& file, size_t offset, std::string origin)
      : file_(file), offset_(offset), origin_(std::move(origin)) {}

  at::Tensor next(std::vector<int64_t> shape, const std::string& name) {
    int64_t numel = 1;
    for (int64_t s : shape) numel = checked_mul(numel, s, origin_);
    const uint64_t nbytes = static_cast<uint64_t>(numel) * 4;
    if (offset_ > file_.size() || nbytes > file_.size() - offset_)
      throw config_error(fmt::format("{}: tensor {} needs {} bytes at offset {}, past the end of the {}-byte file",
                                     origin_, name, nbytes, offset_, file_.size()));
    at::Tensor t = at::empty(shape, at::kFloat);
    std::memcpy(t.data_ptr<float>(), file_.data() + offset_, nbytes);
    offset_ += nbytes;
    if (!at::isfinite(t).all().item<bool>())
      throw config_error(fmt::format("{}: tensor {} holds NaN or infinite values", origin_, name));
    return t;
  }
  void skip(uint64_t floats) { offset_ += floats * 4; }
  size_t offset() const { return offset_; }

 private:
  const MappedFile& file_;
  size_t offset_;
  std::string origin_;
};

// One tensor per layer, read consecutively: "wq for all layers".
template <typename Assign>
void read_per_layer(TensorCursor& cursor, std::vector<LlamaLayer>& layers, std::vector<int64_t> shape,
                    const char* name, Assign assign) {
  for (size_t l = 0; l < layers.size(); ++l) assign(layers[l], cursor.next(shape, fmt::format("layers.{}.{}", l, name)));
}

}  // namespace

int64_t llama2c_float_count(const LlamaConfig& c, int version, bool shared_classifier, const std::string& origin) {
  const auto mul = [&](int64_t a, int64_t b) { return checked_mul(a, b, origin); };
  const auto add = [&](int64_t a, int64_t b) { return checked_add(a, b, origin); };
  const int64_t hd = c.dim / c.n_heads, q_dim = mul(c.n_heads, hd), kv_dim = mul(c.n_kv_heads, hd);
  int64_t per_layer = mul(c.dim, 2);                                   // two norms
  per_layer = add(per_layer, mul(mul(c.dim, q_dim), 2));               // wq, wo
  per_layer = add(per_layer, mul(mul(c.dim, kv_dim), 2));              // wk, wv
  per_layer = add(per_layer, mul(mul(c.dim, c.hidden_dim), 3));        // w1, w2, w3
  int64_t total = add(mul(per_layer, c.n_layers), mul(c.vocab_size, c.dim));  // + embedding
  total = add(total, c.dim);                                           // final norm
  if (version == 0) total = add(total, mul(c.max_seq_len, hd));        // freq_cis real + imag
  if (!shared_classifier) total = add(total, mul(c.vocab_size, c.dim));
  return total;
}

LlamaConfig parse_llama2c_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                 const std::string& origin, size_t* header_bytes, bool* shared_classifier) {
  if (bytes == nullptr) available = 0;
  if (available < 4 || file_size < kLegacyHeader)
    throw config_error(fmt::format("{}: file is {} bytes, too short for a llama2.c header ({} bytes)", origin,
                                   file_size, kLegacyHeader));
  const bool v1 = static_cast<uint32_t>(read_i32(bytes)) == kMagic;
  int version = 0;
  size_t params_at = 0, header = kLegacyHeader;
  if (v1) {
    if (available < kV1FlagOffset + 1 || file_size < kV1Header)
      throw config_error(fmt::format("{}: file is {} bytes, too short for a version-1 llama2.c header ({} bytes)",
                                     origin, file_size, kV1Header));
    version = read_i32(bytes + 4);
    if (version != 1)
      throw config_error(fmt::format("{}: llama2.c file version {} is not supported (only legacy and version 1 "
                                     "float32 files; version 2 is Q8_0-quantized)",
                                     origin, version));
    params_at = 8;
    header = kV1Header;
  } else if (available < kLegacyHeader) {
    throw config_error(fmt::format("{}: only {} header bytes available, a llama2.c header needs {}", origin,
                                   available, kLegacyHeader));
  }
  int64_t p[7];
  for (int i = 0; i < 7; ++i) p[i] = read_i32(bytes + params_at + 4 * i);
  LlamaConfig c;
  c.dim = p[0];
  c.hidden_dim = p[1];
  c.n_layers = p[2];
  c.n_heads = p[3];
  c.n_kv_heads = p[4];
  c.vocab_size = p[5];
  c.max_seq_len = p[6];
  c.norm_eps = 1e-5;  // llama2.c's model.py and run.c
  c.rope_theta = 10000.0;
  bool shared = true;
  if (v1) {
    const uint8_t flag = bytes[kV1FlagOffset];
    if (flag > 1)
      throw config_error(fmt::format("{}: shared_classifier flag is {}, expected 0 or 1", origin, flag));
    shared = flag == 1;
  } else if (c.vocab_size < 0) {  // legacy: the sign of vocab_size is the classifier flag
    shared = false;
    c.vocab_size = -c.vocab_size;
  }
  c.tied_embeddings = shared;
  const std::string numbers = fmt::format("dim={} hidden_dim={} n_layers={} n_heads={} n_kv_heads={} vocab_size={} "
                                          "seq_len={}",
                                          p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
  check_checkpoint_config(c, fmt::format("{}: header", origin));
  const int64_t floats = llama2c_float_count(c, version, shared, origin);
  const int64_t expected = checked_add(checked_mul(floats, 4, origin), static_cast<int64_t>(header), origin);
  if (static_cast<uint64_t>(expected) != file_size)
    throw config_error(fmt::format("{}: file is {} bytes but its {} header ({}, {} classifier) implies {} bytes",
                                   origin, file_size, v1 ? "version-1" : "legacy", numbers,
                                   shared ? "shared" : "separate", expected));
  if (header_bytes) *header_bytes = header;
  if (shared_classifier) *shared_classifier = shared;
  return c;
}

LlamaWeights load_llama2c(const std::string& path) {
  const std::string origin = origin_of(path);
  const MappedFile file(path, "llama2.c checkpoint");
  size_t header = 0;
  bool shared = false;
  LlamaWeights w;
  w.config = parse_llama2c_header(file.data(), file.size(), file.size(), origin, &header, &shared);
  w.origin = path;
  const LlamaConfig& c = w.config;
  const int64_t hd = c.head_dim(), q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  w.layers.resize(c.n_layers);
  TensorCursor in(file, header, origin);
  const auto norms = [&](const char* name, at::Tensor LlamaLayer::*field) {
    read_per_layer(in, w.layers, {c.dim}, name, [&](LlamaLayer& L, at::Tensor t) { L.*field = std::move(t); });
  };
  const auto linears = [&](const char* name, at::Tensor LlamaLayer::*field, int64_t out, int64_t in_features) {
    read_per_layer(in, w.layers, {out, in_features}, name,
                   [&](LlamaLayer& L, at::Tensor t) { L.*field = std::move(t); });
  };
  const auto attention_and_mlp = [&] {
    linears("wq", &LlamaLayer::wq, q_dim, c.dim);
    linears("wk", &LlamaLayer::wk, kv_dim, c.dim);
    linears("wv", &LlamaLayer::wv, kv_dim, c.dim);
    linears("wo", &LlamaLayer::wo, c.dim, q_dim);
  };
  const auto mlp = [&] {
    linears("w1", &LlamaLayer::w_gate, c.hidden_dim, c.dim);
    linears("w2", &LlamaLayer::w_down, c.dim, c.hidden_dim);
    linears("w3", &LlamaLayer::w_up, c.hidden_dim, c.dim);
  };
  if (header == kLegacyHeader) {
    w.embedding = in.next({c.vocab_size, c.dim}, "token_embedding");
    norms("rms_att", &LlamaLayer::attn_norm);
    attention_and_mlp();
    norms("rms_ffn", &LlamaLayer::mlp_norm);
    mlp();
    w.final_norm = in.next({c.dim}, "rms_final");
    in.skip(static_cast<uint64_t>(c.max_seq_len) * hd);  // freq_cis_real, freq_cis_imag
  } else {
    norms("attention_norm", &LlamaLayer::attn_norm);
    norms("ffn_norm", &LlamaLayer::mlp_norm);
    w.final_norm = in.next({c.dim}, "norm");
    w.embedding = in.next({c.vocab_size, c.dim}, "tok_embeddings");
    attention_and_mlp();
    mlp();
  }
  w.output = shared ? w.embedding : in.next({c.vocab_size, c.dim}, "wcls");
  if (in.offset() != file.size())  // unreachable after the header's size check; kept as a guard
    throw config_error(fmt::format("{}: {} bytes left unread", origin, file.size() - in.offset()));
  for (LlamaLayer& L : w.layers) {
    L.wq = interleaved_to_rotate_half(L.wq, c.n_heads);
    L.wk = interleaved_to_rotate_half(L.wk, c.n_kv_heads);
  }
  return w;
}

namespace {

void write_floats(std::ofstream& out, const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kFloat).cpu().contiguous();
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * 4));
}

void write_i32(std::ofstream& out, int64_t v) {
  const int32_t x = static_cast<int32_t>(v);
  out.write(reinterpret_cast<const char*>(&x), 4);
}

// llama2.c's precomputed rotary tables (seq_len x head_dim/2), written for readers that
// expect them; run.c and our loader skip them.
std::pair<at::Tensor, at::Tensor> freq_cis(const LlamaConfig& c) {
  const int64_t hd = c.head_dim();
  const at::Tensor freqs =
      1.0 / at::pow(c.rope_theta, at::arange(0, hd, 2, at::kDouble).slice(0, 0, hd / 2) / static_cast<double>(hd));
  const at::Tensor angles = at::outer(at::arange(c.max_seq_len, at::kDouble), freqs);
  return {at::cos(angles), at::sin(angles)};
}

}  // namespace

void save_llama2c(const LlamaWeights& w, const std::string& path, int version) {
  const std::string origin = origin_of(path);
  if (version != 0 && version != 1)
    throw config_error(fmt::format("{}: cannot write version {} (0 = legacy, 1 = ak42 header)", origin, version));
  check_weights_shapes(w, origin);
  const LlamaConfig& c = w.config;
  for (int64_t v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len})
    if (v > INT32_MAX) throw config_error(fmt::format("{}: size {} does not fit the int32 header", origin, v));
  const bool shared = c.tied_embeddings;
  std::vector<at::Tensor> wq, wk;
  for (const LlamaLayer& L : w.layers) {
    wq.push_back(rotate_half_to_interleaved(L.wq, c.n_heads));
    wk.push_back(rotate_half_to_interleaved(L.wk, c.n_kv_heads));
  }
  const auto each = [&](std::ofstream& out, auto get) {
    for (size_t l = 0; l < w.layers.size(); ++l) write_floats(out, get(l));
  };
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (version == 1) {
      const uint32_t magic = kMagic;
      out.write(reinterpret_cast<const char*>(&magic), 4);
      write_i32(out, 1);
    }
    write_i32(out, c.dim);
    write_i32(out, c.hidden_dim);
    write_i32(out, c.n_layers);
    write_i32(out, c.n_heads);
    write_i32(out, c.n_kv_heads);
    write_i32(out, version == 0 && !shared ? -c.vocab_size : c.vocab_size);
    write_i32(out, c.max_seq_len);
    if (version == 1) {
      out.put(shared ? 1 : 0);
      const std::string pad(kV1Header - (kV1FlagOffset + 1), '\0');
      out.write(pad.data(), static_cast<std::streamsize>(pad.size()));
    }
    const auto attention = [&] {
      each(out, [&](size_t l) { return wq[l]; });
      each(out, [&](size_t l) { return wk[l]; });
      each(out, [&](size_t l) { return w.layers[l].wv; });
      each(out, [&](size_t l) { return w.layers[l].wo; });
    };
    const auto mlp = [&] {
      each(out, [&](size_t l) { return w.layers[l].w_gate; });
      each(out, [&](size_t l) { return w.layers[l].w_down; });
      each(out, [&](size_t l) { return w.layers[l].w_up; });
    };
    if (version == 0) {
      write_floats(out, w.embedding);
      each(out, [&](size_t l) { return w.layers[l].attn_norm; });
      attention();
      each(out, [&](size_t l) { return w.layers[l].mlp_norm; });
      mlp();
      write_floats(out, w.final_norm);
      const auto [cos, sin] = freq_cis(c);
      write_floats(out, cos);
      write_floats(out, sin);
    } else {
      each(out, [&](size_t l) { return w.layers[l].attn_norm; });
      each(out, [&](size_t l) { return w.layers[l].mlp_norm; });
      write_floats(out, w.final_norm);
      write_floats(out, w.embedding);
      attention();
      mlp();
    }
    if (!shared) write_floats(out, w.output);
    out.flush();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw Error(fmt::format("{}: cannot write: {}", origin, std::strerror(errno)));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(fmt::format("{}: cannot rename the temporary file: {}", origin, ec.message()));
}

}  // namespace sqlab
