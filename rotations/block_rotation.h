// Structured orthogonal transforms for DuQuant (method-notes.md section 8): a
// block-diagonal rotation applied as K small matmuls on a reshaped view, and a channel
// permutation applied as a gather. Both act on row vectors like every Rotation
// (x -> x R, W -> W R); dense() materializes them for tests.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

#include "core/rotation.h"
#include "rotations/device_copies.h"

namespace sqlab {

// R = diag(B_0, ..., B_{K-1}), each B_k a b x b orthogonal matrix: channels
// [k b, (k + 1) b) of a token are multiplied by B_k. Costs O(n b) per token, not O(n^2).
class BlockDiagonalRotation : public Rotation {
 public:
  // blocks: K x b x b (any floating dtype; float64 masters and float32 copies are kept).
  explicit BlockDiagonalRotation(const at::Tensor& blocks, std::string description = "block_diagonal");

  int64_t size() const override { return blocks64_.size(0) * blocks64_.size(1); }
  at::Tensor apply(const at::Tensor& x) const override;
  at::Tensor apply_inverse(const at::Tensor& y) const override;
  at::Tensor dense() const override;
  // {"blocks": K*b x b, the blocks stacked by rows} (float64).
  std::map<std::string, at::Tensor> factors() const override;
  std::string describe() const override { return description_; }

  int64_t block_count() const { return blocks64_.size(0); }
  int64_t block_size() const { return blocks64_.size(1); }
  const at::Tensor& blocks() const { return blocks64_; }  // K x b x b, float64

 private:
  at::Tensor run(const at::Tensor& x, bool inverse) const;
  at::Tensor blocks64_, blocks32_;
  DeviceCopies on_device_;
  std::string description_;
};

// A channel permutation P: (x P)_i = x_{source[i]}, i.e. P[source[i], i] = 1.
class PermutationRotation : public Rotation {
 public:
  // `source`: a permutation of 0..n-1 (any integer dtype).
  explicit PermutationRotation(const at::Tensor& source, std::string description = "permutation");

  int64_t size() const override { return source_.size(0); }
  at::Tensor apply(const at::Tensor& x) const override;
  at::Tensor apply_inverse(const at::Tensor& y) const override;
  at::Tensor dense() const override;
  // {"source": 1 x n, float64 indices}.
  std::map<std::string, at::Tensor> factors() const override;
  std::string describe() const override { return description_; }
  const at::Tensor& source() const { return source_; }  // int64

 private:
  at::Tensor source_, inverse_;
  DeviceCopies on_device_;
  std::string description_;
};

}  // namespace sqlab
