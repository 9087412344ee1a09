// A row's result depends only on the keys it may see: garbage (NaN, inf, 1e38) in any other K or V
// row leaves it unchanged bit for bit, through forward and forward_split_kv (which runs the decode
// kernel on short tiles) over random query ranges; a NaN the row does see makes its output and
// log-sum-exp NaN.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "mmattn/multimodal_attention.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

constexpr int kCases = kSlowBuild ? 60 : 300;
const float kPoisons[] = {kNaN, kInf, -kInf, 1e36f, -3e38f};

// Poisons token t's K row, V row or both (every head and dim) with `value`.
void poison(Buffers& b, index_t t, int which, float value) {
  for (index_t h = 0; h < b.k.view.heads; ++h)
    for (index_t d = 0; d < b.k.view.head_dim; ++d) {
      if (which != 1) b.k.view(t, h, d) = value;
      if (which != 0) b.v.view(t, h, d) = value;
    }
}

struct Outputs {
  Tensor out;
  Lse lse;
};

Outputs run(const MultimodalAttention<float>& mm, const Buffers& b, bool split) {
  const index_t nq = mm.plan().num_queries();
  Outputs o{Tensor(nq, mm.config().num_heads, mm.config().head_dim), Lse(nq, mm.config().num_heads)};
  SplitKvOptions options;
  options.splits = 3;
  options.min_keys_per_split = 1;
  if (split) mm.forward_split_kv(b.q.cview(), b.k.cview(), b.v.cview(), o.out.view, o.lse.view, options);
  else mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), o.out.view, o.lse.view);
  return o;
}

TEST(MaskedKeys, GarbageInKeysARowCannotSeeNeverChangesIt) {
  int checked_rows = 0, nan_rows = 0, failures = 0;
  for (int i = 0; i < kCases; ++i) {
    cases::Case c = cases::random_case(0x9a5e0000u + static_cast<std::uint32_t>(i));
    std::mt19937 gen(c.seed);
    const MultimodalAttention<float> mm(c.cfg, c.layout, c.policy, c.options);
    const index_t n = c.layout.size(), qb = mm.plan().query_begin, nq = mm.plan().num_queries();
    const Buffers clean = make_qkv(c.cfg, nq, n, c.seed);
    const index_t t = cases::uniform(gen, 0, n - 1);
    const int which = static_cast<int>(cases::uniform(gen, 0, 2));
    const float value = kPoisons[cases::uniform(gen, 0, 4)];
    const bool split = gen() % 2;
    Buffers dirty = clean;
    poison(dirty, t, which, value);
    const Outputs want = run(mm, clean, split), got = run(mm, dirty, split);
    std::string problems;
    for (index_t r = 0; r < nq; ++r) {
      const bool sees = allowed(c.layout, c.policy, qb + r, t);
      for (index_t h = 0; h < c.cfg.num_heads; ++h) {
        if (sees) {
          // A NaN value or key the row sees makes the row NaN (inf may give anything).
          if (std::isnan(value) && !std::isnan(got.out.view(r, h, 0))) problems += " row " + std::to_string(r) + " hid a NaN;";
          if (std::isnan(value) && which != 1 && !std::isnan(got.lse(r, h))) problems += " lse hid a NaN;";
          nan_rows += std::isnan(value) ? 1 : 0;
          continue;
        }
        ++checked_rows;
        for (index_t d = 0; d < c.cfg.head_dim; ++d) {
          const float a = got.out.view(r, h, d), e = want.out.view(r, h, d);
          if (!(a == e))  // bit for bit (+0 == -0)
            problems += " row " + std::to_string(r) + " head " + std::to_string(h) + " dim " + std::to_string(d) + ": " +
                        std::to_string(a) + " vs clean " + std::to_string(e) + ";";
        }
        const float la = got.lse(r, h), le = want.lse(r, h);
        if (!(la == le))
          problems += " lse row " + std::to_string(r) + ": " + std::to_string(la) + " vs " + std::to_string(le) + ";";
        if (problems.size() > 400) break;
      }
      if (problems.size() > 400) break;
    }
    if (!problems.empty() && ++failures <= 3)
      ADD_FAILURE() << "token " << t << (which == 0 ? " K" : which == 1 ? " V" : " K+V") << " = " << value
                    << (split ? ", split-KV" : ", forward") << ":" << problems << "\n  " << cases::describe(c);
  }
  EXPECT_EQ(failures, 0) << "of " << kCases;
  EXPECT_GT(checked_rows, 1000);
  EXPECT_GT(nan_rows, 0);
}

// The two smallest cases: two text tokens, causal, the second poisoned; row 0 sees only token 0.
TEST(MaskedKeys, CausalRowIgnoresALaterNaNOrHugeValue) {
  SequenceLayout layout;
  layout.add_text(8);
  const AttentionConfig cfg = make_config(1, 1, 4);
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::decoder_causal());
  for (const float value : {kNaN, kInf, 1e36f}) {
    Buffers b = make_qkv(cfg, 8, 8, 5);
    for (index_t t = 1; t < 8; ++t) poison(b, t, /*which=*/1, value);
    for (const bool split : {false, true}) {
      const Outputs o = run(mm, b, split);
      for (index_t d = 0; d < 4; ++d) EXPECT_EQ(o.out.view(0, 0, d), b.v.view(0, 0, d)) << value << " split " << split;
    }
  }
}

// A NaN key the row sees is not "no key": output and log-sum-exp are NaN, in every path, and the
// reference agrees.
TEST(MaskedKeys, AVisibleNaNKeyMakesTheRowNaN) {
  SequenceLayout layout;
  layout.add_text(8);
  const AttentionConfig cfg = make_config(1, 1, 4);
  PlanOptions options;
  options.tiles = {8, 4};  // the NaN key in the second key block
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::dense(), options);
  Buffers b = make_qkv(cfg, 8, 8, 6);
  poison(b, 6, /*which=*/0, kNaN);
  for (const bool split : {false, true}) {
    const Outputs o = run(mm, b, split);
    for (index_t r = 0; r < 8; ++r) {
      EXPECT_TRUE(std::isnan(o.out.view(r, 0, 0))) << "row " << r << " split " << split;
      EXPECT_TRUE(std::isnan(o.lse(r, 0))) << "row " << r << " split " << split;
    }
  }
  const Result ref = run_reference(cfg, b, AllKeys{});
  EXPECT_TRUE(std::isnan(ref.out.view(0, 0, 0)));
  EXPECT_TRUE(std::isnan(ref.lse(0, 0)));
}

}  // namespace
}  // namespace mmattn::test
