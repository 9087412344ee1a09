// Decode growth: SequenceLayout::extend_text lengthens the last text segment instead of adding one
// per token, DecodeStep plans a step once for every layer, and K/V views need hold only the keys a
// step reads. Over random layouts and policies: a layout grown by extend_text has the same mask,
// pair by pair, as the same tokens added one segment each (where the policy's text rules are
// positional, so the two must agree), its decode plan covers exactly the allowed pairs, and its
// output matches the reference and the segment-per-token decode.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mmattn/decode.hpp"
#include "mmattn/plan_cache.hpp"
#include "mmattn/reference.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

TEST(DecodeGrowth, ExtendTextLengthensTheLastTextSegment) {
  SequenceLayout layout;
  layout.add_text(3).extend_text(2);  // extends
  EXPECT_EQ(layout.num_segments(), 1);
  EXPECT_EQ(layout.segment(0).length, 5);
  EXPECT_EQ(layout.segment(0).cols, 5);
  layout.add_image(2, 3).extend_text(4);  // after an image: a new text segment
  ASSERT_EQ(layout.num_segments(), 3);
  EXPECT_EQ(layout.segment(2).start, 11);
  EXPECT_EQ(layout.segment(2).length, 4);
  for (int i = 0; i < 1000; ++i) layout.extend_text(1);
  EXPECT_EQ(layout.num_segments(), 3);  // indices of earlier segments never move
  EXPECT_EQ(layout.size(), 1015);
  EXPECT_EQ(layout.locate(1014).segment, 2);
  EXPECT_EQ(layout.locate(1014).col, 1003);
  layout.add_text(1);  // add_text still starts a segment
  EXPECT_EQ(layout.num_segments(), 4);

  SequenceLayout empty;
  empty.extend_text(7);
  EXPECT_EQ(empty.num_segments(), 1);
  EXPECT_EQ(empty.size(), 7);
  EXPECT_TRUE(contains(error_message([&] { empty.extend_text(0); }), "layout: extend_text needs at least one token, got 0"));
  SequenceLayout huge;
  huge.add_text(std::numeric_limits<index_t>::max() - 2);
  EXPECT_TRUE(contains(error_message([&] { huge.extend_text(5); }), "size overflows"));
  EXPECT_EQ(huge.size(), std::numeric_limits<index_t>::max() - 2);  // unchanged
  // An override naming the last text segment covers the tokens it grows by.
  SequenceLayout l;
  l.add_image(2, 2).add_text(3);
  RegionPolicy p = RegionPolicy::decoder_causal();
  p.set_segments(1, 1, Rule::full());
  l.extend_text(2);
  EXPECT_TRUE(allowed(l, p, 4, 8));  // full inside the grown segment: an earlier query sees a later key
}

// A random policy whose text -> text rule is the same within a segment and across segments, so
// that one grown text segment and a segment per token are the same mask. No per-segment
// overrides: a segment-per-token layout has other indices.
RegionPolicy positional_text_policy(std::mt19937& gen, std::string& family) {
  RegionPolicy p = cases::random_policy(gen, family);
  p.set(Region::across(SegmentKind::text, SegmentKind::text), p.rule(Region::within(SegmentKind::text)));
  if (gen() % 4 == 0) p.with_sinks(cases::uniform(gen, 1, 6));
  return p;
}

// Every allowed (query, key) pair of the plan's queries is in exactly one block of its tile; a
// full block holds only allowed pairs; a partial block's mask says allowed exactly for them.
std::string check_coverage(const Plan& plan, const SequenceLayout& layout, const RegionPolicy& policy) {
  const index_t n = layout.size();
  for (const QueryTile& tile : plan.query_tiles)
    for (index_t i = 0; i < tile.queries.size(); ++i) {
      const index_t q = tile.queries.at(i);
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        const KeyBlock& block = plan.blocks[static_cast<size_t>(b)];
        for (index_t j = 0; j < block.keys.size(); ++j) {
          const index_t k = block.keys.at(j);
          const bool a = allowed(layout, policy, q, k);
          if (block.full && !a) return "full block holds masked pair (" + std::to_string(q) + ", " + std::to_string(k) + ")";
          if (!block.full && plan.mask(tile, block).allowed(q, k) != a)
            return "partial block mask disagrees at (" + std::to_string(q) + ", " + std::to_string(k) + ")";
          seen[static_cast<size_t>(k)] += a ? 1 : 0;
        }
      }
      for (index_t k = 0; k < n; ++k)
        if (seen[static_cast<size_t>(k)] != (allowed(layout, policy, q, k) ? 1 : 0))
          return "pair (" + std::to_string(q) + ", " + std::to_string(k) + ") covered " +
                 std::to_string(seen[static_cast<size_t>(k)]) + " times";
    }
  return "";
}

TEST(DecodeGrowth, GrownLayoutIsTheSameMaskAsSegmentPerToken) {
  const int kCases = kSlowBuild ? 25 : 100;
  double worst_ref = 0, worst_old = 0;
  for (int i = 0; i < kCases; ++i) {
    const auto seed = 0x9e0700u + static_cast<std::uint32_t>(i);
    std::mt19937 gen(seed);
    const SequenceLayout prompt = cases::random_layout(gen, cases::kAttentionLimits);
    std::string family;
    const RegionPolicy policy = positional_text_policy(gen, family);
    // Grow by g tokens in random pieces, and the same tokens one segment each.
    SequenceLayout grown = prompt, per_token = prompt;
    const index_t g = cases::uniform(gen, 1, 40);
    for (index_t added = 0; added < g;) {
      const index_t piece = std::min(g - added, cases::uniform(gen, 1, 5));
      grown.extend_text(piece);
      added += piece;
    }
    for (index_t t = 0; t < g; ++t) per_token.add_text(1);
    SCOPED_TRACE("seed " + std::to_string(seed) + " family " + family + ", " + std::to_string(prompt.size()) +
                 " prompt tokens + " + std::to_string(g));
    ASSERT_EQ(grown.size(), per_token.size());
    ASSERT_EQ(grown.num_segments(), prompt.num_segments() + (prompt.segments().back().is_text() ? 0 : 1));
    const index_t n = grown.size();
    try {
      policy.validate(grown);
    } catch (const Error&) {
      continue;  // a rule that does not suit the layout: the planner tests cover refusals
    }
    for (index_t q = 0; q < n; ++q)
      for (index_t k = 0; k < n; ++k)
        ASSERT_EQ(allowed(grown, policy, q, k), allowed(per_token, policy, q, k)) << "pair (" << q << ", " << k << ")";

    const index_t m = cases::uniform(gen, 1, std::min<index_t>(3, g));
    const TileSizes tiles{cases::random_tile(gen), cases::random_tile(gen)};
    const DecodeStep step(grown, policy, m, tiles);
    ASSERT_EQ(check_coverage(step.plan(), grown, policy), "");

    const index_t heads[][2] = {{1, 1}, {4, 2}, {8, 2}, {3, 1}};
    const index_t* h = heads[cases::uniform(gen, 0, 3)];
    const AttentionConfig cfg = make_config(h[0], h[1], 16 + 8 * cases::uniform(gen, 0, 3));
    const Buffers b = make_qkv(cfg, m, n, seed);
    Tensor out(m, cfg.num_heads, cfg.head_dim), old(m, cfg.num_heads, cfg.head_dim);
    Lse lse(m, cfg.num_heads), old_lse(m, cfg.num_heads);
    decode_attention(cfg, step, b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);
    DecodeOptions options;
    options.tiles = tiles;
    decode_attention(cfg, per_token, policy, b.q.cview(), b.k.cview(), b.v.cview(), old.view, old_lse.view, options);
    const Result ref = run_reference(cfg, b, MaskPredicate{&grown, &policy}, n - m);
    const double e_ref = max_relative_error(out, ref.out), e_old = max_relative_error(out, old);
    EXPECT_LE(e_ref, 1e-5);
    EXPECT_LE(max_lse_error(lse, ref.lse), 1e-5);
    EXPECT_LE(e_old, 1e-5);
    EXPECT_LE(max_lse_error(lse, old_lse), 1e-5);
    worst_ref = std::max(worst_ref, e_ref), worst_old = std::max(worst_old, e_old);
  }
  RecordProperty("worst_vs_reference", std::to_string(worst_ref));
  RecordProperty("worst_vs_segment_per_token", std::to_string(worst_old));
}

// One DecodeStep, several layers (each its own Q/K/V): the same bits as planning per layer, under
// serial, OpenMP and a claimed concurrency that splits the keys; and layers run from two threads
// at once on the same step.
TEST(DecodeGrowth, OneStepServesEveryLayer) {
  SequenceLayout layout = SequenceLayout::images_then_text(2, 6, 5, 30);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  const AttentionConfig cfg = make_config(8, 2, 32);
  const Executor executors[] = {
      Executor::serial(), Executor::openmp(2),
      Executor::custom([](index_t n, const Executor::Body& body) { for (index_t i = 0; i < n; ++i) body(i); },
                       /*concurrency=*/8)};
  for (int step_no = 0; step_no < 3; ++step_no) {
    layout.extend_text(step_no == 0 ? 1 : 2);
    const index_t m = step_no == 0 ? 1 : 2, n = layout.size();
    const DecodeStep step(layout, policy, m);
    EXPECT_EQ(step.key_end(), n);
    for (const Executor& executor : executors) {
      DecodeOptions options;
      options.split.min_keys_per_split = 8;  // let the short cache split
      std::vector<Tensor> outs;
      for (std::uint32_t layer = 0; layer < 4; ++layer) {
        const Buffers b = make_qkv(cfg, m, n, 100 * layer + static_cast<std::uint32_t>(step_no));
        Tensor reused(m, cfg.num_heads, cfg.head_dim), planned(m, cfg.num_heads, cfg.head_dim);
        Lse reused_lse(m, cfg.num_heads), planned_lse(m, cfg.num_heads);
        decode_attention(cfg, step, b.q.cview(), b.k.cview(), b.v.cview(), reused.view, reused_lse.view,
                         options.split, executor);
        decode_attention(cfg, layout, policy, b.q.cview(), b.k.cview(), b.v.cview(), planned.view, planned_lse.view,
                         options, executor);
        EXPECT_TRUE(same_bits(reused.storage, planned.storage)) << "layer " << layer;
        EXPECT_TRUE(same_bits(reused_lse.storage, planned_lse.storage)) << "layer " << layer;
        const Result ref = run_reference(cfg, b, MaskPredicate{&layout, &policy}, n - m);
        EXPECT_LE(max_relative_error(reused, ref.out), 1e-5);
        outs.push_back(reused);
      }
      // Layers from two threads at once over the same step (it is immutable).
      std::vector<Tensor> concurrent(4, Tensor(m, cfg.num_heads, cfg.head_dim));
      std::vector<std::thread> threads;
      for (int t = 0; t < 2; ++t)
        threads.emplace_back([&, t] {
          for (std::uint32_t layer = static_cast<std::uint32_t>(t); layer < 4; layer += 2) {
            const Buffers b = make_qkv(cfg, m, n, 100 * layer + static_cast<std::uint32_t>(step_no));
            decode_attention(cfg, step, b.q.cview(), b.k.cview(), b.v.cview(), concurrent[layer].view, {}, options.split,
                             Executor::serial());
          }
        });
      for (std::thread& t : threads) t.join();
      for (size_t layer = 0; layer < 4; ++layer)
        EXPECT_LE(max_relative_error(concurrent[layer], outs[layer]), 1e-6) << "layer " << layer;
    }
  }
}

// K/V views need hold only the keys the step reads: fewer than the layout when the step's keys end
// early, more (a cache's capacity) never read. Fewer than that is refused before anything is written.
TEST(DecodeGrowth, ViewsHoldOnlyTheKeysTheStepReads) {
  const AttentionConfig cfg = make_config(4, 2, 16);
  SequenceLayout layout = SequenceLayout::images_then_text(2, 3, 4, 5);  // 24 image tokens, then text
  layout.extend_text(3);
  // Text sees the images and earlier text segments, but not its own segment: the newest tokens'
  // keys end with the images.
  RegionPolicy policy;
  policy.set(SegmentKind::text, SegmentKind::image, Rule::full());
  policy.set(Region::within(SegmentKind::image), Rule::full());
  const DecodeStep step(layout, policy, 2);
  ASSERT_EQ(step.key_end(), 24);
  const index_t n = layout.size(), capacity = n + 9;
  const Buffers b = make_qkv(cfg, 2, capacity, 77);
  auto prefix = [](TensorView<const float> v, index_t tokens) {
    v.tokens = tokens;
    return v;
  };
  Tensor whole(2, cfg.num_heads, cfg.head_dim), written(2, cfg.num_heads, cfg.head_dim),
      spare(2, cfg.num_heads, cfg.head_dim);
  decode_attention(cfg, layout, policy, b.q.cview(), prefix(b.k.cview(), n), prefix(b.v.cview(), n), whole.view);
  decode_attention(cfg, step, b.q.cview(), prefix(b.k.cview(), 24), prefix(b.v.cview(), 24), written.view);
  decode_attention(cfg, step, b.q.cview(), b.k.cview(), b.v.cview(), spare.view);  // capacity tokens
  EXPECT_TRUE(same_bits(whole.storage, written.storage));
  EXPECT_TRUE(same_bits(whole.storage, spare.storage));
  const Result ref = run_reference(cfg, b.q.cview(), prefix(b.k.cview(), n), prefix(b.v.cview(), n),
                                   MaskPredicate{&layout, &policy}, n - 2);
  EXPECT_LE(max_relative_error(written, ref.out), 1e-5);

  Tensor refused(2, cfg.num_heads, cfg.head_dim);
  const std::string msg = error_message([&] {
    decode_attention(cfg, step, b.q.cview(), prefix(b.k.cview(), 23), prefix(b.v.cview(), 23), refused.view);
  });
  EXPECT_TRUE(contains(msg, "k: the cache holds 23 tokens but the layout holds 32 and the step reads keys [0, 24)")) << msg;
  const std::string q_msg = error_message([&] {
    decode_attention(cfg, step, prefix(b.q.cview(), 1), b.k.cview(), b.v.cview(), refused.view);
  });
  EXPECT_TRUE(contains(q_msg, "out: shape")) << q_msg;
  Tensor one(1, cfg.num_heads, cfg.head_dim);
  const std::string m_msg = error_message([&] {
    decode_attention(cfg, step, prefix(b.q.cview(), 1), b.k.cview(), b.v.cview(), one.view);
  });
  EXPECT_TRUE(contains(m_msg, "q: holds 1 tokens but the decode step has 2 new tokens")) << m_msg;
  for (const float x : refused.storage) EXPECT_TRUE(std::isnan(x));
  for (const float x : one.storage) EXPECT_TRUE(std::isnan(x));

  // Causal text reads up to the newest key: the whole layout.
  EXPECT_EQ(DecodeStep(layout, RegionPolicy::decoder_causal(), 1).key_end(), n);
}

// A step from a cached plan is the same step; a plan that does not end at its layout's end is not one.
TEST(DecodeGrowth, StepFromACachedPlan) {
  SequenceLayout layout = SequenceLayout::images_then_text(1, 4, 4, 6);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  PlanCache cache;
  PlanOptions last;
  last.query_begin = layout.size() - 1;
  const DecodeStep cached(cache.get(layout, policy, last));
  const DecodeStep planned(layout, policy, 1);
  EXPECT_EQ(cached.key_end(), planned.key_end());
  EXPECT_EQ(cached.plan().blocks.size(), planned.plan().blocks.size());
  PlanOptions middle;
  middle.query_begin = 2, middle.query_end = 5, middle.all_keys_present = true;
  const std::string msg = error_message([&] { DecodeStep bad(cache.get(layout, policy, middle)); });
  EXPECT_TRUE(contains(msg, "decode: a step's plan must end at its layout's last position")) << msg;
}

}  // namespace
}  // namespace mmattn::test
