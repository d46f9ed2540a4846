#include "model/quantized_model.h"

#include "quant/weight_quant.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"
#include "core/quant_config.h"
#include "core/random.h"
#include "core/system.h"
#include "model/fold.h"
#include "rotations/hadamard.h"

namespace sqlab {

namespace {
const char* kModelQuantKeys[] = {"placement", "head_bits", "fold_norms", "down_hadamard", "vo_hadamard"};
}

const char* placement_name(Placement placement) {
  return placement == Placement::online ? "online" : "residual";
}

ModelQuantConfig parse_model_quant_config(const YAML::Node& quant, const std::string& file,
                                          std::shared_ptr<const SourceMap> sources) {
  YAML::Node mine(YAML::NodeType::Map), rest(YAML::NodeType::Map);
  if (quant && quant.IsMap())
    for (const auto& kv : quant) {
      const std::string key = kv.first.as<std::string>();
      bool is_model_key = false;
      for (const char* k : kModelQuantKeys) is_model_key = is_model_key || key == k;
      (is_model_key ? mine : rest)[key] = kv.second;
    }
  ModelQuantConfig c;
  ConfigReader quant_reader(quant && quant.IsMap() ? rest : quant, file, "quant", sources);
  c.quant = parse_quant_config(quant_reader);
  ConfigReader r(mine, file, "quant", sources);
  c.model.placement = r.choice("placement", "online", {"online", "residual"}) == "online" ? Placement::online
                                                                                        : Placement::residual;
  c.model.head_bits = r.get<int>("head_bits", c.model.head_bits);
  if (!((c.model.head_bits >= 2 && c.model.head_bits <= 8) || c.model.head_bits == 16))
    r.fail("head_bits", "must be 2..8, or 16 (the head in full precision)");
  c.model.fold_norms = r.get<bool>("fold_norms", c.model.fold_norms);
  c.model.down_hadamard = r.get<bool>("down_hadamard", c.model.down_hadamard);
  c.model.vo_hadamard = r.get<bool>("vo_hadamard", c.model.vo_hadamard);
  if (c.model.placement == Placement::residual && !c.model.fold_norms)
    r.fail("fold_norms", "placement residual needs the norm gains folded (a rotation does not commute with them)");
  r.finish();
  return c;
}

at::Tensor QuantizedModelHooks::input(int64_t layer, LinearSite site, const at::Tensor& x_in) {
  at::Tensor x = x_in;
  if (site == LinearSite::mlp_out && down_rotation) x = down_rotation->apply(x);
  const auto it = rotations.find({layer, site});
  if (it != rotations.end()) x = it->second->apply(x);
  const QuantSpec& spec = site == LinearSite::head ? head_act : act;
  if (!spec.enabled()) return x;
  const at::Tensor flat = x.reshape({-1, x.size(-1)});
  return (ste ? fake_quant_ste(flat, spec) : fake_quant(flat, spec)).view(x.sizes());
}

at::Tensor quantize_linear_weight(const at::Tensor& w, const QuantSpec& spec, const QuantConfig& quant,
                                  const at::Tensor& inputs) {
  if (!spec.enabled()) return w;
  QuantConfig for_this = quant;  // the head may use its own bit width
  for_this.weight = spec;
  return quantize_weights(w, inputs.defined() ? &inputs : nullptr, for_this);
}

namespace {

QuantSpec with_bits(QuantSpec spec, int bits) {
  spec.bits = bits;
  return spec;
}

at::Tensor first_rows(const at::Tensor& x, int64_t max_rows) {
  return max_rows > 0 && x.size(0) > max_rows ? x.narrow(0, 0, max_rows) : x;
}

RotationPtr fit_site(const BuildInputs& in, const QuantConfig& quant, const std::string& name, const at::Tensor& x,
                     const at::Tensor& w) {
  Site site{name, first_rows(x, in.max_fit_tokens).contiguous(), w.contiguous(), {}};
  RotationPtr r = in.method->fit(FitContext{site, quant, in.seed, in.log_for(name)});
  if (!r || r->size() != x.size(1))
    throw Error(fmt::format("the method returned a rotation of the wrong size for site {}", name));
  if (in.keep_rotations && in.rotations_out) (*in.rotations_out)[name] = r->factors();
  return r;
}

void build_online(LlamaWeights& w, QuantizedModelHooks& hooks, const QuantConfig& quant, const BuildInputs& in) {
  const std::map<SiteKey, at::Tensor> captured = capture_site_inputs(w, in.calib_windows);
  for (const SiteKey& key : all_site_keys(w.config, false)) {
    throw_if_interrupted();
    const std::string name = site_key_name(key);
    RotationPtr r = fit_site(in, quant, name, captured.at(key), site_weight(w, key.first, key.second));
    for (at::Tensor* t : site_linears(w, key.first, key.second)) *t = r->fuse_into(*t).contiguous();
    hooks.rotations[key] = std::shared_ptr<const Rotation>(std::move(r));
  }
}

// The residual stream's inputs to the quantized reading linears (attn_in and mlp_in of
// every layer, and the head when it is quantized), stacked: the site Q is fitted on.
RotationPtr fit_residual(const LlamaWeights& w, const QuantConfig& quant, bool head_quantized,
                         const BuildInputs& in) {
  std::vector<SiteKey> keys;
  for (int64_t l = 0; l < w.config.n_layers; ++l) {
    keys.emplace_back(l, LinearSite::attn_in);
    keys.emplace_back(l, LinearSite::mlp_in);
  }
  if (head_quantized) keys.emplace_back(-1, LinearSite::head);
  const std::map<SiteKey, at::Tensor> captured = capture_site_inputs(w, in.calib_windows, keys);
  std::vector<at::Tensor> xs, ws;
  const int64_t per_site = in.max_fit_tokens > 0 ? std::max<int64_t>(1, in.max_fit_tokens / keys.size()) : 0;
  for (const SiteKey& key : keys) {
    xs.push_back(first_rows(captured.at(key), per_site));
    ws.push_back(site_weight(w, key.first, key.second));
  }
  return fit_site(in, quant, "residual", at::cat(xs, 0), at::cat(ws, 0));
}

void build_residual(LlamaWeights& w, QuantizedModelHooks& hooks, const ModelQuantConfig& config,
                    const BuildInputs& in, QuantizedModel& out) {
  const LlamaConfig& c = w.config;
  if (config.model.vo_hadamard) {
    HadamardRotation h(c.head_dim(), random_signs(c.head_dim(), make_generator(in.seed, "model/vo_hadamard")));
    fuse_value_head_rotation(w, h);
  }
  if (config.model.down_hadamard) {
    auto h = std::make_shared<HadamardRotation>(
        c.hidden_dim, random_signs(c.hidden_dim, make_generator(in.seed, "model/down_hadamard")));
    fuse_down_input_rotation(w, *h);
    hooks.down_rotation = h;
  }
  RotationPtr q = in.residual_trainer ? in.residual_trainer(w, hooks)
                                      : fit_residual(w, config.quant, config.model.head_bits < 16, in);
  if (!q->orthogonal())
    throw Error(fmt::format("placement residual needs an orthogonal rotation; the method gave {}", q->describe()));
  if (in.residual_trainer && in.keep_rotations && in.rotations_out) (*in.rotations_out)["residual"] = q->factors();
  fuse_residual_rotation(w, *q);
  out.residual = std::shared_ptr<const Rotation>(std::move(q));
}

// Every linear's weight, layer by layer in order. A data-aware quantizer (GPTQ) gets
// each linear's calibration inputs as the evaluated model produces them with the layers
// before it already weight-quantized (activations unquantized meanwhile), as GPTQ, QuaRot
// and SpinQuant calibrate; RTN needs no inputs and no forward passes.
void quantize_all_weights(LlamaWeights& weights, const QuantizedModelHooks& hooks, const QuantConfig& quant,
                          int head_bits, const at::Tensor& calib_windows) {
  const bool data_aware = quant.w_quantizer != WeightQuantizer::rtn;
  QuantizedModelHooks rotate_only = hooks;
  rotate_only.act.bits = rotate_only.head_act.bits = 16;
  const QuantSpec head_weight = with_bits(quant.weight, head_bits);
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < weights.config.n_layers; ++l) layers.push_back(l);
  if (head_bits < 16) layers.push_back(-1);
  const std::vector<SiteKey> keys = all_site_keys(weights.config, head_bits < 16);
  for (int64_t layer : layers) {
    throw_if_interrupted();
    std::vector<SiteKey> mine;
    for (const SiteKey& key : keys)
      if (key.first == layer) mine.push_back(key);
    const std::map<SiteKey, at::Tensor> inputs =
        data_aware ? capture_site_inputs(weights, calib_windows, mine, &rotate_only) : std::map<SiteKey, at::Tensor>{};
    for (const SiteKey& key : mine) {
      const QuantSpec& spec = key.second == LinearSite::head ? head_weight : quant.weight;
      const at::Tensor x = data_aware ? inputs.at(key) : at::Tensor();
      for (at::Tensor* t : site_linears(weights, key.first, key.second)) *t = quantize_linear_weight(*t, spec, quant, x);
    }
  }
}

// Folding and every fused rotation are exact in full precision: the transformed model,
// with its online rotations but no quantizer, must give the original's logits. Measured
// on one calibration window before the weights are quantized (every model-level run).
double fused_logit_error(const LlamaWeights& fp, const LlamaWeights& transformed, const QuantizedModelHooks& hooks,
                         const at::Tensor& calib_windows) {
  at::NoGradGuard no_grad;
  const at::Tensor window = calib_windows.narrow(0, 0, 1);
  QuantizedModelHooks rotate_only = hooks;
  rotate_only.act.bits = rotate_only.head_act.bits = 16;
  rotate_only.ste = false;
  const at::Tensor reference = llama_forward(fp, window).to(at::kDouble);
  const at::Tensor fused = llama_forward(transformed, window, &rotate_only).to(at::kDouble);
  return (fused - reference).norm().item<double>() / reference.norm().item<double>();
}

}  // namespace

QuantizedModel build_quantized_model(const LlamaWeights& fp, const ModelQuantConfig& config, const BuildInputs& in) {
  // No NoGradGuard here: training methods (cayley_sgd) need autograd inside fit; the
  // weights never require grad, so the rewrites record no graph.
  QuantizedModel out;
  out.weights = clone_weights(fp);
  out.hooks = std::make_shared<QuantizedModelHooks>();
  QuantizedModelHooks& hooks = *out.hooks;
  const QuantConfig& quant = config.quant;
  hooks.act = quant.act;
  hooks.head_act = with_bits(quant.act, config.model.head_bits);
  if (config.model.fold_norms || config.model.placement == Placement::residual) fold_norm_gains(out.weights);
  if (config.model.placement == Placement::online)
    build_online(out.weights, hooks, quant, in);
  else
    build_residual(out.weights, hooks, config, in, out);
  out.head_untied = fp.config.tied_embeddings && !out.weights.output.is_same(out.weights.embedding);

  out.fused_logit_error = fused_logit_error(fp, out.weights, hooks, in.calib_windows);
  if (!(out.fused_logit_error <= kMaxFusedLogitError))
    throw Error(fmt::format("the folded and fused model's logits differ from the original's by {:.3g} (relative, "
                            "before quantization; at most {:g} expected): the transform is not exact for this "
                            "method and placement",
                            out.fused_logit_error, kMaxFusedLogitError));
  quantize_all_weights(out.weights, hooks, quant, config.model.head_bits, in.calib_windows);
  return out;
}

}  // namespace sqlab
