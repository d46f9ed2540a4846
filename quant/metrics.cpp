#include "quant/metrics.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace sqlab {
namespace {

// Sums in float64 without a float64 copy of the matrix (a 7B MLP weight has 45 M entries;
// whole-matrix float64 temporaries cost 1.4 GB). On contiguous CPU float32/float64 tensors
// one fused pass over the data, split across threads (each chunk sums in float64); otherwise
// block by block through ATen.
constexpr int64_t kBlock = 1 << 20;

template <typename T, typename Term>
double fused_sum(int64_t n, Term term) {
  const int64_t chunks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = c * kBlock, stop = std::min(n, (c + 1) * kBlock);
      // Eight independent partial sums: one accumulator is a serial chain the compiler may
      // not reorder (no -ffast-math), eight let it use the vector units.
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = first;
      for (; i + 8 <= stop; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] += term(i + k);
      for (; i < stop; ++i) acc[0] += term(i);
      double sum = 0.0;
      for (double a : acc) sum += a;
      partial[static_cast<size_t>(c)] = sum;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

bool fusable(const at::Tensor& x) {
  return x.device().is_cpu() && x.is_contiguous() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

double squared_norm(const at::Tensor& x) {
  if (fusable(x)) {
    return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "squared_norm", [&] {
      const scalar_t* a = x.data_ptr<scalar_t>();
      return fused_sum<scalar_t>(x.numel(), [a](int64_t i) {
        const double v = static_cast<double>(a[i]);
        return v * v;
      });
    });
  }
  const at::Tensor flat = x.reshape({-1});
  double total = 0.0;
  for (int64_t start = 0; start < flat.numel(); start += kBlock) {
    const int64_t len = std::min(kBlock, flat.numel() - start);
    total += flat.narrow(0, start, len).to(at::kDouble).pow(2).sum().item<double>();
  }
  return total;
}

// ||a - b||^2 in float64.
double squared_distance(const at::Tensor& a, const at::Tensor& b) {
  if (fusable(a) && fusable(b) && a.scalar_type() == b.scalar_type() && a.numel() == b.numel()) {
    return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "squared_distance", [&] {
      const scalar_t* pa = a.data_ptr<scalar_t>();
      const scalar_t* pb = b.data_ptr<scalar_t>();
      return fused_sum<scalar_t>(a.numel(), [pa, pb](int64_t i) {
        const double d = static_cast<double>(pa[i]) - static_cast<double>(pb[i]);
        return d * d;
      });
    });
  }
  const at::Tensor fa = a.reshape({-1}), fb = b.reshape({-1});
  double total = 0.0;
  for (int64_t start = 0; start < fa.numel(); start += kBlock) {
    const int64_t len = std::min(kBlock, fa.numel() - start);
    total += (fa.narrow(0, start, len).to(at::kDouble) - fb.narrow(0, start, len).to(at::kDouble))
                 .pow(2).sum().item<double>();
  }
  return total;
}

}  // namespace

double relative_error(const at::Tensor& approx, const at::Tensor& reference) {
  const double ref = squared_norm(reference);
  const double err = squared_distance(approx, reference);
  if (ref == 0.0) return err == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(err / ref);
}

double mean_squared_error(const at::Tensor& approx, const at::Tensor& reference) {
  if (reference.numel() == 0) return 0.0;
  return squared_distance(approx, reference) / static_cast<double>(reference.numel());
}

double sqnr_db(const at::Tensor& approx, const at::Tensor& reference) {
  const double err = squared_distance(approx, reference);
  if (err == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(squared_norm(reference) / err);
}

double abs_max(const at::Tensor& x) {
  return x.numel() ? x.abs().max().item<double>() : 0.0;
}

double kurtosis(const at::Tensor& x) {
  const at::Tensor v = x.to(at::kDouble).reshape({-1});
  if (v.numel() < 2) return 0.0;
  const at::Tensor centered = v - v.mean();
  const double var = centered.pow(2).mean().item<double>();
  if (var == 0.0) return 0.0;
  return centered.pow(4).mean().item<double>() / (var * var);
}

}  // namespace sqlab
