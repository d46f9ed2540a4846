// The LLaMA forward pass against an independent per-token reference, grouped-query
// attention, tied and separate heads, hooks, and perplexity against a direct loop.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "model/capture.h"
#include "model/checkpoint.h"
#include "model/fold.h"
#include "model/gemm.h"
#include "model/layerwise.h"
#include "model/llama.h"
#include "model/perplexity.h"

namespace sqlab {
namespace {

LlamaConfig tiny_config(int64_t heads, int64_t kv_heads, bool tied) {
  LlamaConfig c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = 37;
  c.max_seq_len = 32;
  c.norm_eps = 1e-5;
  c.rope_theta = 500.0;  // not the default: the forward must read it
  c.tied_embeddings = tied;
  return c;
}

at::Tensor rms(const at::Tensor& x, const at::Tensor& g, double eps) {
  return x / std::sqrt(x.pow(2).mean().item<double>() + eps) * g.to(at::kDouble);
}

// Rotary embedding of one head vector at position t, rotate-half layout: the pair
// (i, i + hd/2) turns by t * theta^(-2i/hd).
at::Tensor rope(const at::Tensor& v, int64_t t, double theta) {
  const int64_t hd = v.size(0), half = hd / 2;
  at::Tensor out = v.clone();
  for (int64_t i = 0; i < half; ++i) {
    const double angle = t * std::pow(theta, -2.0 * i / hd);
    const double a = v[i].item<double>(), b = v[i + half].item<double>();
    out[i] = a * std::cos(angle) - b * std::sin(angle);
    out[i + half] = b * std::cos(angle) + a * std::sin(angle);
  }
  return out;
}

// A straightforward float64 reference: one token at a time, one head at a time,
// attention as an explicit causal softmax loop.
at::Tensor reference_logits(const LlamaWeights& w, const std::vector<int64_t>& tokens) {
  const LlamaConfig& c = w.config;
  const int64_t T = tokens.size(), hd = c.head_dim(), group = c.n_heads / c.n_kv_heads;
  auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
  std::vector<at::Tensor> x;
  for (int64_t t : tokens) x.push_back(d(w.embedding[t]));
  for (const LlamaLayer& L : w.layers) {
    std::vector<at::Tensor> q(T), k(T), v(T);
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor h = rms(x[t], L.attn_norm, c.norm_eps);
      q[t] = at::mv(d(L.wq), h);
      k[t] = at::mv(d(L.wk), h);
      v[t] = at::mv(d(L.wv), h);
    }
    std::vector<at::Tensor> attn(T);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<at::Tensor> heads;
      for (int64_t head = 0; head < c.n_heads; ++head) {
        const int64_t kv = head / group;
        const at::Tensor qh = rope(q[t].narrow(0, head * hd, hd), t, c.rope_theta);
        std::vector<double> s;
        double mx = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          const at::Tensor kh = rope(k[j].narrow(0, kv * hd, hd), j, c.rope_theta);
          s.push_back(at::dot(qh, kh).item<double>() / std::sqrt(static_cast<double>(hd)));
          mx = std::max(mx, s.back());
        }
        double z = 0.0;
        for (double& e : s) z += (e = std::exp(e - mx));
        at::Tensor o = at::zeros({hd}, at::kDouble);
        for (int64_t j = 0; j <= t; ++j) o += s[j] / z * v[j].narrow(0, kv * hd, hd);
        heads.push_back(o);
      }
      attn[t] = at::cat(heads);
    }
    for (int64_t t = 0; t < T; ++t) {
      x[t] = x[t] + at::mv(d(L.wo), attn[t]);
      const at::Tensor h = rms(x[t], L.mlp_norm, c.norm_eps);
      const at::Tensor g = at::mv(d(L.w_gate), h);
      const at::Tensor act = g / (1.0 + at::exp(-g)) * at::mv(d(L.w_up), h);
      x[t] = x[t] + at::mv(d(L.w_down), act);
    }
  }
  std::vector<at::Tensor> logits;
  for (int64_t t = 0; t < T; ++t) logits.push_back(at::mv(d(w.output), rms(x[t], w.final_norm, c.norm_eps)));
  return at::stack(logits);
}

double rel_error(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / b.to(at::kDouble).norm().item<double>();
}

void expect_matches_reference(const LlamaConfig& config) {
  const LlamaWeights w = random_llama(config, 7);
  const std::vector<int64_t> seq = {1, 5, 36, 0, 12, 12, 3, 30, 9};
  const at::Tensor tokens = at::tensor(seq, at::kLong).unsqueeze(0);
  const at::Tensor logits = llama_forward(w, tokens);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{1, 9, config.vocab_size}));
  EXPECT_LT(rel_error(logits[0], reference_logits(w, seq)), 1e-5);
}

TEST(LlamaForward, MatchesPerTokenReferenceMultiHead) { expect_matches_reference(tiny_config(4, 4, false)); }

TEST(LlamaForward, MatchesPerTokenReferenceGroupedQuery) { expect_matches_reference(tiny_config(4, 2, false)); }

TEST(LlamaForward, MatchesPerTokenReferenceMultiQueryTied) { expect_matches_reference(tiny_config(4, 1, true)); }

TEST(LlamaForward, GroupedQueryEqualsRepeatedKeyValueHeads) {
  // GQA with KV heads repeated into a full multi-head model gives the same logits.
  const LlamaWeights gqa = random_llama(tiny_config(4, 2, false), 3);
  LlamaWeights mha = clone_weights(gqa);
  mha.config.n_kv_heads = 4;
  const int64_t hd = gqa.config.head_dim();
  for (LlamaLayer& l : mha.layers) {
    l.wk = l.wk.view({2, hd, 16}).repeat_interleave(2, 0).reshape({4 * hd, 16});
    l.wv = l.wv.view({2, hd, 16}).repeat_interleave(2, 0).reshape({4 * hd, 16});
  }
  const at::Tensor tokens = at::randint(37, {2, 11}, at::kLong);
  EXPECT_LT(rel_error(llama_forward(gqa, tokens), llama_forward(mha, tokens)), 1e-6);
}

TEST(LlamaForward, TiedHeadEqualsSeparateCopyAndBatchesAreIndependent) {
  const LlamaWeights tied = random_llama(tiny_config(4, 2, true), 5);
  EXPECT_TRUE(tied.output.is_same(tied.embedding));
  LlamaWeights separate = clone_weights(tied);
  separate.output = separate.embedding.clone();
  separate.config.tied_embeddings = false;
  const at::Tensor tokens = at::randint(37, {3, 10}, at::kLong);
  const at::Tensor a = llama_forward(tied, tokens), b = llama_forward(separate, tokens);
  EXPECT_LT(rel_error(a, b), 1e-7);
  // A different separate head changes the logits (the head is really read).
  separate.output = separate.output + 0.5;
  EXPECT_GT(rel_error(llama_forward(separate, tokens), a), 1e-3);
  // Row 1 alone gives row 1 of the batch; a row's prefix gives the prefix's logits (causal).
  EXPECT_LT(rel_error(llama_forward(tied, tokens.narrow(0, 1, 1))[0], a[1]), 1e-5);
  EXPECT_LT(rel_error(llama_forward(tied, tokens.narrow(1, 0, 4)), a.narrow(1, 0, 4)), 1e-5);
}

TEST(LlamaForward, AttentionByGroupsOfHeadsEqualsAllHeadsAtOnce) {
  at::Generator g = make_generator(4, "attention/groups");
  const at::Tensor q = at::randn({2, 6, 10, 4}, g), k = at::randn({2, 6, 10, 4}, g), v = at::randn({2, 6, 10, 4}, g);
  const at::Tensor future = at::ones({10, 10}, at::kBool).triu(1);
  const at::Tensor scores = (at::matmul(q, k.transpose(-2, -1)) * 0.5).masked_fill(future, -INFINITY);
  const at::Tensor expected = at::matmul(at::softmax(scores, -1), v);
  const int64_t one_head = 2 * 10 * 10 * 4;  // bytes of one head's scores
  for (int64_t budget : {int64_t{1}, one_head, 2 * one_head, 5 * one_head, int64_t{1} << 30}) {
    const at::Tensor got = causal_attention(q, k, v, future, 0.5, budget);
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-6) << "budget " << budget;
  }
}

// Query t of row b, head i, alone: the softmax over the keys it sees (its prefix's first
// lengths[b], then its own up to t) at KV head i / (H / KV), in double.
at::Tensor attention_one_query_at_a_time(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const std::vector<int64_t>& lengths, int64_t W, double scale) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), group = H / k.size(1);
  at::Tensor out = at::zeros(q.sizes(), at::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t t = 0; t < T; ++t) {
        const at::Tensor seen = at::cat({at::arange(lengths[b]), at::arange(W, W + t + 1)});
        const at::Tensor keys = k[b][i / group].index_select(0, seen).to(at::kDouble);
        const at::Tensor values = v[b][i / group].index_select(0, seen).to(at::kDouble);
        const at::Tensor p = at::softmax(at::matmul(keys, q[b][i][t].to(at::kDouble)) * scale, 0);
        out[b][i][t] = at::matmul(p, values);
      }
  return out;
}

// The fused CPU attention (float32 buffers, masks as bounds, grouped-query heads in one
// product) against one query at a time and against the ATen reference with the mask spelled
// out: in float32, bfloat16 and float16, with and without prefixes (of lengths W, 0 and
// between), one own token or several, and score budgets that split the KV heads and the rows.
TEST(Attention, FusedEqualsOneQueryAtATimeAndTheReference) {
  at::Generator g = make_generator(5, "attention/fused");
  const int64_t B = 3, H = 6, hd = 8;
  for (int64_t kv_heads : {6, 2})
    for (int64_t W : {0, 5})
      for (int64_t T : {1, 7}) {
        const at::Tensor q = at::randn({B, H, T, hd}, g), k = at::randn({B, kv_heads, W + T, hd}, g);
        const at::Tensor v = at::randn({B, kv_heads, W + T, hd}, g);
        const std::vector<int64_t> lengths = W > 0 ? std::vector<int64_t>{5, 0, 3} : std::vector<int64_t>{0, 0, 0};
        const at::Tensor prefix_length = at::tensor(lengths, at::kLong);
        const at::Tensor expected = attention_one_query_at_a_time(q, k, v, lengths, W, 0.4);
        const int64_t one_kv_head = (H / kv_heads) * T * (W + T) * 4;  // bytes of one row's scores at one KV head
        for (int64_t budget : {int64_t{1}, B * one_kv_head, int64_t{1} << 30}) {
          SCOPED_TRACE(::testing::Message() << "KV " << kv_heads << " W " << W << " T " << T << " budget " << budget);
          const at::Tensor fused = prefixed_causal_attention(q, k, v, prefix_length, W, 0.4, budget);
          EXPECT_EQ(fused.scalar_type(), at::kFloat);
          EXPECT_LT((fused.to(at::kDouble) - expected).abs().max().item<double>(), 1e-5);
          for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
            const at::Tensor q16 = q.to(dtype), k16 = k.to(dtype), v16 = v.to(dtype);
            const at::Tensor got = prefixed_causal_attention(q16, k16, v16, prefix_length, W, 0.4, budget);
            const at::Tensor reference = prefixed_causal_attention_reference(q16, k16, v16, prefix_length, W, 0.4);
            EXPECT_EQ(got.scalar_type(), dtype);
            // The same roundings as the reference; the sums' order may move a result by an ulp.
            const double ulp = dtype == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
            EXPECT_LE((got.to(at::kDouble) - reference.to(at::kDouble)).abs().max().item<double>(), 2 * ulp);
            EXPECT_LT((got.to(at::kDouble) - expected).abs().max().item<double>(), 8 * ulp);
          }
        }
      }
}

TEST(Attention, DifferentiableInputsTakeTheAtenPathAndBadShapesAreNamed) {
  at::Generator g = make_generator(6, "attention/autograd");
  const at::Tensor q = at::randn({2, 4, 3, 8}, g).requires_grad_(), k = at::randn({2, 2, 5, 8}, g);
  const at::Tensor v = at::randn({2, 2, 5, 8}, g), lengths = at::tensor(std::vector<int64_t>{2, 1}, at::kLong);
  const at::Tensor out = prefixed_causal_attention(q, k, v, lengths, 2, 0.5);
  ASSERT_TRUE(out.requires_grad());
  out.sum().backward();
  EXPECT_TRUE(q.grad().defined() && q.grad().isfinite().all().item<bool>());
  {
    at::NoGradGuard no_grad;  // the fused path gives the same numbers
    EXPECT_LT((prefixed_causal_attention(q, k, v, lengths, 2, 0.5) - out).abs().max().item<double>(), 1e-6);
  }
  auto message = [&](const at::Tensor& kk, int64_t W, const at::Tensor& lens) {
    try {
      prefixed_causal_attention(q.detach(), kk, kk, lens, W, 0.5);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(at::randn({2, 3, 5, 8}), 2, lengths).find("not a multiple of the KV heads"), std::string::npos);
  EXPECT_NE(message(k, 3, lengths).find("must hold 3 prefix keys"), std::string::npos);
  EXPECT_NE(message(k, 2, {}).find("one prefix length per row"), std::string::npos);
}

// Rows packed after shared prefixes (SharedPrefixes: zero-shot scoring reads a context once
// for all its choices) give at every real position the hidden state of the one row
// (prefix + row) run alone: a Qwen3-like layer (q/k norms, biases, grouped-query), llama3
// rope scaling, prefixes of different lengths (one empty), padded rows, and a hook that
// rescales each token by its own largest value (hooks are per token).
TEST(LlamaForward, SharedPrefixRowsEqualTheirWholeRows) {
  LlamaConfig c = tiny_config(4, 2, false);
  c.qk_norm = true;
  c.attention_bias = c.output_bias = true;
  c.rope = {RopeScaling::llama3, 4.0, 1.0, 4.0, 8};
  const LlamaWeights w = random_llama(c, 21);
  struct PerToken : ForwardHooks {
    at::Tensor input(int64_t, LinearSite, const at::Tensor& x) override {
      return x / x.abs().amax(-1, true).clamp_min(1e-3);
    }
  } hooks;
  const std::vector<std::vector<int64_t>> prefixes = {{3, 9, 4, 1, 7}, {8, 2, 6}, {}};
  const std::vector<std::vector<int64_t>> rows = {{5, 5, 1, 2}, {11, 3}, {7, 30, 1}, {12, 13}};
  const std::vector<int64_t> prefix_of = {0, 1, 0, 2};
  const int64_t P = 3, Tp = 5, B = 4, T = 4;
  at::Tensor prefix_tokens = at::zeros({P, Tp}, at::kLong), tokens = at::zeros({B, T}, at::kLong);
  SharedPrefixes shared;
  shared.prefixes = P;
  shared.prefix_width = Tp;
  shared.rows = B;
  shared.width = T;
  std::vector<int64_t> lengths;
  for (int64_t p = 0; p < P; ++p) {
    const auto& t = prefixes[static_cast<size_t>(p)];
    for (size_t j = 0; j < t.size(); ++j) prefix_tokens[p][static_cast<int64_t>(j)] = t[j];
    lengths.push_back(static_cast<int64_t>(t.size()));
  }
  for (int64_t b = 0; b < B; ++b)
    for (size_t j = 0; j < rows[static_cast<size_t>(b)].size(); ++j) tokens[b][static_cast<int64_t>(j)] = rows[b][j];
  shared.prefix_of = at::tensor(prefix_of, at::kLong);
  shared.prefix_length = at::tensor(lengths, at::kLong);
  const auto embed = [&](const at::Tensor& t) { return llama_embed(c, w.embedding, t, "test").reshape({-1, c.dim}); };
  at::Tensor x = at::cat({embed(prefix_tokens), embed(tokens)}, 0);
  for (int64_t l = 0; l < c.n_layers; ++l) x = llama_layer(c, w.layers[l], l, x, &hooks, &shared);
  for (int64_t b = 0; b < B; ++b) {
    const auto& prefix = prefixes[static_cast<size_t>(prefix_of[static_cast<size_t>(b)])];
    std::vector<int64_t> whole = prefix;
    whole.insert(whole.end(), rows[b].begin(), rows[b].end());
    at::Tensor alone = llama_embed(c, w.embedding, at::tensor(whole, at::kLong).view({1, -1}), "test");
    for (int64_t l = 0; l < c.n_layers; ++l) alone = llama_layer(c, w.layers[l], l, alone, &hooks);
    const int64_t n = static_cast<int64_t>(rows[b].size()), np = static_cast<int64_t>(prefix.size());
    EXPECT_LT(rel_error(x.narrow(0, P * Tp + b * T, n), alone[0].narrow(0, np, n)), 1e-5) << "row " << b;
    if (np > 0) {
      EXPECT_LT(rel_error(x.narrow(0, prefix_of[b] * Tp, np), alone[0].narrow(0, 0, np)), 1e-5) << "prefix of " << b;
    }
  }
}

// A prefix computed by one pass and kept (PrefixKeyValues) serves the rows of a later pass
// (a subject's few-shot examples read once for all its questions): every row's hidden
// states equal its whole row's, whether its prefix is computed in its pass or borrowed,
// however long the borrowed prefix is against the owned ones; once dropped, a borrowed
// prefix is an error naming it.
TEST(LlamaForward, BorrowedPrefixesServeLaterPasses) {
  const LlamaConfig c = tiny_config(4, 2, false);
  const LlamaWeights w = random_llama(c, 22);
  struct PerToken : ForwardHooks {
    at::Tensor input(int64_t, LinearSite, const at::Tensor& x) override {
      return x / x.abs().amax(-1, true).clamp_min(1e-3);
    }
  } hooks;
  const std::vector<int64_t> kept = {3, 9, 4, 1, 7, 2}, own = {8, 2};
  const auto rows_tensor = [](const std::vector<std::vector<int64_t>>& rows, int64_t width) {
    at::Tensor t = at::zeros({static_cast<int64_t>(rows.size()), width}, at::kLong);
    for (size_t b = 0; b < rows.size(); ++b)
      for (size_t j = 0; j < rows[b].size(); ++j) t[static_cast<int64_t>(b)][static_cast<int64_t>(j)] = rows[b][j];
    return t;
  };
  // Pass 1 owns `kept` (key 7) and reads one row after it; pass 2 owns `own`, borrows key 7.
  TokenBatch first;
  first.prefix_tokens = rows_tensor({kept}, 6);
  first.tokens = rows_tensor({{5, 6}}, 2);
  first.prefix_of = {0};
  first.prefix_length = {6};
  first.prefix_key = {7};
  TokenBatch second;
  const std::vector<std::vector<int64_t>> rows = {{5, 5, 1}, {11, 3, 4, 6}, {7}};
  second.prefix_tokens = rows_tensor({own}, 2);
  second.tokens = rows_tensor(rows, 4);
  second.prefix_of = {1, 0, 1};
  second.prefix_length = {2, 6};
  second.prefix_key = {-1, 7};
  second.borrowed_prefixes = 1;
  const std::vector<TokenBatch> batches = {first, second};
  const std::vector<std::vector<int64_t>> last = last_borrowers(batches);
  EXPECT_TRUE(last[0].empty());
  EXPECT_EQ(last[1], std::vector<int64_t>{7});

  PrefixKeyValues store;
  std::vector<at::Tensor> out;
  for (const TokenBatch& b : batches) {
    std::optional<SharedPrefixes> shared = shared_prefixes(b);
    ASSERT_TRUE(shared.has_value());
    shared->kept = &store;
    at::Tensor x = embed_batch(c, w.embedding, b, "test");
    for (int64_t l = 0; l < c.n_layers; ++l) x = llama_layer(c, w.layers[l], l, x, &hooks, &*shared);
    out.push_back(x);
  }
  EXPECT_EQ(store.size(), static_cast<size_t>(c.n_layers)) << "key 7 kept at every layer";
  const auto whole_row = [&](std::vector<int64_t> prefix, const std::vector<int64_t>& row) {
    prefix.insert(prefix.end(), row.begin(), row.end());
    at::Tensor x = llama_embed(c, w.embedding, at::tensor(prefix, at::kLong).view({1, -1}), "test");
    for (int64_t l = 0; l < c.n_layers; ++l) x = llama_layer(c, w.layers[l], l, x, &hooks);
    return x[0].narrow(0, static_cast<int64_t>(prefix.size() - row.size()), static_cast<int64_t>(row.size()));
  };
  EXPECT_LT(rel_error(out[0].narrow(0, 6, 2), whole_row(kept, {5, 6})), 1e-5);
  for (size_t b = 0; b < rows.size(); ++b) {
    const std::vector<int64_t>& prefix = second.prefix_of[b] == 0 ? own : kept;
    const int64_t n = static_cast<int64_t>(rows[b].size());
    EXPECT_LT(rel_error(out[1].narrow(0, 2 + static_cast<int64_t>(b) * 4, n), whole_row(prefix, rows[b])), 1e-5)
        << "row " << b;
  }
  // A row with no prefix (an owned empty one) beside a borrowed prefix, in a pass that
  // computes no prefix tokens at all.
  TokenBatch third;
  third.prefix_tokens = at::zeros({1, 0}, at::kLong);
  third.tokens = rows_tensor({{4, 2, 9}, {6, 1}}, 3);
  third.prefix_of = {0, 1};
  third.prefix_length = {0, 6};
  third.prefix_key = {-1, 7};
  third.borrowed_prefixes = 1;
  {
    std::optional<SharedPrefixes> shared = shared_prefixes(third);
    shared->kept = &store;
    at::Tensor x = embed_batch(c, w.embedding, third, "test");
    ASSERT_EQ(x.size(0), 6);
    for (int64_t l = 0; l < c.n_layers; ++l) x = llama_layer(c, w.layers[l], l, x, &hooks, &*shared);
    EXPECT_LT(rel_error(x.narrow(0, 0, 3), whole_row({}, {4, 2, 9})), 1e-5);
    EXPECT_LT(rel_error(x.narrow(0, 3, 2), whole_row(kept, {6, 1})), 1e-5);
  }
  // A pass that borrows what no earlier pass kept.
  store.drop(7);
  EXPECT_EQ(store.size(), 0u);
  std::optional<SharedPrefixes> shared = shared_prefixes(second);
  shared->kept = &store;
  try {
    llama_layer(c, w.layers[0], 0, embed_batch(c, w.embedding, second, "test"), nullptr, &*shared);
    ADD_FAILURE() << "a prefix nobody kept";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prefix 7 at layer 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(last_borrowers({second}), Error) << "borrowed before it is kept";
  EXPECT_THROW(last_borrowers({first, first}), Error) << "kept twice";
  std::vector<TokenBatch> two_tasks = {first, second};
  append_batches(two_tasks, {first, second});
  EXPECT_EQ(two_tasks[2].prefix_key, std::vector<int64_t>{15});
  EXPECT_EQ(two_tasks[3].prefix_key, (std::vector<int64_t>{-1, 15}));
  EXPECT_EQ(last_borrowers(two_tasks)[3], std::vector<int64_t>{15});
}

TEST(LlamaForward, HooksSeeEverySiteAndCanReplaceInputs) {
  const LlamaWeights w = random_llama(tiny_config(4, 2, false), 1);
  const at::Tensor tokens = at::randint(37, {2, 6}, at::kLong);
  const std::map<SiteKey, at::Tensor> captured = capture_site_inputs(w, tokens);
  ASSERT_EQ(captured.size(), 2u * 4u + 1u);
  EXPECT_EQ(captured.at({0, LinearSite::attn_in}).sizes(), (std::vector<int64_t>{12, 16}));
  EXPECT_EQ(captured.at({1, LinearSite::mlp_out}).sizes(), (std::vector<int64_t>{12, 24}));
  EXPECT_EQ(captured.at({-1, LinearSite::head}).size(0), 12);
  // The head's input times the head's weights is the logits.
  EXPECT_LT(rel_error(at::mm(captured.at({-1, LinearSite::head}), w.output.t()),
                      llama_forward(w, tokens).reshape({12, 37})), 1e-6);
  struct Zero : ForwardHooks {
    at::Tensor input(int64_t layer, LinearSite site, const at::Tensor& x) override {
      return site == LinearSite::head ? x * 0 : x;
    }
  } zero;
  EXPECT_EQ(llama_forward(w, tokens, &zero).abs().max().item<double>(), 0.0);
  EXPECT_STREQ(linear_site_name(LinearSite::mlp_out), "mlp_out");
  EXPECT_EQ(site_key_name({3, LinearSite::attn_in}), "layer3.attn_in");
}

TEST(LlamaForward, ConfigCheckAndBadTokens) {
  LlamaConfig c = tiny_config(4, 3, false);
  EXPECT_THROW(c.check("x"), Error);
  c = tiny_config(4, 2, false);
  c.dim = 12;  // head_dim 3: odd
  EXPECT_THROW(c.check("x"), Error);
  c = tiny_config(4, 2, false);
  EXPECT_NO_THROW(c.check("x"));
  c.norm_eps = 0;
  EXPECT_THROW(c.check("x"), Error);
  const LlamaWeights w = random_llama(tiny_config(4, 2, false), 1);
  EXPECT_THROW(llama_forward(w, at::full({1, 3}, 37, at::kLong)), Error);
}

// The direct definition: each window through the model on its own, -log p of every
// scored target summed one by one.
double direct_nll(const LlamaWeights& w, const at::Tensor& stream, int64_t seq_len, int64_t stride,
                  int64_t* scored) {
  double sum = 0.0;
  *scored = 0;
  int64_t done_until = 0;
  for (int64_t begin = 0; begin + seq_len <= stream.numel(); begin += stride) {
    const at::Tensor window = stream.narrow(0, begin, seq_len);
    const at::Tensor logp = at::log_softmax(llama_forward(w, window.unsqueeze(0))[0].to(at::kDouble), -1);
    for (int64_t target = std::max(begin + 1, done_until); target < begin + seq_len; ++target) {
      sum -= logp[target - begin - 1][stream[target].item<int64_t>()].item<double>();
      ++*scored;
    }
    done_until = begin + seq_len;
  }
  return sum;
}

TEST(Perplexity, EqualsExpOfMeanTokenNllComputedDirectly) {
  const LlamaWeights w = random_llama(tiny_config(4, 2, false), 11);
  const at::Tensor stream = at::randint(37, {53}, make_generator(1, "test"), at::kLong);
  for (auto [seq_len, stride] : std::vector<std::pair<int64_t, int64_t>>{{8, 8}, {8, 3}, {16, 16}, {10, 1}}) {
    int64_t scored = 0;
    const double nll = direct_nll(w, stream, seq_len, stride, &scored);
    for (int64_t batch : {1, 4}) {
      const PerplexityResult r = perplexity(w, stream, seq_len, stride, nullptr, batch);
      EXPECT_EQ(r.tokens_scored, scored) << seq_len << " " << stride;
      EXPECT_NEAR(r.nll_sum, nll, 1e-6 * std::abs(nll));
      EXPECT_NEAR(r.ppl, std::exp(nll / scored), 1e-6 * r.ppl);
    }
  }
  // Non-overlapping windows of 8 over 53 tokens: 6 windows, 7 targets each.
  const PerplexityResult r = perplexity(w, stream, 8, 8);
  EXPECT_EQ(r.windows, 6);
  EXPECT_EQ(r.tokens_scored, 42);
  EXPECT_THROW(perplexity(w, stream.narrow(0, 0, 5), 8, 8), Error);
  EXPECT_THROW(perplexity_windows(50, 8, 9), Error);
}

TEST(Perplexity, WindowsScoreEachTargetOnce) {
  const std::vector<PerplexityWindow> w = perplexity_windows(20, 8, 5);
  ASSERT_EQ(w.size(), 3u);  // begins 0, 5, 10 (15 + 8 > 20)
  EXPECT_EQ(w[0].first_scored, 1);
  EXPECT_EQ(w[1].begin, 5);
  EXPECT_EQ(w[1].first_scored, 3);  // targets 8..12
  EXPECT_EQ(w[2].first_scored, 3);  // targets 13..17
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

// Every element of a 16-bit product within half a bfloat16 ulp (2^-8 relative) of the exact
// product of its (exactly widened) operands, plus what float32 accumulation may add.
void expect_rounded_once(const at::Tensor& y, const at::Tensor& exact, const at::Tensor& magnitude, int64_t terms) {
  ASSERT_EQ(y.scalar_type(), at::kBFloat16);
  ASSERT_EQ(y.sizes(), exact.sizes());
  const at::Tensor error = (y.to(at::kDouble) - exact).abs();
  const at::Tensor bound = exact.abs() * std::ldexp(1.0, -8) + magnitude * (terms * std::ldexp(1.0, -23));
  EXPECT_TRUE(error.le(bound).all().item<bool>()) << "worst excess " << (error - bound).max().item<double>();
}

// The 16-bit products of the forward (model/gemm.h): the float32 path is the exact product
// rounded once; LibTorch's own kernels give the same numbers within one rounding; float32
// inputs are untouched; and the path this CPU takes is the one its flags call for.
TEST(Gemm16, WidenedProductsAreTheFloat32SumRoundedOnce) {
  at::manual_seed(3);
  const at::Tensor x = (at::randn({5, 7, 64}) * 3).to(at::kBFloat16);
  const at::Tensor w = at::randn({48, 64}).to(at::kBFloat16);
  const at::Tensor b = at::randn({48}).to(at::kBFloat16);
  const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble), bd = b.to(at::kDouble);
  const at::Tensor exact = at::linear(xd, wd, bd);
  const at::Tensor magnitude = at::linear(xd.abs(), wd.abs(), bd.abs());
  expect_rounded_once(gemm::widened_linear(x, w, b), exact, magnitude, 65);
  expect_rounded_once(gemm::widened_linear(x, w), at::linear(xd, wd), at::linear(xd.abs(), wd.abs()), 64);
  // LibTorch's bfloat16 kernel (whichever this CPU runs) rounds its float32 sum once too.
  expect_rounded_once(at::linear(x, w, b), exact, magnitude, 65);

  // Batched, broadcast matmul (the attention's q k^T and p v).
  const at::Tensor q = at::randn({2, 3, 10, 16}).to(at::kBFloat16);
  const at::Tensor k = at::randn({2, 3, 12, 16}).to(at::kBFloat16);
  const at::Tensor qd = q.to(at::kDouble), kd = k.to(at::kDouble);
  expect_rounded_once(gemm::widened_matmul(q, k.transpose(-2, -1)), at::matmul(qd, kd.transpose(-2, -1)),
                      at::matmul(qd.abs(), kd.abs().transpose(-2, -1)), 16);

  // float32 goes straight to LibTorch, bit for bit; 16-bit CPU tensors take this CPU's path.
  const at::Tensor xf = at::randn({9, 64}), wf = at::randn({48, 64});
  EXPECT_TRUE(gemm::linear(xf, wf).equal(at::linear(xf, wf)));
  EXPECT_TRUE(gemm::matmul(xf, wf.t()).equal(at::matmul(xf, wf.t())));
  const std::string& path = gemm::cpu_path16();
  ASSERT_TRUE(path == "native" || path == "float32") << path;
  const at::Tensor expected = path == "float32" ? gemm::widened_linear(x, w, b) : at::linear(x, w, b);
  EXPECT_TRUE(gemm::linear(x, w, b).equal(expected)) << path;
  EXPECT_TRUE(gemm::matmul(q, k.transpose(-2, -1))
                  .equal(path == "float32" ? gemm::widened_matmul(q, k.transpose(-2, -1)) : at::matmul(q, k.transpose(-2, -1))));
  // float16 widens on every CPU (LibTorch 1.13 has no float16 CPU GEMM to call), at shapes
  // past the few hundred products its bmm loops over itself.
  const at::Tensor xh = x.to(at::kHalf), wh = w.to(at::kHalf), bh = b.to(at::kHalf);
  const at::Tensor qh = at::randn({2, 3, 40, 16}).to(at::kHalf), kh = at::randn({2, 3, 48, 16}).to(at::kHalf);
  EXPECT_TRUE(gemm::linear(xh, wh, bh).equal(gemm::widened_linear(xh, wh, bh)));
  const at::Tensor scores = gemm::matmul(qh, kh.transpose(-2, -1));
  EXPECT_EQ(scores.scalar_type(), at::kHalf);
  EXPECT_TRUE(scores.equal(gemm::widened_matmul(qh, kh.transpose(-2, -1))));
}

}  // namespace
}  // namespace sqlab
