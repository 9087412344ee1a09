// PagedKVView: a paged K/V cache (shuffled block tables, spare blocks, block sizes that do not
// divide the length, NaN in every unused slot) gives MultimodalAttention::forward the same result
// as the contiguous cache, over the random families of multimodal_attention_test.cpp; and every
// malformed view is refused with a message before anything is written.

#include <gtest/gtest.h>

#include <limits>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

#include "mmattn/decode.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/paged_kv.hpp"
#include "paged_cache.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"
#include "typed_tensor.hpp"

namespace mmattn::test {
namespace {

using bf16 = Eigen::bfloat16;
constexpr int kCases = kSlowBuild ? 100 : 160;  // fewer in sanitizer builds, same families

// Returns "" or what went wrong; counts the cases that matched bit for bit.
template <class TKV>
std::string run_paged_case(const cases::Case& c, index_t block_size, int& bitwise, double& worst) {
  const MultimodalAttention<float> mm(c.cfg, c.layout, c.policy, c.options,
                                      c.serial ? Executor::serial() : Executor::default_executor());
  const index_t nq = mm.plan().num_queries(), n = c.layout.size();
  const Buffers b = make_qkv(c.cfg, nq, n, c.seed);
  const TypedTensor<TKV> k(restride(b.k, c.kv_storage)), v(restride(b.v, c.kv_storage));
  std::mt19937 gen(c.seed);
  const PagedCache<TKV> pk(k.cview(), block_size, 4, gen), pv(v.cview(), block_size, 1, gen);

  Tensor contiguous(nq, c.cfg.num_heads, c.cfg.head_dim), paged(nq, c.cfg.num_heads, c.cfg.head_dim);
  Lse lc(nq, c.cfg.num_heads), lp(nq, c.cfg.num_heads);
  mm.forward(b.q.cview(), k.cview(), v.cview(), contiguous.view, lc.view);
  mm.forward(b.q.cview(), pk.cview(), pv.cview(), paged.view, lp.view);
  const bool same = same_bits(contiguous.storage, paged.storage) && same_bits(lc.storage, lp.storage);
  bitwise += same;
  const double err = std::max(max_relative_error(paged, contiguous), max_lse_error(lp, lc));
  worst = std::max(worst, err);
  return err <= 1e-6 ? "" : " paged differs from contiguous by " + std::to_string(err);
}

TEST(PagedKV, ForwardEqualsContiguousOverRandomCases) {
  int failed = 0, bitwise = 0;
  double worst = 0;
  const index_t block_sizes[] = {1, 2, 5, 7, 16, 17, 32};
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = cases::random_case(0x9a9e0000u + static_cast<std::uint32_t>(i));
    const index_t block = block_sizes[i % 7];
    const bool use_bf16 = i % 2 == 1;
    SCOPED_TRACE(cases::describe(c) + "\n  block " + std::to_string(block) + (use_bf16 ? ", bf16" : ", f32"));
    std::string problems;
    const std::string err = error_message([&] {
      problems = use_bf16 ? run_paged_case<bf16>(c, block, bitwise, worst) : run_paged_case<float>(c, block, bitwise, worst);
    });
    if (err != "<no exception>") problems = " threw: " + err;
    if (!problems.empty() && ++failed <= 5) ADD_FAILURE() << "case failed:" << problems;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases << " cases (first 5 shown)";
  // Gathered rows are what the contiguous bf16 path computes from as well: those match exactly.
  EXPECT_GE(bitwise, kCases / 2);
  std::printf("%d cases, %d bitwise equal; worst difference %.3g\n", kCases, bitwise, worst);
}

TEST(PagedKV, ViewAddressesTheTable) {
  std::vector<float> pool(4 * 3 * 2 * 5);
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<float>(i);
  const std::int32_t table[] = {2, 0, 3};
  const PagedKVView<float> v = view_paged(pool.data(), 4, 3, 2, 5, table, 3, 8);  // 8 tokens in blocks of 3
  EXPECT_EQ(v.row(0, 0), pool.data() + 2 * 30);
  EXPECT_EQ(v.row(4, 1), pool.data() + 0 * 30 + 1 * 10 + 1 * 5);
  EXPECT_EQ(v.row(7, 0), pool.data() + 3 * 30 + 1 * 10);
  EXPECT_EQ(v(7, 1, 4), pool[3 * 30 + 1 * 10 + 5 + 4]);
  const PagedKVView<const float> c = v;
  EXPECT_EQ(c.row(5, 1), v.row(5, 1));
}

// A valid paged call that each case breaks in one way; out must stay untouched.
struct PagedCall {
  SequenceLayout layout = SequenceLayout::images_then_text(1, 3, 3, 11);  // 20 tokens
  AttentionConfig cfg = make_config(4, 2, 8);
  Buffers b = make_qkv(cfg, 20, 20, 3);
  std::mt19937 gen{1};
  PagedCache<float> k{b.k.cview(), 6, 1, gen}, v{b.v.cview(), 6, 1, gen};  // 4 blocks of 6 used, 5 in the pool
  PagedKVView<const float> kv = k.cview(), vv = v.cview();
  Tensor out{20, 4, 8};

  std::string forward() {
    const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::structured(Window2D::sliding(3, 3)));
    return error_message([&] { mm.forward(b.q.cview(), kv, vv, out.view); });
  }
  std::string decode() {
    Tensor o1(1, 4, 8);
    const Tensor q1(1, 4, 8);
    const std::string m = error_message([&] {
      decode_attention(cfg, layout, RegionPolicy::structured(), q1.cview(), kv, vv, o1.view);
    });
    for (const float x : o1.storage) EXPECT_TRUE(std::isnan(x)) << "decode wrote before failing";
    return m;
  }
};

void expect_rejected(PagedCall& c, const std::string& needle) {
  for (const std::string& m : {c.forward(), c.decode()}) EXPECT_TRUE(contains(m, needle)) << m << "\nexpected: " << needle;
  for (const float x : c.out.storage) ASSERT_TRUE(std::isnan(x)) << "forward wrote before failing";
}

TEST(PagedKV, ValidCallRuns) {
  PagedCall c;
  EXPECT_EQ(c.forward(), "<no exception>");
  const MultimodalAttention<float> mm(c.cfg, c.layout, RegionPolicy::structured(Window2D::sliding(3, 3)));
  EXPECT_LE(max_relative_error(c.out, run_reference(c.cfg, c.b, mm.predicate()).out), 1e-5);
}

TEST(PagedKV, RejectsNullPool) {
  PagedCall c;
  c.kv.pool = nullptr;
  expect_rejected(c, "k: null pool");
}

TEST(PagedKV, RejectsNullBlockTable) {
  PagedCall c;
  c.vv.block_table = nullptr;
  expect_rejected(c, "v: null block table");
}

TEST(PagedKV, RejectsTableEntryOutsideThePool) {
  PagedCall c;
  c.k.table[2] = 5;
  expect_rejected(c, "k: block_table[2] = 5 is outside the pool's 5 blocks");
  c.k.table[2] = -1;
  expect_rejected(c, "k: block_table[2] = -1 is outside the pool's 5 blocks");
}

TEST(PagedKV, RejectsMoreTokensThanTheTableHolds) {
  PagedCall c;
  c.vv.table_blocks = 3;
  expect_rejected(c, "v: 20 tokens need 4 blocks of 6 but the block table holds 3");
}

// Tokens near the index maximum: the blocks they need are counted without overflow, so the
// short table is refused instead of read past.
TEST(PagedKV, TokensNearTheIndexMaximumAreCountedWithoutOverflow) {
  PagedCall c;
  c.kv.tokens = std::numeric_limits<index_t>::max() - 2;
  const std::string m = error_message([&] { validate_view("k", c.kv, false); });
  EXPECT_TRUE(contains(m, "k: " + std::to_string(c.kv.tokens) + " tokens need")) << m;
  EXPECT_TRUE(contains(m, "but the block table holds")) << m;
}

TEST(PagedKV, RejectsNonPositiveBlockSize) {
  PagedCall c;
  c.kv.block_size = 0;
  expect_rejected(c, "k: block_size must be positive, got 0");
}

TEST(PagedKV, RejectsWrongShape) {
  PagedCall c;
  c.vv.tokens = 19;
  expect_rejected(c, "v: shape [19, 2, 8] must be [20, 2, 8]");
}

TEST(PagedKV, RejectsOverflowingStrides) {
  PagedCall c;
  c.kv.block_stride = std::numeric_limits<index_t>::max() / 2;
  expect_rejected(c, "k: strides overflow the index type");
}

}  // namespace
}  // namespace mmattn::test
