#pragma once
// What a plan is made of: query tiles, and for each the key blocks worth visiting, each tagged
// full (every pair allowed, no mask work) or partial (with the rule that masks it).

#include <algorithm>
#include <vector>

#include "mmattn/config.hpp"
#include "mmattn/policy.hpp"

namespace mmattn {

// A set of sequence positions: `rows` runs of `cols` consecutive positions, `pitch` apart.
// A text span is one row; a patch of an image grid has pitch = the grid's width.
struct TokenRect {
  index_t start = 0;
  index_t pitch = 0;
  index_t rows = 0, cols = 0;

  static TokenRect span(index_t start, index_t length) { return {start, length, 1, length}; }

  index_t size() const { return rows * cols; }
  bool contiguous() const { return rows == 1 || pitch == cols; }
  index_t first() const { return start; }
  index_t last() const { return start + (rows - 1) * pitch + cols - 1; }
  index_t at(index_t i) const { return start + (i / cols) * pitch + i % cols; }
};

// The rule a partial block is masked by. Window coordinates are relative to one image's grid.
struct BlockMask {
  bool causal = false;
  bool window = false;
  Window2D shape{};
  index_t image_start = 0, grid_rows = 1, grid_cols = 1;
};

struct KeyBlock {
  TokenRect keys;
  bool full = true;
  RegionPair region = RegionPair::text_text;
  BlockMask mask{};  // meaningful only when !full
};

struct QueryTile {
  TokenRect queries;
  index_t segment = 0;
  index_t block_begin = 0, block_end = 0;  // into Plan::blocks
  index_t computed_pairs = 0;              // queries x keys over its blocks: the tile's cost
};

struct TileSizes {
  index_t query = 64;  // rows of a query tile
  index_t key = 128;   // keys in a key block
  // Rows of an image's query patch under a 2-D window (0: `query`). Smaller patches shrink the
  // window union each query tile must visit, at the price of shorter GEMMs.
  index_t window_query = 0;

  index_t window_query_rows() const { return window_query > 0 ? std::min(window_query, query) : query; }
};

struct Plan {
  TileSizes tiles;
  index_t query_begin = 0, query_end = 0;  // the queries are positions [query_begin, query_end)
  index_t key_tokens = 0;                  // the keys are positions [0, key_tokens)
  std::vector<QueryTile> query_tiles;
  std::vector<KeyBlock> blocks;
  std::vector<index_t> tile_order;  // query tiles by descending cost: the order work is handed out

  index_t num_queries() const { return query_end - query_begin; }
  index_t max_key_block() const {
    index_t n = 0;
    for (const KeyBlock& b : blocks) n = std::max(n, b.keys.size());
    return n;
  }
  index_t max_query_tile() const {
    index_t n = 0;
    for (const QueryTile& t : query_tiles) n = std::max(n, t.queries.size());
    return n;
  }

  // Call after the tiles are in: fills each tile's cost and the cost order.
  void finish() {
    tile_order.clear();
    for (size_t t = 0; t < query_tiles.size(); ++t) {
      QueryTile& tile = query_tiles[t];
      tile.computed_pairs = 0;
      for (index_t b = tile.block_begin; b < tile.block_end; ++b)
        tile.computed_pairs += tile.queries.size() * blocks[static_cast<size_t>(b)].keys.size();
      tile_order.push_back(static_cast<index_t>(t));
    }
    std::stable_sort(tile_order.begin(), tile_order.end(), [&](index_t a, index_t b) {
      return query_tiles[static_cast<size_t>(a)].computed_pairs > query_tiles[static_cast<size_t>(b)].computed_pairs;
    });
  }
};

}  // namespace mmattn
