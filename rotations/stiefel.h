// Cayley SGD on the Stiefel manifold (Li, Li and Todorovic 2020), in the form SpinQuant's
// SGDG optimizer runs it (method-notes.md section 6). It takes any Euclidean gradient G
// of a loss at an orthogonal R (n x n, or p x n with p <= n, rows orthonormal), so a
// site-level loss and a model-level loss can share it.
//
// One step on a parameter R with gradient G (after optional clipping of G):
//   1. R <- R with its rows normalized (SpinQuant: always); optionally re-orthonormalize
//      the rows by QR with a sign fix (SpinQuant: with probability 1/101; or every k steps);
//   2. V = m B - G^T (B: momentum buffer, zero at first; m = momentum);
//   3. W^ = V R - 0.5 R^T (R V R);  A = W^ - W^T (skew-symmetric);
//   4. a = min(lr_t, 1 / (||A||_1 + 1e-8))  (||.||_1: the largest column sum of |A|);
//   5. fixed point:  Y = R^T + a V, then `fixed_point_iters` times Y = R^T + a A (R^T + Y) / 2
//      (Y = R^T + a A R^T at first with fixed_point_start: tangent, as in Li et al.'s
//      Algorithm 2; SpinQuant's code, and Li et al.'s, start from R^T + a V, whose normal
//      part the iterations only damp by (a ||A|| / 2)^k: ~1e-5 of orthogonality per step
//      at n = 32, less at large n);
//      solve:        Y = (I - a/2 A)^-1 (I + a/2 A) R^T (the exact Cayley transform);
//   6. R <- Y^T;  B <- A R_old^T.
// lr_t follows the schedule over `total_steps` (step t = 0, 1, ...):
//   constant: lr;  linear: lr (1 - t / T);  cosine: lr (1 + cos(pi t / T)) / 2.
// Several parameters (e.g. Kronecker factors R1, R2) are stepped together: each has its
// own buffer and step size a; they share the schedule, clipping (over their joint norm)
// and the re-orthonormalization draw.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace sqlab {


enum class LrSchedule { constant, linear, cosine };
enum class CayleyRetraction { fixed_point, solve };

struct CayleySGDOptions {
  double lr = 1.5;
  double momentum = 0.0;
  LrSchedule schedule = LrSchedule::linear;
  int64_t total_steps = 100;
  CayleyRetraction retraction = CayleyRetraction::fixed_point;
  int fixed_point_iters = 5;
  bool tangent_start = false;   // fixed_point_start: gradient (SpinQuant's code) | tangent
  double grad_clip = 0.0;       // clip the joint Euclidean norm of the gradients (0: off)
  bool normalize_rows = true;   // SpinQuant normalizes R's rows before every step
  bool random_reorth = true;    // SpinQuant: QR re-orthonormalization with probability 1/101
  int64_t reorth_every = 0;     // also re-orthonormalize before every k-th step (0: off)
};

const char* schedule_name(LrSchedule schedule);

// The scheduled learning rate at step t (0-based) of `total` steps.
double scheduled_lr(LrSchedule schedule, double lr, int64_t step, int64_t total);

// What one step did, summed over the parameters (norms: square root of the sum of squares).
struct CayleyStepStats {
  int64_t step = 0;               // 0-based index of this step
  double lr = 0.0;                // the scheduled lr_t
  double step_size = 0.0;         // a = min(lr_t, 1 / ||A||_1) (the largest over parameters)
  double euclid_grad_norm = 0.0;  // ||G||_F before clipping
  double grad_norm = 0.0;         // Riemannian ||G R^T - R G^T||_F (R: the step's start, rows
                                  // normalized; equal for orthogonal R)
  double orth_error = 0.0;        // ||R R^T - I||_F after the step
  bool reorthonormalized = false;
};

class CayleySGD {
 public:
  // `seed` drives the random re-orthonormalization draws.
  CayleySGD(CayleySGDOptions options, uint64_t seed);

  // Updates every params[i] in place (under no-grad; leaves with requires_grad are fine)
  // from grads[i] (same shape). Rows must not outnumber columns.
  CayleyStepStats step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads);
  CayleyStepStats step(const at::Tensor& param, const at::Tensor& grad) {
    return step(std::vector<at::Tensor>{param}, std::vector<at::Tensor>{grad});
  }

  double current_lr() const;
  int64_t steps_done() const { return step_; }
  const CayleySGDOptions& options() const { return options_; }

 private:
  CayleySGDOptions options_;
  std::mt19937_64 rng_;
  int64_t step_ = 0;
  std::vector<at::Tensor> buffers_;
};

// Orthonormalizes the rows of R (p x n, p <= n) by QR of R^T with the sign of R's
// diagonal moved into Q, so an already orthogonal R is returned unchanged.
at::Tensor qr_orthonormalize_rows(const at::Tensor& R);

// ||R R^T - I||_F (rows of R orthonormal: 0).
double orthogonality_error(const at::Tensor& R);

}  // namespace sqlab
