#include "rotations/stored_form.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "rotations/hadamard.h"

namespace sqlab {

const std::vector<StoredForm>& stored_forms() {
  static const std::vector<StoredForm> forms = {
      {"dense", {"R"}, "R (n x n): a row x maps to x @ R, a weight W (out x n) to W @ R"},
      {"kronecker", {"R1", "R2"},
       "R = numpy.kron(R1, R2), R1 n1 x n1, R2 n2 x n2, n = n1 n2: x @ R, W @ R"},
      {"hadamard_compact", {"H_base", "signs"},
       "R = diag(signs) @ numpy.kron(S_p, H_base) / sqrt(n): H_base m x m (+-1), signs 1 x n (+-1), p = n / m, "
       "S_p the Sylvester matrix of order p, S_p[i, j] = (-1)^popcount(i & j) (i, j from 0): x @ R, W @ R"},
      {"block_diagonal", {"blocks"},
       "R = scipy.linalg.block_diag(B_0, ..., B_{k-1}), B_i = blocks[i b:(i + 1) b] (blocks: k b x b): x @ R, W @ R"},
      {"permutation", {"source"},
       "R[source[j], j] = 1, else 0 (source: 1 x n, indices as float64): x @ R = x[:, source], W @ R = W[:, source]"},
      {"transform", {"T", "T_w"},
       "not orthogonal: a row x maps to x @ T, a weight W to W @ T_w (T_w = T^-T), both n x n"},
  };
  return forms;
}

const StoredForm& stored_form_of(const std::map<std::string, at::Tensor>& factors) {
  std::vector<std::string> names;
  for (const auto& [name, tensor] : factors) names.push_back(name);  // std::map: sorted
  for (const StoredForm& form : stored_forms()) {
    std::vector<std::string> expected = form.tensors;
    std::sort(expected.begin(), expected.end());
    if (expected == names) return form;
  }
  std::vector<std::string> known;
  for (const StoredForm& form : stored_forms()) known.push_back(fmt::format("{}", fmt::join(form.tensors, "+")));
  throw Error(fmt::format("stored rotation with tensors [{}] is in no known form ({})", fmt::join(names, ", "),
                          fmt::join(known, ", ")));
}

namespace {

at::Tensor factor(const std::map<std::string, at::Tensor>& factors, const char* name) {
  return factors.at(name).to(at::kDouble);
}

at::Tensor hadamard_from_compact(const at::Tensor& base, const at::Tensor& signs) {
  const int64_t m = base.size(0), n = signs.numel();
  if (m < 1 || n % m != 0) throw Error(fmt::format("hadamard_compact: H_base of order {} does not divide n = {}", m, n));
  at::Tensor r = at::kron(sylvester_matrix(n / m), base) / std::sqrt(static_cast<double>(n));
  return signs.reshape({n, 1}) * r;
}

at::Tensor block_diagonal_from_blocks(const at::Tensor& blocks) {
  const int64_t b = blocks.size(1), k = blocks.size(0) / b;
  at::Tensor r = at::zeros({k * b, k * b}, at::kDouble);
  for (int64_t i = 0; i < k; ++i)
    r.slice(0, i * b, (i + 1) * b).slice(1, i * b, (i + 1) * b).copy_(blocks.slice(0, i * b, (i + 1) * b));
  return r;
}

at::Tensor permutation_from_source(const at::Tensor& source) {
  const at::Tensor index = source.reshape({-1}).round().to(at::kLong);
  const int64_t n = index.numel();
  at::Tensor p = at::zeros({n, n}, at::kDouble);
  p.index_put_({index, at::arange(n, at::kLong)}, 1.0);
  return p;
}

}  // namespace

at::Tensor dense_from_factors(const std::map<std::string, at::Tensor>& factors) {
  const std::string& form = stored_form_of(factors).name;
  if (form == "dense") return factor(factors, "R");
  if (form == "kronecker") return at::kron(factor(factors, "R1"), factor(factors, "R2"));
  if (form == "hadamard_compact") return hadamard_from_compact(factor(factors, "H_base"), factor(factors, "signs"));
  if (form == "block_diagonal") return block_diagonal_from_blocks(factor(factors, "blocks"));
  if (form == "permutation") return permutation_from_source(factor(factors, "source"));
  return factor(factors, "T");  // transform
}

}  // namespace sqlab
