#pragma once
// The tiled loop for query tiles of a few rows (decode, the tail of a chunk): the G query heads
// that share a KV head (GQA) run as one tile of G x rows, so each K and V block is loaded and
// converted once per KV head instead of once per query head. Decode is memory-bound: reading
// K and V G times over costs G times the bandwidth.
//
// Same contract as attend_tile: rows are positions - plan.query_begin, the block sub-range
// [block_begin, block_end) gives a partial result that merges exactly through its log-sum-exp.

#include <Eigen/Core>

#include "mmattn/attention_config.hpp"
#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::kernel {

// Rows of one grouped tile: the queries of a tile times the query heads of one KV head. Past this
// the group's Q, scores and accumulator leave L1/L2 and per-head tiles (attend_tile) are better.
inline constexpr index_t kMaxGroupRows = 64;

inline index_t heads_per_kv_head(const AttentionConfig& cfg) { return cfg.num_heads / cfg.num_kv_heads; }

// Row r of the grouped tile is query head kv_head * G + r / rows of the tile's query r % rows
// (head-major: each head's rows are one slice, masked like a plain tile).
template <class QView, class KView, class VView, class TO>
void attend_tile_group(const Plan& plan, const QueryTile& tile, index_t block_begin, index_t block_end,
                       index_t kv_head, const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                       const TensorView<TO>& out, const LseView& lse, Workspace& ws) {
  const index_t group = heads_per_kv_head(cfg), m = tile.queries.size(), rows = group * m, dim = cfg.head_dim;
  const index_t first_head = kv_head * group;
  ws.reserve(rows, plan.tiles.key, dim);
  for (index_t g = 0; g < group; ++g)
    load_rows(q, first_head + g, tile.queries, plan.query_begin, cfg.resolved_scale(), ws.q.data() + g * m * dim);
  const Eigen::Map<const RowMatrix> q_tile(ws.q.data(), rows, dim);  // (G * m, dim), pre-scaled
  OnlineSoftmax softmax(ws.acc.data(), ws.row_max.data(), ws.row_sum.data(), rows, dim);

  for (index_t b = block_begin; b < block_end; ++b) {
    const KeyBlock& block = plan.blocks[static_cast<size_t>(b)];
    const index_t keys = block.keys.size();
    const ConstStridedRowMap k_block = key_rows(k, kv_head, block.keys, ws.k.data());  // (keys, dim)
    const ConstStridedRowMap v_block = key_rows(v, kv_head, block.keys, ws.v.data());  // (keys, dim)
    RowMap scores(ws.scores.data(), rows, keys);                                        // (G * m, keys)
    scores.noalias() = q_tile * k_block.transpose();
    if (!block.full) {
      for (index_t g = 0; g < group; ++g) {
        RowMap head_scores(ws.scores.data() + g * m * keys, m, keys);  // (m, keys)
        apply_block_mask(head_scores, tile.queries, block.keys, block.mask, ws.coords);
      }
    }
    softmax.update(scores, v_block);
  }

  softmax.finalize([&](index_t r, const auto& o_row, float row_lse) {
    const index_t head = first_head + r / m, token = tile.queries.at(r % m) - plan.query_begin;
    TO* dst = out.row(token, head);
    for (index_t d = 0; d < dim; ++d) dst[d * out.dim_stride] = static_cast<TO>(o_row[d]);
    if (lse) lse(token, head) = row_lse;
  });
}

}  // namespace mmattn::kernel
