#pragma once
// Split-KV (FlashDecoding; ggml's third path): when a plan has too few work items to keep every
// worker busy (decode: one tile of 1..few rows), each tile's keys are cut into chunks of
// about equal key count, the chunks run in parallel into scratch partial outputs and log-sum-exps,
// and the last chunk of a tile to finish merges them exactly (merge_row.hpp). Tiles of few rows run
// all heads per item (decode_kernel.hpp), others head by head (attend_tile).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/decode_kernel.hpp"
#include "mmattn/kernel/merge_row.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

struct SplitKvOptions {
  // Key chunks per query tile (at most its piece count); 0: chosen from the plan's cost and the
  // executor's concurrency, 1: never split.
  index_t splits = 0;
  // Automatic choice only: a chunk holds at least this many keys, so its fixed cost (a partial
  // row written and merged per head) stays small next to its loads.
  index_t min_keys_per_split = 256;
  // Automatic or not: the scratch partials (slots x queries x heads x (head_dim + 1) floats) stay
  // under this; splits are reduced to fit.
  index_t max_scratch_bytes = index_t{64} << 20;
};

namespace kernel {

// Work items per worker the automatic choice aims for: with dynamic scheduling, 4 items each keep
// the last one's tail under a quarter of a worker's share.
inline constexpr index_t kItemsPerWorker = 4;

// Pieces of one query tile; `slot` is its partial's index (0 when the tile is not split and
// writes straight to the output).
struct KeyChunk {
  index_t tile = 0;
  PieceRange pieces;
  index_t slot = 0;
  index_t cost = 0;  // query rows x keys
};

struct SplitPlan {
  index_t heads_per_item = 1;        // num_heads (attend_tile_all_heads: few rows) or 1 (attend_tile)
  index_t slots = 1;                 // partial results per split tile; 1: nothing is split, no scratch
  std::vector<index_t> tile_chunks;  // per query tile: its number of chunks
  std::vector<KeyChunk> chunks;      // costliest first: the order work is handed out

  index_t items_per_chunk(const AttentionConfig& cfg) const { return cfg.num_heads / heads_per_item; }
};

// Cuts tile t's pieces into `count` runs of about equal key count, each at least one piece
// (count <= the tile's pieces).
inline void cut_pieces(const Plan& plan, index_t t, index_t count, std::vector<KeyChunk>& out) {
  const QueryTile& tile = plan.query_tiles[static_cast<size_t>(t)];
  const index_t rows = tile.queries.size(), n = plan.pieces(tile);
  if (n == 0) return out.push_back({t, {0, 0}, 0, 0});  // sees nothing: one empty run writes zeros, -inf
  index_t keys = 0;
  plan.for_each_piece(tile, PieceRange{}, [&](index_t, const KeyBlock& piece) { keys += piece.keys.size(); });
  index_t c = 0, start = 0, p = 0, seen = 0, chunk_keys = 0;
  plan.for_each_piece(tile, PieceRange{}, [&](index_t, const KeyBlock& piece) {
    chunk_keys += piece.keys.size();
    ++p;
    if (c == count - 1) return;  // the last chunk takes the rest
    const index_t target = (c + 1) * keys / count;  // cumulative keys at this chunk's end
    const index_t latest = n - (count - 1 - c);     // leave a piece for every later chunk
    if (p < latest && seen + chunk_keys < target) return;
    out.push_back({t, {start, p}, c, rows * chunk_keys});
    seen += chunk_keys, chunk_keys = 0, start = p, ++c;
  });
  out.push_back({t, {start, n}, c, rows * chunk_keys});
}

// The batch a plan runs in (batched_attention.hpp): every plan's computed pairs together, the sum
// of their tiles' costs. 0: the plan runs alone.
struct SplitKvBatch {
  index_t total_cost = 0;
};

// In a batch, a tile is split by its share of the batch's cost whatever the batch's item count: a
// long sequence among short ones would otherwise run alone at the end.
inline SplitPlan plan_split_kv(const Plan& plan, const AttentionConfig& cfg, int concurrency,
                               const SplitKvOptions& options, SplitKvBatch batch = {}) {
  MMATTN_REQUIRE(options.splits >= 0, "split-KV: splits must be >= 0, got " + std::to_string(options.splits));
  MMATTN_REQUIRE(options.min_keys_per_split > 0, "split-KV: min_keys_per_split must be positive");
  SplitPlan sp;
  sp.heads_per_item = use_decode_kernel(plan, cfg) ? cfg.num_heads : 1;
  const index_t items_per_chunk = cfg.num_heads / sp.heads_per_item;
  const auto tiles = static_cast<index_t>(plan.query_tiles.size());

  index_t total_cost = 0;
  for (const QueryTile& t : plan.query_tiles) total_cost += t.computed_pairs;
  // Chunks per tile wanted for each head item, so that all items together make kItemsPerWorker
  // per worker; alone, only when the plan has fewer items than that.
  const index_t wanted = kItemsPerWorker * std::max(concurrency, 1);
  const bool in_batch = batch.total_cost > 0;
  if (in_batch) total_cost = batch.total_cost;
  const bool automatic = options.splits == 0 && (in_batch || tiles * items_per_chunk < wanted) && total_cost > 0;

  sp.tile_chunks.assign(static_cast<size_t>(tiles), 1);
  for (index_t t = 0; t < tiles; ++t) {
    const QueryTile& tile = plan.query_tiles[static_cast<size_t>(t)];
    const index_t pieces = plan.pieces(tile);
    const index_t keys = tile.queries.size() > 0 ? tile.computed_pairs / tile.queries.size() : 0;
    index_t c = options.splits > 0 ? options.splits : 1;
    if (automatic) {
      const double share = double(wanted) / double(items_per_chunk) * double(tile.computed_pairs) / double(total_cost);
      c = std::min(static_cast<index_t>(std::ceil(share)), keys / options.min_keys_per_split);
    }
    sp.tile_chunks[static_cast<size_t>(t)] = std::clamp<index_t>(c, 1, std::max<index_t>(pieces, 1));
  }

  // Scratch: slots x [queries, heads, head_dim] partial outputs plus slots x [queries, heads] LSEs.
  const index_t per_slot = plan.num_queries() * cfg.num_heads * (cfg.head_dim + 1) * index_t{sizeof(float)};
  const index_t max_slots = std::max<index_t>(1, options.max_scratch_bytes / std::max<index_t>(per_slot, 1));
  for (index_t& c : sp.tile_chunks) {
    c = std::min(c, max_slots);
    if (c < 2) c = 1;
    sp.slots = std::max(sp.slots, c);
  }

  for (index_t t = 0; t < tiles; ++t) cut_pieces(plan, t, sp.tile_chunks[static_cast<size_t>(t)], sp.chunks);
  std::stable_sort(sp.chunks.begin(), sp.chunks.end(),
                   [](const KeyChunk& a, const KeyChunk& b) { return a.cost > b.cost; });
  return sp;
}

// Scratch of the calling thread, reused across calls: after the first call of a shape, a decode
// step allocates nothing.
inline std::vector<float>& split_kv_scratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

// The work items of one split-KV run: every (key chunk, head item) of a plan. An item runs its
// chunk into the output (an unsplit tile) or into its partial slot, and the last chunk of a tile
// to finish merges the tile's partials. execute_split_kv runs one plan's items; a batch runs the
// items of many plans in one parallel_for (batched_attention.hpp). Views are kept by value; plan,
// cfg and sp must outlive it.
template <class QView, class KView, class VView, class TO>
class SplitKvItems {
 public:
  // Floats of scratch a run needs: partial outputs [slot][query][head][dim], then LSEs [slot][query][head].
  static index_t scratch_floats(const Plan& plan, const AttentionConfig& cfg, const SplitPlan& sp) {
    return sp.slots > 1 ? sp.slots * plan.num_queries() * cfg.num_heads * (cfg.head_dim + 1) : 0;
  }

  SplitKvItems(const Plan& plan, const AttentionConfig& cfg, const SplitPlan& sp, const QView& q, const KView& k,
               const VView& v, const TensorView<TO>& out, const LseView& lse, float* scratch)
      : plan_(&plan), cfg_(&cfg), sp_(&sp), q_(q), k_(k), v_(v), out_(out), lse_(lse),
        o_slot_(plan.num_queries() * cfg.num_heads * cfg.head_dim), l_slot_(plan.num_queries() * cfg.num_heads),
        partial_o_(scratch), partial_lse_(scratch ? scratch + sp.slots * o_slot_ : nullptr),
        per_chunk_(sp.items_per_chunk(cfg)),
        pending_(new std::atomic<index_t>[plan.query_tiles.size() * static_cast<size_t>(per_chunk_)]) {
    // Per (tile, head item): chunks still running; the one that brings it to 0 merges.
    for (size_t t = 0; t < plan.query_tiles.size(); ++t)
      for (index_t i = 0; i < per_chunk_; ++i)
        pending_[t * static_cast<size_t>(per_chunk_) + static_cast<size_t>(i)].store(sp.tile_chunks[t],
                                                                                     std::memory_order_relaxed);
  }

  index_t chunks() const { return static_cast<index_t>(sp_->chunks.size()); }
  index_t items_per_chunk() const { return per_chunk_; }
  index_t size() const { return chunks() * per_chunk_; }
  // One item's cost: query rows x keys x the heads it runs.
  index_t chunk_item_cost(index_t chunk) const {
    return sp_->chunks[static_cast<size_t>(chunk)].cost * sp_->heads_per_item;
  }

  void operator()(index_t item) const { run(item / per_chunk_, item % per_chunk_); }

  // Chunk `c` for head item `which` (the query head for attend_tile, 0 for all heads).
  void run(index_t c, index_t which) const {
    const Plan& plan = *plan_;
    const AttentionConfig& cfg = *cfg_;
    const KeyChunk& chunk = sp_->chunks[static_cast<size_t>(c)];
    const index_t nq = plan.num_queries(), heads = cfg.num_heads, dim = cfg.head_dim, hpi = sp_->heads_per_item;
    const QueryTile& tile = plan.query_tiles[static_cast<size_t>(chunk.tile)];
    const index_t chunks = sp_->tile_chunks[static_cast<size_t>(chunk.tile)];
    auto run_into = [&](const auto& o, const LseOut& l) {
      if (hpi > 1) {
        thread_local DecodeWorkspace ws;
        attend_tile_all_heads(plan, tile, chunk.pieces, cfg, q_, k_, v_, o, l, ws);
      } else {
        thread_local Workspace ws;
        attend_tile(plan, tile, chunk.pieces, which, cfg, q_, k_, v_, o, l, ws);
      }
    };
    if (chunks == 1) return run_into(out_, lse_);

    auto slot_out = [&](index_t s) { return view_thd(partial_o_ + s * o_slot_, nq, heads, dim); };
    auto slot_lse = [&](index_t s) { return view_lse(partial_lse_ + s * l_slot_, nq, heads); };
    run_into(slot_out(chunk.slot), LseOut(slot_lse(chunk.slot), /*partial=*/true));
    std::atomic<index_t>& left = pending_[static_cast<size_t>(chunk.tile * per_chunk_ + which)];
    if (left.fetch_sub(1, std::memory_order_acq_rel) != 1) return;  // acquire: the other chunks' partials

    thread_local std::vector<float> merge_buf;  // (head_dim) merged row, then (chunks) LSEs
    if (static_cast<index_t>(merge_buf.size()) < dim + chunks) merge_buf.resize(static_cast<size_t>(dim + chunks));
    float* const acc = merge_buf.data();
    float* const lses = acc + dim;
    const float unit = ScoreScale::of(cfg.resolved_scale()).partial_unit();  // the partials' (LseOut)
    for (index_t i = 0; i < tile.queries.size(); ++i) {
      const index_t token = tile.queries.at(i) - plan.query_begin;
      for (index_t head = which * hpi; head < (which + 1) * hpi; ++head) {
        for (index_t s = 0; s < chunks; ++s) lses[s] = slot_lse(s)(token, head);
        const float row_lse = merge_row(chunks, lses, unit, dim, [&](index_t s, float w, float* a) {
          const float* part = slot_out(s).row(token, head);
          for (index_t d = 0; d < dim; ++d) a[d] += w * part[d];  // no Eigen peeling: same bits at any address
        }, acc);
        TO* dst = out_.row(token, head);
        for (index_t d = 0; d < dim; ++d) dst[d * out_.dim_stride] = static_cast<TO>(acc[d]);
        if (lse_) lse_(token, head) = row_lse;
      }
    }
  }

 private:
  const Plan* plan_;
  const AttentionConfig* cfg_;
  const SplitPlan* sp_;
  QView q_;
  KView k_;
  VView v_;
  TensorView<TO> out_;
  LseView lse_;
  index_t o_slot_, l_slot_;
  float* partial_o_;
  float* partial_lse_;
  index_t per_chunk_;
  std::unique_ptr<std::atomic<index_t>[]> pending_;
};

// The plan's attention, split over keys where the plan has too few items for the executor.
// Same contract as execute_plan.
template <class QView, class KView, class VView, class TO>
void execute_split_kv(const Plan& plan, const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                      const TensorView<TO>& out, const LseView& lse, const Executor& executor,
                      const SplitKvOptions& options = {}) {
  const SplitPlan sp = plan_split_kv(plan, cfg, executor.concurrency(), options);
  using Items = SplitKvItems<QView, KView, VView, TO>;
  std::vector<float>& scratch = split_kv_scratch();
  const index_t floats = Items::scratch_floats(plan, cfg, sp);
  if (static_cast<index_t>(scratch.size()) < floats) scratch.resize(static_cast<size_t>(floats));
  const Items items(plan, cfg, sp, q, k, v, out, lse, scratch.data());
  executor.parallel_for(items.size(), [&](index_t item) { items(item); });
}

}  // namespace kernel
}  // namespace mmattn
