// Decode: one new text token attends to a bf16 KV cache of 1k, 4k, 16k and 64k tokens holding
// images then text, under the structured policy (the token sees every image and all earlier text,
// so every cached K and V row is read once). 32 query heads, head_dim 128, MHA (32 KV heads) and
// GQA (8 KV heads); contiguous cache ([tokens, kv_heads, head_dim]) and paged (vLLM: blocks of
// 16 tokens, shuffled block table). Q and O are fp32. 2 threads.
//
// Decode is memory-bound, so the rate that matters is bytes of K and V read per second:
//   GBps       K/V bytes per call / time (counter, kIsIterationInvariantRate), GB = 1e9 B
//   copy_GBps  a plain 2-thread memcpy of a buffer of the same size, measured in the same process
//              just before (median of 5), counting bytes read + written (STREAM's convention:
//              the bytes that cross the memory bus; glibc's large memcpy stores non-temporally)
//   of_copy    GBps / copy_GBps
// BM_DecodeAlternatingWithCopy runs decode and that copy alternately, call by call, so the ratio
// holds on a host whose memory bandwidth drifts; BM_Copy and BM_Read time the two yardsticks as
// benchmarks of their own (read: a 2-thread sum).
// The cache: images of 16 x 16 patches (2 below 4k tokens, 4 from 4k), the rest text.
//
//   ./build/bench/bench/decode --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "mmattn/decode.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/paged_kv.hpp"

namespace {

using mmattn::index_t;
namespace bench = mmattn::bench;
using bf16 = Eigen::bfloat16;

constexpr index_t kHeads = 32, kHeadDim = 128, kPageTokens = 16;
constexpr int kThreads = 2;

mmattn::SequenceLayout cache_layout(index_t tokens) {
  const index_t images = tokens >= 4096 ? 4 : 2;
  return mmattn::SequenceLayout::images_then_text(images, 16, 16, tokens - images * 256);
}

// Cheap, seeded fill in [-1, 1): 64k-token MHA caches are 1 GiB, too much for mt19937.
void fill_bf16(std::vector<bf16>& data, std::uint32_t seed) {
  std::uint32_t x = seed * 2654435761u + 1;
  for (bf16& e : data) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    e = bf16(static_cast<float>(x >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

// One cache at a time (K and V, contiguous or paged), reused by consecutive benchmarks.
struct Cache {
  index_t tokens = 0, kv_heads = 0;
  bool paged = false;
  std::vector<bf16> k, v;  // [tokens, kv_heads, head_dim], or the pools [blocks, 16, kv_heads, head_dim]
  std::vector<std::int32_t> table;

  Cache(index_t tokens_, index_t kv_heads_, bool paged_) : tokens(tokens_), kv_heads(kv_heads_), paged(paged_) {
    const index_t blocks = (tokens + kPageTokens - 1) / kPageTokens;
    const index_t rows = paged ? blocks * kPageTokens : tokens;
    k.resize(static_cast<size_t>(rows * kv_heads * kHeadDim));
    v.resize(k.size());
    fill_bf16(k, 2);
    fill_bf16(v, 3);
    if (paged) {
      table.resize(static_cast<size_t>(blocks));
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), std::mt19937(7));
    }
  }
  double kv_bytes() const { return 2.0 * double(tokens) * double(kv_heads) * double(kHeadDim) * sizeof(bf16); }

  mmattn::TensorView<const bf16> contiguous(const std::vector<bf16>& x) const {
    return mmattn::view_thd<const bf16>(x.data(), tokens, kv_heads, kHeadDim);
  }
  mmattn::PagedKVView<const bf16> pages(const std::vector<bf16>& x) const {
    return mmattn::view_paged<const bf16>(x.data(), static_cast<index_t>(table.size()), kPageTokens, kv_heads,
                                          kHeadDim, table.data(), static_cast<index_t>(table.size()), tokens);
  }
};

Cache& shared_cache(index_t tokens, index_t kv_heads, bool paged) {
  static std::unique_ptr<Cache> held;
  if (!held || held->tokens != tokens || held->kv_heads != kv_heads || held->paged != paged) {
    held.reset();
    held = std::make_unique<Cache>(tokens, kv_heads, paged);
  }
  return *held;
}

// ---- the yardsticks --------------------------------------------------------------------------------

struct CopyBuffers {
  std::vector<char> src, dst;
  explicit CopyBuffers(size_t bytes) : src(bytes, 1), dst(bytes, 0) {}
};

// Each of 2 threads copies its half.
void copy_2_threads(CopyBuffers& b) {
  const size_t half = b.src.size() / 2;
#pragma omp parallel for num_threads(kThreads) schedule(static)
  for (int t = 0; t < 2; ++t) {
    const size_t n = t == 0 ? half : b.src.size() - half;
    std::memcpy(b.dst.data() + t * half, b.src.data() + t * half, n);
  }
}

// Median seconds of 5 copies after a warm-up (page faults are paid in the warm-up).
double copy_seconds(size_t bytes) {
  CopyBuffers b(bytes);
  copy_2_threads(b);
  std::vector<double> runs;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    copy_2_threads(b);
    runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(runs.begin(), runs.end());
  return runs[2];
}

void set_bandwidth_counters(benchmark::State& state, double kv_bytes) {
  const double copy_s = copy_seconds(static_cast<size_t>(kv_bytes));
  state.counters["GBps"] = benchmark::Counter(kv_bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GBps"] = benchmark::Counter(2.0 * kv_bytes * 1e-9 / copy_s);
  // (kv_bytes / copy rate) per call, over this benchmark's time per call: GBps / copy_GBps.
  state.counters["of_copy"] = benchmark::Counter(copy_s / 2.0, benchmark::Counter::kIsIterationInvariantRate);
}

// range(0) = cache tokens, range(1) = KV heads: the copy of the same bytes as that decode's K/V.
void BM_Copy(benchmark::State& state) {
  bench::set_threads(state, kThreads);
  const double bytes = 2.0 * double(state.range(0)) * double(state.range(1)) * kHeadDim * sizeof(bf16);
  CopyBuffers b(static_cast<size_t>(bytes));
  copy_2_threads(b);
  for (auto _ : state) {
    copy_2_threads(b);
    benchmark::DoNotOptimize(b.dst.data());
    benchmark::ClobberMemory();
  }
  state.counters["GBps"] = benchmark::Counter(2.0 * bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Reading alone (what decode must do): a 2-thread float sum over the same bytes.
void BM_Read(benchmark::State& state) {
  bench::set_threads(state, kThreads);
  const double bytes = 2.0 * double(state.range(0)) * double(state.range(1)) * kHeadDim * sizeof(bf16);
  const std::vector<float> data(static_cast<size_t>(bytes) / sizeof(float), 1.0f);
  const index_t n = static_cast<index_t>(data.size());
  for (auto _ : state) {
    float sum[2] = {0, 0};
#pragma omp parallel for num_threads(kThreads) schedule(static)
    for (int t = 0; t < 2; ++t) {
      const index_t a = t * (n / 2), len = t == 0 ? n / 2 : n - n / 2;
      sum[t] = Eigen::Map<const Eigen::ArrayXf>(data.data() + a, len).sum();
    }
    benchmark::DoNotOptimize(sum);
  }
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- decode ------------------------------------------------------------------------------------------

enum class Path { decode, forward };  // forward: MultimodalAttention::forward, no split, head by head

// range(0) = cache tokens, range(1) = KV heads, range(2) = paged.
template <Path kPath>
void BM_Decode(benchmark::State& state) {
  bench::set_threads(state, kThreads);
  const index_t tokens = state.range(0), kv_heads = state.range(1);
  const bool paged = state.range(2) != 0;
  Cache& cache = shared_cache(tokens, kv_heads, paged);
  const mmattn::SequenceLayout layout = cache_layout(tokens);
  const mmattn::RegionPolicy policy = mmattn::RegionPolicy::structured(mmattn::Window2D::sliding(7, 7));
  const mmattn::AttentionConfig cfg{kHeads, kv_heads, kHeadDim, {}};
  const std::vector<float> q = bench::random_floats(kHeads * kHeadDim, 1);
  std::vector<float> o(q.size());
  const auto qv = mmattn::view_thd(q.data(), 1, kHeads, kHeadDim);
  const auto ov = mmattn::view_thd(o.data(), 1, kHeads, kHeadDim);
  const mmattn::Executor executor = mmattn::Executor::openmp(kThreads);
  mmattn::PlanOptions options;
  options.query_begin = tokens - 1;
  const mmattn::MultimodalAttention<float> mm(cfg, layout, policy, options, executor);

  auto step = [&](const auto& k, const auto& v) {
    if constexpr (kPath == Path::decode) {
      mmattn::decode_attention(cfg, layout, policy, qv, k, v, ov, {}, {}, executor);  // plans the step too
    } else {
      mm.forward(qv, k, v, ov);
    }
  };
  for (auto _ : state) {
    if (paged)
      step(cache.pages(cache.k), cache.pages(cache.v));
    else
      step(cache.contiguous(cache.k), cache.contiguous(cache.v));
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  set_bandwidth_counters(state, cache.kv_bytes());
}
void BM_DecodeSplitKv(benchmark::State& state) { BM_Decode<Path::decode>(state); }
void BM_DecodeViaForward(benchmark::State& state) { BM_Decode<Path::forward>(state); }

// Decode and the copy of the same bytes alternating call by call, so both see the same machine
// (on a shared host the copy rate drifts by +-30% between benchmarks). The benchmark's time is
// decode's alone (manual time); copy_GBps counts bytes read + written, of_copy = GBps / copy_GBps
// over the same iterations.
void BM_DecodeAlternatingWithCopy(benchmark::State& state) {
  bench::set_threads(state, kThreads);
  const index_t tokens = state.range(0), kv_heads = state.range(1);
  const bool paged = state.range(2) != 0;
  Cache& cache = shared_cache(tokens, kv_heads, paged);
  const mmattn::SequenceLayout layout = cache_layout(tokens);
  const mmattn::RegionPolicy policy = mmattn::RegionPolicy::structured(mmattn::Window2D::sliding(7, 7));
  const mmattn::AttentionConfig cfg{kHeads, kv_heads, kHeadDim, {}};
  const std::vector<float> q = bench::random_floats(kHeads * kHeadDim, 1);
  std::vector<float> o(q.size());
  const auto qv = mmattn::view_thd(q.data(), 1, kHeads, kHeadDim);
  const auto ov = mmattn::view_thd(o.data(), 1, kHeads, kHeadDim);
  const mmattn::Executor executor = mmattn::Executor::openmp(kThreads);
  CopyBuffers copy(static_cast<size_t>(cache.kv_bytes()));
  copy_2_threads(copy);  // page faults outside the timing
  double decode_s = 0, copy_s = 0;
  using Clock = std::chrono::steady_clock;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    if (paged)
      mmattn::decode_attention(cfg, layout, policy, qv, cache.pages(cache.k), cache.pages(cache.v), ov, {}, {}, executor);
    else
      mmattn::decode_attention(cfg, layout, policy, qv, cache.contiguous(cache.k), cache.contiguous(cache.v), ov, {}, {},
                               executor);
    const auto t1 = Clock::now();
    copy_2_threads(copy);
    const auto t2 = Clock::now();
    benchmark::DoNotOptimize(o.data());
    benchmark::DoNotOptimize(copy.dst.data());
    benchmark::ClobberMemory();
    const double d = std::chrono::duration<double>(t1 - t0).count();
    decode_s += d, copy_s += std::chrono::duration<double>(t2 - t1).count();
    state.SetIterationTime(d);
  }
  const double n = double(state.iterations());
  state.counters["GBps"] = benchmark::Counter(cache.kv_bytes() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GBps"] = benchmark::Counter(n > 0 ? 2.0 * cache.kv_bytes() * 1e-9 * n / copy_s : 0.0);
  state.counters["of_copy"] = benchmark::Counter(decode_s > 0 ? (copy_s / 2.0) / decode_s : 0.0);
}

void decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "kv_heads", "paged"});
  for (const index_t kv : {index_t{32}, index_t{8}})
    for (const index_t paged : {index_t{0}, index_t{1}})
      for (const index_t n : {index_t{1024}, index_t{4096}, index_t{16384}, index_t{65536}}) b->Args({n, kv, paged});
}
void yardstick_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "kv_heads"});
  for (const index_t kv : {index_t{32}, index_t{8}})
    for (const index_t n : {index_t{1024}, index_t{4096}, index_t{16384}, index_t{65536}}) b->Args({n, kv});
}

BENCHMARK(BM_DecodeSplitKv)->Apply(decode_args)->UseRealTime()->Unit(benchmark::kMicrosecond);
// The plain prefill path on the same step, for comparison (16k, contiguous).
BENCHMARK(BM_DecodeViaForward)
    ->ArgNames({"tokens", "kv_heads", "paged"})
    ->Args({16384, 32, 0})
    ->Args({16384, 8, 0})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeAlternatingWithCopy)->Apply(decode_args)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Copy)->Apply(yardstick_args)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Read)->Apply(yardstick_args)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
