// The `model` data source: real activations of a LLaMA-architecture model. Calibration
// text runs through the full-precision model (model/capture.h) and every selected
// linear site becomes a Site: its input activations X (tokens x n) with its stacked
// weights W, so every site-level method and metric runs on them unchanged.
//
//   data: {source: model, path: CHECKPOINT, format: auto|hf|llama2c|gguf, tokenizer: FILE (a GGUF: its own),
//          text: FILE (or token ids .ids), tokens: 2048, seq_len: 256, bos: true,
//          layers: [] (all) | [0, 3], sites: [attn_in, attn_out, mlp_in, mlp_out, head] (default: the four
//          layer sites), fold_norms: false}
// Sites are named layerL.SITE (attn_in: q/k/v stacked; attn_out: o_proj; mlp_in: gate/up
// stacked; mlp_out: down_proj) and `head`. fold_norms: true folds the RMSNorm gains into
// the weights first (what the residual placement sees).
//
// Layer by layer (issue #18): the checkpoint is opened, not read (model/weight_source.h);
// the windows' hidden states go through one decoder layer at a time, each read when it is
// reached, and reading stops after the last selected layer (the head needs them all).
#include <fmt/format.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>

#include "core/config.h"
#include "core/dataset.h"
#include "core/error.h"
#include "model/capture.h"
#include "model/checkpoint.h"
#include "model/fold.h"
#include "model/gguf_checkpoint.h"
#include "model/layerwise.h"
#include "model/weight_source.h"
#include "model/tokenizer.h"

namespace sqlab {
namespace {

const std::vector<std::string> kSiteNames = {"attn_in", "attn_out", "mlp_in", "mlp_out", "head"};
constexpr int64_t kBatch = 8;  // windows per forward call

class ModelDataset : public Dataset {
 public:
  explicit ModelDataset(ConfigReader& r) : where_(r.where("path")) {
    path_ = r.existing_path("path");
    format_ = r.choice("format", "auto", {"auto", "hf", "llama2c", "gguf"});
    tokenizer_ = r.existing_path("tokenizer", false);
    if (tokenizer_.empty() && is_gguf_file(path_)) tokenizer_ = path_;  // a GGUF carries its tokenizer
    text_ = r.existing_path("text");
    tokens_ = r.get<int64_t>("tokens", 2048);
    seq_len_ = r.get<int64_t>("seq_len", 256);
    if (tokens_ < 1) r.fail("tokens", "must be positive");
    if (seq_len_ < 1) r.fail("seq_len", "must be positive");
    bos_ = r.get<bool>("bos", true);
    layers_ = r.get<std::vector<int64_t>>("layers", {});
    sites_ = r.get<std::vector<std::string>>("sites", {"attn_in", "attn_out", "mlp_in", "mlp_out"});
    for (const std::string& s : sites_)
      if (std::find(kSiteNames.begin(), kSiteNames.end(), s) == kSiteNames.end())
        r.fail("sites", fmt::format("unknown site '{}' (valid: attn_in, attn_out, mlp_in, mlp_out, head)", s));
    fold_ = r.get<bool>("fold_norms", false);
    layers_where_ = r.where("layers");
  }

  void validate() const override {
    const int64_t n_layers = open_weights(path_, format_)->config().n_layers;  // headers only
    for (int64_t l : layers_)
      if (l < 0 || l >= n_layers)
        throw config_error(fmt::format("{}: layer {} outside [0, {}) of {}", layers_where_, l, n_layers, path_));
    if (tokenizer_.empty() && !(text_.size() > 4 && text_.substr(text_.size() - 4) == ".ids"))
      throw config_error(fmt::format("{}: a text needs data.tokenizer (or give token ids in a .ids file)", where_));
  }

  std::vector<Site> load(uint64_t seed) const override {
    const WeightSourcePtr source = open_weights(path_, format_);
    const LlamaConfig& c = source->config();
    std::unique_ptr<Tokenizer> tok = tokenizer_.empty() ? nullptr : load_tokenizer(tokenizer_);
    const std::vector<int64_t> ids = load_eval_tokens(text_, tok.get(), bos_, tokens_);
    const at::Tensor windows =
        token_windows(at::tensor(ids, at::kLong), std::min<int64_t>(seq_len_, ids.size()), "data.text");
    std::vector<SiteKey> keys;
    for (const SiteKey& key : all_site_keys(c, true)) {
      const bool layer_ok = key.first < 0 || layers_.empty() ||
                            std::find(layers_.begin(), layers_.end(), key.first) != layers_.end();
      if (layer_ok && std::find(sites_.begin(), sites_.end(), linear_site_name(key.second)) != sites_.end())
        keys.push_back(key);
    }
    const bool head = !keys.empty() && keys.back().first < 0;
    int64_t last = head ? c.n_layers - 1 : -1;
    for (const SiteKey& key : keys) last = std::max(last, key.first);

    std::vector<TokenBatch> batches;
    for (int64_t i = 0; i < windows.size(0); i += kBatch) {
      TokenBatch batch;
      batch.tokens = windows.narrow(0, i, std::min(kBatch, windows.size(0) - i));
      batches.push_back(batch);
    }
    HiddenStream stream(batches);
    stream.embed(c, source->embedding(), source->origin());
    CaptureHooks capture(keys);
    std::map<SiteKey, at::Tensor> weights;
    for (int64_t l = 0; l <= last; ++l) {
      LlamaLayer layer = source->layer(l);
      if (fold_) fold_layer_norm_gains(layer);
      stream.advance(c, layer, l, &capture);
      for (const SiteKey& key : keys)
        if (key.first == l) weights[key] = layer_site_weight(layer, key.second).contiguous();
    }
    if (head) {
      at::Tensor final_norm = source->final_norm(), output = source->output();
      if (fold_) fold_head_norm_gain(final_norm, output);
      for (size_t i = 0; i < batches.size(); ++i) stream.head_input(i, c, final_norm, &capture);
      weights[keys.back()] = output.contiguous();
    }
    std::map<SiteKey, at::Tensor> captured = capture.take();
    std::vector<Site> sites;
    for (const SiteKey& key : keys) sites.push_back(Site{site_key_name(key), captured.at(key), weights.at(key), {}});
    return sites;
  }

 private:
  std::string where_, layers_where_;
  std::string path_, format_, tokenizer_, text_;
  int64_t tokens_ = 2048, seq_len_ = 256;
  bool bos_ = true, fold_ = false;
  std::vector<int64_t> layers_;
  std::vector<std::string> sites_;
};

}  // namespace

void register_model_dataset(DatasetRegistry& registry) {
  registry.add("model",
               "activations of a LLaMA model on a calibration text, per linear site (layerL.attn_in|attn_out|mlp_in|"
               "mlp_out, head); path, format, tokenizer, text, tokens, seq_len, bos, layers, sites, fold_norms",
               [](ConfigReader& options) { return std::make_unique<ModelDataset>(options); });
}

}  // namespace sqlab
