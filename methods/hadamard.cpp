// hadamard: the QuaRot baseline, a normalized Hadamard rotation of order n = 2^k * m
// (rotations/hadamard.h), by default with random signs R = diag(s) H (QuaRot's "random Hadamard").
// The signs are seeded per run and site.
//
// A width with no Hadamard matrix sqlab can build (rotations/hadamard_matrices.h lists the
// base orders) is a configuration error unless the entry names a fallback, never a silent
// dense random matrix:
//   fallback: block            block-diagonal, n / a blocks diag(s_i) H_a / sqrt(a), a the
//                              largest divisor of n with a Hadamard matrix (QuaRot's authors'
//                              suggestion for such widths);
//   fallback: kronecker_random Q_b (x) diag(s) H_a / sqrt(a), Q_b a seeded random orthogonal
//                              matrix of order b = n / a.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/method.h"
#include "core/random.h"
#include "rotations/block_rotation.h"
#include "rotations/hadamard.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/kronecker.h"

namespace sqlab {
namespace {

bool has_hadamard(int64_t n) {
  int64_t m = 0, pow2 = 0;
  return hadamard_split(n, &m, &pow2);
}

// The largest divisor of n that has a Hadamard matrix (at least 1).
int64_t largest_hadamard_divisor(int64_t n) {
  for (int64_t d = n; d > 1; --d)
    if (n % d == 0 && has_hadamard(d)) return d;
  return 1;
}

class HadamardMethod : public RotationMethod {
 public:
  HadamardMethod(bool random_signs, std::string fallback, std::string where)
      : random_signs_(random_signs), fallback_(std::move(fallback)), where_(std::move(where)) {}

  bool reads_weights() const override { return false; }
  bool reads_activations() const override { return false; }  // the width alone
  RotationPtr fit(const FitContext& context) const override {
    const int64_t n = context.site.X.size(1);
    const std::string stream = "hadamard/" + context.site.name;
    at::Tensor signs;
    if (random_signs_) signs = random_signs(n, make_generator(context.seed, stream));
    if (has_hadamard(n) || fallback_ == "none") return std::make_unique<HadamardRotation>(n, signs);

    const int64_t a = largest_hadamard_divisor(n), b = n / a;
    context.log.metric("hadamard_fallback_order", static_cast<double>(a));
    context.log.warn(fmt::format("hadamard: no Hadamard matrix of order {} (site {}); fallback {}: Hadamard factor "
                                 "of order {} x {}", n, context.site.name, fallback_, a, b));
    if (fallback_ == "block") {
      // Block i = diag(s_i) H_a / sqrt(a): the signs of its channels, then the Hadamard.
      at::Tensor h = hadamard_matrix(a).unsqueeze(0).repeat({b, 1, 1});
      if (signs.defined()) h = signs.to(at::kDouble).view({b, a, 1}) * h;
      return std::make_unique<BlockDiagonalRotation>(h, fmt::format("block-diagonal {} x Hadamard({})", b, a));
    }
    at::Tensor h = hadamard_matrix(a);
    if (signs.defined()) h = signs.narrow(0, 0, a).to(at::kDouble).view({a, 1}) * h;
    return std::make_unique<KroneckerRotation>(random_orthogonal_matrix(b, make_generator(context.seed, stream + "/q")),
                                               h);
  }

  // No Hadamard matrix of order n and no fallback: a config error naming the width and the options.
  void check_width(int64_t n) const override {
    if (has_hadamard(n) || fallback_ != "none") return;
    try {
      hadamard_base_matrix(n);
    } catch (const Error& e) {
      const int64_t a = largest_hadamard_divisor(n);
      throw config_error(fmt::format(
          "{}: {}; for width {} set `fallback: block` (block-diagonal, {} blocks of Hadamard({})) or "
          "`fallback: kronecker_random` (a random orthogonal {} x {} (x) Hadamard({}))",
          where_, e.what(), n, n / a, a, n / a, n / a, a));
    }
  }

 private:
  bool random_signs_;
  std::string fallback_;
  std::string where_;  // file:line: methods.LABEL.method, for errors
};

}  // namespace

void register_hadamard(MethodRegistry& registry) {
  registry.add("hadamard", "normalized Hadamard of order 2^k*m (QuaRot), optional random signs",
               [](ConfigReader& options) {
                 const bool signs = options.get<bool>("random_signs", true);
                 const std::string fallback = options.choice("fallback", "none", {"none", "block", "kronecker_random"});
                 return std::make_unique<HadamardMethod>(signs, fallback, options.where("method"));
               });
}

}  // namespace sqlab
