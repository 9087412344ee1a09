#pragma once
// Decode: the newest 1..few tokens of a sequence attend to the KV cache holding the whole sequence
// so far (images and earlier text) under the same region policy, so a new text token sees every
// image and all earlier text. The query tile has few rows, so the keys are split over the workers
// (split-KV) and the partial results merged exactly through their log-sum-exp; each worker streams
// its keys' rows for every head in memory order, each row read once for all the query heads that
// use it (kernel/decode_kernel.hpp). The cache may be contiguous (TensorView) or paged (PagedKVView).
//
// Chunked prefill is forward() with a plan over a query slice (PlanOptions::query_begin / query_end);
// decode is the slice that ends at the layout's end, planned per step here (the layout grows by the
// new tokens each step; planning one tile is microseconds).

#include <string>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/split_kv.hpp"
#include "mmattn/kernel/tile_traits.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/paged_kv.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

struct DecodeOptions {
  TileSizes tiles = DefaultTiles::sizes();
  SplitKvOptions split{};
};

// The plan of the last `new_tokens` positions of `layout` against all of its positions.
inline Plan plan_decode(const SequenceLayout& layout, const RegionPolicy& policy, index_t new_tokens,
                        TileSizes tiles = DefaultTiles::sizes()) {
  MMATTN_REQUIRE(new_tokens >= 1 && new_tokens <= layout.size(),
                 "decode: new tokens (" + std::to_string(new_tokens) + ") must be in [1, " +
                     std::to_string(layout.size()) + "], the layout's length");
  PlanOptions options;
  options.tiles = tiles;
  options.query_begin = layout.size() - new_tokens;
  return make_plan(layout, policy, options);
}

// Q/O: [m, num_heads, head_dim], the layout's last m positions (m = q.tokens); K/V: the cache,
// [layout.size(), num_kv_heads, head_dim], TensorView or PagedKVView; lse optional, [m, num_heads].
// Elements: float, Eigen::bfloat16 or Eigen::half in any mix.
template <class TQ, class KView, class VView, class TO>
void decode_attention(const AttentionConfig& cfg, const SequenceLayout& layout, const RegionPolicy& policy,
                      const TensorView<TQ>& q, const KView& k, const VView& v, const TensorView<TO>& out,
                      const LseView& lse = {}, const DecodeOptions& options = {},
                      const Executor& executor = Executor::default_executor()) {
  static_assert_element_types<TensorView<TQ>, KView, VView, TensorView<TO>>();
  validate_attention(cfg, q, k, v, out, lse);
  MMATTN_REQUIRE(k.tokens == layout.size(), "k: the cache holds " + std::to_string(k.tokens) +
                                                " tokens but the layout holds " + std::to_string(layout.size()));
  const Plan plan = plan_decode(layout, policy, q.tokens, options.tiles);
  kernel::execute_split_kv(plan, cfg, q, k, v, out, lse, executor, options.split);
}

}  // namespace mmattn
