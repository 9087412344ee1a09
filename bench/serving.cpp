// Serving: what a runtime embedding mmattn pays besides the kernels.
//   Forward/{openmp,pool}/threads:T  the 1536-token structured workload (4 images of 16 x 16 + 512
//       text, 32 heads x 128, 7 x 7 window, text causal) through Executor::openmp(T) and through a
//       runtime's own std::thread pool of T workers (Executor::custom). `vs_openmp` is the OpenMP
//       time of the same process (median of up to 3 calls) over this one's: 1 = equal, < 0.9 means
//       the pool is more than 10% slower.
//   ForwardPaired/threads:T  both executors alternately in every iteration, so drift on a shared
//       machine hits both alike: `openmp_ms`, `pool_ms` (medians) and `pool_over_openmp`.
//   DecodeStepPlan/generated:G  planning one decode step (DecodeStep: the plan every layer of the
//       step shares) after G generated tokens appended with extend_text, on 2 images of 24 x 24 +
//       64 prompt tokens; SegmentPerToken the same with add_text(1) per token (the old growth).
//   PlanCache/{hit,make_plan}  a repeated shape through PlanCache against planning it again.
//
//   serving [--benchmark_filter=...] [--benchmark_repetitions=5 --benchmark_report_aggregates_only]

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../tests/thread_pool.hpp"
#include "bench_util.hpp"
#include "mmattn/mmattn.hpp"
#include "mmattn/plan_cache.hpp"
#include "workloads.hpp"

namespace {

using namespace mmattn;

using test::ThreadPool;

SequenceLayout structured_1536() { return SequenceLayout::images_then_text(4, 16, 16, 512); }
RegionPolicy structured_policy() { return RegionPolicy::structured(bench::decoder_window()); }
AttentionConfig config_32x128() { return AttentionConfig{bench::kHeads, bench::kHeads, bench::kHeadDim, {}}; }

// One forward of the structured workload on `executor`.
std::function<void()> forward_on(const Executor& executor, bench::Operands& x) {
  auto attention = std::make_shared<const MultimodalAttention<float>>(config_32x128(), structured_1536(),
                                                                      structured_policy(), PlanOptions{}, executor);
  return [attention, &x] { attention->forward(x.qv(), x.kv(), x.vv(), x.ov()); };
}

double allowed_pairs() {
  const SequenceLayout layout = structured_1536();
  const RegionPolicy policy = structured_policy();
  double pairs = 0;
  for (index_t qs = 0; qs < layout.num_segments(); ++qs)
    for (index_t ks = 0; ks < layout.num_segments(); ++ks) {
      const Segment& q = layout.segment(qs);
      pairs += static_cast<double>(policy.pair(layout, qs, ks).count(q.start, q.end()));
    }
  return pairs;
}

void BM_Forward(benchmark::State& state, bool pool) {
  const int threads = static_cast<int>(state.range(0));
  bench::Operands& x = bench::shared_operands(structured_1536().size());
  const double openmp_s = bench::cached_seconds("openmp/threads:" + std::to_string(threads),
                                                forward_on(Executor::openmp(threads), x));
  ThreadPool workers(threads);
  const std::function<void()> run = forward_on(pool ? workers.executor() : Executor::openmp(threads), x);
  run();  // warm-up: per-thread scratch
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(x.o.data());
    benchmark::ClobberMemory();
  }
  bench::set_gflops(state, bench::attention_flops(bench::kHeads, bench::kHeadDim, allowed_pairs()));
  state.counters["openmp_ms"] = benchmark::Counter(1e3 * openmp_s);
  state.counters["vs_openmp"] = benchmark::Counter(openmp_s, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_ForwardPaired(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  bench::Operands& x = bench::shared_operands(structured_1536().size());
  ThreadPool workers(threads);
  const std::function<void()> omp = forward_on(Executor::openmp(threads), x);
  const std::function<void()> pool = forward_on(workers.executor(), x);
  omp();  // warm-up, and the check: same work split, so the pool's output has the same bits
  const std::vector<float> omp_out = x.o;
  pool();
  if (x.o != omp_out) state.SkipWithError("the pool's output differs from OpenMP's");
  std::vector<double> omp_s, pool_s;
  for (auto _ : state) {
    const bool pool_first = omp_s.size() % 2 == 1;  // alternate the order too
    if (pool_first) pool_s.push_back(bench::time_seconds(pool));
    omp_s.push_back(bench::time_seconds(omp));
    if (!pool_first) pool_s.push_back(bench::time_seconds(pool));
    benchmark::DoNotOptimize(x.o.data());
  }
  const double o = bench::median(omp_s), p = bench::median(pool_s);
  state.counters["openmp_ms"] = benchmark::Counter(1e3 * o);
  state.counters["pool_ms"] = benchmark::Counter(1e3 * p);
  state.counters["pool_over_openmp"] = benchmark::Counter(p / o);
}

// 2 images of 24 x 24 and a 64-token prompt, then `generated` tokens.
SequenceLayout decode_layout(index_t generated, bool segment_per_token) {
  SequenceLayout layout = SequenceLayout::images_then_text(2, 24, 24, 64);
  for (index_t t = 0; t < generated; ++t) segment_per_token ? layout.add_text(1) : layout.extend_text(1);
  return layout;
}

void BM_DecodeStepPlan(benchmark::State& state, bool segment_per_token) {
  const SequenceLayout layout = decode_layout(state.range(0), segment_per_token);
  const RegionPolicy policy = structured_policy();
  std::size_t blocks = 0;
  for (auto _ : state) {
    const DecodeStep step(layout, policy, /*new_tokens=*/1);
    blocks = step.plan().blocks.size();
    benchmark::DoNotOptimize(blocks);
  }
  state.counters["segments"] = benchmark::Counter(static_cast<double>(layout.num_segments()));
  state.counters["blocks"] = benchmark::Counter(static_cast<double>(blocks));
}

void BM_PlanCache(benchmark::State& state, bool cached) {
  const SequenceLayout layout = structured_1536();
  const RegionPolicy policy = structured_policy();
  PlanCache cache;
  for (auto _ : state) {
    if (cached) {
      benchmark::DoNotOptimize(cache.get(layout, policy));
    } else {
      benchmark::DoNotOptimize(make_plan(layout, policy));
    }
  }
  state.counters["hits"] = benchmark::Counter(static_cast<double>(cache.hits()));
}

}  // namespace

BENCHMARK_CAPTURE(BM_Forward, openmp, false)->Arg(1)->Arg(2)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Forward, pool, true)->Arg(1)->Arg(2)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ForwardPaired)->Arg(2)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(20);
BENCHMARK_CAPTURE(BM_DecodeStepPlan, extend_text, false)->Arg(1)->Arg(1024)->Arg(32768)->ArgName("generated")
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_DecodeStepPlan, segment_per_token, true)->Arg(1)->Arg(1024)->ArgName("generated")
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PlanCache, hit, true)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PlanCache, make_plan, false)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
