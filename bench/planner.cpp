// Plan building and plan statistics, default tiles (TileSizes{}, the kernels' DefaultTiles).
// Planning runs once per layout, before any layer, so it must stay far below one attention call:
// the target is < 5 ms median for the structured rule. Single-threaded: the planner does not use
// the executor.
//
//   BM_MakePlan_Structured_{Automatic,RowStrips,Patches}, BM_MakePlan_DecoderCausal,
//   BM_PlanStats_{Structured,DecoderCausal}
//       8 images of 32 x 32 patches then 512 text (8704 positions); RegionPolicy::structured()
//       (7 x 7 image windows) under each image tiling, and the causal decoder
//   BM_MakePlan_Video3D, BM_PlanStats_Video3D
//       one video of 16 frames x 32 x 32 then 256 text (16640 positions);
//       RegionPolicy::video_windows(Window3D::sliding(3, 7, 7))
//   BM_MakePlan_Gemma3Local
//       2 images of 16 x 16 then 2048 text (2560 positions); RegionPolicy::gemma3_local(1024)
//   BM_MakePlan_CustomPredicate, BM_MakePlan_CustomPredicate_BuiltinTwin
//       4 images of 16 x 16 then 1024 text (2048 positions); a causal band of 512 positions
//       over every pair, once as Rule::predicate (no arithmetic: the planner evaluates the
//       predicate on the pairs of every candidate block, O(N^2) at plan time) and once as the
//       built-in rule with the same mask (RegionPolicy::sliding_causal(512)). The predicate's key
//       blocks are cut only at segment starts (no cut points from arithmetic), so the two plans
//       differ a little; the difference in time is the price of the pairwise classification.
//
// Counters: blocks and query_tiles of the plan, its efficiency (allowed / computed pairs);
// tokens; for the custom predicate, predicate_calls per plan (of tokens^2 pairs).
//
//   ./build/bench/bench/planner --benchmark_repetitions=10 --benchmark_report_aggregates_only=true
//   ./build/bench/bench/planner --benchmark_filter='Video3D|Gemma3|Custom'

#include <benchmark/benchmark.h>

#include <memory>

#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"

namespace {

using mmattn::index_t;
using mmattn::RegionPolicy;
using mmattn::SequenceLayout;

// ---- layouts --------------------------------------------------------------------------------------

SequenceLayout images_prefill() { return SequenceLayout::images_then_text(/*images=*/8, 32, 32, /*text=*/512); }
SequenceLayout video_prefill() { return SequenceLayout().add_video(/*frames=*/16, 32, 32).add_text(256); }
SequenceLayout gemma3_prefill() { return SequenceLayout::images_then_text(/*images=*/2, 16, 16, /*text=*/2048); }
SequenceLayout custom_prefill() { return SequenceLayout::images_then_text(/*images=*/4, 16, 16, /*text=*/1024); }

RegionPolicy video_policy() { return RegionPolicy::video_windows(mmattn::Window3D::sliding(3, 7, 7)); }

// The band of the custom-predicate benchmarks: the query and the 511 positions before it.
constexpr index_t kCustomBand = 512;

mmattn::PlanOptions options(mmattn::ImageTiling tiling = mmattn::ImageTiling::automatic) {
  mmattn::PlanOptions o;
  o.image_tiling = tiling;
  return o;
}

// ---- benchmarks -----------------------------------------------------------------------------------

void set_plan_counters(benchmark::State& state, const mmattn::Plan& plan) {
  state.counters["blocks"] = benchmark::Counter(double(plan.blocks.size()));
  state.counters["query_tiles"] = benchmark::Counter(double(plan.query_tiles.size()));
  state.counters["efficiency"] = benchmark::Counter(mmattn::plan_stats(plan).efficiency());
  state.counters["tokens"] = benchmark::Counter(double(plan.layout.size()));
}

void run_make_plan(benchmark::State& state, const SequenceLayout& layout, const RegionPolicy& policy,
                   mmattn::ImageTiling tiling = mmattn::ImageTiling::automatic) {
  const mmattn::PlanOptions opts = options(tiling);
  for (auto _ : state) {
    mmattn::Plan plan = mmattn::make_plan(layout, policy, opts);
    benchmark::DoNotOptimize(plan.blocks.data());
    benchmark::ClobberMemory();
  }
  set_plan_counters(state, mmattn::make_plan(layout, policy, opts));
}

void BM_MakePlan_Structured_Automatic(benchmark::State& state) {
  run_make_plan(state, images_prefill(), RegionPolicy::structured(), mmattn::ImageTiling::automatic);
}
void BM_MakePlan_Structured_RowStrips(benchmark::State& state) {
  run_make_plan(state, images_prefill(), RegionPolicy::structured(), mmattn::ImageTiling::row_strips);
}
void BM_MakePlan_Structured_Patches(benchmark::State& state) {
  run_make_plan(state, images_prefill(), RegionPolicy::structured(), mmattn::ImageTiling::patches);
}
void BM_MakePlan_DecoderCausal(benchmark::State& state) {
  run_make_plan(state, images_prefill(), RegionPolicy::decoder_causal());
}
void BM_MakePlan_Video3D(benchmark::State& state) { run_make_plan(state, video_prefill(), video_policy()); }
void BM_MakePlan_Gemma3Local(benchmark::State& state) {
  run_make_plan(state, gemma3_prefill(), RegionPolicy::gemma3_local(1024));
}

// The custom predicate's plan. predicate_calls counts the evaluations of one plan, outside the
// timed loop; the counting itself is one increment per call, inside it as well.
void BM_MakePlan_CustomPredicate(benchmark::State& state) {
  const auto calls = std::make_shared<index_t>(0);
  RegionPolicy policy;
  policy.set_all(mmattn::Rule::predicate(
      [calls](index_t q, index_t k) {
        ++*calls;
        return k <= q && q - k < kCustomBand;
      },
      "causal band 512 (predicate)"));
  const SequenceLayout layout = custom_prefill();
  run_make_plan(state, layout, policy);
  *calls = 0;
  const mmattn::Plan plan = mmattn::make_plan(layout, policy, options());
  benchmark::DoNotOptimize(plan.blocks.data());
  state.counters["predicate_calls"] = benchmark::Counter(double(*calls));
}
void BM_MakePlan_CustomPredicate_BuiltinTwin(benchmark::State& state) {
  run_make_plan(state, custom_prefill(), RegionPolicy::sliding_causal(kCustomBand));
}

void run_plan_stats(benchmark::State& state, const SequenceLayout& layout, const RegionPolicy& policy) {
  const mmattn::Plan plan = mmattn::make_plan(layout, policy, options());
  for (auto _ : state) {
    mmattn::PlanStats st = mmattn::plan_stats(plan);
    benchmark::DoNotOptimize(st);
  }
  set_plan_counters(state, plan);
}

void BM_PlanStats_Structured(benchmark::State& state) {
  run_plan_stats(state, images_prefill(), RegionPolicy::structured());
}
void BM_PlanStats_DecoderCausal(benchmark::State& state) {
  run_plan_stats(state, images_prefill(), RegionPolicy::decoder_causal());
}
void BM_PlanStats_Video3D(benchmark::State& state) { run_plan_stats(state, video_prefill(), video_policy()); }

}  // namespace

BENCHMARK(BM_MakePlan_Structured_Automatic)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_Structured_RowStrips)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_Structured_Patches)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_DecoderCausal)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_Video3D)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_Gemma3Local)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_CustomPredicate)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MakePlan_CustomPredicate_BuiltinTwin)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanStats_Structured)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanStats_DecoderCausal)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanStats_Video3D)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
