#pragma once
// Element conversion into fp32 tiles, done once per loaded row and vectorised: every product and
// every accumulation in the kernels is fp32 whatever the storage type.

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mmattn/config.hpp"

namespace mmattn::kernel {

template <class T>
inline constexpr bool is_supported_element_v =
    std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> || std::is_same_v<T, Eigen::half>;

// dst[i] = scale * float(src[i * stride]) for i < n.
template <class T>
void convert_row(const T* src, index_t n, index_t stride, float scale, float* dst) {
  static_assert(is_supported_element_v<T>, "elements are float, Eigen::bfloat16 or Eigen::half");
  if (stride == 1) {
    if constexpr (std::is_same_v<T, float>) {
      Eigen::Map<Eigen::ArrayXf>(dst, n) = Eigen::Map<const Eigen::ArrayXf>(src, n) * scale;
      return;
    } else if constexpr (std::is_same_v<T, Eigen::bfloat16>) {
      // bf16 is the top half of an fp32: a shift, which the compiler vectorises.
      for (index_t i = 0; i < n; ++i) {
        const std::uint32_t bits = std::uint32_t(src[i].value) << 16;
        float f;
        std::memcpy(&f, &bits, sizeof f);
        dst[i] = f * scale;
      }
      return;
    } else {
      using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
      Eigen::Map<Eigen::ArrayXf>(dst, n) = Eigen::Map<const Array>(src, n).template cast<float>() * scale;
      return;
    }
  }
  for (index_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i * stride]) * scale;
}

}  // namespace mmattn::kernel
