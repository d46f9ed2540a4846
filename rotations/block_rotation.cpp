#include "rotations/block_rotation.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"
#include "rotations/dense.h"

namespace sqlab {

BlockDiagonalRotation::BlockDiagonalRotation(const at::Tensor& blocks, std::string description)
    : description_(std::move(description)) {
  if (blocks.dim() != 3 || blocks.size(1) != blocks.size(2) || blocks.numel() == 0)
    throw Error(fmt::format("block-diagonal rotation: expected K x b x b blocks, got [{}]",
                            fmt::join(blocks.sizes(), ", ")));
  blocks64_ = blocks.to(at::kCPU, at::kDouble).contiguous();  // kept on the CPU (device_copies.h)
  blocks32_ = blocks64_.to(at::kFloat);
}

// Block k of every token is one GEMM on a column slice: x[:, k b : (k + 1) b] B_k, written
// into the same slice of the output. BLAS reads and writes the slices in place through their
// row stride, where a batched matmul over an (M, K, b) -> (K, M, b) transposed view costs
// two copies and a slower batched kernel (3.2 -> 1.1 ms at n = 576, b = 96, and 6.9 -> 4.3 ms
// at n = 1536, b = 128, for 1000 float32 tokens on one core here).
at::Tensor BlockDiagonalRotation::run(const at::Tensor& x, bool inverse) const {
  check_rotation_input(*this, x, "block-diagonal rotation");
  const bool is_double = x.scalar_type() == at::kDouble;
  const at::Tensor blocks = on_device_.on_device_of(is_double ? blocks64_ : blocks32_, x);
  const at::Tensor in = (is_double || x.scalar_type() == at::kFloat ? x : x.to(at::kFloat)).reshape({-1, size()});
  at::Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  const int64_t b = block_size();
  for (int64_t k = 0; k < block_count(); ++k) {
    at::Tensor slice = out.narrow(1, k * b, b);
    at::mm_out(slice, in.narrow(1, k * b, b), inverse ? blocks[k].t() : blocks[k]);
  }
  return out.view(x.sizes()).to(x.scalar_type());
}

at::Tensor BlockDiagonalRotation::apply(const at::Tensor& x) const { return run(x, false); }
at::Tensor BlockDiagonalRotation::apply_inverse(const at::Tensor& y) const { return run(y, true); }

at::Tensor BlockDiagonalRotation::dense() const {
  const int64_t k = block_count(), b = block_size();
  at::Tensor r = at::zeros({k * b, k * b}, at::kDouble);
  for (int64_t i = 0; i < k; ++i) r.slice(0, i * b, (i + 1) * b).slice(1, i * b, (i + 1) * b).copy_(blocks64_[i]);
  return r;
}

std::map<std::string, at::Tensor> BlockDiagonalRotation::factors() const {
  return {{"blocks", blocks64_.reshape({-1, block_size()})}};
}

PermutationRotation::PermutationRotation(const at::Tensor& source, std::string description)
    : description_(std::move(description)) {
  if (source.dim() != 1 || source.numel() == 0)
    throw Error("permutation: expected a non-empty vector of indices");
  source_ = source.to(at::kCPU, at::kLong).contiguous();
  const int64_t n = source_.numel();
  inverse_ = at::full({n}, -1, at::kLong);
  inverse_.index_put_({source_.clamp(0, n - 1)}, at::arange(n, at::kLong));
  const at::Tensor sorted = std::get<0>(source_.sort());
  if (!at::equal(sorted, at::arange(n, at::kLong)))
    throw Error(fmt::format("permutation: the indices are not a permutation of 0..{}", n - 1));
}

at::Tensor PermutationRotation::apply(const at::Tensor& x) const {
  check_rotation_input(*this, x, "permutation");
  return x.index_select(-1, on_device_.on_device_of(source_, x));
}

at::Tensor PermutationRotation::apply_inverse(const at::Tensor& y) const {
  check_rotation_input(*this, y, "permutation");
  return y.index_select(-1, on_device_.on_device_of(inverse_, y));
}

at::Tensor PermutationRotation::dense() const {
  const int64_t n = size();
  at::Tensor p = at::zeros({n, n}, at::kDouble);
  p.index_put_({source_, at::arange(n, at::kLong)}, 1.0);
  return p;
}

std::map<std::string, at::Tensor> PermutationRotation::factors() const {
  return {{"source", source_.to(at::kDouble).reshape({1, -1})}};
}

}  // namespace sqlab
