#pragma once
// What an approximate strategy leaves out of the exact softmax, and how much exact attention mass
// that is. A strategy lists, per (head, query rect), the key rects whose exact contribution it does
// not compute: dropped (sparse: never visited) or approximated (pooled: seen only through
// averages). The mass is the exact softmax probability on those keys, sum exp(s - lse), taken from
// the exact run's log-sum-exp: it needs only the listed blocks, never the whole N x N.

#include <algorithm>
#include <cmath>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::approx {

enum class Uncovered : unsigned char {
  dropped,       // the strategy never looks at these keys
  approximated,  // the strategy sees them only through a summary (pooled averages)
};

struct UncoveredKeys {
  struct Entry {
    index_t head = -1;  // one query head, or -1: every head
    TokenRect queries;  // positions
    std::vector<TokenRect> keys;
    Uncovered kind = Uncovered::dropped;
  };
  // Entries never share a (query, head): each one owns its rows' mass.
  std::vector<Entry> entries;
};

// mass[kind]: [query positions, num_heads] row-major, the exact softmax probability of each
// (query, head) on its uncovered keys of that kind; rows no entry names stay 0.
// Q, K: positions are rows (the strategies run the full query range). exact_lse: [tokens, num_heads]
// of the exact softmax; rows with lse = -inf saw no key and get 0.
struct UncoveredMass {
  index_t tokens = 0, heads = 0;
  std::vector<float> dropped, approximated;  // (tokens, heads)
};

template <class QView, class KView>
UncoveredMass uncovered_mass(const UncoveredKeys& uncovered, const AttentionConfig& cfg, const QView& q,
                             const KView& k, const LseView& exact_lse, const Executor& executor) {
  UncoveredMass m;
  m.tokens = q.tokens;
  m.heads = cfg.num_heads;
  m.dropped.assign(static_cast<size_t>(m.tokens * m.heads), 0.0f);
  m.approximated = m.dropped;
  const auto entries = static_cast<index_t>(uncovered.entries.size()), heads = cfg.num_heads;
  executor.parallel_for(entries * heads, [&](index_t item) {
    const UncoveredKeys::Entry& e = uncovered.entries[static_cast<size_t>(item / heads)];
    const index_t head = item % heads;
    if (e.head >= 0 && e.head != head) return;
    thread_local kernel::Workspace ws;
    index_t max_keys = 0;
    for (const TokenRect& r : e.keys) max_keys = std::max(max_keys, r.size());
    const index_t rows = e.queries.size(), dim = cfg.head_dim;
    ws.reserve(rows, max_keys, dim);
    kernel::load_rows(q, head, e.queries, 0, cfg.resolved_scale(), ws.q.data());
    const Eigen::Map<const kernel::RowMatrix> q_tile(ws.q.data(), rows, dim);  // (rows, dim), pre-scaled
    std::vector<double> sum(static_cast<size_t>(rows), 0.0);
    for (const TokenRect& keys : e.keys) {
      const kernel::ConstStridedRowMap k_block = kernel::key_rows(k, cfg.kv_head_of(head), keys, ws.k.data());
      kernel::RowMap scores(ws.scores.data(), rows, keys.size());  // (rows, keys)
      scores.noalias() = q_tile * k_block.transpose();
      for (index_t i = 0; i < rows; ++i) {
        const float lse = exact_lse(e.queries.at(i), head);
        if (lse == kernel::kNegInf) continue;  // -inf minus -inf would be NaN; the row saw nothing
        sum[static_cast<size_t>(i)] += (scores.row(i).array() - lse).exp().template cast<double>().sum();
      }
    }
    std::vector<float>& out = e.kind == Uncovered::dropped ? m.dropped : m.approximated;
    for (index_t i = 0; i < rows; ++i)
      out[static_cast<size_t>(e.queries.at(i) * heads + head)] = static_cast<float>(sum[static_cast<size_t>(i)]);
  });
  return m;
}

}  // namespace mmattn::approx
