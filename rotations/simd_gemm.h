// The register-blocked small matrix product shared by the Hadamard base block (out = in H_m,
// rotations/hadamard.cpp) and the per-token Kronecker kernel (Y = M Q, then L Y, rotations/kronecker.cpp):
// C = A B with B's rows padded to whole registers, for matrices that stay in L1/L2.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "rotations/simd.h"

namespace sqlab::simd {

// C[r][col .. col + NC W) = sum_k A[r][k] B[k][col ..] for RA rows (RA x NC accumulators,
// B broadcast-multiply-added one row k at a time). B's rows are padded to ldb (loads of
// whole registers stay inside them). Stores are whole registers for every column < limit,
// except a register that would cross `end` (the end of C), which stores only the columns
// < limit of its own row.
template <class S, int RA, int NC>
SQLAB_ALWAYS_INLINE void gemm_block(const typename S::Elem* a, int64_t lda,
                                    const typename S::Elem* b, int64_t ldb, int64_t k_size,
                                    typename S::Elem* c, int64_t ldc, int64_t col, int64_t limit,
                                    const typename S::Elem* end) {
  using T = typename S::Elem;
  using V = typename S::V;
  V acc[RA][NC];
#pragma GCC unroll 16
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) acc[r][j] = V{};
  for (int64_t k = 0; k < k_size; ++k) {
    V bv[NC];
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) bv[j] = S::load(b + k * ldb + col + j * S::W);
#pragma GCC unroll 16
    for (int r = 0; r < RA; ++r) {
      const V av = S::splat(a[r * lda + k]);
#pragma GCC unroll 16
      for (int j = 0; j < NC; ++j) acc[r][j] += av * bv[j];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) {
      const int64_t cc = col + j * S::W;
      if (cc >= limit) continue;
      T* dst = c + r * ldc + cc;
      if (dst + S::W <= end) {
        S::store(dst, acc[r][j]);
      } else {
        T lanes[S::W];
        std::memcpy(lanes, &acc[r][j], sizeof(V));
        std::memcpy(dst, lanes, (std::min<int64_t>(limit, cc + S::W) - cc) * sizeof(T));
      }
    }
}

// Rows r .. r + RA of C, all column blocks, the last one first: a whole-register store that
// spills past its row (ldc = n) lands in the heads of later rows, which are stored afterwards
// (later row groups, or the first column block of this group, stored last, in row order).
template <class S, int RA>
SQLAB_ALWAYS_INLINE void gemm_row_group(const typename S::Elem* a, int64_t lda,
                                        const typename S::Elem* b, int64_t ldb, int64_t k_size,
                                        typename S::Elem* c, int64_t ldc, int64_t limit,
                                        const typename S::Elem* end) {
  constexpr int64_t kBlock = 4 * S::W;  // NC <= 4
  for (int64_t col = (limit - 1) / kBlock * kBlock; col >= 0; col -= kBlock) {
    switch (std::min<int64_t>(4, (ldb - col) / S::W)) {
      case 1: gemm_block<S, RA, 1>(a, lda, b, ldb, k_size, c, ldc, col, limit, end); break;
      case 2: gemm_block<S, RA, 2>(a, lda, b, ldb, k_size, c, ldc, col, limit, end); break;
      case 3: gemm_block<S, RA, 3>(a, lda, b, ldb, k_size, c, ldc, col, limit, end); break;
      default: gemm_block<S, RA, 4>(a, lda, b, ldb, k_size, c, ldc, col, limit, end); break;
    }
  }
}

// C (rows x n) = A (rows x k_size) B (k_size x n, rows padded to ldb). padded_out: C's rows have
// ldc = ldb and are written whole (padding included); otherwise ldc = n (see gemm_row_group).
template <class S>
SQLAB_ALWAYS_INLINE void small_gemm(const typename S::Elem* a, int64_t lda,
                                    const typename S::Elem* b, int64_t ldb, int64_t k_size,
                                    typename S::Elem* c, int64_t ldc, int64_t rows, int64_t n,
                                    bool padded_out) {
  // RA x 4 accumulators + 4 registers of B: AVX-512 has 32 registers, narrower sets 16.
  constexpr int RA = sizeof(typename S::V) >= 64 ? 4 : 2;
  const int64_t limit = padded_out ? ldb : n;
  const typename S::Elem* end = c + rows * ldc;
  int64_t r = 0;
  for (; r + RA <= rows; r += RA)
    gemm_row_group<S, RA>(a + r * lda, lda, b, ldb, k_size, c + r * ldc, ldc, limit, end);
  for (; r < rows; ++r)
    gemm_row_group<S, 1>(a + r * lda, lda, b, ldb, k_size, c + r * ldc, ldc, limit, end);
}

}  // namespace sqlab::simd
