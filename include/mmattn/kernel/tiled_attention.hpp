#pragma once
// The tiled online-softmax loop of prefill. Every region kernel (global, causal, windowed, cross)
// is this loop over a different list of key blocks: how a block's keys are gathered comes from its
// TokenRect, how it is masked from its segment pair's rule, and full blocks skip masking entirely.
// attend_tile runs it on the micro-kernels of the CPU's best instruction set (simd_avx512.hpp,
// simd_avx2.hpp) or, as the portable path, on Eigen products (attend_tile_eigen).

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/kernel/isa.hpp"
#include "mmattn/kernel/nonfinite_values.hpp"
#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/kernel/simd_avx2.hpp"
#include "mmattn/kernel/simd_avx512.hpp"
#include "mmattn/kernel/tile_loads.hpp"
#include "mmattn/kernel/workspace.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::kernel {

// The portable path of attend_tile: Eigen products, vectorised as far as the build's flags allow.
template <class QView, class KView, class VView, class TO>
void attend_tile_eigen(const Plan& plan, const QueryTile& tile, PieceRange pieces, index_t head,
                       const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                       const TensorView<TO>& out, const LseOut& lse, Workspace& ws) {
  const index_t rows = tile.queries.size(), dim = cfg.head_dim, kv_head = cfg.kv_head_of(head);
  ws.reserve(rows, plan.tiles.key, dim);
  const ScoreScale scaling = ScoreScale::of(cfg.resolved_scale());
  load_rows(q, head, tile.queries, plan.query_begin, scaling.q_factor, ws.q.data());
  const Eigen::Map<const RowMatrix> q_tile(ws.q.data(), rows, dim);  // (rows, dim)
  OnlineSoftmax softmax(ws.acc.data(), ws.row_max.data(), ws.row_sum.data(), rows, dim, scaling.exp_factor);

  plan.for_each_piece(tile, pieces, [&](index_t, const KeyBlock& block) {
    const index_t keys = block.keys.size();
    const ConstStridedRowMap k_block = key_rows(k, kv_head, block.keys, ws.k.data());  // (keys, dim)
    const ConstStridedRowMap v_block = key_rows(v, kv_head, block.keys, ws.v.data());  // (keys, dim)
    RowMap scores(ws.scores.data(), rows, keys);                                        // (rows, keys)
    scores.noalias() = q_tile * k_block.transpose();
    if (!block.full) apply_block_mask(scores, tile.queries, block.keys, plan.mask(tile, block), ws.runs);
    softmax.rescale(scores, /*masked=*/!block.full);  // scores -> P, masked keys exactly 0
    // 0 x NaN is NaN: a partial block whose values are not all finite (padding, unwritten cache
    // slots) takes the guarded product, so a row never reads a value it may not see. The sum is
    // one vectorised pass (allFinite() is two and cost the structured forward ~10%); it is
    // conservative: finite values whose sum overflows take the guarded path too, same result.
    if (block.full || std::isfinite(v_block.sum())) {
      softmax.accumulator().noalias() += scores * v_block;
    } else {
      const NonFiniteRows bad = take_nonfinite_rows(v_block, ws.v.data());
      softmax.accumulator().noalias() += scores * RowMap(ws.v.data(), keys, dim);
      add_nonfinite_rows(bad, scores.data(), keys, softmax.accumulator().data(), dim, tile.queries, block.keys,
                         plan.mask(tile, block));
    }
  });

  softmax.finalize([&](index_t i, const auto& o_row, float row_max, float row_sum) {
    const index_t token = tile.queries.at(i) - plan.query_begin;
    TO* dst = out.row(token, head);
    for (index_t d = 0; d < dim; ++d) dst[d * out.dim_stride] = static_cast<TO>(o_row[d]);
    lse.write(token, head, row_max, row_sum, scaling);
  });
}

// Runs one query tile of one head over its key pieces `pieces` and writes its normalised output
// rows and log-sum-exp. Q and O rows are positions - plan.query_begin; K and V rows are positions.
// A part of the pieces gives a partial result that merges exactly with the others through its
// log-sum-exp (split-KV). The instruction set is chosen here, once per
// tile, from active_isa().
template <class QView, class KView, class VView, class TO>
void attend_tile(const Plan& plan, const QueryTile& tile, PieceRange pieces, index_t head,
                 const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                 const TensorView<TO>& out, const LseOut& lse, Workspace& ws) {
  switch (active_isa()) {
#if MMATTN_HAS_X86_KERNELS
    case Isa::kAvx512:
      return avx512::attend_tile(plan, tile, pieces, head, cfg, q, k, v, out, lse, ws);
    case Isa::kAvx2:
      return avx2::attend_tile(plan, tile, pieces, head, cfg, q, k, v, out, lse, ws);
#endif
    default:
      return attend_tile_eigen(plan, tile, pieces, head, cfg, q, k, v, out, lse, ws);
  }
}

// A number no other execute_plan call in this process has: the packed-block cache of a thread's
// workspace is valid within one call only (the next may bring other K and V at the same address).
inline std::uint64_t next_call_id() {
  static std::atomic<std::uint64_t> calls{0};
  return calls.fetch_add(1, std::memory_order_relaxed) + 1;
}

// One work item of execute_plan, query tile `tile` of one head, on the calling thread's workspace;
// a batch of plans runs these too (batched_attention.hpp). `call` keys the packed-block cache: K
// and V must be the same views for every item run with one call number.
template <class QView, class KView, class VView, class TO>
void run_plan_item(const Plan& plan, index_t tile, index_t head, std::uint64_t call, const AttentionConfig& cfg,
                   const QView& q, const KView& k, const VView& v, const TensorView<TO>& out, const LseView& lse) {
  thread_local Workspace ws;
  ws.packed_blocks.begin(call, cfg.kv_head_of(head));
  const QueryTile& t = plan.query_tiles[static_cast<size_t>(tile)];
  attend_tile(plan, t, PieceRange{}, head, cfg, q, k, v, out, lse, ws);
}

// Which (query tile, head) a plan's item number runs, for items [0, tiles x heads): costliest tiles
// first, so dynamic scheduling balances FLOPs and the last items handed out are cheap. Tiles that
// share key blocks with other tiles go one head at a time, so that a head's K and V stay in cache
// across its query tiles, and its packed blocks in the thread's workspace (all heads' K/V outgrow
// the L3: handing out heads tile-first re-reads them from memory, bench/kernel_global). A tile
// whose blocks no other tile reads (a window's own keys) has nothing to keep: its heads go in a
// row, reading each token's rows of all heads together, whole pages that the hardware prefetchers
// follow, and sharing the tile's mask runs (BlockRuns). Shared tiles are handed out first.
class PlanItemOrder {
 public:
  PlanItemOrder(const Plan& plan, index_t heads) : heads_(heads) {
    std::vector<std::array<index_t, 4>> rects;  // every piece's keys: what a thread packs and keeps
    for (const QueryTile& t : plan.query_tiles)
      plan.for_each_piece(t, PieceRange{}, [&](index_t, const KeyBlock& piece) { rects.push_back(key_of(piece.keys)); });
    std::sort(rects.begin(), rects.end());
    auto shared = [&](const QueryTile& t) {
      bool any = false;
      plan.for_each_piece(t, PieceRange{}, [&](index_t, const KeyBlock& piece) {
        const auto range = std::equal_range(rects.begin(), rects.end(), key_of(piece.keys));
        any = any || range.second - range.first > 1;
      });
      return any;
    };
    for (const index_t t : plan.tile_order)
      (shared(plan.query_tiles[static_cast<size_t>(t)]) ? shared_ : private_).push_back(t);
  }
  index_t size() const { return static_cast<index_t>(shared_.size() + private_.size()) * heads_; }
  index_t tile(index_t item) const {
    const auto n = static_cast<index_t>(shared_.size());
    return item < n * heads_ ? shared_[static_cast<size_t>(item % n)]
                             : private_[static_cast<size_t>((item - n * heads_) / heads_)];
  }
  index_t head(index_t item) const {
    const auto n = static_cast<index_t>(shared_.size());
    return item < n * heads_ ? item / n : (item - n * heads_) % heads_;
  }

 private:
  static std::array<index_t, 4> key_of(const TokenRect& r) { return {r.start, r.pitch, r.rows, r.cols}; }

  index_t heads_;
  std::vector<index_t> shared_, private_;  // tiles in the plan's cost order
};

// Every (query tile, head) of a plan, in PlanItemOrder.
template <class QView, class KView, class VView, class TO>
void execute_plan(const Plan& plan, const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                  const TensorView<TO>& out, const LseView& lse, const Executor& executor) {
  const PlanItemOrder order(plan, cfg.num_heads);
  const std::uint64_t call = next_call_id();
  executor.parallel_for(order.size(), [&](index_t item) {
    run_plan_item(plan, order.tile(item), order.head(item), call, cfg, q, k, v, out, lse);
  });
}

}  // namespace mmattn::kernel
