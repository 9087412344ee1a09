#pragma once
// Image-token compression for cross attention: an opt-in approximation, never a default.
//
// Text queries attend to image keys and values average-pooled over p x p patches of each grid
// (edge cells average the patches that exist), while image queries keep their exact rule and text
// still sees text exactly. It runs as plans through the same kernel as the exact path:
//   part A  the base policy with text->image switched off, on the original K/V: every image row
//           is final here, text rows get their text->text part;
//   part B  text queries x pooled image keys, on a pooled K/V buffer holding only the pooled image
//           tokens (N_img / p^2 rows, never a copy of the cache), one part per pooled-cell size;
//   merge   each text row's parts combined exactly through their log-sum-exps (merge.hpp).
// Proportional attention (ToMe): a pooled key stands for `count` patches, so its scores get
// + log(count); over a part whose keys share one count that is lse + log(count), which the merge
// weighs exactly. So the text rows see p^2 copies of each average, and with p = 1 every part is
// exact and the result equals exact attention (to fp32 rounding).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/approx/cross_approximation.hpp"
#include "mmattn/approx/uncovered_keys.hpp"
#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/convert.hpp"
#include "mmattn/kernel/tile_traits.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/merge.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"

namespace mmattn::approx {

// The patches one pooled cell averages: rows x cols of an image grid.
struct PoolShape {
  index_t rows = 1, cols = 1;
};

// The pooled images only, in sequence order: image i of rows x cols becomes a
// ceil(rows / p.rows) x ceil(cols / p.cols) grid. This is what a pooled K/V buffer holds; cell
// (i, j) of an image averages patches [i p.rows, min((i + 1) p.rows, rows)) x [j p.cols, ...).
inline SequenceLayout pooled_image_layout(const SequenceLayout& layout, PoolShape p) {
  MMATTN_REQUIRE(p.rows > 0 && p.cols > 0, "pooling: the pool must be at least 1 x 1, got " + std::to_string(p.rows) +
                                               " x " + std::to_string(p.cols));
  SequenceLayout pooled;
  for (const Segment& s : layout.segments())
    if (s.is_image()) pooled.add_image((s.rows + p.rows - 1) / p.rows, (s.cols + p.cols - 1) / p.cols);
  return pooled;
}

// dst[cell, h, :] = mean of src over the cell's patches, for every image cell and KV head.
// src: [layout.size(), heads, head_dim], any strides and element type; dst: [pooled tokens, heads,
// head_dim] float (pooled_image_layout(layout, p).size() tokens). Memory-bound: one pass over the
// image rows of src.
template <class T>
void pool_images(const TensorView<T>& src, const SequenceLayout& layout, PoolShape p, const TensorView<float>& dst,
                 const Executor& executor) {
  const SequenceLayout pooled = pooled_image_layout(layout, p);
  MMATTN_REQUIRE(src.tokens == layout.size(), "pooling: source has " + std::to_string(src.tokens) +
                                                  " tokens, the layout " + std::to_string(layout.size()));
  MMATTN_REQUIRE(dst.tokens == pooled.size() && dst.heads == src.heads && dst.head_dim == src.head_dim,
                 "pooling: destination is " + mmattn::detail::shape_string(dst.tokens, dst.heads, dst.head_dim) +
                     ", the pooled images need " + mmattn::detail::shape_string(pooled.size(), src.heads, src.head_dim));
  std::vector<std::pair<const Segment*, const Segment*>> images;  // (image, its pooled grid)
  for (const Segment& s : layout.segments())
    if (s.is_image()) images.push_back({&s, &pooled.segment(static_cast<index_t>(images.size()))});
  const index_t heads = src.heads, dim = src.head_dim;
  executor.parallel_for(static_cast<index_t>(images.size()) * heads, [&](index_t item) {
    const Segment& image = *images[static_cast<size_t>(item / heads)].first;
    const Segment& cells = *images[static_cast<size_t>(item / heads)].second;
    const index_t h = item % heads;
    std::vector<float> row(static_cast<size_t>(dim));
    Eigen::ArrayXf acc(dim);
    for (index_t ci = 0; ci < cells.rows; ++ci) {
      for (index_t cj = 0; cj < cells.cols; ++cj) {
        const index_t r0 = ci * p.rows, r1 = std::min(r0 + p.rows, image.rows);
        const index_t c0 = cj * p.cols, c1 = std::min(c0 + p.cols, image.cols);
        acc.setZero();
        for (index_t r = r0; r < r1; ++r)
          for (index_t c = c0; c < c1; ++c) {
            kernel::convert_row(src.row(image.start + r * image.cols + c, h), dim, src.dim_stride, 1.0f, row.data());
            acc += Eigen::Map<const Eigen::ArrayXf>(row.data(), dim);
          }
        acc *= 1.0f / static_cast<float>((r1 - r0) * (c1 - c0));
        float* out = dst.row(cells.start + ci * cells.cols + cj, h);
        for (index_t d = 0; d < dim; ++d) out[d * dst.dim_stride] = acc[d];
      }
    }
  });
}

// A rect of one image's pooled cells that all average the same number of patches.
struct PooledRect {
  TokenRect cells;  // positions in the pooled layout
  index_t count = 1;
};

// An image's pooled grid as at most four rects of equal cell size: the whole cells, the short last
// column, the short last row and their corner.
inline std::vector<PooledRect> pooled_rects(const Segment& image, const Segment& cells, PoolShape p) {
  const index_t full_r = image.rows / p.rows, rem_r = image.rows % p.rows;
  const index_t full_c = image.cols / p.cols, rem_c = image.cols % p.cols;
  std::vector<PooledRect> out;
  auto add = [&](index_t r0, index_t rows, index_t c0, index_t cols, index_t count) {
    if (rows > 0 && cols > 0) out.push_back({{cells.start + r0 * cells.cols + c0, cells.cols, rows, cols}, count});
  };
  add(0, full_r, 0, full_c, p.rows * p.cols);
  add(0, full_r, full_c, rem_c > 0 ? 1 : 0, p.rows * rem_c);
  add(full_r, rem_r > 0 ? 1 : 0, 0, full_c, rem_r * p.cols);
  add(full_r, rem_r > 0 ? 1 : 0, full_c, rem_c > 0 ? 1 : 0, rem_r * rem_c);
  return out;
}

namespace detail {

// Key blocks of at most `cap` keys over `rects`: contiguous rects that follow each other join one
// span first (consecutive pooled images of whole cells are one run), then spans are cut at cap.
inline void add_rect_blocks(const std::vector<TokenRect>& rects, index_t cap, std::vector<KeyBlock>& blocks) {
  std::vector<TokenRect> runs;
  for (const TokenRect& r : rects) {
    if (r.contiguous() && !runs.empty() && runs.back().rows == 1 && runs.back().start + runs.back().cols == r.start) {
      runs.back().cols += r.size();
      runs.back().pitch = runs.back().cols;
    } else {
      runs.push_back(r.contiguous() ? TokenRect::span(r.start, r.size()) : r);
    }
  }
  for (const TokenRect& r : runs) {
    const index_t cols = std::min(r.cols, cap), rows_per = std::max<index_t>(1, cap / cols);
    for (index_t r0 = 0; r0 < r.rows; r0 += rows_per)
      for (index_t c0 = 0; c0 < r.cols; c0 += cols) {
        const TokenRect keys{r.start + r0 * r.pitch + c0, r.rows == 1 ? std::min(cols, r.cols - c0) : r.pitch,
                             std::min(rows_per, r.rows - r0), std::min(cols, r.cols - c0)};
        blocks.push_back({keys, /*full=*/true, /*key_segment=*/0});  // full: no rule is ever asked
      }
  }
}

// Per layout segment, the image segments a text segment sees, each whole (empty for images).
// Pooling replaces whole images, so a rule that lets a text segment see part of an image is refused.
inline std::vector<std::vector<index_t>> images_seen_by_text(const SequenceLayout& layout, const RegionPolicy& policy) {
  std::vector<std::vector<index_t>> seen(static_cast<size_t>(layout.num_segments()));
  for (index_t text = 0; text < layout.num_segments(); ++text) {
    const Segment& t = layout.segment(text);
    if (!t.is_text()) continue;
    for (index_t image = 0; image < layout.num_segments(); ++image) {
      const Segment& i = layout.segment(image);
      if (!i.is_image()) continue;
      const BlockCoverage c = policy.pair(layout, text, image)
                                  .classify(TokenRect::span(t.start, t.length), TokenRect::span(i.start, i.length));
      MMATTN_REQUIRE(c != BlockCoverage::partial, "pooled cross: the text->image rule (" +
                                                      policy.rule_for(layout, text, image).name() +
                                                      ") lets text segment " + std::to_string(text) +
                                                      " see part of image segment " + std::to_string(image) +
                                                      "; pooling needs all of an image or none");
      if (c == BlockCoverage::full) seen[static_cast<size_t>(text)].push_back(image);
    }
  }
  return seen;
}

}  // namespace detail

struct PooledCrossOptions {
  index_t pool = 2;           // p: each pooled image token averages p x p patches
  bool proportional = true;   // a pooled key counts for the patches it averages (+ log(count))
};

// T: the element type the runtime stores Q, K, V, O in (others mix as in MultimodalAttention).
template <class T = float>
class PooledCrossAttention : public detail::CrossApproximation<PooledCrossOptions> {
 public:
  // One plan over the pooled keys for the queries of one text segment and one pooled-cell size.
  struct PooledPart {
    index_t text_segment = 0;  // into layout().segments()
    index_t text_offset = 0;   // the segment's first row among all text rows
    index_t size_class = 0;    // into cell_counts()
    // Queries: the segment's positions (tiles name the segment of layout()); keys: positions of
    // pooled_images(), the plan's layout. Every block is full: the plan has no rules.
    Plan plan;
  };

  // `policy` is the exact rule the approximation starts from (e.g. RegionPolicy::structured()):
  // image queries and text->text keep it; its text->image rule (none, full or causal) says which
  // images' pooled tokens each text segment sees. The plans cover every query (no query range).
  PooledCrossAttention(AttentionConfig config, SequenceLayout layout, RegionPolicy policy,
                       PooledCrossOptions pooled = {}, PlanOptions options = {},
                       Executor executor = Executor::default_executor())
      : CrossApproximation("pooled cross", std::move(config), std::move(layout), std::move(policy), pooled,
                           std::move(executor)) {
    MMATTN_REQUIRE(options_.pool >= 1, "pooled cross: pool must be >= 1, got " + std::to_string(options_.pool));
    require_whole_sequence(options);
    seen_images_ = detail::images_seen_by_text(layout_, policy_);
    exact_policy_ = policy_;
    exact_policy_.set(Region::across(SegmentKind::text, SegmentKind::image), Rule::none());
    for (index_t t = 0; t < layout_.num_segments(); ++t)  // overrides win over the table: switch them off too
      for (index_t i = 0; i < layout_.num_segments(); ++i)
        if (layout_.segment(t).is_text() && layout_.segment(i).is_image()) exact_policy_.set_segments(t, i, Rule::none());
    exact_plan_ = make_plan(layout_, exact_policy_, options);
    const PoolShape shape{options_.pool, options_.pool};
    pooled_ = pooled_image_layout(layout_, shape);
    build_pooled_parts(shape, options.tiles);
  }

  // Q/O: [layout().size(), num_heads, head_dim]; K/V: [layout().size(), num_kv_heads, head_dim];
  // lse optional, [tokens, num_heads] (text rows: of the approximate softmax, pooled keys weighted).
  template <class TQ, class TK, class TV, class TO>
  void forward(const TensorView<TQ>& q, const TensorView<TK>& k, const TensorView<TV>& v,
               const TensorView<TO>& out, const LseView& lse = {}) const {
    validate_forward(q, k, v, out, lse);
    std::vector<float> lse_scratch;
    LseView lse_a = lse;
    if (!lse_a && !parts_.empty()) {
      lse_scratch.resize(static_cast<size_t>(q.tokens * config_.num_heads));
      lse_a = view_lse(lse_scratch.data(), q.tokens, config_.num_heads);
    }
    kernel::execute_plan(exact_plan_, config_, q, k, v, out, lse_a, executor_);  // part A
    if (parts_.empty()) return;

    // Part B: the pooled K and V, then each text segment x cell size into its own rows.
    const index_t kvh = config_.num_kv_heads, dim = config_.head_dim, heads = config_.num_heads;
    std::vector<float> pk(static_cast<size_t>(pooled_.size() * kvh * dim)), pv(pk.size());
    const TensorView<float> pk_view = view_thd(pk.data(), pooled_.size(), kvh, dim);
    const TensorView<float> pv_view = view_thd(pv.data(), pooled_.size(), kvh, dim);
    const PoolShape shape{options_.pool, options_.pool};
    pool_images(k, layout_, shape, pk_view, executor_);
    pool_images(v, layout_, shape, pv_view, executor_);

    const auto classes = static_cast<index_t>(counts_.size()), text = layout_.text_tokens();
    std::vector<std::vector<TO>> o_b(static_cast<size_t>(classes));
    std::vector<std::vector<float>> lse_b(static_cast<size_t>(classes));
    for (index_t c = 0; c < classes; ++c) {
      o_b[static_cast<size_t>(c)].resize(static_cast<size_t>(text * heads * dim));
      lse_b[static_cast<size_t>(c)].assign(static_cast<size_t>(text * heads), kernel::kNegInf);
    }
    for (const PooledPart& part : parts_) {
      const Segment& seg = layout_.segment(part.text_segment);
      TensorView<const TQ> q_seg = q;  // rows are positions - plan.query_begin = the segment's rows
      q_seg.data = q.row(seg.start, 0);
      q_seg.tokens = seg.length;
      const auto c = static_cast<size_t>(part.size_class);
      const TensorView<TO> o_seg = view_thd(o_b[c].data() + part.text_offset * heads * dim, seg.length, heads, dim);
      const LseView l_seg = view_lse(lse_b[c].data() + part.text_offset * heads, seg.length, heads);
      kernel::execute_plan(part.plan, config_, q_seg, TensorView<const float>(pk_view),
                           TensorView<const float>(pv_view), o_seg, l_seg, executor_);
    }
    if (options_.proportional)
      for (index_t c = 0; c < classes; ++c) {
        const float bias = std::log(static_cast<float>(counts_[static_cast<size_t>(c)]));
        for (float& l : lse_b[static_cast<size_t>(c)]) l += bias;  // -inf stays -inf
      }

    // Merge: each text segment's rows of part A (in out) with its pooled parts, in place.
    std::vector<PartialAttention<TO>> parts;
    index_t offset = 0;
    for (index_t s = 0; s < layout_.num_segments(); ++s) {
      const Segment& seg = layout_.segment(s);
      if (seg.is_image()) continue;
      TensorView<TO> o_seg = out;
      o_seg.data = out.row(seg.start, 0);
      o_seg.tokens = seg.length;
      LseView l_seg = lse_a;
      l_seg.data = &lse_a(seg.start, 0);
      l_seg.tokens = seg.length;
      parts.assign(1, {o_seg, l_seg});
      for (index_t c = 0; c < classes; ++c)
        parts.push_back({view_thd<const TO>(o_b[static_cast<size_t>(c)].data() + offset * heads * dim, seg.length,
                                            heads, dim),
                         view_lse(lse_b[static_cast<size_t>(c)].data() + offset * heads, seg.length, heads)});
      merge(parts, o_seg, l_seg);
      offset += seg.length;
    }
  }

  // The keys whose exact contribution this strategy approximates: for each text query tile, every
  // image it would see exactly, all heads. (Q and K are not needed; kept for a uniform interface.)
  template <class QView, class KView>
  UncoveredKeys uncovered_keys(const QView&, const KView&) const {
    UncoveredKeys u;
    for (const QueryTile& tile : exact_plan_.query_tiles) {
      const Segment& seg = layout_.segment(tile.segment);
      if (!seg.is_text()) continue;
      UncoveredKeys::Entry e{-1, tile.queries, {}, Uncovered::approximated};
      for (const index_t s : seen_images_[static_cast<size_t>(tile.segment)]) {
        const Segment& image = layout_.segment(s);
        e.keys.push_back(TokenRect::span(image.start, image.length));
      }
      if (!e.keys.empty()) u.entries.push_back(std::move(e));
    }
    return u;
  }

  // The base policy with text->image off: what part A computes, exactly.
  const RegionPolicy& exact_policy() const { return exact_policy_; }
  const Plan& exact_plan() const { return exact_plan_; }
  const SequenceLayout& pooled_images() const { return pooled_; }
  const std::vector<PooledPart>& pooled_parts() const { return parts_; }
  const std::vector<index_t>& cell_counts() const { return counts_; }  // patches per cell, per size class

  // Pairs the kernels compute: part A's blocks plus every pooled part's.
  index_t computed_pairs() const {
    index_t n = plan_stats(exact_plan_).computed_pairs();
    for (const PooledPart& part : parts_)
      for (const QueryTile& t : part.plan.query_tiles) n += t.computed_pairs;
    return n;
  }
  // Scratch of one forward() beyond Q, K, V, O: the pooled K and V, the pooled parts' rows and
  // log-sum-exps, part A's log-sum-exp when the caller passes none, and `threads` workspaces.
  index_t scratch_bytes(int threads = 1) const {
    const index_t f = sizeof(float), text = layout_.text_tokens(), heads = config_.num_heads;
    index_t n = 2 * pooled_.size() * config_.num_kv_heads * config_.head_dim * f;
    n += static_cast<index_t>(counts_.size()) * text * heads * (config_.head_dim * static_cast<index_t>(sizeof(T)) + f);
    n += parts_.empty() ? 0 : layout_.size() * heads * f;
    return n + threads * workspace_bytes_per_thread(exact_plan_, config_.head_dim);
  }

 private:
  void build_pooled_parts(PoolShape shape, TileSizes tiles) {
    // The rects of every image (by layout segment), and the distinct cell sizes among them.
    std::vector<std::vector<PooledRect>> rects(static_cast<size_t>(layout_.num_segments()));
    index_t image = 0;
    for (index_t s = 0; s < layout_.num_segments(); ++s) {
      if (!layout_.segment(s).is_image()) continue;
      std::vector<PooledRect>& r = rects[static_cast<size_t>(s)];
      r = pooled_rects(layout_.segment(s), pooled_.segment(image++), shape);
      for (const PooledRect& cell : r)
        if (std::find(counts_.begin(), counts_.end(), cell.count) == counts_.end()) counts_.push_back(cell.count);
    }
    std::sort(counts_.begin(), counts_.end(), std::greater<>());
    index_t text_offset = 0;
    std::vector<TokenRect> keys;
    std::vector<KeyBlock> blocks;
    for (index_t s = 0; s < layout_.num_segments(); ++s) {
      const Segment& seg = layout_.segment(s);
      if (seg.is_image()) continue;
      for (size_t c = 0; c < counts_.size(); ++c) {
        keys.clear();
        for (const index_t i : seen_images_[static_cast<size_t>(s)])
          for (const PooledRect& r : rects[static_cast<size_t>(i)])
            if (r.count == counts_[c]) keys.push_back(r.cells);
        if (keys.empty()) continue;
        blocks.clear();
        detail::add_rect_blocks(keys, tiles.key, blocks);  // every query tile of the segment sees these
        PlanBuilder builder(pooled_, /*policy=*/nullptr, tiles, seg.start, seg.end(), pooled_.size());
        for (index_t q0 = seg.start; q0 < seg.end(); q0 += tiles.query)
          builder.add_query_tile_with(TokenRect::span(q0, std::min(tiles.query, seg.end() - q0)), s, blocks);
        parts_.push_back({s, text_offset, static_cast<index_t>(c), builder.finish()});
      }
      text_offset += seg.length;
    }
  }

  std::vector<std::vector<index_t>> seen_images_;  // per layout segment, images_seen_by_text
  RegionPolicy exact_policy_;
  Plan exact_plan_;
  SequenceLayout pooled_;
  std::vector<index_t> counts_;
  std::vector<PooledPart> parts_;
};

}  // namespace mmattn::approx
