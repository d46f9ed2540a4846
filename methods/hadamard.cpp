// hadamard: the QuaRot baseline, a normalized Hadamard rotation of order n = 2^k * m
// (rotations/hadamard.h), by default with random signs R = diag(s) H (QuaRot's "random Hadamard").
// The signs are seeded per run and site.
#include "core/method.h"
#include "core/random.h"
#include "rotations/hadamard.h"
#include "rotations/hadamard_matrices.h"

namespace sqlab {
namespace {

class HadamardMethod : public RotationMethod {
 public:
  HadamardMethod(bool random_signs, std::string where) : random_signs_(random_signs), where_(std::move(where)) {}

  RotationPtr fit(const FitContext& context) const override {
    const int64_t n = context.site.X.size(1);
    at::Tensor signs;
    if (random_signs_)
      signs = random_signs(n, make_generator(context.seed, "hadamard/" + context.site.name));
    return std::make_unique<HadamardRotation>(n, signs);
  }

  // No Hadamard matrix of order n: a config error listing the supported orders.
  void check_width(int64_t n) const override {
    int64_t m = 0, pow2 = 0;
    if (hadamard_split(n, &m, &pow2)) return;
    try {
      hadamard_base_matrix(n);
    } catch (const Error& e) {
      throw config_error(where_ + ": " + e.what());
    }
  }

 private:
  bool random_signs_;
  std::string where_;  // file:line: methods.LABEL.method, for errors
};

}  // namespace

void register_hadamard(MethodRegistry& registry) {
  registry.add("hadamard", "normalized Hadamard of order 2^k*m (QuaRot), optional random signs",
               [](ConfigReader& options) {
                 return std::make_unique<HadamardMethod>(options.get<bool>("random_signs", true),
                                                         options.where("method"));
               });
}

}  // namespace sqlab
