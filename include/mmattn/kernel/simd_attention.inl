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
// registers across the whole depth, so C is touched once per tile.

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

// C (rows_p, width) = or += A (rows_p, depth) B, B one panel (depth, width = `vectors` vectors).
template <bool kAccumulate, int NV = Vec::kPanel>
inline void panel_product(int vectors, const float* a, index_t a_row, const float* b, float* c, index_t ldc,
                          index_t rows_p, index_t depth) {
  if constexpr (NV > 1) {
    if (vectors < NV) return panel_product<kAccumulate, NV - 1>(vectors, a, a_row, b, c, ldc, rows_p, depth);
  }
  for (index_t i = 0; i < rows_p; i += Vec::kRows)
    gemm_tile<NV, kAccumulate>(a + i * a_row, a_row, b, NV * kWidth, c + i * ldc, ldc, depth);
}

// C (rows_p, n_p) = or += A (rows_p, depth) B (depth, n_p), B panel-major. rows_p is a multiple
// of kRows, n_p of kWidth.
template <bool kAccumulate>
inline void product(const float* a, index_t a_row, const float* b, float* c, index_t ldc, index_t rows_p, index_t n_p,
                    index_t depth) {
  for (index_t j = 0; j < n_p; j += kPanelWidth)
    panel_product<kAccumulate>(static_cast<int>(panel_width(n_p, j) / kWidth), a, a_row, b + j * depth, c + j, ldc,
                               rows_p, depth);
}

// S (rows_p, keys_p) = Q (rows_p, dim) K^T, with K^T packed panel-major (dim, keys_p).
inline void scores_product(const float* q, const float* kt, float* s, index_t rows_p, index_t keys_p, index_t dim) {
  product</*kAccumulate=*/false>(q, dim, kt, s, keys_p, rows_p, keys_p, dim);
}

// acc (rows_p, dim_p) += P (rows_p, keys) V (keys, dim_p), with P's rows keys_p apart and V packed
// panel-major.
inline void add_values(const float* p, index_t keys_p, const float* v, float* acc, index_t rows_p, index_t keys,
                       index_t dim_p) {
  product</*kAccumulate=*/true>(p, keys_p, v, acc, dim_p, rows_p, dim_p, keys);
}

// kt = K^T (dim, keys_p) panel-major, zero beyond `keys`; K's row j starts at k[j]. Whole 8 x 8
// blocks go through registers (a panel is a multiple of 8 wide), the ragged edges one by one.
inline void pack_keys_transposed(const float* const* k, index_t keys, index_t keys_p, index_t dim, float* kt) {
  const index_t keys8 = keys / 8 * 8, dim8 = dim / 8 * 8;
  for (index_t j = 0; j < keys8; j += 8) {
    for (index_t i = j + 8; i < std::min(j + 16, keys); ++i) prefetch_bytes(k[i], dim * index_t{sizeof(float)});
    for (index_t c = 0; c < dim8; c += 8)
      avx2::transpose_8x8(k + j, c, kt + panel_index(keys_p, dim, c, j), panel_width(keys_p, j));
  }
  for (index_t c = 0; c < dim; ++c) {
    for (index_t j = c < dim8 ? keys8 : 0; j < keys; ++j) kt[panel_index(keys_p, dim, c, j)] = k[j][c];
    for (index_t j = keys; j < keys_p; ++j) kt[panel_index(keys_p, dim, c, j)] = 0.0f;
  }
}

// vp = V (keys, dim_p) panel-major, zero in the padding columns; V's row j starts at v[j].
inline void pack_values(const float* const* v, index_t keys, index_t dim, index_t dim_p, float* vp) {
  for (index_t c = 0; c < dim_p; c += kPanelWidth) {
    const index_t width = panel_width(dim_p, c), used = std::min(width, dim - c);
    float* panel = vp + c * keys;
    for (index_t j = 0; j < keys; ++j, panel += width) {
      if (c == 0 && j + 4 < keys) prefetch_bytes(v[j + 4], dim * index_t{sizeof(float)});  // whole rows, once
      std::copy(v[j] + c, v[j] + c + used, panel);
      std::fill(panel + used, panel + width, 0.0f);
    }
  }
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
  pack_keys_transposed(key_row_pointers(k, kv_head, keys_rect, ws.k.data(), ws.key_rows), keys, keys_p, dim, block->kt);
  pack_values(key_row_pointers(v, kv_head, keys_rect, ws.k.data(), ws.key_rows), keys, dim, dim_p, block->v);
  block->values_finite = std::isfinite(Eigen::Map<const Eigen::ArrayXf>(block->v, keys * dim_p).sum());
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

// The micro-kernel twin of kernel::attend_tile (same contract); the caller has checked the ISA.
template <class QView, class KView, class VView, class TO>
void attend_tile(const Plan& plan, const QueryTile& tile, index_t block_begin, index_t block_end, index_t head,
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

  for (index_t b = block_begin; b < block_end; ++b) {
    const KeyBlock& block = plan.blocks[static_cast<size_t>(b)];
    const index_t keys = block.keys.size(), keys_p = round_up(keys, kWidth);
    const PackedBlocks::Block packed = pack_block(k, v, kv_head, block.keys, dim, ws);
    float* const s = ws.scores.data();  // (rows_p, keys_p)
    scores_product(q_tile, packed.kt, s, rows_p, keys_p, dim);
    for (index_t i = 0; i < rows_p; ++i) std::fill(s + i * keys_p + keys, s + (i + 1) * keys_p, kNegInf);
    if (!block.full) {
      StridedRowMap scores(s, rows, keys, Eigen::OuterStride<>(keys_p));  // (rows, keys) of (rows_p, keys_p)
      apply_block_mask(scores, tile.queries, block.keys, plan.mask(tile, block), ws.runs);
    }
    for (index_t i = 0; i < rows_p; ++i) {
      const float alpha = softmax_row(s + i * keys_p, keys_p, row_max[i], row_sum[i], scaling.exp_factor);
      if (alpha != 1.0f) scale_row(acc + i * dim_p, dim_p, alpha);
    }
    // As in tiled_attention.hpp: a partial block whose values are not all finite multiplies a
    // copy with those rows zeroed, then adds each such row alone to the rows that see it.
    if (block.full || packed.values_finite) {
      add_values(s, keys_p, packed.v, acc, rows_p, keys, dim_p);
    } else {
      const ConstStridedRowMap v_block = key_rows(v, kv_head, block.keys, ws.v.data());  // (keys, dim)
      const NonFiniteRows bad = take_nonfinite_rows(v_block, ws.v.data());             // ws.v may hold v_block
      float* const clean = ws.packed.data();
      ws.key_rows.resize(static_cast<size_t>(keys));
      for (index_t j = 0; j < keys; ++j) ws.key_rows[static_cast<size_t>(j)] = ws.v.data() + j * dim;
      pack_values(ws.key_rows.data(), keys, dim, dim_p, clean);
      add_values(s, keys_p, clean, acc, rows_p, keys, dim_p);
      add_nonfinite_rows(bad, s, keys_p, acc, dim_p, tile.queries, block.keys, plan.mask(tile, block));
    }
  }

  for (index_t i = 0; i < rows; ++i) {
    const float inv = normaliser(row_sum[i]);
    const index_t token = tile.queries.at(i) - plan.query_begin;
    TO* dst = out.row(token, head);
    float* const o = acc + i * dim_p;
    if (std::is_same_v<TO, float> && out.dim_stride == 1) {
      scale_row(o, dim_p, inv);  // the padding columns beyond dim are scratch
      for (index_t d = 0; d < dim; ++d) dst[d] = static_cast<TO>(o[d]);
    } else {
      for (index_t d = 0; d < dim; ++d) dst[d * out.dim_stride] = static_cast<TO>(o[d] * inv);
    }
    lse.write(token, head, row_max[i], row_sum[i], scaling);
  }
}
