#pragma once
// Many sequences in one call, as a serving runtime batches requests (FlashAttention's varlen
// `cu_seqlens`, FlashInfer's batch prefill / decode over paged caches): each sequence has its own
// layout, policy, query range and K/V (a TensorView or a PagedKVView, i.e. its own block table);
// the queries and outputs of all sequences are packed into one [total_queries, heads, head_dim]
// tensor, sequence i holding rows [cu_seqlens[i], cu_seqlens[i + 1]).
//
// One sequence per call leaves workers idle on a short sequence and pays a fork/join per
// sequence; here the work items of every sequence go to one Executor call. Each sequence keeps its
// own plan and its own items, so its rows are what a call for it alone computes:
//   forward()          = MultimodalAttention::forward per sequence, bitwise (same tiles, same order
//                        of accumulation);
//   forward_split_kv() = decode_attention / forward_split_kv per sequence, bitwise when each
//                        sequence's key chunks are the same (SplitKvOptions::splits > 0); with the
//                        automatic choice a long sequence is split by its share of the batch's cost,
//                        so it may be cut differently than alone (equal to fp32 rounding).
// Plans are made once at construction and reused by every layer.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/split_kv.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/paged_kv.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/plan_cache.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

// One sequence of a batch: its layout, rules and the positions whose queries this call computes.
struct BatchSequence {
  SequenceLayout layout;
  RegionPolicy policy;
  index_t query_begin = 0;  // queries are positions [query_begin, query_end), as in chunked prefill
  index_t query_end = -1;   // -1: the layout's end

  // Decode: the last `new_tokens` positions of the layout (plan_decode's query range).
  static BatchSequence decode(SequenceLayout layout, RegionPolicy policy, index_t new_tokens) {
    const index_t n = layout.size();
    MMATTN_REQUIRE(new_tokens >= 1 && new_tokens <= n, "batch: new tokens (" + std::to_string(new_tokens) +
                                                           ") must be in [1, " + std::to_string(n) +
                                                           "], the layout's length");
    return {std::move(layout), std::move(policy), n - new_tokens, -1};
  }
};

namespace detail {

// The one place a batch plans a sequence: through `cache` where given, so a shape seen before
// costs a lookup.
inline std::shared_ptr<const Plan> plan_batch_sequence(const BatchSequence& s, PlanOptions options, PlanCache* cache) {
  options.query_begin = s.query_begin;
  options.query_end = s.query_end;
  if (cache != nullptr) return cache->get(s.layout, s.policy, options);
  return std::make_shared<const Plan>(make_plan(s.layout, s.policy, options));
}

// One past the last position a plan's blocks read: the K/V rows a sequence's views must hold.
inline index_t keys_read(const Plan& plan) {
  index_t end = 0;
  for (const KeyBlock& b : plan.blocks)
    if (b.keys.size() > 0) end = std::max(end, b.keys.last() + 1);
  return end;
}

inline index_t plan_cost(const Plan& plan) {
  index_t cost = 0;
  for (const QueryTile& t : plan.query_tiles) cost += t.computed_pairs;
  return cost;
}

// Rows [begin, begin + tokens) of a packed [tokens, heads, ...] view.
template <class T>
TensorView<T> token_rows(const TensorView<T>& v, index_t begin, index_t tokens) {
  TensorView<T> r = v;
  r.data = v.data + begin * v.token_stride;
  r.tokens = tokens;
  return r;
}
inline LseView token_rows(const LseView& v, index_t begin, index_t tokens) {
  if (!v) return v;
  LseView r = v;
  r.data = v.data + begin * v.token_stride;
  r.tokens = tokens;
  return r;
}

}  // namespace detail

class BatchedAttention {
 public:
  // Plans every sequence (options' query range is each sequence's own), through `cache` where
  // given: a runtime building a batch per step plans each shape once.
  BatchedAttention(AttentionConfig config, const std::vector<BatchSequence>& sequences, const PlanOptions& options = {},
                   Executor executor = Executor::default_executor(), PlanCache* cache = nullptr)
      : config_(std::move(config)), executor_(std::move(executor)) {
    config_.validate();
    MMATTN_REQUIRE(!sequences.empty(), "batch: no sequences");
    plans_.reserve(sequences.size());
    for (size_t i = 0; i < sequences.size(); ++i) {
      try {
        plans_.push_back(detail::plan_batch_sequence(sequences[i], options, cache));
      } catch (const Error& e) {
        detail::fail("batch: sequence " + std::to_string(i) + ": " + strip_prefix(e.what()));
      }
    }
    index_plans();
  }

  // Plans made elsewhere: a plan cache's, or cascade.hpp's suffix plans.
  BatchedAttention(AttentionConfig config, std::vector<std::shared_ptr<const Plan>> plans,
                   Executor executor = Executor::default_executor())
      : config_(std::move(config)), executor_(std::move(executor)), plans_(std::move(plans)) {
    config_.validate();
    MMATTN_REQUIRE(!plans_.empty(), "batch: no sequences");
    for (size_t i = 0; i < plans_.size(); ++i)
      MMATTN_REQUIRE(plans_[i] != nullptr, "batch: plan " + std::to_string(i) + " is null");
    index_plans();
  }

  index_t num_sequences() const { return static_cast<index_t>(plans_.size()); }
  const Plan& plan(index_t i) const { return *plans_[static_cast<size_t>(i)]; }
  const AttentionConfig& config() const { return config_; }
  const Executor& executor() const { return executor_; }
  // The cu_seqlens the plans imply: [0, q_0, q_0 + q_1, ..., total_queries()].
  const std::vector<index_t>& query_offsets() const { return offsets_; }
  index_t total_queries() const { return offsets_.back(); }
  // K/V rows sequence i reads: its views must hold at least this many tokens.
  index_t keys_read(index_t i) const { return keys_read_[static_cast<size_t>(i)]; }

  // Q/O: [total_queries, num_heads, head_dim], sequence i at rows [cu_seqlens[i], cu_seqlens[i + 1]),
  // its query positions in order; k[i], v[i]: sequence i's keys by position, [>= keys_read(i),
  // num_kv_heads, head_dim], TensorView or PagedKVView; lse optional, [total_queries, num_heads].
  // Every (sequence, head, query tile) is one item of one executor call: sequences costliest first,
  // each sequence's items in execute_plan's order (kernel::PlanItemOrder), so the last items handed
  // out are the cheapest sequence's smallest tiles.
  template <class TQ, class KView, class VView, class TO>
  void forward(const TensorView<TQ>& q, const std::vector<index_t>& cu_seqlens, const std::vector<KView>& k,
               const std::vector<VView>& v, const TensorView<TO>& out, const LseView& lse = {}) const {
    validate(q, cu_seqlens, k, v, out, lse);
    const index_t n = num_sequences(), heads = config_.num_heads;
    std::vector<index_t> item_end(static_cast<size_t>(n));  // in the cost order
    std::vector<std::uint64_t> calls(static_cast<size_t>(n));
    std::vector<kernel::PlanItemOrder> orders;
    orders.reserve(static_cast<size_t>(n));
    for (index_t s = 0; s < n; ++s) orders.emplace_back(plan(s), heads);
    index_t items = 0;
    for (index_t r = 0; r < n; ++r) {
      const index_t s = order_[static_cast<size_t>(r)];
      items += orders[static_cast<size_t>(s)].size();
      item_end[static_cast<size_t>(r)] = items;
      calls[static_cast<size_t>(s)] = kernel::next_call_id();  // its own K/V: its own packed-block cache
    }
    executor_.parallel_for(items, [&](index_t item) {
      const auto r = static_cast<size_t>(std::upper_bound(item_end.begin(), item_end.end(), item) - item_end.begin());
      const index_t s = order_[r], local = item - (r == 0 ? 0 : item_end[r - 1]);
      const Plan& p = plan(s);
      const kernel::PlanItemOrder& order = orders[static_cast<size_t>(s)];
      const index_t row0 = cu_seqlens[static_cast<size_t>(s)], rows = p.num_queries();
      kernel::run_plan_item(p, order.tile(local), order.head(local), calls[static_cast<size_t>(s)], config_,
                            detail::token_rows(q, row0, rows), k[static_cast<size_t>(s)], v[static_cast<size_t>(s)],
                            detail::token_rows(out, row0, rows), detail::token_rows(lse, row0, rows));
    });
  }

  // forward(), through split-KV (kernel/split_kv.hpp): decode and short chunks. Tiles of few rows
  // run every head per item over the cache in memory order; a tile is cut into key chunks by its
  // share of the whole batch's cost (a long sequence among short ones is split, a batch of many
  // equal sequences is not), and the key chunks of all sequences go to one executor call,
  // costliest first. A batch of one sequence is split exactly as forward_split_kv splits it alone.
  template <class TQ, class KView, class VView, class TO>
  void forward_split_kv(const TensorView<TQ>& q, const std::vector<index_t>& cu_seqlens, const std::vector<KView>& k,
                        const std::vector<VView>& v, const TensorView<TO>& out, const LseView& lse = {},
                        const SplitKvOptions& options = {}) const {
    validate(q, cu_seqlens, k, v, out, lse);
    const index_t n = num_sequences();
    const kernel::SplitKvBatch batch{n > 1 ? total_cost_ : 0};
    std::vector<kernel::SplitPlan> splits;
    splits.reserve(static_cast<size_t>(n));
    for (index_t s = 0; s < n; ++s)
      splits.push_back(kernel::plan_split_kv(plan(s), config_, executor_.concurrency(), options, batch));

    using Items = kernel::SplitKvItems<TensorView<TQ>, KView, VView, TO>;
    std::vector<float>& scratch = kernel::split_kv_scratch();
    std::vector<index_t> scratch_at(static_cast<size_t>(n));
    index_t floats = 0;
    for (index_t s = 0; s < n; ++s) {
      scratch_at[static_cast<size_t>(s)] = floats;
      floats += Items::scratch_floats(plan(s), config_, splits[static_cast<size_t>(s)]);
    }
    if (static_cast<index_t>(scratch.size()) < floats) scratch.resize(static_cast<size_t>(floats));

    std::vector<Items> runs;
    runs.reserve(static_cast<size_t>(n));
    for (index_t s = 0; s < n; ++s) {
      const index_t row0 = cu_seqlens[static_cast<size_t>(s)], rows = plan(s).num_queries();
      runs.emplace_back(plan(s), config_, splits[static_cast<size_t>(s)], detail::token_rows(q, row0, rows),
                        k[static_cast<size_t>(s)], v[static_cast<size_t>(s)], detail::token_rows(out, row0, rows),
                        detail::token_rows(lse, row0, rows), scratch.data() + scratch_at[static_cast<size_t>(s)]);
    }

    // Every (sequence, chunk), costliest item first; each brings its head items.
    struct Entry {
      index_t sequence, chunk, cost;
    };
    std::vector<Entry> entries;
    for (index_t s = 0; s < n; ++s)
      for (index_t c = 0; c < runs[static_cast<size_t>(s)].chunks(); ++c)
        entries.push_back({s, c, runs[static_cast<size_t>(s)].chunk_item_cost(c)});
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.cost > b.cost; });
    std::vector<index_t> item_end(entries.size());
    index_t items = 0;
    for (size_t e = 0; e < entries.size(); ++e)
      item_end[e] = items += runs[static_cast<size_t>(entries[e].sequence)].items_per_chunk();

    executor_.parallel_for(items, [&](index_t item) {
      const auto e = static_cast<size_t>(std::upper_bound(item_end.begin(), item_end.end(), item) - item_end.begin());
      const index_t which = item - (e == 0 ? 0 : item_end[e - 1]);
      runs[static_cast<size_t>(entries[e].sequence)].run(entries[e].chunk, which);
    });
  }

 private:
  static std::string strip_prefix(const std::string& what) {
    const std::string prefix = "mmattn: ";
    return what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what;
  }

  void index_plans() {
    const auto n = plans_.size();
    offsets_.assign(1, 0);
    keys_read_.resize(n);
    total_cost_ = 0;
    std::vector<index_t> cost(n);
    for (size_t i = 0; i < n; ++i) {
      offsets_.push_back(detail::checked_add(offsets_.back(), plans_[i]->num_queries(), "batch: total queries"));
      keys_read_[i] = detail::keys_read(*plans_[i]);
      cost[i] = detail::plan_cost(*plans_[i]);
      total_cost_ = detail::checked_add(total_cost_, cost[i], "batch: total cost");
    }
    order_.resize(n);
    for (size_t i = 0; i < n; ++i) order_[i] = static_cast<index_t>(i);
    std::stable_sort(order_.begin(), order_.end(),
                     [&](index_t a, index_t b) { return cost[static_cast<size_t>(a)] > cost[static_cast<size_t>(b)]; });
  }

  // Every argument, before anything is written.
  template <class TQ, class KView, class VView, class TO>
  void validate(const TensorView<TQ>& q, const std::vector<index_t>& cu, const std::vector<KView>& k,
                const std::vector<VView>& v, const TensorView<TO>& out, const LseView& lse) const {
    static_assert_element_types<TensorView<TQ>, KView, VView, TensorView<TO>>();
    const index_t n = num_sequences();
    const std::string count = std::to_string(n);
    MMATTN_REQUIRE(static_cast<index_t>(k.size()) == n,
                   "batch: k holds " + std::to_string(k.size()) + " views but the batch has " + count + " sequences");
    MMATTN_REQUIRE(static_cast<index_t>(v.size()) == n,
                   "batch: v holds " + std::to_string(v.size()) + " views but the batch has " + count + " sequences");
    MMATTN_REQUIRE(static_cast<index_t>(cu.size()) == n + 1, "batch: cu_seqlens holds " + std::to_string(cu.size()) +
                                                                 " offsets but " + count + " sequences need " +
                                                                 std::to_string(n + 1));
    MMATTN_REQUIRE(cu[0] == 0, "batch: cu_seqlens[0] must be 0, got " + std::to_string(cu[0]));
    for (index_t i = 0; i < n; ++i) {
      const auto at = static_cast<size_t>(i);
      const std::string here = "cu_seqlens[" + std::to_string(i + 1) + "] = " + std::to_string(cu[at + 1]);
      MMATTN_REQUIRE(cu[at + 1] >= cu[at], "batch: offsets must not decrease: " + here + " < cu_seqlens[" +
                                               std::to_string(i) + "] = " + std::to_string(cu[at]));
      MMATTN_REQUIRE(cu[at + 1] - cu[at] == plan(i).num_queries(),
                     "batch: " + here + " gives sequence " + std::to_string(i) + " " +
                         std::to_string(cu[at + 1] - cu[at]) + " query rows but its query range [" +
                         std::to_string(plan(i).query_begin) + ", " + std::to_string(plan(i).query_end) + ") holds " +
                         std::to_string(plan(i).num_queries()));
    }
    MMATTN_REQUIRE(cu.back() == q.tokens, "batch: cu_seqlens ends at " + std::to_string(cu.back()) + " but q has " +
                                              std::to_string(q.tokens) + " tokens");
    for (index_t i = 0; i < n; ++i) {
      const auto at = static_cast<size_t>(i);
      const std::string who = "sequence " + std::to_string(i) + ": ";
      try {
        validate_attention(config_, q, k[at], v[at], out, lse);
      } catch (const Error& e) {
        detail::fail("batch: " + who + strip_prefix(e.what()));
      }
      MMATTN_REQUIRE(k[at].tokens >= keys_read(i), "batch: " + who + "k holds " + std::to_string(k[at].tokens) +
                                                       " tokens but its plan reads keys up to position " +
                                                       std::to_string(keys_read(i) - 1));
    }
  }

  AttentionConfig config_;
  Executor executor_;
  std::vector<std::shared_ptr<const Plan>> plans_;
  std::vector<index_t> offsets_;    // cu_seqlens the plans imply
  std::vector<index_t> keys_read_;  // per sequence
  std::vector<index_t> order_;      // sequences by descending cost
  index_t total_cost_ = 0;
};

}  // namespace mmattn
