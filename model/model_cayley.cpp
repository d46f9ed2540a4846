#include "model/model_cayley.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/random.h"
#include "core/system.h"
#include "core/torch_compat.h"
#include "methods/options.h"
#include "rotations/dense.h"
#include "rotations/hadamard.h"

namespace sqlab {

ModelCayleyOptions parse_model_cayley_options(const YAML::Node& method, const std::string& file,
                                              const std::string& path, std::shared_ptr<const SourceMap> sources,
                                              int64_t seq_len) {
  ConfigReader r(method, file, path, sources);
  ModelCayleyOptions o;
  o.sgd = parse_cayley_sgd_options(r);
  o.init = r.choice("init", o.init, {"random_hadamard", "identity", "random_orthogonal"});
  o.keep_best = r.choice("keep", "final", {"final", "best"}) == "best";
  const int64_t batch_tokens = r.get<int64_t>("batch_tokens", 0);
  if (batch_tokens < 0) r.fail("batch_tokens", "must be >= 0");
  o.batch_windows = batch_tokens > 0 ? std::max<int64_t>(1, batch_tokens / seq_len) : 0;
  return o;  // no finish(): the method's own parser checked every key of the entry
}

namespace {

at::Tensor ste_quant(const at::Tensor& w, const QuantSpec& spec) {
  return spec.enabled() ? fake_quant_ste(w, spec) : w;
}

// The model with R fused (E R, W_in R, R^T W_out, head W R), weights fake-quantized
// through the STE; differentiable in R.
LlamaWeights rotated_model(const LlamaWeights& m, const at::Tensor& R, const QuantConfig& quant, int head_bits) {
  LlamaWeights w;
  w.config = m.config;
  w.config.tied_embeddings = false;
  w.origin = m.origin;
  w.embedding = at::matmul(m.embedding, R);
  w.final_norm = m.final_norm;
  auto reader = [&](const at::Tensor& t) { return ste_quant(at::matmul(t, R), quant.weight); };
  auto writer = [&](const at::Tensor& t) { return ste_quant(at::matmul(R.t(), t), quant.weight); };
  for (const LlamaLayer& l : m.layers) {
    LlamaLayer n;
    n.attn_norm = l.attn_norm;
    n.mlp_norm = l.mlp_norm;
    n.wq = reader(l.wq);
    n.wk = reader(l.wk);
    n.wv = reader(l.wv);
    n.w_gate = reader(l.w_gate);
    n.w_up = reader(l.w_up);
    n.wo = writer(l.wo);
    n.w_down = writer(l.w_down);
    n.bq = l.bq;  // biases of readers and the per-head norms do not see the residual basis
    n.bk = l.bk;
    n.bv = l.bv;
    n.q_norm = l.q_norm;
    n.k_norm = l.k_norm;
    if (l.bo.defined()) n.bo = at::matmul(l.bo, R);  // a writer's bias: b R
    w.layers.push_back(std::move(n));
  }
  QuantSpec head = quant.weight;
  head.bits = head_bits;
  w.output = ste_quant(at::matmul(m.output, R), head);
  return w;
}

at::Tensor initial_rotation(const std::string& init, int64_t n, uint64_t seed) {
  const at::Generator g = make_generator(seed, "model_cayley/init");
  if (init == "identity") return at::eye(n, at::kDouble);
  if (init == "random_orthogonal") return random_orthogonal_matrix(n, g);
  return hadamard_matrix(n) * random_signs(n, g).to(at::kDouble).unsqueeze(1);
}

double mean_of(const std::vector<double>& v, size_t begin, size_t end) {
  if (end <= begin) return std::numeric_limits<double>::quiet_NaN();
  double s = 0.0;
  for (size_t i = begin; i < end; ++i) s += v[i];
  return s / static_cast<double>(end - begin);
}

// The same convergence numbers as the site-level cayley_sgd (methods/cayley_sgd.cpp).
void record_convergence(FitLog& log, const std::vector<double>& loss, const std::vector<double>& grad) {
  const size_t count = loss.size();
  if (count < 2) return;
  const size_t w = std::min<size_t>(100, count / 2);
  const double first = mean_of(grad, 0, w), last = mean_of(grad, count - w, count);
  log.metric("grad_norm_first", first);
  log.metric("grad_norm_last", last);
  log.metric("grad_norm_ratio", first > 0 ? last / first : std::numeric_limits<double>::quiet_NaN());
  const size_t tail = std::min<size_t>(500, count / 2);
  const auto [lo, hi] = std::minmax_element(loss.end() - tail, loss.end());
  const double mean = mean_of(loss, count - tail, count);
  double var = 0.0;
  for (size_t i = count - tail; i < count; ++i) var += (loss[i] - mean) * (loss[i] - mean);
  log.metric("loss_tail_mean", mean);
  log.metric("loss_tail_range", *hi - *lo);
  log.metric("loss_tail_std", std::sqrt(var / static_cast<double>(tail)));
}

}  // namespace

at::Tensor model_quantized_loss(const LlamaWeights& model, QuantizedModelHooks& ste_hooks, const QuantConfig& quant,
                                int head_bits, const at::Tensor& R, const at::Tensor& windows) {
  const LlamaWeights w = rotated_model(model, R, quant, head_bits);
  const int64_t T = windows.size(1);
  const at::Tensor logits = llama_forward(w, windows, &ste_hooks);
  const at::Tensor logp = at::log_softmax(logits.narrow(1, 0, T - 1), -1);
  const at::Tensor targets = windows.narrow(1, 1, T - 1).to(logp.device()).unsqueeze(-1);
  return -logp.gather(-1, targets).mean();
}

RotationPtr train_residual_rotation(const LlamaWeights& model, const QuantizedModelHooks& hooks,
                                    const QuantConfig& quant, int head_bits, const at::Tensor& calib_windows,
                                    const ModelCayleyOptions& o, uint64_t seed, FitLog& log) {
  const int64_t n = model.config.dim;
  QuantizedModelHooks ste_hooks = hooks;
  ste_hooks.ste = true;
  // Built on the CPU, trained on the model's device (model.device: cuda): every step multiplies
  // the weights by R.
  const at::Device device = model.embedding.device();
  at::Tensor R = initial_rotation(o.init, n, seed).to(device, at::kFloat).clone().set_requires_grad(true);
  CayleySGD optimizer(o.sgd, derive_seed(seed, "model_cayley/reorth"));
  at::Generator batches = make_generator(seed, "model_cayley/batches");
  const int64_t count = calib_windows.size(0);
  const bool batched = o.batch_windows > 0 && o.batch_windows < count;
  std::vector<double> losses, grads;
  at::Tensor best;
  double best_loss = std::numeric_limits<double>::infinity();
  int64_t best_step = -1;
  const double start = now_seconds();
  for (int64_t step = 0; step < o.sgd.total_steps; ++step) {
    throw_if_interrupted();
    at::Tensor windows = calib_windows;
    if (batched)  // drawn on the CPU (a CPU generator), indexing on the windows' device
      windows = calib_windows.index_select(
          0, at::randperm(count, batches, at::kLong).narrow(0, 0, o.batch_windows).to(calib_windows.device()));
    const at::Tensor loss = model_quantized_loss(model, ste_hooks, quant, head_bits, R, windows);
    loss.backward();
    const at::Tensor grad = R.grad();
    R.mutable_grad() = at::Tensor();
    const double value = loss.item<double>();
    if (!std::isfinite(value))
      throw Error(fmt::format("cayley_sgd (model): the loss is not finite at step {} (lr {} too large?)", step,
                              optimizer.current_lr()));
    if (value < best_loss) {
      best_loss = value;
      best_step = step;
      if (o.keep_best) best = R.detach().clone();
    }
    const CayleyStepStats stats = optimizer.step(R, grad);
    losses.push_back(value);
    grads.push_back(stats.grad_norm);
    trace_cayley_step(log, step, value, stats);
  }
  const double seconds = now_seconds() - start;
  // Back to the CPU: the rotation is built there.
  const at::Tensor chosen = (o.keep_best && best.defined() ? best : R.detach()).to(at::kCPU, at::kDouble);
  log.metric("orth_error_before_fix", orthogonality_error(chosen));
  const at::Tensor result = qr_orthonormalize_rows(chosen);
  {
    at::NoGradGuard no_grad;
    log.metric("final_loss",
               model_quantized_loss(model, ste_hooks, quant, head_bits, result.to(device, at::kFloat), calib_windows)
                   .item<double>());
  }
  log.metric("initial_loss", losses.empty() ? std::numeric_limits<double>::quiet_NaN() : losses.front());
  log.metric("best_loss", best_loss);
  log.metric("best_step", static_cast<double>(best_step));
  log.metric("step_seconds", losses.empty() ? 0.0 : seconds / static_cast<double>(losses.size()));
  log.metric("opt_steps", static_cast<double>(o.sgd.total_steps));
  log.metric("opt_lr", o.sgd.lr);
  log.metric("opt_batch_windows", static_cast<double>(o.batch_windows));
  record_convergence(log, losses, grads);
  return std::make_unique<DenseRotation>(
      result, fmt::format("cayley_sgd (model loss) {} steps lr {} {}", o.sgd.total_steps, o.sgd.lr,
                          schedule_name(o.sgd.schedule)));
}

}  // namespace sqlab
