// The strategy advisor: the checklist picks (few image tokens -> causal, > 512 -> windowed,
// > 2 images -> structured, KV over budget -> the least pooling that fits), the candidates' plan
// statistics, and a measured run whose exact rows match the reference and whose approximate rows
// state their error.

#include <gtest/gtest.h>

#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "mmattn/advisor.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

AdvisorOptions serial_options() {
  AdvisorOptions o;
  o.executor = Executor::serial();
  return o;
}

// The recommended row is strategy s (pooled: with pool p).
::testing::AssertionResult recommends(const Advice& a, AdvisorStrategy s, index_t pool = 0) {
  const AdvisorRow& r = a.recommendation();
  if (r.strategy == s && r.pool == pool) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "recommended " << r.label;
}

TEST(Advisor, EveryStrategyHasItsOwnName) {
  const AdvisorStrategy all[] = {AdvisorStrategy::dense,      AdvisorStrategy::causal, AdvisorStrategy::windowed,
                                 AdvisorStrategy::structured, AdvisorStrategy::pooled, AdvisorStrategy::sparse};
  std::set<std::string> names;
  for (const AdvisorStrategy s : all) {
    EXPECT_STRNE(name(s), "?");
    names.insert(name(s));
  }
  EXPECT_EQ(names.size(), std::size(all));
}

TEST(Advisor, ChecklistPicks) {
  const AttentionConfig cfg = make_config(4, 2, 16);
  const AdvisorOptions o = serial_options();
  auto advise_images = [&](index_t images, index_t side) {
    return advise(SequenceLayout::images_then_text(images, side, side, 64), cfg, o);
  };
  EXPECT_TRUE(recommends(advise_images(1, 16), AdvisorStrategy::causal));      // 256 image tokens
  EXPECT_TRUE(recommends(advise_images(2, 16), AdvisorStrategy::causal));      // 512: not above
  EXPECT_TRUE(recommends(advise_images(1, 24), AdvisorStrategy::windowed));    // 576
  EXPECT_TRUE(recommends(advise_images(3, 8), AdvisorStrategy::structured));  // 3 images
  const Advice many = advise(SequenceLayout::images_then_text(4, 16, 16, 64), cfg, o);
  EXPECT_TRUE(recommends(many, AdvisorStrategy::structured));
  ASSERT_EQ(many.reasons.size(), 2u);  // both steps apply; the later one wins
  EXPECT_TRUE(contains(many.reasons[0], "1024 image tokens > 512"));
  EXPECT_TRUE(contains(many.reasons[1], "4 images > 2"));
}

// The 8192 + 512 workload at 32 heads of 128 in bf16: 8704 tokens x 32 x 128 x 2 (K, V) x 2 bytes
// = 136 MiB of KV; pooled p=2 keeps 512 + 2048 tokens (40 MiB), p=4 512 + 512 (16 MiB).
TEST(Advisor, MemoryBudgetPicksTheLeastPoolingThatFits) {
  const SequenceLayout layout = SequenceLayout::images_then_text(32, 16, 16, 512);
  const AttentionConfig cfg = make_config(32, 32, 128);
  AdvisorOptions o = serial_options();
  const double mib = 1024.0 * 1024.0, token = 32 * 128 * 2 * 2;

  Advice a = advise(layout, cfg, o);
  EXPECT_TRUE(recommends(a, AdvisorStrategy::structured));
  ASSERT_NE(a.row(AdvisorStrategy::pooled, 2), nullptr);
  EXPECT_DOUBLE_EQ(a.row(AdvisorStrategy::structured)->kv_bytes, 8704 * token);
  EXPECT_DOUBLE_EQ(a.row(AdvisorStrategy::pooled, 2)->kv_bytes, (512 + 2048) * token);
  EXPECT_DOUBLE_EQ(a.row(AdvisorStrategy::pooled, 4)->kv_bytes, (512 + 512) * token);
  EXPECT_DOUBLE_EQ(a.row(AdvisorStrategy::sparse)->kv_bytes, 8704 * token);

  o.memory_budget_bytes = 100 * mib;
  a = advise(layout, cfg, o);
  EXPECT_TRUE(recommends(a, AdvisorStrategy::pooled, 2));
  EXPECT_FALSE(a.row(AdvisorStrategy::structured)->fits_budget);
  EXPECT_TRUE(a.row(AdvisorStrategy::pooled, 2)->fits_budget);
  EXPECT_TRUE(contains(a.reasons.back(), "> budget 100.0 MiB")) << a.reasons.back();
  EXPECT_TRUE(contains(a.table, "(over)"));

  o.memory_budget_bytes = 20 * mib;
  EXPECT_TRUE(recommends(advise(layout, cfg, o), AdvisorStrategy::pooled, 4));
  o.memory_budget_bytes = 1 * mib;
  a = advise(layout, cfg, o);
  EXPECT_TRUE(recommends(a, AdvisorStrategy::pooled, 4));
  EXPECT_TRUE(contains(a.reasons.back(), "still over budget"));

  // Plan statistics: the sparse and pooled candidates compute fewer pairs than structured, which
  // computes far fewer than dense (N^2).
  const double dense = a.row(AdvisorStrategy::dense)->computed_pairs;
  EXPECT_DOUBLE_EQ(dense, 8704.0 * 8704.0);
  EXPECT_DOUBLE_EQ(a.row(AdvisorStrategy::dense)->dense_fraction, 1.0);
  EXPECT_LT(a.row(AdvisorStrategy::causal)->computed_pairs, 0.52 * dense);
  EXPECT_LT(a.row(AdvisorStrategy::structured)->computed_pairs, 0.1 * dense);
  EXPECT_LT(a.row(AdvisorStrategy::pooled, 2)->computed_pairs, a.row(AdvisorStrategy::structured)->computed_pairs);
  EXPECT_LT(a.row(AdvisorStrategy::pooled, 4)->computed_pairs, a.row(AdvisorStrategy::pooled, 2)->computed_pairs);
  EXPECT_LT(a.row(AdvisorStrategy::sparse)->computed_pairs, a.row(AdvisorStrategy::structured)->computed_pairs);
  EXPECT_FALSE(a.row(AdvisorStrategy::sparse)->measured);
  EXPECT_TRUE(contains(a.table, "| strategy"));
  EXPECT_TRUE(contains(a.table, "pooled p=4 *"));
}

TEST(Advisor, MeasuredRunStatesEveryError) {
  const SequenceLayout layout = SequenceLayout::images_then_text(3, 6, 5, 21);
  const AttentionConfig cfg = make_config(4, 2, 16);
  AdvisorOptions o;
  o.runs = 1;
  o.pools = {1, 2};
  o.sparse = {1, 3, 3};
  o.check_rows = 4;
  const Buffers b = make_qkv(cfg, layout.size(), layout.size(), 17);
  const Advice a = advise(layout, cfg, o, b.q.cview(), b.k.cview(), b.v.cview());
  EXPECT_TRUE(recommends(a, AdvisorStrategy::structured));
  ASSERT_EQ(a.rows.size(), 7u);
  for (const AdvisorRow& r : a.rows) {
    SCOPED_TRACE(r.label);
    EXPECT_TRUE(r.measured);
    EXPECT_GT(r.latency_ms, 0.0);
    EXPECT_GT(r.speedup_vs_dense, 0.0);
    if (r.strategy == AdvisorStrategy::pooled && r.pool == 1) {  // exact, measured as an approximation of structured
      EXPECT_TRUE(r.exact);
      EXPECT_LE(r.error.total_rel_l2, 1e-5);
    } else if (r.exact) {
      EXPECT_GE(r.reference_error, 0.0);
      EXPECT_LE(r.reference_error, 1e-5);
    } else {
      EXPECT_LT(r.reference_error, 0.0);
      EXPECT_GT(r.error.text_rel_l2, 0.0);
      EXPECT_EQ(r.error.image_rel_l2, 0.0);  // image rows keep their exact window
    }
  }
  EXPECT_DOUBLE_EQ(a.row(AdvisorStrategy::dense)->speedup_vs_dense, 1.0);
  EXPECT_DOUBLE_EQ(a.row(AdvisorStrategy::structured)->speedup_vs_structured, 1.0);
  EXPECT_GT(a.row(AdvisorStrategy::sparse)->error.dropped_mass_max, 0.0);
  EXPECT_GT(a.row(AdvisorStrategy::pooled, 2)->error.approximated_mass_max, 0.0);
  EXPECT_TRUE(contains(a.table, "dropped "));
  EXPECT_TRUE(contains(a.table, "pooled "));
  EXPECT_TRUE(contains(a.table, "(ref)"));
  EXPECT_TRUE(contains(a.report, "recommended: structured"));

  const Buffers short_qkv = make_qkv(cfg, layout.size() - 1, layout.size() - 1, 1);
  EXPECT_TRUE(contains(error_message([&] { advise(layout, cfg, o, short_qkv.q.cview(), short_qkv.k.cview(), short_qkv.v.cview()); }),
                       "must hold the layout's"));
}

}  // namespace
}  // namespace mmattn::test
