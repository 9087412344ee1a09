// MultimodalAttention::forward against the dense reference over hundreds of random layouts,
// policies, head configurations (MHA, GQA, MQA; odd head_dims), storages, tile sizes and query
// ranges; rows that see nothing; concurrent calls; strided views; input validation.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "mmattn/multimodal_attention.hpp"
#include "mmattn/reference.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

// The same 400 cases over the same families and axes in Debug + sanitizer builds, with shorter
// sequences and at most 6 heads there (random_cases.hpp; about 4 s there, 0.5-1.5 s optimised).
constexpr int kCases = 400;

struct Worst {
  double o = 0, lse = 0;
};

// Runs one case; returns "" or what went wrong.
std::string run_case(const cases::Case& c, Worst& worst) {
  const MultimodalAttention<float> mm(c.cfg, c.layout, c.policy, c.options,
                                      c.serial ? Executor::serial() : Executor::default_executor());
  const index_t nq = mm.plan().num_queries(), n = c.layout.size();
  const Buffers contiguous = make_qkv(c.cfg, nq, n, c.seed);
  const Tensor q = restride(contiguous.q, c.q_storage);
  const Tensor k = restride(contiguous.k, c.kv_storage), v = restride(contiguous.v, c.kv_storage);
  Tensor out(nq, c.cfg.num_heads, c.cfg.head_dim, c.out_storage);  // all NaN, padding included
  Lse lse(nq, c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
  mm.forward(q.cview(), k.cview(), v.cview(), out.view, lse.view);
  const Result ref = run_reference(c.cfg, contiguous, mm.predicate(), mm.plan().query_begin);

  std::string problems;
  const double o_err = max_relative_error(out, ref.out);
  if (!(o_err <= 1e-5)) problems += " O error " + std::to_string(o_err) + ";";
  const double l_err = max_lse_error(lse, ref.lse);
  if (!(l_err <= 1e-5)) problems += " LSE error " + std::to_string(l_err) + ";";
  worst.o = std::max(worst.o, o_err), worst.lse = std::max(worst.lse, l_err);
  if (!out.padding_intact()) problems += " output padding written;";
  for (index_t t = 0; t < nq; ++t)
    for (index_t i = c.cfg.num_heads; i < c.cfg.num_heads + c.lse_pad; ++i)
      if (!std::isnan(lse.storage[static_cast<size_t>(t * (c.cfg.num_heads + c.lse_pad) + i)]))
        problems += " LSE padding written;", t = nq, i = c.cfg.num_heads + c.lse_pad;
  return problems;
}

TEST(MultimodalAttention, MatchesReferenceOverRandomCases) {
  std::map<std::string, int> families;
  int failed = 0;
  Worst worst;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = cases::random_case(0xa77e0000u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    ++families[c.family];
    std::string problems;
    const std::string err = error_message([&] { problems = run_case(c, worst); });
    if (err != "<no exception>") problems = " threw: " + err;
    if (!problems.empty() && ++failed <= 5) ADD_FAILURE() << "case failed:" << problems;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases << " cases (first 5 shown)";
  std::printf("%d cases; worst O relative error %.3g, worst LSE error %.3g\n", kCases, worst.o, worst.lse);
  for (const auto& [family, count] : families) EXPECT_GE(count, 5) << family;
}

// Only text -> text (causal) is allowed: image queries see nothing at all, so their rows must be exact
// zeros with log-sum-exp -inf, never NaN; text rows are ordinary causal attention over the text.
TEST(MultimodalAttention, TokensThatSeeNothingGetZerosAndMinusInfinity) {
  SequenceLayout layout;
  layout.add_image(3, 4).add_text(5).add_image(2, 3).add_text(6);
  RegionPolicy policy;
  policy.set(SegmentKind::text, SegmentKind::text, Rule::causal());
  const AttentionConfig cfg = make_config(4, 2, 17);
  for (const TileSizes tiles : {TileSizes{1, 1}, TileSizes{8, 8}, TileSizes{64, 128}}) {
    SCOPED_TRACE("tiles " + std::to_string(tiles.query) + "x" + std::to_string(tiles.key));
    PlanOptions options;
    options.tiles = tiles;
    const MultimodalAttention<float> mm(cfg, layout, policy, options);
    const index_t n = layout.size();
    const Buffers b = make_qkv(cfg, n, n, 99);
    Tensor out(n, cfg.num_heads, cfg.head_dim, Storage::padded_tokens);
    Lse lse(n, cfg.num_heads);
    mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);
    for (index_t t = 0; t < n; ++t) {
      const bool image = layout.segment(layout.segment_index(t)).is_image();
      for (index_t h = 0; h < cfg.num_heads; ++h) {
        if (image) {
          EXPECT_EQ(lse(t, h), -kInf) << "token " << t << " head " << h;
          for (index_t d = 0; d < cfg.head_dim; ++d) ASSERT_EQ(out.view(t, h, d), 0.0f) << "token " << t;
        } else {
          EXPECT_TRUE(std::isfinite(lse(t, h))) << "token " << t;
        }
      }
    }
    EXPECT_TRUE(out.padding_intact());
    const Result ref = run_reference(cfg, b, mm.predicate());
    EXPECT_LE(max_relative_error(out, ref.out), 1e-5);
    EXPECT_LE(max_lse_error(lse, ref.lse), 1e-5);
  }
}

// One object, three std::threads, each with its own output: the results are identical (bitwise) and
// match the reference.
TEST(MultimodalAttention, ConcurrentForwardOnOneObject) {
  SequenceLayout layout;
  layout.add_text(7).add_image(9, 6).add_text(5).add_image(5, 8).add_text(11);
  const AttentionConfig cfg = make_config(6, 2, 32);
  PlanOptions options;
  options.tiles = {16, 32};
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::structured(Window2D::sliding(5, 3, 2, 1)), options);
  const index_t n = layout.size();
  const Buffers b = make_qkv(cfg, n, n, 4242);
  std::vector<Tensor> outs;
  std::vector<Lse> lses;
  for (int i = 0; i < 3; ++i) outs.emplace_back(n, cfg.num_heads, cfg.head_dim), lses.emplace_back(n, cfg.num_heads);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(3);
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < (kSlowBuild ? 2 : 10); ++rep)
        errors[static_cast<size_t>(i)] = error_message([&] {
          mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), outs[static_cast<size_t>(i)].view,
                     lses[static_cast<size_t>(i)].view);
        });
    });
  for (std::thread& t : threads) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "<no exception>");
  EXPECT_TRUE(same_bits(outs[0].storage, outs[1].storage));
  EXPECT_TRUE(same_bits(outs[0].storage, outs[2].storage));
  EXPECT_TRUE(same_bits(lses[0].storage, lses[1].storage));
  EXPECT_TRUE(same_bits(lses[0].storage, lses[2].storage));
  const Result ref = run_reference(cfg, b, mm.predicate());
  EXPECT_LE(max_relative_error(outs[0], ref.out), 1e-5);
  EXPECT_LE(max_lse_error(lses[0], ref.lse), 1e-5);
}

// Q, K, V and O through view_htd ([heads, tokens, head_dim]) and an LSE with gaps, on a chunk of the
// sequence: same answer as contiguous storage.
TEST(MultimodalAttention, HeadsMajorViews) {
  SequenceLayout layout;
  layout.add_image(6, 5).add_text(9).add_image(4, 4).add_text(3);
  const AttentionConfig cfg = make_config(4, 1, 80);
  PlanOptions options;
  options.tiles = {13, 29};
  options.query_begin = 11;
  options.query_end = 51;
  options.all_keys_present = true;  // K/V hold the whole layout
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::bidirectional_images(), options);
  const index_t nq = mm.plan().num_queries(), n = layout.size();
  const Buffers b = make_qkv(cfg, nq, n, 31337);
  std::vector<float> q(static_cast<size_t>(b.q.view.size())), k(static_cast<size_t>(b.k.view.size())),
      v(static_cast<size_t>(b.v.view.size())), o(static_cast<size_t>(nq * cfg.num_heads * cfg.head_dim), kNaN);
  const TensorView<float> qv = view_htd(q.data(), nq, cfg.num_heads, cfg.head_dim);
  const TensorView<float> kv = view_htd(k.data(), n, cfg.num_kv_heads, cfg.head_dim);
  const TensorView<float> vv = view_htd(v.data(), n, cfg.num_kv_heads, cfg.head_dim);
  const TensorView<float> ov = view_htd(o.data(), nq, cfg.num_heads, cfg.head_dim);
  for_each_index(qv, [&](index_t t, index_t h, index_t d) { qv(t, h, d) = b.q.view(t, h, d); });
  for_each_index(kv, [&](index_t t, index_t h, index_t d) { kv(t, h, d) = b.k.view(t, h, d), vv(t, h, d) = b.v.view(t, h, d); });
  Lse lse(nq, cfg.num_heads, cfg.num_heads + 3);
  mm.forward(TensorView<const float>(qv), TensorView<const float>(kv), TensorView<const float>(vv), ov, lse.view);
  const Result ref = run_reference(cfg, b, mm.predicate(), mm.plan().query_begin);
  EXPECT_LE(max_relative_error(TensorView<const float>(ov), ref.out.cview()), 1e-5);
  EXPECT_LE(max_lse_error(lse, ref.lse), 1e-5);
}

// GQA / MQA written independently of kv_head_of: query head h uses KV head h / (num_heads /
// num_kv_heads), as repeat_kv (repeat_interleave) expands them. Expanding K and V that way and
// running plain multi-head attention gives the same result.
TEST(MultimodalAttention, GroupedKvHeadsEqualRepeatedKvHeads) {
  SequenceLayout layout;
  layout.add_text(6).add_image(5, 7).add_text(8);
  const index_t n = layout.size(), heads = 6, dim = 17;
  for (const index_t kv_heads : {index_t{1}, index_t{2}, index_t{3}}) {
    SCOPED_TRACE("kv_heads " + std::to_string(kv_heads));
    const AttentionConfig grouped = make_config(heads, kv_heads, dim), full = make_config(heads, heads, dim);
    PlanOptions options;
    options.tiles = {8, 16};
    const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 5));
    const MultimodalAttention<float> gqa(grouped, layout, policy, options), mha(full, layout, policy, options);
    const Buffers b = make_qkv(grouped, n, n, 555 + static_cast<std::uint32_t>(kv_heads));
    Tensor k(n, heads, dim), v(n, heads, dim);
    for_each_index(k.view, [&](index_t t, index_t h, index_t d) {
      k.view(t, h, d) = b.k.view(t, h / (heads / kv_heads), d);
      v.view(t, h, d) = b.v.view(t, h / (heads / kv_heads), d);
    });
    Tensor out_gqa(n, heads, dim), out_mha(n, heads, dim);
    Lse lse_gqa(n, heads), lse_mha(n, heads);
    gqa.forward(b.q.cview(), b.k.cview(), b.v.cview(), out_gqa.view, lse_gqa.view);
    mha.forward(b.q.cview(), k.cview(), v.cview(), out_mha.view, lse_mha.view);
    EXPECT_LE(max_relative_error(out_gqa, out_mha), 1e-6);
    EXPECT_LE(max_lse_error(lse_gqa, lse_mha), 1e-6);
  }
}

TEST(MultimodalAttention, ForwardValidatesTokenCounts) {
  SequenceLayout layout;
  layout.add_text(4).add_image(3, 3).add_text(2);  // 15 tokens
  const AttentionConfig cfg = make_config(2, 1, 8);
  PlanOptions options;
  options.tiles = {8, 8};
  options.query_begin = 2;
  options.query_end = 10;  // 8 queries
  options.all_keys_present = true;
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::structured(Window2D::sliding(3, 3)), options);

  {  // q (and out) for the whole layout instead of the plan's 8 queries.
    const Buffers b = make_qkv(cfg, 15, 15, 5);
    Tensor out(15, cfg.num_heads, cfg.head_dim);
    const std::string m = error_message([&] { mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view); });
    EXPECT_TRUE(contains(m, "q: has 15 tokens but the plan's query range holds 8")) << m;
    for (const float x : out.storage) EXPECT_TRUE(std::isnan(x));  // nothing written before the check
  }
  {  // k and v for only the query range instead of every position.
    const Buffers b = make_qkv(cfg, 8, 8, 6);
    Tensor out(8, cfg.num_heads, cfg.head_dim);
    const std::string m = error_message([&] { mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view); });
    EXPECT_TRUE(contains(m, "k: has 8 tokens but the layout holds 15")) << m;
    for (const float x : out.storage) EXPECT_TRUE(std::isnan(x));
  }
  {  // one key too many.
    const Buffers b = make_qkv(cfg, 8, 16, 7);
    Tensor out(8, cfg.num_heads, cfg.head_dim);
    const std::string m = error_message([&] { mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view); });
    EXPECT_TRUE(contains(m, "k: has 16 tokens but the layout holds 15")) << m;
  }
  {  // the right shapes run.
    const Buffers b = make_qkv(cfg, 8, 15, 8);
    Tensor out(8, cfg.num_heads, cfg.head_dim);
    EXPECT_EQ(error_message([&] { mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view); }), "<no exception>");
    const Result ref = run_reference(cfg, b, mm.predicate(), 2);
    EXPECT_LE(max_relative_error(out, ref.out), 1e-5);
  }
  {  // the head configuration is checked as well: K with num_heads heads.
    const Buffers b = make_qkv(make_config(2, 2, 8), 8, 15, 9);
    Tensor out(8, cfg.num_heads, cfg.head_dim);
    const std::string m = error_message([&] { mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view); });
    EXPECT_TRUE(contains(m, "k: has 2 heads but num_kv_heads is 1")) << m;
  }
}

}  // namespace
}  // namespace mmattn::test
