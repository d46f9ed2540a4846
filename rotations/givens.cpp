#include "rotations/givens.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace sqlab {

double theorem2_angle(double a, double b) { return std::atan2(b - a, a + b); }

Givens givens_from_angle(int64_t i, int64_t j, double theta) {
  return Givens{i, j, std::cos(theta), std::sin(theta)};
}

Givens theorem2_givens(int64_t i, int64_t j, double a, double b) {
  return givens_from_angle(i, j, theorem2_angle(a, b));
}

void apply_givens(double* v, const Givens& g) {
  const double a = v[g.i], b = v[g.j];
  v[g.i] = g.c * a + g.s * b;
  v[g.j] = -g.s * a + g.c * b;
}

namespace {

void check_indices(const Givens& g, int64_t m, const char* what) {
  if (g.i < 0 || g.j < 0 || g.i >= m || g.j >= m || g.i == g.j)
    throw Error(fmt::format("{}: Givens rotation of coordinates ({}, {}) does not fit size {}",
                            what, g.i, g.j, m));
}

// M G for every G, on Mt = M^T (contiguous rows): right-multiplying M by G mixes
// columns i and j of M, i.e. rows i and j of Mt, with the same formula as a vector.
void rotate_rows_of_transpose(at::Tensor& mt, const std::vector<Givens>& rotations) {
  const int64_t m = mt.size(0), len = mt.size(1);
  double* data = mt.data_ptr<double>();
  for (const Givens& g : rotations) {
    check_indices(g, m, "givens");
    double* ri = data + g.i * len;
    double* rj = data + g.j * len;
    for (int64_t k = 0; k < len; ++k) {
      const double a = ri[k], b = rj[k];
      ri[k] = g.c * a + g.s * b;
      rj[k] = -g.s * a + g.c * b;
    }
  }
}

}  // namespace

at::Tensor apply_givens_right(const at::Tensor& m, const std::vector<Givens>& rotations) {
  if (m.dim() != 2) throw Error("givens: expected a 2-D matrix");
  // The in-place kernel reads raw CPU memory; on another device, one GEMM with the product
  // (built on the CPU, moved to m's device).
  if (!m.is_cpu()) return at::matmul(m.to(at::kDouble), givens_product(m.size(1), rotations).to(m.device()));
  at::Tensor mt = m.to(at::kDouble).t().contiguous();
  rotate_rows_of_transpose(mt, rotations);
  return mt.t().contiguous();
}

at::Tensor givens_product(int64_t m, const std::vector<Givens>& rotations) {
  at::Tensor mt = at::eye(m, at::kDouble);
  rotate_rows_of_transpose(mt, rotations);
  return mt.t().contiguous();
}

std::vector<Givens> givens_sweep_to_e1(const std::vector<double>& v, GivensSweep sweep) {
  std::vector<double> w = v;
  const int64_t m = static_cast<int64_t>(w.size());
  std::vector<Givens> rotations;
  rotations.reserve(m > 0 ? m - 1 : 0);
  for (int64_t k = m - 1; k >= 1; --k) {
    const int64_t i = sweep == GivensSweep::chain ? k - 1 : 0;
    const double x = w[i], y = w[k];
    const double r = std::hypot(x, y);
    // (x, y) G = (r, 0) for c = x / r, s = y / r; r = 0 needs no rotation.
    const Givens g = r > 0 ? Givens{i, k, x / r, y / r} : Givens{i, k, 1.0, 0.0};
    w[i] = r;
    w[k] = 0.0;
    rotations.push_back(g);
  }
  return rotations;
}

UrtMap build_urt_map(const std::vector<double>& v, const std::vector<double>& u,
                     GivensSweep sweep) {
  if (v.size() != u.size() || v.empty())
    throw Error(fmt::format("urt: vector and target sizes differ ({} vs {})", v.size(), u.size()));
  double vv = 0, uu = 0;
  for (size_t k = 0; k < v.size(); ++k) vv += v[k] * v[k], uu += u[k] * u[k];
  const double nv = std::sqrt(vv), nu = std::sqrt(uu);
  if (std::abs(nv - nu) > 1e-9 * std::max({nv, nu, 1e-300}))
    throw Error(fmt::format("urt: ||V|| = {} and ||U|| = {} differ; no rotation maps one to the other",
                            nv, nu));
  UrtMap result;
  result.rotations = givens_sweep_to_e1(v, sweep);       // R_map
  const std::vector<Givens> target = givens_sweep_to_e1(u, sweep);  // R'_map
  // R'_map^T = G'_{m-1}^T ... G'_1^T.
  for (auto it = target.rbegin(); it != target.rend(); ++it) result.rotations.push_back(it->transposed());
  result.matrix = givens_product(static_cast<int64_t>(v.size()), result.rotations);
  return result;
}

}  // namespace sqlab
