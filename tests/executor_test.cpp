// The executor rule: a work item never starts a parallel region of its own, whatever the
// program's OpenMP and Eigen settings, and a runtime's own std::thread pool gives the same bits
// as OpenMP with the same concurrency. A runtime's pool is a plain std::thread pool here; on its
// workers omp_get_num_threads() is 1, which is where Eigen's GEMM would start a team per worker.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "mmattn/decode.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/isa.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"
#include "thread_pool.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace mmattn::test {
namespace {

// Restores Eigen's global thread count on scope exit.
struct EigenThreads {
  int saved = Eigen::nbThreads();
  explicit EigenThreads(int n) { Eigen::setNbThreads(n); }
  ~EigenThreads() { Eigen::setNbThreads(saved); }
};

// What a work item sees of the threading around it.
struct Observed {
  std::atomic<int> max_team{0}, max_eigen{0}, items{0};
  void record(int team, int eigen) {
    ++items;
    for (int cur = max_team.load(); team > cur && !max_team.compare_exchange_weak(cur, team);) {}
    for (int cur = max_eigen.load(); eigen > cur && !max_eigen.compare_exchange_weak(cur, eigen);) {}
  }
};

// In each item: the size of a team started there, as Eigen's GEMM would start one (it asks for
// Eigen::nbThreads() threads), and Eigen::nbThreads().
[[maybe_unused]] void observe(const Executor& executor, index_t items, Observed& seen) {
  executor.parallel_for(items, [&](index_t) {
    int team = 1;
#if defined(_OPENMP)
#pragma omp parallel num_threads(std::max(Eigen::nbThreads(), 4))
    {
#pragma omp single
      team = omp_get_num_threads();
    }
#endif
    seen.record(team, Eigen::nbThreads());
  });
}

TEST(Executor, ItemsNeverStartATeam) {
#if !defined(_OPENMP)
  GTEST_SKIP() << "built without OpenMP: Eigen has no threading to start";
#else
  ThreadPool pool(3);
  const Executor executors[] = {pool.executor(), Executor::openmp(2), Executor::openmp(1), Executor::serial()};
  for (const int eigen_threads : {0, 4}) {  // 0: Eigen follows OpenMP's default; 4: the program called setNbThreads
    const EigenThreads scoped(eigen_threads);
    for (size_t e = 0; e < std::size(executors); ++e) {
      Observed seen;
      observe(executors[e], 64, seen);
      EXPECT_EQ(seen.items.load(), 64);
      EXPECT_EQ(seen.max_team.load(), 1) << "executor " << e << ", Eigen threads " << eigen_threads;
      if (eigen_threads == 0) {
        EXPECT_EQ(seen.max_eigen.load(), 1) << "executor " << e;
      }
    }
  }
  // The rule holds only inside items: the program's own settings are as they were, on the calling
  // thread and on the pool's workers after the items.
  const int levels = omp_get_max_active_levels(), threads = omp_get_max_threads();
  Observed after;
  pool.run(64, [&](index_t) {
    after.record(omp_get_max_active_levels() == levels ? 1 : 100, omp_get_max_threads() == threads ? 1 : 100);
  });
  EXPECT_EQ(after.max_team.load(), 1);
  EXPECT_EQ(after.max_eigen.load(), 1);
  int team = 0;
#pragma omp parallel num_threads(2)
  {
#pragma omp single
    team = omp_get_num_threads();
  }
  EXPECT_EQ(team, 2);  // outside items, parallel regions start as before
#endif
}

// A library path that runs Eigen's GEMM (MMATTN_ISA=eigen) on a runtime's pool with Eigen set to
// 4 threads: no thread is created during the forward (Linux: /proc/self/task lists the threads).
TEST(Executor, EigenPathOnAPoolCreatesNoThreads) {
#if !defined(_OPENMP) || !defined(__linux__)
  GTEST_SKIP() << "needs OpenMP and Linux";
#else
  const Isa saved = active_isa();
  set_isa(Isa::kEigen);
  const EigenThreads scoped(4);
  ThreadPool pool(2);
  const SequenceLayout layout = SequenceLayout::images_then_text(2, 12, 12, 100);
  const AttentionConfig cfg = make_config(4, 2, 64);
  const MultimodalAttention<float> attention(cfg, layout, RegionPolicy::structured(Window2D::sliding(5, 5)), {},
                                             pool.executor());
  const Buffers b = make_qkv(cfg, layout.size(), layout.size(), 5);
  Tensor out(layout.size(), cfg.num_heads, cfg.head_dim);
  auto count_threads = [] {
    index_t n = 0;
    for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) ++n;
    return n;
  };
  const index_t before = count_threads();
  attention.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view);
  const index_t after = count_threads();
  set_isa(saved);
  EXPECT_EQ(after, before) << "a work item started an OpenMP team";
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(5, 5));
  const Result ref = run_reference(cfg, b, MaskPredicate{&layout, &policy});
  EXPECT_LE(max_relative_error(out, ref.out), 1e-5);
#endif
}

// Forward and decode through the pool and through OpenMP with the same concurrency: the same
// work split, so the same bits, over random cases on every prefill path this CPU has.
TEST(Executor, CustomPoolMatchesOpenMPBitwise) {
  ThreadPool pool(2);
  const Executor omp = Executor::openmp(2);  // serial, concurrency 1, in a build without OpenMP
  const Executor custom = pool.executor(omp.concurrency());  // the same split-KV cut
  const int kCases = kSlowBuild ? 10 : 40;
  const Isa saved = active_isa();
  int runs = 0;
  for (const Isa isa : kAllIsas) {
    if (!isa_supported(isa)) continue;
    set_isa(isa);
    for (int i = 0; i < kCases; ++i) {
      const cases::Case c = cases::random_case(0xe8ec0000u + static_cast<std::uint32_t>(i));
      SCOPED_TRACE(cases::describe(c) + "\n  isa " + isa_name(isa));
      const index_t n = c.layout.size(), nq = (c.options.query_end < 0 ? n : c.options.query_end) - c.options.query_begin;
      const Buffers b = make_qkv(c.cfg, nq, n, c.seed);
      Tensor a(nq, c.cfg.num_heads, c.cfg.head_dim), o(nq, c.cfg.num_heads, c.cfg.head_dim);
      Lse la(nq, c.cfg.num_heads), lo(nq, c.cfg.num_heads);
      const MultimodalAttention<float> on_pool(c.cfg, c.layout, c.policy, c.options, custom);
      const MultimodalAttention<float> on_omp(c.cfg, c.layout, c.policy, c.options, omp);
      on_pool.forward(b.q.cview(), b.k.cview(), b.v.cview(), a.view, la.view);
      on_omp.forward(b.q.cview(), b.k.cview(), b.v.cview(), o.view, lo.view);
      EXPECT_TRUE(same_bits(a.storage, o.storage));
      EXPECT_TRUE(same_bits(la.storage, lo.storage));
      const Result ref = run_reference(c.cfg, b, MaskPredicate{&c.layout, &c.policy}, c.options.query_begin);
      EXPECT_LE(max_relative_error(a, ref.out), 1e-5);
      // Decode of the last token: split over the keys by concurrency 2 on both.
      Tensor da(1, c.cfg.num_heads, c.cfg.head_dim), dom(1, c.cfg.num_heads, c.cfg.head_dim);
      const Buffers d = make_qkv(c.cfg, 1, n, c.seed + 1);
      SplitKvOptions split;
      split.min_keys_per_split = 4;
      const DecodeStep step(c.layout, c.policy, 1);
      decode_attention(c.cfg, step, d.q.cview(), d.k.cview(), d.v.cview(), da.view, {}, split, custom);
      decode_attention(c.cfg, step, d.q.cview(), d.k.cview(), d.v.cview(), dom.view, {}, split, omp);
      EXPECT_TRUE(same_bits(da.storage, dom.storage));
      ++runs;
    }
  }
  set_isa(saved);
  EXPECT_GE(runs, kCases);
}

// An exception in an item reaches the caller through the pool, and the pool's worker is left
// with its settings restored (the scope unwinds).
TEST(Executor, ExceptionsUnwindTheItemScope) {
  ThreadPool pool(2);
  const Executor executor = pool.executor();
  EXPECT_THROW(executor.parallel_for(8, [](index_t i) {
    if (i == 3) throw std::runtime_error("item 3");
  }), std::runtime_error);
#if defined(_OPENMP)
  const int levels = omp_get_max_active_levels();
  std::atomic<int> changed{0};
  pool.run(32, [&](index_t) { changed += omp_get_max_active_levels() != levels; });
  EXPECT_EQ(changed.load(), 0);
#endif
}


// Every (tile, head) once; tiles that share a key block with another tile first, head by head;
// tiles whose blocks are their own after them, all heads of one in a row; each part in the plan's
// cost order. Whether a tile shares is worked out here pair by pair.
TEST(PlanItemOrder, SharedTilesGoHeadByHeadAndOwnBlockTilesHeadsInARow) {
  SequenceLayout mixed;
  mixed.add_image(16, 16).add_text(100).add_image(9, 13).add_text(60);
  SequenceLayout vision;
  vision.add_image(36, 52);
  const std::pair<SequenceLayout, RegionPolicy> cases[] = {
      {mixed, RegionPolicy::structured(Window2D::sliding(7, 7))},
      {mixed, RegionPolicy::decoder_causal()},
      {vision, RegionPolicy::qwen25vl_window(8)},
      {vision, RegionPolicy::dense()}};
  int saw_shared = 0, saw_own = 0;
  for (const auto& [layout, policy] : cases) {
    const Plan plan = make_plan(layout, policy);
    const index_t heads = 3, tiles = static_cast<index_t>(plan.query_tiles.size());
    auto shares = [&](index_t t) {
      const QueryTile& a = plan.query_tiles[static_cast<size_t>(t)];
      for (index_t u = 0; u < tiles; ++u) {
        if (u == t) continue;
        const QueryTile& b = plan.query_tiles[static_cast<size_t>(u)];
        bool same = false;  // a piece of each with the same keys: what a thread packs once for both
        plan.for_each_piece(a, PieceRange{}, [&](index_t, const KeyBlock& x) {
          plan.for_each_piece(b, PieceRange{}, [&](index_t, const KeyBlock& y) { same = same || x.keys == y.keys; });
        });
        if (same) return true;
      }
      return false;
    };
    std::vector<index_t> shared, own;
    for (const index_t t : plan.tile_order) (shares(t) ? shared : own).push_back(t);
    saw_shared += !shared.empty(), saw_own += !own.empty();
    std::vector<index_t> want_tile, want_head;
    for (index_t h = 0; h < heads; ++h)
      for (const index_t t : shared) want_tile.push_back(t), want_head.push_back(h);
    for (const index_t t : own)
      for (index_t h = 0; h < heads; ++h) want_tile.push_back(t), want_head.push_back(h);
    const kernel::PlanItemOrder order(plan, heads);
    ASSERT_EQ(order.size(), tiles * heads);
    for (index_t i = 0; i < order.size(); ++i) {
      EXPECT_EQ(order.tile(i), want_tile[static_cast<size_t>(i)]) << "item " << i;
      EXPECT_EQ(order.head(i), want_head[static_cast<size_t>(i)]) << "item " << i;
    }
  }
  EXPECT_GT(saw_shared, 0);
  EXPECT_GT(saw_own, 0);
}

}  // namespace
}  // namespace mmattn::test
