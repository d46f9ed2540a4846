// urt: SingleQuant's Uniformity Rotation Transformation alone, dense on the full width n
// (method-notes.md section 5): R_U = R_map R'_map^T (Eq. 14-16) maps the per-channel
// statistic V of the calibration activations onto a target U of the same norm, with
// 2 (n - 1) Givens rotations.
#include "core/method.h"
#include "methods/art_urt.h"
#include "rotations/dense.h"

#include <ATen/ATen.h>

namespace sqlab {
namespace {

class UrtMethod : public RotationMethod {
 public:
  explicit UrtMethod(UrtOptions options) : options_(options) {}

  bool reads_weights() const override { return false; }  // X only
  RotationPtr fit(const FitContext& context) const override {
    const UrtFactor urt = build_urt_factor(context.site.X, options_);
    context.log.metric("urt_givens", static_cast<double>(urt.givens));
    return std::make_unique<DenseRotation>(urt.matrix, "urt");
  }

 private:
  UrtOptions options_;
};

}  // namespace

void register_urt(MethodRegistry& registry) {
  registry.add("urt", "SingleQuant URT alone, dense on the full width: Givens map of the channel statistic onto a target",
               [](ConfigReader& options) {
                 return std::make_unique<UrtMethod>(parse_urt_options(options));
               });
}

}  // namespace sqlab
