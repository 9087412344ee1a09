// Serving batches (batched_attention.hpp, cascade.hpp) against one call per sequence, on 2 threads.
//
// BM_BatchedPrefill/heads:H/mode:M — 16 sequences of 256..976 tokens (a 16 x 16 image, then text;
//   structured rule), GQA H/(H/4) x 128: mode 0 = 16 MultimodalAttention::forward calls, 1 = one
//   BatchedAttention::forward over packed Q/O. Compare mode 1 with mode 0 of the same heads.
// BM_CascadeDecode/sequences:S/mode:M — S sequences sharing a 1152-token image prefix (two 24 x 24
//   images) with 64-token text suffixes, one new token each, GQA 32/8 x 128, paged caches whose
//   prefix blocks are shared (vLLM's prefix caching): mode 0 = S decode_attention calls, 1 = one
//   BatchedAttention::forward_split_kv, 2 = CascadeAttention (the prefix once for all queries).
// BM_CascadePrefill/sequences:S/mode:M — the same, each sequence prefilling its 64-token suffix.
//
// Every benchmark checks its output against mode 0's before timing (exits 1 on a mismatch beyond
// 1e-4 relative), and reports `GFLOPs` over the pairs the masks allow.

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "bench_util.hpp"
#include "mmattn/batched_attention.hpp"
#include "mmattn/cascade.hpp"
#include "mmattn/decode.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/paged_kv.hpp"
#include "mmattn/plan_stats.hpp"

namespace mmattn::bench {
namespace {

constexpr int kThreads = 2;
constexpr index_t kDim = 128;

// max |a - b| / max |b| over two outputs; exits when it is not small (or NaN).
void require_close(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  double diff = 0, ref = 0;
  bool nan = a.size() != b.size();
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    nan = nan || std::isnan(a[i]) || std::isnan(b[i]);
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    ref = std::max(ref, double(std::abs(b[i])));
  }
  if (nan || diff > 1e-4 * std::max(ref, 1e-30)) {
    std::fprintf(stderr, "%s: output differs from one call per sequence (%g of %g)\n", what, diff, ref);
    std::exit(1);
  }
}

// ---- 16 sequences of 256..976 tokens --------------------------------------------------------------

void BM_BatchedPrefill(benchmark::State& state) {
  const index_t heads = state.range(0);
  const bool batched = state.range(1) == 1;
  set_threads(state, kThreads);
  const AttentionConfig cfg{heads, std::max<index_t>(1, heads / 4), kDim, {}};
  const Executor executor = Executor::openmp(kThreads);
  std::vector<BatchSequence> seqs;
  for (index_t i = 0; i < 16; ++i)
    seqs.push_back({SequenceLayout::images_then_text(1, 16, 16, 48 * i), RegionPolicy::structured(), 0, -1});
  const BatchedAttention batch(cfg, seqs, {}, executor);
  std::vector<MultimodalAttention<float>> alone;
  std::vector<std::vector<float>> k, v;
  std::vector<TensorView<const float>> kv_k, kv_v;
  double pairs = 0;
  for (index_t i = 0; i < 16; ++i) {
    const auto& s = seqs[static_cast<size_t>(i)];
    alone.emplace_back(cfg, s.layout, s.policy, PlanOptions{}, executor);
    pairs += static_cast<double>(alone.back().stats().allowed_pairs());
    const auto n = static_cast<size_t>(s.layout.size() * cfg.num_kv_heads * kDim);
    k.push_back(random_floats(n, 100 + static_cast<std::uint32_t>(i)));
    v.push_back(random_floats(n, 200 + static_cast<std::uint32_t>(i)));
  }
  for (index_t i = 0; i < 16; ++i) {
    const index_t n = seqs[static_cast<size_t>(i)].layout.size();
    kv_k.push_back(view_thd<const float>(k[static_cast<size_t>(i)].data(), n, cfg.num_kv_heads, kDim));
    kv_v.push_back(view_thd<const float>(v[static_cast<size_t>(i)].data(), n, cfg.num_kv_heads, kDim));
  }
  const index_t total = batch.total_queries();
  const std::vector<float> q = random_floats(static_cast<size_t>(total * heads * kDim), 7);
  std::vector<float> out(q.size()), check(q.size());
  const auto qv = view_thd<const float>(q.data(), total, heads, kDim);
  const std::vector<index_t>& cu = batch.query_offsets();

  auto separate = [&](std::vector<float>& o) {
    for (index_t i = 0; i < 16; ++i) {
      const index_t r0 = cu[static_cast<size_t>(i)], r1 = cu[static_cast<size_t>(i) + 1];
      alone[static_cast<size_t>(i)].forward(view_thd<const float>(q.data() + r0 * heads * kDim, r1 - r0, heads, kDim),
                                            kv_k[static_cast<size_t>(i)], kv_v[static_cast<size_t>(i)],
                                            view_thd(o.data() + r0 * heads * kDim, r1 - r0, heads, kDim));
    }
  };
  auto run = [&](std::vector<float>& o) {
    if (batched)
      batch.forward(qv, cu, kv_k, kv_v, view_thd(o.data(), total, heads, kDim));
    else
      separate(o);
  };
  separate(check);
  run(out);
  require_close(out, check, "BM_BatchedPrefill");
  for (auto _ : state) {
    run(out);
    benchmark::DoNotOptimize(out.data());
  }
  set_gflops(state, attention_flops(heads, kDim, pairs));
}
BENCHMARK(BM_BatchedPrefill)
    ->ArgNames({"heads", "mode"})
    ->ArgsProduct({{8, 32}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// ---- a shared 1152-token image prefix ------------------------------------------------------------

constexpr index_t kPrefix = 2 * 24 * 24, kSuffix = 64, kBlock = 16;

// Paged K and V for S sequences: the prefix's blocks once in the pool, shared by every table.
struct SharedPrefixCache {
  index_t sequences, tokens = kPrefix + kSuffix, kv_heads;
  std::vector<float> k_pool, v_pool;
  std::vector<std::vector<std::int32_t>> tables;

  SharedPrefixCache(index_t s, index_t kv) : sequences(s), kv_heads(kv) {
    const index_t prefix_blocks = kPrefix / kBlock, own = (tokens + kBlock - 1) / kBlock - prefix_blocks;
    const index_t blocks = prefix_blocks + s * own;
    k_pool = random_floats(static_cast<size_t>(blocks * kBlock * kv * kDim), 11);
    v_pool = random_floats(static_cast<size_t>(blocks * kBlock * kv * kDim), 12);
    for (index_t i = 0; i < s; ++i) {
      std::vector<std::int32_t> t;
      for (index_t b = 0; b < prefix_blocks; ++b) t.push_back(static_cast<std::int32_t>(b));
      for (index_t b = 0; b < own; ++b) t.push_back(static_cast<std::int32_t>(prefix_blocks + i * own + b));
      tables.push_back(t);
    }
  }
  index_t pool_blocks() const { return static_cast<index_t>(k_pool.size()) / (kBlock * kv_heads * kDim); }
  PagedKVView<const float> view(const std::vector<float>& pool, index_t i) const {
    const auto& t = tables[static_cast<size_t>(i)];
    return view_paged<const float>(pool.data(), pool_blocks(), kBlock, kv_heads, kDim, t.data(),
                                   static_cast<index_t>(t.size()), tokens);
  }
  // The prefix as one contiguous view: its blocks are the pool's first, in order.
  TensorView<const float> prefix(const std::vector<float>& pool) const {
    return view_thd<const float>(pool.data(), kPrefix, kv_heads, kDim);
  }
};

// mode 0: one call per sequence, 1: one batch, 2: the cascade.
void run_shared_prefix(benchmark::State& state, bool decode) {
  const index_t sequences = state.range(0), mode = state.range(1), heads = 32;
  set_threads(state, kThreads);
  const AttentionConfig cfg{heads, 8, kDim, {}};
  const Executor executor = Executor::openmp(kThreads);
  const SequenceLayout layout = SequenceLayout::images_then_text(2, 24, 24, kSuffix);
  const RegionPolicy policy = RegionPolicy::structured();
  const index_t queries = decode ? 1 : kSuffix;
  const std::vector<BatchSequence> seqs(static_cast<size_t>(sequences),
                                        BatchSequence{layout, policy, layout.size() - queries, -1});
  const BatchedAttention batch(cfg, seqs, {}, executor);
  const CascadeAttention cascade(cfg, kPrefix, seqs, {}, executor);
  const SharedPrefixCache cache(sequences, cfg.num_kv_heads);
  std::vector<PagedKVView<const float>> k, v;
  for (index_t i = 0; i < sequences; ++i) k.push_back(cache.view(cache.k_pool, i)), v.push_back(cache.view(cache.v_pool, i));
  PlanOptions range;
  range.query_begin = layout.size() - queries;
  const MultimodalAttention<float> alone(cfg, layout, policy, range, executor);  // prefill, one sequence

  const index_t total = batch.total_queries();
  const std::vector<float> q = random_floats(static_cast<size_t>(total * heads * kDim), 7);
  std::vector<float> out(q.size()), check(q.size());
  const auto qv = view_thd<const float>(q.data(), total, heads, kDim);
  const std::vector<index_t>& cu = batch.query_offsets();
  auto run = [&](index_t m, std::vector<float>& o) {
    const auto ov = view_thd(o.data(), total, heads, kDim);
    if (m == 2) return cascade.forward(qv, cu, cache.prefix(cache.k_pool), cache.prefix(cache.v_pool), k, v, ov);
    if (m == 1) return decode ? batch.forward_split_kv(qv, cu, k, v, ov) : batch.forward(qv, cu, k, v, ov);
    for (index_t i = 0; i < sequences; ++i) {
      const index_t r0 = cu[static_cast<size_t>(i)];
      const auto qi = view_thd<const float>(q.data() + r0 * heads * kDim, queries, heads, kDim);
      const auto oi = view_thd(o.data() + r0 * heads * kDim, queries, heads, kDim);
      if (decode)
        decode_attention(cfg, layout, policy, qi, k[static_cast<size_t>(i)], v[static_cast<size_t>(i)], oi, {}, {},
                         executor);
      else
        alone.forward(qi, k[static_cast<size_t>(i)], v[static_cast<size_t>(i)], oi);
    }
  };
  run(0, check);
  run(mode, out);
  require_close(out, check, decode ? "BM_CascadeDecode" : "BM_CascadePrefill");
  for (auto _ : state) {
    run(mode, out);
    benchmark::DoNotOptimize(out.data());
  }
  const double pairs = static_cast<double>(sequences) * static_cast<double>(plan_stats(batch.plan(0)).allowed_pairs());
  set_gflops(state, attention_flops(heads, kDim, pairs));
}

void BM_CascadeDecode(benchmark::State& state) { run_shared_prefix(state, /*decode=*/true); }
void BM_CascadePrefill(benchmark::State& state) { run_shared_prefix(state, /*decode=*/false); }

BENCHMARK(BM_CascadeDecode)
    ->ArgNames({"sequences", "mode"})
    ->ArgsProduct({{8, 32}, {0, 1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CascadePrefill)
    ->ArgNames({"sequences", "mode"})
    ->ArgsProduct({{8, 32}, {0, 1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mmattn::bench

BENCHMARK_MAIN();
