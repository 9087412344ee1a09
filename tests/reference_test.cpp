// The oracle against cases small enough to work out by hand.

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <utility>

#include "mmattn/reference.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

// 1 query, 2 keys, head_dim 2, scale 1: scores (q.k0, q.k1) = (1, 0), so the weights are
// (e, 1) / (e + 1) and lse = log(e + 1).
TEST(Reference, OneQueryTwoKeysIsSoftmaxByHand) {
  AttentionConfig cfg = make_config(1, 1, 2);
  cfg.scale = 1.0f;
  Tensor q(1, 1, 2), k(2, 1, 2), v(2, 1, 2);
  q.view(0, 0, 0) = 1, q.view(0, 0, 1) = 0;
  k.view(0, 0, 0) = 1, k.view(0, 0, 1) = 0;
  k.view(1, 0, 0) = 0, k.view(1, 0, 1) = 1;
  v.view(0, 0, 0) = 1, v.view(0, 0, 1) = 2;
  v.view(1, 0, 0) = 3, v.view(1, 0, 1) = 4;

  const Result r = run_reference(cfg, q.cview(), k.cview(), v.cview(), AllKeys{});
  const double e = std::exp(1.0), p0 = e / (e + 1), p1 = 1 / (e + 1);
  EXPECT_NEAR(r.out.view(0, 0, 0), p0 * 1 + p1 * 3, 1e-6);
  EXPECT_NEAR(r.out.view(0, 0, 1), p0 * 2 + p1 * 4, 1e-6);
  EXPECT_NEAR(r.lse(0, 0), std::log(e + 1), 1e-6);
}

// Same inputs with the default scale 1/sqrt(2): scores (1/sqrt(2), 0).
TEST(Reference, DefaultScaleIsOneOverSqrtHeadDim) {
  const AttentionConfig cfg = make_config(1, 1, 2);
  Tensor q(1, 1, 2), k(2, 1, 2), v(2, 1, 2);
  q.view(0, 0, 0) = 1, q.view(0, 0, 1) = 0;
  k.view(0, 0, 0) = 1, k.view(0, 0, 1) = 0;
  k.view(1, 0, 0) = 0, k.view(1, 0, 1) = 1;
  v.view(0, 0, 0) = 1, v.view(0, 0, 1) = 2;
  v.view(1, 0, 0) = 3, v.view(1, 0, 1) = 4;

  const Result r = run_reference(cfg, q.cview(), k.cview(), v.cview(), AllKeys{});
  const double s0 = 1 / std::sqrt(2.0), w0 = std::exp(s0), w1 = 1.0;
  EXPECT_NEAR(r.out.view(0, 0, 0), (w0 * 1 + w1 * 3) / (w0 + w1), 1e-6);
  EXPECT_NEAR(r.out.view(0, 0, 1), (w0 * 2 + w1 * 4) / (w0 + w1), 1e-6);
  EXPECT_NEAR(r.lse(0, 0), std::log(w0 + w1), 1e-6);
}

// Masking one key out leaves the other's value exactly, and lse = its score.
TEST(Reference, MaskedKeyIsIgnored) {
  AttentionConfig cfg = make_config(1, 1, 2);
  cfg.scale = 0.5f;
  Tensor q(1, 1, 2), k(2, 1, 2), v(2, 1, 2);
  q.view(0, 0, 0) = 2, q.view(0, 0, 1) = 3;
  k.view(0, 0, 0) = 1, k.view(0, 0, 1) = 1;
  k.view(1, 0, 0) = 100, k.view(1, 0, 1) = 100;  // would dominate if it leaked through
  v.view(0, 0, 0) = 5, v.view(0, 0, 1) = -7;
  v.view(1, 0, 0) = 1e6f, v.view(1, 0, 1) = 1e6f;

  const Result r = run_reference(cfg, q.cview(), k.cview(), v.cview(), [](index_t, index_t key) { return key == 0; });
  EXPECT_FLOAT_EQ(r.out.view(0, 0, 0), 5.0f);
  EXPECT_FLOAT_EQ(r.out.view(0, 0, 1), -7.0f);
  EXPECT_NEAR(r.lse(0, 0), 0.5 * (2 + 3), 1e-6);
}

// Uniform scores (Q = 0): each row's output is the mean of its allowed values, lse = log(count).
TEST(Reference, ZeroQueryAveragesAllowedValues) {
  const AttentionConfig cfg = make_config(1, 1, 3);
  Tensor q(1, 1, 3), k = random_tensor(5, 1, 3, 7), v(5, 1, 3);
  fill_value(q.view, 0.0f);
  for_each_index(v.view, [&](index_t t, index_t, index_t d) { v.view(t, 0, d) = float(t * 10 + d); });

  const Result r = run_reference(cfg, q.cview(), k.cview(), v.cview(), AllKeys{});
  for (index_t d = 0; d < 3; ++d) EXPECT_NEAR(r.out.view(0, 0, d), 20.0 + d, 1e-5);  // mean of t*10 over t < 5
  EXPECT_NEAR(r.lse(0, 0), std::log(5.0), 1e-6);
}

// A row with no allowed key gets zeros and lse = -inf; its neighbours are unaffected.
TEST(Reference, EmptyRowsGiveZerosAndNegativeInfinityLse) {
  const AttentionConfig cfg = make_config(2, 1, 4);
  const Buffers b = make_qkv(cfg, 6, 5, 11);
  const auto even_rows_only = [](index_t q, index_t) { return q % 2 == 0; };
  const Result masked = run_reference(cfg, b, even_rows_only);
  const Result dense = run_reference(cfg, b, AllKeys{});
  for (index_t t = 0; t < 6; ++t)
    for (index_t h = 0; h < 2; ++h) {
      if (t % 2 == 1) {
        EXPECT_EQ(masked.lse(t, h), -kInf) << "t=" << t << " h=" << h;
        for (index_t d = 0; d < 4; ++d) EXPECT_EQ(masked.out.view(t, h, d), 0.0f) << "t=" << t << " d=" << d;
      } else {
        EXPECT_EQ(masked.lse(t, h), dense.lse(t, h));
        for (index_t d = 0; d < 4; ++d) EXPECT_EQ(masked.out.view(t, h, d), dense.out.view(t, h, d));
      }
    }
}

TEST(Reference, NoKeysAtAllGivesZerosAndNegativeInfinityLse) {
  const AttentionConfig cfg = make_config(2, 2, 4);
  const Buffers b = make_qkv(cfg, 3, 0, 5);
  const Result r = run_reference(cfg, b, AllKeys{});
  for_each_index(r.out.view, [&](index_t t, index_t h, index_t d) { EXPECT_EQ(r.out.view(t, h, d), 0.0f); });
  for (index_t t = 0; t < 3; ++t)
    for (index_t h = 0; h < 2; ++h) EXPECT_EQ(r.lse(t, h), -kInf);
}

// One key per kv head, each distinct: O(i, h) = V(0, h / group) exactly and
// lse(i, h) = scale * q(i, h) . k(0, h / group), which identifies the kv head from both K and V.
class ReferenceGqa : public ::testing::TestWithParam<index_t> {};

TEST_P(ReferenceGqa, QueryHeadMapsToKvHeadOfItsGroup) {
  const index_t heads = 4, kv_heads = GetParam(), dim = 3, group = heads / kv_heads;
  AttentionConfig cfg = make_config(heads, kv_heads, dim);
  cfg.scale = 0.25f;
  const Tensor q = random_tensor(2, heads, dim, 3);
  Tensor k(1, kv_heads, dim), v(1, kv_heads, dim);
  for (index_t g = 0; g < kv_heads; ++g)
    for (index_t d = 0; d < dim; ++d) {
      k.view(0, g, d) = float(g + 1) * (d == g % dim ? 1.0f : -0.5f);
      v.view(0, g, d) = float(100 * (g + 1) + d);
    }
  const Result r = run_reference(cfg, q.cview(), k.cview(), v.cview(), AllKeys{});
  for (index_t i = 0; i < 2; ++i)
    for (index_t h = 0; h < heads; ++h) {
      const index_t g = h / group;
      double dot = 0;
      for (index_t d = 0; d < dim; ++d) {
        EXPECT_EQ(r.out.view(i, h, d), float(100 * (g + 1) + d)) << "i=" << i << " h=" << h;
        dot += double(q.view(i, h, d)) * double(k.view(0, g, d));
      }
      EXPECT_NEAR(r.lse(i, h), 0.25 * dot, 1e-6) << "i=" << i << " h=" << h;
    }
}

INSTANTIATE_TEST_SUITE_P(KvHeads, ReferenceGqa, ::testing::Values<index_t>(1, 2, 4),
                         [](const auto& info) { return "kv" + std::to_string(info.param); });

// GQA equals MHA with the K/V heads repeated group times.
TEST(Reference, GqaEqualsMhaWithRepeatedKvHeads) {
  const AttentionConfig gqa = make_config(6, 2, 5), mha = make_config(6, 6, 5);
  const Buffers b = make_qkv(gqa, 4, 7, 21);
  Tensor k_rep(7, 6, 5), v_rep(7, 6, 5);
  for_each_index(k_rep.view, [&](index_t t, index_t h, index_t d) {
    k_rep.view(t, h, d) = b.k.view(t, h / 3, d);
    v_rep.view(t, h, d) = b.v.view(t, h / 3, d);
  });
  const Result a = run_reference(gqa, b, CausalKeys{});
  const Result m = run_reference(mha, b.q.cview(), k_rep.cview(), v_rep.cview(), CausalKeys{});
  EXPECT_TRUE(same_bits(a.out.storage, m.out.storage));
  EXPECT_TRUE(same_bits(a.lse.storage, m.lse.storage));
}

// Query row i is asked about as position query_offset + i; keys as 0..key_tokens-1.
TEST(Reference, QueryOffsetShiftsQueryPositions) {
  const AttentionConfig cfg = make_config(1, 1, 2);
  const Buffers b = make_qkv(cfg, 3, 8, 1);
  std::set<std::pair<index_t, index_t>> asked;
  const auto record = [&](index_t qpos, index_t kpos) {
    asked.insert({qpos, kpos});
    return true;
  };
  run_reference(cfg, b, record, /*query_offset=*/5);
  std::set<std::pair<index_t, index_t>> expected;
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 8; ++j) expected.insert({5 + i, j});
  EXPECT_EQ(asked, expected);
}

// Causal with offset o and Q = 0: row i sees keys 0..o+i uniformly, so O = their mean value and
// lse = log(o + i + 1).
TEST(Reference, CausalWithQueryOffsetByHand) {
  const AttentionConfig cfg = make_config(1, 1, 2);
  const index_t offset = 3, queries = 4, keys = 7;
  Tensor q(queries, 1, 2), v(keys, 1, 2);
  const Tensor k = random_tensor(keys, 1, 2, 9);
  fill_value(q.view, 0.0f);
  for (index_t j = 0; j < keys; ++j) v.view(j, 0, 0) = float(j), v.view(j, 0, 1) = float(j * j);

  const Result r = run_reference(cfg, q.cview(), k.cview(), v.cview(), CausalKeys{}, offset);
  for (index_t i = 0; i < queries; ++i) {
    const index_t n = offset + i + 1;  // keys 0..offset+i
    double mean = 0, mean_sq = 0;
    for (index_t j = 0; j < n; ++j) mean += double(j) / n, mean_sq += double(j * j) / n;
    EXPECT_NEAR(r.out.view(i, 0, 0), mean, 1e-5) << "i=" << i;
    EXPECT_NEAR(r.out.view(i, 0, 1), mean_sq, 1e-5) << "i=" << i;
    EXPECT_NEAR(r.lse(i, 0), std::log(double(n)), 1e-6) << "i=" << i;
  }
}

// Strides are a storage choice only: every layout gives bit-identical results, and the
// oracle neither reads nor writes the NaN padding.
TEST(Reference, StridedViewsGiveIdenticalResults) {
  const AttentionConfig cfg = make_config(4, 2, 6);
  const Buffers b = make_qkv(cfg, 9, 11, 31);
  const Result base = run_reference(cfg, b, CausalKeys{});
  for (Storage s : {Storage::padded_tokens, Storage::heads_major, Storage::dim_strided}) {
    const Buffers sb = b.restrided(s, s);
    Tensor out(9, 4, 6, s);
    Lse lse(9, 4, /*token_stride=*/4 + 2);
    reference_attention(cfg, sb.q.cview(), sb.k.cview(), sb.v.cview(), out.view, lse.view, CausalKeys{});
    EXPECT_EQ(max_relative_error(out, base.out), 0.0) << storage_name(s);
    EXPECT_EQ(max_lse_error(lse, base.lse), 0.0) << storage_name(s);
    EXPECT_TRUE(out.padding_intact()) << storage_name(s);
    for (index_t t = 0; t < 9; ++t)
      for (index_t h = 4; h < 6; ++h) EXPECT_TRUE(std::isnan(lse.storage[size_t(t * 6 + h)])) << "lse gap written";
  }
}

// The log-sum-exp output is optional.
TEST(Reference, LseIsOptional) {
  const AttentionConfig cfg = make_config(2, 1, 4);
  const Buffers b = make_qkv(cfg, 5, 5, 2);
  const Result with = run_reference(cfg, b, AllKeys{});
  Tensor out(5, 2, 4);
  reference_attention(cfg, b.q.cview(), b.k.cview(), b.v.cview(), out.view, LseView{}, AllKeys{});
  EXPECT_TRUE(same_bits(out.storage, with.out.storage));
}

// The helpers the other tests rely on.
TEST(TestUtil, MaxRelativeErrorIsNormwise) {
  Tensor a(1, 1, 3), e(1, 1, 3);
  e.view(0, 0, 0) = 10, e.view(0, 0, 1) = -20, e.view(0, 0, 2) = 0;
  a.view(0, 0, 0) = 10, a.view(0, 0, 1) = -20, a.view(0, 0, 2) = 1;
  EXPECT_DOUBLE_EQ(max_relative_error(a, e), 1.0 / 20.0);
  a.view(0, 0, 2) = kNaN;
  EXPECT_EQ(max_relative_error(a, e), std::numeric_limits<double>::infinity());
  EXPECT_EQ(max_relative_error(e, e), 0.0);
}

TEST(TestUtil, StridedTensorsHoldNaNPaddingAndSameValues) {
  const Tensor base = random_tensor(5, 3, 4, 1);
  for (Storage s : {Storage::contiguous, Storage::padded_tokens, Storage::heads_major, Storage::dim_strided}) {
    const Tensor t = restride(base, s);
    EXPECT_EQ(max_relative_error(t, base), 0.0) << storage_name(s);
    EXPECT_TRUE(t.padding_intact()) << storage_name(s);
    EXPECT_TRUE(std::isnan(t.storage.back())) << storage_name(s);
  }
  EXPECT_TRUE(restride(base, Storage::padded_tokens).view.token_stride == 3 * 4 + 3);
  EXPECT_TRUE(restride(base, Storage::dim_strided).view.dim_stride == 2);
}

// The sampled check examples, the advisor and benchmarks use: ~0 on the reference's own rows, NaN
// (so any `err <= tol` fails) when a checked row holds a NaN, and blind to rows not sampled.
TEST(Reference, SampledRelativeErrorCountsNaNAsAFailure) {
  const AttentionConfig cfg = make_config(2, 1, 8);
  const Buffers b = make_qkv(cfg, 6, 6, 3);
  Result r = run_reference(cfg, b, CausalKeys{});
  const auto out = r.out.cview();
  EXPECT_LE(sampled_relative_error(cfg, b.q.cview(), b.k.cview(), b.v.cview(), out, {0, 3, 5}, CausalKeys{}), 1e-6);
  r.out.view(3, 1, 2) = kNaN;
  EXPECT_TRUE(std::isnan(
      sampled_relative_error(cfg, b.q.cview(), b.k.cview(), b.v.cview(), r.out.cview(), {0, 3, 5}, CausalKeys{})));
  EXPECT_LE(sampled_relative_error(cfg, b.q.cview(), b.k.cview(), b.v.cview(), r.out.cview(), {0, 5}, CausalKeys{}),
            1e-6);
}

}  // namespace
}  // namespace mmattn::test
