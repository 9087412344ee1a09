// The prefill tile loop on hand-blocked micro-kernels, written once over `Vec`, an instruction
// set's vector operations. simd_avx2.hpp and simd_avx512.hpp each include this file inside their
// own namespace and target region, so every function here is compiled once per instruction set
// and is only called after the runtime check (isa.hpp). Include those headers, not this file.
//
// The algorithm is tiled_attention.hpp's (FlashAttention-2, scale inside the exponent, masked keys exactly 0,
// guarded P V for non-finite values); what changes is who owns the loops:
//   S = Q K^T    Q rows broadcast, K^T packed so its panels load as vectors;
//   softmax      row by row over S, vectorised with exp() below;
//   O += P V     P broadcast, V packed with rows padded to whole vectors.
// K^T and V are packed once per block and thread for a whole execute_plan call where the
// workspace's budget allows (PackedBlocks), not once per query tile. Both products are one
// register-blocked micro-kernel, gemm_tile: kRows rows x NV vectors of accumulators stay in
// registers across the whole depth, so C is touched once per tile. In a partial block each group
// of kRows rows multiplies and exponentiates only the span of keys its rows see (BlockRuns), so
// the keys outside a window's band or past a causal diagonal cost nothing.

#ifndef MMATTN_SIMD_ATTENTION_INL_TARGET
#error "include mmattn/kernel/simd_avx2.hpp or mmattn/kernel/simd_avx512.hpp, not this file"
#endif

using V = Vec::V;
inline constexpr index_t kWidth = Vec::kWidth;

inline index_t round_up(index_t n, index_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// exp(x), within 2 ulp of the double-precision exp over [-87, 0], the range the softmax uses.
// Exactly 0 below -87 (so -inf, a masked
// score, gives 0 and no denormal weight), NaN stays NaN: min/max return their second operand when
// one is NaN, and x is always the second.
inline V exp(V x) {
  const V lo = Vec::set1(-87.0f);
  const V xc = Vec::max(lo, Vec::min(Vec::set1(88.0f), x));
  const V shifter = Vec::set1(12582912.0f);  // 1.5 * 2^23: adding it rounds |t| < 2^22 to an integer
  const V n = Vec::sub(Vec::fmadd(xc, Vec::set1(1.44269504088896341f), shifter), shifter);
  V r = Vec::fnmadd(n, Vec::set1(0.693359375f), xc);  // ln 2 in two parts (Cephes): r exact
  r = Vec::fnmadd(n, Vec::set1(-2.12194440e-4f), r);
  V p = Vec::set1(1.9875691500e-4f);
  p = Vec::fmadd(p, r, Vec::set1(1.3981999507e-3f));
  p = Vec::fmadd(p, r, Vec::set1(8.3334519073e-3f));
  p = Vec::fmadd(p, r, Vec::set1(4.1665795894e-2f));
  p = Vec::fmadd(p, r, Vec::set1(1.6666665459e-1f));
  p = Vec::fmadd(p, r, Vec::set1(5.0000001201e-1f));
  p = Vec::fmadd(Vec::mul(p, r), r, Vec::add(r, Vec::set1(1.0f)));
  return Vec::zero_where_below(x, lo, Vec::ldexp(p, n));
}

// C (kRows, NV * kWidth) = or += A (kRows, depth) B (depth, NV * kWidth), with A(i, p) at
// a[i * a_row + p] (broadcast, so any row stride), B's row p at b + p * ldb, C's row i at c + i * ldc.
// B and C are padded to whole vectors, so no load or store needs a mask.
template <int NV, bool kAccumulate>
inline void gemm_tile(const float* a, index_t a_row, const float* b, index_t ldb, float* c, index_t ldc,
                      index_t depth) {
  constexpr int R = Vec::kRows;
  V acc[static_cast<size_t>(R)][static_cast<size_t>(NV)];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = kAccumulate ? Vec::load(c + i * ldc + v * kWidth) : Vec::zero();
  for (index_t p = 0; p < depth; ++p, b += ldb) {
    V bv[static_cast<size_t>(NV)];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = Vec::load(b + v * kWidth);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const V ai = Vec::set1(a[i * a_row + p]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = Vec::fmadd(ai, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) Vec::store(c + i * ldc + v * kWidth, acc[i][v]);
}

// B operands are packed panel-major: the n_p columns in panels of kPanel vectors (the last may be
// narrower), each panel (depth, width) contiguous. Rows of a whole-matrix layout would sit n_p
// floats apart, a stride that folds a panel onto a fraction of the L1 sets; contiguous panels
// stay in L1 while every row block passes over them.
inline constexpr index_t kPanelWidth = Vec::kPanel * kWidth;
inline index_t panel_width(index_t n_p, index_t j) { return std::min(kPanelWidth, n_p - j / kPanelWidth * kPanelWidth); }
// Where column j of row p of a panel-major (depth, n_p) matrix lives.
inline index_t panel_index(index_t n_p, index_t depth, index_t p, index_t j) {
  const index_t start = j / kPanelWidth * kPanelWidth;
  return start * depth + p * panel_width(n_p, j) + (j - start);
}

// C (rows_p, width) = or += A (rows_p, depth) B, B one panel's columns (depth, width = `vectors`
// vectors) with its rows ldb apart.
template <bool kAccumulate, int NV = Vec::kPanel>
inline void panel_product(int vectors, const float* a, index_t a_row, const float* b, index_t ldb, float* c,
                          index_t ldc, index_t rows_p, index_t depth) {
  if constexpr (NV > 1) {
    if (vectors < NV) return panel_product<kAccumulate, NV - 1>(vectors, a, a_row, b, ldb, c, ldc, rows_p, depth);
  }
  for (index_t i = 0; i < rows_p; i += Vec::kRows)
    gemm_tile<NV, kAccumulate>(a + i * a_row, a_row, b, ldb, c + i * ldc, ldc, depth);
}

// The keys (block columns) a group of kRows tile rows works on: all of a full block's, the span
// of the rows' allowed runs in a partial block (BlockRuns::span), so that keys no row of the group
// sees are neither multiplied nor exponentiated. Scores go by whole vectors: `vectors_of`.
inline bool empty(const KeyRun& span) { return span.begin >= span.end; }
inline KeyRun vectors_of(const KeyRun& span) { return {span.begin / kWidth * kWidth, round_up(span.end, kWidth)}; }

// S (rows_p, keys_p) = Q (rows_p, dim) K^T, with K^T packed panel-major (dim, keys_p); row group g
// only over vectors_of(spans[g]), the rest of its rows left unwritten.
inline void scores_product(const float* q, const float* kt, float* s, index_t rows_p, index_t keys_p, index_t dim,
                           const KeyRun* spans) {
  for (index_t j = 0; j < keys_p; j += kPanelWidth) {
    const index_t width = panel_width(keys_p, j);
    for (index_t i = 0; i < rows_p; i += Vec::kRows) {
      const KeyRun span = spans[i / Vec::kRows];
      if (empty(span)) continue;
      const KeyRun cols = vectors_of(span);
      const index_t c0 = std::max(j, cols.begin), c1 = std::min(j + width, cols.end);
      if (c0 < c1)
        panel_product<false>(static_cast<int>((c1 - c0) / kWidth), q + i * dim, dim, kt + j * dim + (c0 - j), width,
                             s + i * keys_p + c0, keys_p, Vec::kRows, dim);
    }
  }
}

// acc (rows_p, dim_p) += P (rows_p, keys) V (keys, dim_p), with P's rows keys_p apart and V packed
// panel-major; row group g only over the keys spans[g].
inline void add_values(const float* p, index_t keys_p, const float* v, float* acc, index_t rows_p, index_t keys,
                       index_t dim_p, const KeyRun* spans) {
  for (index_t c = 0; c < dim_p; c += kPanelWidth) {
    const index_t width = panel_width(dim_p, c);
    for (index_t i = 0; i < rows_p; i += Vec::kRows) {
      const KeyRun span = spans[i / Vec::kRows];
      if (empty(span)) continue;
      panel_product<true>(static_cast<int>(width / kWidth), p + i * keys_p + span.begin, keys_p,
                          v + c * keys + span.begin * width, width, acc + i * dim_p + c, dim_p, Vec::kRows,
                          span.end - span.begin);
    }
  }
}

// 8 elements of a float or bf16 row as floats (bf16 is the top half of an fp32: a shift).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const Eigen::bfloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// Element types whose rows the packing reads in place, widening in registers; others are
// converted into a float row buffer first.
template <class T>
inline constexpr bool kPacksInPlace = std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16>;

// dst (8, 8) with row stride ld_dst = the transpose of the 8 x 8 block whose row i is src[i] + col.
// AVX2 instructions, which the AVX-512 target includes; compiled in each target so that it inlines.
template <class T>
inline void transpose_8x8(const T* const* src, index_t col, float* dst, index_t ld_dst) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = load8(src[i] + col);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);  // a0 b0 a1 b1 | a4 b4 a5 b5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));  // a0 b0 c0 d0 | a4 b4 c4 d4
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// kt = K^T (dim, keys_p) panel-major; K's row j starts at k[j] for every j < keys_p, the rows past
// the block's keys at zeros, so the padding columns need no pass of their own. Groups of 8 keys
// go through registers 8 x 8 at a time (a panel is a multiple of 8 wide), a ragged dim one by one.
template <class T>
inline void pack_keys_transposed(const T* const* k, index_t keys_p, index_t dim, float* kt) {
  const index_t dim8 = dim / 8 * 8;
  for (index_t j = 0; j < keys_p; j += 8) {
    for (index_t i = j + 8; i < std::min(j + 16, keys_p); ++i) prefetch_bytes(k[i], dim * index_t{sizeof(T)});
    const index_t width = panel_width(keys_p, j);
    float* const dst = kt + panel_index(keys_p, dim, 0, j);  // row c of these 8 columns: dst + c * width
    for (index_t c = 0; c < dim8; c += 8) transpose_8x8(k + j, c, dst + c * width, width);
    for (index_t c = dim8; c < dim; ++c)
      for (index_t i = 0; i < 8; ++i) dst[c * width + i] = static_cast<float>(k[j + i][c]);
  }
}

// vp = V (keys, dim_p) panel-major, zero in the padding columns; V's row j starts at v[j]. Returns
// whether every value is finite (x - x is 0 for finite x, NaN for inf and NaN).
template <class T>
inline bool pack_values(const T* const* v, index_t keys, index_t dim, index_t dim_p, float* vp) {
  V check = Vec::zero();
  alignas(64) float tail[kWidth];
  for (index_t j = 0; j < keys; ++j) {
    if (j + 8 < keys) prefetch_bytes(v[j + 8], dim * index_t{sizeof(T)});
    const T* const row = v[j];
    for (index_t c = 0; c < dim_p; c += kWidth) {
      float* const dst = vp + c / kPanelWidth * kPanelWidth * keys + j * panel_width(dim_p, c) + c % kPanelWidth;
      const index_t n = std::min<index_t>(kWidth, dim - c);
      V x;
      if constexpr (std::is_same_v<T, float>) {
        x = n == kWidth ? Vec::load(row + c) : Vec::load_tail(row + c, static_cast<int>(n));
      } else if (n == kWidth) {
        x = Vec::load_bf16(row + c);
      } else {
        for (index_t i = 0; i < kWidth; ++i) tail[i] = i < n ? static_cast<float>(row[c + i]) : 0.0f;
        x = Vec::load(tail);
      }
      Vec::store(dst, x);
      check = Vec::add(check, Vec::sub(x, x));
    }
  }
  return Vec::reduce_add(check) == 0.0f;
}

// use(rows) with rows[j] where row j of a block starts, for j < n: float and bf16 rows read where
// they are (any view whose dims are contiguous: strided, paged), others converted into float rows
// in ws.k first; rows from keys.size() to n point at zeros.
template <class View, class Use>
decltype(auto) with_block_rows(const View& src, index_t head, const TokenRect& keys, index_t n, Workspace& ws,
                               Use&& use) {
  using T = view_element_t<View>;
  if constexpr (kPacksInPlace<T>) {
    if (src.dim_stride == 1) {
      thread_local std::vector<const T*> rows;
      rows.assign(static_cast<size_t>(n), zero_row<T>(src.head_dim));
      for (index_t j = 0; j < keys.size(); ++j) rows[static_cast<size_t>(j)] = src.row(keys.at(j), head);
      return use(static_cast<const T* const*>(rows.data()));
    }
  }
  converted_row_pointers(src, head, keys, ws.k.data(), ws.key_rows);
  ws.key_rows.resize(static_cast<size_t>(n), zero_row<float>(src.head_dim));
  return use(static_cast<const float* const*>(ws.key_rows.data()));
}

// A block's K^T (dim, keys_p) and V (keys, dim_p), from the thread's cache or packed now: into the
// cache while its budget lasts, else into ws.packed / ws.v. V is packed even where its rows could
// be read in place: they sit a token stride apart (often 4 KiB, one L1 set).
template <class KView, class VView>
PackedBlocks::Block pack_block(const KView& k, const VView& v, index_t kv_head, const TokenRect& keys_rect,
                               index_t dim, Workspace& ws) {
  if (const PackedBlocks::Block* hit = ws.packed_blocks.find(keys_rect)) return *hit;
  const index_t keys = keys_rect.size(), keys_p = round_up(keys, kWidth);
  const index_t dim_p = round_up(dim, kWidth);
  PackedBlocks::Block scratch{ws.packed.data(), ws.v.data(), true};
  PackedBlocks::Block* block = ws.packed_blocks.add(keys_rect, dim * keys_p, keys * dim_p);
  if (block == nullptr) block = &scratch;
  with_block_rows(k, kv_head, keys_rect, keys_p, ws,
                  [&](auto rows) { pack_keys_transposed(rows, keys_p, dim, block->kt); });
  block->values_finite = with_block_rows(v, kv_head, keys_rect, keys, ws,
                                         [&](auto rows) { return pack_values(rows, keys, dim, dim_p, block->v); });
  return *block;
}

// One row's online-softmax step over its block scores s[0, keys_p) (padding and masked keys are
// -inf), the vectorised twin of online_softmax_step with the same NaN and empty-row rules.
inline float softmax_row(float* s, index_t keys_p, float& row_max, float& row_sum, float factor) {
  V vmax = Vec::set1(kNegInf);
  for (index_t j = 0; j < keys_p; j += kWidth) vmax = Vec::max(vmax, Vec::load(s + j));
  const float m_new = std::max(row_max, Vec::reduce_max(vmax));
  if (m_new == kNegInf) {  // nothing allowed yet: -inf minus -inf would be NaN
    bool nan = false;
    for (index_t j = 0; j < keys_p; ++j) nan = nan || std::isnan(s[j]);
    if (nan) row_sum = std::numeric_limits<float>::quiet_NaN();  // a NaN among no finite score
    std::fill(s, s + keys_p, 0.0f);
    return 1.0f;
  }
  const V m = Vec::set1(m_new), f = Vec::set1(factor);
  V vsum = Vec::zero();
  for (index_t j = 0; j < keys_p; j += kWidth) {
    const V p = exp(Vec::mul(Vec::sub(Vec::load(s + j), m), f));  // -inf -> exactly 0
    Vec::store(s + j, p);
    vsum = Vec::add(vsum, p);
  }
  const float alpha = std::exp((row_max - m_new) * factor);
  row_sum = row_sum * alpha + Vec::reduce_add(vsum);
  row_max = m_new;
  return alpha;
}

inline void scale_row(float* row, index_t n, float alpha) {
  const V a = Vec::set1(alpha);
  for (index_t c = 0; c < n; c += kWidth) Vec::store(row + c, Vec::mul(a, Vec::load(row + c)));
}

// A tile's output row o (dim_p floats) times inv, into dst (elements `stride` apart). Contiguous
// float rows are copied whole: an element loop stalls on every store to the row's cache lines.
template <class TO>
inline void store_output_row(float* o, index_t dim, index_t dim_p, float inv, TO* dst, index_t stride) {
  if constexpr (std::is_same_v<TO, float>) {
    if (stride == 1) {
      scale_row(o, dim_p, inv);  // the padding columns beyond dim are scratch
      std::copy(o, o + dim, dst);
      return;
    }
  }
  for (index_t d = 0; d < dim; ++d) dst[d * stride] = static_cast<TO>(o[d] * inv);
}

// The micro-kernel twin of kernel::attend_tile (same contract); the caller has checked the ISA.
template <class QView, class KView, class VView, class TO>
void attend_tile(const Plan& plan, const QueryTile& tile, PieceRange pieces, index_t head,
                 const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                 const TensorView<TO>& out, const LseOut& lse, Workspace& ws) {
  const index_t rows = tile.queries.size(), dim = cfg.head_dim, kv_head = cfg.kv_head_of(head);
  const index_t rows_p = round_up(rows, Vec::kRows), dim_p = round_up(dim, kWidth);
  const index_t keys_max = round_up(plan.tiles.key, kWidth);
  ws.reserve(rows_p, keys_max, dim_p);
  const ScoreScale scaling = ScoreScale::of(cfg.resolved_scale());
  float* const q_tile = ws.q.data();  // (rows_p, dim), zero padding rows
  load_rows(q, head, tile.queries, plan.query_begin, scaling.q_factor, q_tile);
  std::fill(q_tile + rows * dim, q_tile + rows_p * dim, 0.0f);
  float* const acc = ws.acc.data();  // (rows_p, dim_p)
  float* const row_max = ws.row_max.data();
  float* const row_sum = ws.row_sum.data();
  std::fill(acc, acc + rows_p * dim_p, 0.0f);
  std::fill(row_max, row_max + rows_p, kNegInf);
  std::fill(row_sum, row_sum + rows_p, 0.0f);

  plan.for_each_piece(tile, pieces, [&](index_t b, const KeyBlock& block) {
    const index_t keys = block.keys.size(), keys_p = round_up(keys, kWidth);
    const PackedBlocks::Block packed = pack_block(k, v, kv_head, block.keys, dim, ws);
    KeyRun* const spans = ws.group_spans(rows_p / Vec::kRows);
    if (block.full) {
      std::fill(spans, spans + rows_p / Vec::kRows, KeyRun{0, keys});
    } else {
      ws.block_runs.compute_once(ws.packed_blocks.call(), &plan, b, tile.queries, block.keys,
                                 plan.mask(tile, block));
      for (index_t i = 0; i < rows_p; i += Vec::kRows) spans[i / Vec::kRows] = ws.block_runs.span(i, i + Vec::kRows);
    }
    float* const s = ws.scores.data();  // (rows_p, keys_p)
    scores_product(q_tile, packed.kt, s, rows_p, keys_p, dim, spans);
    for (index_t i = 0; i < rows_p; ++i) {
      const KeyRun span = spans[i / Vec::kRows];
      if (empty(span)) continue;  // no allowed key: the row's state stays as it is
      const KeyRun cols = vectors_of(span);
      float* const row = s + i * keys_p;
      if (cols.end > keys) std::fill(row + keys, row + cols.end, kNegInf);  // padding keys
      if (!block.full && i < rows) ws.block_runs.mask_row(i, row, keys);
      const float alpha =
          softmax_row(row + cols.begin, cols.end - cols.begin, row_max[i], row_sum[i], scaling.exp_factor);
      if (alpha != 1.0f) scale_row(acc + i * dim_p, dim_p, alpha);
    }
    // As in tiled_attention.hpp: a partial block whose values are not all finite multiplies a
    // copy with those rows zeroed, then adds each such row alone to the rows that see it.
    if (block.full || packed.values_finite) {
      add_values(s, keys_p, packed.v, acc, rows_p, keys, dim_p, spans);
    } else {
      const ConstStridedRowMap v_block = key_rows(v, kv_head, block.keys, ws.v.data());  // (keys, dim)
      const NonFiniteRows bad = take_nonfinite_rows(v_block, ws.v.data());             // ws.v may hold v_block
      float* const clean = ws.packed.data();
      ws.key_rows.resize(static_cast<size_t>(keys));
      for (index_t j = 0; j < keys; ++j) ws.key_rows[static_cast<size_t>(j)] = ws.v.data() + j * dim;
      pack_values(ws.key_rows.data(), keys, dim, dim_p, clean);
      add_values(s, keys_p, clean, acc, rows_p, keys, dim_p, spans);
      add_nonfinite_rows(bad, s, keys_p, acc, dim_p, tile.queries, block.keys, plan.mask(tile, block));
    }
  });

  for (index_t i = 0; i < rows; ++i) {
    const float inv = normaliser(row_sum[i]);
    const index_t token = tile.queries.at(i) - plan.query_begin;
    store_output_row(acc + i * dim_p, dim, dim_p, inv, out.row(token, head), out.dim_stride);
    lse.write(token, head, row_max[i], row_sum[i], scaling);
  }
}
