// Seeded randomness: every random choice in sqlab comes from a generator derived
// from the run's seed, so a run id reproduces its numbers.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace sqlab {

// A seed for one purpose (e.g. "random_orthogonal/site0"), independent of others.
uint64_t derive_seed(uint64_t seed, const std::string& purpose);
// A CPU generator seeded with derive_seed(seed, purpose).
at::Generator make_generator(uint64_t seed, const std::string& purpose);
// Haar-random orthogonal n x n matrix (float64): QR of a Gaussian matrix with the
// signs of R's diagonal moved into Q (otherwise Q is not uniformly distributed).
at::Tensor random_orthogonal_matrix(int64_t n, at::Generator generator);

}  // namespace sqlab
