#pragma once
// Local + sparse cross attention: an opt-in approximation, never a default.
//
// Image queries keep their exact rule (a local window under the structured policy) and text sees
// text exactly, but each text query tile attends only to the top_k key tiles of every image it
// would see, per head. A key tile is a tile_rows x tile_cols patch of an image grid; its score
// is a cheap proxy for the tile's attention: the query tile's mean query against the key tile's
// mean key. The result is a plan per head: the exact plan with the text->image blocks replaced
// by the kept patches, run by the one tiled kernel (attend_tile). With top_k >= the tiles of an
// image every key is kept and the result is exact attention (to fp32 rounding).

#include <Eigen/Core>
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/approx/cross_approximation.hpp"
#include "mmattn/approx/pooled_cross.hpp"
#include "mmattn/approx/uncovered_keys.hpp"
#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/convert.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"

namespace mmattn::approx {

struct SparseCrossOptions {
  index_t top_k = 1;                     // key tiles kept per image, per (text query tile, head)
  index_t tile_rows = 8, tile_cols = 8;  // a key tile: a patch of the image grid; edge patches smaller
};

// One patch of one image: the unit the selection keeps or drops.
struct ImageKeyTile {
  index_t image = 0;  // among the layout's images, in sequence order
  TokenRect keys;     // positions
};

// Which key tiles each (text query tile, head) keeps. Text tiles are numbered in plan order.
struct SparseSelection {
  index_t text_tiles = 0, heads = 0, key_tiles = 0;
  std::vector<unsigned char> kept;  // (text tile, head, key tile), 1 = kept

  bool is_kept(index_t text_tile, index_t head, index_t key_tile) const {
    return kept[static_cast<size_t>((text_tile * heads + head) * key_tiles + key_tile)] != 0;
  }
  void set(index_t text_tile, index_t head, index_t key_tile, bool keep) {
    kept[static_cast<size_t>((text_tile * heads + head) * key_tiles + key_tile)] = keep ? 1 : 0;
  }
};

template <class T = float>
class SparseCrossAttention : public detail::CrossApproximation<SparseCrossOptions> {
 public:
  // `policy`: the exact rule the approximation starts from (e.g. RegionPolicy::structured()).
  // The plans cover every query (no query range).
  SparseCrossAttention(AttentionConfig config, SequenceLayout layout, RegionPolicy policy,
                       SparseCrossOptions sparse = {}, PlanOptions options = {},
                       Executor executor = Executor::default_executor())
      : CrossApproximation("sparse cross", std::move(config), std::move(layout), std::move(policy), sparse,
                           std::move(executor)) {
    MMATTN_REQUIRE(options_.top_k >= 1, "sparse cross: top_k must be >= 1, got " + std::to_string(options_.top_k));
    MMATTN_REQUIRE(options_.tile_rows >= 1 && options_.tile_cols >= 1,
                   "sparse cross: key tiles must be at least 1 x 1, got " + std::to_string(options_.tile_rows) +
                       " x " + std::to_string(options_.tile_cols));
    require_whole_sequence(options);
    plan_ = make_plan(layout_, policy_, options);
    build_key_tiles();
    find_visible_images();
  }

  // Q/O: [layout().size(), num_heads, head_dim]; K/V: [layout().size(), num_kv_heads, head_dim];
  // lse optional, [tokens, num_heads]. Selects, plans per head, runs.
  template <class TQ, class TK, class TV, class TO>
  void forward(const TensorView<TQ>& q, const TensorView<TK>& k, const TensorView<TV>& v,
               const TensorView<TO>& out, const LseView& lse = {}) const {
    validate_forward(q, k, v, out, lse);
    run(head_plans(select(q, k)), q, k, v, out, lse);
  }

  // Runs per-head plans (from head_plans) with the exact kernel in execute_plan's order: one head
  // at a time over its query tiles, costliest first by that head's plan.
  template <class TQ, class TK, class TV, class TO>
  void run(const std::vector<Plan>& plans, const TensorView<TQ>& q, const TensorView<TK>& k,
           const TensorView<TV>& v, const TensorView<TO>& out, const LseView& lse) const {
    const index_t heads = config_.num_heads;
    MMATTN_REQUIRE(static_cast<index_t>(plans.size()) == heads, "sparse cross: one plan per head is needed");
    const auto tiles = static_cast<index_t>(plan_.query_tiles.size());
    executor_.parallel_for(tiles * heads, [&](index_t item) {
      thread_local kernel::Workspace ws;
      const index_t head = item / tiles;
      const Plan& plan = plans[static_cast<size_t>(head)];
      const QueryTile& tile = plan.query_tiles[static_cast<size_t>(plan.tile_order[static_cast<size_t>(item % tiles)])];
      kernel::attend_tile(plan, tile, PieceRange{}, head, config_, q, k, v, out, lse, ws);
    });
  }

  // The top_k key tiles of every visible image for each (text query tile, head), by the score
  // mean(query tile) . mean(key tile). Ties keep the earlier tile.
  template <class QView, class KView>
  SparseSelection select(const QView& q, const KView& k) const {
    SparseSelection sel = empty_selection();
    if (text_tiles_.empty()) return sel;
    const index_t dim = config_.head_dim, kvh = config_.num_kv_heads, heads = config_.num_heads;
    // Mean key of every key tile: the key tiles are exactly the cells of a tile-sized pooling.
    std::vector<float> means(static_cast<size_t>(sel.key_tiles * kvh * dim));
    pool_images(k, layout_, {options_.tile_rows, options_.tile_cols}, view_thd(means.data(), sel.key_tiles, kvh, dim),
                executor_);
    executor_.parallel_for(sel.text_tiles * heads, [&](index_t item) {
      const index_t ti = item / heads, head = item % heads;
      const QueryTile& tile = plan_.query_tiles[static_cast<size_t>(text_tiles_[static_cast<size_t>(ti)])];
      std::vector<float> row(static_cast<size_t>(dim));
      Eigen::VectorXf mean_q = Eigen::VectorXf::Zero(dim);
      for (index_t i = 0; i < tile.queries.size(); ++i) {
        kernel::convert_row(q.row(tile.queries.at(i), head), dim, q.dim_stride, 1.0f, row.data());
        mean_q += Eigen::Map<const Eigen::VectorXf>(row.data(), dim);
      }
      mean_q /= static_cast<float>(tile.queries.size());
      std::vector<std::pair<float, index_t>> scores;
      for (index_t image : visible_[static_cast<size_t>(ti)]) {
        scores.clear();
        const index_t j0 = image_first_tile_[static_cast<size_t>(image)];
        const index_t j1 = image_first_tile_[static_cast<size_t>(image) + 1];
        for (index_t j = j0; j < j1; ++j) {
          const Eigen::Map<const Eigen::VectorXf> mk(means.data() + (j * kvh + config_.kv_head_of(head)) * dim, dim);
          scores.push_back({mean_q.dot(mk), j});
        }
        const auto keep = static_cast<size_t>(std::min<index_t>(options_.top_k, j1 - j0));
        std::partial_sort(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(keep), scores.end(),
                          [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
        for (size_t i = 0; i < keep; ++i) sel.set(ti, head, scores[i].second, true);
      }
    });
    return sel;
  }

  // A selection without data: the first top_k tiles of each visible image, for every head. Its
  // plans have the cost of a real selection up to edge tiles, so plan statistics can use it.
  SparseSelection nominal_selection() const {
    SparseSelection sel = empty_selection();
    for (index_t ti = 0; ti < sel.text_tiles; ++ti)
      for (index_t image : visible_[static_cast<size_t>(ti)]) {
        const index_t j0 = image_first_tile_[static_cast<size_t>(image)];
        const index_t j1 = std::min(j0 + options_.top_k, image_first_tile_[static_cast<size_t>(image) + 1]);
        for (index_t h = 0; h < sel.heads; ++h)
          for (index_t j = j0; j < j1; ++j) sel.set(ti, h, j, true);
      }
    return sel;
  }

  // The exact plan with each text tile's text->image blocks replaced by its kept key tiles. It keeps
  // the exact plan's layout and rules: the blocks of image queries stay partial where they were.
  Plan head_plan(const SparseSelection& sel, index_t head) const {
    PlanBuilder builder(plan_.layout, plan_.policy, plan_.tiles, plan_.query_begin, plan_.query_end, plan_.key_tokens);
    std::vector<KeyBlock> blocks;
    for (size_t t = 0; t < plan_.query_tiles.size(); ++t) {
      const QueryTile& tile = plan_.query_tiles[t];
      const index_t ti = text_tile_index_[t];
      blocks.clear();
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        const KeyBlock& block = plan_.blocks[static_cast<size_t>(b)];
        if (ti < 0 || !layout_.segment(block.key_segment).is_image()) blocks.push_back(block);
      }
      if (ti >= 0)
        for (index_t j = 0; j < sel.key_tiles; ++j)
          if (sel.is_kept(ti, head, j)) add_key_tile(key_tiles_[static_cast<size_t>(j)].keys, blocks);
      builder.add_query_tile_with(tile.queries, tile.segment, blocks);
    }
    return builder.finish();
  }

  std::vector<Plan> head_plans(const SparseSelection& sel) const {
    std::vector<Plan> plans;
    for (index_t h = 0; h < config_.num_heads; ++h) plans.push_back(head_plan(sel, h));
    return plans;
  }

  // Pairs the kernels compute under `sel`, averaged over heads.
  double computed_pairs(const SparseSelection& sel) const {
    double n = 0;
    for (index_t h = 0; h < config_.num_heads; ++h)
      for (const QueryTile& t : head_plan(sel, h).query_tiles) n += static_cast<double>(t.computed_pairs);
    return n / static_cast<double>(config_.num_heads);
  }

  // The key tiles `select(q, k)` drops, per (text query tile, head).
  template <class QView, class KView>
  UncoveredKeys uncovered_keys(const QView& q, const KView& k) const {
    const SparseSelection sel = select(q, k);
    UncoveredKeys u;
    for (index_t ti = 0; ti < sel.text_tiles; ++ti) {
      const QueryTile& tile = plan_.query_tiles[static_cast<size_t>(text_tiles_[static_cast<size_t>(ti)])];
      for (index_t h = 0; h < sel.heads; ++h) {
        UncoveredKeys::Entry e{h, tile.queries, {}, Uncovered::dropped};
        for (index_t image : visible_[static_cast<size_t>(ti)])
          for (index_t j = image_first_tile_[static_cast<size_t>(image)];
               j < image_first_tile_[static_cast<size_t>(image) + 1]; ++j)
            if (!sel.is_kept(ti, h, j)) e.keys.push_back(key_tiles_[static_cast<size_t>(j)].keys);
        if (!e.keys.empty()) u.entries.push_back(std::move(e));
      }
    }
    return u;
  }

  const Plan& exact_plan() const { return plan_; }
  const std::vector<ImageKeyTile>& key_tiles() const { return key_tiles_; }
  // Plan query-tile index of each text tile, in plan order.
  const std::vector<index_t>& text_tiles() const { return text_tiles_; }
  // The images (indices among the layout's images) text tile `ti` sees under the policy.
  const std::vector<index_t>& visible_images(index_t ti) const { return visible_[static_cast<size_t>(ti)]; }
  // Key tiles of image i are [image_first_tile(i), image_first_tile(i + 1)).
  index_t image_first_tile(index_t image) const { return image_first_tile_[static_cast<size_t>(image)]; }

 private:
  SparseSelection empty_selection() const {
    SparseSelection sel;
    sel.text_tiles = static_cast<index_t>(text_tiles_.size());
    sel.heads = config_.num_heads;
    sel.key_tiles = static_cast<index_t>(key_tiles_.size());
    sel.kept.assign(static_cast<size_t>(sel.text_tiles * sel.heads * sel.key_tiles), 0);
    return sel;
  }

  // Patches of every image in raster order: the cell order of pool_images with the tile shape.
  void build_key_tiles() {
    index_t image = 0;
    for (const Segment& s : layout_.segments()) {
      if (!s.is_image()) continue;
      image_first_tile_.push_back(static_cast<index_t>(key_tiles_.size()));
      for (index_t r0 = 0; r0 < s.rows; r0 += options_.tile_rows)
        for (index_t c0 = 0; c0 < s.cols; c0 += options_.tile_cols)
          key_tiles_.push_back({image, {s.start + r0 * s.cols + c0, s.cols, std::min(options_.tile_rows, s.rows - r0),
                                        std::min(options_.tile_cols, s.cols - c0)}});
      ++image;
    }
    image_first_tile_.push_back(static_cast<index_t>(key_tiles_.size()));
  }

  // A kept key tile as full blocks of at most tiles.key keys, what the kernels' tiles hold: the
  // patch cut into rows, and rows wider than tiles.key into spans.
  void add_key_tile(const TokenRect& patch, std::vector<KeyBlock>& blocks) const {
    const index_t cols = std::min(patch.cols, plan_.tiles.key), rows = std::max<index_t>(1, plan_.tiles.key / cols);
    const index_t segment = layout_.segment_index(patch.first());
    for (index_t r0 = 0; r0 < patch.rows; r0 += rows)
      for (index_t c0 = 0; c0 < patch.cols; c0 += cols)
        blocks.push_back({{patch.start + r0 * patch.pitch + c0, patch.pitch, std::min(rows, patch.rows - r0),
                           std::min(cols, patch.cols - c0)},
                          /*full=*/true, segment});
  }

  // The images each text tile's exact plan visits, read off its text->image blocks.
  void find_visible_images() {
    std::vector<index_t> image_of_segment(static_cast<size_t>(layout_.num_segments()), -1);
    index_t images = 0;
    for (index_t s = 0; s < layout_.num_segments(); ++s)
      if (layout_.segment(s).is_image()) image_of_segment[static_cast<size_t>(s)] = images++;
    text_tile_index_.assign(plan_.query_tiles.size(), -1);
    for (size_t t = 0; t < plan_.query_tiles.size(); ++t) {
      const QueryTile& tile = plan_.query_tiles[t];
      if (layout_.segment(tile.segment).is_image()) continue;
      text_tile_index_[t] = static_cast<index_t>(text_tiles_.size());
      text_tiles_.push_back(static_cast<index_t>(t));
      std::vector<index_t> seen;
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        const KeyBlock& block = plan_.blocks[static_cast<size_t>(b)];
        if (!layout_.segment(block.key_segment).is_image()) continue;
        const Segment& img = layout_.segment(block.key_segment);
        const PairMask mask = plan_.mask(tile, block);
        MMATTN_REQUIRE(mask.classify(tile.queries, TokenRect::span(img.start, img.length)) == BlockCoverage::full,
                       "sparse cross: the text->image rule (" + mask.rule().name() +
                           ") lets a text tile see part of an image; top-k needs all of an image or none");
        const index_t image = image_of_segment[static_cast<size_t>(layout_.segment_index(block.keys.first()))];
        if (std::find(seen.begin(), seen.end(), image) == seen.end()) seen.push_back(image);
      }
      std::sort(seen.begin(), seen.end());
      visible_.push_back(std::move(seen));
    }
  }

  Plan plan_;
  std::vector<ImageKeyTile> key_tiles_;
  std::vector<index_t> image_first_tile_;  // per image, and one past the last
  std::vector<index_t> text_tiles_;        // plan query-tile index of each text tile
  std::vector<index_t> text_tile_index_;   // per plan query tile: its text-tile number, or -1
  std::vector<std::vector<index_t>> visible_;
};

}  // namespace mmattn::approx
