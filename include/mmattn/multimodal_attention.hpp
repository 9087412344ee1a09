#pragma once
// The class users call: holds a head config, a sequence layout, region rules and the plan built
// from them once, and runs exact attention under that mask for any number of layers and calls.

#include <string>
#include <type_traits>
#include <utility>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/split_kv.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/plan_report.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"

namespace mmattn {

// T is the element type the runtime stores Q, K, V and O in; forward() also takes other mixes.
template <class T = float>
class MultimodalAttention {
 public:
  MultimodalAttention(AttentionConfig config, SequenceLayout layout, RegionPolicy policy,
                      PlanOptions options = {},
                      Executor executor = Executor::default_executor())
      : config_(std::move(config)),
        layout_(std::move(layout)),
        policy_(std::move(policy)),
        executor_(std::move(executor)) {
    config_.validate();
    plan_ = make_plan(layout_, policy_, options);
  }

  // Q/O: [plan().num_queries(), num_heads, head_dim] for positions [query_begin, query_end);
  // K/V: [layout().size(), num_kv_heads, head_dim]; lse optional, [num_queries, num_heads].
  // Elements: float, Eigen::bfloat16 or Eigen::half in any mix, fp32 arithmetic throughout.
  // K and V: TensorView or PagedKVView (paged_kv.hpp).
  // Safe to call concurrently on one object: the plan is read-only and scratch is per thread.
  template <class TQ, class KView, class VView, class TO>
  void forward(const TensorView<TQ>& q, const KView& k, const VView& v, const TensorView<TO>& out,
               const LseView& lse = {}) const {
    validate_forward(q, k, v, out, lse);
    kernel::execute_plan(plan_, config_, q, k, v, out, lse, executor_);
  }

  // forward(), with each query tile's keys split into chunks run in parallel and merged exactly
  // when the plan has too few work items for the executor: decode, short chunks, few heads.
  // Tiles of few rows run every head per item, streaming K and V in memory order (decode_kernel.hpp).
  // Results equal forward()'s to fp32 rounding (not bitwise).
  template <class TQ, class KView, class VView, class TO>
  void forward_split_kv(const TensorView<TQ>& q, const KView& k, const VView& v, const TensorView<TO>& out,
                        const LseView& lse = {}, const SplitKvOptions& options = {}) const {
    validate_forward(q, k, v, out, lse);
    kernel::execute_split_kv(plan_, config_, q, k, v, out, lse, executor_, options);
  }

  const AttentionConfig& config() const { return config_; }
  const SequenceLayout& layout() const { return layout_; }
  const RegionPolicy& policy() const { return policy_; }
  const Plan& plan() const { return plan_; }
  const Executor& executor() const { return executor_; }
  MaskPredicate predicate() const { return {&layout_, &policy_}; }

  // The plan's allowed / computed pairs per region pair; see plan_stats.hpp.
  PlanStats stats() const { return plan_stats(plan_); }
  // The readable token-structure analysis and the SVG block map; see plan_report.hpp. `threads`
  // scales the workspace line to the team that will run forward().
  std::string report(int threads = 1) const { return plan_report(plan_, layout_, policy_, config_, threads); }
  std::string svg() const { return plan_svg(plan_, layout_); }

 private:
  template <class TQ, class KView, class VView, class TO>
  void validate_forward(const TensorView<TQ>& q, const KView& k, const VView& v, const TensorView<TO>& out,
                        const LseView& lse) const {
    static_assert_element_types<TensorView<TQ>, KView, VView, TensorView<TO>>();
    validate_attention(config_, q, k, v, out, lse);
    MMATTN_REQUIRE(q.tokens == plan_.num_queries(), "q: has " + std::to_string(q.tokens) +
                                                        " tokens but the plan's query range holds " +
                                                        std::to_string(plan_.num_queries()));
    MMATTN_REQUIRE(k.tokens == layout_.size(), "k: has " + std::to_string(k.tokens) + " tokens but the layout holds " +
                                                   std::to_string(layout_.size()));
  }

  AttentionConfig config_;
  SequenceLayout layout_;
  RegionPolicy policy_;
  Executor executor_;
  Plan plan_;
};

}  // namespace mmattn
