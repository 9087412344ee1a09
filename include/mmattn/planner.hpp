#pragma once
// The mask planner: from a layout, a policy and tile sizes, the list of (query tile, key block)
// pairs worth computing, each classified full or partial from region arithmetic (segment bounds,
// a window's per-axis extent, the causal diagonal). No N x N mask is ever built, and the
// predicate is never evaluated per pair.

#include <algorithm>
#include <cmath>
#include <string>
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
};

namespace detail {

// Tile shape (rows, cols) for an image grid.
struct PatchShape {
  index_t rows = 1, cols = 1;
};

inline PatchShape tile_shape(const Segment& image, index_t tile_rows, ImageTiling tiling) {
  if (tiling == ImageTiling::row_strips) {
    if (image.cols >= tile_rows) return {1, tile_rows};
    return {std::max<index_t>(1, tile_rows / image.cols), image.cols};
  }
  const auto side = static_cast<index_t>(std::sqrt(static_cast<double>(tile_rows)));
  const index_t cols = std::clamp<index_t>(side, 1, image.cols);
  return {std::min(image.rows, std::max<index_t>(1, tile_rows / cols)), cols};
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

// Per-axis classification of a key range against a query range: do all query coordinates see
// every key coordinate (full), and does any see one (non-empty)?
struct AxisCover {
  bool all = true, any = false;
};

template <class WindowOf>
AxisCover axis_cover(index_t q0, index_t q1, index_t k0, index_t k1, const WindowOf& window_of) {
  AxisCover cover;
  for (index_t x = q0; x < q1; ++x) {
    const index_t n = window_of(x).count_in(k0, k1);
    cover.all = cover.all && n == k1 - k0;
    cover.any = cover.any || n > 0;
  }
  return cover;
}

// Keys [k_begin, k_end) in spans of at most key_tile. Under causality the keys before the tile's
// first query are full, the diagonal [first query, last query] is one partial run, and later keys
// are never listed: cutting at the first query keeps the masked part to one tile-sized triangle.
inline void add_span_blocks(const TokenRect& q, index_t k_begin, index_t k_end, RegionPair pair, bool causal,
                            index_t key_tile, std::vector<KeyBlock>& blocks) {
  const index_t full_end = causal ? std::clamp(q.first(), k_begin, k_end) : k_end;
  const index_t end = causal ? std::clamp(q.last() + 1, k_begin, k_end) : k_end;
  for (index_t k0 = k_begin; k0 < end;) {
    const index_t stop = k0 < full_end ? full_end : end;
    const TokenRect keys = TokenRect::span(k0, std::min(key_tile, stop - k0));
    KeyBlock block{keys, true, pair, {}};
    if (causal && keys.last() > q.first()) {
      block.full = false;
      block.mask.causal = true;
    }
    blocks.push_back(block);
    k0 += keys.cols;
  }
}

class PlanBuilder {
 public:
  PlanBuilder(const SequenceLayout& layout, const RegionPolicy& policy, Plan& plan)
      : layout_(layout), policy_(policy), plan_(plan) {}

  void add_query_tile(const TokenRect& queries, index_t segment) {
    QueryTile tile{queries, segment, static_cast<index_t>(plan_.blocks.size()), 0, 0};
    for (index_t ks = 0; ks < layout_.num_segments(); ++ks) {
      const RegionPair pair = region_pair(layout_, segment, ks);
      const Rule& rule = policy_.rule(pair);
      if (rule.access == Access::full) add_full_blocks(queries, layout_.segment(ks), pair, rule.causal);
      if (rule.access == Access::window) add_window_blocks(queries, layout_.segment(ks), rule);
    }
    tile.block_end = static_cast<index_t>(plan_.blocks.size());
    plan_.query_tiles.push_back(tile);
  }

 private:
  void add_full_blocks(const TokenRect& q, const Segment& keys, RegionPair pair, bool causal) {
    add_span_blocks(q, keys.start, keys.end(), pair, causal, plan_.tiles.key, plan_.blocks);
  }

  // Keys of the window union of the tile's queries, cut into rects of at most tiles.key keys.
  void add_window_blocks(const TokenRect& q, const Segment& image, const Rule& rule) {
    const Window2D& w = rule.window;
    const index_t offset = q.start - image.start;
    const index_t qr0 = offset / image.cols, qr1 = qr0 + q.rows;
    const index_t qc0 = offset % image.cols, qc1 = qc0 + q.cols;
    auto row_window = [&](index_t r) { return w.row_window(r, image.rows); };
    auto col_window = [&](index_t c) { return w.col_window(c, image.cols); };

    index_t r_lo = image.rows, r_hi = 0, c_lo = image.cols, c_hi = 0;
    for (index_t r = qr0; r < qr1; ++r) r_lo = std::min(r_lo, row_window(r).start), r_hi = std::max(r_hi, row_window(r).end);
    for (index_t c = qc0; c < qc1; ++c) c_lo = std::min(c_lo, col_window(c).start), c_hi = std::max(c_hi, col_window(c).end);
    if (rule.causal) r_hi = std::min(r_hi, qr1);  // later rows hold only later positions

    const index_t u_rows = r_hi - r_lo, u_cols = c_hi - c_lo, cap = plan_.tiles.key;
    const index_t col_chunk = std::min(u_cols, cap);
    const index_t col_chunks = (u_cols + col_chunk - 1) / col_chunk;
    const index_t rows_per = std::max<index_t>(1, cap / col_chunk);
    const index_t row_chunks = (u_rows + rows_per - 1) / rows_per;
    const index_t rows_even = (u_rows + row_chunks - 1) / row_chunks;  // balance the chunks
    const index_t cols_even = (u_cols + col_chunks - 1) / col_chunks;
    for (index_t r0 = r_lo; r0 < r_hi; r0 += rows_even) {
      for (index_t c0 = c_lo; c0 < c_hi; c0 += cols_even) {
        const index_t r1 = std::min(r0 + rows_even, r_hi), c1 = std::min(c0 + cols_even, c_hi);
        const AxisCover rows = axis_cover(qr0, qr1, r0, r1, row_window);
        const AxisCover cols = axis_cover(qc0, qc1, c0, c1, col_window);
        if (!rows.any || !cols.any) continue;
        const TokenRect keys{image.start + r0 * image.cols + c0, image.cols, r1 - r0, c1 - c0};
        const bool causal_full = !rule.causal || keys.last() <= q.first();
        if (rule.causal && keys.first() > q.last()) continue;
        const bool window_full = rows.all && cols.all;
        if (!window_full && !causal_full && !window_causal_nonempty(q, image, w, r0, r1, c0, c1)) continue;
        KeyBlock b{keys, window_full && causal_full, RegionPair::image_same_image, {}};
        b.mask = {!causal_full, !window_full, w, image.start, image.rows, image.cols};
        plan_.blocks.push_back(b);
      }
    }
  }

  // Window and causality can each allow some pairs yet none together: look for one query whose
  // earliest window key in the block is not after it. O(queries), not O(queries x keys).
  static bool window_causal_nonempty(const TokenRect& q, const Segment& image, const Window2D& w, index_t r0,
                                     index_t r1, index_t c0, index_t c1) {
    for (index_t i = 0; i < q.size(); ++i) {
      const index_t pos = q.at(i), offset = pos - image.start;
      const AxisWindow rw = w.row_window(offset / image.cols, image.rows);
      const AxisWindow cw = w.col_window(offset % image.cols, image.cols);
      const index_t kr = rw.first_at_or_after(r0), kc = cw.first_at_or_after(c0);
      if (kr < std::min(rw.end, r1) && kc < std::min(cw.end, c1) && image.start + kr * image.cols + kc <= pos)
        return true;
    }
    return false;
  }

  const SequenceLayout& layout_;
  const RegionPolicy& policy_;
  Plan& plan_;
};

inline index_t computed_pairs(const Plan& plan, size_t first_tile) {
  index_t n = 0;
  for (size_t t = first_tile; t < plan.query_tiles.size(); ++t) {
    const QueryTile& tile = plan.query_tiles[t];
    for (index_t b = tile.block_begin; b < tile.block_end; ++b)
      n += tile.queries.size() * plan.blocks[static_cast<size_t>(b)].keys.size();
  }
  return n;
}

}  // namespace detail

inline Plan make_plan(const SequenceLayout& layout, const RegionPolicy& policy, const PlanOptions& options = {}) {
  layout.validate();
  policy.validate();
  const TileSizes tiles = options.tiles;
  MMATTN_REQUIRE(tiles.query > 0 && tiles.key > 0, "plan: tile sizes must be positive, got " +
                                                       std::to_string(tiles.query) + " x " + std::to_string(tiles.key));
  const index_t q_end = options.query_end < 0 ? layout.size() : options.query_end;
  MMATTN_REQUIRE(options.query_begin >= 0 && options.query_begin < q_end && q_end <= layout.size(),
                 "plan: query range [" + std::to_string(options.query_begin) + ", " + std::to_string(q_end) +
                     ") must be a non-empty part of [0, " + std::to_string(layout.size()) + ")");
  Plan plan;
  plan.tiles = tiles;
  plan.query_begin = options.query_begin;
  plan.query_end = q_end;
  plan.key_tokens = layout.size();
  detail::PlanBuilder builder(layout, policy, plan);
  std::vector<TokenRect> rects;

  for (index_t s = 0; s < layout.num_segments(); ++s) {
    const Segment& seg = layout.segment(s);
    if (seg.end() <= plan.query_begin || seg.start >= plan.query_end) continue;
    if (!seg.is_image()) {
      const index_t a = std::max(seg.start, plan.query_begin), b = std::min(seg.end(), plan.query_end);
      for (index_t q0 = a; q0 < b; q0 += tiles.query)
        builder.add_query_tile(TokenRect::span(q0, std::min(tiles.query, b - q0)), s);
      continue;
    }
    auto add_image_tiles = [&](ImageTiling tiling) {
      const index_t rows = tiling == ImageTiling::patches ? tiles.window_query_rows() : tiles.query;
      const detail::PatchShape shape = detail::tile_shape(seg, rows, tiling);
      rects.clear();
      for (index_t r0 = 0; r0 < seg.rows; r0 += shape.rows)
        for (index_t c0 = 0; c0 < seg.cols; c0 += shape.cols)
          detail::clip_rect({seg.start + r0 * seg.cols + c0, seg.cols, std::min(shape.rows, seg.rows - r0),
                             std::min(shape.cols, seg.cols - c0)},
                            plan.query_begin, plan.query_end, rects);
      for (const TokenRect& r : rects) builder.add_query_tile(r, s);
    };
    ImageTiling tiling = options.image_tiling;
    if (tiling == ImageTiling::automatic) {
      // Only a window makes the tiling matter; then plan both and keep the cheaper.
      tiling = ImageTiling::row_strips;
      if (policy.rule(RegionPair::image_same_image).access == Access::window) {
        const size_t tiles_before = plan.query_tiles.size(), blocks_before = plan.blocks.size();
        index_t cost[2] = {0, 0};
        for (int i = 0; i < 2; ++i) {
          add_image_tiles(i == 0 ? ImageTiling::row_strips : ImageTiling::patches);
          cost[i] = detail::computed_pairs(plan, tiles_before);
          plan.query_tiles.resize(tiles_before);
          plan.blocks.resize(blocks_before);
        }
        if (cost[1] < cost[0]) tiling = ImageTiling::patches;
      }
    }
    add_image_tiles(tiling);
  }
  plan.finish();
  return plan;
}

}  // namespace mmattn
