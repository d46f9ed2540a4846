// Explicit Hadamard matrices of the non-power-of-two orders that QuaRot-style Hadamard
// rotations need for real model widths n = 2^k * m (e.g. 11008 = 172 * 64). The 2^k part is
// applied as a fast Walsh-Hadamard transform elsewhere; this file only supplies the m x m factor.
// Plain C++ (no LibTorch) so it is cheap to build and test.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sqlab {

// Base orders m, ascending: 1 and, for each odd o > 1, the smallest o * 2^j (j >= 2, at
// most 1024) that sqlab can construct (Paley I/II, doubling, Kronecker products, two
// Goethals-Seidel tables): {1, 12, 20, 28, 36, 44, 52, 60, 68, 76, 84, ...}.
const std::vector<int64_t>& hadamard_base_orders();

// How order m is built ("Paley I, q = 67", "Paley II, q = 73", "20 (x) 20", ...); empty
// when sqlab has no construction of order m.
std::string hadamard_construction(int64_t m);

// m x m Hadamard matrix, row-major, entries +1/-1, H H^T = m I.
// Throws sqlab::Error (config kind) for an unsupported m; the message lists the supported orders.
std::vector<int8_t> hadamard_base_matrix(int64_t m);

// Split n = 2^k * m with m a supported base order, preferring the largest power of two
// (so m = 1 when n is a power of two). Returns false when no split exists. n >= 1.
bool hadamard_split(int64_t n, int64_t* m, int64_t* pow2);

}  // namespace sqlab
