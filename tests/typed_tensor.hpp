#pragma once
// Q, K, V, O in 16-bit storage for the tests: the same shape and strides as a float test Tensor,
// elements rounded to the type (round to nearest even), padding NaN in the type.

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "mmattn/tensor_view.hpp"
#include "test_util.hpp"

namespace mmattn::test {

template <class T>
const char* type_name();
template <>
inline const char* type_name<float>() { return "f32"; }
template <>
inline const char* type_name<Eigen::bfloat16>() { return "bf16"; }
template <>
inline const char* type_name<Eigen::half>() { return "f16"; }

// Half the distance between 1 and the next value, 2^-p for p significant bits: the largest
// relative error of one rounding to nearest.
template <class T>
double unit_roundoff() {
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) return 0x1p-8;  // 8 significant bits
  if constexpr (std::is_same_v<T, Eigen::half>) return 0x1p-11;      // 11
  return 0x1p-24;                                                    // 24
}

template <class T>
struct TypedTensor {
  std::vector<T> storage;
  TensorView<T> view;

  // All NaN, strides as Tensor(tokens, heads, dim, layout).
  TypedTensor(index_t tokens, index_t heads, index_t dim, Storage layout = Storage::contiguous) {
    const Tensor shape(tokens, heads, dim, layout);
    adopt(shape);
  }
  // src's values rounded to T, in src's storage order.
  explicit TypedTensor(const Tensor& src) {
    adopt(src);
    for_each_index(view, [&](index_t t, index_t h, index_t d) { view(t, h, d) = T(src.view(t, h, d)); });
  }
  TypedTensor(const TypedTensor&) = delete;
  TypedTensor& operator=(const TypedTensor&) = delete;
  TypedTensor(TypedTensor&& o) noexcept : storage(std::move(o.storage)), view(o.view) { view.data = storage.data(); }

  TensorView<const T> cview() const { return view; }

  // The rounded values back in fp32 (contiguous): what the kernels compute from.
  Tensor widened() const {
    Tensor t(view.tokens, view.heads, view.head_dim);
    for_each_index(view, [&](index_t i, index_t h, index_t d) { t.view(i, h, d) = static_cast<float>(view(i, h, d)); });
    return t;
  }

  bool padding_intact() const {
    std::vector<char> covered(storage.size(), 0);
    for_each_index(view, [&](index_t t, index_t h, index_t d) { covered[static_cast<size_t>(&view(t, h, d) - storage.data())] = 1; });
    for (size_t i = 0; i < storage.size(); ++i)
      if (!covered[i] && !std::isnan(static_cast<float>(storage[i]))) return false;
    return true;
  }

 private:
  void adopt(const Tensor& shape) {
    storage.assign(shape.storage.size(), T(std::numeric_limits<float>::quiet_NaN()));
    const TensorView<float>& v = shape.view;
    view = {storage.data(), v.tokens, v.heads, v.head_dim, v.token_stride, v.head_stride, v.dim_stride};
  }
};

}  // namespace mmattn::test
