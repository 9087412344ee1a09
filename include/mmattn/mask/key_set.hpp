#pragma once
// The keys one query may see inside one key segment, in the form every built-in rule produces:
// the grid points whose frame, row and col lie in three per-axis windows (window1d.hpp) and whose
// position lies in [lo, hi) (causality, a 1-D band, a chunk), together with the positions
// [segment start, sink_end) that attention sinks make visible whatever the windows say.
//
// Everything the planner, the kernel's masking and the statistics need follows from that form by
// arithmetic: counts through below() (a lexicographic count over (frame, row, col), O(1)), runs of
// allowed keys along a block's rows, the last allowed key. Nothing here evaluates pairs one by one.

#include <algorithm>
#include <vector>

#include "mmattn/layout.hpp"
#include "mmattn/mask/window1d.hpp"

namespace mmattn {

// What a rule says of every pair of a (queries x keys) block.
enum class BlockCoverage : unsigned char { empty, partial, full };

// Half-open run [begin, end) of block-local key indices.
struct KeyRun {
  index_t begin = 0, end = 0;
};

struct KeySet {
  AxisWindow frame, row, col;  // in the key segment's grid
  index_t lo = 0, hi = 0;      // positions
  index_t sink_end = 0;        // positions [key segment start, sink_end) are seen too

  // Every key of the segment.
  static KeySet all(const Segment& key) {
    return {{0, key.frames, 1}, {0, key.rows, 1}, {0, key.cols, 1}, key.start, key.end(), key.start};
  }
  // Narrows the position bound to [a, b).
  KeySet& within(index_t a, index_t b) {
    lo = std::max(lo, a);
    hi = std::min(hi, b);
    return *this;
  }
  bool no_product() const { return lo >= hi || frame.count() == 0 || row.count() == 0 || col.count() == 0; }
};

namespace detail {

// Grid points of the three windows with position < x, for x in [key.start, key.end()].
inline index_t below(const Segment& key, const KeySet& s, index_t x) {
  const index_t offset = x - key.start;
  if (offset <= 0) return 0;
  const index_t per_col = s.col.count(), per_row = s.row.count() * per_col;
  if (offset >= key.length) return s.frame.count() * per_row;
  const GridCoord c = key.coord(x);
  index_t n = s.frame.count_in(0, c.frame) * per_row;
  if (s.frame.contains(c.frame)) {
    n += s.row.count_in(0, c.row) * per_col;
    if (s.row.contains(c.row)) n += s.col.count_in(0, c.col);
  }
  return n;
}

// Grid points of the windows inside positions [a, b) and the position bound.
inline index_t product_in(const Segment& key, const KeySet& s, index_t a, index_t b) {
  a = std::max({a, s.lo, key.start});
  b = std::min({b, s.hi, key.end()});
  return a < b ? below(key, s, b) - below(key, s, a) : 0;
}

}  // namespace detail

// Allowed keys among positions [a, b) of the key segment.
inline index_t count_in(const Segment& key, const KeySet& s, index_t a, index_t b) {
  a = std::max(a, key.start);
  b = std::min(b, key.end());
  if (a >= b) return 0;
  const index_t sink_hi = std::min(b, s.sink_end);
  if (sink_hi <= a) return detail::product_in(key, s, a, b);
  // Sinks are the prefix [a, sink_hi): all of it, plus the windows' keys after it.
  return (sink_hi - a) + detail::product_in(key, s, sink_hi, b);
}

inline index_t count(const Segment& key, const KeySet& s) { return count_in(key, s, key.start, key.end()); }

inline bool contains(const Segment& key, const KeySet& s, index_t k) {
  if (k < s.sink_end) return true;
  if (k < s.lo || k >= s.hi) return false;
  const GridCoord c = key.coord(k);
  return s.frame.contains(c.frame) && s.row.contains(c.row) && s.col.contains(c.col);
}

// Appends the allowed keys among positions [a, b) as runs of block-local indices (a maps to
// `offset`), in increasing order. Grid rows the windows exclude are skipped whole.
inline void append_runs(const Segment& key, const KeySet& s, index_t a, index_t b, index_t offset,
                        std::vector<KeyRun>& out) {
  a = std::max(a, key.start);
  b = std::min(b, key.end());
  const index_t base = offset - a;  // block index of position p: p + base
  const index_t sink_hi = std::min(b, s.sink_end);
  if (a < sink_hi) {
    out.push_back({a + base, sink_hi + base});
    a = sink_hi;
  }
  a = std::max(a, s.lo);
  b = std::min(b, s.hi);
  for (index_t p = a; p < b;) {
    const GridCoord c = key.coord(p);
    const index_t row_end = std::min(b, p + (key.cols - c.col));
    if (s.frame.contains(c.frame) && s.row.contains(c.row)) {
      const index_t c_end = c.col + (row_end - p), row_start = p - c.col;
      const index_t last = std::min(s.col.end, c_end);
      if (s.col.step == 1) {
        const index_t first = std::max(s.col.start, c.col);
        if (first < last) out.push_back({row_start + first + base, row_start + last + base});
      } else {
        for (index_t x = s.col.first_at_or_after(c.col); x < last; x += s.col.step)
          out.push_back({row_start + x + base, row_start + x + 1 + base});
      }
    }
    p = row_end;
  }
}

// The last allowed key at or after position `from`, or -1: a binary search over count_in.
inline index_t last_key(const Segment& key, const KeySet& s, index_t from = 0) {
  index_t lo = std::max(from, key.start), hi = key.end();  // answer in [lo, hi) if any
  if (lo >= hi || count_in(key, s, lo, hi) == 0) return -1;
  while (hi - lo > 1) {
    const index_t mid = lo + (hi - lo) / 2;
    if (count_in(key, s, mid, hi) > 0) lo = mid;
    else hi = mid;
  }
  return lo;
}

// The first allowed key at or after position `from`, or -1.
inline index_t first_key(const Segment& key, const KeySet& s, index_t from) {
  index_t lo = std::max(from, key.start), hi = key.end();
  if (lo >= hi || count_in(key, s, lo, hi) == 0) return -1;
  while (hi - lo > 1) {  // the answer is in [lo, hi)
    const index_t mid = lo + (hi - lo) / 2;
    if (count_in(key, s, lo, mid) > 0) hi = mid;
    else lo = mid;
  }
  return lo;
}

}  // namespace mmattn
