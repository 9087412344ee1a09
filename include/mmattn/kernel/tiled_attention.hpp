#pragma once
// The tiled online-softmax loop of prefill. Every region kernel (global, causal, windowed, cross)
// is this loop over a different list of key blocks: how a block's keys are gathered comes from its
// TokenRect, how it is masked from its segment pair's rule, and full blocks skip masking entirely.

#include <Eigen/Core>
#include <cstring>
#include <type_traits>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/kernel/convert.hpp"
#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::kernel {

// Per-thread scratch; grows to the largest tile seen and is then reused.
struct Workspace {
  // Aligned to Eigen's packet size: a product's vectorised path then does not depend on where a
  // thread's buffers happen to sit, so every thread computes the same bits.
  using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;
  Buffer q, k, v, scores, acc, row_max, row_sum;
  std::vector<KeyRun> runs;  // a masked row's allowed keys

  void reserve(index_t query_rows, index_t key_rows, index_t dim) {
    grow(q, query_rows * dim);
    grow(k, key_rows * dim);
    grow(v, key_rows * dim);
    grow(scores, query_rows * key_rows);
    grow(acc, query_rows * dim);
    grow(row_max, query_rows);
    grow(row_sum, query_rows);
  }
  static index_t bytes(index_t query_rows, index_t key_rows, index_t dim) {
    return static_cast<index_t>(sizeof(float)) *
           (2 * query_rows * dim + 2 * key_rows * dim + query_rows * key_rows + 2 * query_rows);
  }

 private:
  static void grow(Buffer& buf, index_t n) {
    if (static_cast<index_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  }
};

// Copies the rows of `rect` (positions, shifted by `first_row`) of one head into a dense
// (rows, dim) float buffer, converting and scaling once per load rather than per product.
// View: anything with row(token, head), head_dim and dim_stride (TensorView, a paged KV cache).
template <class View>
void load_rows(const View& src, index_t head, const TokenRect& rect, index_t first_row, float scale, float* dst) {
  const index_t dim = src.head_dim;
  for (index_t r = 0; r < rect.rows; ++r)
    for (index_t c = 0; c < rect.cols; ++c, dst += dim)
      convert_row(src.row(rect.start + r * rect.pitch + c - first_row, head), dim, src.dim_stride, scale, dst);
}

// K or V rows of a block as a (keys, dim) matrix: mapped in place when they already are one
// (contiguous float rows), gathered into `buffer` otherwise.
template <class View>
ConstStridedRowMap key_rows(const View& src, index_t head, const TokenRect& keys, float* buffer) {
  if constexpr (std::is_same_v<View, TensorView<const float>> || std::is_same_v<View, TensorView<float>>) {
    if (keys.contiguous() && src.dim_stride == 1 && (keys.size() == 1 || src.token_stride > 0))
      return ConstStridedRowMap(src.row(keys.start, head), keys.size(), src.head_dim,
                                Eigen::OuterStride<>(keys.size() == 1 ? src.head_dim : src.token_stride));
  }
  load_rows(src, head, keys, 0, 1.0f, buffer);
  return ConstStridedRowMap(buffer, keys.size(), src.head_dim, Eigen::OuterStride<>(src.head_dim));
}

// acc += P V for a partial block whose values are not all finite. The non-finite rows are zeroed
// in a copy (`clean`, (keys, dim)), so the product is, bit for bit, that of an input whose masked
// rows are finite: P is exactly 0 there. Then each such row is added alone to the queries that
// may see it, which makes those rows non-finite, as they must be.
inline void add_values_guarded(RowMap& acc, const RowMap& p, const ConstStridedRowMap& v, const TokenRect& queries,
                               const TokenRect& keys, const PairMask& mask, float* clean) {
  RowMap c(clean, v.rows(), v.cols());
  if (v.data() != clean) c = v;  // mapped in place: copy; gathered: already the buffer
  std::vector<index_t> bad;
  for (index_t j = 0; j < c.rows(); ++j)
    if (!std::isfinite(c.row(j).sum())) bad.push_back(j);
  RowMatrix bad_rows(static_cast<index_t>(bad.size()), c.cols());  // (bad, dim): c may be v itself
  for (size_t b = 0; b < bad.size(); ++b) bad_rows.row(static_cast<index_t>(b)) = c.row(bad[b]), c.row(bad[b]).setZero();
  acc.noalias() += p * c;
  for (size_t b = 0; b < bad.size(); ++b)
    for (index_t i = 0; i < p.rows(); ++i)
      if (mask.allowed(queries.at(i), keys.at(bad[b]))) acc.row(i) += p(i, bad[b]) * bad_rows.row(static_cast<index_t>(b));
}

// Runs one query tile of one head over its key blocks [block_begin, block_end) and writes its
// normalised output rows and log-sum-exp. Q and O rows are positions - plan.query_begin; K and V
// rows are positions. A sub-range of the blocks gives a partial result that merges exactly with
// the others through its log-sum-exp (split-KV).
template <class QView, class KView, class VView, class TO>
void attend_tile(const Plan& plan, const QueryTile& tile, index_t block_begin, index_t block_end, index_t head,
                 const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                 const TensorView<TO>& out, const LseView& lse, Workspace& ws) {
  const index_t rows = tile.queries.size(), dim = cfg.head_dim, kv_head = cfg.kv_head_of(head);
  ws.reserve(rows, plan.tiles.key, dim);
  load_rows(q, head, tile.queries, plan.query_begin, cfg.resolved_scale(), ws.q.data());
  const Eigen::Map<const RowMatrix> q_tile(ws.q.data(), rows, dim);  // (rows, dim), pre-scaled
  OnlineSoftmax softmax(ws.acc.data(), ws.row_max.data(), ws.row_sum.data(), rows, dim);

  for (index_t b = block_begin; b < block_end; ++b) {
    const KeyBlock& block = plan.blocks[static_cast<size_t>(b)];
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
      add_values_guarded(softmax.accumulator(), scores, v_block, tile.queries, block.keys, plan.mask(tile, block),
                         ws.v.data());
    }
  }

  softmax.finalize([&](index_t i, const auto& o_row, float row_lse) {
    const index_t token = tile.queries.at(i) - plan.query_begin;
    TO* dst = out.row(token, head);
    for (index_t d = 0; d < dim; ++d) dst[d * out.dim_stride] = static_cast<TO>(o_row[d]);
    if (lse) lse(token, head) = row_lse;
  });
}

// Every (head, query tile) of a plan, one head at a time so that head's K and V stay in cache
// across its query tiles (all heads' K/V outgrow the L3: handing out heads tile-first re-read
// them from memory, ~10% slower, bench/kernel_global). Within a head the costliest tiles go
// first, so dynamic scheduling balances FLOPs and the last items handed out are cheap.
template <class QView, class KView, class VView, class TO>
void execute_plan(const Plan& plan, const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                  const TensorView<TO>& out, const LseView& lse, const Executor& executor) {
  const auto tiles = static_cast<index_t>(plan.tile_order.size());
  executor.parallel_for(tiles * cfg.num_heads, [&](index_t item) {
    thread_local Workspace ws;
    const QueryTile& tile = plan.query_tiles[static_cast<size_t>(plan.tile_order[static_cast<size_t>(item % tiles)])];
    attend_tile(plan, tile, tile.block_begin, tile.block_end, item / tiles, cfg, q, k, v, out, lse, ws);
  });
}

}  // namespace mmattn::kernel
