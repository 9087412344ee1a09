#pragma once
// The mask planner: from a layout, a policy and tile sizes, the list of (query tile, key block)
// pairs worth computing, each classified full or partial from region arithmetic (segment bounds,
// a window's per-axis extent, the causal diagonal). No N x N mask is ever built, and a built-in
// rule is never evaluated per pair (a custom predicate is: its blocks are classified pair by pair).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/layout.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/policy.hpp"

namespace mmattn {

// How an image's query tiles are cut from its grid.
enum class ImageTiling : unsigned char {
  automatic,   // per image, whichever of the two below computes fewer pairs under its rule
  row_strips,  // whole grid rows (raster spans): best when the image attends fully
  patches,     // near-square 2-D patches: a window's key set stays compact
};

struct PlanOptions {
  TileSizes tiles{};
  ImageTiling image_tiling = ImageTiling::automatic;
  // Queries are positions [query_begin, query_end) (query_end < 0: the end of the layout), as in
  // chunked prefill and decode; keys are always every position of the layout.
  index_t query_begin = 0;
  index_t query_end = -1;
  // A plan for a query range [b, e) with e before the layout's end is refused when a query may see
  // a key at or after e (chunked prefill: those K/V are not written yet), unless the caller says
  // all keys are present (K/V computed for the whole layout up front).
  bool all_keys_present = false;

  // Field by field (a cache key: PlanCache resolves query_end < 0 first).
  friend bool operator==(const PlanOptions& a, const PlanOptions& b) {
    return a.tiles.query == b.tiles.query && a.tiles.key == b.tiles.key && a.tiles.window_query == b.tiles.window_query &&
           a.image_tiling == b.image_tiling && a.query_begin == b.query_begin && a.query_end == b.query_end &&
           a.all_keys_present == b.all_keys_present;
  }
  friend bool operator!=(const PlanOptions& a, const PlanOptions& b) { return !(a == b); }
  std::size_t hash() const {
    std::size_t h = std::hash<index_t>{}(tiles.query);
    for (const index_t v : {tiles.key, tiles.window_query, static_cast<index_t>(image_tiling), query_begin, query_end,
                            static_cast<index_t>(all_keys_present)})
      detail::hash_combine(h, std::hash<index_t>{}(v));
    return h;
  }
};

namespace detail {

// Tile shape (rows, cols) for a grid of grid_rows x grid_cols.
struct PatchShape {
  index_t rows = 1, cols = 1;
};

inline PatchShape tile_shape(index_t grid_rows, index_t grid_cols, index_t tile_rows, ImageTiling tiling) {
  if (tiling == ImageTiling::row_strips) {
    if (grid_cols >= tile_rows) return {1, tile_rows};
    return {std::max<index_t>(1, tile_rows / grid_cols), grid_cols};
  }
  const auto side = static_cast<index_t>(std::sqrt(static_cast<double>(tile_rows)));
  const index_t cols = std::clamp<index_t>(side, 1, grid_cols);
  return {std::min(grid_rows, std::max<index_t>(1, tile_rows / cols)), cols};
}

// The part of `rect` inside positions [lo, hi), as rects: rows keep their shape where whole,
// rows cut by the boundary become spans.
inline void clip_rect(const TokenRect& rect, index_t lo, index_t hi, std::vector<TokenRect>& out) {
  if (rect.first() >= lo && rect.last() < hi) return out.push_back(rect);
  const size_t first_piece = out.size();  // merge only pieces of this rect: a tile never outgrows it
  for (index_t r = 0; r < rect.rows; ++r) {
    const index_t a = std::max(rect.start + r * rect.pitch, lo);
    const index_t b = std::min(rect.start + r * rect.pitch + rect.cols, hi);
    if (a >= b) continue;
    TokenRect piece{a, rect.pitch, 1, b - a};
    TokenRect* prev = out.size() > first_piece ? &out.back() : nullptr;
    const bool extends = prev && prev->cols == piece.cols && prev->pitch == rect.pitch &&
                         prev->start + prev->rows * prev->pitch == piece.start;
    if (extends)
      ++prev->rows;
    else
      out.push_back(piece);
  }
}

// Cuts positions [begin, end) into spans of at most key_tile, starting over at each cut point, and
// keeps those the mask does not leave empty. Cut points are where the keys every query sees
// start and stop: under causality the keys before the tile's first query are full, the diagonal
// [first query, last query] is one partial run and later keys are never listed, so the masked
// part stays one tile-sized triangle.
inline void add_span_blocks(const PairMask::TileSets& q, const PairMask& mask, index_t key_segment, index_t begin,
                            index_t end, std::vector<index_t> cuts, index_t key_tile, std::vector<KeyBlock>& blocks) {
  cuts.push_back(end);
  std::sort(cuts.begin(), cuts.end());
  index_t k0 = begin;
  for (const index_t cut : cuts) {
    const index_t stop = std::min(cut, end);
    for (; k0 < stop;) {
      const TokenRect keys = TokenRect::span(k0, std::min(key_tile, stop - k0));
      const BlockCoverage c = mask.classify(q, keys);
      if (c != BlockCoverage::empty) blocks.push_back({keys, c == BlockCoverage::full, key_segment});
      k0 += keys.cols;
      // Interval sets and a full block past the sinks: every later whole key_tile ending before
      // hi_min is full too (classify's own first test), so the block grows over them, one block
      // however long the run of seen keys (a decode step's grown text).
      if (c == BlockCoverage::full && q.intervals && keys.first() >= q.sink_max) {
        const index_t more = std::max<index_t>(std::min(stop, q.hi_min) - k0, 0) / key_tile * key_tile;
        blocks.back().keys = TokenRect::span(keys.start, keys.cols + more);
        k0 += more;
      }
    }
  }
}

// The box (frames x rows x cols of the key segment) and position bounds that hold every key some
// query of a tile sees, from the queries' key sets. Not PairMask::TileSets' bounds: those take
// every query (a block is full only if all of them see it), these only the queries that see a key
// through the windows (one that sees none must not widen the box).
struct KeyExtent {
  index_t f0, f1, r0, r1, c0, c1;  // union of the per-axis windows
  index_t lo_min, lo_max, hi_min, hi_max;  // of the position bounds
  index_t sink_max;  // sinks: positions [key start, sink_max) are seen by some query
  bool any = false;  // some query sees a key through the windows
};

inline KeyExtent key_extent(const Segment& key, const std::vector<KeySet>& sets) {
  // (an empty list, a custom rule's, bounds nothing; its caller plans the whole segment)
  KeyExtent e{key.frames, 0, key.rows, 0, key.cols, 0, key.end(), key.start, key.end(), key.start, key.start, false};
  for (const KeySet& s : sets) {
    e.sink_max = std::max(e.sink_max, s.sink_end);
    if (s.no_product()) continue;
    e.any = true;
    e.f0 = std::min(e.f0, s.frame.start), e.f1 = std::max(e.f1, s.frame.end);
    e.r0 = std::min(e.r0, s.row.start), e.r1 = std::max(e.r1, s.row.end);
    e.c0 = std::min(e.c0, s.col.start), e.c1 = std::max(e.c1, s.col.end);
    e.lo_min = std::min(e.lo_min, s.lo), e.lo_max = std::max(e.lo_max, s.lo);
    e.hi_min = std::min(e.hi_min, s.hi), e.hi_max = std::max(e.hi_max, s.hi);
  }
  return e;
}

}  // namespace detail

// The one way a plan is built. The plan's frame comes first: the layout of its keys, the policy
// that masks its partial blocks, tile sizes and the query range. Then query tiles, each either
// planned from the rules (add_query_tile) or given blocks the caller chose (add_query_tile_with:
// the approximations replace some of the rules' blocks, and pooled keys have no rules at all).
// finish() fills every tile's cost and the order work is handed out in.
class PlanBuilder {
 public:
  // Keys at or after key_limit are never put in a block: in chunked prefill they are not written
  // yet (check_keys_written showed none is allowed), and a masked key must not be read either.
  // policy may be null when every block is given by the caller (and full).
  PlanBuilder(SequenceLayout layout, std::shared_ptr<const RegionPolicy> policy, TileSizes tiles,
              index_t query_begin, index_t query_end, index_t key_limit)
      : key_limit_(key_limit) {
    tiles.validate();
    plan_.tiles = tiles;
    plan_.query_begin = query_begin;
    plan_.query_end = query_end;
    plan_.key_tokens = layout.size();
    plan_.layout = std::move(layout);
    plan_.policy = std::move(policy);
  }

  const Plan& plan() const { return plan_; }

  // A tile whose blocks are the keys the rules let some of its queries see, each classified.
  void add_query_tile(const TokenRect& queries, index_t segment) {
    MMATTN_REQUIRE(plan_.policy, "plan: a tile planned from the rules in a plan without rules");
    const SequenceLayout& layout = plan_.layout;
    const auto first_block = static_cast<index_t>(plan_.blocks.size());
    for (index_t ks = 0; ks < layout.num_segments(); ++ks) {
      const PairMask mask = plan_.policy->pair(layout, segment, ks);
      if (!mask.visits()) continue;
      const Segment& key = layout.segment(ks);
      mask.bind(queries, sets_);
      if (mask.rule().custom()) {  // no arithmetic to bound it: every key, classified pair by pair
        detail::add_span_blocks(sets_, mask, ks, key.start, std::min(key.end(), key_limit_), {}, plan_.tiles.key,
                                plan_.blocks);
        continue;
      }
      add_blocks(mask, ks, detail::key_extent(key, sets_.sets));
    }
    plan_.query_tiles.push_back({queries, segment, first_block, static_cast<index_t>(plan_.blocks.size()), 0});
  }

  // A tile whose blocks the caller chose, visited in the given order.
  void add_query_tile_with(const TokenRect& queries, index_t segment, const std::vector<KeyBlock>& blocks) {
    for (const KeyBlock& b : blocks) plan_.pieces(b);  // refuses a block the kernels cannot cut into pieces
    const auto first_block = static_cast<index_t>(plan_.blocks.size());
    plan_.blocks.insert(plan_.blocks.end(), blocks.begin(), blocks.end());
    plan_.query_tiles.push_back({queries, segment, first_block, static_cast<index_t>(plan_.blocks.size()), 0});
  }

  // Drops every tile after the first `tiles` and their blocks (make_plan tries two tilings).
  void truncate(size_t tiles) {
    if (tiles >= plan_.query_tiles.size()) return;
    plan_.blocks.resize(static_cast<size_t>(plan_.query_tiles[tiles].block_begin));
    plan_.query_tiles.resize(tiles);
  }

  // Each tile's cost and the cost order; the builder is spent.
  Plan finish() {
    Plan& p = plan_;
    p.tile_order.clear();
    for (size_t t = 0; t < p.query_tiles.size(); ++t) {
      QueryTile& tile = p.query_tiles[t];
      tile.computed_pairs = 0;
      for (index_t b = tile.block_begin; b < tile.block_end; ++b)
        tile.computed_pairs += tile.queries.size() * p.blocks[static_cast<size_t>(b)].keys.size();
      p.tile_order.push_back(static_cast<index_t>(t));
    }
    std::stable_sort(p.tile_order.begin(), p.tile_order.end(), [&](index_t a, index_t b) {
      return p.query_tiles[static_cast<size_t>(a)].computed_pairs > p.query_tiles[static_cast<size_t>(b)].computed_pairs;
    });
    return std::move(plan_);
  }

 private:
  void add_blocks(const PairMask& mask, index_t ks, const detail::KeyExtent& e) {
    const Segment& key = mask.key();
    // Sinks are a prefix of the segment: their own run; the windows' box starts after them.
    const index_t sink_end = std::min(std::max(e.sink_max, key.start), key_limit_);
    if (sink_end > key.start) detail::add_span_blocks(sets_, mask, ks, key.start, sink_end, {}, plan_.tiles.key, plan_.blocks);
    if (!e.any) return;
    // The box's positions, clipped by the position bounds.
    const index_t box_first = std::max({e.lo_min, key.position(e.f0, e.r0, e.c0), sink_end});
    const index_t box_end = std::min(key_limit_, std::min(e.hi_max, key.position(e.f1 - 1, e.r1 - 1, e.c1 - 1) + 1));
    if (box_first >= box_end) return;
    const bool whole_rows = e.c0 == 0 && e.c1 == key.cols;
    if (whole_rows && (e.f1 - e.f0 == 1 || (e.r0 == 0 && e.r1 == key.rows))) {  // one run of positions
      std::vector<index_t> cuts;
      if (e.lo_min < e.lo_max) cuts.push_back(e.lo_max);
      if (e.hi_min < e.hi_max) cuts.push_back(e.hi_min - 1);
      detail::add_span_blocks(sets_, mask, ks, box_first, box_end, std::move(cuts), plan_.tiles.key, plan_.blocks);
      return;
    }
    // A window: per frame, the rows x cols box cut into rects of at most tiles.key keys.
    const GridCoord first = key.coord(box_first), last = key.coord(box_end - 1);
    for (index_t f = std::max(e.f0, first.frame); f < std::min(e.f1, last.frame + 1); ++f) {
      const index_t r_lo = f == first.frame ? std::max(e.r0, first.row) : e.r0;
      const index_t r_hi = f == last.frame ? std::min(e.r1, last.row + 1) : e.r1;
      add_rect_blocks(mask, ks, f, r_lo, r_hi, e.c0, e.c1, sink_end);
    }
  }

  // Rects of the box rows [r_lo, r_hi) x cols [c_lo, c_hi) of one frame, keys in [lo, key_limit).
  void add_rect_blocks(const PairMask& mask, index_t ks, index_t frame, index_t r_lo, index_t r_hi, index_t c_lo,
                       index_t c_hi, index_t lo) {
    const Segment& key = mask.key();
    const index_t u_rows = r_hi - r_lo, u_cols = c_hi - c_lo, cap = plan_.tiles.key;
    if (u_rows <= 0 || u_cols <= 0) return;
    const index_t col_chunk = std::min(u_cols, cap);
    const index_t col_chunks = (u_cols + col_chunk - 1) / col_chunk;
    const index_t rows_per = std::max<index_t>(1, cap / col_chunk);
    const index_t row_chunks = (u_rows + rows_per - 1) / rows_per;
    const index_t rows_even = (u_rows + row_chunks - 1) / row_chunks;  // balance the chunks
    const index_t cols_even = (u_cols + col_chunks - 1) / col_chunks;
    for (index_t r0 = r_lo; r0 < r_hi; r0 += rows_even) {
      for (index_t c0 = c_lo; c0 < c_hi; c0 += cols_even) {
        const index_t r1 = std::min(r0 + rows_even, r_hi), c1 = std::min(c0 + cols_even, c_hi);
        pieces_.clear();
        detail::clip_rect({key.position(frame, r0, c0), key.cols, r1 - r0, c1 - c0}, lo, key_limit_, pieces_);
        for (const TokenRect& keys : pieces_) {
          const BlockCoverage c = mask.classify(sets_, keys);
          if (c != BlockCoverage::empty) plan_.blocks.push_back({keys, c == BlockCoverage::full, ks});
        }
      }
    }
  }

  Plan plan_;
  index_t key_limit_;
  PairMask::TileSets sets_;  // of the tile and key segment being planned
  std::vector<TokenRect> pieces_;
};

namespace detail {

inline index_t computed_pairs(const Plan& plan, size_t first_tile) {
  index_t n = 0;
  for (size_t t = first_tile; t < plan.query_tiles.size(); ++t) {
    const QueryTile& tile = plan.query_tiles[t];
    for (index_t b = tile.block_begin; b < tile.block_end; ++b)
      n += tile.queries.size() * plan.blocks[static_cast<size_t>(b)].keys.size();
  }
  return n;
}

// Refuses a query range whose queries see keys at or after its end (not written yet in chunked
// prefill), naming the first such query and key.
inline void check_keys_written(const SequenceLayout& layout, const RegionPolicy& policy, index_t q_begin,
                               index_t q_end) {
  if (q_end >= layout.size()) return;
  const index_t first_later = layout.segment_index(q_end);
  for (index_t qs = layout.segment_index(q_begin); qs <= first_later; ++qs) {
    const Segment& qseg = layout.segment(qs);
    for (index_t q = std::max(qseg.start, q_begin); q < std::min(qseg.end(), q_end); ++q)
      for (index_t ks = first_later; ks < layout.num_segments(); ++ks) {
        const PairMask mask = policy.pair(layout, qs, ks);
        if (!mask.visits()) continue;
        const index_t k = mask.first_key_from(q, q_end);
        MMATTN_REQUIRE(k < 0, "plan: query " + std::to_string(q) + " may see key " + std::to_string(k) +
                                  ", at or after the query range's end " + std::to_string(q_end) +
                                  " (not written yet in chunked prefill); cut chunks with safe_chunk_ends(), or "
                                  "set PlanOptions::all_keys_present when K/V hold the whole layout");
      }
  }
}

}  // namespace detail

inline Plan make_plan(const SequenceLayout& layout, const RegionPolicy& policy, const PlanOptions& options = {}) {
  layout.validate();
  policy.validate(layout);
  const TileSizes tiles = options.tiles;  // checked by the builder
  const index_t q_begin = options.query_begin, q_end = options.query_end < 0 ? layout.size() : options.query_end;
  MMATTN_REQUIRE(q_begin >= 0 && q_begin < q_end && q_end <= layout.size(),
                 "plan: query range [" + std::to_string(q_begin) + ", " + std::to_string(q_end) +
                     ") must be a non-empty part of [0, " + std::to_string(layout.size()) + ")");
  if (!options.all_keys_present) detail::check_keys_written(layout, policy, q_begin, q_end);
  PlanBuilder builder(layout, std::make_shared<const RegionPolicy>(policy), tiles, q_begin, q_end,
                      options.all_keys_present ? layout.size() : q_end);
  std::vector<TokenRect> rects;

  for (index_t s = 0; s < layout.num_segments(); ++s) {
    const Segment& seg = layout.segment(s);
    if (seg.end() <= q_begin || seg.start >= q_end) continue;
    if (seg.is_text()) {
      const index_t a = std::max(seg.start, q_begin), b = std::min(seg.end(), q_end);
      for (index_t q0 = a; q0 < b; q0 += tiles.query)
        builder.add_query_tile(TokenRect::span(q0, std::min(tiles.query, b - q0)), s);
      continue;
    }
    // Row strips run over the frames stacked as one tall grid; patches stay inside a frame.
    auto add_grid_tiles = [&](ImageTiling tiling) {
      const bool patches = tiling == ImageTiling::patches;
      const index_t grid_rows = patches ? seg.rows : seg.frames * seg.rows, frames = patches ? seg.frames : 1;
      const index_t rows = patches ? tiles.window_query_rows() : tiles.query;
      const detail::PatchShape shape = detail::tile_shape(grid_rows, seg.cols, rows, tiling);
      rects.clear();
      for (index_t f = 0; f < frames; ++f)
        for (index_t r0 = 0; r0 < grid_rows; r0 += shape.rows)
          for (index_t c0 = 0; c0 < seg.cols; c0 += shape.cols)
            detail::clip_rect({seg.start + f * seg.frame_size() + r0 * seg.cols + c0, seg.cols,
                               std::min(shape.rows, grid_rows - r0), std::min(shape.cols, seg.cols - c0)},
                              q_begin, q_end, rects);
      for (const TokenRect& r : rects) builder.add_query_tile(r, s);
    };
    ImageTiling tiling = options.image_tiling;
    if (tiling == ImageTiling::automatic) {
      // Only a window over the grid makes the tiling matter; then plan both and keep the cheaper.
      tiling = ImageTiling::row_strips;
      const Rule& own = policy.rule_for(layout, s, s);
      if (own.get<Window2D>() || own.get<Window3D>()) {
        const size_t tiles_before = builder.plan().query_tiles.size();
        index_t cost[2] = {0, 0};
        for (int i = 0; i < 2; ++i) {
          add_grid_tiles(i == 0 ? ImageTiling::row_strips : ImageTiling::patches);
          cost[i] = detail::computed_pairs(builder.plan(), tiles_before);
          builder.truncate(tiles_before);
        }
        if (cost[1] < cost[0]) tiling = ImageTiling::patches;
      }
    }
    add_grid_tiles(tiling);
  }
  return builder.finish();
}

// Cut points e_1 < e_2 < ... = layout.size() for chunked prefill in which every chunk
// [e_i, e_{i+1}) is exact: no query of a chunk sees a key at or after the chunk's end. Chunks
// hold at most max_chunk tokens where the mask allows; a run that cannot be cut (a bidirectional
// image longer than max_chunk) becomes one longer chunk, never a cut inside it.
inline std::vector<index_t> safe_chunk_ends(const SequenceLayout& layout, const RegionPolicy& policy,
                                            index_t max_chunk) {
  layout.validate();
  policy.validate(layout);
  MMATTN_REQUIRE(max_chunk > 0, "safe_chunk_ends: max_chunk must be positive, got " + std::to_string(max_chunk));
  // reach[q]: the last key query q sees (-1: none). Key segments from the last down: the first one
  // with a visible key holds the last key.
  const index_t n = layout.size();
  std::vector<index_t> reach(static_cast<size_t>(n), -1);
  for (index_t qs = 0; qs < layout.num_segments(); ++qs) {
    const Segment& qseg = layout.segment(qs);
    for (index_t q = qseg.start; q < qseg.end(); ++q)
      for (index_t ks = layout.num_segments() - 1; ks >= 0; --ks) {
        const PairMask mask = policy.pair(layout, qs, ks);
        if (!mask.visits()) continue;
        const index_t k = mask.last_key(q);
        if (k >= 0) {
          reach[static_cast<size_t>(q)] = k;
          break;
        }
      }
  }
  std::vector<index_t> ends;
  for (index_t begin = 0; begin < n;) {
    index_t best = -1, far = -1;
    for (index_t e = begin + 1; e <= n; ++e) {
      far = std::max(far, reach[static_cast<size_t>(e - 1)]);
      if (far < e) best = e;
      if (best > 0 && e - begin >= max_chunk) break;
    }
    ends.push_back(best);
    begin = best;
  }
  return ends;
}

}  // namespace mmattn
