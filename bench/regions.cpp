// Per-region kernels, each isolated by a layout and a policy that allows only that region, run
// through MultimodalAttention (plan built once, outside the timed loop):
//   BM_WindowSliding/grid/window       one grid x grid image, image -> itself in a sliding window
//                                      (NATTEN: shifted at borders), window 3..15 odd
//   BM_WindowPartitioned/grid/window   the same with partitioned windows (Swin, Qwen2.5-VL) 4, 8, 16
//   BM_CrossTextToImage/grid/text      one image then text; text -> image full, nothing else
//   BM_CrossImageToText/grid/text      the same layout; image -> text full, nothing else
//   BM_GlobalDense/tokens, BM_GlobalCausal/tokens   one text segment, 256 .. 4096 tokens
// Queries a region does not cover have no key blocks (their rows are written as zeros), so their
// cost is a Q load and a store; the computed-pair counters show what the region's blocks cost.
//
// 32 heads, head_dim 128, float, 2 threads. Counters (workloads.hpp): GFLOPs (allowed pairs),
// GFLOPs_computed, efficiency, workspace_bytes (all threads), dense_ms and speedup_vs_dense, where
// dense is RegionPolicy::dense() over the same layout, timed once per layout in this process.
//
//   ./build/bench/bench/regions --benchmark_filter=Window --benchmark_out=regions.json

#include <benchmark/benchmark.h>

#include <string>
#include <utility>

#include "workloads.hpp"

namespace {

using mmattn::index_t;
namespace bench = mmattn::bench;

constexpr int kThreads = 2;  // the machine's cores

// Runs `policy` over `layout` with the dense policy over the same layout as its yardstick.
void run_region(benchmark::State& state, const mmattn::SequenceLayout& layout, const mmattn::RegionPolicy& policy) {
  const int threads = bench::set_threads(state, kThreads);
  bench::Operands& x = bench::shared_operands(layout.size());
  const mmattn::AttentionConfig cfg{bench::kHeads, bench::kHeads, bench::kHeadDim, {}};
  const mmattn::Executor executor = mmattn::Executor::openmp(threads);
  const mmattn::PlanOptions options{mmattn::DefaultTiles::sizes()};

  std::string key;  // the layout, e.g. "img32x32+text256"
  for (const mmattn::Segment& s : layout.segments())
    key += (key.empty() ? "" : "+") +
           (s.is_text()    ? "text" + std::to_string(s.length)
            : s.is_image() ? "img" + std::to_string(s.rows) + "x" + std::to_string(s.cols)
                           : "video" + std::to_string(s.frames) + "x" + std::to_string(s.rows) + "x" +
                                 std::to_string(s.cols));
  const mmattn::MultimodalAttention<float> dense(cfg, layout, mmattn::RegionPolicy::dense(), options, executor);
  const double dense_s = bench::cached_seconds(key, [&] { dense.forward(x.qv(), x.kv(), x.vv(), x.ov()); });

  const mmattn::MultimodalAttention<float> att(cfg, layout, policy, options, executor);
  for (auto _ : state) {
    att.forward(x.qv(), x.kv(), x.vv(), x.ov());
    benchmark::DoNotOptimize(x.o.data());
    benchmark::ClobberMemory();
  }
  const mmattn::PlanStats st = att.stats();
  bench::set_attention_counters(state, cfg, static_cast<double>(st.allowed_pairs()),
                                static_cast<double>(st.computed_pairs()),
                                static_cast<double>(mmattn::workspace_bytes_per_thread(att.plan(), cfg.head_dim)) *
                                    threads,
                                dense_s);
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(layout.size()));
}

mmattn::RegionPolicy only(mmattn::Region region, mmattn::Rule rule) {
  mmattn::RegionPolicy p;  // every region none
  p.set(region, std::move(rule));
  return p;
}

constexpr mmattn::SegmentKind kImage = mmattn::SegmentKind::image, kText = mmattn::SegmentKind::text;

// ---- windowed -------------------------------------------------------------------------------------

void BM_WindowSliding(benchmark::State& state) {
  const index_t grid = state.range(0), w = state.range(1);
  run_region(state, mmattn::SequenceLayout().add_image(grid, grid),
             only(mmattn::Region::within(kImage), mmattn::Window2D::sliding(w, w)));
}
void BM_WindowPartitioned(benchmark::State& state) {
  const index_t grid = state.range(0), w = state.range(1);
  run_region(state, mmattn::SequenceLayout().add_image(grid, grid),
             only(mmattn::Region::within(kImage), mmattn::Window2D::partitioned(w, w)));
}
BENCHMARK(BM_WindowSliding)
    ->ArgNames({"grid", "window"})
    ->ArgsProduct({{16, 32, 64}, {3, 5, 7, 9, 11, 13, 15}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WindowPartitioned)
    ->ArgNames({"grid", "window"})
    ->ArgsProduct({{16, 32, 64}, {4, 8, 16}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// ---- cross ----------------------------------------------------------------------------------------

void BM_CrossTextToImage(benchmark::State& state) {
  const index_t grid = state.range(0), text = state.range(1);
  run_region(state, mmattn::SequenceLayout::images_then_text(1, grid, grid, text),
             only(mmattn::Region::across(kText, kImage), mmattn::Rule::full()));
}
void BM_CrossImageToText(benchmark::State& state) {
  const index_t grid = state.range(0), text = state.range(1);
  run_region(state, mmattn::SequenceLayout::images_then_text(1, grid, grid, text),
             only(mmattn::Region::across(kImage, kText), mmattn::Rule::full()));
}
BENCHMARK(BM_CrossTextToImage)
    ->ArgNames({"grid", "text"})
    ->ArgsProduct({{16, 32, 64}, {256, 1024}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CrossImageToText)
    ->ArgNames({"grid", "text"})
    ->ArgsProduct({{16, 32, 64}, {256, 1024}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// ---- global ---------------------------------------------------------------------------------------

void BM_GlobalDense(benchmark::State& state) {
  run_region(state, mmattn::SequenceLayout().add_text(state.range(0)), mmattn::RegionPolicy::dense());
}
void BM_GlobalCausal(benchmark::State& state) {
  run_region(state, mmattn::SequenceLayout().add_text(state.range(0)), mmattn::RegionPolicy::decoder_causal());
}
BENCHMARK(BM_GlobalDense)->ArgName("tokens")->RangeMultiplier(2)->Range(256, 4096)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GlobalCausal)->ArgName("tokens")->RangeMultiplier(2)->Range(256, 4096)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
