// merge(): partial outputs over disjoint key sets combine to attention over their union.
// Random partitions of the keys of random cases (parts that see nothing for some rows, rows no
// part sees), a shared image prefix computed once plus a text suffix, in-place merging, 16-bit
// partials, and validation.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "mmattn/flash_attention.hpp"
#include "mmattn/merge.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/reference.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"
#include "typed_tensor.hpp"

namespace mmattn::test {
namespace {

constexpr int kCases = kSlowBuild ? 100 : 120;  // fewer in sanitizer builds, same families

// The case's mask restricted to the keys of one part.
struct PartMask {
  MaskPredicate allowed;
  const std::vector<int>* part_of;
  int part;
  bool operator()(index_t q, index_t k) const { return (*part_of)[static_cast<size_t>(k)] == part && allowed(q, k); }
};

TEST(Merge, RandomKeyPartitionsEqualTheFullReference) {
  int failed = 0;
  double worst_o = 0, worst_lse = 0;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = cases::random_case(0x3e79e000u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    std::mt19937 gen(c.seed);
    const index_t n = c.layout.size();
    const index_t q0 = c.options.query_begin, q1 = c.options.query_end < 0 ? n : c.options.query_end;
    const int parts = static_cast<int>(cases::uniform(gen, 1, 5));
    std::vector<int> part_of(static_cast<size_t>(n));
    for (int& p : part_of) p = static_cast<int>(cases::uniform(gen, 0, parts - 1));
    const MaskPredicate allowed{&c.layout, &c.policy};
    const Buffers b = make_qkv(c.cfg, q1 - q0, n, c.seed);

    std::vector<Result> partial;
    std::vector<PartialAttention<float>> views;
    for (int p = 0; p < parts; ++p) partial.push_back(run_reference(c.cfg, b, PartMask{allowed, &part_of, p}, q0));
    for (const Result& r : partial) views.push_back({r.out.cview(), r.lse.view});
    Tensor out(q1 - q0, c.cfg.num_heads, c.cfg.head_dim, c.out_storage);
    Lse lse(q1 - q0, c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
    merge(views, out.view, lse.view);

    const Result full = run_reference(c.cfg, b, allowed, q0);
    const double o_err = max_relative_error(out, full.out), l_err = max_lse_error(lse, full.lse);
    worst_o = std::max(worst_o, o_err), worst_lse = std::max(worst_lse, l_err);
    const bool ok = o_err <= 1e-5 && l_err <= 1e-5 && out.padding_intact();
    if (!ok && ++failed <= 5) ADD_FAILURE() << parts << " parts: O error " << o_err << ", LSE error " << l_err;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases;
  std::printf("%d cases; worst O relative error %.3g, worst LSE error %.3g\n", kCases, worst_o, worst_lse);
}

// The serving case: the image prefix is shared by requests, so its attention is computed once
// (dense: text sees every image key) and merged with each request's causal text part.
TEST(Merge, SharedImagePrefixPlusTextSuffix) {
  const index_t images = 3, side = 6, text = kSlowBuild ? 40 : 150;
  const SequenceLayout layout = SequenceLayout::images_then_text(images, side, side, text);
  const index_t prefix = images * side * side, n = layout.size();
  const AttentionConfig cfg = make_config(4, 2, 32);
  const Buffers b = make_qkv(cfg, text, n, 11);
  auto rows = [&](const Tensor& t, index_t first, index_t count) {
    TensorView<const float> v = t.cview();
    v.data += first * v.token_stride;
    v.tokens = count;
    return v;
  };
  Tensor o_image(text, 4, 32), o_text(text, 4, 32), merged(text, 4, 32);
  Lse l_image(text, 4), l_text(text, 4), l_merged(text, 4);
  GlobalOptions causal;
  causal.causal = true;  // text query i sits at text key i
  flash_attention(cfg, b.q.cview(), rows(b.k, 0, prefix), rows(b.v, 0, prefix), o_image.view, l_image.view);
  flash_attention(cfg, b.q.cview(), rows(b.k, prefix, text), rows(b.v, prefix, text), o_text.view, l_text.view, causal);
  merge({PartialAttention<float>{o_image.cview(), l_image.view}, PartialAttention<float>{o_text.cview(), l_text.view}},
        merged.view, l_merged.view);

  PlanOptions options;
  options.query_begin = prefix;
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::structured(), options);
  Tensor direct(text, 4, 32);
  Lse l_direct(text, 4);
  mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), direct.view, l_direct.view);
  const Result ref = run_reference(cfg, b, mm.predicate(), prefix);
  EXPECT_LE(max_relative_error(merged, ref.out), 1e-5);
  EXPECT_LE(max_lse_error(l_merged, ref.lse), 1e-5);
  EXPECT_LE(max_relative_error(merged, direct), 1e-5);
}

// Rows no part saw: zeros and -inf. A part whose lse is -inf has weight 0 and is never read (its
// rows may be NaN). A single part is returned unchanged, bit for bit.
TEST(Merge, MinusInfinityParts) {
  const index_t tokens = 3, heads = 2, dim = 5;
  Tensor a(tokens, heads, dim), bpart(tokens, heads, dim);
  fill_normal(a.view, 1);
  fill_normal(bpart.view, 2);
  Lse la(tokens, heads), lb(tokens, heads);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < heads; ++h) la.view(t, h) = 0.5f * float(t) - float(h), lb.view(t, h) = 1.0f;
  // token 0: only a saw keys; token 1: only b; token 2: neither.
  for (index_t h = 0; h < heads; ++h) {
    lb.view(0, h) = -kInf, la.view(1, h) = -kInf, la.view(2, h) = -kInf, lb.view(2, h) = -kInf;
    for (index_t d = 0; d < dim; ++d) bpart.view(0, h, d) = kNaN, a.view(1, h, d) = kNaN, a.view(2, h, d) = kNaN;
    for (index_t d = 0; d < dim; ++d) bpart.view(2, h, d) = kNaN;
  }
  Tensor out(tokens, heads, dim, Storage::padded_tokens);
  Lse lse(tokens, heads);
  merge({PartialAttention<float>{a.cview(), la.view}, PartialAttention<float>{bpart.cview(), lb.view}}, out.view,
        lse.view);
  for (index_t h = 0; h < heads; ++h) {
    EXPECT_EQ(lse(0, h), la(0, h));
    EXPECT_EQ(lse(1, h), lb(1, h));
    EXPECT_EQ(lse(2, h), -kInf);
    for (index_t d = 0; d < dim; ++d) {
      EXPECT_EQ(out.view(0, h, d), a.view(0, h, d));
      EXPECT_EQ(out.view(1, h, d), bpart.view(1, h, d));
      EXPECT_EQ(out.view(2, h, d), 0.0f);
    }
  }
  EXPECT_TRUE(out.padding_intact());

  Tensor single(tokens, heads, dim);
  Lse l_single(tokens, heads);
  fill_normal(a.view, 3);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < heads; ++h) la.view(t, h) = 1.5f;
  merge({PartialAttention<float>{a.cview(), la.view}}, single.view, l_single.view);
  EXPECT_TRUE(same_bits(single.storage, a.storage));
  EXPECT_TRUE(same_bits(l_single.storage, la.storage));
}

// out may be part 0's own storage (and lse its lse): rows are merged in scratch first.
TEST(Merge, InPlaceIntoTheFirstPart) {
  const AttentionConfig cfg = make_config(3, 3, 24);
  const Buffers b = make_qkv(cfg, 9, 30, 4);
  const std::vector<int> part_of = [] {
    std::vector<int> p(30);
    for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<int>(i % 3 == 0);
    return p;
  }();
  const SequenceLayout layout = SequenceLayout::images_then_text(0, 1, 1, 30);
  const RegionPolicy policy = RegionPolicy::dense();
  const MaskPredicate allowed{&layout, &policy};
  Result p0 = run_reference(cfg, b, PartMask{allowed, &part_of, 0});
  const Result p1 = run_reference(cfg, b, PartMask{allowed, &part_of, 1});
  const Result full = run_reference(cfg, b, allowed);
  merge({PartialAttention<float>{p0.out.cview(), p0.lse.view}, PartialAttention<float>{p1.out.cview(), p1.lse.view}},
        p0.out.view, p0.lse.view);
  EXPECT_LE(max_relative_error(p0.out, full.out), 1e-5);
  EXPECT_LE(max_lse_error(p0.lse, full.lse), 1e-5);
}

// bf16 partials into an f16 output: within the output's rounding of the fp32 merge.
TEST(Merge, SixteenBitPartials) {
  const AttentionConfig cfg = make_config(2, 1, 16);
  const Buffers b = make_qkv(cfg, 7, 20, 5);
  std::vector<int> part_of(20);
  for (size_t i = 0; i < part_of.size(); ++i) part_of[i] = static_cast<int>(i >= 12);
  const SequenceLayout layout = SequenceLayout::images_then_text(0, 1, 1, 20);
  const RegionPolicy policy = RegionPolicy::dense();
  const MaskPredicate allowed{&layout, &policy};
  const Result p0 = run_reference(cfg, b, PartMask{allowed, &part_of, 0});
  const Result p1 = run_reference(cfg, b, PartMask{allowed, &part_of, 1});
  const TypedTensor<Eigen::bfloat16> o0(p0.out), o1(p1.out);
  TypedTensor<Eigen::half> out(7, 2, 16);
  merge({PartialAttention<Eigen::bfloat16>{o0.cview(), p0.lse.view}, PartialAttention<Eigen::bfloat16>{o1.cview(), p1.lse.view}},
        out.view);
  const Result full = run_reference(cfg, b, allowed);
  EXPECT_LE(max_relative_error(out.widened(), full.out), 2 * unit_roundoff<Eigen::bfloat16>() + 2 * unit_roundoff<Eigen::half>());
}

TEST(Merge, Validation) {
  Tensor a(3, 2, 4), out(3, 2, 4), wrong(3, 2, 5);
  fill_value(a.view, 1.0f);
  Lse la(3, 2), short_lse(2, 2);
  const PartialAttention<float> good{a.cview(), la.view};
  EXPECT_TRUE(contains(error_message([&] { merge(&good, 0, out.view); }), "merge: needs at least one part, got 0"));
  EXPECT_TRUE(contains(error_message([&] { merge({good, PartialAttention<float>{wrong.cview(), la.view}}, out.view); }),
                       "merge: part 1 has shape [3, 2, 5] but out is [3, 2, 4]"));
  EXPECT_TRUE(contains(error_message([&] { merge({good, PartialAttention<float>{a.cview(), {}}}, out.view); }),
                       "merge: part 1 has no lse"));
  EXPECT_TRUE(contains(error_message([&] { merge({PartialAttention<float>{a.cview(), short_lse.view}}, out.view); }),
                       "lse: shape [2, 2] must be [3, 2]"));
  for (const float x : out.storage) EXPECT_TRUE(std::isnan(x));
}

}  // namespace
}  // namespace mmattn::test
