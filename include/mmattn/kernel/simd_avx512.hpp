#pragma once
// The prefill micro-kernels compiled for AVX-512 (F, DQ, BW, VL), whatever the build's flags: a
// target region around kernel/simd_attention.inl. Run only where isa_supported(Isa::kAvx512).

#include "mmattn/kernel/isa.hpp"
#include "mmattn/kernel/simd_avx2.hpp"

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

// Everything defined from here to the pop is compiled for AVX-512; nothing may be included inside.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")
#endif

namespace mmattn::kernel::avx512 {

struct Vec {
  using V = __m512;
  static constexpr int kWidth = 16;
  // 32 registers: kRows x kPanel = 24 accumulators + 3 loads + 1 broadcast. 8 rows rather than 6
  // x 4: a group of rows is then one row of a window tile's 8-wide patches, whose keys are a
  // narrower band of the tile's key block (BlockRuns::span), and a K^T panel of 48 keys leaves L1
  // room besides (bench/isa_paths).
  static constexpr int kRows = 8, kPanel = 3;

  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_tail(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  // The masked forms with an all-ones mask are the plain instructions; the unmasked intrinsics
  // pass _mm512_undefined_ps(), which GCC 12 reports as uninitialized (GCC bug 105593) in every
  // consumer's -Wall build.
  static constexpr __mmask16 kAll = 0xFFFF;
  static V max(V a, V b) { return _mm512_mask_max_ps(a, kAll, a, b); }  // b when either is NaN
  static V min(V a, V b) { return _mm512_mask_min_ps(a, kAll, a, b); }
  static V ldexp(V p, V n) { return _mm512_mask_scalef_ps(p, kAll, p, n); }
  static V zero_where_below(V x, V lo, V value) {
    return _mm512_mask_mov_ps(value, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), zero());
  }
  static constexpr int kRegisters = 32;
  static constexpr bool kHasHalf = true;
  static V load_bf16(const Eigen::bfloat16* p) {  // the top half of an fp32: a shift
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static V load_half(const Eigen::half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // Lanes summed down to 4.
  static __m128 quarter(V x) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }
  // Once per row and block: a plain loop over the lanes costs nothing measurable.
  static float reduce_max(V x) {
    alignas(64) float lane[kWidth];
    _mm512_store_ps(lane, x);
    float m = lane[0];
    for (int i = 1; i < kWidth; ++i) m = lane[i] > m ? lane[i] : m;
    return m;
  }
  static float reduce_add(V x) {
    alignas(64) float lane[kWidth];
    _mm512_store_ps(lane, x);
    float s = 0.0f;
    for (int i = 0; i < kWidth; ++i) s += lane[i];
    return s;
  }
};

#define MMATTN_SIMD_ATTENTION_INL_TARGET
#include "mmattn/kernel/simd_attention.inl"
#include "mmattn/kernel/simd_gemv.inl"
#undef MMATTN_SIMD_ATTENTION_INL_TARGET

}  // namespace mmattn::kernel::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // MMATTN_HAS_X86_KERNELS
