#pragma once
// What a plan is made of: query tiles, and for each the key blocks worth visiting, each tagged
// full (every pair allowed, no mask work) or partial (masked by its segment pair's rule, which the
// plan keeps: a block names its key segment, not a copy of the rule's geometry). Plans are built
// by PlanBuilder (planner.hpp), which also fills the tiles' costs and the work order.
//
// A full block of one run of positions may hold more than tiles.key keys: the text a decode
// step's query sees, a causal prefix. Stored once, it costs the planner the same however long the
// run; the kernels run it in pieces of tiles.key keys (Plan::for_each_piece), and split-KV cuts a
// tile's work at piece edges.

#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "mmattn/config.hpp"
#include "mmattn/kernel/tile_traits.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/policy.hpp"
#include "mmattn/token_rect.hpp"

namespace mmattn {

struct KeyBlock {
  TokenRect keys;
  bool full = true;
  index_t key_segment = 0;  // the layout segment holding the keys
};

// Part of a query tile's work: its pieces [begin, end), counted from the tile's first block. A
// block longer than tiles.key is a piece per tiles.key keys (the last may be shorter), any other
// block one piece. The default is the whole tile.
struct PieceRange {
  index_t begin = 0, end = std::numeric_limits<index_t>::max();
};

struct QueryTile {
  TokenRect queries;
  index_t segment = 0;
  index_t block_begin = 0, block_end = 0;  // into Plan::blocks
  index_t computed_pairs = 0;              // queries x keys over its blocks: the tile's cost
};

struct Plan {
  TileSizes tiles;
  index_t query_begin = 0, query_end = 0;  // the queries are positions [query_begin, query_end)
  index_t key_tokens = 0;                  // the keys are positions [0, key_tokens)
  std::vector<QueryTile> query_tiles;
  std::vector<KeyBlock> blocks;
  std::vector<index_t> tile_order;  // query tiles by descending cost: the order work is handed out
  // What a partial block is masked by: the segments and the policy the plan was made from.
  SequenceLayout layout;
  std::shared_ptr<const RegionPolicy> policy;

  index_t num_queries() const { return query_end - query_begin; }
  index_t max_query_tile() const {
    index_t n = 0;
    for (const QueryTile& t : query_tiles) n = std::max(n, t.queries.size());
    return n;
  }
  // Pieces a block is run as; piece j of a block, a KeyBlock of at most tiles.key keys.
  index_t pieces(const KeyBlock& block) const {
    const index_t n = block.keys.size();
    if (n <= tiles.key) return 1;
    // The one check of a long block, for PlanBuilder's blocks and a plan filled by hand alike: a
    // piece is a span, and a partial block's mask runs are kept per block, not per piece.
    MMATTN_REQUIRE(block.full && block.keys.rows == 1,
                   "plan: a block of " + std::to_string(n) + " keys > tiles.key (" + std::to_string(tiles.key) +
                       ") must be full and one run of positions");
    return (n + tiles.key - 1) / tiles.key;
  }
  KeyBlock piece(const KeyBlock& block, index_t j) const {
    if (block.keys.size() <= tiles.key) return block;
    const index_t first = j * tiles.key;  // a long block is one run of positions
    return {TokenRect::span(block.keys.start + first, std::min(tiles.key, block.keys.cols - first)), block.full,
            block.key_segment};
  }
  index_t pieces(const QueryTile& tile) const {
    index_t n = 0;
    for (index_t b = tile.block_begin; b < tile.block_end; ++b) n += pieces(blocks[static_cast<size_t>(b)]);
    return n;
  }
  // f(block index, piece) for the pieces of `range` of a tile, in order.
  template <class F>
  void for_each_piece(const QueryTile& tile, PieceRange range, F&& f) const {
    index_t p = 0;  // pieces before block b
    for (index_t b = tile.block_begin; b < tile.block_end && p < range.end; ++b) {
      const KeyBlock& block = blocks[static_cast<size_t>(b)];
      const index_t n = pieces(block);
      for (index_t j = std::max<index_t>(range.begin - p, 0); j < std::min(n, range.end - p); ++j) f(b, piece(block, j));
      p += n;
    }
  }

  // The mask of a partial block: its tile's segment against its key segment.
  PairMask mask(const QueryTile& tile, const KeyBlock& block) const {
    MMATTN_REQUIRE(policy, "plan: a partial block in a plan without rules (blocks a caller chose must be full)");
    return policy->pair(layout, tile.segment, block.key_segment);
  }
};

}  // namespace mmattn
