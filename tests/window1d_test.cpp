// axis_window against NATTEN's own definition (sliding, dilated), the partitioned definition, and
// AxisWindow's range queries against brute force over every range of small axes.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "mmattn/mask/window1d.hpp"

namespace mmattn {
namespace {

// NATTEN's CPU reference (natten_cpu_commons.h, get_window_start), written from its definition.
// Keys are start + j * dilation for j < kernel; NATTEN requires kernel * dilation <= length.
index_t natten_window_start(index_t index, index_t length, index_t kernel, index_t dilation) {
  const index_t ns = kernel / 2;  // neighbourhood size
  if (dilation <= 1)
    return std::max<index_t>(index - ns, 0) + (index + ns >= length) * (length - index - ns - 1);
  const index_t ni = index - ns * dilation;
  if (ni < 0) return index % dilation;
  if (index + ns * dilation >= length) {
    const index_t imodd = index % dilation;
    const index_t a = length / dilation * dilation;
    const index_t b = length - a;
    if (imodd < b) return length - b + imodd - 2 * ns * dilation;
    return a + imodd - kernel * dilation;
  }
  return ni;
}

// NATTEN's get_window_end for dilation 1: the last key, inclusive.
index_t natten_window_last_d1(index_t index, index_t length, index_t kernel) {
  const index_t ns = kernel / 2;
  return std::min<index_t>(index + ns, length - 1) + (index - ns < 0) * (ns - index);
}

std::vector<index_t> keys_of(const AxisWindow& w, index_t length) {
  std::vector<index_t> keys;
  for (index_t x = -3; x < length + 3; ++x)
    if (w.contains(x)) keys.push_back(x);
  return keys;
}

// The documented semantics for any size: split the axis into `dilation` interleaved groups, take the
// dilation-1 window (sliding: NATTEN's; partitioned: [floor(i/k)*k, min(+k, L))) inside the query's
// group, and cover the whole group when the window is larger than it.
std::vector<index_t> expected_keys(index_t q, index_t length, index_t size, index_t dilation, WindowKind kind) {
  const index_t group = q % dilation;
  index_t group_length = 0;
  for (index_t x = group; x < length; x += dilation) ++group_length;
  const index_t i = q / dilation;
  index_t lo = 0, hi = group_length;  // inside the group
  if (kind == WindowKind::sliding) {
    if (size < group_length) lo = natten_window_start(i, group_length, size, 1), hi = lo + size;
  } else {
    lo = i / size * size, hi = std::min(lo + size, group_length);
  }
  std::vector<index_t> keys;
  for (index_t j = lo; j < hi; ++j) keys.push_back(group + j * dilation);
  return keys;
}

std::string where(index_t q, index_t length, index_t size, index_t dilation, WindowKind kind) {
  return std::string(kind == WindowKind::sliding ? "sliding" : "partitioned") + " q=" + std::to_string(q) +
         " L=" + std::to_string(length) + " size=" + std::to_string(size) + " dilation=" + std::to_string(dilation);
}

TEST(AxisWindow, SlidingMatchesNattenWhenKernelTimesDilationFits) {
  int checked = 0;
  for (index_t length = 1; length <= 40; ++length)
    for (index_t dilation = 1; dilation <= 5; ++dilation)
      for (index_t kernel = 1; kernel * dilation <= length; kernel += 2)
        for (index_t q = 0; q < length; ++q) {
          SCOPED_TRACE(where(q, length, kernel, dilation, WindowKind::sliding));
          const AxisWindow w = axis_window(q, length, kernel, dilation, WindowKind::sliding);
          const index_t start = natten_window_start(q, length, kernel, dilation);
          ASSERT_EQ(w.start, start);
          ASSERT_EQ(w.end, start + (kernel - 1) * dilation + 1);  // one past the last key
          ASSERT_EQ(w.step, dilation);
          ASSERT_EQ(w.count(), kernel);  // NATTEN: every query sees exactly `kernel` keys
          ASSERT_TRUE(w.contains(q));
          if (dilation == 1) {
            ASSERT_EQ(w.end - 1, natten_window_last_d1(q, length, kernel));
          }
          // Away from the borders the window is centred on the query.
          const index_t ns = kernel / 2;
          if (q - ns * dilation >= 0 && q + ns * dilation < length) {
            ASSERT_EQ(w.start, q - ns * dilation);
          }
          std::vector<index_t> natten;
          for (index_t j = 0; j < kernel; ++j) natten.push_back(start + j * dilation);
          ASSERT_EQ(keys_of(w, length), natten);
          ASSERT_EQ(natten, expected_keys(q, length, kernel, dilation, WindowKind::sliding));
          ++checked;
        }
  EXPECT_GT(checked, 10000);
}

TEST(AxisWindow, SlidingAndPartitionedMatchTheGroupDefinitionForEverySize) {
  for (const WindowKind kind : {WindowKind::sliding, WindowKind::partitioned})
    for (index_t length = 1; length <= 30; ++length)
      for (index_t dilation = 1; dilation <= 4; ++dilation)
        for (index_t size = 1; size <= length + 4; ++size) {
          if (kind == WindowKind::sliding && size % 2 == 0) continue;  // sliding sizes are odd
          for (index_t q = 0; q < length; ++q) {
            SCOPED_TRACE(where(q, length, size, dilation, kind));
            const AxisWindow w = axis_window(q, length, size, dilation, kind);
            const std::vector<index_t> keys = keys_of(w, length);
            ASSERT_EQ(keys, expected_keys(q, length, size, dilation, kind));
            ASSERT_EQ(w.count(), static_cast<index_t>(keys.size()));
            ASSERT_TRUE(w.contains(q));
            ASSERT_GE(w.start, 0);
            ASSERT_LE(w.end, length);
            ASSERT_EQ(w.end, keys.back() + 1);
          }
        }
}

TEST(AxisWindow, PartitionedIsFloorDivisionIntoFixedWindows) {
  for (index_t length = 1; length <= 40; ++length)
    for (index_t size = 1; size <= length + 3; ++size)
      for (index_t q = 0; q < length; ++q) {
        SCOPED_TRACE(where(q, length, size, 1, WindowKind::partitioned));
        const AxisWindow w = axis_window(q, length, size, 1, WindowKind::partitioned);
        ASSERT_EQ(w.start, q / size * size);
        ASSERT_EQ(w.end, std::min(q / size * size + size, length));
        ASSERT_EQ(w.step, 1);
        // Partitions are an equivalence: q and k share a window exactly when they share floor(x / size).
        for (index_t k = 0; k < length; ++k) ASSERT_EQ(w.contains(k), k / size == q / size) << "k=" << k;
      }
}

TEST(AxisWindow, WindowLargerThanTheAxisCoversIt) {
  for (index_t length = 1; length <= 20; ++length)
    for (index_t q = 0; q < length; ++q) {
      for (index_t size = length | 1; size <= length + 8; size += 2) {  // odd sizes >= length
        const AxisWindow w = axis_window(q, length, size, 1, WindowKind::sliding);
        EXPECT_EQ(w.start, 0) << where(q, length, size, 1, WindowKind::sliding);
        EXPECT_EQ(w.end, length) << where(q, length, size, 1, WindowKind::sliding);
        EXPECT_EQ(w.count(), length);
      }
      for (index_t size = length; size <= length + 8; ++size) {
        const AxisWindow w = axis_window(q, length, size, 1, WindowKind::partitioned);
        EXPECT_EQ(w.start, 0) << where(q, length, size, 1, WindowKind::partitioned);
        EXPECT_EQ(w.end, length) << where(q, length, size, 1, WindowKind::partitioned);
      }
      // Dilated: the window covers the query's whole group.
      for (index_t dilation = 2; dilation <= 4; ++dilation) {
        const index_t group_length = (length - q % dilation + dilation - 1) / dilation;
        for (const WindowKind kind : {WindowKind::sliding, WindowKind::partitioned}) {
          const index_t size = group_length | 1;
          const AxisWindow w = axis_window(q, length, size, dilation, kind);
          EXPECT_EQ(w.start, q % dilation) << where(q, length, size, dilation, kind);
          EXPECT_EQ(w.count(), group_length) << where(q, length, size, dilation, kind);
        }
      }
    }
}

// Every window axis_window makes on small axes, plus hand-made ones (empty, end not on the step grid).
std::vector<AxisWindow> small_windows() {
  std::vector<AxisWindow> windows;
  for (index_t length = 1; length <= 10; ++length)
    for (index_t dilation = 1; dilation <= 3; ++dilation)
      for (index_t size = 1; size <= length + 2; ++size)
        for (index_t q = 0; q < length; ++q) {
          windows.push_back(axis_window(q, length, size, dilation, WindowKind::partitioned));
          if (size % 2 == 1) windows.push_back(axis_window(q, length, size, dilation, WindowKind::sliding));
        }
  for (index_t start = 0; start <= 5; ++start)
    for (index_t end = start; end <= start + 9; ++end)
      for (index_t step = 1; step <= 4; ++step) windows.push_back({start, end, step});
  return windows;
}

TEST(AxisWindow, CountInAndFirstAtOrAfterMatchBruteForceOverAllRanges) {
  const std::vector<AxisWindow> windows = small_windows();
  long ranges = 0;
  for (const AxisWindow& w : windows) {
    std::vector<index_t> keys;
    for (index_t x = w.start; x < w.end; x += w.step) keys.push_back(x);
    ASSERT_EQ(w.count(), static_cast<index_t>(keys.size()));
    for (index_t x = -3; x < w.end + 3; ++x)
      ASSERT_EQ(w.contains(x), std::find(keys.begin(), keys.end(), x) != keys.end());
    for (index_t lo = -3; lo <= w.end + 3; ++lo) {
      const auto it = std::lower_bound(keys.begin(), keys.end(), lo);
      const index_t first = w.first_at_or_after(lo);
      const std::string at = "window {" + std::to_string(w.start) + ", " + std::to_string(w.end) + ", " +
                             std::to_string(w.step) + "} lo=" + std::to_string(lo);
      if (it != keys.end())
        ASSERT_EQ(first, *it) << at;
      else
        ASSERT_GE(first, w.end) << at;  // "a value >= end when there is none"
      for (index_t hi = lo - 2; hi <= w.end + 4; ++hi) {
        const auto n = std::count_if(keys.begin(), keys.end(), [&](index_t x) { return x >= lo && x < hi; });
        ASSERT_EQ(w.count_in(lo, hi), static_cast<index_t>(n)) << at << " hi=" << hi;
        ++ranges;
      }
    }
  }
  EXPECT_GT(ranges, 100000);
}

}  // namespace
}  // namespace mmattn
