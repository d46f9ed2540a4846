// Givens rotations, the building block of SingleQuant's ART and URT (paper Eq. 8-16;
// method-notes.md sections 2 and 5). Row-vector convention throughout: a vector v
// becomes v G, and a product G_1 G_2 ... G_k applies G_1 first.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace sqlab {

// One plane rotation of coordinates (i, j): the identity except
// G[i][i] = c, G[i][j] = -s, G[j][i] = s, G[j][j] = c (Eq. 8 with c = cos, s = sin), so
// (v G)_i = c v_i + s v_j and (v G)_j = -s v_i + c v_j.
struct Givens {
  int64_t i = 0;
  int64_t j = 1;
  double c = 1.0;
  double s = 0.0;

  Givens transposed() const { return Givens{i, j, c, -s}; }
};

// Theorem 2 (Eq. 8): theta = arctan((b - a) / (a + b)) as atan2(b - a, a + b), so that
// (a, b) G(theta) has both entries of magnitude sqrt((a^2 + b^2) / 2). a + b = 0 gives
// +-pi/2 (and a = b = 0 gives 0) without dividing by zero.
double theorem2_angle(double a, double b);
Givens givens_from_angle(int64_t i, int64_t j, double theta);
// The Theorem 2 rotation of coordinates (i, j) for the pair values (a, b) = (v_i, v_j).
Givens theorem2_givens(int64_t i, int64_t j, double a, double b);

// v <- v G, in place, for a contiguous vector of doubles.
void apply_givens(double* v, const Givens& g);
// M G_1 G_2 ... G_k for a 2-D matrix M (any floating dtype; computed and returned in
// float64). Each rotation costs O(rows): only two columns change.
at::Tensor apply_givens_right(const at::Tensor& m, const std::vector<Givens>& rotations);
// G_1 G_2 ... G_k as a dense m x m float64 matrix.
at::Tensor givens_product(int64_t m, const std::vector<Givens>& rotations);

// How a sweep of Givens rotations takes a vector onto ||v|| e1 (Eq. 15).
// chain: coordinates (k-1, k) for k = m-1 down to 1, each zeroing coordinate k;
// star:  coordinates (0, k) for k = m-1 down to 1.
enum class GivensSweep { chain, star };

// The m-1 rotations, in order, with v G_1 ... G_{m-1} = ||v|| e1 (first entry >= 0).
std::vector<Givens> givens_sweep_to_e1(const std::vector<double>& v, GivensSweep sweep);

// URT (Eq. 14-16): R_U = R_map R'_map^T with V R_map = U R'_map = ||V|| e1, hence
// V R_U = U. Requires ||U|| = ||V|| (relative 1e-9). `rotations` lists the 2(m-1)
// rotations whose product is R_U (R_map's, then the transposes of R'_map's in reverse).
struct UrtMap {
  at::Tensor matrix;  // m x m float64
  std::vector<Givens> rotations;
};
UrtMap build_urt_map(const std::vector<double>& v, const std::vector<double>& u,
                     GivensSweep sweep);

}  // namespace sqlab
