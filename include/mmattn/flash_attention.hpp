#pragma once
// The global kernel: FlashAttention-2 forward over one sequence, dense or causal. Causal is the
// window (infinity, 0) on positions (mask/causal.hpp): key tiles wholly at or below the diagonal
// are full, the tiles crossing it are masked, and tiles above it are never visited.

#include <algorithm>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/tile_traits.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/planner.hpp"

namespace mmattn {

struct GlobalOptions {
  bool causal = false;
  // Query row i sits at position query_offset + i; the keys are positions [0, key_tokens).
  // Chunked prefill passes the chunk's start (the queries are the last rows of the keys).
  index_t query_offset = 0;
};

// The block list of global attention: one text segment of keys under a dense or causal rule, with
// the query tiles placed at query_offset (they may reach past the keys: then they see them all).
inline Plan plan_global(index_t query_tokens, index_t key_tokens, const GlobalOptions& options, TileSizes tiles) {
  MMATTN_REQUIRE(options.query_offset >= 0,
                 "query_offset must be non-negative, got " + std::to_string(options.query_offset));
  tiles.validate();
  Plan plan;
  plan.tiles = tiles;
  plan.query_begin = options.query_offset;
  plan.query_end = detail::checked_add(options.query_offset, query_tokens, "query_offset + query tokens");
  plan.key_tokens = key_tokens;
  plan.policy = std::make_shared<const RegionPolicy>(options.causal ? RegionPolicy::decoder_causal()
                                                                    : RegionPolicy::dense());
  if (key_tokens > 0) plan.layout.add_text(key_tokens);  // no keys: tiles without blocks, rows empty
  PairMask::TileSets sets;
  for (index_t q0 = plan.query_begin; q0 < plan.query_end; q0 += tiles.query) {
    const TokenRect queries = TokenRect::span(q0, std::min(tiles.query, plan.query_end - q0));
    QueryTile tile{queries, 0, static_cast<index_t>(plan.blocks.size()), 0, 0};
    std::vector<index_t> cuts;
    if (options.causal) cuts.push_back(queries.first());
    if (key_tokens > 0) {
      const PairMask mask = plan.policy->pair(plan.layout, 0, 0);
      mask.bind(queries, sets);
      const index_t end = options.causal ? std::min(key_tokens, queries.last() + 1) : key_tokens;  // none above the diagonal
      detail::add_span_blocks(sets, mask, 0, 0, end, std::move(cuts), tiles.key, plan.blocks);
    }
    tile.block_end = static_cast<index_t>(plan.blocks.size());
    plan.query_tiles.push_back(tile);
  }
  plan.finish();
  return plan;
}

// O = softmax(scale * Q K^T [masked]) V for every head. Q/O: [query_tokens, num_heads, head_dim];
// K/V: [key_tokens, num_kv_heads, head_dim]; lse optional, [query_tokens, num_heads].
template <class Tiles = DefaultTiles, class TQ, class TK, class TV, class TO>
void flash_attention(const AttentionConfig& cfg, const TensorView<TQ>& q, const TensorView<TK>& k,
                     const TensorView<TV>& v, const TensorView<TO>& out, const LseView& lse = {},
                     const GlobalOptions& options = {}, const Executor& executor = Executor::default_executor()) {
  static_assert_element_types<TensorView<TQ>, TensorView<TK>, TensorView<TV>, TensorView<TO>>();
  validate_attention(cfg, q, k, v, out, lse);
  const Plan plan = plan_global(q.tokens, k.tokens, options, Tiles::sizes());
  kernel::execute_plan(plan, cfg, q, k, v, out, lse, executor);
}

}  // namespace mmattn
