#pragma once
// One axis of a 2-D window, written down once. A 2-D window is the product of two of these,
// so every mask, planner bound and statistic composes from the functions below.

#include <algorithm>

#include "mmattn/config.hpp"

namespace mmattn {

enum class WindowKind : unsigned char {
  sliding,      // NATTEN: centred on the query, shifted at borders so it always holds `size` keys
  partitioned,  // Swin / Qwen2.5-VL: fixed non-overlapping windows; the last one may be smaller
};

// The keys a query sees along one axis: start, start + step, ... < end.
struct AxisWindow {
  index_t start = 0, end = 0, step = 1;

  bool contains(index_t x) const { return x >= start && x < end && (step == 1 || (x - start) % step == 0); }
  index_t count() const { return end > start ? (end - start - 1) / step + 1 : 0; }

  // How many of this window's keys lie in [lo, hi).
  index_t count_in(index_t lo, index_t hi) const {
    const index_t first = first_at_or_after(lo);
    const index_t last = std::min(end, hi);
    return first < last ? (last - first - 1) / step + 1 : 0;
  }
  // The smallest key >= lo, or a value >= end when there is none.
  index_t first_at_or_after(index_t lo) const {
    if (lo <= start) return start;
    return start + (lo - start + step - 1) / step * step;
  }
};

// Dilation d splits the axis into d interleaved groups (positions with equal index mod d); the
// window is taken inside the query's group, as NATTEN defines it. A window larger than the axis
// (images differ in size) covers the whole axis.
inline AxisWindow axis_window(index_t q, index_t length, index_t size, index_t dilation, WindowKind kind) {
  const index_t group = q % dilation;
  const index_t group_length = (length - group + dilation - 1) / dilation;
  const index_t i = q / dilation;  // index inside the group
  index_t lo = 0;
  if (kind == WindowKind::sliding) {
    lo = std::clamp<index_t>(i - size / 2, 0, std::max<index_t>(group_length - size, 0));
  } else {
    lo = i / size * size;
  }
  const index_t hi = std::min(lo + size, group_length);
  return {group + lo * dilation, group + (hi - 1) * dilation + 1, dilation};
}

}  // namespace mmattn
