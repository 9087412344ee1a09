#pragma once
// Loading a tile's rows: Q, K and V rows of one head into dense fp32 (rows, dim) buffers, or K and
// V mapped in place when they already are such a matrix.

#include <type_traits>
#include <vector>

#include "mmattn/config.hpp"
#include "mmattn/kernel/convert.hpp"
#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/tensor_view.hpp"
#include "mmattn/token_rect.hpp"

namespace mmattn::kernel {

// Asks for the cache lines of `bytes` bytes from p. One head's rows sit a token stride apart (the
// other heads between them), too far for the hardware prefetchers, so the loops here request the
// rows they will read a few rows ahead.
inline void prefetch_bytes([[maybe_unused]] const void* p, [[maybe_unused]] index_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr index_t kLine = 64;
  for (index_t b = 0; b < bytes; b += kLine) __builtin_prefetch(static_cast<const char*>(p) + b);
#endif
}

// Copies the rows of `rect` (positions, shifted by `first_row`) of one head into a dense
// (rows, dim) float buffer, converting and scaling once per load rather than per product.
// View: anything with row(token, head), head_dim and dim_stride (TensorView, a paged KV cache).
template <class View>
void load_rows(const View& src, index_t head, const TokenRect& rect, index_t first_row, float scale, float* dst) {
  constexpr index_t kAhead = 4;  // rows: enough lines in flight to cover a miss to memory
  const index_t dim = src.head_dim, n = rect.size();
  const index_t row_bytes = src.dim_stride == 1 ? dim * index_t{sizeof(*src.row(0, 0))} : 0;
  for (index_t i = 0; i < n; ++i, dst += dim) {
    if (i + kAhead < n) prefetch_bytes(src.row(rect.at(i + kAhead) - first_row, head), row_bytes);
    convert_row(src.row(rect.at(i) - first_row, head), dim, src.dim_stride, scale, dst);
  }
}

// K or V rows of a block as a (keys, dim) matrix: mapped in place when they already are one
// (contiguous float rows), gathered into `buffer` otherwise.
template <class View>
ConstStridedRowMap key_rows(const View& src, index_t head, const TokenRect& keys, float* buffer) {
  if constexpr (std::is_same_v<View, TensorView<const float>> || std::is_same_v<View, TensorView<float>>) {
    if (keys.contiguous() && src.dim_stride == 1 && (keys.size() == 1 || src.token_stride > 0))
      return ConstStridedRowMap(src.row(keys.start, head), keys.size(), src.head_dim,
                                Eigen::OuterStride<>(keys.size() == 1 ? src.head_dim : src.token_stride));
  }
  load_rows(src, head, keys, 0, 1.0f, buffer);
  return ConstStridedRowMap(buffer, keys.size(), src.head_dim, Eigen::OuterStride<>(src.head_dim));
}

// `dim` zeros of type T, the calling thread's: a row that stands in for keys that must not be read
// (padding, masked). Valid until the thread asks for a longer one.
template <class T>
const T* zero_row(index_t dim) {
  thread_local std::vector<T> zeros;
  if (static_cast<index_t>(zeros.size()) < dim) zeros.assign(static_cast<size_t>(dim), T(0.0f));
  return zeros.data();
}

// Where each K or V row of a block starts once converted to float: rows loaded into `buffer`
// (keys, dim), dim floats each.
template <class View>
const float* const* converted_row_pointers(const View& src, index_t head, const TokenRect& keys, float* buffer,
                                           std::vector<const float*>& rows) {
  load_rows(src, head, keys, 0, 1.0f, buffer);
  rows.resize(static_cast<size_t>(keys.size()));
  for (index_t j = 0; j < keys.size(); ++j) rows[static_cast<size_t>(j)] = buffer + j * src.head_dim;
  return rows.data();
}

}  // namespace mmattn::kernel
