// The R-rank split of a plan (distributed/context_parallel_plan.hpp) and one rank's arithmetic
// (distributed/rank_attention.hpp), without MPI: properties of the partition over random plans
// against brute-force sets of positions and the mask predicate, and the whole split-compute-merge
// simulated in one process (rows copied where MPI would send them) against the reference.
// tests/mpi/ runs the same through MPI on 2 and 4 processes.

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "mmattn/distributed/context_parallel_plan.hpp"
#include "mmattn/distributed/rank_attention.hpp"
#include "mmattn/mmattn.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

using namespace cases;

// automatic last: it is checked against work_cut's balance.
constexpr CpSplit kSplits[] = {CpSplit::work_cut, CpSplit::query_home, CpSplit::key_home, CpSplit::by_position,
                               CpSplit::automatic};

// A plan over every query of the case's layout (context parallelism splits whole prefills).
Plan whole_plan(PlanCase& c) {
  c.options.query_begin = 0;
  c.options.query_end = -1;
  return make_plan(c.layout, c.policy, c.options);
}

std::vector<index_t> random_bounds(std::mt19937& gen, index_t tokens, index_t ranks) {
  std::vector<index_t> cuts;
  while (static_cast<index_t>(cuts.size()) < ranks - 1) {
    const index_t c = uniform(gen, 1, tokens - 1);
    if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(tokens);
  return cuts;
}

std::vector<char> as_flags(const std::vector<PositionRange>& ranges, index_t tokens) {
  std::vector<char> f(static_cast<size_t>(tokens), 0);
  for (const PositionRange& r : ranges)
    for (index_t p = r.begin; p < r.end; ++p) f[static_cast<size_t>(p)] = 1;
  return f;
}

bool normalised(const std::vector<PositionRange>& ranges) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].begin >= ranges[i].end) return false;
    if (i > 0 && ranges[i].begin <= ranges[i - 1].end) return false;
  }
  return true;
}

void check_partition(const ContextParallelPlan& cp, const std::string& what) {
  const Plan& plan = cp.plan;
  const index_t n = plan.key_tokens, ranks = cp.num_ranks();
  SCOPED_TRACE(what);
  // Every block of every tile on exactly one rank; every tile on some rank.
  std::vector<int> block_seen(plan.blocks.size(), 0), tile_seen(plan.query_tiles.size(), 0);
  index_t total = 0, max_block = 0;
  for (const QueryTile& t : plan.query_tiles) {
    total += t.computed_pairs;
    for (index_t b = t.block_begin; b < t.block_end; ++b)
      max_block = std::max(max_block, t.queries.size() * plan.blocks[static_cast<size_t>(b)].keys.size());
  }
  index_t sum = 0;
  for (index_t r = 0; r < ranks; ++r) {
    const RankWork& w = cp.rank(r);
    index_t pairs = 0;
    for (const CpWorkItem& item : w.items) {
      const QueryTile& t = plan.query_tiles[static_cast<size_t>(item.tile)];
      ++tile_seen[static_cast<size_t>(item.tile)];
      ASSERT_TRUE(item.block_begin >= t.block_begin && item.block_end <= t.block_end && item.block_begin <= item.block_end);
      index_t item_pairs = 0;
      for (index_t b = item.block_begin; b < item.block_end; ++b) {
        ++block_seen[static_cast<size_t>(b)];
        item_pairs += t.queries.size() * plan.blocks[static_cast<size_t>(b)].keys.size();
      }
      EXPECT_EQ(item.computed_pairs, item_pairs);
      pairs += item_pairs;
      if (cp.split == CpSplit::by_position) {
        EXPECT_EQ(cp.owner(t.queries.first()), r);
        EXPECT_TRUE(item.block_begin == t.block_begin && item.block_end == t.block_end);
      }
    }
    EXPECT_EQ(w.computed_pairs, pairs);
    sum += pairs;
    if (cp.split == CpSplit::work_cut) {  // each cut lands within a block of its target
      EXPECT_LE(std::abs(double(pairs) - double(total) / double(ranks)), 2.0 * double(max_block) + 1.0)
          << "rank " << r;
    }
  }
  EXPECT_EQ(sum, total);
  if (cp.split == CpSplit::query_home || cp.split == CpSplit::key_home) {  // no block can move and help
    index_t lo = cp.max_computed_pairs();
    for (const RankWork& w : cp.ranks) lo = std::min(lo, w.computed_pairs);
    EXPECT_LE(cp.max_computed_pairs() - lo, max_block);
  }
  for (size_t b = 0; b < block_seen.size(); ++b) EXPECT_EQ(block_seen[b], 1) << "block " << b;
  for (size_t t = 0; t < tile_seen.size(); ++t) EXPECT_GE(tile_seen[t], 1) << "tile " << t;

  // Positions read and computed, brute force; rows moved, from them.
  index_t q_in = 0, q_out = 0, kv_in = 0, kv_out = 0;
  for (index_t r = 0; r < ranks; ++r) {
    const RankWork& w = cp.rank(r);
    EXPECT_TRUE(normalised(w.queries) && normalised(w.keys));
    std::vector<char> qf(static_cast<size_t>(n), 0), kf(static_cast<size_t>(n), 0);
    for (const CpWorkItem& item : w.items) {
      const QueryTile& t = plan.query_tiles[static_cast<size_t>(item.tile)];
      for (index_t i = 0; i < t.queries.size(); ++i) qf[static_cast<size_t>(t.queries.at(i))] = 1;
      for (index_t b = item.block_begin; b < item.block_end; ++b) {
        const TokenRect& keys = plan.blocks[static_cast<size_t>(b)].keys;
        for (index_t j = 0; j < keys.size(); ++j) kf[static_cast<size_t>(keys.at(j))] = 1;
      }
    }
    EXPECT_EQ(as_flags(w.queries, n), qf) << "rank " << r;
    EXPECT_EQ(as_flags(w.keys, n), kf) << "rank " << r;
    index_t q_foreign = 0, k_foreign = 0;
    for (index_t p = 0; p < n; ++p) {
      const bool mine = p >= w.shard.begin && p < w.shard.end;
      q_foreign += qf[static_cast<size_t>(p)] && !mine;
      k_foreign += kf[static_cast<size_t>(p)] && !mine;
    }
    EXPECT_EQ(w.queries_received, q_foreign) << "rank " << r;
    EXPECT_EQ(w.keys_received, k_foreign) << "rank " << r;
    EXPECT_LE(w.keys_received, cp.ring_keys_received(r));
    q_in += w.queries_received, q_out += w.queries_sent, kv_in += w.keys_received, kv_out += w.keys_sent;
  }
  EXPECT_EQ(q_in, q_out);
  EXPECT_EQ(kv_in, kv_out);
}

TEST(ContextParallelPlan, PartitionCoversEveryBlockOnceAndListsWhatItReads) {
  for (std::uint32_t seed = 1; seed <= (kSlowBuild ? 60u : 300u); ++seed) {
    PlanCase c = random_plan_case(seed);
    const Plan plan = whole_plan(c);
    std::mt19937 gen(seed * 7919u);
    const index_t n = plan.key_tokens;
    const index_t ranks = uniform(gen, 1, std::min<index_t>(n, 9));
    const std::vector<index_t> bounds = gen() % 2 ? std::vector<index_t>{} : random_bounds(gen, n, ranks);
    double cut_imbalance = 0;
    for (CpSplit split : kSplits) {
      const ContextParallelPlan cp = partition_plan(plan, ranks, split, bounds);
      ASSERT_EQ(cp.num_ranks(), ranks);
      const std::string what = describe(c) + "\n  ranks " + std::to_string(ranks) + " " + cp_split_name(split);
      check_partition(cp, what);
      if (split == CpSplit::work_cut) cut_imbalance = cp.flop_imbalance();
      if (split == CpSplit::automatic) {
        EXPECT_NE(cp.split, CpSplit::automatic) << what;
        EXPECT_NE(cp.split, CpSplit::by_position) << what;
        EXPECT_LE(cp.flop_imbalance(), std::max(cut_imbalance, 0.01) + 1e-12) << what;
      }
      if (::testing::Test::HasFailure()) return;
    }
  }
}

// Every pair the mask allows is computed by exactly one rank, and that rank lists its query and
// key: the predicate, not the plan, says which pairs must be there.
TEST(ContextParallelPlan, EveryAllowedPairOnExactlyOneRank) {
  for (std::uint32_t seed = 1; seed <= (kSlowBuild ? 30u : 120u); ++seed) {
    PlanCase c = random_plan_case(seed);
    const Plan plan = whole_plan(c);
    const index_t n = plan.key_tokens;
    std::mt19937 gen(seed);
    const ContextParallelPlan cp = partition_plan(plan, uniform(gen, 1, std::min<index_t>(n, 6)));
    std::vector<int> covered(static_cast<size_t>(n * n), 0);
    for (const RankWork& w : cp.ranks) {
      const std::vector<char> qf = as_flags(w.queries, n), kf = as_flags(w.keys, n);
      for (const CpWorkItem& item : w.items) {  // items index the partitioned plan: its blocks are pieces
        const QueryTile& t = cp.plan.query_tiles[static_cast<size_t>(item.tile)];
        for (index_t b = item.block_begin; b < item.block_end; ++b)
          for (index_t i = 0; i < t.queries.size(); ++i)
            for (index_t j = 0; j < cp.plan.blocks[static_cast<size_t>(b)].keys.size(); ++j) {
              ASSERT_LE(cp.plan.blocks[static_cast<size_t>(b)].keys.size(), cp.plan.tiles.key);
              const index_t q = t.queries.at(i), k = cp.plan.blocks[static_cast<size_t>(b)].keys.at(j);
              ASSERT_TRUE(qf[static_cast<size_t>(q)] && kf[static_cast<size_t>(k)]);
              ++covered[static_cast<size_t>(q * n + k)];
            }
      }
    }
    for (index_t q = 0; q < n; ++q)
      for (index_t k = 0; k < n; ++k)
        if (allowed(c.layout, c.policy, q, k)) {
          ASSERT_EQ(covered[static_cast<size_t>(q * n + k)], 1) << describe(c) << "\n  pair (" << q << ", " << k << ")";
        }
  }
}

// The split, the ranks' arithmetic and the owners' merges, rows copied where MPI would send them.
Result simulate(const ContextParallelPlan& cp, const AttentionConfig& cfg, const Buffers& x, bool serial) {
  const index_t ranks = cp.num_ranks(), n = cp.plan.key_tokens;
  const CpRowShape row(cfg);
  const Executor executor = serial ? Executor::serial() : Executor::default_executor();
  std::vector<std::vector<float>> partial(static_cast<size_t>(ranks));
  for (index_t r = 0; r < ranks; ++r) {
    const RankWork& w = cp.rank(r);
    const index_t qn = detail::count_positions(w.queries), kn = detail::count_positions(w.keys);
    std::vector<float> q_rows(static_cast<size_t>((qn + 1) * row.q)), kv_rows(static_cast<size_t>((kn + 1) * row.kv));
    float* dst = q_rows.data();
    for (const PositionRange& pr : w.queries)
      for (index_t p = pr.begin; p < pr.end; ++p)
        for (index_t h = 0; h < cfg.num_heads; ++h)
          for (index_t d = 0; d < cfg.head_dim; ++d) *dst++ = x.q.view(p, h, d);
    dst = kv_rows.data();
    for (const PositionRange& pr : w.keys)
      for (index_t p = pr.begin; p < pr.end; ++p)
        for (const Tensor* t : {&x.k, &x.v})
          for (index_t h = 0; h < cfg.num_kv_heads; ++h)
            for (index_t d = 0; d < cfg.head_dim; ++d) *dst++ = t->view(p, h, d);
    partial[static_cast<size_t>(r)].assign(static_cast<size_t>(qn * row.partial), kNaN);
    compute_rank_partials(cp, r, cfg, q_rows.data(), kv_rows.data(), partial[static_cast<size_t>(r)].data(), executor);
  }
  Result out{Tensor(n, cfg.num_heads, cfg.head_dim), Lse(n, cfg.num_heads)};
  for (index_t owner = 0; owner < ranks; ++owner) {
    const PositionRange shard = cp.rank(owner).shard;
    std::vector<const float*> from(static_cast<size_t>(ranks), nullptr);
    for (index_t s = 0; s < ranks; ++s)
      if (!cp.queries_from(s, owner).empty())
        from[static_cast<size_t>(s)] =
            partial[static_cast<size_t>(s)].data() + rows_before(cp.rank(s).queries, shard.begin) * row.partial;
    TensorView<float> o = out.out.view;
    o.data += shard.begin * o.token_stride, o.tokens = shard.size();
    LseView l = out.lse.view;
    l.data += shard.begin * l.token_stride, l.tokens = shard.size();
    merge_rank_partials(cp, owner, cfg, from, o, l);
  }
  return out;
}

TEST(ContextParallelPlan, SimulatedRanksMatchTheReference) {
  for (std::uint32_t seed = 1; seed <= (kSlowBuild ? 25u : 100u); ++seed) {
    Case c = random_case(seed);
    const Plan plan = whole_plan(c);
    const index_t n = plan.key_tokens;
    const Buffers x = make_qkv(c.cfg, n, n, seed);
    const Result ref = run_reference(c.cfg, x, MaskPredicate{&c.layout, &c.policy});
    std::mt19937 gen(seed * 31u);
    const index_t ranks = uniform(gen, 1, std::min<index_t>(n, 6));
    const std::vector<index_t> bounds = gen() % 2 ? std::vector<index_t>{} : random_bounds(gen, n, ranks);
    for (CpSplit split : kSplits) {
      const ContextParallelPlan cp = partition_plan(plan, ranks, split, bounds);
      const Result got = simulate(cp, c.cfg, x, c.serial);
      EXPECT_LE(max_relative_error(got.out, ref.out), 1e-5)
          << describe(c) << "\n  ranks " << ranks << " " << cp_split_name(split);
      EXPECT_LE(max_lse_error(got.lse, ref.lse), 1e-5) << describe(c);
      if (::testing::Test::HasFailure()) return;
    }
  }
}

// The presets the MPI tests run, on layouts of their shape, with many ranks for few tokens so
// tiles are shared between ranks.
TEST(ContextParallelPlan, SimulatedPresetsMatchTheReference) {
  struct Preset {
    const char* name;
    SequenceLayout layout;
    RegionPolicy policy;
  };
  const Preset presets[] = {
      {"dense", SequenceLayout().add_text(37).add_image(5, 6).add_text(9), RegionPolicy::dense()},
      {"causal", SequenceLayout().add_image(6, 5).add_text(41), RegionPolicy::decoder_causal()},
      {"structured", SequenceLayout().add_image(7, 9).add_text(13).add_image(4, 6).add_text(20),
       RegionPolicy::structured(Window2D::sliding(3, 5))},
      {"gemma3_local", SequenceLayout().add_text(11).add_image(6, 6).add_text(40), RegionPolicy::gemma3_local(16)},
      {"video", SequenceLayout().add_text(5).add_video(4, 5, 6).add_text(17),
       RegionPolicy::video_windows(Window3D::sliding(3, 3, 3))},
  };
  const AttentionConfig cfg = make_config(4, 2, 16);
  for (const Preset& p : presets) {
    PlanOptions options;
    options.tiles = {8, 16};
    const Plan plan = make_plan(p.layout, p.policy, options);
    const index_t n = plan.key_tokens;
    const Buffers x = make_qkv(cfg, n, n, 11);
    const Result ref = run_reference(cfg, x, MaskPredicate{&p.layout, &p.policy});
    for (index_t ranks : {1, 2, 3, 4, 7, 16})
      for (CpSplit split : kSplits) {
        const ContextParallelPlan cp = partition_plan(plan, ranks, split);
        const Result got = simulate(cp, cfg, x, /*serial=*/false);
        EXPECT_LE(max_relative_error(got.out, ref.out), 1e-5) << p.name << " ranks " << ranks << " " << cp_split_name(split);
        EXPECT_LE(max_lse_error(got.lse, ref.lse), 1e-5) << p.name << " ranks " << ranks << " " << cp_split_name(split);
      }
  }
}

// The target: a 64k-token video prompt, per-rank FLOPs within 5% at 4 and 16 ranks, and
// never more K/V received than ring attention; a split by position leaves ranks idle there.
TEST(ContextParallelPlan, VideoPromptOf64kTokensIsBalanced) {
  const SequenceLayout layout = SequenceLayout().add_video(62, 32, 32).add_text(2048);
  const RegionPolicy policy = RegionPolicy::video_windows(Window3D::sliding(3, 7, 7));
  const Plan plan = make_plan(layout, policy);
  ASSERT_EQ(plan.key_tokens, 65536);
  for (index_t ranks : {4, 16}) {
    const ContextParallelPlan cp = partition_plan(plan, ranks);
    EXPECT_LT(cp.flop_spread(), 0.05) << ranks << " ranks";
    for (index_t r = 0; r < ranks; ++r) EXPECT_LE(cp.rank(r).keys_received, cp.ring_keys_received(r));
    const ContextParallelPlan contiguous = partition_plan(plan, ranks, CpSplit::by_position);
    EXPECT_GT(contiguous.flop_spread(), 0.5) << ranks << " ranks";
  }
}

TEST(ContextParallelPlan, RejectsBadInput) {
  const SequenceLayout layout = SequenceLayout().add_image(4, 4).add_text(8);
  const RegionPolicy policy = RegionPolicy::structured();
  const Plan plan = make_plan(layout, policy);
  EXPECT_TRUE(contains(error_message([&] { partition_plan(plan, 0); }), "ranks must be in [1, tokens = 24]"));
  EXPECT_TRUE(contains(error_message([&] { partition_plan(plan, 25); }), "ranks must be in [1, tokens = 24]"));
  EXPECT_TRUE(contains(error_message([&] { partition_plan(plan, 2, CpSplit::automatic, {0, 24}); }),
                       "need 3 shard bounds for 2 ranks"));
  EXPECT_TRUE(contains(error_message([&] { partition_plan(plan, 2, CpSplit::automatic, {0, 12, 20}); }),
                       "shard bounds must run from 0 to the layout's 24 tokens"));
  EXPECT_TRUE(contains(error_message([&] { partition_plan(plan, 3, CpSplit::automatic, {0, 12, 12, 24}); }),
                       "shard 1 is empty or reversed: [12, 12)"));
  PlanOptions chunk;
  chunk.query_begin = 16;
  const Plan suffix = make_plan(layout, policy, chunk);
  EXPECT_TRUE(contains(error_message([&] { partition_plan(suffix, 2); }), "must cover every query of its layout"));
  const ContextParallelPlan cp = partition_plan(plan, 2);
  ClusterModel bad;
  bad.bytes_per_second = 0;
  EXPECT_TRUE(contains(error_message([&] { estimate_time(cp, make_config(2, 2, 8), 4, bad); }), "positive rates"));
}

TEST(ContextParallelPlan, TimeModelAndReport) {
  const SequenceLayout layout = SequenceLayout().add_video(6, 8, 8).add_text(100);
  const RegionPolicy policy = RegionPolicy::video_windows(Window3D::sliding(3, 3, 3));
  const Plan plan = make_plan(layout, policy);
  const AttentionConfig cfg = make_config(8, 2, 64);
  ClusterModel cluster;
  cluster.latency_seconds = 0;
  // One rank: nothing moves, the time is the plan's FLOPs at the rate.
  const CpTimeEstimate one = estimate_time(partition_plan(plan, 1), cfg, 4, cluster);
  EXPECT_EQ(one.exchange_seconds, 0.0);
  EXPECT_EQ(one.return_seconds, 0.0);
  EXPECT_DOUBLE_EQ(one.compute_seconds, PlanStats::flops(plan_stats(plan).computed_pairs(), cfg) / cluster.flops_per_second);
  // Four ranks: the busiest direction of the busiest rank, at the link's rate.
  const ContextParallelPlan cp = partition_plan(plan, 4);
  const CpTimeEstimate four = estimate_time(cp, cfg, 2, cluster);
  double busiest = 0;
  for (const RankWork& w : cp.ranks)
    busiest = std::max({busiest, double(w.queries_received * 8 * 64 * 2 + w.keys_received * 2 * 2 * 64 * 2),
                        double(w.queries_sent * 8 * 64 * 2 + w.keys_sent * 2 * 2 * 64 * 2)});
  EXPECT_GT(busiest, 0.0);
  EXPECT_DOUBLE_EQ(four.exchange_seconds, busiest / cluster.bytes_per_second);
  EXPECT_DOUBLE_EQ(four.compute_seconds, PlanStats::flops(cp.max_computed_pairs(), cfg) / cluster.flops_per_second);
  cluster.latency_seconds = 1e-3;
  EXPECT_DOUBLE_EQ(estimate_time(cp, cfg, 2, cluster).exchange_seconds, four.exchange_seconds + 3e-3);

  const std::string report = context_parallel_report(cp, cfg, 2, cluster);
  EXPECT_TRUE(contains(report, "4 ranks, split ")) << report;
  for (const char* rank : {"\n  0 ", "\n  1 ", "\n  2 ", "\n  3 "}) EXPECT_TRUE(contains(report, rank)) << report;
  EXPECT_TRUE(contains(report, "exchange")) << report;
}

}  // namespace
}  // namespace mmattn::test
