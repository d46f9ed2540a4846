// Softmax attention (model/attention.h).
#include "model/attention.h"

#include "core/error.h"
#include "model/gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Half.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace sqlab {

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& masked,
                            double scale, int64_t max_score_bytes) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2);
  const int64_t per_head = std::max<int64_t>(1, B * T * S * static_cast<int64_t>(q.element_size()));
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(H, max_score_bytes / per_head));
  std::vector<at::Tensor> parts;
  for (int64_t h = 0; h < H; h += group) {
    const int64_t n = std::min(group, H - h);
    at::Tensor scores = gemm::matmul(q.narrow(1, h, n), k.narrow(1, h, n).transpose(-2, -1)) * scale;
    scores = scores.masked_fill(masked, -std::numeric_limits<float>::infinity());
    // The softmax in float32 whatever the compute dtype (transformers' eager attention).
    const bool wide = scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble;
    const at::Tensor p = wide ? at::softmax(scores, -1) : at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    parts.push_back(gemm::matmul(p, v.narrow(1, h, n)));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

namespace {

constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();

// x rounded to the nearest bfloat16, ties to even (c10::BFloat16's rounding), without a
// branch so that the loops below vectorize.
inline float round_to_bfloat16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
  float rounded;
  std::memcpy(&rounded, &bits, sizeof rounded);
  return x != x ? x : rounded;  // NaN stays NaN
}

// A float32 value rounded to the compute dtype and widened back.
struct KeepFloat {
  static float round(float x) { return x; }
};
struct RoundBFloat16 {
  static float round(float x) { return round_to_bfloat16(x); }
};
struct RoundHalf {
  static float round(float x) { return static_cast<float>(c10::Half(x)); }
};

// x[begin, end): the product rounded to the dtype, times the scale (rounded again), as
// `(q k^T) * scale` computes in that dtype; returns the largest, at least `largest`.
template <class Round>
float scale_scores(float* x, int64_t begin, int64_t end, float scale, float largest) {
  for (int64_t j = begin; j < end; ++j) x[j] = Round::round(Round::round(x[j]) * scale);
  float lanes[8] = {largest, largest, largest, largest, largest, largest, largest, largest};
  int64_t j = begin;
  for (; j + 8 <= end; j += 8)
    for (int lane = 0; lane < 8; ++lane) lanes[lane] = std::max(lanes[lane], x[j + lane]);
  for (; j < end; ++j) lanes[0] = std::max(lanes[0], x[j]);
  return *std::max_element(lanes, lanes + 8);
}

// The sum of x[0, n) in eight lanes (as a vectorized reduction adds; a single running sum
// would wait on each addition).
float sum_of(const float* x, int64_t n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int lane = 0; lane < 8; ++lane) lanes[lane] += x[j + lane];
  for (; j < n; ++j) lanes[0] += x[j];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

// The rows' softmax in place over scores (rows x S, float32): row r is query t = r % T of
// batch row r / rows_per_batch, which sees keys [0, seen[batch]) of its prefix and its own
// keys [W, W + t]. Leaves the probabilities rounded to the dtype (ATen's softmax: max,
// exp(x - max), sum, times 1/sum), zero where masked.
template <class Round>
void softmax_rows(at::Tensor& scores, int64_t T, int64_t W, int64_t rows_per_batch, const std::vector<int64_t>& seen,
                  float scale) {
  const int64_t rows = scores.numel() / scores.size(-1), S = scores.size(-1);
  float* base = scores.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, S));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* x = base + r * S;
      const int64_t prefix = seen[r / rows_per_batch], own_end = W + r % T + 1;
      float largest = scale_scores<Round>(x, 0, prefix, scale, kMinusInfinity);
      largest = scale_scores<Round>(x, W, own_end, scale, largest);
      for (int64_t j = 0; j < S; ++j) x[j] -= largest;
      std::fill(x + prefix, x + W, kMinusInfinity);
      std::fill(x + own_end, x + S, kMinusInfinity);
    }
  });
  scores.exp_();
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* x = base + r * S;
      const float inverse = 1.0f / sum_of(x, S);
      for (int64_t j = 0; j < S; ++j) x[j] = Round::round(x[j] * inverse);
    }
  });
}

void check_attention_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& prefix_length, int64_t W) {
  auto fail = [&](const std::string& what) {
    auto shape = [](const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); };
    throw Error(fmt::format("prefixed_causal_attention: {} (q {}, k {}, v {})", what, shape(q), shape(k), shape(v)));
  };
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4) fail("q, k and v must have 4 dimensions");
  if (k.sizes() != v.sizes()) fail("k and v differ in shape");
  if (k.size(0) != q.size(0) || k.size(3) != q.size(3)) fail("k's rows or head size differ from q's");
  if (k.size(1) == 0 || q.size(1) % k.size(1) != 0) fail("the query heads are not a multiple of the KV heads");
  if (W < 0 || k.size(2) != W + q.size(2)) fail(fmt::format("k must hold {} prefix keys and q's own", W));
  if (W > 0 && (!prefix_length.defined() || prefix_length.numel() != q.size(0)))
    fail("a prefix needs one prefix length per row");
}

bool fused_path(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::ScalarType dtype = q.scalar_type();
  const bool differentiable = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  return q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && !differentiable &&
         k.scalar_type() == dtype && v.scalar_type() == dtype &&
         (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf);
}

}  // namespace

at::Tensor prefixed_causal_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& prefix_length, int64_t W, double scale,
                                               int64_t max_score_bytes) {
  check_attention_shapes(q, k, v, prefix_length, W);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), group = H / k.size(1);
  const at::TensorOptions index = at::TensorOptions().dtype(at::kLong).device(q.device());
  const at::Tensor key = at::arange(S, index).view({1, 1, S}), query = at::arange(T, index).view({1, T, 1});
  at::Tensor visible = (key >= W) & (key - W <= query);  // own keys, causally
  if (W > 0) visible = visible | ((key < W) & (key < prefix_length.to(index).view({B, 1, 1})));
  const at::Tensor masked = visible.logical_not().expand({B, T, S}).unsqueeze(1);
  auto every_head = [&](const at::Tensor& kv) { return group == 1 ? kv : kv.repeat_interleave(group, 1); };
  return causal_attention(q, every_head(k), every_head(v), masked, scale, max_score_bytes);
}

at::Tensor prefixed_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& prefix_length, int64_t W, double scale,
                                     int64_t max_score_bytes) {
  if (!fused_path(q, k, v)) return prefixed_causal_attention_reference(q, k, v, prefix_length, W, scale, max_score_bytes);
  check_attention_shapes(q, k, v, prefix_length, W);  // (the reference checks its own)
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), KV = k.size(1), G = H / KV;
  const int64_t S = W + T;
  // Query head i = kv * G + g reads KV head kv: the G heads of a KV head are one product.
  const at::Tensor qf = q.to(at::kFloat).contiguous().view({B, KV, G * T, hd});
  const at::Tensor kf = k.to(at::kFloat), vf = v.to(at::kFloat);
  std::vector<int64_t> seen(B, 0);
  if (W > 0) {
    const at::Tensor lengths = prefix_length.to(at::kCPU, at::kLong).contiguous();
    for (int64_t b = 0; b < B; ++b) seen[b] = std::clamp<int64_t>(lengths.data_ptr<int64_t>()[b], 0, W);
  }
  // Scores of (rows x KV heads) at a time under the budget: KV heads first, then rows.
  const int64_t per_row_head = std::max<int64_t>(1, G * T * S * static_cast<int64_t>(sizeof(float)));
  const int64_t kv_step = std::clamp<int64_t>(max_score_bytes / (B * per_row_head), 1, KV);
  const int64_t row_step = kv_step > 1 ? B : std::clamp<int64_t>(max_score_bytes / per_row_head, 1, B);
  const float scale32 = static_cast<float>(scale);
  at::Tensor out = at::empty({B, KV, G * T, hd}, qf.options());
  for (int64_t b0 = 0; b0 < B; b0 += row_step) {
    const int64_t nb = std::min(row_step, B - b0);
    const std::vector<int64_t> seen_here(seen.begin() + b0, seen.begin() + b0 + nb);
    for (int64_t g0 = 0; g0 < KV; g0 += kv_step) {
      const int64_t nk = std::min(kv_step, KV - g0);
      auto part = [&](const at::Tensor& t) { return t.narrow(0, b0, nb).narrow(1, g0, nk); };
      at::Tensor scores = at::matmul(part(qf), part(kf).transpose(-2, -1)).contiguous();  // nb x nk x G*T x S
      const int64_t rows_per_batch = nk * G * T;
      switch (q.scalar_type()) {
        case at::kBFloat16: softmax_rows<RoundBFloat16>(scores, T, W, rows_per_batch, seen_here, scale32); break;
        case at::kHalf: softmax_rows<RoundHalf>(scores, T, W, rows_per_batch, seen_here, scale32); break;
        default: softmax_rows<KeepFloat>(scores, T, W, rows_per_batch, seen_here, scale32);
      }
      part(out).copy_(at::matmul(scores, part(vf)));
    }
  }
  return out.view({B, H, T, hd}).to(q.scalar_type());
}

}  // namespace sqlab
