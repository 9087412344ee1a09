#pragma once
// Decode: the newest 1..few tokens of a sequence attend to the KV cache holding the whole sequence
// so far (images and earlier text) under the same region policy, so a new text token sees every
// image and all earlier text. The query tile has few rows, so the keys are split over the workers
// (split-KV) and the partial results merged exactly through their log-sum-exp; each worker streams
// its keys' rows for every head in memory order, each row read once for all the query heads that
// use it (kernel/decode_kernel.hpp). The cache may be contiguous (TensorView) or paged (PagedKVView).
//
// Chunked prefill is forward() with a plan over a query slice (PlanOptions::query_begin / query_end);
// decode is the slice that ends at the layout's end. A step is planned once (DecodeStep) and run
// by every layer. Grow the layout with SequenceLayout::extend_text, which lengthens the last text
// segment: planning a step then visits each segment once and stores a block per run of keys (a
// run the query sees in full is one block however long: plan.hpp), where a segment per token made
// it visit every generated token's segment (bench/serving BM_DecodeStepPlan at 1, 1k and 32k
// generated tokens).

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

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

// One decode step: the plan of the layout's last `new_tokens` positions, built once and shared by
// every layer of the step (immutable, so layers may run it from several threads at once).
class DecodeStep {
 public:
  DecodeStep(const SequenceLayout& layout, const RegionPolicy& policy, index_t new_tokens,
             TileSizes tiles = DefaultTiles::sizes())
      : plan_(std::make_shared<const Plan>(plan_decode(layout, policy, new_tokens, tiles))) {
    for (const KeyBlock& b : plan_->blocks) key_end_ = std::max(key_end_, b.keys.last() + 1);
  }
  // A plan of the last positions made elsewhere (a PlanCache's).
  explicit DecodeStep(std::shared_ptr<const Plan> plan) : plan_(std::move(plan)) {
    MMATTN_REQUIRE(plan_ && plan_->query_end == plan_->key_tokens,
                   "decode: a step's plan must end at its layout's last position");
    for (const KeyBlock& b : plan_->blocks) key_end_ = std::max(key_end_, b.keys.last() + 1);
  }

  const Plan& plan() const { return *plan_; }
  const SequenceLayout& layout() const { return plan_->layout; }
  index_t new_tokens() const { return plan_->num_queries(); }
  index_t query_begin() const { return plan_->query_begin; }
  // The keys the step reads are positions [0, key_end()): K/V views need only that many tokens.
  index_t key_end() const { return key_end_; }

 private:
  std::shared_ptr<const Plan> plan_;
  index_t key_end_ = 0;
};

// Q/O: [m, num_heads, head_dim], the step's m new positions (m = step.new_tokens()); K/V: the
// cache, TensorView or PagedKVView, holding at least the keys the step reads (step.key_end()
// tokens; more, such as the cache's capacity, are never read); lse optional, [m, num_heads].
// Elements: float, Eigen::bfloat16 or Eigen::half in any mix.
template <class TQ, class KView, class VView, class TO>
void decode_attention(const AttentionConfig& cfg, const DecodeStep& step, const TensorView<TQ>& q, const KView& k,
                      const VView& v, const TensorView<TO>& out, const LseView& lse = {},
                      const SplitKvOptions& split = {}, const Executor& executor = Executor::default_executor()) {
  static_assert_element_types<TensorView<TQ>, KView, VView, TensorView<TO>>();
  validate_attention(cfg, q, k, v, out, lse);
  MMATTN_REQUIRE(q.tokens == step.new_tokens(), "q: holds " + std::to_string(q.tokens) +
                                                    " tokens but the decode step has " +
                                                    std::to_string(step.new_tokens()) + " new tokens");
  MMATTN_REQUIRE(k.tokens >= step.key_end(),
                 "k: the cache holds " + std::to_string(k.tokens) + " tokens but the layout holds " +
                     std::to_string(step.layout().size()) + " and the step reads keys [0, " +
                     std::to_string(step.key_end()) + ")");
  kernel::execute_split_kv(step.plan(), cfg, q, k, v, out, lse, executor, split);
}

// decode_attention for one layer, planning the step on the way (a model with many layers builds
// one DecodeStep per step instead). K/V hold the layout's tokens.
template <class TQ, class KView, class VView, class TO>
void decode_attention(const AttentionConfig& cfg, const SequenceLayout& layout, const RegionPolicy& policy,
                      const TensorView<TQ>& q, const KView& k, const VView& v, const TensorView<TO>& out,
                      const LseView& lse = {}, const DecodeOptions& options = {},
                      const Executor& executor = Executor::default_executor()) {
  static_assert_element_types<TensorView<TQ>, KView, VView, TensorView<TO>>();
  validate_attention(cfg, q, k, v, out, lse);
  MMATTN_REQUIRE(k.tokens == layout.size(), "k: the cache holds " + std::to_string(k.tokens) +
                                                " tokens but the layout holds " + std::to_string(layout.size()));
  decode_attention(cfg, DecodeStep(layout, policy, q.tokens, options.tiles), q, k, v, out, lse, options.split,
                   executor);
}

}  // namespace mmattn
