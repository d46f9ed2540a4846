#include "model/quantized_model.h"

#include "quant/weight_quant.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"
#include "core/quant_config.h"
#include "core/random.h"
#include "core/system.h"
#include "core/torch_compat.h"
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

// A 16-bit compute dtype (model.compute_dtype) rotates and quantizes in float32, as the
// rotations were fitted, and hands the linear its input in the compute dtype again.
at::Tensor QuantizedModelHooks::input(int64_t layer, LinearSite site, const at::Tensor& x_in) {
  const bool narrow = x_in.scalar_type() == at::kBFloat16 || x_in.scalar_type() == at::kHalf;
  at::Tensor x = narrow ? x_in.to(at::kFloat) : x_in;
  if (site == LinearSite::mlp_out && down_rotation) x = down_rotation->apply(x);
  const auto it = rotations.find({layer, site});
  if (it != rotations.end()) x = it->second->apply(x);
  const QuantSpec& spec = site == LinearSite::head ? head_act : act;
  if (spec.enabled()) {
    const at::Tensor flat = x.reshape({-1, x.size(-1)});
    x = (ste ? fake_quant_ste(flat, spec) : fake_quant(flat, spec)).view(x.sizes());
  }
  return narrow ? x.to(x_in.scalar_type()) : x;
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

constexpr int64_t kCheckTokens = 256;

// The width of a site's input.
int64_t site_width(const LlamaConfig& c, LinearSite site) {
  switch (site) {
    case LinearSite::attn_out: return c.q_dim();
    case LinearSite::mlp_out: return c.hidden_dim;
    default: return c.dim;
  }
}

const LinearSite kLayerSites[] = {LinearSite::attn_in, LinearSite::attn_out, LinearSite::mlp_in, LinearSite::mlp_out};

// The calibration windows as batches of 8 rows (the batch capture_site_inputs used).
std::vector<TokenBatch> calibration_batches(const at::Tensor& windows, int64_t rows = 8) {
  std::vector<TokenBatch> out;
  for (int64_t i = 0; i < windows.size(0); i += rows) {
    TokenBatch b;
    b.tokens = windows.narrow(0, i, std::min(rows, windows.size(0) - i));
    out.push_back(std::move(b));
  }
  return out;
}

void move_layer(LlamaLayer& layer, at::Device device) {
  for (at::Tensor* t : layer.tensors())
    if (t->defined() && t->device() != device) *t = t->to(device);
}

at::Tensor on(const at::Tensor& t, at::Device device) { return t.device() == device ? t : t.to(device); }

// ||a W^T - b V^T||_F^2 and ||a W^T||_F^2 over the rows of a and b, a chunk of rows at a
// time (no T x vocab tensor): the fused-model check's logits.
std::pair<double, double> logit_difference(const at::Tensor& a, const at::Tensor& w, const at::Tensor& b,
                                           const at::Tensor& v) {
  const at::Tensor x = a.reshape({-1, a.size(-1)}), y = b.reshape({-1, b.size(-1)});
  double diff = 0.0, ref = 0.0;
  for (int64_t i = 0; i < x.size(0); i += kHeadChunkTokens) {
    const int64_t n = std::min(kHeadChunkTokens, x.size(0) - i);
    const at::Tensor reference = at::linear(x.narrow(0, i, n), w).to(at::kDouble);
    const at::Tensor fused = at::linear(y.narrow(0, i, n), v).to(at::kDouble);
    diff += (fused - reference).pow(2).sum().item<double>();
    ref += reference.pow(2).sum().item<double>();
  }
  return {diff, ref};
}

}  // namespace

LayerwiseBuilder::LayerwiseBuilder(WeightSourcePtr source, const ModelQuantConfig& config, const BuildInputs& inputs,
                                   at::Device device)
    : source_(std::move(source)), config_(config), in_(inputs), device_(device) {
  const LlamaConfig& c = source_->config();
  const QuantConfig& quant = config_.quant;
  fold_ = config_.model.fold_norms || config_.model.placement == Placement::residual;
  data_aware_ = quant.w_quantizer != WeightQuantizer::rtn;
  hooks_ = std::make_shared<QuantizedModelHooks>();
  hooks_->act = quant.act;
  hooks_->head_act = with_bits(quant.act, config_.model.head_bits);
  double start = now_seconds();
  fp_embedding_ = on(source_->embedding(), device_);
  add_seconds("read", start);
  embedding_ = fp_embedding_;

  if (config_.model.placement == Placement::residual) {
    if (config_.model.vo_hadamard) {
      auto h = std::make_shared<HadamardRotation>(c.head_dim(),
                                                  random_signs(c.head_dim(), make_generator(in_.seed, "model/vo_hadamard")));
      check_value_head_rotation(*h, c);
      value_head_ = h;
    }
    if (config_.model.down_hadamard)
      hooks_->down_rotation = std::make_shared<HadamardRotation>(
          c.hidden_dim, random_signs(c.hidden_dim, make_generator(in_.seed, "model/down_hadamard")));
    if (in_.residual_trainer)
      train_residual();
    else
      fit_residual_first_pass();
    start = now_seconds();
    embedding_ = residual_->apply(fp_embedding_).contiguous();
    add_seconds("fuse", start);
  }

  start = now_seconds();
  // The check's window: the first kCheckTokens tokens of the first calibration window (an
  // exact identity; causal attention makes a prefix a complete input of its own).
  const at::Tensor first_window =
      in_.calib_windows.narrow(0, 0, 1).narrow(1, 0, std::min(kCheckTokens, in_.calib_windows.size(1)));
  TokenBatch check_batch;
  check_batch.tokens = first_window;
  check_fp_ = HiddenStream({check_batch});
  check_ = HiddenStream({check_batch});
  check_fp_.embed(c, fp_embedding_, origin());
  check_.embed(c, embedding_, origin());
  add_seconds("check", start);
  start = now_seconds();
  if (config_.model.placement == Placement::online && in_.method->reads_activations()) {
    calib_ = HiddenStream(calibration_batches(in_.calib_windows));
    calib_.embed(c, fp_embedding_, origin());
  }
  if (data_aware_) {
    calib_q_ = HiddenStream(calibration_batches(in_.calib_windows));
    calib_q_.embed(c, embedding_, origin());
  }
  add_seconds("calib_forward", start);
}

void LayerwiseBuilder::add_seconds(const char* stage, double start) {
  wait_for_device(device_);
  timing_[stage] += now_seconds() - start;
}

QuantizedModelHooks LayerwiseBuilder::rotate_only() const {
  QuantizedModelHooks h = *hooks_;
  h.act.bits = h.head_act.bits = 16;
  h.ste = false;
  return h;
}

LlamaLayer LayerwiseBuilder::read_layer(int64_t index) {
  const double start = now_seconds();
  LlamaLayer layer = source_->layer(index);
  move_layer(layer, device_);
  add_seconds("read", start);
  return layer;
}

// The residual site: the stream's normalized inputs to every quantized reading linear
// (attn_in and mlp_in of each layer, the head's when it is quantized), captured on the
// folded full-precision model, and their stacked weights when the method reads weights.
void LayerwiseBuilder::fit_residual_first_pass() {
  const LlamaConfig& c = source_->config();
  const bool head_quantized = config_.model.head_bits < 16;
  const int64_t site_count = 2 * c.n_layers + (head_quantized ? 1 : 0);
  const int64_t per_site = in_.max_fit_tokens > 0 ? std::max<int64_t>(1, in_.max_fit_tokens / site_count) : 0;
  const bool with_x = in_.method->reads_activations(), with_weights = in_.method->reads_weights();
  // Every site's rows, in one tensor filled in place (a list joined at the end would hold
  // them twice: 2 x 2.1 GB for LLaMA-2-7B's 64 sites of 2048 tokens).
  const int64_t calib_rows = in_.calib_windows.numel();
  const int64_t rows = per_site > 0 ? std::min(per_site, calib_rows) : calib_rows;
  at::Tensor x = at::empty({with_x ? site_count * rows : 0, c.dim}, at::TensorOptions().dtype(at::kFloat));
  int64_t filled = 0;
  const auto add_rows = [&](const at::Tensor& captured) {
    x.narrow(0, filled, rows).copy_(first_rows(captured, rows));
    filled += rows;
  };
  std::vector<at::Tensor> ws;
  HiddenStream stream;
  if (with_x) {
    stream = HiddenStream(calibration_batches(in_.calib_windows));
    stream.embed(c, fp_embedding_, origin());
  }
  for (int64_t l = 0; l < c.n_layers && (with_x || with_weights); ++l) {
    throw_if_interrupted();
    LlamaLayer layer = read_layer(l);
    double start = now_seconds();
    fold_layer_norm_gains(layer);
    add_seconds("fuse", start);
    if (with_x) {
      start = now_seconds();
      CaptureHooks capture({{l, LinearSite::attn_in}, {l, LinearSite::mlp_in}});
      stream.advance(c, layer, l, &capture);
      std::map<SiteKey, at::Tensor> captured = capture.take();
      add_seconds("calib_forward", start);
      add_rows(captured.at({l, LinearSite::attn_in}));
      add_rows(captured.at({l, LinearSite::mlp_in}));
    }
    if (with_weights) {
      // The weights Q is fused into: v already carries the per-head Hadamard.
      if (value_head_) fuse_value_head_into_layer(layer, c, *value_head_);
      ws.push_back(layer_site_weight(layer, LinearSite::attn_in));
      ws.push_back(layer_site_weight(layer, LinearSite::mlp_in));
    }
  }
  if (head_quantized && (with_x || with_weights)) {
    at::Tensor norm = on(source_->final_norm(), device_), head = on(source_->output(), device_);
    fold_head_norm_gain(norm, head);
    if (with_x) {
      CaptureHooks capture({{-1, LinearSite::head}});
      for (size_t i = 0; i < stream.batches().size(); ++i) stream.head_input(i, c, norm, &capture);
      add_rows(capture.take().at({-1, LinearSite::head}));
    }
    if (with_weights) ws.push_back(head);
  }
  stream = HiddenStream();
  const at::Tensor w = with_weights ? at::cat(ws, 0) : at::empty({0, c.dim}, at::kFloat);
  const double start = now_seconds();
  RotationPtr q = fit_site(in_, config_.quant, "residual", x, w);
  add_seconds("fit", start);
  set_residual(std::move(q));
}

// Q must be orthogonal (a non-orthogonal transform does not commute with RMSNorm).
void LayerwiseBuilder::set_residual(RotationPtr q) {
  if (!q->orthogonal())
    throw Error(fmt::format("placement residual needs an orthogonal rotation; the method gave {}", q->describe()));
  check_residual_rotation(*q, source_->config().dim);
  residual_ = std::shared_ptr<const Rotation>(std::move(q));
}

// Model-level Cayley SGD: the whole folded model with the fixed rotations fused, in memory.
void LayerwiseBuilder::train_residual() {
  double start = now_seconds();
  LlamaWeights model = read_all_weights(*source_);
  for (LlamaLayer& layer : model.layers) move_layer(layer, device_);
  model.embedding = fp_embedding_;
  model.output = model.config.tied_embeddings ? model.embedding : on(model.output, device_);
  model.final_norm = on(model.final_norm, device_);
  add_seconds("read", start);
  start = now_seconds();
  fold_norm_gains(model);
  if (value_head_) fuse_value_head_rotation(model, *value_head_);
  if (hooks_->down_rotation) fuse_down_input_rotation(model, *hooks_->down_rotation);
  add_seconds("fuse", start);
  start = now_seconds();
  RotationPtr q = in_.residual_trainer(model, *hooks_);
  add_seconds("fit", start);
  if (in_.keep_rotations && in_.rotations_out) (*in_.rotations_out)["residual"] = q->factors();
  set_residual(std::move(q));
}

// Online placement: each site's rotation fitted on the folded full-precision model's inputs
// to it (captured by running calib_ through the layer), fused into the site's weights.
void LayerwiseBuilder::transform_online(LlamaLayer& layer, int64_t l) {
  const LlamaConfig& c = source_->config();
  double start = now_seconds();
  std::map<SiteKey, at::Tensor> captured;
  if (in_.method->reads_activations()) {
    CaptureHooks capture({{l, LinearSite::attn_in}, {l, LinearSite::attn_out}, {l, LinearSite::mlp_in},
                          {l, LinearSite::mlp_out}});
    calib_.advance(c, layer, l, &capture);
    captured = capture.take();
  } else {  // a data-free rotation: the sites' widths are all it reads
    for (LinearSite site : kLayerSites) captured[{l, site}] = at::empty({0, site_width(c, site)}, at::kFloat);
  }
  add_seconds("calib_forward", start);
  for (LinearSite site : kLayerSites) {
    throw_if_interrupted();
    const SiteKey key{l, site};
    start = now_seconds();
    const at::Tensor w = in_.method->reads_weights() ? layer_site_weight(layer, site)
                                                     : at::empty({0, site_width(c, site)}, at::kFloat);
    RotationPtr r = fit_site(in_, config_.quant, site_key_name(key), captured.at(key), w);
    add_seconds("fit", start);
    start = now_seconds();
    for (at::Tensor* t : layer_site_linears(layer, site)) *t = r->fuse_into(*t).contiguous();
    add_seconds("fuse", start);
    hooks_->rotations[key] = std::shared_ptr<const Rotation>(std::move(r));
  }
}

// Residual placement: the per-head Hadamard into v/o, the online Hadamard's other half into
// down_proj, Q into every reader and writer.
void LayerwiseBuilder::transform_residual(LlamaLayer& layer) const {
  if (value_head_) fuse_value_head_into_layer(layer, source_->config(), *value_head_);
  if (hooks_->down_rotation) layer.w_down = hooks_->down_rotation->fuse_into(layer.w_down).contiguous();
  fuse_residual_into_layer(layer, *residual_);
}

// Every linear of the layer. GPTQ gets each linear's calibration inputs as the evaluated
// model produces them with the layers before already weight-quantized (activations
// unquantized meanwhile), as GPTQ, QuaRot and SpinQuant calibrate; RTN needs no inputs.
void LayerwiseBuilder::quantize_layer(LlamaLayer& layer, int64_t l) {
  const LlamaConfig& c = source_->config();
  const QuantConfig& quant = config_.quant;
  QuantizedModelHooks hooks = rotate_only();
  std::map<SiteKey, at::Tensor> inputs;
  if (data_aware_) {
    const double start = now_seconds();
    CaptureHooks capture({{l, LinearSite::attn_in}, {l, LinearSite::attn_out}, {l, LinearSite::mlp_in},
                          {l, LinearSite::mlp_out}},
                         &hooks);
    HiddenStream probe = calib_q_;  // the layer before its weights are quantized; calib_q_ stays
    probe.advance(c, layer, l, &capture);
    inputs = capture.take();
    add_seconds("calib_forward", start);
  }
  const double start = now_seconds();
  for (LinearSite site : kLayerSites) {
    const at::Tensor x = data_aware_ ? inputs.at({l, site}) : at::Tensor();
    for (at::Tensor* t : layer_site_linears(layer, site)) *t = quantize_linear_weight(*t, quant.weight, quant, x);
  }
  add_seconds("quantize", start);
  if (data_aware_) {
    const double forward = now_seconds();
    calib_q_.advance(c, layer, l, &hooks);
    add_seconds("calib_forward", forward);
  }
}

void LayerwiseBuilder::release_embeddings() {
  fp_embedding_ = embedding_ = at::Tensor();
}

LayerwiseBuilder::Layer LayerwiseBuilder::next_layer() {
  const LlamaConfig& c = source_->config();
  if (next_ >= c.n_layers) throw Error(fmt::format("{}: every layer of {} is built", origin(), c.n_layers));
  throw_if_interrupted();
  const int64_t l = next_++;
  Layer out;
  out.fp = read_layer(l);
  LlamaLayer layer = out.fp;  // shares the tensors; every step below makes new ones
  double start = now_seconds();
  if (fold_) fold_layer_norm_gains(layer);
  add_seconds("fuse", start);
  if (config_.model.placement == Placement::online) {
    transform_online(layer, l);
  } else {
    start = now_seconds();
    transform_residual(layer);
    add_seconds("fuse", start);
  }
  start = now_seconds();
  QuantizedModelHooks hooks = rotate_only();
  check_fp_.advance(c, out.fp, l);
  check_.advance(c, layer, l, &hooks);
  add_seconds("check", start);
  quantize_layer(layer, l);
  out.quantized = std::move(layer);
  return out;
}

void LayerwiseBuilder::finish() {
  const LlamaConfig& c = source_->config();
  if (next_ != c.n_layers)
    throw Error(fmt::format("{}: finish() after {} of {} layers", origin(), next_, c.n_layers));
  double start = now_seconds();
  fp_final_norm_ = on(source_->final_norm(), device_);
  if (!c.tied_embeddings)
    fp_output_ = on(source_->output(), device_);
  else
    fp_output_ = fp_embedding_.defined() ? fp_embedding_ : on(source_->embedding(), device_);
  add_seconds("read", start);
  start = now_seconds();
  final_norm_ = fp_final_norm_;
  output_ = fp_output_;
  if (fold_) fold_head_norm_gain(final_norm_, output_);  // a tied head is untied here
  if (residual_) output_ = residual_->fuse_into(output_).contiguous();
  head_untied_ = c.tied_embeddings && !output_.is_same(fp_output_);  // folded or rotated: a tensor of its own
  add_seconds("fuse", start);

  start = now_seconds();
  QuantizedModelHooks hooks = rotate_only();
  const at::Tensor fp_head = llama_head_input(c, fp_final_norm_, check_fp_.hidden(0));
  const at::Tensor head = llama_head_input(c, final_norm_, check_.hidden(0), &hooks);
  const auto [diff, ref] = logit_difference(fp_head, fp_output_, head, output_);
  fused_logit_error_ = std::sqrt(diff) / std::sqrt(ref);
  check_fp_ = check_ = HiddenStream();
  add_seconds("check", start);
  if (!(fused_logit_error_ <= kMaxFusedLogitError))
    throw Error(fmt::format("the folded and fused model's logits differ from the original's by {:.3g} (relative, "
                            "before quantization; at most {:g} expected): the transform is not exact for this "
                            "method and placement",
                            fused_logit_error_, kMaxFusedLogitError));

  if (config_.model.head_bits < 16) {
    at::Tensor inputs;
    if (data_aware_) {
      start = now_seconds();
      CaptureHooks capture({{-1, LinearSite::head}}, &hooks);
      for (size_t i = 0; i < calib_q_.batches().size(); ++i) calib_q_.head_input(i, c, final_norm_, &capture);
      inputs = capture.take().at({-1, LinearSite::head});
      add_seconds("calib_forward", start);
    }
    start = now_seconds();
    output_ = quantize_linear_weight(output_, with_bits(config_.quant.weight, config_.model.head_bits), config_.quant,
                                     inputs);
    add_seconds("quantize", start);
  }
  calib_ = calib_q_ = HiddenStream();
}

QuantizedModel build_quantized_model(const LlamaWeights& fp, const ModelQuantConfig& config, const BuildInputs& in) {
  // No NoGradGuard here: training methods (cayley_sgd) need autograd inside fit; the
  // weights never require grad, so the rewrites record no graph.
  LayerwiseBuilder builder(weights_in_memory(fp), config, in, fp.embedding.device());
  QuantizedModel out;
  out.weights.config = fp.config;
  out.weights.origin = fp.origin;
  out.weights.embedding = builder.embedding();
  for (int64_t l = 0; l < fp.config.n_layers; ++l) out.weights.layers.push_back(builder.next_layer().quantized);
  builder.finish();
  out.weights.final_norm = builder.final_norm();
  out.weights.output = builder.output();
  out.weights.config.tied_embeddings = out.weights.output.is_same(out.weights.embedding);
  out.hooks = builder.hooks();
  out.residual = builder.residual();
  out.fused_logit_error = builder.fused_logit_error();
  out.head_untied = builder.head_untied();
  return out;
}

}  // namespace sqlab
