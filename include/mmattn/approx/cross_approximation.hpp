#pragma once
// What the cross-attention approximations (pooled_cross.hpp, sparse_cross.hpp) share: the exact
// problem they start from (config, layout, policy), their own options and the executor, with the
// accessors, and the checks both make: plans over the whole sequence, Q and K over every position.

#include <string>
#include <utility>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::approx::detail {

template <class Options>
class CrossApproximation {
 public:
  const AttentionConfig& config() const { return config_; }
  const SequenceLayout& layout() const { return layout_; }
  const RegionPolicy& policy() const { return policy_; }
  const Executor& executor() const { return executor_; }
  const Options& options() const { return options_; }

 protected:
  // `name` starts every message ("pooled cross"); a string literal.
  CrossApproximation(const char* name, AttentionConfig config, SequenceLayout layout, RegionPolicy policy,
                     Options options, Executor executor)
      : config_(std::move(config)), layout_(std::move(layout)), policy_(std::move(policy)), options_(options),
        executor_(std::move(executor)), name_(name) {
    config_.validate();
    MMATTN_REQUIRE(layout_.video_tokens() == 0, std::string(name_) + ": approximates text -> image attention; "
                                                                     "layouts with videos are not supported");
    MMATTN_REQUIRE(policy_.sinks() == 0, std::string(name_) + ": policies with attention sinks are not supported "
                                                              "(a sink inside an image would count twice)");
  }

  // The approximations plan every query: a query range is refused.
  void require_whole_sequence(const PlanOptions& options) const {
    MMATTN_REQUIRE(options.query_begin == 0 && (options.query_end < 0 || options.query_end == layout_.size()),
                   std::string(name_) + ": plans cover the whole sequence; a query range is not supported");
  }

  // forward()'s checks: Q/O [layout().size(), num_heads, head_dim], K/V [layout().size(),
  // num_kv_heads, head_dim], lse optional.
  template <class TQ, class TK, class TV, class TO>
  void validate_forward(const TensorView<TQ>& q, const TensorView<TK>& k, const TensorView<TV>& v,
                        const TensorView<TO>& out, const LseView& lse) const {
    static_assert_element_types<TensorView<TQ>, TensorView<TK>, TensorView<TV>, TensorView<TO>>();
    validate_attention(config_, q, k, v, out, lse);
    MMATTN_REQUIRE(q.tokens == layout_.size() && k.tokens == layout_.size(),
                   std::string(name_) + ": q and k must hold the layout's " + std::to_string(layout_.size()) +
                       " tokens");
  }

  AttentionConfig config_;
  SequenceLayout layout_;
  RegionPolicy policy_;
  Options options_;
  Executor executor_;

 private:
  const char* name_;
};

}  // namespace mmattn::approx::detail
