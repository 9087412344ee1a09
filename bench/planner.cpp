// Plan building and plan statistics at a multi-image prefill shape: 8 images of 32 x 32 patches
// then 512 text tokens (8704 positions), default tiles (64 x 128). Planning runs once per layout,
// before any layer, so it must stay far below one attention call: the target is < 5 ms median for
// the structured rule. Single-threaded: the planner does not use the executor.
//
// Counters: blocks and query_tiles of the plan, and its efficiency (allowed / computed pairs).
//
//   ./build/bench/bench/planner --benchmark_repetitions=10 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include "mmattn/kernel/tile_traits.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"

namespace {

using mmattn::index_t;

constexpr index_t kImages = 8, kGrid = 32, kText = 512;

mmattn::SequenceLayout prefill_layout() {
  return mmattn::SequenceLayout::images_then_text(kImages, kGrid, kGrid, kText);
}

mmattn::PlanOptions options(mmattn::ImageTiling tiling) {
  mmattn::PlanOptions o;
  o.tiles = mmattn::DefaultTiles::sizes();
  o.image_tiling = tiling;
  return o;
}

void set_plan_counters(benchmark::State& state, const mmattn::Plan& plan, const mmattn::SequenceLayout& layout,
                       const mmattn::RegionPolicy& policy) {
  state.counters["blocks"] = benchmark::Counter(double(plan.blocks.size()));
  state.counters["query_tiles"] = benchmark::Counter(double(plan.query_tiles.size()));
  state.counters["efficiency"] = benchmark::Counter(mmattn::plan_stats(plan, layout, policy).efficiency());
}

void run_make_plan(benchmark::State& state, const mmattn::RegionPolicy& policy, mmattn::ImageTiling tiling) {
  const mmattn::SequenceLayout layout = prefill_layout();
  const mmattn::PlanOptions opts = options(tiling);
  for (auto _ : state) {
    mmattn::Plan plan = mmattn::make_plan(layout, policy, opts);
    benchmark::DoNotOptimize(plan.blocks.data());
    benchmark::ClobberMemory();
  }
  set_plan_counters(state, mmattn::make_plan(layout, policy, opts), layout, policy);
}

void BM_MakePlan_Structured_Automatic(benchmark::State& state) {
  run_make_plan(state, mmattn::RegionPolicy::structured(), mmattn::ImageTiling::automatic);
}
void BM_MakePlan_Structured_RowStrips(benchmark::State& state) {
  run_make_plan(state, mmattn::RegionPolicy::structured(), mmattn::ImageTiling::row_strips);
}
void BM_MakePlan_Structured_Patches(benchmark::State& state) {
  run_make_plan(state, mmattn::RegionPolicy::structured(), mmattn::ImageTiling::patches);
}
void BM_MakePlan_DecoderCausal(benchmark::State& state) {
  run_make_plan(state, mmattn::RegionPolicy::decoder_causal(), mmattn::ImageTiling::automatic);
}

void run_plan_stats(benchmark::State& state, const mmattn::RegionPolicy& policy) {
  const mmattn::SequenceLayout layout = prefill_layout();
  const mmattn::Plan plan = mmattn::make_plan(layout, policy, options(mmattn::ImageTiling::automatic));
  for (auto _ : state) {
    mmattn::PlanStats st = mmattn::plan_stats(plan, layout, policy);
    benchmark::DoNotOptimize(st);
  }
  set_plan_counters(state, plan, layout, policy);
}

void BM_PlanStats_Structured(benchmark::State& state) { run_plan_stats(state, mmattn::RegionPolicy::structured()); }
void BM_PlanStats_DecoderCausal(benchmark::State& state) {
  run_plan_stats(state, mmattn::RegionPolicy::decoder_causal());
}

}  // namespace

BENCHMARK(BM_MakePlan_Structured_Automatic)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_Structured_RowStrips)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_Structured_Patches)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_DecoderCausal)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanStats_Structured)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanStats_DecoderCausal)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
