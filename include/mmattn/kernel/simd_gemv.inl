// The decode kernel's row-at-a-time micro-kernels (kernel/decode_kernel.hpp) written over `Vec`:
// simd_avx2.hpp and simd_avx512.hpp include this file inside their namespace and target region,
// after simd_attention.inl, so a build with default flags streams the cache at the CPU's vector
// width. `Gemv` has the interface of the portable kernel::EigenGemv.

#ifndef MMATTN_SIMD_ATTENTION_INL_TARGET
#error "include mmattn/kernel/simd_avx2.hpp or mmattn/kernel/simd_avx512.hpp, not this file"
#endif

struct Gemv {
  // Rows read where they are, widened in registers: float and bf16 always, f16 where Vec has it.
  template <class T>
  static constexpr bool kInPlace = std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> ||
                                   (std::is_same_v<T, Eigen::half> && Vec::kHasHalf);

  template <class T>
  static V load(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return Vec::load(p);
    } else if constexpr (std::is_same_v<T, Eigen::bfloat16>) {
      return Vec::load_bf16(p);
    } else {
      return Vec::load_half(p);
    }
  }

  // s[i * s_stride] = dot(q + i * dim, k) for i < kRows: k is loaded once for the kRows rows, and
  // 4 FMA chains stay in flight (fewer rows split each row's sum over several accumulators).
  template <int kRows, class T>
  static void dots(const float* q, index_t dim, const T* k, float* s, index_t s_stride) {
    constexpr int kChains = 4, kSplit = kChains / kRows > 0 ? kChains / kRows : 1;
    V acc[static_cast<size_t>(kRows)][static_cast<size_t>(kSplit)];
    for (int i = 0; i < kRows; ++i)
      for (int c = 0; c < kSplit; ++c) acc[i][c] = Vec::zero();
    index_t d = 0;
    for (; d + kSplit * kWidth <= dim; d += kSplit * kWidth)
      for (int c = 0; c < kSplit; ++c) {
        const V kv = load(k + d + c * kWidth);
        for (int i = 0; i < kRows; ++i) acc[i][c] = Vec::fmadd(Vec::load(q + i * dim + d + c * kWidth), kv, acc[i][c]);
      }
    for (; d + kWidth <= dim; d += kWidth) {
      const V kv = load(k + d);
      for (int i = 0; i < kRows; ++i) acc[i][0] = Vec::fmadd(Vec::load(q + i * dim + d), kv, acc[i][0]);
    }
    for (int i = 0; i < kRows; ++i)
      for (int c = 1; c < kSplit; ++c) acc[i][0] = Vec::add(acc[i][0], acc[i][c]);
    alignas(16) float x[4];
    // Each row's lanes summed down to 4, then four rows at once: a 4 x 4 transpose and 3 adds.
    __m128 quarter[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int i = 0; i < kRows; ++i) quarter[i] = Vec::quarter(acc[i][0]);
    _MM_TRANSPOSE4_PS(quarter[0], quarter[1], quarter[2], quarter[3]);
    _mm_store_ps(x, _mm_add_ps(_mm_add_ps(quarter[0], quarter[1]), _mm_add_ps(quarter[2], quarter[3])));
    for (int i = 0; i < kRows; ++i) {
      for (index_t t = d; t < dim; ++t) x[i] += q[i * dim + t] * static_cast<float>(k[t]);
      s[i * s_stride] = x[i];
    }
  }

  // acc + i * dim += sum_j p[i * p_stride + j] * v[j][0, dim) for i < kRows, j < keys. kChunks
  // vectors of each row stay in registers over all the keys (half the register file), and each
  // weight is broadcast once per kChunks vectors: FMA-bound, not bound by loads and stores.
  template <int kRows, class T>
  static void axpy_block(const float* p, index_t p_stride, index_t keys, const T* const* v, index_t dim,
                         float* acc) {
    constexpr int kAccumulators = Vec::kRegisters / 2;
    constexpr int kChunks = std::max(1, std::min(8, kAccumulators / kRows));
    index_t d = 0;
    for (; d + kChunks * kWidth <= dim; d += kChunks * kWidth) {
      V a[static_cast<size_t>(kRows)][static_cast<size_t>(kChunks)];
      for (int i = 0; i < kRows; ++i)
        for (int c = 0; c < kChunks; ++c) a[i][c] = Vec::load(acc + i * dim + d + c * kWidth);
      for (index_t j = 0; j < keys; ++j) {
        V vv[static_cast<size_t>(kChunks)];
        for (int c = 0; c < kChunks; ++c) vv[c] = load(v[j] + d + c * kWidth);
        for (int i = 0; i < kRows; ++i) {
          const V w = Vec::set1(p[i * p_stride + j]);
          for (int c = 0; c < kChunks; ++c) a[i][c] = Vec::fmadd(w, vv[c], a[i][c]);
        }
      }
      for (int i = 0; i < kRows; ++i)
        for (int c = 0; c < kChunks; ++c) Vec::store(acc + i * dim + d + c * kWidth, a[i][c]);
    }
    for (; d + kWidth <= dim; d += kWidth) {
      V a[static_cast<size_t>(kRows)];
      for (int i = 0; i < kRows; ++i) a[i] = Vec::load(acc + i * dim + d);
      for (index_t j = 0; j < keys; ++j) {
        const V vv = load(v[j] + d);
        for (int i = 0; i < kRows; ++i) a[i] = Vec::fmadd(Vec::set1(p[i * p_stride + j]), vv, a[i]);
      }
      for (int i = 0; i < kRows; ++i) Vec::store(acc + i * dim + d, a[i]);
    }
    for (; d < dim; ++d)
      for (int i = 0; i < kRows; ++i)
        for (index_t j = 0; j < keys; ++j) acc[i * dim + d] += p[i * p_stride + j] * static_cast<float>(v[j][d]);
  }
};
