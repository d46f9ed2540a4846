// cayley_sgd: the SpinQuant baseline at site level. Learns an orthogonal R (dense n x n,
// or Kronecker factors R1 (x) R2 learned jointly) by Cayley SGD on the Stiefel manifold
// (rotations/stiefel.h), minimizing the W4A4 output error of the site through the
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
//   rounding: quant|ste|smooth (quant: as quant.rounding says)
// The learning-rate schedule counts `steps`. Rounding `smooth` (quant.rounding, or this
// method's own `rounding` so that one experiment can hold the STE run and the smooth
// control next to single-pass methods) trains on the smooth surrogate of rounding; the
// evaluation always rounds.
//
// Traces per step t (R_t: the rotation before step t): loss (at R_t), grad_norm (the
// Riemannian ||G R^T - R G^T||_F at R_t), euclid_grad_norm (||G||_F), lr (scheduled),
// step_size (min(lr, 1 / ||A||_1)), orth_error (||R R^T - I||_F of R_{t+1}; summed over
// factors in squares), and with smooth rounding quant_loss (the loss at R_t with real
// rounding, same tokens). The returned R is re-orthonormalized (QR, sign fix) in float64 so
// it is orthogonal to rounding error; orth_error_before_fix records how far it was.
//
// Metrics: initial_loss, best_loss / best_step (traced losses and the returned R's),
// final_loss (the returned R, all tokens, training rounding), final_quant_loss (the same with
// real rounding: the evaluation's rel_output_error squared), step_seconds, grad_norm_first /
// grad_norm_last / grad_norm_ratio (Riemannian norm, mean over the first / last
// min(100, steps / 2) steps), loss_tail_mean / loss_tail_range / loss_tail_std (last
// min(500, steps / 2) steps), smooth_rounding, n1 / n2, and every option as opt_* (choices
// as 0-based indices into the lists above), because defaults are not in the stored config.
#include "methods/cayley_sgd.h"
#include "core/torch_compat.h"
#include "rotations/dense.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "core/config.h"
#include "core/method.h"
#include "core/random.h"
#include "core/system.h"
#include "methods/options.h"
#include "rotations/hadamard.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/kronecker.h"
#include "rotations/stiefel.h"

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
const std::vector<std::string> kScheduleChoices{"linear", "constant", "cosine"};  // as listed above

struct CayleyMethodOptions {
  CayleySGDOptions sgd;
  Init init = Init::random_hadamard;
  bool kronecker = false;
  int64_t n1 = 0, n2 = 0;  // 0: auto
  std::string kronecker_where;
  int64_t batch_tokens = 0;
  bool float64 = false;
  bool keep_best = false;
  std::string rounding = "quant";
};

int index_of(const std::string& value, const std::vector<std::string>& choices) {
  return static_cast<int>(std::find(choices.begin(), choices.end(), value) - choices.begin());
}

void parse_kronecker(ConfigReader& reader, CayleyMethodOptions& o) {
  o.kronecker_where = reader.where("kronecker");
  std::tie(o.n1, o.n2) = parse_kronecker_option(reader, "kronecker");
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
  o.rounding = reader.choice("rounding", "quant", {"quant", "ste", "smooth"});
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

// x R for R = factors[0] (dense) or R1 (x) R2 = factors[0] (x) factors[1]: x R =
// vec(R1^T M R2), M = x.reshape(n1, n2) (rotations/kronecker.h). Differentiable.
at::Tensor rotate(const at::Tensor& x, const std::vector<at::Tensor>& factors) {
  if (factors.size() == 1) return at::mm(x, factors[0]);
  const int64_t n1 = factors[0].size(0), n2 = factors[1].size(0);
  return at::matmul(at::matmul(factors[0].t(), x.reshape({-1, n1, n2})), factors[1]).reshape({-1, n1 * n2});
}

// The site in the training precision, with its reference output Y = X W^T.
struct Problem {
  at::Tensor X, W, Y;
  QuantConfig quant;

  at::Tensor loss(const at::Tensor& x, const at::Tensor& y, const std::vector<at::Tensor>& factors) const {
    return quantized_output_loss(rotate(x, factors), rotate(W, factors), y, quant);
  }
};

struct Trajectory {
  std::vector<double> loss, grad_norm;
  std::vector<at::Tensor> best;  // keep: best only
  double best_loss = std::numeric_limits<double>::infinity();
  int64_t best_step = -1;
  double seconds = 0.0;
};

// The Riemannian gradient norm over the last w steps relative to the first w
// (w = min(100, steps / 2)), and the loss's spread over the last min(500, steps / 2): the
// oscillation figure's numbers.
void record_convergence(FitLog& log, const Trajectory& t) {
  const size_t count = t.loss.size();
  if (count < 2) return;
  const size_t w = std::min<size_t>(100, count / 2);
  const double first = mean_of(t.grad_norm, 0, w), last = mean_of(t.grad_norm, count - w, count);
  log.metric("grad_norm_first", first);
  log.metric("grad_norm_last", last);
  log.metric("grad_norm_ratio", first > 0 ? last / first : std::numeric_limits<double>::quiet_NaN());
  const size_t tail = std::min<size_t>(500, count / 2);
  const auto [lo, hi] = std::minmax_element(t.loss.end() - tail, t.loss.end());
  const double mean = mean_of(t.loss, count - tail, count);
  double var = 0.0;
  for (size_t i = count - tail; i < count; ++i) var += (t.loss[i] - mean) * (t.loss[i] - mean);
  log.metric("loss_tail_mean", mean);
  log.metric("loss_tail_range", *hi - *lo);
  log.metric("loss_tail_std", std::sqrt(var / static_cast<double>(tail)));
}

class CayleySgdMethod : public RotationMethod {
 public:
  explicit CayleySgdMethod(CayleyMethodOptions options) : o_(std::move(options)) {}
  RotationPtr fit(const FitContext& context) const override;

 private:
  std::pair<int64_t, int64_t> factorization(int64_t n) const;
  at::Tensor initial(int64_t m, const FitContext& context, const std::string& which) const;
  void record_options(FitLog& log, int64_t n1, int64_t n2) const;
  Trajectory train(const Problem& problem, std::vector<at::Tensor>& params,
                   const FitContext& context) const;

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
  try {
    return balanced_factorization(n, acceptable);
  } catch (const Error& e) {
    throw config_error(fmt::format("{}: auto{}: {}", o_.kronecker_where,
                                   need_hadamard ? " (init random_hadamard needs Hadamard matrices of both orders)" : "",
                                   e.what()));
  }
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
  log.metric("opt_rounding", index_of(o_.rounding, {"quant", "ste", "smooth"}));
  if (o_.kronecker) {
    log.metric("n1", static_cast<double>(n1));
    log.metric("n2", static_cast<double>(n2));
  }
}

Trajectory CayleySgdMethod::train(const Problem& problem, std::vector<at::Tensor>& params,
                                  const FitContext& context) const {
  const std::string& site = context.site.name;
  const int64_t tokens = problem.X.size(0);
  const bool batched = o_.batch_tokens > 0 && o_.batch_tokens < tokens;
  at::Generator batch_generator = make_generator(context.seed, "cayley_sgd/" + site + "/batches");
  CayleySGD optimizer(o_.sgd, derive_seed(context.seed, "cayley_sgd/" + site + "/reorth"));
  FitLog& log = context.log;
  const bool smooth = problem.quant.act.rounding == Rounding::smooth || problem.quant.weight.rounding == Rounding::smooth;
  Problem rounded = problem;
  rounded.quant.act.rounding = rounded.quant.weight.rounding = Rounding::ste;
  Trajectory t;
  const double start = now_seconds();
  for (int64_t step = 0; step < o_.sgd.total_steps; ++step) {
    throw_if_interrupted();
    at::Tensor x = problem.X, y = problem.Y;
    if (batched) {
      // Drawn on the CPU (a CPU generator; the same batches as on the CPU), indexing on X's
      // device (data.device: cuda).
      const at::Tensor rows =
          at::randperm(tokens, batch_generator, at::kLong).narrow(0, 0, o_.batch_tokens).to(x.device());
      x = x.index_select(0, rows);
      y = y.index_select(0, rows);
    }
    const at::Tensor loss = problem.loss(x, y, params);
    loss.backward();
    std::vector<at::Tensor> grads;
    for (const at::Tensor& p : params) {
      grads.push_back(p.grad());
      p.mutable_grad() = at::Tensor();
    }
    const double value = loss.item<double>();
    if (!std::isfinite(value))
      throw Error(fmt::format("cayley_sgd: the loss is not finite at step {} (lr {} too large?)", step,
                              optimizer.current_lr()));
    if (value < t.best_loss) {
      t.best_loss = value;
      t.best_step = step;
      if (o_.keep_best) {
        t.best.clear();
        for (const at::Tensor& p : params) t.best.push_back(p.detach().clone());
      }
    }
    if (smooth) {
      // The smooth control's R_t under real rounding, on the same tokens.
      at::NoGradGuard no_grad;
      log.trace("quant_loss", step, rounded.loss(x, y, params).item<double>());
    }
    const CayleyStepStats stats = optimizer.step(params, grads);
    t.loss.push_back(value);
    t.grad_norm.push_back(stats.grad_norm);
    trace_cayley_step(log, step, value, stats);
  }
  t.seconds = now_seconds() - start;
  return t;
}

RotationPtr CayleySgdMethod::fit(const FitContext& context) const {
  const Site& site = context.site;
  const int64_t n = site.X.size(1);
  const at::ScalarType dtype = o_.float64 ? at::kDouble : at::kFloat;
  FitLog& log = context.log;

  Problem problem;
  problem.quant = context.quant;
  if (o_.rounding != "quant")
    problem.quant.act.rounding = problem.quant.weight.rounding =
        o_.rounding == "smooth" ? Rounding::smooth : Rounding::ste;
  {
    at::NoGradGuard no_grad;
    problem.X = site.X.to(dtype).contiguous();
    problem.W = site.W.to(dtype).contiguous();
    problem.Y = at::mm(site.X.to(at::kDouble), site.W.to(at::kDouble).t()).to(dtype);
  }

  // Parameters: R (n x n), or R1 (n1 x n1) and R2 (n2 x n2).
  int64_t n1 = n, n2 = 1;
  std::vector<at::Tensor> params;
  if (o_.kronecker) {
    std::tie(n1, n2) = factorization(n);
    params = {initial(n1, context, "R1"), initial(n2, context, "R2")};
  } else {
    params = {initial(n, context, "R")};
  }
  // The initial factors are built on the CPU; the training multiplies X by them every step,
  // so it runs on X's device (data.device: cuda).
  for (at::Tensor& p : params) p = p.to(problem.X.device(), dtype).clone().set_requires_grad(true);
  record_options(log, n1, n2);
  log.metric("smooth_rounding", problem.quant.act.rounding == Rounding::smooth);

  Trajectory t = train(problem, params, context);

  // The result: the final (or best) R, re-orthonormalized in float64.
  std::vector<at::Tensor> result;
  double orth_sq = 0.0;
  for (const at::Tensor& p : o_.keep_best && !t.best.empty() ? t.best : params) {
    // Back to the CPU (data.device: cuda): the rotation is built there.
    const at::Tensor r64 = p.detach().to(at::kCPU, at::kDouble);
    orth_sq += std::pow(orthogonality_error(r64), 2);
    result.push_back(qr_orthonormalize_rows(r64));
  }

  // Its loss on all tokens: with the training rounding, and with round-to-nearest (what
  // the evaluation measures; the same thing for the STE).
  {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> factors;
    for (const at::Tensor& r : result) factors.push_back(r.to(problem.X.device(), dtype));
    const double final_loss = problem.loss(problem.X, problem.Y, factors).item<double>();
    Problem rtn = problem;
    rtn.quant.act.rounding = rtn.quant.weight.rounding = Rounding::ste;
    const bool ste = problem.quant.act.rounding == Rounding::ste && problem.quant.weight.rounding == Rounding::ste;
    log.metric("final_loss", final_loss);
    log.metric("final_quant_loss", ste ? final_loss : rtn.loss(problem.X, problem.Y, factors).item<double>());
    const bool batched = o_.batch_tokens > 0 && o_.batch_tokens < problem.X.size(0);
    if (!batched && final_loss < t.best_loss) {
      t.best_loss = final_loss;
      t.best_step = o_.sgd.total_steps;
    }
  }
  log.metric("initial_loss", t.loss.empty() ? std::numeric_limits<double>::quiet_NaN() : t.loss.front());
  log.metric("best_loss", t.best_loss);
  log.metric("best_step", static_cast<double>(t.best_step));
  log.metric("orth_error_before_fix", std::sqrt(orth_sq));
  log.metric("step_seconds", t.loss.empty() ? 0.0 : t.seconds / static_cast<double>(t.loss.size()));
  record_convergence(log, t);

  const std::string what = fmt::format("cayley_sgd {} steps lr {} {}", o_.sgd.total_steps, o_.sgd.lr,
                                       schedule_name(o_.sgd.schedule));
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
