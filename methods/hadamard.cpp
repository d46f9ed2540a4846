// hadamard: the QuaRot baseline, a normalized Hadamard rotation of order n = 2^k * m
// (core/hadamard.h), by default with random signs R = diag(s) H (QuaRot's "random Hadamard").
// The signs are seeded per run and site.
#include "core/hadamard.h"
#include "core/method.h"
#include "core/random.h"

namespace sqlab {
namespace {

class HadamardMethod : public RotationMethod {
 public:
  explicit HadamardMethod(bool random_signs) : random_signs_(random_signs) {}

  RotationPtr fit(const FitContext& context) const override {
    const int64_t n = context.site.X.size(1);
    at::Tensor signs;
    if (random_signs_)
      signs = random_signs(n, make_generator(context.seed, "hadamard/" + context.site.name));
    return std::make_unique<HadamardRotation>(n, signs);
  }

 private:
  bool random_signs_;
};

}  // namespace

void register_hadamard(MethodRegistry& registry) {
  registry.add("hadamard", "normalized Hadamard of order 2^k*m (QuaRot), optional random signs",
               [](ConfigReader& options) {
                 return std::make_unique<HadamardMethod>(options.get<bool>("random_signs", true));
               });
}

}  // namespace sqlab
