#pragma once
// The global kernel: FlashAttention-2 forward over one sequence, dense or causal. Causal is the
// window (infinity, 0) on positions (mask/causal.hpp): key tiles wholly at or below the diagonal
// are full, the tiles crossing it are masked, and tiles above it are never visited.

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

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

// The block list of global attention, with the query tiles placed at query_offset (they may reach
// past the keys: then they see them all). The keys are planned as one text segment under a dense
// or causal rule, whatever the tokens are: statistics of this plan count every pair text->text,
// so an image's share of a multimodal sequence needs make_plan with its layout.
inline Plan plan_global(index_t query_tokens, index_t key_tokens, const GlobalOptions& options, TileSizes tiles) {
  MMATTN_REQUIRE(options.query_offset >= 0,
                 "query_offset must be non-negative, got " + std::to_string(options.query_offset));
  const index_t q_begin = options.query_offset;
  const index_t q_end = detail::checked_add(q_begin, query_tokens, "query_offset + query tokens");
  SequenceLayout keys;
  if (key_tokens > 0) keys.add_text(key_tokens);  // no keys: tiles without blocks, rows empty
  PlanBuilder builder(std::move(keys),
                      std::make_shared<const RegionPolicy>(options.causal ? RegionPolicy::decoder_causal()
                                                                          : RegionPolicy::dense()),
                      tiles, q_begin, q_end, key_tokens);
  for (index_t q0 = q_begin; q0 < q_end; q0 += tiles.query)
    builder.add_query_tile(TokenRect::span(q0, std::min(tiles.query, q_end - q0)), /*segment=*/0);
  return builder.finish();
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
