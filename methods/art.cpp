// art: SingleQuant's Alignment Rotation Transformation alone, dense on the full width n
// (method-notes.md section 4 with `art_axis: dense`): massive outliers are detected per
// channel against the median over channels of the per-channel max |x|, each is paired
// with the channel where its token is smallest and balanced by the Theorem 2 rotation
// (Eq. 8, 13), and the remaining channels get O (random orthogonal or identity).
#include "core/method.h"
#include "methods/art_urt.h"
#include "rotations/dense.h"

#include <ATen/ATen.h>

namespace sqlab {
namespace {

class ArtMethod : public RotationMethod {
 public:
  explicit ArtMethod(ArtOptions options) : options_(options) {}

  bool reads_weights() const override { return false; }  // X only
  RotationPtr fit(const FitContext& context) const override {
    const std::string purpose = "art/" + context.site.name;
    const ArtFactor art = build_art_factor(context.site.X, options_,
                                           context.seed, purpose);
    record_art(context.log, art, "art", "art (site " + context.site.name + ")");
    return std::make_unique<DenseRotation>(art.matrix, "art");
  }

 private:
  ArtOptions options_;
};

}  // namespace

void register_art(MethodRegistry& registry) {
  registry.add("art", "SingleQuant ART alone, dense on the full width: Theorem 2 Givens pairs for massive outliers + O",
               [](ConfigReader& options) {
                 return std::make_unique<ArtMethod>(parse_art_options(options));
               });
}

}  // namespace sqlab
