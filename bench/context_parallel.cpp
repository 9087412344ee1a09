// Context parallelism, plan only (distributed/context_parallel_plan.hpp): how evenly R ranks share
// a long video prompt's FLOPs, and how many K/V rows each receives, split by FLOPs against the
// split by position a runtime makes without a planner (each rank computes the queries it holds)
// and against ring attention (every shard passes every rank). Pure arithmetic on the plan: the
// figures do not depend on the machine, so the README quotes them.
//
//   context_parallel [frames] [grid] [text] [ranks...]   defaults: 62 32 32... see usage()
//
// The layout: one video of `frames` frames of grid x grid patches, then `text` tokens of text
// (a question about the video), under video_windows(Window3D::sliding(3, 7, 7)): the video sees a
// 3 x 7 x 7 window of itself, the text everything before it, causally.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/distributed/context_parallel_plan.hpp"
#include "mmattn/mmattn.hpp"

namespace {

using namespace mmattn;

void usage(const char* argv0) {
  std::printf(
      "usage: %s [frames=62] [grid=32] [text=2048] [ranks...=4 16]\n"
      "  plans one video of frames x grid x grid patches + text under a 3 x 7 x 7 video window, and prints\n"
      "  per-rank FLOP balance and K/V rows received for the FLOP split, the position split and ring\n"
      "  attention (32 heads of 128, K/V in bf16 for the byte figures); --smoke: a tiny layout\n",
      argv0);
}

index_t parse(const char* s, const char* argv0) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || v <= 0) {
    std::fprintf(stderr, "context_parallel: '%s' is not a positive integer\n", s);
    usage(argv0);
    std::exit(2);
  }
  return static_cast<index_t>(v);
}

struct Row {
  double imbalance, spread, kv_mean, kv_max, q_max;
};

Row summarise(const ContextParallelPlan& cp, bool ring) {
  Row r{cp.flop_imbalance(), cp.flop_spread(), 0, 0, 0};
  for (index_t i = 0; i < cp.num_ranks(); ++i) {
    const double kv = double(ring ? cp.ring_keys_received(i) : cp.rank(i).keys_received);
    r.kv_mean += kv / double(cp.num_ranks());
    r.kv_max = std::max(r.kv_max, kv);
    r.q_max = std::max(r.q_max, ring ? 0.0 : double(cp.rank(i).queries_received));
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  index_t frames = 62, grid = 32, text = 2048;
  std::vector<index_t> ranks;
  std::vector<std::string> args(argv + 1, argv + argc);
  int positional = 0;
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") return usage(argv[0]), 0;
    if (a == "--smoke") {
      frames = 4, grid = 8, text = 64;
      continue;
    }
    const index_t v = parse(a.c_str(), argv[0]);
    if (positional == 0) frames = v;
    else if (positional == 1) grid = v;
    else if (positional == 2) text = v;
    else ranks.push_back(v);
    ++positional;
  }
  if (ranks.empty()) ranks = {4, 16};

  const SequenceLayout layout = SequenceLayout().add_video(frames, grid, grid).add_text(text);
  const RegionPolicy policy = RegionPolicy::video_windows(Window3D::sliding(3, 7, 7));
  const Plan plan = make_plan(layout, policy);
  const AttentionConfig cfg{/*num_heads=*/32, /*num_kv_heads=*/32, /*head_dim=*/128, /*scale=*/{}};
  const index_t bf16_bytes = 2;
  const double kv_row_mib = double(2 * cfg.num_kv_heads * cfg.head_dim * bf16_bytes) / (1024.0 * 1024.0);

  std::printf("video %lld x %lld x %lld + text %lld = %lld tokens, video_windows(3 x 7 x 7), %.3g GFLOP "
              "(32 heads of 128)\n\n",
              static_cast<long long>(frames), static_cast<long long>(grid), static_cast<long long>(grid),
              static_cast<long long>(text), static_cast<long long>(plan.key_tokens),
              PlanStats::flops(plan_stats(plan).computed_pairs(), cfg) * 1e-9);
  std::printf("| ranks | split | FLOPs max/mean - 1 | FLOPs (max - min)/max | K/V rows in per rank, mean | max | "
              "K/V MiB in, max (bf16) | Q rows in, max |\n|---|---|---|---|---|---|---|---|\n");
  for (const index_t r : ranks) {
    if (r > plan.key_tokens) {
      std::fprintf(stderr, "context_parallel: %lld ranks for %lld tokens\n", static_cast<long long>(r),
                   static_cast<long long>(plan.key_tokens));
      return 2;
    }
    const ContextParallelPlan by_position = partition_plan(plan, r, CpSplit::by_position);
    const ContextParallelPlan chosen = partition_plan(plan, r, CpSplit::automatic, {}, CpRowBytes(cfg, bf16_bytes));
    const std::string chosen_name = std::string("automatic (") + cp_split_name(chosen.split) + ")";
    std::vector<std::pair<std::string, Row>> rows = {{chosen_name, summarise(chosen, false)}};
    for (CpSplit s : {CpSplit::work_cut, CpSplit::query_home, CpSplit::key_home})
      if (s != chosen.split) rows.emplace_back(cp_split_name(s), summarise(partition_plan(plan, r, s), false));
    rows.emplace_back("by_position (no planner)", summarise(by_position, false));
    rows.emplace_back("ring attention", summarise(by_position, true));
    for (const auto& [name, row] : rows)
      std::printf("| %lld | %s | %.2f%% | %.2f%% | %.0f | %.0f | %.1f | %.0f |\n", static_cast<long long>(r),
                  name.c_str(), 100.0 * row.imbalance, 100.0 * row.spread, row.kv_mean, row.kv_max,
                  row.kv_max * kv_row_mib, row.q_max);
  }
  std::printf("\n(ring attention computes what the position split does: its FLOP columns are that split's)\n\n");
  std::printf("%s", context_parallel_report(partition_plan(plan, ranks.front(), CpSplit::automatic, {}, CpRowBytes(cfg, bf16_bytes)), cfg, bf16_bytes).c_str());
  return 0;
}
