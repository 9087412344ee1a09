// Thread scaling of the 1536-token structured workload (4 images of 16 x 16 patches + 512 text,
// RegionPolicy::structured with a 7 x 7 sliding window, 32 heads, head_dim 128) at 1 .. N threads,
// N = the hardware's threads.
//
// Counters: speedup_vs_1thread (the 1-thread call timed once in this process with std::chrono,
// exported as a rate so it reads t(1) / t(threads) with this benchmark's own timing; see
// workloads.hpp), parallel_efficiency = speedup / threads, and the strategy counters: GFLOPs,
// GFLOPs_computed, efficiency, workspace_bytes, speedup_vs_dense (dense at the same thread count).
//
//   ./build/bench/bench/thread_scaling --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <string>
#include <thread>

#include "workloads.hpp"

namespace {

namespace bench = mmattn::bench;

bench::Workload structured_1536() {
  return {"4img_1024+512", mmattn::SequenceLayout::images_then_text(4, 16, 16, 512),
          mmattn::RegionPolicy::structured(bench::decoder_window()), {bench::Strategy::structured}};
}

void BM_ThreadScaling(benchmark::State& state) {
  const int threads = bench::set_threads(state, static_cast<int>(state.range(0)));
  const bench::Workload w = structured_1536();
  bench::Operands& x = bench::shared_operands(w.tokens());
  const bench::StrategyRun one = bench::make_strategy(bench::Strategy::structured, w, /*threads=*/1, x);
  // The baseline runs with Eigen at one thread as well: in an OpenMP team of one, Eigen sees no
  // team and would split each of the kernel's small products over set_threads' count (this is
  // where the baseline is first measured when a filter skips threads:1).
  bench::set_threads(1);
  const double one_thread_s = bench::cached_seconds("structured/threads:1", one.run);
  bench::set_threads(threads);
  const bench::StrategyRun dense = bench::make_strategy(bench::Strategy::dense, w, threads, x);
  const double dense_s = bench::cached_seconds("dense/threads:" + std::to_string(threads), dense.run);

  const bench::StrategyRun r = bench::make_strategy(bench::Strategy::structured, w, threads, x);
  bench::run_strategy_benchmark(state, r, bench::workload_config(w), x, dense_s);
  state.counters["speedup_vs_1thread"] = benchmark::Counter(one_thread_s, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["parallel_efficiency"] =
      benchmark::Counter(one_thread_s / threads, benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_ThreadScaling)
    ->ArgName("threads")
    ->DenseRange(1, std::max(1, static_cast<int>(std::thread::hardware_concurrency())))
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
