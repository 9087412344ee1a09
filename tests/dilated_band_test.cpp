// DilatedBandRule (mask/dilated_band.hpp): Longformer's dilated window on text positions, against a
// brute-force predicate written from its definition, through allowed(), the planner and forward.

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "mmattn/multimodal_attention.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

// k is at most `left` steps of d before q or `right` after it, on q's residue mod d; text keys only.
bool dilated_band(const SequenceLayout& layout, index_t left, index_t right, index_t d, index_t q, index_t k) {
  if (!layout.segment(layout.segment_index(k)).is_text()) return false;
  if ((q - k) % d != 0) return false;
  return k <= q ? (q - k) / d <= left : (k - q) / d <= right;
}

TEST(DilatedBandRule, MatchesItsDefinitionPairByPairInPlansAndForward) {
  const int cases = kSlowBuild ? 40 : 200;
  for (int i = 0; i < cases; ++i) {
    std::mt19937 gen(0xd11a0000u + static_cast<std::uint32_t>(i));
    SequenceLayout layout;
    const index_t segments = cases::uniform(gen, 1, 4);
    for (index_t s = 0; s < segments; ++s) {
      if (gen() % 3 == 0) layout.add_image(cases::uniform(gen, 1, 5), cases::uniform(gen, 1, 5));
      else layout.add_text(cases::uniform(gen, 1, 40));
    }
    const index_t left = cases::uniform(gen, 0, 9), right = gen() % 2 ? 0 : cases::uniform(gen, 0, 9);
    const index_t d = cases::uniform(gen, 1, 5);
    RegionPolicy policy;
    for (const SegmentKind q : {SegmentKind::text, SegmentKind::image})
      policy.set(q, SegmentKind::text, DilatedBandRule{left, right, d});
    const index_t n = layout.size();
    SCOPED_TRACE("case " + std::to_string(i) + ": band (" + std::to_string(left) + ", " + std::to_string(right) +
                 ") x " + std::to_string(d) + ", " + std::to_string(n) + " tokens");
    for (index_t q = 0; q < n; ++q)
      for (index_t k = 0; k < n; ++k)
        ASSERT_EQ(allowed(layout, policy, q, k), dilated_band(layout, left, right, d, q, k)) << "q " << q << " k " << k;

    // Every allowed pair in exactly one block of its tile; full blocks hold only allowed pairs.
    PlanOptions options;
    options.tiles = {cases::random_tile(gen), cases::random_tile(gen)};
    const Plan plan = make_plan(layout, policy, options);
    for (const QueryTile& tile : plan.query_tiles) {
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        const KeyBlock& block = plan.blocks[static_cast<size_t>(b)];
        for (index_t j = 0; j < block.keys.size(); ++j) {
          ++seen[static_cast<size_t>(block.keys.at(j))];
          if (!block.full) continue;
          for (index_t r = 0; r < tile.queries.size(); ++r)
            ASSERT_TRUE(dilated_band(layout, left, right, d, tile.queries.at(r), block.keys.at(j)));
        }
      }
      for (index_t r = 0; r < tile.queries.size(); ++r)
        for (index_t k = 0; k < n; ++k) {
          if (dilated_band(layout, left, right, d, tile.queries.at(r), k)) {
            ASSERT_EQ(seen[static_cast<size_t>(k)], 1);
          }
        }
    }
    EXPECT_EQ(plan_stats(plan, layout, policy).allowed_pairs(), [&] {
      index_t count = 0;
      for (index_t q = 0; q < n; ++q)
        for (index_t k = 0; k < n; ++k) count += dilated_band(layout, left, right, d, q, k);
      return count;
    }());

    if (i % 5 == 0) {  // the kernel masks its strided runs exactly
      const AttentionConfig cfg = make_config(2, 1, 16);
      const MultimodalAttention<float> mm(cfg, layout, policy, options);
      const Buffers b = make_qkv(cfg, n, n, 100 + static_cast<std::uint32_t>(i));
      Tensor out(n, 2, 16);
      mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view);
      const Result ref = run_reference(cfg, b, [&](index_t q, index_t k) { return dilated_band(layout, left, right, d, q, k); });
      EXPECT_LE(max_relative_error(out, ref.out), 1e-5);
    }
  }
}

TEST(DilatedBandRule, RefusesNonTextKeysAndBadSizes) {
  SequenceLayout layout;
  layout.add_text(4).add_image(2, 2);
  RegionPolicy p;
  p.set(SegmentKind::text, SegmentKind::image, DilatedBandRule{1, 1, 2});
  EXPECT_TRUE(contains(error_message([&] { make_plan(layout, p); }), "applies to text keys, not to image keys"));
  RegionPolicy q;
  q.set(SegmentKind::text, SegmentKind::text, DilatedBandRule{1, 1, 0});
  EXPECT_TRUE(contains(error_message([&] { make_plan(layout, q); }), "dilation > 0"));
}

}  // namespace
}  // namespace mmattn::test
