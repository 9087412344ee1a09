// BatchedAttention: random batches of sequences with their own layouts, rules and query ranges
// (the families of random_cases.hpp) over packed Q/O and per-sequence K/V, contiguous or paged.
// forward() equals MultimodalAttention::forward per sequence bit for bit, and the reference to
// 1e-5; forward_split_kv() with forced splits equals decode_attention per sequence bit for bit,
// and with automatic splits the reference; a long sequence among short ones is split by its share
// of the batch. Bad offsets and views throw before anything is written; NaN in another sequence's
// K/V, or in a key a row cannot see, leaves the row's bits unchanged.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mmattn/batched_attention.hpp"
#include "mmattn/decode.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/plan_cache.hpp"
#include "paged_cache.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

constexpr int kBatches = kSlowBuild ? 12 : 60;

// A random batch: 1..5 sequences sharing the first case's heads and tile sizes.
struct Batch {
  std::uint32_t seed = 0;
  AttentionConfig cfg;
  PlanOptions options;
  std::vector<BatchSequence> sequences;
  std::vector<cases::Case> cases;  // for describe()
  std::vector<Buffers> kv;         // per sequence: k, v over its whole layout (q unused)
  Tensor q, out;                   // packed
  std::vector<index_t> cu;
  bool serial = false;

  std::string describe() const {
    std::string s = "batch seed " + std::to_string(seed) + ", " + std::to_string(sequences.size()) + " sequences";
    for (const cases::Case& c : cases) s += "\n" + cases::describe(c);
    return s;
  }
  const Executor executor() const { return serial ? Executor::serial() : Executor::default_executor(); }
};

index_t query_end(const BatchSequence& s) { return s.query_end < 0 ? s.layout.size() : s.query_end; }

Batch random_batch(std::uint32_t seed, bool decode) {
  std::mt19937 gen(seed);
  Batch b;
  b.seed = seed;
  const index_t n = cases::uniform(gen, 1, 5);
  for (index_t i = 0; i < n; ++i) {
    cases::Case c = cases::random_case(seed * 7919u + static_cast<std::uint32_t>(i));
    if (i == 0) {
      b.cfg = c.cfg, b.options = c.options, b.serial = c.serial;
    }
    BatchSequence s{c.layout, c.policy, c.options.query_begin, c.options.query_end};
    if (decode) s = BatchSequence::decode(c.layout, c.policy, std::min<index_t>(cases::uniform(gen, 1, 4), c.layout.size()));
    b.sequences.push_back(s);
    b.cases.push_back(c);
  }
  b.options.all_keys_present = true;  // K/V of every whole layout
  b.cu.assign(1, 0);
  for (index_t i = 0; i < n; ++i) {
    const BatchSequence& s = b.sequences[static_cast<size_t>(i)];
    b.cu.push_back(b.cu.back() + query_end(s) - s.query_begin);
    b.kv.push_back(make_qkv(b.cfg, 1, s.layout.size(), seed * 31u + static_cast<std::uint32_t>(i),
                            b.cases[static_cast<size_t>(i)].kv_storage));
  }
  b.q = random_tensor(b.cu.back(), b.cfg.num_heads, b.cfg.head_dim, seed + 17u, b.cases[0].q_storage);
  b.out = Tensor(b.cu.back(), b.cfg.num_heads, b.cfg.head_dim, b.cases[0].out_storage);
  return b;
}

template <class T>
TensorView<T> rows_of(const TensorView<T>& v, index_t begin, index_t end) {
  return detail::token_rows(v, begin, end - begin);
}

// Every element equal, NaN counting as different.
bool same_values(const TensorView<const float>& a, const TensorView<const float>& b) {
  if (a.tokens != b.tokens || a.heads != b.heads || a.head_dim != b.head_dim) return false;
  bool same = true;
  for_each_index(a, [&](index_t t, index_t h, index_t d) { same = same && a(t, h, d) == b(t, h, d); });
  return same;
}
bool same_values(const LseView& a, const LseView& b) {
  bool same = a.tokens == b.tokens && a.heads == b.heads;
  for (index_t t = 0; same && t < a.tokens; ++t)
    for (index_t h = 0; h < a.heads; ++h) same = same && (a(t, h) == b(t, h));  // -inf == -inf
  return same;
}

std::vector<TensorView<const float>> kv_views(const Batch& b, bool keys) {
  std::vector<TensorView<const float>> views;
  for (const Buffers& x : b.kv) views.push_back(keys ? x.k.cview() : x.v.cview());
  return views;
}

TEST(BatchedAttention, PrefillEqualsPerSequenceBitwiseAndReference) {
  int paged_batches = 0, multi_sequence_batches = 0;
  for (int i = 0; i < kBatches; ++i) {
    Batch b = random_batch(1000u + static_cast<std::uint32_t>(i), /*decode=*/false);
    SCOPED_TRACE(b.describe());
    const BatchedAttention batch(b.cfg, b.sequences, b.options, b.executor());
    ASSERT_EQ(batch.query_offsets(), b.cu);
    multi_sequence_batches += batch.num_sequences() > 1;
    Lse lse(b.cu.back(), b.cfg.num_heads, b.cfg.num_heads + 1);
    const bool paged = i % 3 == 0;
    std::mt19937 gen(static_cast<std::uint32_t>(i));
    std::vector<std::unique_ptr<PagedCache<float>>> pk, pv;
    if (paged) {
      ++paged_batches;
      std::vector<PagedKVView<const float>> kp, vp;
      for (const Buffers& x : b.kv) {
        const index_t block = cases::uniform(gen, 1, 9);
        pk.push_back(std::make_unique<PagedCache<float>>(x.k.view, block, 2, gen));
        pv.push_back(std::make_unique<PagedCache<float>>(x.v.view, block, 1, gen));
        kp.push_back(pk.back()->cview());
        vp.push_back(pv.back()->cview());
      }
      batch.forward(b.q.cview(), b.cu, kp, vp, b.out.view, lse.view);
    } else {
      batch.forward(b.q.cview(), b.cu, kv_views(b, true), kv_views(b, false), b.out.view, lse.view);
    }
    EXPECT_TRUE(b.out.padding_intact());

    for (size_t s = 0; s < b.sequences.size(); ++s) {
      SCOPED_TRACE("sequence " + std::to_string(s));
      const BatchSequence& seq = b.sequences[s];
      PlanOptions options = b.options;
      options.query_begin = seq.query_begin, options.query_end = seq.query_end;
      const MultimodalAttention<float> alone(b.cfg, seq.layout, seq.policy, options, Executor::serial());
      const index_t r0 = b.cu[s], r1 = b.cu[s + 1];
      Tensor out(r1 - r0, b.cfg.num_heads, b.cfg.head_dim);
      Lse l(r1 - r0, b.cfg.num_heads);
      const TensorView<const float> q = rows_of(b.q.cview(), r0, r1);
      alone.forward(q, b.kv[s].k.cview(), b.kv[s].v.cview(), out.view, l.view);
      EXPECT_TRUE(same_values(rows_of(b.out.cview(), r0, r1), out.cview()));
      EXPECT_TRUE(same_values(detail::token_rows(lse.view, r0, r1 - r0), l.view));

      const Result ref = run_reference(b.cfg, q, b.kv[s].k.cview(), b.kv[s].v.cview(), alone.predicate(), seq.query_begin);
      EXPECT_LE(max_relative_error(rows_of(b.out.cview(), r0, r1), ref.out.cview()), 1e-5);
      EXPECT_LE(max_lse_error(detail::token_rows(lse.view, r0, r1 - r0), ref.lse.view), 1e-5);
    }
  }
  EXPECT_GT(paged_batches, 0);
  EXPECT_GT(multi_sequence_batches, kBatches / 2);
}

TEST(BatchedAttention, DecodeEqualsPerSequenceDecode) {
  int split_sequences = 0;  // forced splits that cut a cache: the bitwise comparison covers merges
  for (int i = 0; i < kBatches; ++i) {
    Batch b = random_batch(5000u + static_cast<std::uint32_t>(i), /*decode=*/true);
    SCOPED_TRACE(b.describe());
    PlanOptions options;  // decode_attention's tiles
    options.tiles = DefaultTiles::sizes();
    const Executor executor = i % 2 ? Executor::openmp(3) : Executor::serial();
    const BatchedAttention batch(b.cfg, b.sequences, options, executor);
    std::mt19937 gen(static_cast<std::uint32_t>(i));
    std::vector<std::unique_ptr<PagedCache<float>>> pk, pv;
    std::vector<PagedKVView<const float>> kp, vp;
    for (const Buffers& x : b.kv) {
      const index_t block = cases::uniform(gen, 1, 20);
      pk.push_back(std::make_unique<PagedCache<float>>(x.k.view, block, 1, gen));
      pv.push_back(std::make_unique<PagedCache<float>>(x.v.view, block, 3, gen));
      kp.push_back(pk.back()->cview());
      vp.push_back(pv.back()->cview());
    }
    for (const index_t splits : {index_t{0}, index_t{1}, index_t{3}}) {
      SCOPED_TRACE("splits " + std::to_string(splits));
      SplitKvOptions split;
      split.splits = splits;
      split.min_keys_per_split = splits == 0 ? 4 : 256;  // automatic: let short caches split too
      Tensor out(b.cu.back(), b.cfg.num_heads, b.cfg.head_dim, b.cases[0].out_storage);
      Lse lse(b.cu.back(), b.cfg.num_heads);
      batch.forward_split_kv(b.q.cview(), b.cu, kp, vp, out.view, lse.view, split);
      EXPECT_TRUE(out.padding_intact());
      for (index_t s = 0; splits > 1 && s < batch.num_sequences(); ++s)
        split_sequences += kernel::plan_split_kv(batch.plan(s), b.cfg, executor.concurrency(), split).slots > 1;
      for (size_t s = 0; s < b.sequences.size(); ++s) {
        SCOPED_TRACE("sequence " + std::to_string(s));
        const BatchSequence& seq = b.sequences[s];
        const index_t r0 = b.cu[s], r1 = b.cu[s + 1];
        const TensorView<const float> q = rows_of(b.q.cview(), r0, r1);
        const auto got = rows_of(out.cview(), r0, r1);
        const LseView got_lse = detail::token_rows(lse.view, r0, r1 - r0);
        if (splits > 0 || b.sequences.size() == 1) {  // the same key chunks as alone: the same bits
          Tensor alone(r1 - r0, b.cfg.num_heads, b.cfg.head_dim);
          Lse l(r1 - r0, b.cfg.num_heads);
          DecodeOptions d;
          d.split = split;
          decode_attention(b.cfg, seq.layout, seq.policy, q, kp[s], vp[s], alone.view, l.view, d, executor);
          EXPECT_TRUE(same_values(got, alone.cview()));
          EXPECT_TRUE(same_values(got_lse, l.view));
        }
        const Result ref = run_reference(b.cfg, q, b.kv[s].k.cview(), b.kv[s].v.cview(),
                                         MaskPredicate{&seq.layout, &seq.policy}, seq.query_begin);
        EXPECT_LE(max_relative_error(got, ref.out.cview()), 1e-5);
        EXPECT_LE(max_lse_error(got_lse, ref.lse.view), 1e-5);
      }
    }
  }
  EXPECT_GT(split_sequences, kBatches / 2);
}

// Through a PlanCache: the second batch of the same shapes plans nothing and gives the same bits.
TEST(BatchedAttention, PlanCacheMakesARepeatedBatchALookup) {
  Batch b = random_batch(77u, /*decode=*/false);
  PlanCache cache;
  const BatchedAttention first(b.cfg, b.sequences, b.options, b.executor(), &cache);
  const std::size_t misses = cache.misses(), hits = cache.hits();
  const BatchedAttention second(b.cfg, b.sequences, b.options, b.executor(), &cache);
  EXPECT_EQ(cache.misses(), misses);
  EXPECT_EQ(cache.hits(), hits + b.sequences.size());
  for (index_t s = 0; s < first.num_sequences(); ++s) EXPECT_EQ(&first.plan(s), &second.plan(s));
  Tensor again = b.out;
  first.forward(b.q.cview(), b.cu, kv_views(b, true), kv_views(b, false), b.out.view);
  second.forward(b.q.cview(), b.cu, kv_views(b, true), kv_views(b, false), again.view);
  EXPECT_TRUE(same_values(b.out.cview(), again.cview())) << b.describe();
}

// One long cache among short ones: its share of the batch's cost splits it, the short ones stay
// whole, and the result is the reference's.
TEST(BatchedAttention, LongSequenceAmongShortIsSplit) {
  const AttentionConfig cfg = make_config(4, 2, 16);
  std::vector<BatchSequence> seqs;
  seqs.push_back(BatchSequence::decode(SequenceLayout::images_then_text(2, 16, 16, kSlowBuild ? 200 : 1500),
                                       RegionPolicy::structured(), 1));
  for (int i = 0; i < 5; ++i)
    seqs.push_back(BatchSequence::decode(SequenceLayout::images_then_text(0, 1, 1, 20 + i), RegionPolicy::decoder_causal(), 1));
  const Executor executor = Executor::openmp(2);
  const BatchedAttention batch(cfg, seqs, {}, executor);
  index_t total = 0;
  for (index_t s = 0; s < batch.num_sequences(); ++s) total += detail::plan_cost(batch.plan(s));
  const kernel::SplitPlan long_split =
      kernel::plan_split_kv(batch.plan(0), cfg, executor.concurrency(), {}, kernel::SplitKvBatch{total});
  EXPECT_GT(long_split.chunks.size(), 1u);
  const kernel::SplitPlan short_split =
      kernel::plan_split_kv(batch.plan(1), cfg, executor.concurrency(), {}, kernel::SplitKvBatch{total});
  EXPECT_EQ(short_split.chunks.size(), 1u);

  std::vector<Buffers> kv;
  std::vector<TensorView<const float>> k, v;
  for (index_t s = 0; s < batch.num_sequences(); ++s) {
    kv.push_back(make_qkv(cfg, 1, seqs[static_cast<size_t>(s)].layout.size(), 40u + static_cast<std::uint32_t>(s)));
  }
  for (const Buffers& x : kv) k.push_back(x.k.cview()), v.push_back(x.v.cview());
  const Tensor q = random_tensor(batch.total_queries(), cfg.num_heads, cfg.head_dim, 3);
  Tensor out(batch.total_queries(), cfg.num_heads, cfg.head_dim);
  batch.forward_split_kv(q.cview(), batch.query_offsets(), k, v, out.view);
  for (index_t s = 0; s < batch.num_sequences(); ++s) {
    const auto& seq = seqs[static_cast<size_t>(s)];
    const index_t r0 = batch.query_offsets()[static_cast<size_t>(s)];
    const Result ref = run_reference(cfg, rows_of(q.cview(), r0, r0 + 1), k[static_cast<size_t>(s)],
                                     v[static_cast<size_t>(s)], MaskPredicate{&seq.layout, &seq.policy}, seq.query_begin);
    EXPECT_LE(max_relative_error(rows_of(out.cview(), r0, r0 + 1), ref.out.cview()), 1e-5) << "sequence " << s;
  }
}

// Bad offsets and views: a clear Error, and out (all NaN) untouched.
TEST(BatchedAttention, BadInputThrowsBeforeWriting) {
  const AttentionConfig cfg = make_config(2, 1, 8);
  const std::vector<BatchSequence> seqs = {
      {SequenceLayout::images_then_text(1, 3, 3, 5), RegionPolicy::structured(), 0, -1},
      BatchSequence::decode(SequenceLayout::images_then_text(0, 1, 1, 12), RegionPolicy::decoder_causal(), 2)};
  const BatchedAttention batch(cfg, seqs);
  ASSERT_EQ(batch.query_offsets(), (std::vector<index_t>{0, 14, 16}));
  const Buffers a = make_qkv(cfg, 1, 14, 1), b = make_qkv(cfg, 1, 12, 2);
  const Tensor q = random_tensor(16, 2, 8, 3);
  Tensor out(16, 2, 8);
  const std::vector<TensorView<const float>> k = {a.k.cview(), b.k.cview()}, v = {a.v.cview(), b.v.cview()};
  auto run = [&](std::vector<index_t> cu, std::vector<TensorView<const float>> kk,
                 std::vector<TensorView<const float>> vv) {
    return error_message([&] { batch.forward(q.cview(), cu, kk, vv, out.view); });
  };
  EXPECT_TRUE(contains(run({0, 14}, k, v), "cu_seqlens holds 2 offsets but 2 sequences need 3"));
  EXPECT_TRUE(contains(run({1, 14, 16}, k, v), "cu_seqlens[0] must be 0"));
  EXPECT_TRUE(contains(run({0, 15, 16}, k, v), "gives sequence 0 15 query rows but its query range [0, 14) holds 14"));
  EXPECT_TRUE(contains(run({0, 14, 10}, k, v), "offsets must not decrease"));
  EXPECT_TRUE(contains(run({0, 14, 16, 17}, k, v), "holds 4 offsets"));
  EXPECT_TRUE(contains(run({0, 14, 16}, {a.k.cview()}, v), "k holds 1 views but the batch has 2 sequences"));
  EXPECT_TRUE(contains(run({0, 14, 16}, k, {a.v.cview()}), "v holds 1 views"));
  const Buffers short_b = make_qkv(cfg, 1, 11, 2);
  EXPECT_TRUE(contains(run({0, 14, 16}, {a.k.cview(), short_b.k.cview()}, {a.v.cview(), short_b.v.cview()}),
                       "sequence 1: k holds 11 tokens but its plan reads keys up to position 11"));
  const Buffers wrong_heads = make_qkv(make_config(2, 2, 8), 1, 12, 2);
  EXPECT_TRUE(contains(run({0, 14, 16}, {a.k.cview(), wrong_heads.k.cview()}, v), "sequence 1: k: has 2 heads"));
  const std::string overlap = error_message([&] {
    // Sequence 0's K inside a buffer that also holds the whole output: out overlaps k and nothing
    // else (an output view running past a.k's own storage would meet whatever the heap put there).
    std::vector<float> shared(16 * 2 * 8);
    const std::vector<TensorView<const float>> k_in_shared = {view_thd<const float>(shared.data(), 14, 1, 8),
                                                              b.k.cview()};
    batch.forward(q.cview(), {0, 14, 16}, k_in_shared, v, view_thd(shared.data(), 16, 2, 8));
  });
  EXPECT_TRUE(contains(overlap, "sequence 0: out: overlaps k")) << overlap;
  // A paged view whose table points outside its pool.
  std::mt19937 gen(1);
  PagedCache<float> pk(b.k.view, 4, 0, gen), pv(b.v.view, 4, 0, gen), ak(a.k.view, 4, 0, gen), av(a.v.view, 4, 0, gen);
  pk.table[1] = 9;
  const std::string paged = error_message([&] {
    batch.forward(q.cview(), {0, 14, 16}, std::vector<PagedKVView<const float>>{ak.cview(), pk.cview()},
                  std::vector<PagedKVView<const float>>{av.cview(), pv.cview()}, out.view);
  });
  EXPECT_TRUE(contains(paged, "sequence 1: k: block_table[1] = 9 is outside the pool's 3 blocks")) << paged;
  EXPECT_TRUE(contains(error_message([&] { batch.forward_split_kv(q.cview(), {0, 13, 16}, k, v, out.view); }),
                       "query range [0, 14) holds 14"));
  bool untouched = true;
  for (float x : out.storage) untouched = untouched && std::isnan(x);
  EXPECT_TRUE(untouched);

  EXPECT_TRUE(contains(error_message([&] { (void)BatchedAttention(cfg, std::vector<BatchSequence>{}); }), "batch: no sequences"));
  EXPECT_TRUE(contains(error_message([&] {
                         (void)BatchedAttention(cfg, {{SequenceLayout::images_then_text(0, 1, 1, 4), RegionPolicy::decoder_causal(), 0, -1},
                                                {SequenceLayout::images_then_text(0, 1, 1, 4), RegionPolicy::decoder_causal(), 3, 2}});
                       }),
                       "batch: sequence 1: plan: query range [3, 2)"));
}

// NaN in every K/V row of one sequence and in keys the rows of another cannot see: every other
// row keeps its bits, through forward and forward_split_kv.
TEST(BatchedAttention, PoisonedKeysOfOthersLeaveRowsUnchanged) {
  int unseen_rows = 0;
  for (int i = 0; i < kBatches / 2; ++i) {
    Batch b = random_batch(9000u + static_cast<std::uint32_t>(i), /*decode=*/i % 2 == 1);
    SCOPED_TRACE(b.describe());
    const BatchedAttention batch(b.cfg, b.sequences, b.options, b.executor());
    const size_t n = b.sequences.size();
    std::mt19937 gen(static_cast<std::uint32_t>(i));
    const size_t victim = static_cast<size_t>(cases::uniform(gen, 0, static_cast<index_t>(n) - 1));
    const BatchSequence& vs = b.sequences[victim];
    const index_t key = cases::uniform(gen, 0, vs.layout.size() - 1);  // poisoned in the victim's K/V

    for (int path = 0; path < 2; ++path) {
      SCOPED_TRACE(path ? "forward_split_kv" : "forward");
      auto run = [&](const Batch& x, Tensor& out, Lse& lse) {
        if (path == 0)
          batch.forward(x.q.cview(), x.cu, kv_views(x, true), kv_views(x, false), out.view, lse.view);
        else
          batch.forward_split_kv(x.q.cview(), x.cu, kv_views(x, true), kv_views(x, false), out.view, lse.view);
      };
      Tensor clean(b.cu.back(), b.cfg.num_heads, b.cfg.head_dim), dirty = clean;
      Lse clean_lse(b.cu.back(), b.cfg.num_heads), dirty_lse = clean_lse;
      run(b, clean, clean_lse);
      Batch poisoned = b;
      for (size_t s = 0; s < n; ++s) {
        if (s == victim) {
          for (index_t h = 0; h < b.cfg.num_kv_heads; ++h)
            for (index_t d = 0; d < b.cfg.head_dim; ++d)
              poisoned.kv[s].k.view(key, h, d) = kNaN, poisoned.kv[s].v.view(key, h, d) = kNaN;
        } else if (s == (victim + 1) % n) {
          fill_value(poisoned.kv[s].k.view, kNaN);
          fill_value(poisoned.kv[s].v.view, kNaN);
        }
      }
      run(poisoned, dirty, dirty_lse);
      for (size_t s = 0; s < n; ++s) {
        const BatchSequence& seq = b.sequences[s];
        if (n > 1 && s == (victim + 1) % n) continue;  // its own rows see NaN
        for (index_t qpos = seq.query_begin; qpos < query_end(seq); ++qpos) {
          if (s == victim && allowed(seq.layout, seq.policy, qpos, key)) continue;
          const index_t r = b.cu[s] + qpos - seq.query_begin;
          unseen_rows += s == victim;
          EXPECT_TRUE(same_values(rows_of(dirty.cview(), r, r + 1), rows_of(clean.cview(), r, r + 1)))
              << "sequence " << s << " position " << qpos << " key " << key;
          EXPECT_TRUE(same_values(detail::token_rows(dirty_lse.view, r, 1), detail::token_rows(clean_lse.view, r, 1)));
        }
      }
    }
  }
  EXPECT_GT(unseen_rows, 20);
}

}  // namespace
}  // namespace mmattn::test
