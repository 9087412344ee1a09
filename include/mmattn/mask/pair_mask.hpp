#pragma once
// One (query segment, key segment) pair under its rule and the policy's attention sinks: every
// question the planner, the kernel's masking, the statistics and the report ask of the mask is
// answered here, from the rule's KeySet by arithmetic (key_set.hpp). Only a custom predicate is
// evaluated pair by pair.

#include <algorithm>
#include <vector>

#include "mmattn/mask/rule.hpp"
#include "mmattn/token_rect.hpp"

namespace mmattn {

class PairMask {
 public:
  // sinks: positions [0, sinks) are seen by every query at or after them, whatever the rule.
  PairMask(const Segment& query, const Segment& key, const Rule& rule, index_t sinks)
      : query_(&query), key_(&key), rule_(&rule), sinks_(std::min(sinks, key.end())) {}

  const Segment& query() const { return *query_; }
  const Segment& key() const { return *key_; }
  const Rule& rule() const { return *rule_; }

  // False when no query of the pair can see any key: the planner skips it.
  bool visits() const { return !rule_->is_none() || (sinks_ > key_->start && query_->end() > key_->start); }

  // The keys query q sees, sinks included. Not for custom rules.
  KeySet keys(index_t q) const {
    KeySet s = rule_->keys(*query_, *key_, q);
    s.sink_end = std::max(key_->start, std::min(sinks_, q + 1));
    return s;
  }

  bool allowed(index_t q, index_t k) const {
    if (const CustomRule* c = rule_->custom()) return (k < sinks_ && k <= q) || c->allowed(q, k);
    return contains(*key_, keys(q), k);
  }

  // Allowed pairs of the queries [a, b) (positions of the query segment) with this key segment.
  index_t count(index_t a, index_t b) const {
    if (!visits()) return 0;
    if (rule_->get<FullRule>()) return (b - a) * key_->length;
    index_t n = 0;
    for (index_t q = a; q < b; ++q) {
      if (rule_->custom()) {
        for (index_t k = key_->start; k < key_->end(); ++k) n += allowed(q, k) ? 1 : 0;
      } else {
        n += mmattn::count(*key_, keys(q));
      }
    }
    return n;
  }

  // The key sets of a tile's queries, computed once and asked about every candidate block.
  struct TileSets {
    TokenRect queries;
    std::vector<KeySet> sets;
    // Every set's windows cover the whole grid, so past the sinks each set is the position
    // interval [lo, hi): then a block after sink_max is full iff lo_max <= its first key and
    // hi_min > its last, and empty iff it ends before lo_min or starts at or after hi_max, in O(1).
    bool intervals = true;
    index_t lo_min = 0, lo_max = 0, hi_min = 0, hi_max = 0, sink_max = 0;
  };
  void bind(const TokenRect& queries, TileSets& t) const {
    t.queries = queries;
    t.sets.clear();
    t.intervals = !rule_->custom();
    t.lo_min = key_->end(), t.lo_max = key_->start, t.hi_min = key_->end(), t.hi_max = key_->start;
    t.sink_max = key_->start;
    if (rule_->custom()) return;
    for (index_t i = 0; i < queries.size(); ++i) {
      const KeySet s = keys(queries.at(i));
      t.sets.push_back(s);
      t.intervals = t.intervals && s.frame.count() == key_->frames && s.row.count() == key_->rows &&
                    s.col.count() == key_->cols;
      t.lo_min = std::min(t.lo_min, s.lo), t.lo_max = std::max(t.lo_max, s.lo);
      t.hi_min = std::min(t.hi_min, s.hi), t.hi_max = std::max(t.hi_max, s.hi);
      t.sink_max = std::max(t.sink_max, s.sink_end);
    }
  }

  // empty / partial / full for every pair of (queries x keys); keys lie in this key segment.
  BlockCoverage classify(const TokenRect& queries, const TokenRect& keys) const {
    TileSets t;
    bind(queries, t);
    return classify(t, keys);
  }
  BlockCoverage classify(const TileSets& t, const TokenRect& keys) const {
    if (const CustomRule* c = rule_->custom()) {
      if (c->classify && keys.first() >= sinks_) return c->classify(t.queries, keys);
      return classify_pairwise(t.queries, keys);
    }
    if (t.intervals && keys.first() >= t.sink_max) {
      if (t.lo_max <= keys.first() && t.hi_min > keys.last()) return BlockCoverage::full;
      if (keys.last() < t.lo_min || keys.first() >= t.hi_max) return BlockCoverage::empty;
    }
    bool all = true, any = false;
    for (size_t i = 0; i < t.sets.size() && (all || !any); ++i) {
      const index_t n = count_in_rect(t.sets[i], keys);
      all = all && n == keys.size();
      any = any || n > 0;
    }
    return all ? BlockCoverage::full : any ? BlockCoverage::partial : BlockCoverage::empty;
  }

  // Appends the keys of `keys` that query q sees, as runs of block-local indices (key i of the
  // block is keys.at(i)), in increasing order.
  void runs(index_t q, const TokenRect& keys, std::vector<KeyRun>& out) const {
    if (rule_->custom()) {
      const size_t first = out.size();  // runs already in `out` belong to someone else
      for (index_t j = 0; j < keys.size(); ++j)
        if (allowed(q, keys.at(j))) {
          if (out.size() > first && out.back().end == j) ++out.back().end;
          else out.push_back({j, j + 1});
        }
      return;
    }
    const KeySet s = this->keys(q);
    for (index_t r = 0; r < keys.rows; ++r) {
      const index_t a = keys.start + r * keys.pitch;
      append_runs(*key_, s, a, a + keys.cols, r * keys.cols, out);
    }
  }

  // The last key of this segment query q sees, or -1.
  index_t last_key(index_t q) const {
    if (rule_->custom()) {
      for (index_t k = key_->end() - 1; k >= key_->start; --k)
        if (allowed(q, k)) return k;
      return -1;
    }
    return mmattn::last_key(*key_, keys(q));
  }

  // The first key at or after position `from` that query q sees, or -1.
  index_t first_key_from(index_t q, index_t from) const {
    if (rule_->custom()) {
      for (index_t k = std::max(from, key_->start); k < key_->end(); ++k)
        if (allowed(q, k)) return k;
      return -1;
    }
    return mmattn::first_key(*key_, keys(q), from);
  }

 private:
  // Allowed keys of `keys` in set s: O(1) when the rect is a box of one frame that the position
  // bound and the sinks leave whole (the product of three per-axis counts), else row by row.
  index_t count_in_rect(const KeySet& s, const TokenRect& keys) const {
    const GridCoord c = key_->coord(keys.first());
    const bool box = (keys.rows == 1 || keys.pitch == key_->cols) && c.col + keys.cols <= key_->cols &&
                     c.row + keys.rows <= key_->rows;
    if (box && s.lo <= keys.first() && s.hi > keys.last() && s.sink_end <= keys.first())
      return s.frame.contains(c.frame) ? s.row.count_in(c.row, c.row + keys.rows) * s.col.count_in(c.col, c.col + keys.cols)
                                       : 0;
    index_t n = 0;
    for (index_t r = 0; r < keys.rows; ++r) {
      const index_t a = keys.start + r * keys.pitch;
      n += count_in(*key_, s, a, a + keys.cols);
    }
    return n;
  }

  BlockCoverage classify_pairwise(const TokenRect& queries, const TokenRect& keys) const {
    bool all = true, any = false;
    for (index_t i = 0; i < queries.size(); ++i)
      for (index_t j = 0; j < keys.size(); ++j) {
        const bool a = allowed(queries.at(i), keys.at(j));
        all = all && a;
        any = any || a;
        if (any && !all) return BlockCoverage::partial;
      }
    return all ? BlockCoverage::full : any ? BlockCoverage::partial : BlockCoverage::empty;
  }

  const Segment* query_;
  const Segment* key_;
  const Rule* rule_;
  index_t sinks_;
};

}  // namespace mmattn
