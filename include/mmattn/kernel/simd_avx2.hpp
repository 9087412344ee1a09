#pragma once
// The prefill micro-kernels compiled for AVX2 + FMA, whatever the build's flags: a target region
// around kernel/simd_attention.inl. Run only where isa_supported(Isa::kAvx2).

#include "mmattn/kernel/isa.hpp"

#if MMATTN_HAS_X86_KERNELS
#include <immintrin.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "mmattn/attention_config.hpp"
#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/kernel/nonfinite_values.hpp"
#include "mmattn/kernel/tile_loads.hpp"
#include "mmattn/kernel/workspace.hpp"
#include "mmattn/plan.hpp"

// Everything defined from here to the pop is compiled for AVX2; nothing may be included inside.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace mmattn::kernel::avx2 {

struct Vec {
  using V = __m256;
  static constexpr int kWidth = 8;
  // 16 registers: kRows x kPanel = 12 accumulators + 2 loads + 1 broadcast.
  static constexpr int kRows = 6, kPanel = 2;

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_tail(const float* p, int n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes));
  }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a b
  static V max(V a, V b) { return _mm256_max_ps(a, b); }                // b when either is NaN
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  // p 2^n for integral n in [-126, 127], the range exp() leaves: n goes straight into the exponent.
  static V ldexp(V p, V n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
  static V zero_where_below(V x, V lo, V value) {
    return _mm256_blendv_ps(value, zero(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  }
  static constexpr int kRegisters = 16;
  static constexpr bool kHasHalf = false;  // F16C is not part of this target
  // bf16 is the top half of an fp32: widen 8 of them with a shift.
  static V load_bf16(const Eigen::bfloat16* p) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  static V load_half(const Eigen::half* p) {  // lane by lane; the decode kernel widens f16 rows first
    alignas(32) float x[kWidth];
    for (int i = 0; i < kWidth; ++i) x[i] = static_cast<float>(p[i]);
    return load(x);
  }
  static __m128 quarter(V x) { return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)); }
  static float reduce_max(V x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static float reduce_add(V x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};

#define MMATTN_SIMD_ATTENTION_INL_TARGET
#include "mmattn/kernel/simd_attention.inl"
#include "mmattn/kernel/simd_gemv.inl"
#undef MMATTN_SIMD_ATTENTION_INL_TARGET

}  // namespace mmattn::kernel::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // MMATTN_HAS_X86_KERNELS
