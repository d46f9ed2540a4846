// identity: no rotation, i.e. plain round-to-nearest W4A4 (the baseline of Table 4).
#include "core/method.h"
#include "rotations/dense.h"

namespace sqlab {
namespace {

class IdentityMethod : public RotationMethod {
 public:
  bool reads_weights() const override { return false; }
  bool reads_activations() const override { return false; }  // the width alone
  RotationPtr fit(const FitContext& context) const override {
    return std::make_unique<IdentityRotation>(context.site.X.size(1));
  }
};

}  // namespace

void register_identity(MethodRegistry& registry) {
  registry.add("identity", "no rotation: plain RTN quantization",
               [](ConfigReader&) { return std::make_unique<IdentityMethod>(); });
}

}  // namespace sqlab
