// CascadeAttention: random batches of sequences that share a prefix (random images, videos and
// text) and continue with their own suffixes (the prefix's last text segment continued, or new
// segments), under the rules that let every query see the whole prefix (decoder_causal,
// bidirectional_images, structured with text suffixes, gemma3_local with a window past the
// sequence). Prefill and decode, contiguous and paged suffix caches whose prefix rows are NaN
// (never read): equal to the reference per sequence and to the batch without the cascade, to
// 1e-5. Rules a query cannot see the whole prefix through are refused with the witness; NaN in a
// suffix key a row cannot see, or in another sequence's suffix, leaves the row's bits unchanged.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mmattn/batched_attention.hpp"
#include "mmattn/cascade.hpp"
#include "paged_cache.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

constexpr int kCases = kSlowBuild ? 12 : 60;

struct CascadeCase {
  std::uint32_t seed = 0;
  std::string family;
  AttentionConfig cfg;
  index_t prefix = 0;
  std::vector<BatchSequence> sequences;
  Tensor prefix_k, prefix_v;
  std::vector<Tensor> k, v;          // whole sequences, prefix rows = the shared prefix
  std::vector<Tensor> k_nan, v_nan;  // the same with the prefix rows NaN
  Tensor q;
  std::vector<index_t> cu;

  std::string describe() const {
    std::string s = "seed " + std::to_string(seed) + " " + family + ", prefix " + std::to_string(prefix) + ", heads " +
                    std::to_string(cfg.num_heads) + "/" + std::to_string(cfg.num_kv_heads) + " x " +
                    std::to_string(cfg.head_dim);
    for (const BatchSequence& b : sequences) {
      s += "\n  ";
      for (const Segment& g : b.layout.segments())
        s += (g.is_image() ? "I" + std::to_string(g.rows) + "x" + std::to_string(g.cols)
              : g.is_video() ? "V" + std::to_string(g.frames) + "x" + std::to_string(g.rows) + "x" + std::to_string(g.cols)
                             : "T" + std::to_string(g.length)) + " ";
      s += "queries from " + std::to_string(b.query_begin);
    }
    return s;
  }
};

void append_segment(SequenceLayout& layout, const Segment& g, index_t extra_text = 0) {
  if (g.is_image()) layout.add_image(g.rows, g.cols);
  else if (g.is_video()) layout.add_video(g.frames, g.rows, g.cols);
  else layout.add_text(g.length + extra_text);
}

// `config`: the heads, head_dim and scale to use (random where null); `sequences`: how many share
// the prefix (1..6 where 0); `q_storage`: how Q sits in memory.
CascadeCase random_cascade(std::uint32_t seed, bool decode, const AttentionConfig* config = nullptr,
                           index_t sequences = 0, Storage q_storage = Storage::contiguous) {
  std::mt19937 gen(seed);
  CascadeCase c;
  c.seed = seed;
  const index_t heads[][2] = {{1, 1}, {2, 2}, {4, 2}, {6, 3}, {4, 1}, {8, 2}};
  const index_t* h = heads[cases::uniform(gen, 0, 5)];
  const index_t dims[] = {1, 3, 8, 16, 17, 32, 64};
  c.cfg = make_config(h[0], h[1], dims[cases::uniform(gen, 0, 6)]);
  if (gen() % 4 == 0) c.cfg.scale = 0.1f + 0.5f * std::uniform_real_distribution<float>()(gen);
  if (config != nullptr) c.cfg = *config;

  const SequenceLayout prefix = cases::random_layout(gen, cases::kAttentionLimits);
  c.prefix = prefix.size();
  RegionPolicy policy;
  bool text_only = false;
  switch (cases::uniform(gen, 0, 3)) {
    case 0: c.family = "decoder_causal", policy = RegionPolicy::decoder_causal(); break;
    case 1: c.family = "bidirectional_images", policy = RegionPolicy::bidirectional_images(); break;
    case 2: c.family = "structured", policy = RegionPolicy::structured(cases::random_window(gen)), text_only = true; break;
    default: c.family = "gemma3_local(wide)", policy = RegionPolicy::gemma3_local(1000); break;
  }
  if (gen() % 4 == 0) policy.with_sinks(cases::uniform(gen, 1, 5));

  const index_t n = sequences > 0 ? sequences : cases::uniform(gen, 1, 6);
  const bool continue_text = prefix.segments().back().is_text() && gen() % 2;
  for (index_t i = 0; i < n; ++i) {
    SequenceLayout layout;
    const index_t last = prefix.num_segments() - 1;
    for (index_t s = 0; s < last; ++s) append_segment(layout, prefix.segment(s));
    append_segment(layout, prefix.segment(last), continue_text ? cases::uniform(gen, 1, 12) : 0);
    for (index_t s = cases::uniform(gen, continue_text ? 0 : 1, 3); s > 0; --s) {
      if (!text_only && gen() % 3 == 0)
        layout.add_image(cases::uniform(gen, 1, 6), cases::uniform(gen, 1, 6));
      else
        layout.add_text(cases::uniform(gen, 1, 14));
    }
    if (layout.segments().back().is_image()) layout.add_text(cases::uniform(gen, 1, 5));
    const index_t size = layout.size();
    BatchSequence b{layout, policy, 0, -1};
    b.query_begin = decode ? std::max(c.prefix, size - cases::uniform(gen, 1, 3)) : cases::uniform(gen, c.prefix, size - 1);
    c.sequences.push_back(b);
  }

  c.prefix_k = random_tensor(c.prefix, c.cfg.num_kv_heads, c.cfg.head_dim, seed + 1);
  c.prefix_v = random_tensor(c.prefix, c.cfg.num_kv_heads, c.cfg.head_dim, seed + 2);
  c.cu.assign(1, 0);
  for (index_t i = 0; i < n; ++i) {
    const BatchSequence& b = c.sequences[static_cast<size_t>(i)];
    c.cu.push_back(c.cu.back() + b.layout.size() - b.query_begin);
    const auto sd = seed * 13u + static_cast<std::uint32_t>(i) * 2u;
    Tensor k = random_tensor(b.layout.size(), c.cfg.num_kv_heads, c.cfg.head_dim, sd);
    Tensor v = random_tensor(b.layout.size(), c.cfg.num_kv_heads, c.cfg.head_dim, sd + 1);
    Tensor kn = k, vn = v;
    for_each_index(c.prefix_k.view, [&](index_t t, index_t hh, index_t d) {
      k.view(t, hh, d) = c.prefix_k.view(t, hh, d), v.view(t, hh, d) = c.prefix_v.view(t, hh, d);
      kn.view(t, hh, d) = kNaN, vn.view(t, hh, d) = kNaN;
    });
    c.k.push_back(k), c.v.push_back(v), c.k_nan.push_back(kn), c.v_nan.push_back(vn);
  }
  c.q = random_tensor(c.cu.back(), c.cfg.num_heads, c.cfg.head_dim, seed + 3, q_storage);
  return c;
}

std::vector<TensorView<const float>> views(const std::vector<Tensor>& ts) {
  std::vector<TensorView<const float>> out;
  for (const Tensor& t : ts) out.push_back(t.cview());
  return out;
}

template <class T>
TensorView<T> rows_of(const TensorView<T>& v, index_t begin, index_t end) {
  return detail::token_rows(v, begin, end - begin);
}

bool same_values(const TensorView<const float>& a, const TensorView<const float>& b) {
  bool same = a.tokens == b.tokens && a.heads == b.heads && a.head_dim == b.head_dim;
  if (same) for_each_index(a, [&](index_t t, index_t h, index_t d) { same = same && a(t, h, d) == b(t, h, d); });
  return same;
}

void check_against_reference_and_batch(const CascadeCase& c, const Tensor& out, const Lse& lse, bool decode,
                                       double tolerance = 1e-5) {
  // The batch without the cascade, over the whole caches.
  const BatchedAttention plain(c.cfg, c.sequences);
  Tensor plain_out(c.cu.back(), c.cfg.num_heads, c.cfg.head_dim);
  Lse plain_lse(c.cu.back(), c.cfg.num_heads);
  if (decode)
    plain.forward_split_kv(c.q.cview(), c.cu, views(c.k), views(c.v), plain_out.view, plain_lse.view);
  else
    plain.forward(c.q.cview(), c.cu, views(c.k), views(c.v), plain_out.view, plain_lse.view);
  EXPECT_LE(max_relative_error(out, plain_out), tolerance);
  EXPECT_LE(max_lse_error(lse, plain_lse), tolerance);
  for (size_t s = 0; s < c.sequences.size(); ++s) {
    const BatchSequence& b = c.sequences[s];
    const index_t r0 = c.cu[s], r1 = c.cu[s + 1];
    const Result ref = run_reference(c.cfg, rows_of(c.q.cview(), r0, r1), c.k[s].cview(), c.v[s].cview(),
                                     MaskPredicate{&b.layout, &b.policy}, b.query_begin);
    EXPECT_LE(max_relative_error(rows_of(out.cview(), r0, r1), ref.out.cview()), tolerance) << "sequence " << s;
    EXPECT_LE(max_lse_error(detail::token_rows(lse.view, r0, r1 - r0), ref.lse.view), tolerance) << "sequence " << s;
  }
}

TEST(Cascade, PrefillEqualsReferenceAndPlainBatch) {
  for (int i = 0; i < kCases; ++i) {
    const CascadeCase c = random_cascade(100u + static_cast<std::uint32_t>(i), /*decode=*/false);
    SCOPED_TRACE(c.describe());
    const Executor executor = i % 3 == 0 ? Executor::serial() : Executor::default_executor();
    const CascadeAttention cascade(c.cfg, c.prefix, c.sequences, {}, executor);
    ASSERT_EQ(cascade.query_offsets(), c.cu);
    Tensor out(c.cu.back(), c.cfg.num_heads, c.cfg.head_dim, i % 2 ? Storage::padded_tokens : Storage::contiguous);
    Lse lse(c.cu.back(), c.cfg.num_heads, c.cfg.num_heads + 1);
    cascade.forward(c.q.cview(), c.cu, c.prefix_k.cview(), c.prefix_v.cview(), views(c.k_nan), views(c.v_nan), out.view,
                    lse.view);
    EXPECT_TRUE(out.padding_intact());
    check_against_reference_and_batch(c, out, lse, /*decode=*/false);
  }
}

TEST(Cascade, DecodeOverPagedSuffixesEqualsReferenceAndPlainBatch) {
  for (int i = 0; i < kCases; ++i) {
    const CascadeCase c = random_cascade(700u + static_cast<std::uint32_t>(i), /*decode=*/true);
    SCOPED_TRACE(c.describe());
    const Executor executor = i % 3 == 0 ? Executor::serial() : Executor::openmp(3);
    const CascadeAttention cascade(c.cfg, c.prefix, c.sequences, {}, executor);
    std::mt19937 gen(static_cast<std::uint32_t>(i));
    std::vector<std::unique_ptr<PagedCache<float>>> pk, pv;
    std::vector<PagedKVView<const float>> k, v;
    for (size_t s = 0; s < c.sequences.size(); ++s) {
      const index_t block = cases::uniform(gen, 1, 16);
      pk.push_back(std::make_unique<PagedCache<float>>(c.k_nan[s].view, block, 1, gen));
      pv.push_back(std::make_unique<PagedCache<float>>(c.v_nan[s].view, block, 2, gen));
      k.push_back(pk.back()->cview()), v.push_back(pv.back()->cview());
    }
    Tensor out(c.cu.back(), c.cfg.num_heads, c.cfg.head_dim);
    Lse lse(c.cu.back(), c.cfg.num_heads);
    cascade.forward(c.q.cview(), c.cu, c.prefix_k.cview(), c.prefix_v.cview(), k, v, out.view, lse.view);
    check_against_reference_and_batch(c, out, lse, /*decode=*/true);
  }
}

// The prefix product stacks each GQA group's heads as rows of one KV head: groups of 1 (MHA), 3, 4
// and 5 heads, small tiles (one or two tokens' groups), 1 and many sequences (few items: split over
// keys; many: whole tiles), Q with gaps between tokens, and scales above 1, where the scale
// multiplies inside the exponent.
TEST(Cascade, StackedGroupsAnyTilingAndScale) {
  const index_t groups[][3] = {{3, 3, 17}, {6, 2, 8}, {5, 1, 16}, {8, 2, 32}};  // heads, kv heads, head_dim
  const float scales[] = {0.0f, 3.0f, 12.0f};  // 0: the default 1 / sqrt(head_dim)
  PlanOptions small;
  small.tiles.query = 8, small.tiles.key = 16;
  int i = 0;
  for (const auto& g : groups)
    for (const index_t sequences : {index_t{1}, index_t{23}})
      for (const bool decode : {true, false}) {
        AttentionConfig cfg = make_config(g[0], g[1], g[2]);
        const float scale = scales[i % 3];
        if (scale > 0) cfg.scale = scale;
        const Storage q_storage = i % 2 ? Storage::padded_tokens : Storage::contiguous;
        const CascadeCase c = random_cascade(5000u + static_cast<std::uint32_t>(i), decode, &cfg, sequences, q_storage);
        SCOPED_TRACE(c.describe() + (scale > 0 ? ", scale " + std::to_string(scale) : ""));
        const Executor executor = i % 2 ? Executor::openmp(2) : Executor::serial();
        const CascadeAttention cascade(c.cfg, c.prefix, c.sequences, i % 4 < 2 ? small : PlanOptions{}, executor);
        Tensor out(c.cu.back(), c.cfg.num_heads, c.cfg.head_dim);
        Lse lse(c.cu.back(), c.cfg.num_heads);
        cascade.forward(c.q.cview(), c.cu, c.prefix_k.cview(), c.prefix_v.cview(), views(c.k_nan), views(c.v_nan),
                        out.view, lse.view);
        // A large scale makes the softmax peaked and the log-sum-exps large: fp32 rounds both parts'
        // log-sum-exps, and each path differently.
        check_against_reference_and_batch(c, out, lse, decode, scale > 4 ? 1e-4 : 1e-5);
        ++i;
      }
}

// bf16 out: the parts stay fp32 until the merge, so out is the fp32 result rounded once.
TEST(Cascade, SixteenBitOutputIsRoundedOnce) {
  const CascadeCase c = random_cascade(42u, /*decode=*/false);
  const CascadeAttention cascade(c.cfg, c.prefix, c.sequences);
  Tensor out(c.cu.back(), c.cfg.num_heads, c.cfg.head_dim);
  std::vector<Eigen::bfloat16> storage(static_cast<size_t>(out.view.size()));
  const auto out16 = view_thd(storage.data(), c.cu.back(), c.cfg.num_heads, c.cfg.head_dim);
  cascade.forward(c.q.cview(), c.cu, c.prefix_k.cview(), c.prefix_v.cview(), views(c.k_nan), views(c.v_nan), out.view);
  cascade.forward(c.q.cview(), c.cu, c.prefix_k.cview(), c.prefix_v.cview(), views(c.k_nan), views(c.v_nan), out16);
  bool rounded = true;
  for_each_index(out.view, [&](index_t t, index_t h, index_t d) {
    rounded = rounded && float(out16(t, h, d)) == float(Eigen::bfloat16(out.view(t, h, d)));
  });
  EXPECT_TRUE(rounded) << c.describe();
}

TEST(Cascade, RefusesWhatItCannotShare) {
  const AttentionConfig cfg = make_config(2, 1, 8);
  SequenceLayout text;
  text.add_text(20);
  // A 4-token band: query 12 cannot see prefix key 0.
  std::string e = error_message([&] { (void)CascadeAttention(cfg, 10, {{text, RegionPolicy::sliding_causal(4), 12, -1}}); });
  EXPECT_TRUE(contains(e, "cascade: sequence 0: query 12 cannot see prefix key 0")) << e;
  e = error_message([&] { (void)CascadeAttention(cfg, 10, {{text, RegionPolicy::decoder_causal(), 8, -1}}); });
  EXPECT_TRUE(contains(e, "queries start at 8, inside the shared prefix of 10 tokens")) << e;
  e = error_message([&] { (void)CascadeAttention(cfg, 20, {{text, RegionPolicy::decoder_causal(), 20, -1}}); });
  EXPECT_TRUE(contains(e, "not more than the shared prefix's 20")) << e;
  e = error_message([&] { (void)CascadeAttention(cfg, 0, {{text, RegionPolicy::decoder_causal(), 2, -1}}); });
  EXPECT_TRUE(contains(e, "at least one token")) << e;
  // Structured: an image after the prefix sees only its own window, not the prefix.
  SequenceLayout with_image = SequenceLayout::images_then_text(1, 4, 4, 6);
  with_image.add_image(3, 3);
  e = error_message([&] { (void)CascadeAttention(cfg, 22, {{with_image, RegionPolicy::structured(), 22, -1}}); });
  EXPECT_TRUE(contains(e, "query 22 cannot see prefix key 0")) << e;
  // Second sequence bad: named.
  e = error_message([&] {
    (void)CascadeAttention(cfg, 10, {{text, RegionPolicy::decoder_causal(), 15, -1}, {text, RegionPolicy::sliding_causal(2), 15, -1}});
  });
  EXPECT_TRUE(contains(e, "cascade: sequence 1: query 15 cannot see prefix key")) << e;

  // Bad views at forward: nothing written.
  const CascadeAttention ok(cfg, 10, {{text, RegionPolicy::decoder_causal(), 15, -1}});
  const Tensor q = random_tensor(5, 2, 8, 1), pk = random_tensor(9, 1, 8, 2), pv = random_tensor(9, 1, 8, 3);
  const Tensor k = random_tensor(20, 1, 8, 4), v = random_tensor(20, 1, 8, 5);
  Tensor out(5, 2, 8);
  e = error_message([&] { ok.forward(q.cview(), {0, 5}, pk.cview(), pv.cview(), views({k}), views({v}), out.view); });
  EXPECT_TRUE(contains(e, "prefix_k holds 9 tokens but the shared prefix has 10")) << e;
  const Tensor pk10 = random_tensor(10, 1, 8, 2), pv10 = random_tensor(10, 1, 8, 3);
  e = error_message([&] { ok.forward(q.cview(), {0, 4}, pk10.cview(), pv10.cview(), views({k}), views({v}), out.view); });
  EXPECT_TRUE(contains(e, "query range [15, 20) holds 5")) << e;
  const Tensor q6 = random_tensor(6, 2, 8, 1);
  Tensor out6(6, 2, 8);
  e = error_message([&] { ok.forward(q6.cview(), {0, 6}, pk10.cview(), pv10.cview(), views({k}), views({v}), out6.view); });
  EXPECT_TRUE(contains(e, "cascade: q has 6 tokens but the sequences' query ranges hold 5")) << e;
  bool untouched = true;
  for (float x : out.storage) untouched = untouched && std::isnan(x);
  for (float x : out6.storage) untouched = untouched && std::isnan(x);
  EXPECT_TRUE(untouched);
}

// NaN in one suffix key of one sequence and in the whole suffix of another: rows that cannot see
// them keep their bits.
TEST(Cascade, PoisonedSuffixKeysLeaveRowsUnchanged) {
  int unseen = 0;
  for (int i = 0; i < kCases / 2; ++i) {
    const bool decode = i % 2 == 1;
    const CascadeCase c = random_cascade(3000u + static_cast<std::uint32_t>(i), decode);
    SCOPED_TRACE(c.describe());
    const CascadeAttention cascade(c.cfg, c.prefix, c.sequences);
    const size_t n = c.sequences.size();
    std::mt19937 gen(static_cast<std::uint32_t>(i));
    const size_t victim = static_cast<size_t>(cases::uniform(gen, 0, static_cast<index_t>(n) - 1));
    const BatchSequence& vs = c.sequences[victim];
    const index_t key = cases::uniform(gen, c.prefix, vs.layout.size() - 1);
    std::vector<Tensor> k = c.k_nan, v = c.v_nan;
    for (index_t h = 0; h < c.cfg.num_kv_heads; ++h)
      for (index_t d = 0; d < c.cfg.head_dim; ++d) k[victim].view(key, h, d) = kNaN, v[victim].view(key, h, d) = kNaN;
    const size_t other = (victim + 1) % n;
    if (other != victim) fill_value(k[other].view, kNaN), fill_value(v[other].view, kNaN);

    Tensor clean(c.cu.back(), c.cfg.num_heads, c.cfg.head_dim), dirty = clean;
    cascade.forward(c.q.cview(), c.cu, c.prefix_k.cview(), c.prefix_v.cview(), views(c.k_nan), views(c.v_nan), clean.view);
    cascade.forward(c.q.cview(), c.cu, c.prefix_k.cview(), c.prefix_v.cview(), views(k), views(v), dirty.view);
    for (size_t s = 0; s < n; ++s) {
      if (s == other && other != victim) continue;
      const BatchSequence& b = c.sequences[s];
      for (index_t qpos = b.query_begin; qpos < b.layout.size(); ++qpos) {
        if (s == victim && allowed(b.layout, b.policy, qpos, key)) continue;
        unseen += s == victim;
        const index_t r = c.cu[s] + qpos - b.query_begin;
        EXPECT_TRUE(same_values(rows_of(dirty.cview(), r, r + 1), rows_of(clean.cview(), r, r + 1)))
            << "sequence " << s << " position " << qpos << " key " << key;
      }
    }
  }
  EXPECT_GT(unseen, 5);
}

}  // namespace
}  // namespace mmattn::test
