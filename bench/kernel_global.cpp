// The global kernel (flash_attention, dense and causal) against its two yardsticks at one
// prefill-sized shape: a plain Eigen GEMM (the ceiling: attention is two GEMMs plus a softmax) and
// the naive N x N baseline (what the kernel saves in memory). Then a tile-size sweep, and a copy
// of the tiled loop with phases switched off to see where the kernel's time goes.
//
// Shape: 1536 tokens, 32 heads (MHA), head_dim 128, float, [tokens, heads, head_dim].
// Every benchmark runs on 2 threads unless its name says otherwise (`threads` counter too).
// GFLOPs counts 4 * head_dim * heads per *allowed* (query, key) pair, so causal and dense rates
// compare the useful work; GFLOPs_cpu is the same work per CPU-second of this process times the
// threads, which other processes on a shared machine disturb much less (see bench_util.hpp).
//
//   ./build/bench/bench/kernel_global --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//       --benchmark_min_time=0.5    (one line; about 2.5 minutes; --benchmark_filter=Tiles for the sweep)

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <vector>

#include "bench_util.hpp"
#include "mmattn/flash_attention.hpp"

namespace {

using mmattn::index_t;
namespace bench = mmattn::bench;
using RowMatrix = mmattn::kernel::RowMatrix;
using StridedMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

constexpr index_t kTokens = 1536;
constexpr index_t kHeads = 32;
constexpr index_t kHeadDim = 128;
constexpr int kThreads = 2;  // the machine's cores

// Q, K, V, O in the runtime layout [tokens, heads, head_dim], same seeded data for every benchmark.
struct Problem {
  std::vector<float> q = bench::random_floats(size(), 1);
  std::vector<float> k = bench::random_floats(size(), 2);
  std::vector<float> v = bench::random_floats(size(), 3);
  std::vector<float> o = std::vector<float>(size(), 0.0f);
  mmattn::AttentionConfig cfg{kHeads, kHeads, kHeadDim, {}};

  static constexpr index_t size() { return kTokens * kHeads * kHeadDim; }
  static double qkvo_bytes() { return 4.0 * sizeof(float) * static_cast<double>(size()); }

  // heads_first: the same buffers read as [heads, tokens, head_dim] (the data differs, the work does not).
  bool heads_first = false;
  template <class T>
  mmattn::TensorView<T> view(T* data) const {
    return heads_first ? mmattn::view_htd(data, kTokens, kHeads, kHeadDim)
                       : mmattn::view_thd(data, kTokens, kHeads, kHeadDim);
  }
  mmattn::TensorView<const float> qv() const { return view(q.data()); }
  mmattn::TensorView<const float> kv() const { return view(k.data()); }
  mmattn::TensorView<const float> vv() const { return view(v.data()); }
  mmattn::TensorView<float> ov() { return view(o.data()); }

  // One head of a [tokens, heads, head_dim] buffer as a (tokens, head_dim) matrix, rows heads * head_dim apart.
  static ConstStridedMap head(const std::vector<float>& t, index_t h) {
    return ConstStridedMap(t.data() + h * kHeadDim, kTokens, kHeadDim, Eigen::OuterStride<>(kHeads * kHeadDim));
  }
  static StridedMap head(std::vector<float>& t, index_t h) {
    return StridedMap(t.data() + h * kHeadDim, kTokens, kHeadDim, Eigen::OuterStride<>(kHeads * kHeadDim));
  }
};

double attention_flops(bool causal) {
  const double pairs = causal ? bench::causal_pairs(kTokens) : bench::dense_pairs(kTokens, kTokens);
  return bench::attention_flops(kHeads, kHeadDim, pairs);
}

// ---- the kernel -----------------------------------------------------------------------------------

// range(0) = threads.
template <class Tiles, bool kCausal, bool kHeadsFirst = false>
void BM_Flash(benchmark::State& state) {
  bench::reset_peak_rss();  // before the inputs: peak_rss_MiB = baseline + Q, K, V, O + workspaces
  const int threads = bench::set_threads(state, static_cast<int>(state.range(0)));
  Problem p;
  p.heads_first = kHeadsFirst;
  const mmattn::Executor executor = mmattn::Executor::openmp(threads);
  mmattn::GlobalOptions options;
  options.causal = kCausal;
  const double cpu0 = bench::process_cpu_seconds();
  for (auto _ : state) {
    mmattn::flash_attention<Tiles>(p.cfg, p.qv(), p.kv(), p.vv(), p.ov(), {}, options, executor);
    benchmark::DoNotOptimize(p.o.data());
    benchmark::ClobberMemory();
  }
  const double cpu_seconds = bench::process_cpu_seconds() - cpu0;
  const double flops = attention_flops(kCausal);
  bench::set_gflops(state, flops);
  bench::set_cpu_gflops(state, flops, cpu_seconds, threads);
  bench::set_memory_counters(state, Problem::qkvo_bytes());
  state.counters["tile_q"] = Tiles::kBlockQueries;
  state.counters["tile_k"] = Tiles::kBlockKeys;
}

void BM_FlashDense(benchmark::State& state) { BM_Flash<mmattn::DefaultTiles, /*kCausal=*/false>(state); }
void BM_FlashCausal(benchmark::State& state) { BM_Flash<mmattn::DefaultTiles, /*kCausal=*/true>(state); }
// The same, with Q, K, V, O as [heads, tokens, head_dim]: a head's K and V are one contiguous
// 768 KiB block instead of 1536 rows 16 KiB apart. The gap to BM_FlashDense is the cost of the
// strided layout (gathers, TLB, prefetch), not of the arithmetic.
void BM_FlashDenseHeadsFirst(benchmark::State& state) {
  BM_Flash<mmattn::DefaultTiles, /*kCausal=*/false, /*kHeadsFirst=*/true>(state);
}

// Registered first: their peak RSS must not follow the naive baseline's N x N buffers (the reset
// handles it too, but glibc may keep freed pages for itself).
BENCHMARK(BM_FlashDense)->ArgName("threads")->Arg(kThreads)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FlashCausal)->ArgName("threads")->Arg(kThreads)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FlashDenseHeadsFirst)->ArgName("threads")->Arg(kThreads)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- the ceiling: Eigen GEMM ----------------------------------------------------------------------

// C = A B, n x n x n, Eigen's own OpenMP threading. range(0) = n, range(1) = threads.
void BM_EigenGemm(benchmark::State& state) {
  const auto n = static_cast<index_t>(state.range(0));
  const int threads = bench::set_threads(state, static_cast<int>(state.range(1)));
  Eigen::MatrixXf a(n, n), b(n, n), c(n, n);
  bench::fill_random(a.data(), static_cast<size_t>(a.size()), 4);
  bench::fill_random(b.data(), static_cast<size_t>(b.size()), 5);
  const double cpu0 = bench::process_cpu_seconds();
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double cpu_seconds = bench::process_cpu_seconds() - cpu0;
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  bench::set_gflops(state, flops);
  bench::set_cpu_gflops(state, flops, cpu_seconds, threads);
}
BENCHMARK(BM_EigenGemm)
    ->ArgNames({"", "threads"})
    ->Args({1024, kThreads})
    ->Args({1024, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The dense attention's two GEMMs per head with nothing in between: S = Q_h K_h^T (1536 x 128 x 1536)
// then O_h = S V_h (1536 x 1536 x 128), on the same strided [tokens, heads, head_dim] operands.
// kHeadParallel = false: heads in turn, each product threaded by Eigen (2 threads).
// kHeadParallel = true: heads split over an OpenMP team, each product on one thread, which is how
// the tiled kernel runs its (much smaller) products.
template <bool kHeadParallel>
void BM_EigenGemmSameFlopsImpl(benchmark::State& state) {
  const int threads = bench::set_threads(state, kThreads);
  Problem p;
  std::vector<RowMatrix> scores(static_cast<size_t>(threads), RowMatrix(kTokens, kTokens));
  auto one_head = [&](index_t h, RowMatrix& s) {
    s.noalias() = Problem::head(p.q, h) * Problem::head(p.k, h).transpose();  // (N, N)
    Problem::head(p.o, h).noalias() = s * Problem::head(p.v, h);             // (N, d)
  };
  const double cpu0 = bench::process_cpu_seconds();
  for (auto _ : state) {
    if constexpr (kHeadParallel) {
#pragma omp parallel for schedule(static) num_threads(threads)
      for (index_t h = 0; h < kHeads; ++h) {
#if defined(_OPENMP)
        one_head(h, scores[static_cast<size_t>(omp_get_thread_num())]);
#else
        one_head(h, scores[0]);
#endif
      }
    } else {
      for (index_t h = 0; h < kHeads; ++h) one_head(h, scores[0]);
    }
    benchmark::DoNotOptimize(p.o.data());
    benchmark::ClobberMemory();
  }
  const double cpu_seconds = bench::process_cpu_seconds() - cpu0;
  const double flops = attention_flops(/*causal=*/false);
  bench::set_gflops(state, flops);
  bench::set_cpu_gflops(state, flops, cpu_seconds, threads);
}
void BM_EigenGemmSameFlops(benchmark::State& state) { BM_EigenGemmSameFlopsImpl</*kHeadParallel=*/false>(state); }
void BM_EigenGemmSameFlopsHeadParallel(benchmark::State& state) {
  BM_EigenGemmSameFlopsImpl</*kHeadParallel=*/true>(state);
}
BENCHMARK(BM_EigenGemmSameFlops)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EigenGemmSameFlopsHeadParallel)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- the naive baseline ---------------------------------------------------------------------------

// Per head: S = scale Q_h K_h^T in full (N x N, one per thread: that allocation is the point),
// softmax of each row, O_h = S V_h. Causal masks the strict upper triangle but still computes it;
// GFLOPs counts the allowed pairs only, as for the kernel.
template <bool kCausal>
void BM_Naive(benchmark::State& state) {
  bench::reset_peak_rss();
  const int threads = bench::set_threads(state, kThreads);
  Problem p;
  const float scale = p.cfg.resolved_scale();
  std::vector<RowMatrix> scores(static_cast<size_t>(threads), RowMatrix(kTokens, kTokens));
  const double cpu0 = bench::process_cpu_seconds();
  for (auto _ : state) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (index_t h = 0; h < kHeads; ++h) {
#if defined(_OPENMP)
      RowMatrix& s = scores[static_cast<size_t>(omp_get_thread_num())];  // (N, N)
#else
      RowMatrix& s = scores[0];
#endif
      s.noalias() = (Problem::head(p.q, h) * scale) * Problem::head(p.k, h).transpose();
      for (index_t i = 0; i < kTokens; ++i) {
        auto row = s.row(i).array();
        if (kCausal) row.tail(kTokens - 1 - i).setConstant(-std::numeric_limits<float>::infinity());
        row = (row - row.maxCoeff()).exp();  // the diagonal is always allowed: the max is finite
        row /= row.sum();
      }
      Problem::head(p.o, h).noalias() = s * Problem::head(p.v, h);
    }
    benchmark::DoNotOptimize(p.o.data());
    benchmark::ClobberMemory();
  }
  const double cpu_seconds = bench::process_cpu_seconds() - cpu0;
  const double flops = attention_flops(kCausal);
  bench::set_gflops(state, flops);
  bench::set_cpu_gflops(state, flops, cpu_seconds, threads);
  bench::set_memory_counters(state, Problem::qkvo_bytes());
}
void BM_NaiveDense(benchmark::State& state) { BM_Naive</*kCausal=*/false>(state); }
void BM_NaiveCausal(benchmark::State& state) { BM_Naive</*kCausal=*/true>(state); }
BENCHMARK(BM_NaiveDense)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NaiveCausal)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- tile-size sweep ------------------------------------------------------------------------------

template <int BM, int BN>
void BM_FlashDenseTiles(benchmark::State& state) {
  BM_Flash<mmattn::TileTraits<BM, BN>, /*kCausal=*/false>(state);
}
#define MMATTN_TILE_BENCH(BM, BN)                                                                  \
  BENCHMARK_TEMPLATE(BM_FlashDenseTiles, BM, BN)->ArgName("threads")->Arg(kThreads)->UseRealTime() \
      ->Unit(benchmark::kMillisecond)
MMATTN_TILE_BENCH(32, 64);
MMATTN_TILE_BENCH(32, 128);
MMATTN_TILE_BENCH(32, 256);
MMATTN_TILE_BENCH(64, 64);
MMATTN_TILE_BENCH(64, 128);
MMATTN_TILE_BENCH(64, 256);
MMATTN_TILE_BENCH(128, 64);
MMATTN_TILE_BENCH(128, 128);
MMATTN_TILE_BENCH(128, 256);
#undef MMATTN_TILE_BENCH

// Causal computes whole diagonal blocks and masks part of them: about BN / N more pairs than the
// mask keeps (8 % at BN = 128, 17 % at BN = 256 for N = 1536). Larger key blocks trade GEMM
// efficiency against that waste, so a candidate default is checked here too.
template <int BM, int BN>
void BM_FlashCausalTiles(benchmark::State& state) {
  BM_Flash<mmattn::TileTraits<BM, BN>, /*kCausal=*/true>(state);
}
BENCHMARK_TEMPLATE(BM_FlashCausalTiles, 64, 128)->ArgName("threads")->Arg(kThreads)->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_FlashCausalTiles, 128, 128)->ArgName("threads")->Arg(kThreads)->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_FlashCausalTiles, 128, 256)->ArgName("threads")->Arg(kThreads)->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// ---- where the kernel's time goes -----------------------------------------------------------------

// A copy of kernel::attend_tile / execute_plan (same plan, workspace, loads, products and softmax)
// with a steady_clock read between phases, summed per thread. Counters give each phase's share of
// the threads' busy time; `sum_ms` is that busy time per call over all threads. The clock reads
// cost ~20 ns each, ~3 per block: well under 1 % at this shape.
// kPhases selects what runs: kQK (S = Q K^T, with the K/V gathers), kSoftmax (online softmax
// bookkeeping and exp), kPV (acc += P V). kQK | kPV with no softmax is the tiled loop's GEMM ceiling.
enum Phase : int { kQK = 1, kSoftmax = 2, kPV = 4, kAll = 7 };

struct PhaseClock {
  using clock = std::chrono::steady_clock;
  double load = 0, qk = 0, softmax = 0, pv = 0, finalize = 0;
  clock::time_point t = clock::now();
  double lap() {
    const clock::time_point now = clock::now();
    const double s = std::chrono::duration<double>(now - t).count();
    t = now;
    return s;
  }
};

// The kernel's softmax step alone (max, exp, sum, rescale; online_softmax.hpp), so the PV
// product can be timed on its own. Full blocks: nothing masked.
void softmax_rows(mmattn::kernel::RowMap& scores, float* acc, float* row_max, float* row_sum, index_t dim) {
  for (index_t i = 0; i < scores.rows(); ++i) {
    const float alpha =
        mmattn::kernel::online_softmax_step(scores.row(i).array(), row_max[i], row_sum[i], /*masked=*/false,
                                            /*factor=*/1.0f);  // Q arrives pre-scaled
    if (alpha != 1.0f) Eigen::Map<Eigen::RowVectorXf>(acc + i * dim, dim) *= alpha;
  }
}

// Which (query tile, head) item comes next. The library's execute_plan is head-major: one head at a
// time over its query tiles, costliest first, so that head's K and V (2 x 768 KiB) stay hot across
// its tiles and both threads share them. Tile-major, the order it replaced, hands out the heads of
// a tile in turn, so each item streams another head's K and V (all heads' are 48 MiB, more than L3).
enum Order { kTileMajor, kHeadMajor };

template <class Tiles, int kPhases, Order kOrder>
void BM_FlashPhases(benchmark::State& state) {
  namespace k = mmattn::kernel;
  const int threads = bench::set_threads(state, kThreads);
  Problem p;
  const mmattn::Plan plan = mmattn::plan_global(kTokens, kTokens, {}, Tiles::sizes());
  const auto q = p.qv(), kk = p.kv(), v = p.vv();
  const auto out = p.ov();
  std::vector<PhaseClock> clocks(static_cast<size_t>(threads));
  const index_t dim = kHeadDim, heads = kHeads;
  const float scale = p.cfg.resolved_scale();

  const double cpu0 = bench::process_cpu_seconds();
  for (auto _ : state) {
    const index_t items = static_cast<index_t>(plan.tile_order.size()) * heads;
#pragma omp parallel num_threads(threads)
    {
#if defined(_OPENMP)
      PhaseClock& c = clocks[static_cast<size_t>(omp_get_thread_num())];
#else
      PhaseClock& c = clocks[0];
#endif
      thread_local k::Workspace ws;
      c.lap();
#pragma omp for schedule(dynamic, 1)
      for (index_t item = 0; item < items; ++item) {
        const index_t n_tiles = static_cast<index_t>(plan.tile_order.size());
        const index_t tile_index = kOrder == kHeadMajor ? item % n_tiles : item / heads;
        const index_t head = kOrder == kHeadMajor ? item / n_tiles : item % heads;
        const mmattn::QueryTile& tile =
            plan.query_tiles[static_cast<size_t>(plan.tile_order[static_cast<size_t>(tile_index)])];
        const index_t rows = tile.queries.size();
        ws.reserve(rows, plan.tiles.key, dim);
        k::load_rows(q, head, tile.queries, plan.query_begin, scale, ws.q.data());
        const Eigen::Map<const RowMatrix> q_tile(ws.q.data(), rows, dim);  // (rows, dim)
        k::RowMap acc(ws.acc.data(), rows, dim);                           // (rows, dim)
        acc.setZero();
        std::fill(ws.row_max.begin(), ws.row_max.begin() + rows, k::kNegInf);
        std::fill(ws.row_sum.begin(), ws.row_sum.begin() + rows, 0.0f);
        c.load += c.lap();
        plan.for_each_piece(tile, mmattn::PieceRange{}, [&](index_t, const mmattn::KeyBlock& block) {
          const index_t keys = block.keys.size();
          const k::ConstStridedRowMap k_block = k::key_rows(kk, head, block.keys, ws.k.data());  // (keys, dim)
          const k::ConstStridedRowMap v_block = k::key_rows(v, head, block.keys, ws.v.data());   // (keys, dim)
          k::RowMap scores(ws.scores.data(), rows, keys);                                        // (rows, keys)
          if (kPhases & kQK) scores.noalias() = q_tile * k_block.transpose();
          c.qk += c.lap();
          if (kPhases & kSoftmax) softmax_rows(scores, ws.acc.data(), ws.row_max.data(), ws.row_sum.data(), dim);
          c.softmax += c.lap();
          if (kPhases & kPV) acc.noalias() += scores * v_block;
          c.pv += c.lap();
        });
        for (index_t i = 0; i < rows; ++i) {
          const float l = ws.row_sum[static_cast<size_t>(i)];
          const float inv = l > 0 ? 1.0f / l : 0.0f;
          float* dst = out.row(tile.queries.at(i), head);
          for (index_t d = 0; d < dim; ++d) dst[d] = acc(i, d) * inv;
        }
        c.finalize += c.lap();
      }
    }
    benchmark::DoNotOptimize(p.o.data());
    benchmark::ClobberMemory();
  }
  PhaseClock total;
  for (const PhaseClock& c : clocks) {
    total.load += c.load, total.qk += c.qk, total.softmax += c.softmax, total.pv += c.pv;
    total.finalize += c.finalize;
  }
  const double busy = total.load + total.qk + total.softmax + total.pv + total.finalize;
  const auto pct = [&](double x) { return benchmark::Counter(busy > 0 ? 100.0 * x / busy : 0.0); };
  state.counters["load_pct"] = pct(total.load);
  state.counters["qk_pct"] = pct(total.qk);
  state.counters["softmax_pct"] = pct(total.softmax);
  state.counters["pv_pct"] = pct(total.pv);
  state.counters["final_pct"] = pct(total.finalize);
  state.counters["sum_ms"] = benchmark::Counter(1e3 * busy / static_cast<double>(state.iterations()));
  // The FLOPs of the products that ran: QK^T and PV are half each.
  const double share = ((kPhases & kQK) ? 0.5 : 0.0) + ((kPhases & kPV) ? 0.5 : 0.0);
  const double cpu_seconds = bench::process_cpu_seconds() - cpu0;
  const double flops = share * attention_flops(/*causal=*/false);
  bench::set_gflops(state, flops);
  bench::set_cpu_gflops(state, flops, cpu_seconds, threads);
}

#define MMATTN_PHASE_BENCH(TILES, PHASES, ORDER)                                                   \
  BENCHMARK_TEMPLATE(BM_FlashPhases, TILES, PHASES, ORDER)->UseRealTime()->Unit(benchmark::kMillisecond)
MMATTN_PHASE_BENCH(mmattn::DefaultTiles, kAll, kHeadMajor);        // the kernel, instrumented: ~ BM_FlashDense
MMATTN_PHASE_BENCH(mmattn::DefaultTiles, kQK, kHeadMajor);         // S = Q K^T only
MMATTN_PHASE_BENCH(mmattn::DefaultTiles, kQK | kPV, kHeadMajor);   // both products, no softmax: the loop's ceiling
MMATTN_PHASE_BENCH(mmattn::DefaultTiles, kAll, kTileMajor);        // the order execute_plan replaced
MMATTN_PHASE_BENCH(mmattn::DefaultTiles, kQK | kPV, kTileMajor);
using Tiles64x128 = mmattn::TileTraits<64, 128>;  // shorter query tiles: Eigen packs K and V per tile
MMATTN_PHASE_BENCH(Tiles64x128, kAll, kHeadMajor);
MMATTN_PHASE_BENCH(Tiles64x128, kQK | kPV, kHeadMajor);
#undef MMATTN_PHASE_BENCH

}  // namespace

BENCHMARK_MAIN();
