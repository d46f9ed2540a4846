// duquant: DuQuant (Lin et al. 2024, arXiv 2406.01721; method-notes.md section 8).
// T = S R_1 P R_2: an optional SmoothQuant scaling S (smooth_alpha, 0 turns it off), a
// greedy block-diagonal rotation R_1 built from the activation outliers of each block, a
// zigzag permutation P that deals the channels (by decreasing max |x|) to the blocks so
// each block gets a fair share of the outliers, and a second greedy block rotation R_2.
// Each part is fitted on the activations transformed by the parts before it, and stays
// in its fast form (diagonal, block matmuls, gather).
#include "methods/duquant.h"
#include "rotations/dense.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <vector>

#include "core/method.h"
#include "core/random.h"
#include "rotations/block_rotation.h"
#include "rotations/hadamard.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/scaling.h"

namespace sqlab {

at::Tensor uniform_first_row_matrix(int64_t b) {
  int64_t m = 0, pow2 = 0;
  if (hadamard_split(b, &m, &pow2)) return hadamard_matrix(b);
  at::Tensor v = -at::full({b}, 1.0 / std::sqrt(static_cast<double>(b)), at::kDouble);
  v[0] += 1.0;  // v = e_0 - u: the reflection I - 2 v v^T / (v^T v) swaps e_0 and u
  const double norm2 = v.dot(v).item<double>();
  at::Tensor h = at::eye(b, at::kDouble);
  if (norm2 > 0) h -= at::outer(v, v) * (2.0 / norm2);
  return h;
}

at::Tensor zigzag_permutation(const at::Tensor& channel_absmax, int64_t block_size) {
  const int64_t n = channel_absmax.numel();
  if (block_size <= 0 || n % block_size != 0)
    throw Error(fmt::format("duquant: block size {} does not divide the width {}", block_size, n));
  const int64_t blocks = n / block_size;
  // On the CPU: the permutation is read below and kept there (data.device: cuda).
  const at::Tensor values = channel_absmax.to(at::kCPU, at::kDouble).reshape({-1});
  const at::Tensor order = std::get<1>(at::sort(values, /*stable=*/true, 0, /*descending=*/true)).contiguous();
  const int64_t* ranked = order.data_ptr<int64_t>();
  std::vector<int64_t> filled(blocks, 0);
  at::Tensor source = at::empty({n}, at::kLong);
  int64_t* out = source.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t phase = r % (2 * blocks);
    const int64_t block = phase < blocks ? phase : 2 * blocks - 1 - phase;
    out[block * block_size + filled[block]++] = ranked[r];
  }
  return source;
}

namespace {

// E_d R~ Q E_d for one block: R~ Q with rows and columns 0 and d swapped.
at::Tensor greedy_step_matrix(const at::Tensor& uniform, int64_t d, at::Generator& generator) {
  const int64_t b = uniform.size(0);
  at::Tensor q = at::eye(b, at::kDouble);
  if (b > 1) q.slice(0, 1, b).slice(1, 1, b).copy_(random_orthogonal_matrix(b - 1, generator));
  const at::Tensor a = uniform.matmul(q);
  at::Tensor swap = at::arange(b, at::kLong);
  swap[0] = d;
  swap[d] = 0;
  return a.index_select(0, swap).index_select(1, swap);
}

}  // namespace

at::Tensor greedy_block_rotation(const at::Tensor& x, int64_t block_size, int64_t steps, at::Generator generator) {
  const int64_t tokens = x.size(0), n = x.size(1);
  if (block_size <= 0 || n % block_size != 0)
    throw Error(fmt::format("duquant: block size {} does not divide the width {}", block_size, n));
  const int64_t blocks = n / block_size;
  const at::ScalarType work = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor y = x.to(work).reshape({tokens, blocks, block_size}).transpose(0, 1).contiguous();  // K x T x b
  const at::Tensor uniform = uniform_first_row_matrix(block_size);
  at::Tensor product = at::eye(block_size, at::kDouble).expand({blocks, block_size, block_size}).contiguous();
  at::Tensor best = product.clone();
  // y stays on x's device (data.device: cuda); the block matrices and the per-block
  // statistics that choose them are on the CPU, where the rotation is built.
  at::Tensor best_max = y.abs().amax({1, 2}).to(at::kCPU, at::kDouble);
  for (int64_t step = 0; step < steps; ++step) {
    const at::Tensor outlier = y.abs().amax(1).argmax(1).to(at::kCPU).contiguous();  // K: channel d per block
    std::vector<at::Tensor> mats;
    for (int64_t k = 0; k < blocks; ++k)
      mats.push_back(greedy_step_matrix(uniform, outlier.data_ptr<int64_t>()[k], generator));
    const at::Tensor m = at::stack(mats);
    y = at::bmm(y, m.to(y.device(), work));
    product = at::bmm(product, m);
    const at::Tensor block_max = y.abs().amax({1, 2}).to(at::kCPU, at::kDouble);
    const at::Tensor better = block_max < best_max;
    best = at::where(better.reshape({blocks, 1, 1}), product, best);
    best_max = at::minimum(block_max, best_max);
  }
  return best;
}

namespace {

struct DuQuantOptions {
  int64_t block_size = 128;
  int64_t greedy_steps = 16;
  double smooth_alpha = 0.5;
  bool zigzag = true;
};

class DuQuantMethod : public RotationMethod {
 public:
  explicit DuQuantMethod(DuQuantOptions o) : o_(o) {}

  RotationPtr fit(const FitContext& context) const override {
    const Site& site = context.site;
    const int64_t n = site.X.size(1);
    const int64_t b = block_size_for(n);
    at::Generator generator = make_generator(context.seed, "duquant/" + site.name);
    std::vector<RotationPtr> parts;
    at::Tensor x = site.X;
    auto add = [&](RotationPtr part, const char* stage) {
      x = part->apply(x);
      context.log.metric(std::string("duquant_absmax_after_") + stage, x.abs().max().item<double>());
      parts.push_back(std::move(part));
    };
    if (o_.smooth_alpha > 0)
      // Scales to the CPU (data.device: cuda): the rotation keeps its parameters there.
      add(std::make_unique<DiagonalScaling>(smoothing_scales(site.X, site.W, o_.smooth_alpha).to(at::kCPU),
                                            "duquant_smooth"),
          "smooth");
    add(std::make_unique<BlockDiagonalRotation>(greedy_block_rotation(x, b, o_.greedy_steps, generator), "duquant_r1"), "r1");
    if (o_.zigzag && n / b > 1)
      add(std::make_unique<PermutationRotation>(zigzag_permutation(x.abs().amax(0), b), "duquant_zigzag"), "permutation");
    add(std::make_unique<BlockDiagonalRotation>(greedy_block_rotation(x, b, o_.greedy_steps, generator), "duquant_r2"), "r2");
    context.log.metric("duquant_block_size", static_cast<double>(b));
    RotationPtr chain = std::move(parts.front());
    for (size_t i = 1; i < parts.size(); ++i)
      chain = std::make_unique<ComposedRotation>(std::move(chain), std::move(parts[i]));
    return chain;
  }

 private:
  // The largest divisor of n not above block_size: a site narrower than a block is one
  // block, and a width such as 172 (stories260K's MLP) still tiles (blocks of 86).
  int64_t block_size_for(int64_t n) const {
    for (int64_t b = std::min(o_.block_size, n); b > 1; --b)
      if (n % b == 0) return b;
    return 1;
  }
  DuQuantOptions o_;
};

}  // namespace

void register_duquant(MethodRegistry& registry) {
  registry.add("duquant", "DuQuant: smoothing, greedy block rotations around a zigzag permutation",
               [](ConfigReader& options) {
                 DuQuantOptions o;
                 o.block_size = options.get<int64_t>("block_size", o.block_size);
                 if (o.block_size < 1) options.fail("block_size", "must be positive");
                 o.greedy_steps = options.get<int64_t>("greedy_steps", o.greedy_steps);
                 if (o.greedy_steps < 0) options.fail("greedy_steps", "must be >= 0");
                 o.smooth_alpha = options.get<double>("smooth_alpha", o.smooth_alpha);
                 if (!(o.smooth_alpha >= 0.0 && o.smooth_alpha <= 1.0)) options.fail("smooth_alpha", "must be in [0, 1] (0: no smoothing)");
                 o.zigzag = options.choice("permutation", "zigzag", {"zigzag", "none"}) == "zigzag";
                 return std::make_unique<DuQuantMethod>(o);
               });
}

}  // namespace sqlab
