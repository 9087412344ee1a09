// The opt-in approximations (approx/): pooling and top-k selection against straightforward
// references; pooled cross attention (any pool, proportional or not) and sparse cross attention
// (any k) against double-precision references of what they are defined to compute; p = 1 and
// k = all tiles equal exact attention; image rows are untouched, bit for bit; measure_error's
// errors and masses against loops over the keys.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "mmattn/approx/measure_error.hpp"
#include "mmattn/approx/pooled_cross.hpp"
#include "mmattn/approx/sparse_cross.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"
#include "typed_tensor.hpp"

namespace mmattn::test {
namespace {

using approx::PoolShape;
using approx::PooledCrossAttention;
using approx::PooledCrossOptions;
using approx::SparseCrossAttention;
using approx::SparseCrossOptions;

constexpr int kCases = kSlowBuild ? 20 : 40;

// Does every text segment see each image wholly or not at all, and are there no videos? The
// approximations replace whole images, so they accept only such policies.
bool approximable(const cases::Case& c) {
  if (c.layout.video_tokens() > 0 || c.policy.sinks() > 0) return false;
  for (index_t t = 0; t < c.layout.num_segments(); ++t)
    for (index_t i = 0; i < c.layout.num_segments(); ++i) {
      const Segment& ts = c.layout.segment(t);
      const Segment& is = c.layout.segment(i);
      if (!ts.is_text() || !is.is_image()) continue;
      const BlockCoverage cover = c.policy.pair(c.layout, t, i).classify(TokenRect::span(ts.start, ts.length),
                                                                      TokenRect::span(is.start, is.length));
      if (cover == BlockCoverage::partial) return false;
    }
  return true;
}

// A random case over the whole sequence (the approximations take no query range) that the
// approximations accept: the next seeds in steps of 2^16 until one is.
cases::Case whole_case(std::uint32_t seed) {
  cases::Case c = cases::random_case(seed);
  while (!approximable(c)) c = cases::random_case(seed += 0x10000u);
  c.options.query_begin = 0;
  c.options.query_end = -1;
  return c;
}

Executor executor_of(const cases::Case& c) { return c.serial ? Executor::serial() : Executor::default_executor(); }

// A layout with the awkward shapes: grids not divisible by the pools, a 1 x 1 image, text
// before, between and after images.
SequenceLayout awkward_layout() {
  SequenceLayout l;
  l.add_text(5).add_image(5, 7).add_image(1, 1).add_text(13).add_image(4, 9).add_image(6, 6).add_text(7);
  return l;
}

// Mean of the patches of each pooled cell, in double: cell (i, j) of an image averages rows
// [i pr, min((i + 1) pr, rows)) x cols [j pc, ...). Returns [cells, heads, dim] and the counts.
struct NaivePool {
  std::vector<double> values;  // (cell, head, dim)
  std::vector<index_t> counts, image_of;
  index_t cells = 0;
};

NaivePool naive_pool(const TensorView<const float>& src, const SequenceLayout& layout, PoolShape p) {
  NaivePool out;
  index_t image = 0;
  for (const Segment& s : layout.segments()) {
    if (!s.is_image()) continue;
    for (index_t i = 0; i * p.rows < s.rows; ++i)
      for (index_t j = 0; j * p.cols < s.cols; ++j) {
        index_t count = 0;
        std::vector<double> acc(static_cast<size_t>(src.heads * src.head_dim), 0.0);
        for (index_t r = i * p.rows; r < std::min((i + 1) * p.rows, s.rows); ++r)
          for (index_t c = j * p.cols; c < std::min((j + 1) * p.cols, s.cols); ++c, ++count)
            for (index_t h = 0; h < src.heads; ++h)
              for (index_t d = 0; d < src.head_dim; ++d)
                acc[static_cast<size_t>(h * src.head_dim + d)] += src(s.start + r * s.cols + c, h, d);
        for (double& a : acc) a /= double(count);
        out.values.insert(out.values.end(), acc.begin(), acc.end());
        out.counts.push_back(count);
        out.image_of.push_back(image);
        ++out.cells;
      }
    ++image;
  }
  return out;
}

// The sequence's tokens followed by extra tokens (pooled cells): one K or V for the references.
Tensor append_rows(const TensorView<const float>& src, const NaivePool& extra) {
  Tensor t(src.tokens + extra.cells, src.heads, src.head_dim);
  for_each_index(src, [&](index_t i, index_t h, index_t d) { t.view(i, h, d) = src(i, h, d); });
  for (index_t c = 0; c < extra.cells; ++c)
    for (index_t h = 0; h < src.heads; ++h)
      for (index_t d = 0; d < src.head_dim; ++d)
        t.view(src.tokens + c, h, d) = float(extra.values[static_cast<size_t>((c * src.heads + h) * src.head_dim + d)]);
  return t;
}

// Softmax attention in double where each (query, head) has its own allowed keys and keys carry an
// additive score bias: allowed(query, key, head), bias(key). Rows with no key: zeros and -inf.
template <class Allowed, class Bias>
Result biased_reference(const AttentionConfig& cfg, const TensorView<const float>& q, const TensorView<const float>& k,
                        const TensorView<const float>& v, const Allowed& allowed, const Bias& bias) {
  Result r{Tensor(q.tokens, cfg.num_heads, cfg.head_dim), Lse(q.tokens, cfg.num_heads)};
  const double scale = cfg.resolved_scale();
  std::vector<double> s(static_cast<size_t>(k.tokens)), acc(static_cast<size_t>(cfg.head_dim));
  for (index_t h = 0; h < cfg.num_heads; ++h) {
    const index_t kvh = cfg.kv_head_of(h);
    for (index_t i = 0; i < q.tokens; ++i) {
      double top = -INFINITY;
      for (index_t j = 0; j < k.tokens; ++j) {
        s[static_cast<size_t>(j)] = -INFINITY;
        if (!allowed(i, j, h)) continue;
        double dot = 0;
        for (index_t d = 0; d < cfg.head_dim; ++d) dot += double(q(i, h, d)) * double(k(j, kvh, d));
        s[static_cast<size_t>(j)] = dot * scale + bias(j);
        top = std::max(top, s[static_cast<size_t>(j)]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double sum = 0;
      for (index_t j = 0; top > -INFINITY && j < k.tokens; ++j) {
        if (s[static_cast<size_t>(j)] == -INFINITY) continue;
        const double p = std::exp(s[static_cast<size_t>(j)] - top);
        sum += p;
        for (index_t d = 0; d < cfg.head_dim; ++d) acc[static_cast<size_t>(d)] += p * double(v(j, kvh, d));
      }
      for (index_t d = 0; d < cfg.head_dim; ++d) r.out.view(i, h, d) = float(sum > 0 ? acc[static_cast<size_t>(d)] / sum : 0);
      r.lse.view(i, h) = float(sum > 0 ? top + std::log(sum) : -INFINITY);
    }
  }
  return r;
}

// The base mask without text->image.
template <class IsText>
bool allowed_pair(const cases::Case& c, index_t qi, index_t kj, const IsText& is_text) {
  return mmattn::allowed(c.layout, c.policy, qi, kj) && !(is_text(qi) && !is_text(kj));
}

// What pooled cross attention is defined to compute: image rows and text->text under the base
// policy; text rows also over the pooled cells of every image the text->image rule lets them see,
// scores + log(count) when proportional.
Result pooled_reference(const cases::Case& c, const Buffers& b, index_t pool, bool proportional) {
  const NaivePool pk = naive_pool(b.k.cview(), c.layout, {pool, pool});
  const NaivePool pv = naive_pool(b.v.cview(), c.layout, {pool, pool});
  const Tensor kk = append_rows(b.k.cview(), pk), vv = append_rows(b.v.cview(), pv);
  std::vector<index_t> image_start;
  for (const Segment& s : c.layout.segments())
    if (s.is_image()) image_start.push_back(s.start);
  const index_t n = c.layout.size();
  auto is_text = [&](index_t pos) { return !c.layout.segment(c.layout.segment_index(pos)).is_image(); };
  auto allowed = [&](index_t qi, index_t kj, index_t) {
    if (kj < n) return allowed_pair(c, qi, kj, is_text);
    // A pooled cell: text queries, when the rule lets them see the cell's image (wholly before or after).
    return is_text(qi) && mmattn::allowed(c.layout, c.policy, qi, image_start[static_cast<size_t>(pk.image_of[static_cast<size_t>(kj - n)])]);
  };
  auto bias = [&](index_t kj) {
    return kj >= n && proportional ? std::log(double(pk.counts[static_cast<size_t>(kj - n)])) : 0.0;
  };
  return biased_reference(c.cfg, b.q.cview(), kk.cview(), vv.cview(), allowed, bias);
}

// ---- pooling ------------------------------------------------------------------------------------

TEST(Pooling, PooledLayoutAndPoolImagesMatchLoops) {
  const SequenceLayout layout = awkward_layout();
  const AttentionConfig cfg = make_config(3, 3, 17);
  for (const PoolShape p : {PoolShape{1, 1}, PoolShape{2, 2}, PoolShape{3, 3}, PoolShape{4, 4}, PoolShape{2, 3}}) {
    for (const Storage storage : {Storage::contiguous, Storage::dim_strided, Storage::heads_major}) {
      SCOPED_TRACE(std::to_string(p.rows) + "x" + std::to_string(p.cols) + " " + storage_name(storage));
      const Tensor k = random_tensor(layout.size(), cfg.num_kv_heads, cfg.head_dim, 5, storage);
      const SequenceLayout pooled = approx::pooled_image_layout(layout, p);
      const NaivePool ref = naive_pool(k.cview(), layout, p);
      ASSERT_EQ(pooled.size(), ref.cells);
      index_t image = 0;
      for (const Segment& s : layout.segments()) {
        if (!s.is_image()) continue;
        const Segment& cells = pooled.segment(image++);
        EXPECT_EQ(cells.rows, (s.rows + p.rows - 1) / p.rows);
        EXPECT_EQ(cells.cols, (s.cols + p.cols - 1) / p.cols);
      }
      Tensor out(pooled.size(), cfg.num_kv_heads, cfg.head_dim, Storage::padded_tokens);
      approx::pool_images(k.cview(), layout, p, out.view, Executor::default_executor());
      double worst = 0;
      for_each_index(out.view, [&](index_t t, index_t h, index_t d) {
        const double e = ref.values[static_cast<size_t>((t * cfg.num_kv_heads + h) * cfg.head_dim + d)];
        worst = std::max(worst, std::abs(double(out.view(t, h, d)) - e) / std::max(1.0, std::abs(e)));
      });
      EXPECT_LE(worst, 1e-6);
      EXPECT_TRUE(out.padding_intact());
    }
  }
}

// Every cell of every pooled grid lies in exactly one rect, and the rect's count is the cell's.
TEST(Pooling, PooledRectsTileEachGridWithTheirCounts) {
  for (index_t rows = 1; rows <= 9; ++rows)
    for (index_t cols = 1; cols <= 9; cols += 2)
      for (index_t p = 1; p <= 4; ++p) {
        SequenceLayout layout;
        layout.add_text(3).add_image(rows, cols);
        const SequenceLayout pooled = approx::pooled_image_layout(layout, {p, p});
        const NaivePool ref = naive_pool(random_tensor(layout.size(), 1, 1, 1).cview(), layout, {p, p});
        std::vector<index_t> count(static_cast<size_t>(pooled.size()), 0);
        for (const approx::PooledRect& r : approx::pooled_rects(layout.segment(1), pooled.segment(0), {p, p}))
          for (index_t i = 0; i < r.cells.size(); ++i) {
            EXPECT_EQ(count[static_cast<size_t>(r.cells.at(i))], 0) << rows << "x" << cols << " p=" << p;
            count[static_cast<size_t>(r.cells.at(i))] = r.count;
          }
        for (index_t cell = 0; cell < pooled.size(); ++cell)
          EXPECT_EQ(count[static_cast<size_t>(cell)], ref.counts[static_cast<size_t>(cell)])
              << rows << "x" << cols << " p=" << p << " cell " << cell;
      }
}

// ---- pooled cross attention ---------------------------------------------------------------------

// Over random layouts, policies, heads, storages and tiles: the output and lse are what the
// definition gives, for pools 1 to 4, proportional or not. Pool 1 is also exact attention.
TEST(PooledCross, MatchesItsDefinitionAndPoolOneIsExact) {
  int failed = 0;
  double worst = 0;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = whole_case(0x9001a000u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    const index_t pool = 1 + i % 4;
    const bool proportional = i % 5 != 4;
    const Buffers b = make_qkv(c.cfg, c.layout.size(), c.layout.size(), c.seed).restrided(c.q_storage, c.kv_storage);
    const PooledCrossAttention<float> att(c.cfg, c.layout, c.policy, PooledCrossOptions{pool, proportional},
                                          c.options, executor_of(c));
    Tensor out(c.layout.size(), c.cfg.num_heads, c.cfg.head_dim, c.out_storage);
    Lse lse(c.layout.size(), c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
    att.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);
    const Result ref = pooled_reference(c, b, pool, proportional);
    double o_err = max_relative_error(out, ref.out), l_err = max_lse_error(lse, ref.lse);
    if (pool == 1) {  // and exact attention under the base policy
      const Result exact = run_reference(c.cfg, b, MaskPredicate{&c.layout, &c.policy});
      o_err = std::max(o_err, max_relative_error(out, exact.out));
      l_err = std::max(l_err, max_lse_error(lse, exact.lse));
    }
    worst = std::max(worst, o_err);
    const bool ok = o_err <= 1e-5 && l_err <= 1e-5 && out.padding_intact();
    if (!ok && ++failed <= 5) ADD_FAILURE() << "pool " << pool << ": O error " << o_err << ", LSE error " << l_err;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases;
  std::printf("%d cases; worst O relative error %.3g\n", kCases, worst);
}

// A per-segment override that lets text see an image is pooled, not also computed exactly: pool 1
// equals exact attention under the policy with the override.
TEST(PooledCross, TextImageOverridesAreNotCountedTwice) {
  const SequenceLayout layout = awkward_layout();  // text 5 before image 5x7 (segment 1)
  const AttentionConfig cfg = make_config(2, 1, 16);
  RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  policy.set_segments(0, 1, Rule::full());  // causal by the table: none; the override: all of it
  const Buffers b = make_qkv(cfg, layout.size(), layout.size(), 11);
  const PooledCrossAttention<float> att(cfg, layout, policy, PooledCrossOptions{1, true});
  Tensor out(layout.size(), 2, 16);
  Lse lse(layout.size(), 2);
  att.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);
  const Result exact = run_reference(cfg, b, MaskPredicate{&layout, &policy});
  EXPECT_LE(max_relative_error(out, exact.out), 1e-5);
  EXPECT_LE(max_lse_error(lse, exact.lse), 1e-5);
}

// Top-k ranks whole images: a rule that lets a text tile see part of an image is refused, even
// when the planner's blocks over that part are full.
TEST(SparseCross, RefusesRulesThatSeePartOfAnImage) {
  SequenceLayout layout;
  layout.add_image(4, 32).add_text(64);  // a 96-position chunk holds text and the image's last row
  const std::string m = error_message([&] {
    SparseCrossAttention<float>(make_config(2, 1, 16), layout, RegionPolicy::llama4_chunked(96));
  });
  EXPECT_TRUE(contains(m, "lets a text tile see part of an image")) << m;
}

// Image rows come from the same blocks as the exact plan's: equal bit for bit. And the pooled K/V
// buffer holds only the pooled image tokens.
TEST(PooledCross, ImageRowsAreExactBitForBit) {
  const SequenceLayout layout = awkward_layout();
  const AttentionConfig cfg = make_config(4, 2, 24);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  const Buffers b = make_qkv(cfg, layout.size(), layout.size(), 3);
  const MultimodalAttention<float> exact(cfg, layout, policy);
  const PooledCrossAttention<float> pooled(cfg, layout, policy, PooledCrossOptions{2, true});
  Tensor o_exact(layout.size(), 4, 24), o_pooled(layout.size(), 4, 24);
  exact.forward(b.q.cview(), b.k.cview(), b.v.cview(), o_exact.view);
  pooled.forward(b.q.cview(), b.k.cview(), b.v.cview(), o_pooled.view);
  for (const Segment& s : layout.segments())
    for (index_t t = s.start; t < s.end() && s.is_image(); ++t)
      for (index_t h = 0; h < 4; ++h)
        for (index_t d = 0; d < 24; ++d) ASSERT_EQ(o_pooled.view(t, h, d), o_exact.view(t, h, d)) << t;
  EXPECT_EQ(pooled.pooled_images().size(), 3 * 4 + 1 + 2 * 5 + 3 * 3);  // ceil halves of 5x7, 1x1, 4x9, 6x6
  EXPECT_EQ(pooled.cell_counts(), (std::vector<index_t>{4, 2, 1}));
  const approx::ErrorReport e = approx::measure_error(pooled, exact, b.q.cview(), b.k.cview(), b.v.cview());
  EXPECT_EQ(e.image_rel_l2, 0.0);
  EXPECT_GT(e.text_rel_l2, 0.0);
}

// bf16 storage and a bf16 output go through the same parts and merge.
TEST(PooledCross, SixteenBitStorage) {
  const SequenceLayout layout = awkward_layout();
  const AttentionConfig cfg = make_config(2, 2, 16);
  const RegionPolicy policy = RegionPolicy::structured();
  const Buffers b = make_qkv(cfg, layout.size(), layout.size(), 8);
  const TypedTensor<Eigen::bfloat16> q(b.q), k(b.k), v(b.v);
  TypedTensor<Eigen::bfloat16> out(layout.size(), 2, 16);
  Tensor ref(layout.size(), 2, 16);
  const PooledCrossAttention<Eigen::bfloat16> att(cfg, layout, policy, PooledCrossOptions{2, true});
  att.forward(q.cview(), k.cview(), v.cview(), out.view);
  const Tensor qw = q.widened(), kw = k.widened(), vw = v.widened();
  att.forward(qw.cview(), kw.cview(), vw.cview(), ref.view);
  EXPECT_LE(max_relative_error(out.cview(), ref.cview()), 4 * unit_roundoff<Eigen::bfloat16>());
}

TEST(PooledCross, Validation) {
  const SequenceLayout layout = awkward_layout();
  const AttentionConfig cfg = make_config(2, 2, 8);
  const RegionPolicy policy = RegionPolicy::structured();
  EXPECT_TRUE(contains(error_message([&] { PooledCrossAttention<float>(cfg, layout, policy, PooledCrossOptions{0, true}); }),
                       "pool must be >= 1"));
  PlanOptions range;
  range.query_begin = 3;
  EXPECT_TRUE(contains(error_message([&] { PooledCrossAttention<float>(cfg, layout, policy, {}, range); }),
                       "query range is not supported"));
  const PooledCrossAttention<float> att(cfg, layout, policy);
  const Buffers b = make_qkv(cfg, layout.size() - 1, layout.size() - 1, 1);
  Tensor out(layout.size() - 1, 2, 8);
  EXPECT_TRUE(contains(error_message([&] { att.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view); }),
                       "must hold the layout's"));
}

// ---- sparse cross attention ---------------------------------------------------------------------

// Mean query of each text tile . mean key of each key tile, in double, for (text tile, head).
double reference_score(const SparseCrossAttention<float>& att, const TensorView<const float>& q,
                       const TensorView<const float>& k, index_t ti, index_t head, index_t key_tile) {
  const AttentionConfig& cfg = att.config();
  const TokenRect& queries = att.exact_plan().query_tiles[static_cast<size_t>(att.text_tiles()[static_cast<size_t>(ti)])].queries;
  const TokenRect& keys = att.key_tiles()[static_cast<size_t>(key_tile)].keys;
  double dot = 0;
  for (index_t d = 0; d < cfg.head_dim; ++d) {
    double mq = 0, mk = 0;
    for (index_t i = 0; i < queries.size(); ++i) mq += q(queries.at(i), head, d);
    for (index_t j = 0; j < keys.size(); ++j) mk += k(keys.at(j), cfg.kv_head_of(head), d);
    dot += (mq / double(queries.size())) * (mk / double(keys.size()));
  }
  return dot;
}

// Key tiles are the patches of each grid; each (text tile, head, visible image) keeps
// min(k, tiles) of them, and none it keeps scores below one it drops (up to rounding).
TEST(SparseCross, SelectionIsTheTopKByMeanScore) {
  int failed = 0;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = whole_case(0x5e1ec700u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    SparseCrossOptions o{1 + i % 3, 1 + i % 4, 1 + (i / 4) % 5};
    const Buffers b = make_qkv(c.cfg, c.layout.size(), c.layout.size(), c.seed).restrided(c.q_storage, c.kv_storage);
    const SparseCrossAttention<float> att(c.cfg, c.layout, c.policy, o, c.options, executor_of(c));
    // The key tiles cover every image position once.
    std::vector<int> covered(static_cast<size_t>(c.layout.size()), 0);
    for (const approx::ImageKeyTile& t : att.key_tiles()) {
      ASSERT_LE(t.keys.rows, o.tile_rows);
      ASSERT_LE(t.keys.cols, o.tile_cols);
      for (index_t j = 0; j < t.keys.size(); ++j) ++covered[static_cast<size_t>(t.keys.at(j))];
    }
    for (index_t pos = 0; pos < c.layout.size(); ++pos)
      ASSERT_EQ(covered[static_cast<size_t>(pos)], c.layout.segment(c.layout.segment_index(pos)).is_image() ? 1 : 0);

    const approx::SparseSelection sel = att.select(b.q.cview(), b.k.cview());
    for (index_t ti = 0; ti < sel.text_tiles; ++ti)
      for (index_t h = 0; h < sel.heads; ++h) {
        std::vector<int> kept_per_image(static_cast<size_t>(att.key_tiles().empty() ? 0 : att.key_tiles().back().image + 1), 0);
        for (index_t j = 0; j < sel.key_tiles; ++j) kept_per_image[static_cast<size_t>(att.key_tiles()[static_cast<size_t>(j)].image)] += sel.is_kept(ti, h, j);
        for (size_t image = 0; image < kept_per_image.size(); ++image) {
          const auto& visible = att.visible_images(ti);
          const bool sees = std::find(visible.begin(), visible.end(), index_t(image)) != visible.end();
          // The text tile sees the image iff the policy lets its first query see the image's first key.
          const index_t first_query = att.exact_plan().query_tiles[static_cast<size_t>(att.text_tiles()[static_cast<size_t>(ti)])].queries.first();
          const index_t first_key = att.key_tiles()[static_cast<size_t>(att.image_first_tile(index_t(image)))].keys.first();
          EXPECT_EQ(sees, allowed(c.layout, c.policy, first_query, first_key));
          const index_t tiles = att.image_first_tile(index_t(image) + 1) - att.image_first_tile(index_t(image));
          EXPECT_EQ(kept_per_image[image], sees ? std::min(o.top_k, tiles) : 0);
          if (!sees) continue;
          double lowest_kept = INFINITY, highest_dropped = -INFINITY, scale = 1e-12;
          for (index_t j = att.image_first_tile(index_t(image)); j < att.image_first_tile(index_t(image) + 1); ++j) {
            const double s = reference_score(att, b.q.cview(), b.k.cview(), ti, h, j);
            scale = std::max(scale, std::abs(s));
            (sel.is_kept(ti, h, j) ? lowest_kept = std::min(lowest_kept, s) : highest_dropped = std::max(highest_dropped, s));
          }
          if (lowest_kept < highest_dropped - 1e-5 * scale && ++failed <= 5)
            ADD_FAILURE() << "tile " << ti << " head " << h << " image " << image << ": kept " << lowest_kept
                          << " < dropped " << highest_dropped;
        }
      }
  }
  EXPECT_EQ(failed, 0);
}

// The output is attention under the base mask minus the dropped key tiles, per head; with k at
// least every image's tile count it is exact attention.
TEST(SparseCross, MatchesMaskedReferenceAndAllTilesIsExact) {
  int failed = 0;
  double worst = 0;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = whole_case(0x5ba75e00u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    const bool all = i % 3 == 0;
    const SparseCrossOptions o{all ? 1000 : 1 + i % 2, 1 + i % 3, 2 + i % 4};
    const Buffers b = make_qkv(c.cfg, c.layout.size(), c.layout.size(), c.seed).restrided(c.q_storage, c.kv_storage);
    const SparseCrossAttention<float> att(c.cfg, c.layout, c.policy, o, c.options, executor_of(c));
    Tensor out(c.layout.size(), c.cfg.num_heads, c.cfg.head_dim, c.out_storage);
    Lse lse(c.layout.size(), c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
    att.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);

    // Which key tile each image position is in, and which text tile each text query is in.
    const approx::SparseSelection sel = att.select(b.q.cview(), b.k.cview());
    std::vector<index_t> tile_of_key(static_cast<size_t>(c.layout.size()), -1), text_tile_of(tile_of_key);
    for (size_t j = 0; j < att.key_tiles().size(); ++j)
      for (index_t x = 0; x < att.key_tiles()[j].keys.size(); ++x) tile_of_key[static_cast<size_t>(att.key_tiles()[j].keys.at(x))] = index_t(j);
    for (size_t ti = 0; ti < att.text_tiles().size(); ++ti) {
      const TokenRect& r = att.exact_plan().query_tiles[static_cast<size_t>(att.text_tiles()[ti])].queries;
      for (index_t x = 0; x < r.size(); ++x) text_tile_of[static_cast<size_t>(r.at(x))] = index_t(ti);
    }
    auto allowed_sparse = [&](index_t qi, index_t kj, index_t h) {
      if (!allowed(c.layout, c.policy, qi, kj)) return false;
      const index_t ti = text_tile_of[static_cast<size_t>(qi)], j = tile_of_key[static_cast<size_t>(kj)];
      return ti < 0 || j < 0 || sel.is_kept(ti, h, j);
    };
    const Result ref = biased_reference(c.cfg, b.q.cview(), b.k.cview(), b.v.cview(), allowed_sparse,
                                        [](index_t) { return 0.0; });
    double o_err = max_relative_error(out, ref.out), l_err = max_lse_error(lse, ref.lse);
    if (all) {
      const Result exact = run_reference(c.cfg, b, MaskPredicate{&c.layout, &c.policy});
      o_err = std::max(o_err, max_relative_error(out, exact.out));
      l_err = std::max(l_err, max_lse_error(lse, exact.lse));
    }
    worst = std::max(worst, o_err);
    const bool ok = o_err <= 1e-5 && l_err <= 1e-5 && out.padding_intact();
    if (!ok && ++failed <= 5) ADD_FAILURE() << "top_k " << o.top_k << ": O error " << o_err << ", LSE error " << l_err;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases;
  std::printf("%d cases; worst O relative error %.3g\n", kCases, worst);
}

TEST(SparseCross, Validation) {
  const SequenceLayout layout = awkward_layout();
  const AttentionConfig cfg = make_config(2, 2, 8);
  const RegionPolicy policy = RegionPolicy::structured();
  EXPECT_TRUE(contains(error_message([&] { SparseCrossAttention<float>(cfg, layout, policy, {0, 8, 8}); }),
                       "top_k must be >= 1"));
  EXPECT_TRUE(contains(error_message([&] { SparseCrossAttention<float>(cfg, layout, policy, {1, 0, 8}); }),
                       "at least 1 x 1"));
}

// ---- measure_error ------------------------------------------------------------------------------

// Errors are relative L2 norms per region; the masses equal loops over the left-out keys with the
// exact log-sum-exp; the dropped and kept mass of a row sum to 1.
TEST(MeasureError, ErrorsAndMassesMatchLoops) {
  const SequenceLayout layout = awkward_layout();
  const AttentionConfig cfg = make_config(3, 1, 20);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 5));
  const Buffers b = make_qkv(cfg, layout.size(), layout.size(), 21);
  const MultimodalAttention<float> exact(cfg, layout, policy);
  const Result ref = run_reference(cfg, b, exact.predicate());

  // Exact against itself: nothing.
  const approx::ErrorReport none = approx::measure_error(exact, exact, b.q.cview(), b.k.cview(), b.v.cview());
  EXPECT_EQ(none.total_rel_l2, 0.0);
  EXPECT_EQ(none.dropped_mass_max, 0.0);

  auto mass_loop = [&](index_t qi, index_t h, auto&& left_out) {
    double m = 0;
    for (index_t kj = 0; kj < layout.size(); ++kj) {
      if (!exact.predicate()(qi, kj) || !left_out(kj)) continue;
      double dot = 0;
      for (index_t d = 0; d < cfg.head_dim; ++d) dot += double(b.q.view(qi, h, d)) * double(b.k.view(kj, 0, d));
      m += std::exp(dot * cfg.resolved_scale() - double(ref.lse(qi, h)));
    }
    return m;
  };
  auto is_image = [&](index_t pos) { return layout.segment(layout.segment_index(pos)).is_image(); };

  // Sparse, one 2 x 2 tile per image: dropped mass = exact mass on the unkept tiles.
  const SparseCrossAttention<float> sparse(cfg, layout, policy, {1, 2, 2});
  const approx::ErrorReport e = approx::measure_error(sparse, exact, b.q.cview(), b.k.cview(), b.v.cview());
  const approx::SparseSelection sel = sparse.select(b.q.cview(), b.k.cview());
  double mean = 0, max = 0;
  index_t rows = 0;
  for (size_t ti = 0; ti < sparse.text_tiles().size(); ++ti) {
    const TokenRect& r = sparse.exact_plan().query_tiles[static_cast<size_t>(sparse.text_tiles()[ti])].queries;
    for (index_t x = 0; x < r.size(); ++x)
      for (index_t h = 0; h < cfg.num_heads; ++h, ++rows) {
        auto dropped = [&](index_t kj) {
          if (!is_image(kj)) return false;
          for (size_t j = 0; j < sparse.key_tiles().size(); ++j) {
            const TokenRect& k = sparse.key_tiles()[j].keys;
            for (index_t y = 0; y < k.size(); ++y)
              if (k.at(y) == kj) return !sel.is_kept(index_t(ti), h, index_t(j));
          }
          return false;
        };
        const double m = mass_loop(r.at(x), h, dropped);
        const double kept = mass_loop(r.at(x), h, [&](index_t kj) { return !dropped(kj); });
        EXPECT_NEAR(m + kept, 1.0, 1e-5);
        mean += m, max = std::max(max, m);
      }
  }
  EXPECT_EQ(rows, layout.text_tokens() * cfg.num_heads);
  EXPECT_NEAR(e.dropped_mass_mean, mean / double(rows), 1e-5);
  EXPECT_NEAR(e.dropped_mass_max, max, 1e-5);
  EXPECT_EQ(e.approximated_mass_max, 0.0);
  EXPECT_GT(e.dropped_mass_max, 0.0);

  // The errors by region, from the strategy's own output.
  Tensor out(layout.size(), cfg.num_heads, cfg.head_dim);
  sparse.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view);
  double d2[2] = {0, 0}, n2[2] = {0, 0}, worst = 0;
  index_t worst_row = -1;
  for (index_t t = 0; t < layout.size(); ++t) {
    double rd = 0, rn = 0;
    for (index_t h = 0; h < cfg.num_heads; ++h)
      for (index_t d = 0; d < cfg.head_dim; ++d) {
        const double a = out.view(t, h, d), x = ref.out.view(t, h, d);
        rd += (a - x) * (a - x), rn += x * x;
      }
    d2[is_image(t) ? 0 : 1] += rd, n2[is_image(t) ? 0 : 1] += rn;
    if (std::sqrt(rd / rn) > worst) worst = std::sqrt(rd / rn), worst_row = t;
  }
  EXPECT_EQ(e.image_rel_l2, 0.0);
  EXPECT_NEAR(e.text_rel_l2, std::sqrt(d2[1] / n2[1]), 1e-4 * std::sqrt(d2[1] / n2[1]) + 1e-6);
  EXPECT_NEAR(e.worst_row_rel_l2, worst, 1e-4 * worst + 1e-6);
  EXPECT_EQ(e.worst_row, worst_row);
  EXPECT_FALSE(is_image(e.worst_row));

  // Pooled: the approximated mass is the exact mass on the images.
  const PooledCrossAttention<float> pooled(cfg, layout, policy, PooledCrossOptions{2, true});
  const approx::ErrorReport p = approx::measure_error(pooled, exact, b.q.cview(), b.k.cview(), b.v.cview());
  mean = 0, max = 0;
  for (const Segment& s : layout.segments())
    for (index_t t = s.start; t < s.end() && !s.is_image(); ++t)
      for (index_t h = 0; h < cfg.num_heads; ++h) {
        const double m = mass_loop(t, h, is_image);
        mean += m, max = std::max(max, m);
      }
  EXPECT_NEAR(p.approximated_mass_mean, mean / double(rows), 1e-5);
  EXPECT_NEAR(p.approximated_mass_max, max, 1e-5);
  EXPECT_EQ(p.dropped_mass_max, 0.0);
  EXPECT_EQ(p.image_rel_l2, 0.0);
}

}  // namespace
}  // namespace mmattn::test
