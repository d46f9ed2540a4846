#include "core/random.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace sqlab {

uint64_t derive_seed(uint64_t seed, const std::string& purpose) {
  // FNV-1a over the purpose, then a splitmix64 finalizer mixing in the seed.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : purpose) h = (h ^ c) * 1099511628211ull;
  uint64_t z = h ^ (seed + 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

at::Generator make_generator(uint64_t seed, const std::string& purpose) {
  return at::detail::createCPUGenerator(derive_seed(seed, purpose));
}

at::Tensor random_orthogonal_matrix(int64_t n, at::Generator generator) {
  const at::Tensor gaussian = at::randn({n, n}, generator, at::kDouble);
  auto [q, r] = at::linalg_qr(gaussian);
  return q * at::sign(r.diagonal()).unsqueeze(0);
}

}  // namespace sqlab
