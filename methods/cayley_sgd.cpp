// cayley_sgd: the SpinQuant baseline at site level. Learns an orthogonal R (dense n x n,
// or Kronecker factors R1 (x) R2 learned jointly) by Cayley SGD on the Stiefel manifold
// (core/stiefel.h), minimizing the W4A4 output error of the site through the
// straight-through estimator:
//   loss(R) = ||Q(X R) Q(W R)^T - X W^T||_F^2 / ||X W^T||_F^2
// over the calibration tokens (or a seeded mini-batch of them per step).
//
// Options (YAML keys; defaults first):
//   steps: 100, lr: 1.5, schedule: linear|constant|cosine, momentum: 0,
//   cayley: fixed_point|solve, fixed_point_iters: 5, grad_clip: 0 (off; SpinQuant's runs: 1),
//   normalize_rows: true, random_reorth: true (SpinQuant's QR with probability 1/101),
//   reorth_every: 0 (off)
//   init: random_hadamard|identity|random_orthogonal
//   structure: dense|kronecker, kronecker: auto|[n1, n2]
//   batch_tokens: 0 (all tokens every step)
//   precision: float32|float64 (of the training; the result is float64)
//   keep: final|best (best: the R of the lowest traced loss)
// The learning-rate schedule counts `steps`. quant.rounding: smooth trains on the smooth
// surrogate of rounding (the control run); the evaluation always rounds.
//
// Traces per step t (R_t: the rotation before step t): loss (at R_t), grad_norm (the
// Riemannian ||G R^T - R G^T||_F at R_t), euclid_grad_norm (||G||_F), lr (scheduled),
// step_size (min(lr, 1 / ||A||_1)), orth_error (||R R^T - I||_F of R_{t+1}; summed over
// factors in squares). The returned R is re-orthonormalized (QR, sign fix) in float64 so
// it is orthogonal to rounding error; orth_error_before_fix records how far it was.
#include "methods/cayley_sgd.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "core/config.h"
#include "core/hadamard.h"
#include "core/hadamard_matrices.h"
#include "core/kronecker.h"
#include "core/method.h"
#include "core/random.h"
#include "core/stiefel.h"
#include "core/system.h"

namespace sqlab {

at::Tensor quantized_output_loss(const at::Tensor& XR, const at::Tensor& WR, const at::Tensor& Y,
                                 const QuantConfig& quant) {
  const at::Tensor xq = fake_quant_ste(XR, quant.act);
  const at::Tensor wq = fake_quant_ste(WR, quant.weight);
  const at::Tensor err = at::mm(xq, wq.t()) - Y;
  at::Tensor ref;
  {
    at::NoGradGuard no_grad;
    ref = Y.pow(2).sum();
  }
  return err.pow(2).sum() / ref;
}

namespace {

enum class Init { random_hadamard, identity, random_orthogonal };
const std::vector<std::string> kInitChoices{"random_hadamard", "identity", "random_orthogonal"};
const std::vector<std::string> kScheduleChoices{"constant", "linear", "cosine"};

struct CayleyMethodOptions {
  CayleySGDOptions sgd;
  Init init = Init::random_hadamard;
  bool kronecker = false;
  int64_t n1 = 0, n2 = 0;  // 0: auto
  std::string kronecker_where;
  int64_t batch_tokens = 0;
  bool float64 = false;
  bool keep_best = false;
};

int index_of(const std::string& value, const std::vector<std::string>& choices) {
  return static_cast<int>(std::find(choices.begin(), choices.end(), value) - choices.begin());
}

void parse_kronecker(ConfigReader& reader, CayleyMethodOptions& o) {
  o.kronecker_where = reader.where("kronecker");
  const YAML::Node node = reader.raw("kronecker");
  if (!node || (node.IsScalar() && node.as<std::string>() == "auto")) return;
  std::vector<int64_t> pair;
  try {
    if (node.IsSequence()) pair = node.as<std::vector<int64_t>>();
  } catch (const YAML::Exception&) {
  }
  if (pair.size() != 2 || pair[0] < 1 || pair[1] < 1)
    reader.fail("kronecker", fmt::format("expected auto or [n1, n2] with positive n1, n2; got '{}'",
                                         yaml_to_flow(node)));
  o.n1 = pair[0];
  o.n2 = pair[1];
}

CayleyMethodOptions parse_options(ConfigReader& reader) {
  CayleyMethodOptions o;
  o.sgd = parse_cayley_sgd_options(reader);
  o.init = static_cast<Init>(index_of(reader.choice("init", "random_hadamard", kInitChoices), kInitChoices));
  o.kronecker = reader.choice("structure", "dense", {"dense", "kronecker"}) == "kronecker";
  parse_kronecker(reader, o);
  if (!o.kronecker && o.n1 > 0)
    reader.fail("kronecker", "given, but structure is dense (set structure: kronecker)");
  o.batch_tokens = reader.get<int64_t>("batch_tokens", o.batch_tokens);
  if (o.batch_tokens < 0) reader.fail("batch_tokens", "must be >= 0 (0: all tokens)");
  o.float64 = reader.choice("precision", "float32", {"float32", "float64"}) == "float64";
  o.keep_best = reader.choice("keep", "final", {"final", "best"}) == "best";
  reader.finish();
  return o;
}

bool has_hadamard(int64_t m) {
  int64_t base = 0, pow2 = 0;
  return hadamard_split(m, &base, &pow2);
}

// Mean of values[begin, end).
double mean_of(const std::vector<double>& values, size_t begin, size_t end) {
  if (end <= begin) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0.0;
  for (size_t i = begin; i < end; ++i) sum += values[i];
  return sum / static_cast<double>(end - begin);
}

class CayleySgdMethod : public RotationMethod {
 public:
  explicit CayleySgdMethod(CayleyMethodOptions options) : o_(std::move(options)) {}
  RotationPtr fit(const FitContext& context) const override;

 private:
  std::pair<int64_t, int64_t> factorization(int64_t n) const;
  at::Tensor initial(int64_t m, const FitContext& context, const std::string& which) const;
  void record_options(FitLog& log, int64_t n1, int64_t n2) const;

  CayleyMethodOptions o_;
};

std::pair<int64_t, int64_t> CayleySgdMethod::factorization(int64_t n) const {
  const bool need_hadamard = o_.init == Init::random_hadamard;
  auto acceptable = [&](int64_t a, int64_t b) {
    return !need_hadamard || (has_hadamard(a) && has_hadamard(b));
  };
  if (o_.n1 > 0) {
    if (o_.n1 * o_.n2 != n)
      throw config_error(fmt::format("{}: [{}, {}] does not factor the site width n = {}",
                                     o_.kronecker_where, o_.n1, o_.n2, n));
    if (!acceptable(o_.n1, o_.n2))
      throw config_error(fmt::format(
          "{}: [{}, {}]: init random_hadamard needs Hadamard matrices of both orders "
          "(2^k * m, m in {{1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172}})",
          o_.kronecker_where, o_.n1, o_.n2));
    return {o_.n1, o_.n2};
  }
  const std::optional<std::pair<int64_t, int64_t>> best = balanced_factorization(n, acceptable);
  if (!best)
    throw config_error(fmt::format("{}: auto: no factorization n1 * n2 = {}{}", o_.kronecker_where, n,
                                   need_hadamard ? " with Hadamard matrices of both orders (init random_hadamard)" : ""));
  return *best;
}

// The initial factor of order m (float64): D H (random signs times the normalized
// Hadamard, as SpinQuant's random_hadamard_matrix), I, or a Haar-random orthogonal matrix.
at::Tensor CayleySgdMethod::initial(int64_t m, const FitContext& context, const std::string& which) const {
  const std::string purpose = "cayley_sgd/" + context.site.name + "/init/" + which;
  switch (o_.init) {
    case Init::identity: return at::eye(m, at::kDouble);
    case Init::random_orthogonal: return random_orthogonal_matrix(m, make_generator(context.seed, purpose));
    case Init::random_hadamard: {
      if (!has_hadamard(m))
        throw config_error(fmt::format(
            "cayley_sgd: init random_hadamard: no Hadamard matrix of order {} (need 2^k * m, m in "
            "{{1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172}}); use init: random_orthogonal",
            m));
      const at::Tensor signs = random_signs(m, make_generator(context.seed, purpose)).to(at::kDouble);
      return hadamard_matrix(m) * signs.unsqueeze(1);
    }
  }
  return at::eye(m, at::kDouble);
}

void CayleySgdMethod::record_options(FitLog& log, int64_t n1, int64_t n2) const {
  const CayleySGDOptions& s = o_.sgd;
  log.metric("opt_steps", static_cast<double>(s.total_steps));
  log.metric("opt_lr", s.lr);
  log.metric("opt_schedule", index_of(schedule_name(s.schedule), kScheduleChoices));
  log.metric("opt_momentum", s.momentum);
  log.metric("opt_cayley_solve", s.retraction == CayleyRetraction::solve);
  log.metric("opt_fixed_point_iters", s.fixed_point_iters);
  log.metric("opt_grad_clip", s.grad_clip);
  log.metric("opt_normalize_rows", s.normalize_rows);
  log.metric("opt_random_reorth", s.random_reorth);
  log.metric("opt_reorth_every", static_cast<double>(s.reorth_every));
  log.metric("opt_init", static_cast<double>(static_cast<int>(o_.init)));
  log.metric("opt_kronecker", o_.kronecker);
  log.metric("opt_batch_tokens", static_cast<double>(o_.batch_tokens));
  log.metric("opt_float64", o_.float64);
  log.metric("opt_keep_best", o_.keep_best);
  if (o_.kronecker) {
    log.metric("n1", static_cast<double>(n1));
    log.metric("n2", static_cast<double>(n2));
  }
}

RotationPtr CayleySgdMethod::fit(const FitContext& context) const {
  const Site& site = context.site;
  const int64_t n = site.X.size(1);
  const int64_t tokens = site.X.size(0);
  const at::ScalarType dtype = o_.float64 ? at::kDouble : at::kFloat;
  const QuantConfig& quant = context.quant;

  // Parameters: R (n x n) or R1 (n1 x n1), R2 (n2 x n2), float64 at first.
  int64_t n1 = n, n2 = 1;
  std::vector<at::Tensor> init64;
  if (o_.kronecker) {
    std::tie(n1, n2) = factorization(n);
    init64 = {initial(n1, context, "R1"), initial(n2, context, "R2")};
  } else {
    init64 = {initial(n, context, "R")};
  }
  record_options(context.log, n1, n2);

  std::vector<at::Tensor> params;
  for (const at::Tensor& r : init64) params.push_back(r.to(dtype).contiguous().set_requires_grad(true));
  auto rotate = [&](const at::Tensor& x) {
    if (!o_.kronecker) return at::mm(x, params[0]);
    // x R = vec(R1^T M R2), M = x.reshape(n1, n2) (core/kronecker.h).
    const at::Tensor m = x.reshape({-1, n1, n2});
    return at::matmul(at::matmul(params[0].t(), m), params[1]).reshape({-1, n});
  };

  at::Tensor X, W, Y;
  {
    at::NoGradGuard no_grad;
    X = site.X.to(dtype).contiguous();
    W = site.W.to(dtype).contiguous();
    Y = at::mm(site.X.to(at::kDouble), site.W.to(at::kDouble).t()).to(dtype);
  }
  const bool batched = o_.batch_tokens > 0 && o_.batch_tokens < tokens;
  at::Generator batch_generator = make_generator(context.seed, "cayley_sgd/" + site.name + "/batches");
  CayleySGD optimizer(o_.sgd, derive_seed(context.seed, "cayley_sgd/" + site.name + "/reorth"));

  FitLog& log = context.log;
  const int64_t steps = o_.sgd.total_steps;
  std::vector<double> losses, grad_norms;
  losses.reserve(steps);
  grad_norms.reserve(steps);
  double best_loss = std::numeric_limits<double>::infinity();
  int64_t best_step = -1;
  std::vector<at::Tensor> best;
  const double start = now_seconds();
  for (int64_t step = 0; step < steps; ++step) {
    throw_if_interrupted();
    at::Tensor xb = X, yb = Y;
    if (batched) {
      const at::Tensor rows = at::randperm(tokens, batch_generator, at::kLong).narrow(0, 0, o_.batch_tokens);
      xb = X.index_select(0, rows);
      yb = Y.index_select(0, rows);
    }
    const at::Tensor loss = quantized_output_loss(rotate(xb), rotate(W), yb, quant);
    loss.backward();
    std::vector<at::Tensor> grads;
    for (at::Tensor& p : params) {
      grads.push_back(p.grad());
      p.mutable_grad() = at::Tensor();
    }
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value))
      throw Error(fmt::format("cayley_sgd: the loss is not finite at step {} (lr {} too large?)", step,
                              optimizer.current_lr()));
    if (o_.keep_best && loss_value < best_loss) {
      best.clear();
      for (const at::Tensor& p : params) best.push_back(p.detach().clone());
    }
    if (loss_value < best_loss) {
      best_loss = loss_value;
      best_step = step;
    }
    const CayleyStepStats stats = optimizer.step(params, grads);
    losses.push_back(loss_value);
    grad_norms.push_back(stats.grad_norm);
    log.trace("loss", step, loss_value);
    log.trace("grad_norm", step, stats.grad_norm);
    log.trace("euclid_grad_norm", step, stats.euclid_grad_norm);
    log.trace("lr", step, stats.lr);
    log.trace("step_size", step, stats.step_size);
    log.trace("orth_error", step, stats.orth_error);
  }
  const double train_seconds = now_seconds() - start;

  // The result: final (or best) R, re-orthonormalized in float64.
  const std::vector<at::Tensor>& chosen = o_.keep_best && !best.empty() ? best : params;
  std::vector<at::Tensor> result;
  double orth_sq = 0.0;
  for (const at::Tensor& p : chosen) {
    const at::Tensor r64 = p.detach().to(at::kDouble);
    const double e = orthogonality_error(r64);
    orth_sq += e * e;
    result.push_back(qr_orthonormalize_rows(r64));
  }

  // Loss of the returned rotation on all tokens: with the training rounding, and with
  // round-to-nearest (what the evaluation measures; the same for rounding: ste).
  {
    at::NoGradGuard no_grad;
    auto full_loss = [&](const QuantConfig& q) {
      at::Tensor xr, wr;
      if (o_.kronecker) {
        const at::Tensor r1 = result[0].to(dtype), r2 = result[1].to(dtype);
        auto kron_apply = [&](const at::Tensor& x) {
          return at::matmul(at::matmul(r1.t(), x.reshape({-1, n1, n2})), r2).reshape({-1, n});
        };
        xr = kron_apply(X);
        wr = kron_apply(W);
      } else {
        const at::Tensor r = result[0].to(dtype);
        xr = at::mm(X, r);
        wr = at::mm(W, r);
      }
      return quantized_output_loss(xr, wr, Y, q).item<double>();
    };
    const double final_loss = full_loss(quant);
    QuantConfig rtn = quant;
    rtn.act.rounding = rtn.weight.rounding = Rounding::ste;
    const double final_quant_loss =
        quant.act.rounding == Rounding::ste && quant.weight.rounding == Rounding::ste ? final_loss : full_loss(rtn);
    if (!batched && final_loss < best_loss) {
      best_loss = final_loss;
      best_step = steps;
    }
    log.metric("final_loss", final_loss);
    log.metric("final_quant_loss", final_quant_loss);
  }
  log.metric("initial_loss", losses.empty() ? std::numeric_limits<double>::quiet_NaN() : losses.front());
  log.metric("best_loss", best_loss);
  log.metric("best_step", static_cast<double>(best_step));
  log.metric("orth_error_before_fix", std::sqrt(orth_sq));
  log.metric("step_seconds", steps > 0 ? train_seconds / static_cast<double>(steps) : 0.0);
  // Convergence summaries (the oscillation figure's numbers): the Riemannian gradient norm
  // over the last w steps relative to the first w (w = min(100, steps / 2)), and the loss's
  // spread (max - min, std) over the last min(500, steps / 2) steps.
  const size_t count = losses.size();
  if (count >= 2) {
    const size_t w = std::min<size_t>(100, count / 2);
    const double first = mean_of(grad_norms, 0, w), last = mean_of(grad_norms, count - w, count);
    log.metric("grad_norm_first", first);
    log.metric("grad_norm_last", last);
    log.metric("grad_norm_ratio", first > 0 ? last / first : std::numeric_limits<double>::quiet_NaN());
    const size_t tail = std::min<size_t>(500, count / 2);
    const auto [lo, hi] = std::minmax_element(losses.end() - tail, losses.end());
    const double mean = mean_of(losses, count - tail, count);
    double var = 0.0;
    for (size_t i = count - tail; i < count; ++i) var += (losses[i] - mean) * (losses[i] - mean);
    log.metric("loss_tail_mean", mean);
    log.metric("loss_tail_range", *hi - *lo);
    log.metric("loss_tail_std", std::sqrt(var / static_cast<double>(tail)));
  }

  const std::string what = fmt::format("cayley_sgd {} steps lr {} {}", steps, o_.sgd.lr, schedule_name(o_.sgd.schedule));
  if (o_.kronecker)
    return std::make_unique<KroneckerRotation>(result[0], result[1],
                                               fmt::format("{} R1({}) x R2({})", what, n1, n2));
  return std::make_unique<DenseRotation>(result[0], what);
}

}  // namespace

void register_cayley_sgd(MethodRegistry& registry) {
  registry.add("cayley_sgd",
               "SpinQuant baseline: Cayley SGD on the Stiefel manifold with a straight-through "
               "estimator, minimizing the site's W4A4 output error",
               [](ConfigReader& options) { return std::make_unique<CayleySgdMethod>(parse_options(options)); });
}

}  // namespace sqlab
