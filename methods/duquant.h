// DuQuant's building blocks (Lin et al. 2024, arXiv 2406.01721; method-notes.md
// section 8), exposed for tests.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sqlab {

// The zigzag permutation: channels sorted by decreasing max |x| are dealt to blocks
// 0..K-1, K-1..0, 0..K-1, ... so every block gets the same number of channels and the
// outliers are spread evenly. `channel_absmax`: n values; n must be a multiple of
// `block_size`. Returns `source` (n, int64): block k holds channels
// source[k b .. (k + 1) b), in the order they were dealt.
at::Tensor zigzag_permutation(const at::Tensor& channel_absmax, int64_t block_size);

// A greedy block-diagonal rotation for activations x (T x K b), K blocks of size b,
// float64, K x b x b. In every block, `steps` times: take the channel d with the largest
// |activation| (of the block rotated so far), multiply by E_d R~ Q E_d (E_d swaps
// channels 0 and d, R~ an orthogonal b x b matrix whose first row is uniform in
// magnitude, Q = diag(1, Q') with Q' random orthogonal); keep the prefix of steps with
// the smallest block maximum (no step at all if none lowers it).
at::Tensor greedy_block_rotation(const at::Tensor& x, int64_t block_size, int64_t steps, at::Generator generator);

// An orthogonal b x b matrix whose first row has entries of magnitude 1/sqrt(b): the
// normalized Hadamard matrix when b has one, else the Householder reflection that maps
// e_0 to the uniform vector.
at::Tensor uniform_first_row_matrix(int64_t b);

}  // namespace sqlab
