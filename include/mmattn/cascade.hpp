#pragma once
// Shared-prefix (cascade) attention: sequences whose first `prefix_tokens` positions hold the same
// K/V (the same image and system prompt asked about by many requests) attend to that prefix once,
// as one multi-query product of all their queries stacked (the packed [total_queries, heads,
// head_dim] Q of a batch) against the prefix K/V, then each to its own suffix (a batch over
// per-sequence plans whose keys start at the prefix's end), and the two parts merge exactly
// through their log-sum-exp (merge.hpp). Each prefix K/V row is read once for every
// query of the batch instead of once per sequence: decode over a long shared prefix stops being
// bound by re-reading it (bench/batched, BM_CascadeDecode).
//
// The prefix product stacks a GQA group: the query heads sharing a KV head are one tall matrix of
// rows (query, head of the group), run as one head of an MHA product against that KV head. Each
// prefix K/V block is then packed once per KV head, not by every thread that runs one of its
// query heads, and decode's few queries make G times taller tiles, whose per-block costs (packing,
// rescaling) more rows share (bench/batched, BM_CascadeDecode).
//
// Exact only where every query row sees the prefix through the same mask. Supported: every query
// of every sequence sees every prefix key (a text query after the prefix under decoder_causal,
// structured, bidirectional_images, any rule that is full or causal towards the prefix's
// segments). The constructor checks it from each sequence's rules (block classification, pair by
// pair where that is inconclusive) and throws an Error naming the sequence, a query and a prefix
// key it cannot see otherwise (a sliding window shorter than the distance to the prefix, an image
// query windowed inside a shared image, queries inside the prefix).

#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/batched_attention.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/split_kv.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/merge.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/planner.hpp"

namespace mmattn {

namespace detail {

// Every position of a segment as one rect (a video's frames stacked as one tall grid).
inline TokenRect segment_rect(const Segment& s) {
  return s.is_text() ? TokenRect::span(s.start, s.length) : TokenRect{s.start, s.cols, s.frames * s.rows, s.cols};
}

// Throws unless every query of `s` sees every key in [0, prefix).
inline void require_sees_whole_prefix(const BatchSequence& s, index_t prefix, index_t index) {
  const SequenceLayout& layout = s.layout;
  const index_t q_begin = s.query_begin, q_end = s.query_end < 0 ? layout.size() : s.query_end;
  const std::string who = "cascade: sequence " + std::to_string(index);
  std::vector<TokenRect> queries, keys;
  for (index_t qs = 0; qs < layout.num_segments(); ++qs) {
    queries.clear();
    clip_rect(segment_rect(layout.segment(qs)), q_begin, q_end, queries);
    if (queries.empty()) continue;
    for (index_t ks = 0; ks < layout.num_segments() && layout.segment(ks).start < prefix; ++ks) {
      const PairMask mask = s.policy.pair(layout, qs, ks);
      keys.clear();
      clip_rect(segment_rect(layout.segment(ks)), 0, prefix, keys);
      for (const TokenRect& qr : queries)
        for (const TokenRect& kr : keys) {
          if (mask.classify(qr, kr) == BlockCoverage::full) continue;
          for (index_t i = 0; i < qr.size(); ++i)  // inconclusive or not full: pair by pair, for the witness
            for (index_t j = 0; j < kr.size(); ++j)
              MMATTN_REQUIRE(mask.allowed(qr.at(i), kr.at(j)),
                             who + ": query " + std::to_string(qr.at(i)) + " cannot see prefix key " +
                                 std::to_string(kr.at(j)) + " (" + mask.rule().name() +
                                 "); a shared prefix needs every query to see all of it");
        }
    }
  }
}

// The plan of `s` without the keys before `prefix`: blocks clipped to positions >= prefix, each
// keeping its class (a part of a full block is full; a part of a partial block is masked by the
// same rule).
inline std::shared_ptr<const Plan> suffix_plan(const Plan& whole, index_t prefix) {
  PlanBuilder builder(whole.layout, whole.policy, whole.tiles, whole.query_begin, whole.query_end, whole.key_tokens);
  std::vector<KeyBlock> blocks;
  std::vector<TokenRect> pieces;
  for (const QueryTile& tile : whole.query_tiles) {
    blocks.clear();
    for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
      const KeyBlock& block = whole.blocks[static_cast<size_t>(b)];
      pieces.clear();
      clip_rect(block.keys, prefix, std::numeric_limits<index_t>::max(), pieces);
      for (const TokenRect& piece : pieces) blocks.push_back({piece, block.full, block.key_segment});
    }
    builder.add_query_tile_with(tile.queries, tile.segment, blocks);
  }
  return std::make_shared<const Plan>(builder.finish());
}

// The prefix product's rows (GroupRows) against keys [0, prefix), every pair allowed: full blocks
// only. Row t x heads + i is query token t of the group's i-th head (i < group), so a query tile
// is whole tokens' groups: rows of `group` positions, `heads` apart.
inline Plan prefix_plan(index_t tokens, index_t heads, index_t group, index_t prefix, TileSizes tiles) {
  SequenceLayout keys;
  keys.add_text(prefix);
  PlanBuilder builder(keys, nullptr, tiles, 0, tokens * heads, prefix);
  std::vector<KeyBlock> blocks;
  for (index_t k0 = 0; k0 < prefix; k0 += tiles.key)
    blocks.push_back({TokenRect::span(k0, std::min(tiles.key, prefix - k0)), /*full=*/true, 0});
  const index_t per_tile = std::max<index_t>(1, tiles.query / group);  // tokens
  for (index_t t0 = 0; t0 < tokens; t0 += per_tile)
    builder.add_query_tile_with({t0 * heads, heads, std::min(per_tile, tokens - t0), group}, 0, blocks);
  return builder.finish();
}

// Packed Q [tokens, heads, head_dim] seen as the rows of the prefix product: head g of the view is
// KV head g's group, its row t x heads + i query token t of query head g x G + i (i < G), where a
// [tokens, heads] tensor has row (t, g x G + i): outputs and LSEs land in that layout. Only row()
// is read (kernel/tile_loads.hpp, load_rows), so any strides of q work.
template <class T>
struct GroupRows {
  TensorView<const T> q;
  index_t group = 1;  // G, query heads per KV head
  index_t head_dim = 0, dim_stride = 1;

  GroupRows(const TensorView<const T>& queries, index_t g)
      : q(queries), group(g), head_dim(queries.head_dim), dim_stride(queries.dim_stride) {}
  const T* row(index_t p, index_t g) const { return q.row(p / q.heads, g * group + p % q.heads); }
};

}  // namespace detail

class CascadeAttention {
 public:
  // sequences[i]: its whole layout (prefix included), rules and query range, which must start at or
  // after prefix_tokens. Plans the prefix product and every suffix once (each sequence's whole
  // plan through `cache` where given); reused by every layer.
  CascadeAttention(AttentionConfig config, index_t prefix_tokens, const std::vector<BatchSequence>& sequences,
                   const PlanOptions& options = {}, Executor executor = Executor::default_executor(),
                   PlanCache* cache = nullptr)
      : config_(std::move(config)),
        executor_(std::move(executor)),
        prefix_tokens_(prefix_tokens),
        suffix_(config_, suffix_plans(prefix_tokens, sequences, options, cache), executor_),
        group_(config_.num_heads / config_.num_kv_heads),
        group_config_{config_.num_kv_heads, config_.num_kv_heads, config_.head_dim, config_.resolved_scale()},
        prefix_plan_(detail::prefix_plan(suffix_.total_queries(), config_.num_heads, group_, prefix_tokens,
                                         options.tiles)) {}

  index_t prefix_tokens() const { return prefix_tokens_; }
  index_t num_sequences() const { return suffix_.num_sequences(); }
  const std::vector<index_t>& query_offsets() const { return suffix_.query_offsets(); }
  index_t total_queries() const { return suffix_.total_queries(); }
  // The prefix product's plan: rows are (query, head of a GQA group), run once per KV head
  // (detail::GroupRows).
  const Plan& prefix_plan() const { return prefix_plan_; }
  const BatchedAttention& suffixes() const { return suffix_; }

  // Q/O: packed [total_queries, num_heads, head_dim] by cu_seqlens, as BatchedAttention::forward;
  // prefix_k/v: [prefix_tokens, num_kv_heads, head_dim]; k[i], v[i]: sequence i's keys by position
  // (TensorView or PagedKVView, e.g. a block table whose first blocks are the shared ones): only
  // positions >= prefix_tokens are read, so its prefix rows may be anything. lse optional,
  // [total_queries, num_heads]. Scratch: two float copies of O and LSE (prefix and suffix parts),
  // kept by the calling thread for the next call.
  template <class TQ, class PKView, class PVView, class KView, class VView, class TO>
  void forward(const TensorView<TQ>& q, const std::vector<index_t>& cu_seqlens, const PKView& prefix_k,
               const PVView& prefix_v, const std::vector<KView>& k, const std::vector<VView>& v,
               const TensorView<TO>& out, const LseView& lse = {}) const {
    static_assert_element_types<TensorView<TQ>, PKView, PVView, TensorView<TO>>();
    const index_t total = total_queries(), heads = config_.num_heads, dim = config_.head_dim;
    validate_attention(config_, q, prefix_k, prefix_v, out, lse);
    MMATTN_REQUIRE(prefix_k.tokens == prefix_tokens_, "cascade: prefix_k holds " + std::to_string(prefix_k.tokens) +
                                                          " tokens but the shared prefix has " +
                                                          std::to_string(prefix_tokens_));
    MMATTN_REQUIRE(q.tokens == total, "cascade: q has " + std::to_string(q.tokens) + " tokens but the sequences' " +
                                          "query ranges hold " + std::to_string(total));
    // The suffix parts go to scratch, so the suffix call checks the rest without writing `out`.
    std::vector<float>& scratch = cascade_scratch();
    const index_t l_floats = detail::checked_mul(total, heads, "cascade: scratch");
    const index_t o_floats = detail::checked_mul(l_floats, dim, "cascade: scratch");
    const index_t floats = detail::checked_mul(2, detail::checked_add(o_floats, l_floats, "cascade: scratch"),
                                               "cascade: scratch");
    if (static_cast<index_t>(scratch.size()) < floats) scratch.resize(static_cast<size_t>(floats));
    const TensorView<float> prefix_o = view_thd(scratch.data(), total, heads, dim);
    const TensorView<float> suffix_o = view_thd(scratch.data() + o_floats, total, heads, dim);
    const LseView prefix_l = view_lse(scratch.data() + 2 * o_floats, total, heads);
    const LseView suffix_l = view_lse(scratch.data() + 2 * o_floats + l_floats, total, heads);

    // Few rows per KV head (decode): the decode kernel, all heads per item, split over keys.
    bool decode = true;
    for (index_t s = 0; s < num_sequences(); ++s) decode = decode && kernel::use_decode_kernel(suffix_.plan(s), config_);
    if (decode)
      suffix_.forward_split_kv(q, cu_seqlens, k, v, suffix_o, suffix_l);
    else
      suffix_.forward(q, cu_seqlens, k, v, suffix_o, suffix_l);

    // The prefix product, one head per KV head: items of whole tiles (with the packed-block cache)
    // unless too few of them keep the workers busy. Its rows are prefix_o's (detail::GroupRows):
    // [total x heads, kv_heads] with head g at head g x G. (Split over keys, its scratch is sized
    // by that row span, kv_heads times the rows computed; only plans of few items go there.)
    const index_t kv_heads = config_.num_kv_heads;
    const detail::GroupRows<TQ> stacked(q, group_);
    const TensorView<float> group_o{prefix_o.data, total * heads, kv_heads, dim, dim, group_ * dim, 1};
    const LseView group_l{prefix_l.data, total * heads, kv_heads, 1, group_};
    const auto tiles = static_cast<index_t>(prefix_plan_.query_tiles.size());
    if (tiles * kv_heads >= kernel::kItemsPerWorker * executor_.concurrency())
      kernel::execute_plan(prefix_plan_, group_config_, stacked, prefix_k, prefix_v, group_o, group_l, executor_);
    else
      kernel::execute_split_kv(prefix_plan_, group_config_, stacked, prefix_k, prefix_v, group_o, group_l, executor_);

    // Merge row ranges in parallel; each is merge() on its rows.
    const index_t pieces = std::min<index_t>(total, kernel::kItemsPerWorker * executor_.concurrency());
    executor_.parallel_for(pieces, [&](index_t p) {
      const index_t r0 = p * total / pieces, r1 = (p + 1) * total / pieces;
      const PartialAttention<float> parts[] = {
          {detail::token_rows(TensorView<const float>(prefix_o), r0, r1 - r0), detail::token_rows(prefix_l, r0, r1 - r0)},
          {detail::token_rows(TensorView<const float>(suffix_o), r0, r1 - r0), detail::token_rows(suffix_l, r0, r1 - r0)}};
      merge(parts, detail::token_rows(out, r0, r1 - r0), detail::token_rows(lse, r0, r1 - r0));
    });
  }

 private:
  static std::vector<float>& cascade_scratch() {
    thread_local std::vector<float> scratch;
    return scratch;
  }

  static std::vector<std::shared_ptr<const Plan>> suffix_plans(index_t prefix, const std::vector<BatchSequence>& seqs,
                                                               const PlanOptions& options, PlanCache* cache) {
    MMATTN_REQUIRE(prefix >= 1, "cascade: the shared prefix needs at least one token, got " + std::to_string(prefix));
    MMATTN_REQUIRE(!seqs.empty(), "cascade: no sequences");
    std::vector<std::shared_ptr<const Plan>> plans;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const BatchSequence& s = seqs[i];
      const std::string who = "cascade: sequence " + std::to_string(i);
      MMATTN_REQUIRE(s.layout.size() > prefix, who + " has " + std::to_string(s.layout.size()) +
                                                   " tokens, not more than the shared prefix's " +
                                                   std::to_string(prefix));
      MMATTN_REQUIRE(s.query_begin >= prefix, who + ": its queries start at " + std::to_string(s.query_begin) +
                                                  ", inside the shared prefix of " + std::to_string(prefix) +
                                                  " tokens; only queries after the prefix can share it");
      const std::shared_ptr<const Plan> whole = detail::plan_batch_sequence(s, options, cache);  // validates layout, rules
      detail::require_sees_whole_prefix(s, prefix, static_cast<index_t>(i));
      plans.push_back(detail::suffix_plan(*whole, prefix));
    }
    return plans;
  }

  AttentionConfig config_;
  Executor executor_;
  index_t prefix_tokens_;
  BatchedAttention suffix_;
  index_t group_;                 // query heads per KV head
  AttentionConfig group_config_;  // the prefix product's: one head per KV head, config_'s scale
  Plan prefix_plan_;
};

}  // namespace mmattn
