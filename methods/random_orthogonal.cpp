// random_orthogonal: a Haar-random rotation (QR of a Gaussian matrix with sign fix),
// seeded per run and site. The baseline that shows how much any rotation helps.
#include "core/method.h"
#include "core/random.h"
#include "rotations/dense.h"

namespace sqlab {
namespace {

class RandomOrthogonalMethod : public RotationMethod {
 public:
  bool reads_weights() const override { return false; }
  bool reads_activations() const override { return false; }  // the width alone
  RotationPtr fit(const FitContext& context) const override {
    const int64_t n = context.site.X.size(1);
    at::Generator generator = make_generator(context.seed, "random_orthogonal/" + context.site.name);
    return std::make_unique<DenseRotation>(random_orthogonal_matrix(n, generator),
                                           "random_orthogonal");
  }
};

}  // namespace

void register_random_orthogonal(MethodRegistry& registry) {
  registry.add("random_orthogonal", "Haar-random orthogonal rotation (seeded QR with sign fix)",
               [](ConfigReader&) { return std::make_unique<RandomOrthogonalMethod>(); });
}

}  // namespace sqlab
