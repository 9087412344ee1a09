#pragma once
// What a plan costs and how well it fits its mask: allowed pairs (exact, by arithmetic; a custom
// predicate is counted pair by pair), computed pairs (at block granularity), per region pair, and
// the FLOPs and workspace that follow.

#include <algorithm>
#include <array>
#include <set>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/kernel/workspace.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/policy.hpp"

namespace mmattn {

struct RegionStats {
  index_t query_tokens = 0;    // queries of this pair's query kind that meet a key segment of its key kind
  index_t allowed_pairs = 0;   // (query, key) pairs the mask allows
  index_t computed_pairs = 0;  // pairs inside planned blocks: what the kernels compute
  index_t full_pairs = 0;      // of those, in full blocks (no mask work)
  index_t full_blocks = 0, partial_blocks = 0;  // as the kernels run them: a long block counts its pieces

  double efficiency() const { return computed_pairs ? double(allowed_pairs) / double(computed_pairs) : 1.0; }
};

struct PlanStats {
  index_t query_tokens = 0, key_tokens = 0;
  std::array<index_t, kSegmentKinds> query_tokens_of{};  // queries per segment kind
  std::array<RegionStats, kRegions> regions{};

  const RegionStats& region(Region r) const { return regions[static_cast<size_t>(r.index())]; }
  index_t image_query_tokens() const { return query_tokens_of[static_cast<size_t>(SegmentKind::image)]; }
  index_t text_query_tokens() const { return query_tokens_of[static_cast<size_t>(SegmentKind::text)]; }
  index_t allowed_pairs() const { return sum(&RegionStats::allowed_pairs); }
  index_t computed_pairs() const { return sum(&RegionStats::computed_pairs); }
  index_t full_pairs() const { return sum(&RegionStats::full_pairs); }
  index_t dense_pairs() const { return query_tokens * key_tokens; }
  double efficiency() const { return computed_pairs() ? double(allowed_pairs()) / double(computed_pairs()) : 1.0; }
  double density() const { return double(allowed_pairs()) / double(dense_pairs()); }

  // Two GEMMs of head_dim per pair (Q K^T and P V), a multiply and an add each, for every head.
  static double flops(index_t pairs, const AttentionConfig& cfg) {
    return 4.0 * double(cfg.head_dim) * double(pairs) * double(cfg.num_heads);
  }

 private:
  index_t sum(index_t RegionStats::*field) const {
    index_t n = 0;
    for (const RegionStats& r : regions) n += r.*field;
    return n;
  }
};

// Bytes of scratch one thread uses to run the plan at this head_dim, at most (it holds no N x N
// buffer): the tiles, a masked row's allowed runs, and the packed-block cache, which holds the
// plan's distinct key blocks of one KV head up to its budget.
inline index_t workspace_bytes_per_thread(const Plan& plan, index_t head_dim) {
  std::set<std::array<index_t, 4>> distinct;
  index_t packed = 0;
  for (const QueryTile& t : plan.query_tiles)
    plan.for_each_piece(t, PieceRange{}, [&](index_t, const KeyBlock& b) {
      if (distinct.insert({b.keys.start, b.keys.pitch, b.keys.rows, b.keys.cols}).second)
        packed += kernel::PackedBlocks::block_floats(b.keys.size(), head_dim);
    });
  const auto bytes = static_cast<index_t>(sizeof(float));
  return kernel::Workspace::bytes(plan.tiles.query, plan.tiles.key, head_dim) +
         plan.tiles.key * static_cast<index_t>(sizeof(KeyRun)) +
         bytes * std::min(packed, kernel::PackedBlocks::kBudgetFloats);
}

// Under `layout` and `policy`; the plan's own are what it was made from (the overload below).
inline PlanStats plan_stats(const Plan& plan, const SequenceLayout& layout, const RegionPolicy& policy) {
  PlanStats st;
  st.query_tokens = plan.num_queries();
  st.key_tokens = plan.key_tokens;
  for (index_t qs = 0; qs < layout.num_segments(); ++qs) {
    const Segment& qseg = layout.segment(qs);
    const index_t a = std::max(qseg.start, plan.query_begin), b = std::min(qseg.end(), plan.query_end);
    if (a >= b) continue;
    st.query_tokens_of[static_cast<size_t>(qseg.kind)] += b - a;
    std::array<bool, kRegions> seen{};
    for (index_t ks = 0; ks < layout.num_segments(); ++ks) {
      const auto r = static_cast<size_t>(region_of(layout, qs, ks).index());
      RegionStats& rs = st.regions[r];
      if (!seen[r]) rs.query_tokens += b - a, seen[r] = true;
      rs.allowed_pairs += policy.pair(layout, qs, ks).count(a, b);
    }
  }
  for (const QueryTile& tile : plan.query_tiles) {
    plan.for_each_piece(tile, PieceRange{}, [&](index_t, const KeyBlock& block) {
      RegionStats& rs = st.regions[static_cast<size_t>(region_of(layout, tile.segment, block.key_segment).index())];
      const index_t pairs = tile.queries.size() * block.keys.size();
      rs.computed_pairs += pairs;
      if (block.full) rs.full_pairs += pairs, ++rs.full_blocks;
      else ++rs.partial_blocks;
    });
  }
  return st;
}

// Under the layout and rules the plan was made from.
inline PlanStats plan_stats(const Plan& plan) {
  MMATTN_REQUIRE(plan.policy, "plan_stats: the plan has no rules (its blocks were all chosen by the caller)");
  return plan_stats(plan, plan.layout, *plan.policy);
}

}  // namespace mmattn
