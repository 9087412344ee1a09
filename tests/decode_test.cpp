// Decode and split-KV: the last 1..4 positions of random layouts (the families of
// multimodal_attention_test.cpp) against the reference, with the keys split automatically or into
// forced chunk counts, contiguous or paged caches, fp32 or bf16 K/V, serial and threaded
// executors; chunks whose rows see no key; tiles that see nothing; the split planner's invariants.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>

#include "mmattn/decode.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/paged_kv.hpp"
#include "mmattn/reference.hpp"
#include "paged_cache.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"
#include "typed_tensor.hpp"

namespace mmattn::test {
namespace {

using bf16 = Eigen::bfloat16;
constexpr int kCases = 240;

struct DecodeCase {
  cases::Case base;
  index_t new_tokens = 1;
  SplitKvOptions split;
  int executor = 0;  // 0 default, 1 serial, 2 OpenMP x 4 (threads > cores), 3 serial claiming 16 workers
  bool paged = false;
  index_t block_size = 16;
  int kv_type = 0;  // 0 float, 1 bf16, 2 f16
};

Executor make_executor(int which) {
  switch (which) {
    case 1: return Executor::serial();
    case 2: return Executor::openmp(4);
    case 3:
      return Executor::custom(
          [](index_t n, const Executor::Body& body) {
            for (index_t i = 0; i < n; ++i) body(i);
          },
          /*concurrency=*/16);
    default: return Executor::default_executor();
  }
}

std::string describe(const DecodeCase& d) {
  return cases::describe(d.base) + "\n  decode: " + std::to_string(d.new_tokens) + " new tokens, splits " +
         std::to_string(d.split.splits) + ", executor " + std::to_string(d.executor) +
         (d.paged ? ", paged block " + std::to_string(d.block_size) : ", contiguous") + (d.kv_type == 1 ? ", bf16 K/V" : d.kv_type == 2 ? ", f16 K/V" : "");
}

DecodeCase random_decode_case(std::uint32_t seed) {
  DecodeCase d;
  d.base = cases::random_case(seed);
  std::mt19937 gen(seed ^ 0x5eedu);
  const index_t n = d.base.layout.size();
  d.new_tokens = cases::uniform(gen, 1, std::min<index_t>(4, n));
  const index_t splits[] = {0, 0, 0, 1, 2, 3, 7, 64};
  d.split.splits = splits[cases::uniform(gen, 0, 7)];
  d.split.min_keys_per_split = cases::uniform(gen, 1, 3) == 1 ? 256 : cases::uniform(gen, 1, 16);  // let small caches split
  d.executor = static_cast<int>(cases::uniform(gen, 0, 3));
  d.paged = gen() % 2;
  const index_t block_sizes[] = {1, 3, 5, 8, 16, 17};
  d.block_size = block_sizes[cases::uniform(gen, 0, 5)];
  d.kv_type = gen() % 3 == 0 ? 1 : gen() % 4 == 0 ? 2 : 0;
  return d;
}

struct Worst {
  double o = 0, lse = 0;
  int split_runs = 0;
};

template <class TKV, class KView>
std::string check_decode(const DecodeCase& d, const Buffers& b, const KView& k, const KView& v, Worst& worst) {
  const cases::Case& c = d.base;
  const index_t m = d.new_tokens, n = c.layout.size();
  Tensor out(m, c.cfg.num_heads, c.cfg.head_dim, c.out_storage);
  Lse lse(m, c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
  DecodeOptions options;
  options.tiles = c.options.tiles;
  options.split = d.split;
  const Executor executor = make_executor(d.executor);
  decode_attention(c.cfg, c.layout, c.policy, b.q.cview(), k, v, out.view, lse.view, options, executor);

  const Plan plan = plan_decode(c.layout, c.policy, m, c.options.tiles);
  const kernel::SplitPlan sp = kernel::plan_split_kv(plan, c.cfg, executor.concurrency(), d.split);
  worst.split_runs += sp.slots > 1;

  // The reference on the values the kernel reads (K and V rounded to TKV).
  const TypedTensor<TKV> kr_typed(b.k), vr_typed(b.v);
  const Tensor kr = kr_typed.widened(), vr = vr_typed.widened();
  const Result ref = run_reference(c.cfg, b.q.cview(), kr.cview(), vr.cview(), MaskPredicate{&c.layout, &c.policy}, n - m);
  std::string problems;
  const double o_err = max_relative_error(out, ref.out), l_err = max_lse_error(lse, ref.lse);
  if (!(o_err <= 1e-5)) problems += " O error " + std::to_string(o_err) + ";";
  if (!(l_err <= 1e-5)) problems += " LSE error " + std::to_string(l_err) + ";";
  if (!out.padding_intact()) problems += " output padding written;";
  worst.o = std::max(worst.o, o_err), worst.lse = std::max(worst.lse, l_err);
  return problems;
}

template <class TKV>
std::string run_decode_case(const DecodeCase& d, Worst& worst) {
  const cases::Case& c = d.base;
  const index_t m = d.new_tokens, n = c.layout.size();
  const Buffers b = make_qkv(c.cfg, m, n, c.seed);
  const TypedTensor<TKV> k(restride(b.k, c.kv_storage)), v(restride(b.v, c.kv_storage));
  if (!d.paged) return check_decode<TKV>(d, b, k.cview(), v.cview(), worst);
  std::mt19937 gen(c.seed);
  const PagedCache<TKV> pk(k.cview(), d.block_size, 3, gen), pv(v.cview(), d.block_size, 2, gen);
  return check_decode<TKV>(d, b, pk.cview(), pv.cview(), worst);
}

TEST(Decode, MatchesReferenceOverRandomCases) {
  std::map<std::string, int> families;
  int failed = 0;
  Worst worst;
  for (int i = 0; i < kCases; ++i) {
    const DecodeCase d = random_decode_case(0xdec00000u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(describe(d));
    ++families[d.base.family];
    std::string problems;
    const std::string err = error_message([&] {
      problems = d.kv_type == 1   ? run_decode_case<bf16>(d, worst)
                 : d.kv_type == 2 ? run_decode_case<Eigen::half>(d, worst)
                                  : run_decode_case<float>(d, worst);
    });
    if (err != "<no exception>") problems = " threw: " + err;
    if (!problems.empty() && ++failed <= 5) ADD_FAILURE() << "case failed:" << problems;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases << " cases (first 5 shown)";
  std::printf("%d cases (%d split over keys); worst O relative error %.3g, worst LSE error %.3g\n", kCases,
              worst.split_runs, worst.o, worst.lse);
  EXPECT_GE(worst.split_runs, kCases / 4);
  for (const auto& [family, count] : families) EXPECT_GE(count, 5) << family;
}

// The runtime's case: 4 images then text, one new text token, GQA, bf16 cache: the keys are split
// over the workers, and the token sees every image and all earlier text.
TEST(Decode, StructuredPolicyLongTextSplitsAndMatchesForward) {
  const SequenceLayout layout = SequenceLayout::images_then_text(4, 6, 6, kSlowBuild ? 200 : 700);
  const RegionPolicy policy = RegionPolicy::structured();
  const AttentionConfig cfg = make_config(8, 2, 64);
  const index_t n = layout.size();
  const Buffers b = make_qkv(cfg, 1, n, 2024);
  const TypedTensor<bf16> k(b.k), v(b.v);
  const Executor executor = make_executor(3);  // 16 workers claimed: must split
  DecodeOptions options;
  options.split.min_keys_per_split = 64;  // the short sanitizer-build cache splits too
  Tensor out(1, cfg.num_heads, cfg.head_dim);
  Lse lse(1, cfg.num_heads);
  decode_attention(cfg, layout, policy, b.q.cview(), k.cview(), v.cview(), out.view, lse.view, options, executor);

  const Plan plan = plan_decode(layout, policy, 1);
  const kernel::SplitPlan sp = kernel::plan_split_kv(plan, cfg, executor.concurrency(), options.split);
  EXPECT_EQ(sp.heads_per_item, 8);  // one item runs every head over its keys
  EXPECT_GT(sp.slots, 1);
  const Tensor kr = k.widened(), vr = v.widened();
  const Result ref = run_reference(cfg, b.q.cview(), kr.cview(), vr.cview(), MaskPredicate{&layout, &policy}, n - 1);
  EXPECT_LE(max_relative_error(out, ref.out), 1e-5);
  EXPECT_LE(max_lse_error(lse, ref.lse), 1e-5);

  // The same through MultimodalAttention: forward (no split) and forward_split_kv.
  PlanOptions last;
  last.query_begin = n - 1;
  const MultimodalAttention<float> mm(cfg, layout, policy, last, executor);
  Tensor plain(1, cfg.num_heads, cfg.head_dim), split(1, cfg.num_heads, cfg.head_dim);
  mm.forward(b.q.cview(), k.cview(), v.cview(), plain.view);
  mm.forward_split_kv(b.q.cview(), k.cview(), v.cview(), split.view, {}, options.split);
  // forward runs the prefill kernel (micro-kernels on this CPU), decode the all-heads kernel: two
  // orders of summation, each within the reference's tolerance above.
  EXPECT_LE(max_relative_error(plain, out), 1e-5);
  EXPECT_TRUE(same_bits(split.storage, out.storage));
}

// One key per block and a 1x1 image window: each new image token sees only itself, so with a
// chunk per block every chunk but one is all masked for each row (lse -inf, weight 0).
TEST(Decode, ChunksWhoseRowsSeeNoKey) {
  SequenceLayout layout;
  layout.add_text(5).add_image(3, 4);
  RegionPolicy policy;
  policy.set(Region::within(SegmentKind::image), Rule::windowed(Window2D::sliding(1, 1)).and_causal());
  policy.set(Region::across(SegmentKind::image, SegmentKind::text), Rule::none());
  const AttentionConfig cfg = make_config(2, 1, 8);
  const index_t n = layout.size(), m = 3;
  const Buffers b = make_qkv(cfg, m, n, 8);
  DecodeOptions options;
  options.tiles = {8, 1};
  for (const index_t splits : {index_t{2}, index_t{3}}) {
    options.split.splits = splits;
    Tensor out(m, cfg.num_heads, cfg.head_dim);
    Lse lse(m, cfg.num_heads);
    decode_attention(cfg, layout, policy, b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view, options,
                     Executor::serial());
    const Result ref = run_reference(cfg, b, MaskPredicate{&layout, &policy}, n - m);
    EXPECT_LE(max_relative_error(out, ref.out), 1e-6) << splits;
    EXPECT_LE(max_lse_error(lse, ref.lse), 1e-6) << splits;
    // Each row is its own V row exactly: one key, weight 1.
    for_each_index(out.view, [&](index_t t, index_t h, index_t d) {
      EXPECT_EQ(out.view(t, h, d), b.v.view(n - m + t, 0, d));
    });
  }
}

// New tokens that see nothing (an image whose rules are all none): zeros and -inf, split or not.
TEST(Decode, TokensThatSeeNothing) {
  SequenceLayout layout;
  layout.add_text(300).add_image(2, 3);
  RegionPolicy policy;
  policy.set(SegmentKind::text, SegmentKind::text, Rule::causal());
  const AttentionConfig cfg = make_config(3, 1, 16);
  const index_t n = layout.size(), m = 4;
  const Buffers b = make_qkv(cfg, m, n, 9);
  for (const index_t splits : {index_t{0}, index_t{5}}) {
    DecodeOptions options;
    options.split.splits = splits;
    Tensor out(m, cfg.num_heads, cfg.head_dim);
    Lse lse(m, cfg.num_heads);
    decode_attention(cfg, layout, policy, b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view, options,
                     make_executor(3));
    for_each_index(out.view, [&](index_t t, index_t h, index_t d) { ASSERT_EQ(out.view(t, h, d), 0.0f); });
    for (index_t t = 0; t < m; ++t)
      for (index_t h = 0; h < cfg.num_heads; ++h) EXPECT_EQ(lse(t, h), -kInf);
  }
}

// Paged and contiguous caches give the same bits: the same rows reach the same kernel.
TEST(Decode, PagedEqualsContiguousBitwise) {
  const SequenceLayout layout = SequenceLayout::images_then_text(2, 5, 7, 333);  // 403 tokens
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  const AttentionConfig cfg = make_config(6, 2, 32);
  const index_t n = layout.size();
  for (const index_t m : {index_t{1}, index_t{3}}) {
    const Buffers b = make_qkv(cfg, m, n, 10 + static_cast<std::uint32_t>(m));
    const TypedTensor<bf16> k(b.k), v(b.v);
    std::mt19937 gen(static_cast<std::uint32_t>(m));
    for (const index_t block : {index_t{7}, index_t{16}, index_t{64}}) {  // 7 and 64 do not divide 403
      SCOPED_TRACE("m " + std::to_string(m) + ", block " + std::to_string(block));
      const PagedCache<bf16> pk(k.cview(), block, 5, gen), pv(v.cview(), block, 0, gen);
      for (const index_t splits : {index_t{0}, index_t{1}, index_t{4}}) {
        DecodeOptions options;
        options.split.splits = splits;
        Tensor a(m, cfg.num_heads, cfg.head_dim), p(m, cfg.num_heads, cfg.head_dim);
        Lse la(m, cfg.num_heads), lp(m, cfg.num_heads);
        decode_attention(cfg, layout, policy, b.q.cview(), k.cview(), v.cview(), a.view, la.view, options);
        decode_attention(cfg, layout, policy, b.q.cview(), pk.cview(), pv.cview(), p.view, lp.view, options);
        EXPECT_TRUE(same_bits(a.storage, p.storage)) << splits;
        EXPECT_TRUE(same_bits(la.storage, lp.storage)) << splits;
      }
    }
  }
}

// The split planner: every tile's blocks are covered once, in order, by non-empty chunks of about
// equal key count; costliest first; the automatic count follows the executor's concurrency.
// A chunk of many rows (attend_tile, a head per item) whose keys are a long causal run: forced
// splits cut inside the run's block, and every split gives the reference's rows and LSEs.
TEST(Decode, SplitsInsideALongBlockMatchTheReference) {
  const SequenceLayout layout = SequenceLayout::images_then_text(2, 5, 5, 700);
  const RegionPolicy policy = RegionPolicy::structured();
  const AttentionConfig cfg = make_config(4, 2, 32);
  const index_t n = layout.size(), q0 = n - 100;
  const Buffers b = make_qkv(cfg, 100, n, 77);
  const Result ref = run_reference(cfg, b, MaskPredicate{&layout, &policy}, q0);
  PlanOptions options;
  options.query_begin = q0;
  options.tiles.key = 48, options.tiles.query = 64;
  const Executor serial16 = Executor::custom(
      [](index_t items, const Executor::Body& body) {
        for (index_t i = 0; i < items; ++i) body(i);
      },
      16);
  const MultimodalAttention<float> attention(cfg, layout, policy, options, serial16);
  const Plan& plan = attention.plan();
  index_t longest = 0;
  for (const KeyBlock& block : plan.blocks) longest = std::max(longest, block.keys.size());
  ASSERT_GT(longest, 4 * plan.tiles.key);
  for (const index_t splits : {0, 1, 2, 3, 5, 7, 13, 100}) {
    SCOPED_TRACE("splits " + std::to_string(splits));
    SplitKvOptions split;
    split.splits = splits;
    split.min_keys_per_split = 8;
    ASSERT_EQ(kernel::plan_split_kv(plan, cfg, 16, split).heads_per_item, 1);
    Tensor out(100, cfg.num_heads, cfg.head_dim);
    Lse lse(100, cfg.num_heads);
    attention.forward_split_kv(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view, split);
    EXPECT_LE(max_relative_error(out, ref.out), 1e-5);
    EXPECT_LE(max_lse_error(lse, ref.lse), 1e-5);
  }
}

TEST(Decode, SplitPlanCoversEveryPieceOnce) {
  const SequenceLayout layout = SequenceLayout::images_then_text(3, 8, 8, 2000);
  const AttentionConfig mha = make_config(1, 1, 64), gqa = make_config(8, 2, 64);
  for (const index_t m : {index_t{1}, index_t{4}, index_t{100}}) {
    const Plan plan = plan_decode(layout, RegionPolicy::structured(), m);
    for (const int workers : {1, 2, 8, 64}) {
      for (const index_t splits : {index_t{0}, index_t{3}, index_t{1000}}) {
        SCOPED_TRACE("m " + std::to_string(m) + ", workers " + std::to_string(workers) + ", splits " +
                     std::to_string(splits));
        SplitKvOptions options;
        options.splits = splits;
        const kernel::SplitPlan sp = kernel::plan_split_kv(plan, mha, workers, options);
        std::vector<index_t> next(plan.query_tiles.size(), 0);  // the next piece each tile's chunks must start at
        std::vector<std::vector<kernel::KeyChunk>> by_tile(plan.query_tiles.size());
        for (const kernel::KeyChunk& c : sp.chunks) by_tile[static_cast<size_t>(c.tile)].push_back(c);
        for (size_t i = 1; i < sp.chunks.size(); ++i) EXPECT_GE(sp.chunks[i - 1].cost, sp.chunks[i].cost);
        for (size_t t = 0; t < by_tile.size(); ++t) {
          auto& cs = by_tile[t];
          const QueryTile& tile = plan.query_tiles[t];
          std::sort(cs.begin(), cs.end(), [](auto& a, auto& b) { return a.slot < b.slot; });
          ASSERT_EQ(static_cast<index_t>(cs.size()), sp.tile_chunks[t]);
          index_t max_keys = 0, min_keys = 1 << 30;
          for (size_t s = 0; s < cs.size(); ++s) {
            EXPECT_EQ(cs[s].slot, static_cast<index_t>(s));
            EXPECT_EQ(cs[s].pieces.begin, next[t]);
            EXPECT_TRUE(cs[s].pieces.end > cs[s].pieces.begin || cs.size() == 1);
            next[t] = cs[s].pieces.end;
            index_t chunk_keys = 0;
            plan.for_each_piece(tile, cs[s].pieces, [&](index_t, const KeyBlock& p) { chunk_keys += p.keys.size(); });
            EXPECT_EQ(cs[s].cost, chunk_keys * tile.queries.size());
            max_keys = std::max(max_keys, chunk_keys), min_keys = std::min(min_keys, chunk_keys);
          }
          index_t pieces = 0;
          for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
            const index_t keys = plan.blocks[static_cast<size_t>(b)].keys.size();
            pieces += (keys + plan.tiles.key - 1) / plan.tiles.key;
          }
          EXPECT_EQ(next[t], pieces);
          EXPECT_LE(max_keys - min_keys, 2 * plan.tiles.key);
          if (splits > 0) {
            EXPECT_EQ(sp.tile_chunks[t], std::min(splits, pieces));
          }
        }
        if (splits == 0 && m == 1) {
          // One (tile, head) item: 4 chunks per worker, at least 256 keys each.
          const index_t keys = plan.query_tiles[0].computed_pairs;
          EXPECT_EQ(sp.tile_chunks[0], std::min<index_t>(4 * workers, keys / 256)) << keys;
        }
      }
    }
    // All heads per item while a KV head's query rows stay few, head by head past that.
    const kernel::SplitPlan g = kernel::plan_split_kv(plan, gqa, 2, {});
    EXPECT_EQ(g.heads_per_item, plan.max_query_tile() * 4 <= kernel::kMaxDecodeRowsPerKvHead ? 8 : 1);
    EXPECT_EQ(g.heads_per_item, m == 100 ? 1 : 8);
  }
}

TEST(Decode, Validation) {
  const SequenceLayout layout = SequenceLayout::images_then_text(1, 2, 2, 5);  // 9 tokens
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(1, 1));
  const AttentionConfig cfg = make_config(2, 1, 8);
  const Buffers b = make_qkv(cfg, 2, 9, 1);
  Tensor out(2, 2, 8);
  {
    const Buffers short_cache = make_qkv(cfg, 2, 8, 1);
    const std::string msg = error_message([&] {
      decode_attention(cfg, layout, policy, b.q.cview(), short_cache.k.cview(), short_cache.v.cview(), out.view);
    });
    EXPECT_TRUE(contains(msg, "k: the cache holds 8 tokens but the layout holds 9")) << msg;
  }
  {
    const Buffers too_many = make_qkv(cfg, 10, 9, 1);
    Tensor out10(10, 2, 8);
    const std::string msg = error_message([&] {
      decode_attention(cfg, layout, policy, too_many.q.cview(), too_many.k.cview(), too_many.v.cview(), out10.view);
    });
    EXPECT_TRUE(contains(msg, "decode: new tokens (10) must be in [1, 9]")) << msg;
  }
  {
    DecodeOptions options;
    options.split.splits = -1;
    const std::string msg = error_message([&] {
      decode_attention(cfg, layout, policy, b.q.cview(), b.k.cview(), b.v.cview(), out.view, {}, options);
    });
    EXPECT_TRUE(contains(msg, "split-KV: splits must be >= 0, got -1")) << msg;
  }
  for (const float x : out.storage) EXPECT_TRUE(std::isnan(x));  // nothing written
}

// Executor::concurrency(): the hint split-KV sizes its chunks by.
TEST(Decode, ExecutorConcurrency) {
  EXPECT_EQ(Executor::serial().concurrency(), 1);
  EXPECT_EQ(make_executor(3).concurrency(), 16);
  EXPECT_GE(Executor::custom([](index_t, const Executor::Body&) {}).concurrency(), 1);
#if defined(MMATTN_HAS_OPENMP)
  EXPECT_EQ(Executor::openmp(3).concurrency(), 3);
#endif
  EXPECT_GE(Executor::default_executor().concurrency(), 1);
}

}  // namespace
}  // namespace mmattn::test
