#include "quant/gptq.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/torch_compat.h"

namespace sqlab {
namespace {

// The integer grid of fake_quant (quant/quant.cpp): symmetric [-2^(b-1), 2^(b-1) - 1],
// asymmetric [0, 2^b - 1] with a rounded zero point.
struct Grid {
  double qmin;
  double qmax;
};

Grid grid_of(const QuantSpec& spec) {
  if (spec.symmetric) {
    const double half = static_cast<double>(1 << (spec.bits - 1));
    return {-half, half - 1.0};
  }
  return {0.0, static_cast<double>((1 << spec.bits) - 1)};
}

// One scale and zero point per output channel (C entries each).
struct ChannelParams {
  at::Tensor scale;
  at::Tensor zero;
};

// The same arithmetic as fake_quant: range times clip, 0 kept representable when
// asymmetric, scale 1 for an all-zero range.
ChannelParams params_from_range(at::Tensor lo, at::Tensor hi, const QuantSpec& spec, const Grid& grid) {
  lo = lo * spec.clip;
  hi = hi * spec.clip;
  ChannelParams p;
  if (spec.symmetric) {
    const at::Tensor absmax = at::maximum(lo.abs(), hi.abs());
    p.scale = at::where(absmax > 0, absmax / grid.qmax, at::ones_like(absmax));
    p.zero = at::zeros_like(p.scale);
  } else {
    lo = at::clamp_max(lo, 0.0);
    hi = at::clamp_min(hi, 0.0);
    p.scale = at::where(hi > lo, (hi - lo) / grid.qmax, at::ones_like(hi));
    p.zero = at::round(-lo / p.scale);
  }
  return p;
}

// Parameters from some columns of W, given as rows of W^T (k x C).
ChannelParams params_of_columns(const at::Tensor& columns, const QuantSpec& spec, const Grid& grid) {
  return params_from_range(columns.amin(0), columns.amax(0), spec, grid);
}

ChannelParams params_of_tensor(const at::Tensor& wt, const QuantSpec& spec, const Grid& grid) {
  const int64_t c = wt.size(1);
  return params_from_range(wt.min().expand({c}), wt.max().expand({c}), spec, grid);
}

at::Tensor quantize_column(const at::Tensor& w, const ChannelParams& p, const Grid& grid) {
  const at::Tensor q = at::clamp(at::round(w / p.scale) + p.zero, grid.qmin, grid.qmax);
  return (q - p.zero) * p.scale;
}

// The upper Cholesky factor of H^-1 (float64), after dead columns and damping.
at::Tensor inverse_hessian_factor(at::Tensor h, double damp) {
  h.diagonal().add_(damp * h.diagonal().mean());
  auto [lower, info] = at::linalg_cholesky_ex(h, false, false);
  if (info.item<int64_t>() != 0)
    throw Error(fmt::format("gptq: the damped Hessian is not positive definite (Cholesky failed at "
                            "column {}); raise quant.gptq.damp (now {}) or use more calibration tokens",
                            info.item<int64_t>(), damp));
  const at::Tensor inverse = at::cholesky_inverse(lower, false);
  auto [upper, info2] = at::linalg_cholesky_ex(inverse, true, false);
  if (info2.item<int64_t>() != 0)
    throw Error(fmt::format("gptq: the inverse Hessian is not positive definite; raise quant.gptq.damp (now {})", damp));
  return upper;
}

void check_inputs(const at::Tensor& w, const at::Tensor& hessian, const QuantSpec& spec) {
  if (w.dim() != 2 || w.numel() == 0)
    throw Error(fmt::format("gptq: expected a non-empty 2-D weight, got [{}]", fmt::join(w.sizes(), ", ")));
  if (hessian.dim() != 2 || hessian.size(0) != w.size(1) || hessian.size(1) != w.size(1))
    throw Error(fmt::format("gptq: the Hessian [{}] does not match a weight with {} input features",
                            fmt::join(hessian.sizes(), ", "), w.size(1)));
  if (spec.granularity == Granularity::per_group && (spec.group_size <= 0 || w.size(1) % spec.group_size != 0))
    throw Error(fmt::format("gptq: group size {} does not divide the row length {}", spec.group_size, w.size(1)));
}

// The quantization loop over columns of W, stored as rows of wt = W^T (n x C) in the
// order they are quantized.
class GptqLoop {
 public:
  GptqLoop(at::Tensor wt, at::Tensor hinv, const QuantSpec& spec, const GptqOptions& options)
      : wt_(std::move(wt)), hinv_(std::move(hinv)), spec_(spec), options_(options), grid_(grid_of(spec)) {}

  // Fixed parameters: one set for every column (per_row, per_tensor), or one per
  // original group together with each quantized column's group (static groups).
  void use_fixed(ChannelParams params) { current_ = std::move(params); }
  void use_static_groups(std::vector<ChannelParams> groups, std::vector<int64_t> group_of_column) {
    static_groups_ = std::move(groups);
    group_of_column_ = std::move(group_of_column);
  }

  at::Tensor run() {
    const int64_t n = wt_.size(0);
    at::Tensor q = at::empty_like(wt_);
    for (int64_t i1 = 0; i1 < n; i1 += options_.block_size) {
      const int64_t i2 = std::min(i1 + options_.block_size, n);
      at::Tensor err = quantize_block(i1, i2, q);
      // Lazy batch update: the block's errors reach every later column at once.
      if (i2 < n) wt_.slice(0, i2, n).addmm_(hinv_.slice(0, i1, i2).slice(1, i2, n).t(), err, 1.0, -1.0);
    }
    return q;
  }

 private:
  at::Tensor quantize_block(int64_t i1, int64_t i2, at::Tensor& q) {
    const int64_t count = i2 - i1;
    at::Tensor block = wt_.slice(0, i1, i2).clone();
    at::Tensor err = at::zeros_like(block);
    const at::Tensor hinv_block = hinv_.slice(0, i1, i2).slice(1, i1, i2);
    for (int64_t i = 0; i < count; ++i) {
      select_params(i1 + i, i1, i2, block, err);
      const at::Tensor w = block[i];
      const at::Tensor quantized = quantize_column(w, current_, grid_);
      q[i1 + i].copy_(quantized);
      const at::Tensor e = (w - quantized) / hinv_block[i][i];
      err[i].copy_(e);
      if (i + 1 < count) block.slice(0, i + 1, count).addr_(hinv_block[i].slice(0, i + 1, count), e, 1.0, -1.0);
    }
    return err;
  }

  // Per-group parameters when column `col` starts a group: from the group's current
  // weights, i.e. with the updates of every column before `col` (the block's rows are
  // current; rows past the block still miss this block's errors, added here).
  void select_params(int64_t col, int64_t i1, int64_t i2, const at::Tensor& block, const at::Tensor& err) {
    if (spec_.granularity != Granularity::per_group) return;
    if (!static_groups_.empty()) {
      current_ = static_groups_[group_of_column_[col]];
      return;
    }
    if (col % spec_.group_size != 0) return;
    const int64_t end = std::min(col + spec_.group_size, wt_.size(0));
    at::Tensor columns = block.slice(0, col - i1, std::min(end, i2) - i1);
    if (end > i2) {
      const at::Tensor later = wt_.slice(0, i2, end) - hinv_.slice(0, i1, i2).slice(1, i2, end).t().matmul(err);
      columns = at::cat({columns, later}, 0);
    }
    current_ = params_of_columns(columns, spec_, grid_);
  }

  at::Tensor wt_, hinv_;
  const QuantSpec& spec_;
  const GptqOptions& options_;
  Grid grid_;
  ChannelParams current_;
  std::vector<ChannelParams> static_groups_;
  std::vector<int64_t> group_of_column_;
};

}  // namespace

at::Tensor gptq_hessian(const at::Tensor& x) {
  if (x.dim() != 2 || x.size(0) == 0)
    throw Error(fmt::format("gptq: expected calibration activations T x n, got [{}]", fmt::join(x.sizes(), ", ")));
  // float32 products for float32 data (fast); the sum over tokens is what matters.
  const at::Tensor h = at::matmul(x.t(), x).to(at::kDouble);
  return h * (2.0 / static_cast<double>(x.size(0)));
}

at::Tensor gptq_quantize(const at::Tensor& w, const at::Tensor& hessian, const QuantSpec& spec,
                         const GptqOptions& options) {
  check_inputs(w, hessian, spec);
  if (!spec.enabled()) return w;
  at::NoGradGuard no_grad;
  const at::ScalarType work = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Grid grid = grid_of(spec);
  at::Tensor wt = w.to(work).t().contiguous();  // n x C: row i is column i of W
  // On w's device: a Hessian accumulated elsewhere (the CPU) meets W's columns below.
  at::Tensor h = hessian.to(w.device(), at::kDouble).clone();

  // Per-channel (and per-tensor) scales from the original row, before dead columns are
  // zeroed, as in the reference implementation.
  ChannelParams fixed;
  if (spec.granularity == Granularity::per_row) fixed = params_of_columns(wt, spec, grid);
  if (spec.granularity == Granularity::per_tensor) fixed = params_of_tensor(wt, spec, grid);

  const at::Tensor dead = h.diagonal() == 0;
  h.diagonal().masked_fill_(dead, 1.0);
  wt.masked_fill_(dead.unsqueeze(1), 0.0);

  const int64_t n = wt.size(0);
  at::Tensor order;
  if (options.act_order) {
    order = std::get<1>(at::sort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    wt = wt.index_select(0, order);
    h = h.index_select(0, order).index_select(1, order);
  }
  GptqLoop loop(wt, inverse_hessian_factor(h, options.damp).to(work), spec, options);
  loop.use_fixed(fixed);
  if (options.act_order && spec.granularity == Granularity::per_group) {
    // Static groups: contiguous in the original order, scales from the original weights.
    const at::Tensor original = wt.index_select(0, at::argsort(order));
    std::vector<ChannelParams> groups;
    for (int64_t g = 0; g < n; g += spec.group_size)
      groups.push_back(params_of_columns(original.slice(0, g, g + spec.group_size), spec, grid));
    const at::Tensor order_cpu = order.to(at::kCPU).contiguous();  // read below (W may be on a GPU)
    std::vector<int64_t> group_of_column(n);
    for (int64_t i = 0; i < n; ++i) group_of_column[i] = order_cpu.data_ptr<int64_t>()[i] / spec.group_size;
    loop.use_static_groups(std::move(groups), std::move(group_of_column));
  }
  at::Tensor q = loop.run();
  if (options.act_order) q = q.index_select(0, at::argsort(order));
  return q.t().contiguous().to(w.scalar_type());
}

}  // namespace sqlab
