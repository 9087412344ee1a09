// Every strategy on every workload of the issue, one Google Benchmark each:
//   BM_Strategy/<workload>/<strategy>
// workloads (image + text tokens): 1img_256+256, 4img_1024+512, 8img_2048+2048, 32img_8192+512,
// llava_2x576+512, qwen25vl_vision (one 36 x 52 image), gemma3_local (2 images of 16 x 16 + 2048
// text) and video (one video of 8 frames x 16 x 16 + 256 text); strategies: dense and causal
// FlashAttention (the global kernel), window+global (7 x 7 image windows inside a causal decoder),
// structured (RegionPolicy::structured: image window, text -> earlier images, causal text),
// qwen_window8 (the vision workload's partitioned 8 x 8 windows), gemma3_local
// (RegionPolicy::gemma3_local(1024): a causal band of 1024 positions, bidirectional inside each
// image), video_window3d (RegionPolicy::video_windows(Window3D::sliding(3, 7, 7)): the video sees a
// 3 x 7 x 7 window of itself, every other pair causal) and naive (N x N scores in memory, the
// model's mask; only where one N x N float matrix per thread fits in 64 MiB, so not on 32img).
//
// 32 heads, head_dim 128, float, 2 threads. Counters (workloads.hpp): GFLOPs on allowed pairs,
// GFLOPs_computed on computed pairs, efficiency, workspace_bytes (all threads), dense_ms and
// speedup_vs_dense (dense timed once per workload in this process; see workloads.hpp),
// peak_rss_MiB. For the side-by-side table with medians use comparison_table instead.
//
//   ./build/bench/bench/strategies --benchmark_out=strategies.json --benchmark_out_format=json
//   ./build/bench/bench/strategies --benchmark_filter='llava'
//   ./build/bench/bench/strategies --benchmark_filter='gemma3_local|video/'

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "workloads.hpp"

namespace {

namespace bench = mmattn::bench;

constexpr int kThreads = 2;  // the machine's cores

void BM_Strategy(benchmark::State& state, const bench::Workload* w, bench::Strategy s) {
  const int threads = bench::set_threads(state, kThreads);
  bench::Operands& x = bench::shared_operands(w->tokens(), w->heads, w->head_dim);
  const bench::StrategyRun dense = bench::make_strategy(bench::Strategy::dense, *w, threads, x);
  const double dense_s = bench::cached_seconds(w->name, dense.run);
  const bench::StrategyRun r = bench::make_strategy(s, *w, threads, x);
  bench::run_strategy_benchmark(state, r, bench::workload_config(*w), x, dense_s);
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(w->tokens()));
}

}  // namespace

int main(int argc, char** argv) {
  static const std::vector<bench::Workload> workloads = bench::workloads();
  for (const bench::Workload& w : workloads)
    for (bench::Strategy s : w.strategies)
      benchmark::RegisterBenchmark(("BM_Strategy/" + w.name + "/" + bench::strategy_name(s)).c_str(), BM_Strategy,
                                   &w, s)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
