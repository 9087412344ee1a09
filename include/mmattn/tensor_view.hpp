#pragma once
// Non-owning strided views of Q, K, V, O ([tokens, heads, head_dim]) and of the
// log-sum-exp output ([tokens, heads]). Any storage order is a choice of strides.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "mmattn/config.hpp"

namespace mmattn {

// Element counts, not bytes. Default layout is the one runtimes store QKV in.
template <class T>
struct TensorView {
  T* data = nullptr;
  index_t tokens = 0, heads = 0, head_dim = 0;
  index_t token_stride = 0, head_stride = 0, dim_stride = 1;

  T* row(index_t token, index_t head) const { return data + token * token_stride + head * head_stride; }
  T& operator()(index_t token, index_t head, index_t d) const { return row(token, head)[d * dim_stride]; }
  index_t size() const { return tokens * heads * head_dim; }

  operator TensorView<const T>() const {  // NOLINT: views convert to read-only like pointers do
    return {data, tokens, heads, head_dim, token_stride, head_stride, dim_stride};
  }
};

// [tokens, heads] log-sum-exp per query token and head, natural log of the scaled scores.
struct LseView {
  float* data = nullptr;
  index_t tokens = 0, heads = 0;
  index_t token_stride = 0, head_stride = 1;
  float& operator()(index_t token, index_t head) const { return data[token * token_stride + head * head_stride]; }
  explicit operator bool() const { return data != nullptr; }
};

// [tokens, heads, head_dim], contiguous: what a fused QKV projection writes.
template <class T>
TensorView<T> view_thd(T* data, index_t tokens, index_t heads, index_t head_dim) {
  return {data, tokens, heads, head_dim, heads * head_dim, head_dim, 1};
}

// [heads, tokens, head_dim], contiguous: the "transposed" layout many frameworks use.
template <class T>
TensorView<T> view_htd(T* data, index_t tokens, index_t heads, index_t head_dim) {
  return {data, tokens, heads, head_dim, head_dim, tokens * head_dim, 1};
}

template <class T>
TensorView<T> view_strided(T* data, index_t tokens, index_t heads, index_t head_dim, index_t token_stride,
                           index_t head_stride, index_t dim_stride) {
  return {data, tokens, heads, head_dim, token_stride, head_stride, dim_stride};
}

// A row-major Eigen matrix of shape (tokens, heads * head_dim), as a [tokens, heads, head_dim] view.
template <class Derived>
auto view_matrix(Eigen::PlainObjectBase<Derived>& m, index_t heads) {
  using Scalar = typename Derived::Scalar;
  static_assert(Derived::IsRowMajor, "view_matrix: the matrix must be row-major (tokens, heads * head_dim)");
  MMATTN_REQUIRE(heads > 0 && m.cols() % heads == 0,
                 "view_matrix: heads (" + std::to_string(heads) + ") must divide the column count (" +
                     std::to_string(m.cols()) + ")");
  return view_thd<Scalar>(m.data(), m.rows(), heads, m.cols() / heads);
}
template <class Derived>
auto view_matrix(const Eigen::PlainObjectBase<Derived>& m, index_t heads) {
  using Scalar = const typename Derived::Scalar;
  static_assert(Derived::IsRowMajor, "view_matrix: the matrix must be row-major (tokens, heads * head_dim)");
  MMATTN_REQUIRE(heads > 0 && m.cols() % heads == 0,
                 "view_matrix: heads (" + std::to_string(heads) + ") must divide the column count (" +
                     std::to_string(m.cols()) + ")");
  return view_thd<Scalar>(m.data(), m.rows(), heads, m.cols() / heads);
}

inline LseView view_lse(float* data, index_t tokens, index_t heads) { return {data, tokens, heads, heads, 1}; }

// The element type behind any view with row(token, head): TensorView<const bfloat16> -> bfloat16.
template <class View>
using view_element_t = std::remove_cv_t<std::remove_pointer_t<decltype(std::declval<const View&>().row(0, 0))>>;

namespace detail {

// Largest element offset of a view, or fails if a stride is negative or the offset overflows.
inline index_t checked_extent(const char* name, std::array<index_t, 3> extents, std::array<index_t, 3> strides) {
  index_t last = 0;
  for (size_t i = 0; i < 3; ++i) {
    MMATTN_REQUIRE(strides[i] >= 0, std::string(name) + ": negative stride " + std::to_string(strides[i]));
    if (extents[i] == 0) return 0;
    index_t step = 0;
    MMATTN_REQUIRE(!__builtin_mul_overflow(extents[i] - 1, strides[i], &step) &&
                       !__builtin_add_overflow(last, step, &last),
                   std::string(name) + ": strides overflow the index type");
  }
  return last;
}

// Outputs are written by several threads: two elements must never share an address.
inline void require_no_overlap(const char* name, std::array<index_t, 3> extents, std::array<index_t, 3> strides) {
  if (extents[0] == 0 || extents[1] == 0 || extents[2] == 0) return;  // no elements: any strides
  std::array<size_t, 3> order{0, 1, 2};
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return strides[a] < strides[b]; });
  index_t span = 1;  // elements covered by the faster-varying axes so far
  for (size_t i : order) {
    if (extents[i] <= 1) continue;
    MMATTN_REQUIRE(strides[i] >= span, std::string(name) + ": strides make elements overlap");
    // The last span can exceed the index type even when every offset fits; then no axis follows.
    if (__builtin_mul_overflow(strides[i], extents[i], &span)) span = std::numeric_limits<index_t>::max();
  }
}

}  // namespace detail

template <class T>
void validate_view(const char* name, const TensorView<T>& v, bool is_output) {
  MMATTN_REQUIRE(v.tokens >= 0 && v.heads >= 0 && v.head_dim >= 0, std::string(name) + ": negative shape");
  // Not size() == 0: tokens x heads x head_dim can wrap to 0.
  MMATTN_REQUIRE(v.data != nullptr || v.tokens == 0 || v.heads == 0 || v.head_dim == 0,
                 std::string(name) + ": null data");
  const std::array<index_t, 3> extents{v.tokens, v.heads, v.head_dim};
  const std::array<index_t, 3> strides{v.token_stride, v.head_stride, v.dim_stride};
  detail::checked_extent(name, extents, strides);
  if (is_output) detail::require_no_overlap(name, extents, strides);
}

// The bytes a view spans, [begin, end) (empty for an empty view): outputs must not share any
// with an input or another output, since outputs are written while inputs are still read.
struct MemoryRange {
  std::uintptr_t begin = 0, end = 0;

  template <class T>
  static MemoryRange of(T* data, index_t last_offset) {
    const auto b = reinterpret_cast<std::uintptr_t>(data);
    return {b, b + static_cast<std::uintptr_t>(last_offset + 1) * sizeof(T)};
  }
  bool overlaps(const MemoryRange& o) const { return begin < end && o.begin < o.end && begin < o.end && o.begin < end; }
};

template <class T>
MemoryRange memory_range(const TensorView<T>& v) {  // a validated view
  if (v.tokens == 0 || v.heads == 0 || v.head_dim == 0) return {};
  return MemoryRange::of(v.data, (v.tokens - 1) * v.token_stride + (v.heads - 1) * v.head_stride +
                                     (v.head_dim - 1) * v.dim_stride);
}
inline MemoryRange memory_range(const LseView& v) {
  if (!v || v.tokens == 0 || v.heads == 0) return {};
  return MemoryRange::of(v.data, (v.tokens - 1) * v.token_stride + (v.heads - 1) * v.head_stride);
}

inline void validate_lse(const LseView& lse, index_t tokens, index_t heads) {
  if (!lse) return;
  MMATTN_REQUIRE(lse.tokens == tokens && lse.heads == heads,
                 "lse: shape [" + std::to_string(lse.tokens) + ", " + std::to_string(lse.heads) + "] must be [" +
                     std::to_string(tokens) + ", " + std::to_string(heads) + "]");
  const std::array<index_t, 3> extents{lse.tokens, lse.heads, 1};
  const std::array<index_t, 3> strides{lse.token_stride, lse.head_stride, 1};
  detail::checked_extent("lse", extents, strides);
  detail::require_no_overlap("lse", extents, strides);
}

}  // namespace mmattn
