// Element types on the 1536-token structured workload: 4 images of 16 x 16 patches then 512 text
// tokens, 32 heads (MHA), head_dim 128, a 7 x 7 sliding image window, text sees every image and
// earlier text (RegionPolicy::structured). MultimodalAttention::forward with Q and O in fp32 and
// K/V in fp32, bf16 and fp16 side by side, plus everything in bf16. 2 threads.
//
// GFLOPs counts 4 * head_dim * heads per allowed (query, key) pair (bench_util.hpp); KV_MiB is the
// K and V storage, which the 16-bit types halve.
//
//   ./build/bench/bench/types --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <vector>

#include "bench_util.hpp"
#include "mmattn/multimodal_attention.hpp"

namespace {

using mmattn::index_t;
namespace bench = mmattn::bench;

constexpr index_t kHeads = 32, kHeadDim = 128;
constexpr int kThreads = 2;

mmattn::SequenceLayout layout() { return mmattn::SequenceLayout::images_then_text(4, 16, 16, 512); }

template <class T>
std::vector<T> convert(const std::vector<float>& f) {
  std::vector<T> out(f.size());
  for (size_t i = 0; i < f.size(); ++i) out[i] = T(f[i]);
  return out;
}

// TQO: Q and O; TKV: K and V.
template <class TQO, class TKV>
void BM_StructuredForward(benchmark::State& state) {
  bench::set_threads(state, kThreads);
  const mmattn::SequenceLayout l = layout();
  const index_t n = l.size(), count = n * kHeads * kHeadDim;
  const mmattn::AttentionConfig cfg{kHeads, kHeads, kHeadDim, {}};
  const mmattn::RegionPolicy policy = mmattn::RegionPolicy::structured(mmattn::Window2D::sliding(7, 7));
  const mmattn::MultimodalAttention<float> mm(cfg, l, policy, {mmattn::DefaultTiles::sizes()},
                                              mmattn::Executor::openmp(kThreads));
  const std::vector<TQO> q = convert<TQO>(bench::random_floats(static_cast<size_t>(count), 1));
  const std::vector<TKV> k = convert<TKV>(bench::random_floats(static_cast<size_t>(count), 2));
  const std::vector<TKV> v = convert<TKV>(bench::random_floats(static_cast<size_t>(count), 3));
  std::vector<TQO> o(static_cast<size_t>(count));
  const auto qv = mmattn::view_thd(q.data(), n, kHeads, kHeadDim);
  const auto kv = mmattn::view_thd(k.data(), n, kHeads, kHeadDim);
  const auto vv = mmattn::view_thd(v.data(), n, kHeads, kHeadDim);
  const auto ov = mmattn::view_thd(o.data(), n, kHeads, kHeadDim);
  for (auto _ : state) {
    mm.forward(qv, kv, vv, ov);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  bench::set_gflops(state, mmattn::PlanStats::flops(mm.stats().allowed_pairs(), cfg));
  state.counters["KV_MiB"] = benchmark::Counter(bench::to_mib(2.0 * double(count) * sizeof(TKV)));
}

using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;
void BM_KvFp32(benchmark::State& s) { BM_StructuredForward<float, float>(s); }
void BM_KvBf16(benchmark::State& s) { BM_StructuredForward<float, bf16>(s); }
void BM_KvFp16(benchmark::State& s) { BM_StructuredForward<float, f16>(s); }
void BM_AllBf16(benchmark::State& s) { BM_StructuredForward<bf16, bf16>(s); }
BENCHMARK(BM_KvFp32)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KvBf16)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KvFp16)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AllBf16)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
