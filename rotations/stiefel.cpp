#include "rotations/stiefel.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/torch_compat.h"

namespace sqlab {

const char* schedule_name(LrSchedule schedule) {
  switch (schedule) {
    case LrSchedule::constant: return "constant";
    case LrSchedule::linear: return "linear";
    case LrSchedule::cosine: return "cosine";
  }
  return "?";
}

double scheduled_lr(LrSchedule schedule, double lr, int64_t step, int64_t total) {
  if (total <= 0) return lr;
  const double progress = std::min(1.0, std::max(0.0, static_cast<double>(step) / static_cast<double>(total)));
  switch (schedule) {
    case LrSchedule::constant: return lr;
    case LrSchedule::linear: return lr * (1.0 - progress);
    case LrSchedule::cosine: return lr * 0.5 * (1.0 + std::cos(M_PI * progress));
  }
  return lr;
}

at::Tensor qr_orthonormalize_rows(const at::Tensor& R) {
  at::NoGradGuard no_grad;
  auto [q, r] = at::linalg_qr(R.t());  // R^T = Q T: the columns of Q span R's rows
  const at::Tensor signs = at::where(r.diagonal() < 0, -at::ones_like(r.diagonal()), at::ones_like(r.diagonal()));
  return (q * signs.unsqueeze(0)).t().contiguous();
}

double orthogonality_error(const at::Tensor& R) {
  at::NoGradGuard no_grad;
  const at::Tensor gram = at::mm(R, R.t());
  return (gram - at::eye(R.size(0), R.options())).norm().item<double>();
}

CayleySGD::CayleySGD(CayleySGDOptions options, uint64_t seed)
    : options_(options), rng_(seed ^ 0x5347444755ull) {}

double CayleySGD::current_lr() const {
  return scheduled_lr(options_.schedule, options_.lr, step_, options_.total_steps);
}

CayleyStepStats CayleySGD::step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads) {
  if (params.size() != grads.size())
    throw Error(fmt::format("cayley_sgd: {} parameters but {} gradients", params.size(), grads.size()));
  at::NoGradGuard no_grad;
  if (buffers_.empty()) buffers_.resize(params.size());
  if (buffers_.size() != params.size())
    throw Error("cayley_sgd: the number of parameters changed between steps");

  CayleyStepStats stats;
  stats.step = step_;
  stats.lr = current_lr();

  // The Euclidean gradient norm (before clipping) and the clipping factor.
  double euclid_sq = 0.0, riemann_sq = 0.0;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& R = params[i];
    const at::Tensor& G = grads[i];
    if (R.dim() != 2 || !G.defined() || G.sizes() != R.sizes() || R.size(0) > R.size(1))
      throw Error(fmt::format("cayley_sgd: parameter {} must be p x n with p <= n and a gradient of its shape", i));
    euclid_sq += G.pow(2).sum().item<double>();
  }
  stats.euclid_grad_norm = std::sqrt(euclid_sq);
  double grad_scale = 1.0;
  if (options_.grad_clip > 0.0 && stats.euclid_grad_norm > options_.grad_clip)
    grad_scale = options_.grad_clip / (stats.euclid_grad_norm + 1e-6);

  // SpinQuant draws random.randint(1, 101) == 1 per parameter; one draw per step here.
  bool reorth = options_.reorth_every > 0 && step_ > 0 && step_ % options_.reorth_every == 0;
  if (options_.random_reorth && rng_() % 101 == 0) reorth = true;
  stats.reorthonormalized = reorth;

  double orth_sq = 0.0;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor R = params[i];
    at::Tensor unity = R;
    if (options_.normalize_rows) unity = R / (R.norm(2, {1}, true) + 1e-8);
    if (reorth) unity = qr_orthonormalize_rows(unity);
    const at::Tensor Rt = unity.t();  // n x p
    at::Tensor V = grads[i].t();
    V = grad_scale == 1.0 ? -V : V * -grad_scale;
    const bool with_buffer = options_.momentum > 0.0 && buffers_[i].defined();
    if (with_buffer) V = V + options_.momentum * buffers_[i];

    const at::Tensor MX = at::mm(V, unity);                    // V R       (n x n)
    // Riemannian gradient norm ||G R^T - R G^T||_F. For square orthogonal R it equals
    // ||R^T G - G^T R||_F (conjugation by R), which is ||MX - MX^T||_F / grad_scale when V
    // is the scaled gradient alone: no extra matmul on the common path.
    if (!with_buffer && R.size(0) == R.size(1)) {
      riemann_sq += (MX - MX.t()).pow(2).sum().item<double>() / (grad_scale * grad_scale);
    } else {
      const at::Tensor rg = at::mm(grads[i], R.t());
      riemann_sq += (rg - rg.t()).pow(2).sum().item<double>();
    }
    const at::Tensor XXMX = at::mm(Rt, at::mm(unity, MX));      // R^T R V R
    const at::Tensor W_hat = MX - 0.5 * XXMX;
    const at::Tensor A = W_hat - W_hat.t();                     // skew
    const double norm_one = A.abs().sum(0).max().item<double>();
    const double a = std::min(stats.lr, 1.0 / (norm_one + 1e-8));
    stats.step_size = std::max(stats.step_size, a);

    at::Tensor Y;
    if (options_.retraction == CayleyRetraction::solve) {
      const at::Tensor eye = at::eye(A.size(0), A.options());
      const at::Tensor rhs = at::addmm(Rt, A, Rt, 1.0, 0.5 * a);  // (I + a/2 A) R^T
      Y = at::linalg_solve(eye - 0.5 * a * A, rhs);
    } else {
      Y = options_.tangent_start ? at::addmm(Rt, A, Rt, 1.0, a) : Rt + a * V;
      for (int k = 0; k < options_.fixed_point_iters; ++k) Y = at::addmm(Rt, A, Rt + Y, 1.0, 0.5 * a);
    }
    if (options_.momentum > 0.0) buffers_[i] = at::mm(A, Rt);  // B <- A R_old^T
    R.copy_(Y.t());
    const at::Tensor gram = at::mm(R, R.t());
    gram.diagonal().sub_(1.0);
    orth_sq += gram.pow(2).sum().item<double>();
  }
  stats.orth_error = std::sqrt(orth_sq);
  stats.grad_norm = std::sqrt(riemann_sq);
  ++step_;
  return stats;
}

}  // namespace sqlab
