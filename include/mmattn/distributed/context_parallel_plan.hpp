#pragma once
// Context parallelism: one prefill plan's work split across R ranks (processes, usually one per
// machine), each holding a contiguous shard of the positions' Q, K, V and O as a runtime would.
// Region-structured masks make a split by positions uneven (a windowed video row needs a few
// neighbouring rows of K/V, text needs all of it, and costs far more), so the work is split by
// computed FLOPs, at the granularity of the plan's (query tile, key block) pairs. A tile whose
// blocks land on several ranks is shared: each rank computes its rows over its blocks, and the
// rank holding the rows merges the parts exactly through their log-sum-exp (merge.hpp). For each
// rank the plan lists the exact positions its blocks read (the blocks' key rects, which the rule
// layer planned) and the queries it computes, so a rank receives only the K/V rows it reads and
// the Q rows it computes but does not hold, and sends partial output rows back to their owners.
// Needs no MPI: mpi_context_parallel.hpp runs it.
//
// Where the FLOPs go decides what moves. Three splits balance them; CpSplit::automatic plans all
// three and keeps the one whose busiest rank moves the fewest bytes (the time model's exchange and
// return phases), since which wins depends on the mask and the head shape: key_home moves the
// few Q rows of text that sees everything instead of the K/V it sees, query_home moves K/V
// where GQA makes them the smaller rows, work_cut keeps each rank's queries together.
//
// Time model (estimate_time), for sizing a cluster before running. Three phases, in sequence as
// the MPI layer runs them:
//   exchange = max_r max(in_r, out_r) / bandwidth + (R - 1) * latency
//              in_r / out_r: bytes of Q rows (heads * head_dim elements) and K+V rows
//              (2 * kv_heads * head_dim elements) rank r receives / sends
//   compute  = max_r 4 * head_dim * heads * computed_pairs_r / flops_per_second
//   return   = max_r max(in_r, out_r) / bandwidth + (R - 1) * latency
//              partial output rows: heads * (head_dim + 1) floats (O and log-sum-exp)
//   total    = exchange + compute + return
// Each rank's link is taken as full duplex with `bandwidth` each way and the switch as
// non-blocking, so a phase lasts as long as its busiest rank's busier direction.

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/config.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/token_rect.hpp"

namespace mmattn {

// Positions [begin, end).
struct PositionRange {
  index_t begin = 0, end = 0;
  index_t size() const { return end - begin; }
};

namespace detail {

// Sorted, disjoint, non-adjacent ranges covering the same positions.
inline std::vector<PositionRange> normalize_ranges(std::vector<PositionRange> v) {
  std::sort(v.begin(), v.end(), [](const PositionRange& a, const PositionRange& b) { return a.begin < b.begin; });
  std::vector<PositionRange> out;
  for (const PositionRange& r : v) {
    if (r.begin >= r.end) continue;
    if (!out.empty() && r.begin <= out.back().end)
      out.back().end = std::max(out.back().end, r.end);
    else
      out.push_back(r);
  }
  return out;
}

inline void append_rect(const TokenRect& rect, std::vector<PositionRange>& out) {
  for (index_t r = 0; r < rect.rows; ++r) {
    const index_t a = rect.start + r * rect.pitch;
    out.push_back({a, a + rect.cols});
  }
}

// The parts of normalised `ranges` inside `window`.
inline std::vector<PositionRange> clip_ranges(const std::vector<PositionRange>& ranges, PositionRange window) {
  std::vector<PositionRange> out;
  auto it = std::upper_bound(ranges.begin(), ranges.end(), window.begin,
                             [](index_t p, const PositionRange& r) { return p < r.end; });
  for (; it != ranges.end() && it->begin < window.end; ++it)
    out.push_back({std::max(it->begin, window.begin), std::min(it->end, window.end)});
  return out;
}

inline index_t count_positions(const std::vector<PositionRange>& ranges) {
  index_t n = 0;
  for (const PositionRange& r : ranges) n += r.size();
  return n;
}

}  // namespace detail

// How the work is split.
enum class CpSplit : unsigned char {
  automatic,    // of the three balanced splits below, the one whose busiest rank moves the fewest
                // bytes (a rebalanced one only when within 1% of the mean or as even as work_cut)
  work_cut,     // the work list (tiles in plan order, their blocks in order) cut into R runs of equal FLOPs
  query_home,   // each tile on the rank holding its first query, then balanced (rebalance below)
  key_home,     // each block on the rank holding its first key, then balanced
  by_position,  // each tile on the rank holding its first query, not balanced: the split a runtime
                // makes without a planner, the baseline the report compares with
};

inline const char* cp_split_name(CpSplit s) {
  switch (s) {
    case CpSplit::automatic: return "automatic";
    case CpSplit::work_cut: return "work_cut";
    case CpSplit::query_home: return "query_home";
    case CpSplit::key_home: return "key_home";
    case CpSplit::by_position: return "by_position";
  }
  return "?";
}

// Blocks [block_begin, block_end) of one query tile of the plan (whose blocks are the kernels'
// pieces: ContextParallelPlan::plan), computed on one rank (a rank may
// hold several items of one tile).
struct CpWorkItem {
  index_t tile = 0;
  index_t block_begin = 0, block_end = 0;
  index_t computed_pairs = 0;
};

struct RankWork {
  PositionRange shard;  // the positions this rank holds Q, K, V and O of
  std::vector<CpWorkItem> items;
  index_t computed_pairs = 0;
  std::vector<PositionRange> queries;  // positions its items compute (sorted, disjoint)
  std::vector<PositionRange> keys;     // positions its items' blocks read (sorted, disjoint)
  // Rows moved, each direction. A Q row received is computed here and its partial output row
  // goes back to the owner: queries_received is also the partial rows this rank sends back, and
  // queries_sent the partial rows it receives and merges.
  index_t queries_received = 0, keys_received = 0;
  index_t queries_sent = 0, keys_sent = 0;
};

struct ContextParallelPlan {
  Plan plan;  // the plan partitioned, each of the kernels' pieces a block
  CpSplit split = CpSplit::work_cut;  // the split made (never automatic)
  std::vector<RankWork> ranks;

  index_t num_ranks() const { return static_cast<index_t>(ranks.size()); }
  const RankWork& rank(index_t r) const { return ranks[static_cast<size_t>(r)]; }

  // The rank whose shard holds `position`.
  index_t owner(index_t position) const {
    const auto it = std::upper_bound(ranks.begin(), ranks.end(), position,
                                     [](index_t p, const RankWork& w) { return p < w.shard.end; });
    return static_cast<index_t>(it - ranks.begin());
  }
  // The K/V rows rank `to` reads from rank `from`'s shard, and the Q rows it computes there.
  std::vector<PositionRange> keys_from(index_t to, index_t from) const {
    return detail::clip_ranges(rank(to).keys, rank(from).shard);
  }
  std::vector<PositionRange> queries_from(index_t to, index_t from) const {
    return detail::clip_ranges(rank(to).queries, rank(from).shard);
  }

  index_t max_computed_pairs() const {
    index_t m = 0;
    for (const RankWork& w : ranks) m = std::max(m, w.computed_pairs);
    return m;
  }
  // max / mean - 1 of the ranks' computed pairs: 0 is perfect balance.
  double flop_imbalance() const {
    double total = 0;
    for (const RankWork& w : ranks) total += double(w.computed_pairs);
    return total > 0 ? double(max_computed_pairs()) * double(num_ranks()) / total - 1.0 : 0.0;
  }
  // (max - min) / max of the ranks' computed pairs: the spread the README quotes.
  double flop_spread() const {
    index_t lo = max_computed_pairs();
    for (const RankWork& w : ranks) lo = std::min(lo, w.computed_pairs);
    const index_t hi = max_computed_pairs();
    return hi > 0 ? double(hi - lo) / double(hi) : 0.0;
  }
  // K/V rows rank r would receive in ring attention: every other shard passes through it.
  index_t ring_keys_received(index_t r) const { return plan.key_tokens - rank(r).shard.size(); }
};

// R + 1 boundaries splitting [0, tokens) into R shards of equal size (within one token).
inline std::vector<index_t> even_shards(index_t tokens, index_t ranks) {
  MMATTN_REQUIRE(ranks >= 1 && ranks <= tokens, "context parallel: ranks must be in [1, tokens = " +
                                                    std::to_string(tokens) + "], got " + std::to_string(ranks));
  std::vector<index_t> b;
  for (index_t r = 0; r <= ranks; ++r) b.push_back(r * (tokens / ranks) + std::min(r, tokens % ranks));
  return b;
}

// Bytes of one row moved: Q (heads * head_dim elements), K and V together (2 * kv_heads *
// head_dim elements), and a partial output row (heads * (head_dim + 1) floats: O and lse). The
// default is per head_dim of one head, MHA in 16-bit storage: what the split compares when it is
// not told the head shape.
struct CpRowBytes {
  double q = 2, kv = 4, partial = 4;
  CpRowBytes() = default;
  CpRowBytes(const AttentionConfig& cfg, index_t element_bytes)
      : q(double(cfg.num_heads * cfg.head_dim * element_bytes)),
        kv(double(2 * cfg.num_kv_heads * cfg.head_dim * element_bytes)),
        partial(double(cfg.num_heads * (cfg.head_dim + 1)) * double(sizeof(float))) {}
};

namespace detail {

// Which rank computes each block of the plan; a tile without blocks is computed by empty_tile[t].
struct CpAssignment {
  std::vector<index_t> block, empty_tile;
};

inline index_t pairs_of(const Plan& plan, const QueryTile& t, index_t b) {
  return t.queries.size() * plan.blocks[static_cast<size_t>(b)].keys.size();
}

// The work list cut into R runs: rank r's run ends where the running sum is nearest to
// total * (r + 1) / R, at a block edge.
inline void cut_work_list(const Plan& plan, index_t ranks, CpAssignment& a) {
  index_t total = 0;
  for (const QueryTile& t : plan.query_tiles) total = checked_add(total, t.computed_pairs, "context parallel");
  checked_mul(total, ranks, "context parallel: computed pairs x ranks");
  index_t r = 0, done = 0;
  auto target = [&](index_t rank) { return total * (rank + 1) / ranks; };
  for (size_t t = 0; t < plan.query_tiles.size(); ++t) {
    const QueryTile& tile = plan.query_tiles[t];
    for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
      const index_t c = pairs_of(plan, tile, b);
      while (r + 1 < ranks && done + c > target(r) && target(r) - done <= done + c - target(r)) ++r;
      a.block[static_cast<size_t>(b)] = r;
      done += c;
    }
    a.empty_tile[t] = r;
  }
}

// Hands blocks from ranks above the mean to ranks below it, in work-list order, a block only while
// it brings both closer to the mean: first to the rank holding the block's queries (then only
// its K/V move), then to the rank furthest below. Then, while it helps, any block to the least
// loaded rank when that leaves both below the giver's load: at the end no block can move without
// loading its receiver more than its giver was, so max - min load is at most one block.
inline void rebalance(const Plan& plan, const std::vector<index_t>& query_owner, index_t ranks, CpAssignment& a) {
  std::vector<double> load(static_cast<size_t>(ranks), 0.0);
  double total = 0;
  for (const QueryTile& t : plan.query_tiles)
    for (index_t b = t.block_begin; b < t.block_end; ++b) {
      const auto c = double(pairs_of(plan, t, b));
      load[static_cast<size_t>(a.block[static_cast<size_t>(b)])] += c;
      total += c;
    }
  const double mean = total / double(ranks);
  const auto least = [&] { return static_cast<index_t>(std::min_element(load.begin(), load.end()) - load.begin()); };
  for (int pass = 0; pass < 2; ++pass)
    for (size_t t = 0; t < plan.query_tiles.size(); ++t) {
      const QueryTile& tile = plan.query_tiles[t];
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        index_t& from = a.block[static_cast<size_t>(b)];
        const auto c = double(pairs_of(plan, tile, b));
        if (load[static_cast<size_t>(from)] - mean < 0.5 * c) continue;
        const index_t to = pass == 0 ? query_owner[t] : least();
        if (to == from || mean - load[static_cast<size_t>(to)] < 0.5 * c) continue;
        load[static_cast<size_t>(from)] -= c, load[static_cast<size_t>(to)] += c;
        from = to;
      }
    }
  for (bool moved = true; moved;) {  // each move lowers the sum of squared loads: it ends
    moved = false;
    for (size_t t = 0; t < plan.query_tiles.size(); ++t) {
      const QueryTile& tile = plan.query_tiles[t];
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        index_t& from = a.block[static_cast<size_t>(b)];
        const auto c = double(pairs_of(plan, tile, b));
        const index_t to = least();
        if (c == 0 || load[static_cast<size_t>(to)] + c >= load[static_cast<size_t>(from)]) continue;
        load[static_cast<size_t>(from)] -= c, load[static_cast<size_t>(to)] += c;
        from = to;
        moved = true;
      }
    }
  }
}

// The plan's items, positions and rows moved for an assignment.
inline ContextParallelPlan cp_from_assignment(const Plan& plan, const std::vector<index_t>& bounds, CpSplit split,
                                              const CpAssignment& a) {
  const auto ranks = static_cast<index_t>(bounds.size()) - 1;
  ContextParallelPlan cp;
  cp.plan = plan;
  cp.split = split;
  cp.ranks.resize(static_cast<size_t>(ranks));
  for (index_t r = 0; r < ranks; ++r)
    cp.ranks[static_cast<size_t>(r)].shard = {bounds[static_cast<size_t>(r)], bounds[static_cast<size_t>(r + 1)]};
  for (size_t t = 0; t < plan.query_tiles.size(); ++t) {
    const QueryTile& tile = plan.query_tiles[t];
    auto add = [&](index_t r, index_t b0, index_t b1) {
      index_t pairs = 0;
      for (index_t b = b0; b < b1; ++b) pairs += pairs_of(plan, tile, b);
      RankWork& w = cp.ranks[static_cast<size_t>(r)];
      w.items.push_back({static_cast<index_t>(t), b0, b1, pairs});
      w.computed_pairs += pairs;
    };
    if (tile.block_begin == tile.block_end) {
      add(a.empty_tile[t], tile.block_begin, tile.block_end);
      continue;
    }
    index_t b0 = tile.block_begin;
    for (index_t b = tile.block_begin + 1; b <= tile.block_end; ++b)
      if (b == tile.block_end || a.block[static_cast<size_t>(b)] != a.block[static_cast<size_t>(b0)]) {
        add(a.block[static_cast<size_t>(b0)], b0, b);
        b0 = b;
      }
  }
  for (RankWork& w : cp.ranks) {
    std::vector<PositionRange> q, k;
    for (const CpWorkItem& item : w.items) {
      append_rect(plan.query_tiles[static_cast<size_t>(item.tile)].queries, q);
      for (index_t b = item.block_begin; b < item.block_end; ++b) append_rect(plan.blocks[static_cast<size_t>(b)].keys, k);
    }
    w.queries = normalize_ranges(std::move(q));
    w.keys = normalize_ranges(std::move(k));
  }
  for (index_t to = 0; to < ranks; ++to)
    for (index_t from = 0; from < ranks; ++from) {
      if (to == from) continue;
      const index_t qn = count_positions(cp.queries_from(to, from));
      const index_t kn = count_positions(cp.keys_from(to, from));
      cp.ranks[static_cast<size_t>(to)].queries_received += qn;
      cp.ranks[static_cast<size_t>(to)].keys_received += kn;
      cp.ranks[static_cast<size_t>(from)].queries_sent += qn;
      cp.ranks[static_cast<size_t>(from)].keys_sent += kn;
    }
  return cp;
}

// Bytes through the busiest rank's busier direction, exchange plus return: what automatic minimises.
inline double busiest_bytes(const ContextParallelPlan& cp, const CpRowBytes& row) {
  double exchange = 0, back = 0;
  for (const RankWork& w : cp.ranks) {
    exchange = std::max({exchange, double(w.queries_received) * row.q + double(w.keys_received) * row.kv,
                         double(w.queries_sent) * row.q + double(w.keys_sent) * row.kv});
    back = std::max({back, double(w.queries_sent) * row.partial, double(w.queries_received) * row.partial});
  }
  return exchange + back;
}

// The plan with every piece a block of its own: ranks take work in pieces, and a long block's
// keys may lie in several shards.
inline Plan pieces_as_blocks(const Plan& plan) {
  PlanBuilder builder(plan.layout, plan.policy, plan.tiles, plan.query_begin, plan.query_end, plan.key_tokens);
  std::vector<KeyBlock> blocks;
  for (const QueryTile& tile : plan.query_tiles) {
    blocks.clear();
    plan.for_each_piece(tile, PieceRange{}, [&](index_t, const KeyBlock& piece) { blocks.push_back(piece); });
    builder.add_query_tile_with(tile.queries, tile.segment, blocks);
  }
  return builder.finish();
}

}  // namespace detail

// The R-rank split of a prefill plan (queries and keys both every position of its layout). Shard
// r holds positions [shard_bounds[r], shard_bounds[r + 1]); empty bounds: even_shards. `bytes`
// weighs the rows for CpSplit::automatic's choice (CpRowBytes(cfg, element_bytes) for the model's).
inline ContextParallelPlan partition_plan(const Plan& whole, index_t ranks, CpSplit split = CpSplit::automatic,
                                          std::vector<index_t> shard_bounds = {}, const CpRowBytes& bytes = {}) {
  const Plan plan = detail::pieces_as_blocks(whole);
  const index_t n = plan.key_tokens;
  MMATTN_REQUIRE(plan.query_begin == 0 && plan.query_end == n,
                 "context parallel: the plan must cover every query of its layout (a prefill plan), got queries [" +
                     std::to_string(plan.query_begin) + ", " + std::to_string(plan.query_end) + ") of " +
                     std::to_string(n));
  if (shard_bounds.empty()) shard_bounds = even_shards(n, ranks);
  MMATTN_REQUIRE(ranks >= 1 && static_cast<index_t>(shard_bounds.size()) == ranks + 1,
                 "context parallel: need " + std::to_string(ranks + 1) + " shard bounds for " + std::to_string(ranks) +
                     " ranks, got " + std::to_string(shard_bounds.size()));
  MMATTN_REQUIRE(shard_bounds.front() == 0 && shard_bounds.back() == n,
                 "context parallel: shard bounds must run from 0 to the layout's " + std::to_string(n) + " tokens");
  for (index_t r = 0; r < ranks; ++r)
    MMATTN_REQUIRE(shard_bounds[static_cast<size_t>(r)] < shard_bounds[static_cast<size_t>(r + 1)],
                   "context parallel: shard " + std::to_string(r) + " is empty or reversed: [" +
                       std::to_string(shard_bounds[static_cast<size_t>(r)]) + ", " +
                       std::to_string(shard_bounds[static_cast<size_t>(r + 1)]) + ")");

  const auto owner = [&](index_t p) {
    return static_cast<index_t>(std::upper_bound(shard_bounds.begin() + 1, shard_bounds.end(), p) -
                                (shard_bounds.begin() + 1));
  };
  std::vector<index_t> query_owner;
  for (const QueryTile& t : plan.query_tiles) query_owner.push_back(owner(t.queries.first()));
  const auto make = [&](CpSplit s) {
    detail::CpAssignment a{std::vector<index_t>(plan.blocks.size(), 0), query_owner};
    if (s == CpSplit::work_cut) {
      detail::cut_work_list(plan, ranks, a);
    } else {
      for (size_t t = 0; t < plan.query_tiles.size(); ++t)
        for (index_t b = plan.query_tiles[t].block_begin; b < plan.query_tiles[t].block_end; ++b)
          a.block[static_cast<size_t>(b)] =
              s == CpSplit::key_home ? owner(plan.blocks[static_cast<size_t>(b)].keys.first()) : query_owner[t];
      if (s != CpSplit::by_position) detail::rebalance(plan, query_owner, ranks, a);
    }
    return detail::cp_from_assignment(plan, shard_bounds, s, a);
  };
  if (split != CpSplit::automatic) return make(split);
  // The work cut is balanced to a block; a rebalanced split competes when it is as balanced, or
  // within 1% of the mean.
  ContextParallelPlan best = make(CpSplit::work_cut);
  const double balance_limit = std::max(best.flop_imbalance(), 0.01);
  double best_bytes = detail::busiest_bytes(best, bytes);
  for (CpSplit s : {CpSplit::key_home, CpSplit::query_home}) {
    ContextParallelPlan c = make(s);
    const double b = detail::busiest_bytes(c, bytes);
    if (c.flop_imbalance() <= balance_limit && b < best_bytes) best = std::move(c), best_bytes = b;
  }
  return best;
}

// What a cluster does per second and per message, for estimate_time.
struct ClusterModel {
  double flops_per_second = 1e12;  // attention FLOPs one rank sustains (bench/kernel_global measures it)
  double bytes_per_second = 12.5e9;  // each way, per rank's link (100 Gb/s)
  double latency_seconds = 5e-6;     // per message
};

struct CpTimeEstimate {
  double exchange_seconds = 0, compute_seconds = 0, return_seconds = 0;
  double total_seconds() const { return exchange_seconds + compute_seconds + return_seconds; }
};

// The documented model at the top of this header.
inline CpTimeEstimate estimate_time(const ContextParallelPlan& cp, const AttentionConfig& cfg, index_t element_bytes,
                                    const ClusterModel& cluster) {
  MMATTN_REQUIRE(cluster.flops_per_second > 0 && cluster.bytes_per_second > 0 && cluster.latency_seconds >= 0,
                 "context parallel: the cluster model needs positive rates and a non-negative latency");
  const CpRowBytes row(cfg, element_bytes);
  const double latency = double(cp.num_ranks() - 1) * cluster.latency_seconds;
  CpTimeEstimate e;
  for (const RankWork& w : cp.ranks) {
    const double in = double(w.queries_received) * row.q + double(w.keys_received) * row.kv;
    const double out = double(w.queries_sent) * row.q + double(w.keys_sent) * row.kv;
    const double back_in = double(w.queries_sent) * row.partial, back_out = double(w.queries_received) * row.partial;
    e.exchange_seconds = std::max(e.exchange_seconds, std::max(in, out) / cluster.bytes_per_second);
    e.return_seconds = std::max(e.return_seconds, std::max(back_in, back_out) / cluster.bytes_per_second);
    e.compute_seconds =
        std::max(e.compute_seconds, PlanStats::flops(w.computed_pairs, cfg) / cluster.flops_per_second);
  }
  if (cp.num_ranks() > 1) e.exchange_seconds += latency, e.return_seconds += latency;
  return e;
}

// Per rank: its shard, FLOPs against the mean, the rows and bytes it receives (K/V against ring
// attention's), and the modelled time. A plan report's section (plan_report.hpp) for one split.
inline std::string context_parallel_report(const ContextParallelPlan& cp, const AttentionConfig& cfg,
                                           index_t element_bytes, const ClusterModel& cluster = {}) {
  const CpRowBytes row(cfg, element_bytes);
  double total = 0;
  for (const RankWork& w : cp.ranks) total += double(w.computed_pairs);
  const double mean = total / double(cp.num_ranks());
  std::string s;
  char line[256];
  std::snprintf(line, sizeof line,
                "context parallel: %lld ranks, split %s, %lld tokens; FLOPs per rank max/mean - 1 = %.2f%%, "
                "(max - min)/max = %.2f%%\n",
                static_cast<long long>(cp.num_ranks()), cp_split_name(cp.split),
                static_cast<long long>(cp.plan.key_tokens), 100.0 * cp.flop_imbalance(), 100.0 * cp.flop_spread());
  s += line;
  s += "  rank  shard              items  GFLOP     vs mean  K/V rows in  (ring)      K/V MiB in  Q rows in  "
       "partial MiB out\n";
  constexpr double kMiB = 1024.0 * 1024.0;
  for (index_t r = 0; r < cp.num_ranks(); ++r) {
    const RankWork& w = cp.rank(r);
    std::snprintf(line, sizeof line, "  %-4lld  [%7lld, %7lld)  %5zu  %8.2f  %+6.1f%%  %11lld  (%9lld)  %10.1f  %9lld  %15.1f\n",
                  static_cast<long long>(r), static_cast<long long>(w.shard.begin),
                  static_cast<long long>(w.shard.end), w.items.size(), PlanStats::flops(w.computed_pairs, cfg) * 1e-9,
                  mean > 0 ? 100.0 * (double(w.computed_pairs) / mean - 1.0) : 0.0,
                  static_cast<long long>(w.keys_received), static_cast<long long>(cp.ring_keys_received(r)),
                  double(w.keys_received) * row.kv / kMiB, static_cast<long long>(w.queries_received),
                  double(w.queries_received) * row.partial / kMiB);
    s += line;
  }
  const CpTimeEstimate e = estimate_time(cp, cfg, element_bytes, cluster);
  std::snprintf(line, sizeof line,
                "  modelled at %.3g FLOP/s per rank, %.3g B/s per link, %.3g s latency: exchange %.3g s + compute "
                "%.3g s + return %.3g s = %.3g s\n",
                cluster.flops_per_second, cluster.bytes_per_second, cluster.latency_seconds, e.exchange_seconds,
                e.compute_seconds, e.return_seconds, e.total_seconds());
  s += line;
  return s;
}

}  // namespace mmattn
