// smoothquant: SmoothQuant (Xiao et al. 2023; method-notes.md section 8). Per-channel
// scales s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) migrate the activation outliers into
// the weights: X -> X diag(s)^-1, W -> W diag(s). Invertible, not orthogonal
// (rotations/scaling.h), so it is exact without quantization but changes the weights' range.
#include <fmt/format.h>

#include "core/method.h"
#include "rotations/scaling.h"

namespace sqlab {
namespace {

class SmoothQuantMethod : public RotationMethod {
 public:
  explicit SmoothQuantMethod(double alpha) : alpha_(alpha) {}

  RotationPtr fit(const FitContext& context) const override {
    // To the CPU (data.device: cuda): the rotation keeps its parameters there.
    const at::Tensor scales = smoothing_scales(context.site.X, context.site.W, alpha_).to(at::kCPU);
    context.log.metric("smooth_scale_max", scales.max().item<double>());
    context.log.metric("smooth_scale_min", scales.min().item<double>());
    return std::make_unique<DiagonalScaling>(scales, fmt::format("smoothquant(alpha={})", alpha_));
  }

 private:
  double alpha_;
};

}  // namespace

void register_smoothquant(MethodRegistry& registry) {
  registry.add("smoothquant", "SmoothQuant per-channel scaling s = max|X|^alpha / max|W|^(1-alpha) (not orthogonal)",
               [](ConfigReader& options) {
                 const double alpha = options.get<double>("alpha", 0.5);
                 if (!(alpha >= 0.0 && alpha <= 1.0)) options.fail("alpha", "must be in [0, 1]");
                 return std::make_unique<SmoothQuantMethod>(alpha);
               });
}

}  // namespace sqlab
