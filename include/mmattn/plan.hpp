#pragma once
// What a plan is made of: query tiles, and for each the key blocks worth visiting, each tagged
// full (every pair allowed, no mask work) or partial (masked by its segment pair's rule, which the
// plan keeps: a block names its key segment, not a copy of the rule's geometry). Plans are built
// by PlanBuilder (planner.hpp), which also fills the tiles' costs and the work order.

#include <algorithm>
#include <memory>
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
  // The mask of a partial block: its tile's segment against its key segment.
  PairMask mask(const QueryTile& tile, const KeyBlock& block) const {
    MMATTN_REQUIRE(policy, "plan: a partial block in a plan without rules (blocks a caller chose must be full)");
    return policy->pair(layout, tile.segment, block.key_segment);
  }
};

}  // namespace mmattn
