#pragma once
// One rank's part of a context-parallel prefill (context_parallel_plan.hpp), without the transport:
// what it computes from the rows it was sent, and how an owner merges the partial rows sent back.
// mpi_context_parallel.hpp moves the rows with MPI; a test can move them by copying, so the
// arithmetic is checked where MPI is absent.
//
// Rows travel packed, in position order of the ranges the plan names:
//   Q rows of rank r:       rank(r).queries, each heads * head_dim elements
//   K/V rows of rank r:     rank(r).keys, each [K: kv_heads * head_dim | V: kv_heads * head_dim]
//   partial rows of rank r: rank(r).queries, each [O: heads * head_dim | lse: heads] floats, O
//                           normalised over the rank's blocks of that row's tile, lse -inf where
//                           those blocks hold no key the row sees.
// A packed Q or K/V buffer holds one more row at its end, which compute_rank_partials fills with
// NaN: positions the rank never reads map to it, so a read the plan did not list shows as NaN.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/distributed/context_parallel_plan.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/merge.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/paged_kv.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

// Elements of one packed row.
struct CpRowShape {
  index_t q = 0, kv = 0, partial = 0;
  explicit CpRowShape(const AttentionConfig& cfg)
      : q(detail::checked_mul(cfg.num_heads, cfg.head_dim, "context parallel: Q row")),
        kv(detail::checked_mul(2 * cfg.num_kv_heads, cfg.head_dim, "context parallel: K/V row")),
        partial(detail::checked_add(q, cfg.num_heads, "context parallel: partial row")) {}
};

// Rows of normalised `ranges` before `position`: where the rows of a later shard start in a
// packed buffer.
inline index_t rows_before(const std::vector<PositionRange>& ranges, index_t position) {
  index_t n = 0;
  for (const PositionRange& r : ranges) {
    if (r.begin >= position) break;
    n += std::min(r.end, position) - r.begin;
  }
  return n;
}

namespace detail {

// position -> packed row over [0, tokens), rows of `ranges` in order; other positions -> `pad`.
inline std::vector<std::int32_t> packed_row_table(const std::vector<PositionRange>& ranges, index_t tokens,
                                                  index_t begin, index_t pad) {
  MMATTN_REQUIRE(pad <= std::numeric_limits<std::int32_t>::max() && tokens <= std::numeric_limits<std::int32_t>::max(),
                 "context parallel: a rank's rows must be fewer than 2^31");
  std::vector<std::int32_t> table(static_cast<size_t>(tokens), static_cast<std::int32_t>(pad));
  index_t row = 0;
  for (const PositionRange& r : ranges)
    for (index_t p = r.begin; p < r.end; ++p, ++row)
      if (p >= begin && p < begin + tokens) table[static_cast<size_t>(p - begin)] = static_cast<std::int32_t>(row);
  return table;
}

template <class T>
void fill_nan(T* data, index_t count) {
  std::fill(data, data + count, static_cast<T>(std::numeric_limits<float>::quiet_NaN()));
}

}  // namespace detail

// Rank r's partial rows (see above) from its packed Q and K/V rows. q_rows holds
// rank(r).queries rows + 1, kv_rows rank(r).keys rows + 1 (the last row of each is overwritten
// with NaN); partial receives rank(r).queries rows.
template <class T>
void compute_rank_partials(const ContextParallelPlan& cp, index_t r, const AttentionConfig& cfg, T* q_rows,
                           T* kv_rows, float* partial, const Executor& executor) {
  const Plan& plan = cp.plan;
  const RankWork& w = cp.rank(r);
  const CpRowShape row(cfg);
  const index_t q_count = detail::count_positions(w.queries), kv_count = detail::count_positions(w.keys);
  detail::fill_nan(q_rows + q_count * row.q, row.q);
  detail::fill_nan(kv_rows + kv_count * row.kv, row.kv);
  const index_t heads = cfg.num_heads, kv_heads = cfg.num_kv_heads, dim = cfg.head_dim;
  const auto pool_kv = [&](T* base, index_t rows, const std::int32_t* table, index_t tokens) {
    return PagedKVView<const T>{base, table, rows + 1, 1, tokens, tokens, kv_heads, dim, row.kv, row.kv, dim, 1};
  };
  const std::vector<std::int32_t> kv_table = detail::packed_row_table(w.keys, plan.key_tokens, 0, kv_count);
  const PagedKVView<const T> k = pool_kv(kv_rows, kv_count, kv_table.data(), plan.key_tokens);
  const PagedKVView<const T> v = pool_kv(kv_rows + kv_heads * dim, kv_count, kv_table.data(), plan.key_tokens);

  // Query groups: the items' tiles' position spans, merged where they touch. The kernel indexes Q
  // and O by position - plan.query_begin, so each group is a plan of its own over its span, with
  // dense scratch O and lse; Q stays packed behind a table over the span.
  struct Group {
    Plan plan;
    std::vector<std::int32_t> q_table;
    std::vector<float> out, lse;
  };
  std::vector<PositionRange> spans;
  for (const CpWorkItem& item : w.items) {
    const TokenRect& qr = plan.query_tiles[static_cast<size_t>(item.tile)].queries;
    spans.push_back({qr.first(), qr.last() + 1});
  }
  spans = detail::normalize_ranges(std::move(spans));
  std::vector<Group> groups(spans.size());
  for (size_t g = 0; g < spans.size(); ++g) {
    Plan& gp = groups[g].plan;
    gp.tiles = plan.tiles;
    gp.query_begin = spans[g].begin, gp.query_end = spans[g].end;
    gp.key_tokens = plan.key_tokens;
    gp.layout = plan.layout;
    gp.policy = plan.policy;
    groups[g].q_table = detail::packed_row_table(w.queries, spans[g].size(), spans[g].begin, q_count);
    const auto span_rows = static_cast<size_t>(spans[g].size());
    groups[g].out.assign(span_rows * static_cast<size_t>(heads * dim), 0.0f);
    groups[g].lse.assign(span_rows * static_cast<size_t>(heads), -std::numeric_limits<float>::infinity());
  }
  // A rank's items of one tile become one tile of its group (two would each write the rows).
  std::vector<CpWorkItem> by_tile = w.items;
  std::stable_sort(by_tile.begin(), by_tile.end(),
                   [](const CpWorkItem& a, const CpWorkItem& b) { return a.tile < b.tile; });
  for (size_t i = 0; i < by_tile.size(); ++i) {
    const QueryTile& tile = plan.query_tiles[static_cast<size_t>(by_tile[i].tile)];
    const auto g = static_cast<size_t>(std::upper_bound(spans.begin(), spans.end(), tile.queries.first(),
                                                        [](index_t p, const PositionRange& s) { return p < s.end; }) -
                                       spans.begin());
    Plan& gp = groups[g].plan;
    const bool same_tile = i > 0 && by_tile[i - 1].tile == by_tile[i].tile;
    if (!same_tile) {
      QueryTile t = tile;
      t.block_begin = t.block_end = static_cast<index_t>(gp.blocks.size());
      t.computed_pairs = 0;
      gp.query_tiles.push_back(t);
    }
    QueryTile& t = gp.query_tiles.back();
    gp.blocks.insert(gp.blocks.end(), plan.blocks.begin() + by_tile[i].block_begin,
                     plan.blocks.begin() + by_tile[i].block_end);
    t.block_end = static_cast<index_t>(gp.blocks.size());
    t.computed_pairs += by_tile[i].computed_pairs;
  }
  // Work items (group, tile) by descending cost, head by head, as execute_plan hands them out.
  struct Work {
    size_t group, tile;
    index_t pairs;
  };
  std::vector<Work> order;
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t t = 0; t < groups[g].plan.query_tiles.size(); ++t)
      order.push_back({g, t, groups[g].plan.query_tiles[t].computed_pairs});
  std::stable_sort(order.begin(), order.end(), [](const Work& a, const Work& b) { return a.pairs > b.pairs; });
  const auto items = static_cast<index_t>(order.size());
  const std::uint64_t call = kernel::next_call_id();
  executor.parallel_for(items * heads, [&](index_t job) {
    thread_local kernel::Workspace ws;
    const index_t head = job / items;
    const Work& work = order[static_cast<size_t>(job % items)];
    Group& group = groups[work.group];
    const index_t span = group.plan.num_queries();
    const PagedKVView<const T> q{q_rows, group.q_table.data(), q_count + 1, 1, span, span, heads, dim,
                                 row.q, row.q, dim, 1};
    const TensorView<float> out = view_thd(group.out.data(), span, heads, dim);
    const LseView lse = view_lse(group.lse.data(), span, heads);
    const QueryTile& tile = group.plan.query_tiles[work.tile];
    ws.packed_blocks.begin(call, cfg.kv_head_of(head));
    kernel::attend_tile(group.plan, tile, PieceRange{}, head, cfg, q, k, v, out, lse, ws);
  });
  // Pack O and lse in the order of rank(r).queries.
  float* dst = partial;
  for (const PositionRange& qr : w.queries)
    for (index_t p = qr.begin; p < qr.end; ++p, dst += row.partial) {
      const auto g = static_cast<size_t>(std::upper_bound(spans.begin(), spans.end(), p,
                                                          [](index_t x, const PositionRange& s) { return x < s.end; }) -
                                         spans.begin());
      const auto local = static_cast<size_t>(p - spans[g].begin);
      std::copy_n(groups[g].out.data() + local * static_cast<size_t>(heads * dim), heads * dim, dst);
      std::copy_n(groups[g].lse.data() + local * static_cast<size_t>(heads), heads, dst + heads * dim);
    }
}

// Owner r's rows: the merge of the partial rows every rank computed for r's shard. from[s] points
// at rank s's partial rows for r's shard (queries_from(s, r), in order), or is null when there are
// none. out and lse are [shard tokens, heads, head_dim] and [shard tokens, heads]; lse optional.
// Rows no rank computed a key for get zeros and -inf.
template <class TO>
void merge_rank_partials(const ContextParallelPlan& cp, index_t r, const AttentionConfig& cfg,
                         const std::vector<const float*>& from, const TensorView<TO>& out, const LseView& lse) {
  const CpRowShape row(cfg);
  const PositionRange shard = cp.rank(r).shard;
  const index_t heads = cfg.num_heads, dim = cfg.head_dim, tokens = shard.size();
  // parts of token t: rows[first[t], first[t + 1])
  std::vector<index_t> first(static_cast<size_t>(tokens + 1), 0);
  for (index_t s = 0; s < cp.num_ranks(); ++s)
    for (const PositionRange& qr : cp.queries_from(s, r))
      for (index_t p = qr.begin; p < qr.end; ++p) ++first[static_cast<size_t>(p - shard.begin + 1)];
  for (index_t t = 0; t < tokens; ++t) first[static_cast<size_t>(t + 1)] += first[static_cast<size_t>(t)];
  std::vector<const float*> rows(static_cast<size_t>(first.back()));
  std::vector<index_t> fill(first.begin(), first.end() - 1);
  for (index_t s = 0; s < cp.num_ranks(); ++s) {
    const float* src = from[static_cast<size_t>(s)];
    for (const PositionRange& qr : cp.queries_from(s, r)) {
      MMATTN_REQUIRE(src != nullptr, "context parallel: rank " + std::to_string(s) + " computed rows of rank " +
                                         std::to_string(r) + " but none were given");
      for (index_t p = qr.begin; p < qr.end; ++p, src += row.partial)
        rows[static_cast<size_t>(fill[static_cast<size_t>(p - shard.begin)]++)] = src;
    }
  }
  // Runs of tokens whose parts come from the same ranks, each rank's rows consecutive: one merge()
  // per run, each part a strided view of the packed rows.
  std::vector<PartialAttention<float>> parts;
  for (index_t t = 0; t < tokens;) {
    const index_t a = first[static_cast<size_t>(t)], count = first[static_cast<size_t>(t + 1)] - a;
    index_t end = t + 1;
    for (; end < tokens; ++end) {
      const index_t b = first[static_cast<size_t>(end)];
      if (first[static_cast<size_t>(end + 1)] - b != count) break;
      bool next = true;
      for (index_t i = 0; i < count && next; ++i)
        next = rows[static_cast<size_t>(b + i)] == rows[static_cast<size_t>(a + i)] + (end - t) * row.partial;
      if (!next) break;
    }
    TensorView<TO> o = out;
    o.data = out.row(t, 0), o.tokens = end - t;
    LseView l = lse;
    if (l) l.data = &lse(t, 0), l.tokens = end - t;
    if (count == 0) {  // no rank computed these rows: no key, so zeros and -inf
      for (index_t i = 0; i < o.tokens; ++i)
        for (index_t h = 0; h < heads; ++h) {
          for (index_t d = 0; d < dim; ++d) o(i, h, d) = static_cast<TO>(0.0f);
          if (l) l(i, h) = -std::numeric_limits<float>::infinity();
        }
    } else {
      parts.clear();
      for (index_t i = 0; i < count; ++i) {
        const float* p = rows[static_cast<size_t>(a + i)];
        parts.push_back({view_strided(p, o.tokens, heads, dim, row.partial, dim, 1),
                         LseView{const_cast<float*>(p + heads * dim) /* merge only reads parts */, o.tokens, heads, row.partial, 1}});
      }
      merge(parts, o, l);
    }
    t = end;
  }
}

}  // namespace mmattn
