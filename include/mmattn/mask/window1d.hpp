#pragma once
// One axis of a window, written down once. A 2-D or 3-D window is the product of two or three of
// these, and a rule on positions (causal, a 1-D band, a chunk) is one of them on the position axis,
// so every mask, planner bound and statistic composes from the functions below.

#include <algorithm>

#include "mmattn/config.hpp"

namespace mmattn {

enum class WindowKind : unsigned char {
  sliding,      // NATTEN: centred on the query, shifted at borders so it always holds `size` keys
  partitioned,  // Swin / Qwen2.5-VL: fixed non-overlapping windows; the last one may be smaller
  causal,       // NATTEN's causal neighbourhood: the query and the size - 1 keys before it
};

inline const char* window_kind_name(WindowKind k) {
  constexpr const char* names[] = {"sliding", "partitioned", "causal"};
  return names[static_cast<int>(k)];
}

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
    if (lo >= end) return end;
    return start + ((lo - start - 1) / step + 1) * step;  // lo - start < end - start: no overflow
  }
};

// Dilation d splits the axis into d interleaved groups (positions with equal index mod d); the
// window is taken inside the query's group, as NATTEN defines it. A window larger than the axis
// (images differ in size) covers the whole axis. Precondition: 0 <= q < length, size and dilation
// positive; any such sizes are safe from overflow.
inline AxisWindow axis_window(index_t q, index_t length, index_t size, index_t dilation, WindowKind kind) {
  const index_t group = q % dilation;
  const index_t group_length = (length - group - 1) / dilation + 1;  // q < length, so group < length
  const index_t i = q / dilation;  // index inside the group
  index_t lo = 0, hi = 0;
  if (kind == WindowKind::sliding) {
    size = std::min(size, group_length);
    lo = std::clamp<index_t>(i - size / 2, 0, group_length - size);
    hi = lo + size;
  } else if (kind == WindowKind::partitioned) {
    lo = i / size * size;
    hi = lo + std::min(size, group_length - lo);
  } else {
    lo = i - std::min(size - 1, i);
    hi = i + 1;
  }
  return {group + lo * dilation, group + (hi - 1) * dilation + 1, dilation};
}

}  // namespace mmattn
