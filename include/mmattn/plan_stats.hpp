#pragma once
// What a plan costs and how well it fits its mask: allowed pairs (exact, by arithmetic),
// computed pairs (at block granularity), per region pair, and the FLOPs and workspace that follow.

#include <algorithm>
#include <array>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/policy.hpp"

namespace mmattn {

struct RegionStats {
  index_t query_tokens = 0;    // queries of this pair's query kind that meet a key segment of its key kind
  index_t allowed_pairs = 0;   // (query, key) pairs the mask allows
  index_t computed_pairs = 0;  // pairs inside planned blocks: what the kernels compute
  index_t full_pairs = 0;      // of those, in full blocks (no mask work)
  index_t full_blocks = 0, partial_blocks = 0;

  double efficiency() const { return computed_pairs ? double(allowed_pairs) / double(computed_pairs) : 1.0; }
};

struct PlanStats {
  index_t query_tokens = 0, key_tokens = 0;
  index_t image_query_tokens = 0, text_query_tokens = 0;
  std::array<RegionStats, kRegionPairs> regions{};

  const RegionStats& region(RegionPair p) const { return regions[static_cast<size_t>(p)]; }
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

// Bytes of scratch one thread uses to run the plan at this head_dim (it holds no N x N buffer).
inline index_t workspace_bytes_per_thread(const Plan& plan, index_t head_dim) {
  return kernel::Workspace::bytes(plan.tiles.query, plan.tiles.key, head_dim) +
         3 * plan.tiles.key * static_cast<index_t>(sizeof(index_t));  // key coordinates of a masked block
}

namespace detail {

// sum over q in [a, b) of |{k in [c, c + len) : k <= q}|.
inline index_t causal_pairs(index_t a, index_t b, index_t c, index_t len) {
  auto series = [](index_t lo, index_t hi) { return hi > lo ? (lo + hi - 1) * (hi - lo) / 2 : 0; };  // lo..hi-1
  const index_t ramp_lo = std::max(a, c), ramp_hi = std::min(b, c + len);  // q - c + 1 keys
  const index_t flat_lo = std::max(a, c + len);                            // every key
  return series(ramp_lo - c + 1, ramp_hi - c + 1) + (b > flat_lo ? (b - flat_lo) * len : 0);
}

// Allowed pairs of the queries [a, b) of one image under a window rule, one query at a time in O(1).
inline index_t window_pairs(const Segment& image, const Rule& rule, index_t a, index_t b) {
  index_t n = 0;
  for (index_t pos = a; pos < b; ++pos) {
    const index_t r = (pos - image.start) / image.cols, c = (pos - image.start) % image.cols;
    const AxisWindow rw = rule.window.row_window(r, image.rows), cw = rule.window.col_window(c, image.cols);
    if (!rule.causal) {
      n += rw.count() * cw.count();
    } else {  // earlier rows whole, the query's own row up to and including it
      n += rw.count_in(0, r) * cw.count() + (rw.contains(r) ? cw.count_in(0, c + 1) : 0);
    }
  }
  return n;
}

}  // namespace detail

inline PlanStats plan_stats(const Plan& plan, const SequenceLayout& layout, const RegionPolicy& policy) {
  PlanStats st;
  st.query_tokens = plan.num_queries();
  st.key_tokens = plan.key_tokens;
  for (index_t qs = 0; qs < layout.num_segments(); ++qs) {
    const Segment& qseg = layout.segment(qs);
    const index_t a = std::max(qseg.start, plan.query_begin), b = std::min(qseg.end(), plan.query_end);
    if (a >= b) continue;
    (qseg.is_image() ? st.image_query_tokens : st.text_query_tokens) += b - a;
    std::array<bool, kRegionPairs> seen{};
    for (index_t ks = 0; ks < layout.num_segments(); ++ks) {
      const Segment& kseg = layout.segment(ks);
      const RegionPair pair = region_pair(layout, qs, ks);
      const Rule& rule = policy.rule(pair);
      RegionStats& rs = st.regions[static_cast<size_t>(pair)];
      if (!seen[static_cast<size_t>(pair)]) rs.query_tokens += b - a, seen[static_cast<size_t>(pair)] = true;
      if (rule.access == Access::window) rs.allowed_pairs += detail::window_pairs(qseg, rule, a, b);
      if (rule.access == Access::full)
        rs.allowed_pairs += rule.causal ? detail::causal_pairs(a, b, kseg.start, kseg.length) : (b - a) * kseg.length;
    }
  }
  for (const QueryTile& tile : plan.query_tiles) {
    for (index_t i = tile.block_begin; i < tile.block_end; ++i) {
      const KeyBlock& block = plan.blocks[static_cast<size_t>(i)];
      RegionStats& rs = st.regions[static_cast<size_t>(block.region)];
      const index_t pairs = tile.queries.size() * block.keys.size();
      rs.computed_pairs += pairs;
      if (block.full) rs.full_pairs += pairs, ++rs.full_blocks;
      else ++rs.partial_blocks;
    }
  }
  return st;
}

}  // namespace mmattn
