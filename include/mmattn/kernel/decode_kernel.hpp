#pragma once
// The kernel for query tiles of a few rows (decode; the tail of a chunk), all heads at once.
//
// Decode is memory-bound: each K and V element is used by only G x m query rows (G query heads per
// KV head, m new tokens), so the time is the time to stream the cache. Three things keep this loop
// at the stream's pace (measured on the 2-core AVX-512 machine, bench/decode.cpp):
//  - Memory order. Head by head (attend_tile) walks a [tokens, kv_heads, head_dim] cache with a
//    stride of kv_heads rows: a new 4 KiB page every row or two, which defeats the hardware
//    prefetchers and the TLB (~3 GB/s on 2 cores). Here one work item takes a range of key blocks
//    for every head, and reads a key's rows for all KV heads together.
//  - No tile copies. Each row feeds the G x m query rows of its KV head straight from where it is
//    (a dot product per row for the scores, an axpy per row for P V); no (keys, head_dim) tile is
//    gathered and no GEMM packs it again. 16-bit rows are widened in registers (Eigen's packet
//    casts) where the build has packets of the float width for them, else once into an L1 row.
//  - Registers, not stores. P V keeps each accumulator packet in a register over kSubKeys keys: a
//    load and store per FMA would bound the loop by store throughput.
//
// Same contract as attend_tile: Q and O rows are positions - plan.query_begin; a part of the
// tile's pieces gives a partial result that merges exactly through its log-sum-exp.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/kernel/convert.hpp"
#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/kernel/tile_loads.hpp"
#include "mmattn/kernel/tiled_attention.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::kernel {

// Rows are addressed as row(token, 0) + head * head_stride (TensorView and PagedKVView both are).
//
// Query rows per KV head (G x m) up to which a tile runs through this kernel. Each key row then
// feeds at most this many dot products and axpys; past it a GEMM (attend_tile) reuses K and V
// rows from registers better than row-at-a-time code does.
inline constexpr index_t kMaxDecodeRowsPerKvHead = 16;

// Keys whose V rows one P V step accumulates with the accumulators held in registers.
inline constexpr index_t kSubKeys = 8;

inline index_t heads_per_kv_head(const AttentionConfig& cfg) { return cfg.num_heads / cfg.num_kv_heads; }

inline bool use_decode_kernel(const Plan& plan, const AttentionConfig& cfg) {
  return plan.max_query_tile() * heads_per_kv_head(cfg) <= kMaxDecodeRowsPerKvHead;
}

// Row-at-a-time micro-kernels in Eigen's packets (SSE to AVX-512, whatever the build enables).
namespace gemv {

using Packet = Eigen::internal::packet_traits<float>::type;
inline constexpr index_t kLanes = Eigen::internal::packet_traits<float>::size;
// 4 FMA chains in flight hide the FMA latency (4 cycles); fewer rows than that split each row's
// sum over several accumulators.
inline constexpr int kChains = 4;

// Rows of T are read in place when kLanes of them widen to one float packet: float, and bf16 / f16
// where Eigen has packets of that width (AVX, AVX-512); other rows are widened into a float row.
template <class T>
inline constexpr bool kInPlace = std::is_same_v<T, float> ||
                                 (Eigen::internal::packet_traits<T>::Vectorizable &&
                                  Eigen::internal::packet_traits<T>::size == kLanes);

template <class T>
inline Packet load(const T* p) {
  using namespace Eigen::internal;
  if constexpr (std::is_same_v<T, float>) {
    return ploadu<Packet>(p);
  } else {
    using Narrow = typename packet_traits<T>::type;
    return pcast<Narrow, Packet>(ploadu<Narrow>(p));
  }
}

#if defined(EIGEN_VECTORIZE_SSE)
// The lanes of p summed down to 4: 16 -> 8 -> 4 on AVX-512, 8 -> 4 on AVX, as is on SSE.
template <class P>
inline Eigen::internal::Packet4f to_quarter(const P& p) {
  using namespace Eigen::internal;
  if constexpr (unpacket_traits<P>::size == 4) {
    return p;
  } else {
    return to_quarter(predux_half_dowto4(p));
  }
}
#endif

// s[i * s_stride] = dot(q + i * dim, k) for i < kRows: k is loaded once for the kRows rows.
template <int kRows, class T>
inline void dots(const float* q, index_t dim, const T* k, float* s, index_t s_stride) {
  using namespace Eigen::internal;
  constexpr int kSplit = kChains / kRows > 0 ? kChains / kRows : 1;  // accumulators per row
  Packet acc[static_cast<size_t>(kRows)][static_cast<size_t>(kSplit)];
  for (int i = 0; i < kRows; ++i)
    for (int c = 0; c < kSplit; ++c) acc[i][c] = pset1<Packet>(0.0f);
  index_t d = 0;
  for (; d + kSplit * kLanes <= dim; d += kSplit * kLanes) {
    for (int c = 0; c < kSplit; ++c) {
      const Packet kp = load(k + d + c * kLanes);
      for (int i = 0; i < kRows; ++i) acc[i][c] = pmadd(ploadu<Packet>(q + i * dim + d + c * kLanes), kp, acc[i][c]);
    }
  }
  for (; d + kLanes <= dim; d += kLanes) {
    const Packet kp = load(k + d);
    for (int i = 0; i < kRows; ++i) acc[i][0] = pmadd(ploadu<Packet>(q + i * dim + d), kp, acc[i][0]);
  }
  for (int i = 0; i < kRows; ++i)
    for (int c = 1; c < kSplit; ++c) acc[i][0] = padd(acc[i][0], acc[i][c]);
  float x[static_cast<size_t>(kRows)];
#if defined(EIGEN_VECTORIZE_SSE)
  if constexpr (kRows == 4) {
    // Four horizontal sums at once: each packet halved down to 4 lanes, a 4 x 4 transpose, 3 adds.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // __m128's alignment in a template argument
#endif
    PacketBlock<Packet4f, 4> b;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    for (int i = 0; i < 4; ++i) b.packet[i] = to_quarter(acc[i][0]);
    ptranspose(b);
    pstoreu(x, padd(padd(b.packet[0], b.packet[1]), padd(b.packet[2], b.packet[3])));
  } else
#endif
  {
    for (int i = 0; i < kRows; ++i) x[i] = predux(acc[i][0]);
  }
  for (int i = 0; i < kRows; ++i) {
    for (index_t t = d; t < dim; ++t) x[i] += q[i * dim + t] * static_cast<float>(k[t]);
    s[i * s_stride] = x[i];
  }
}

// Accumulator packets P V keeps in registers: half the register file (32 zmm on AVX-512, 16 on
// AVX and SSE), the rest holds the V packets and the broadcast weights.
inline constexpr int kRegisterAccumulators = kLanes >= 16 ? 16 : 8;

// acc + i * dim += sum_j p[i * p_stride + j] * v[j][0, dim) for i < kRows, j < keys. kChunks
// packets of each row stay in registers over all the keys, and each weight is broadcast once per
// kChunks packets: the loop is FMA-bound instead of bound by loads, broadcasts and stores.
template <int kRows, class T>
inline void axpy_block(const float* p, index_t p_stride, index_t keys, const T* const* v, index_t dim, float* acc) {
  using namespace Eigen::internal;
  constexpr int kChunks = std::max(1, std::min(8, kRegisterAccumulators / kRows));
  index_t d = 0;
  for (; d + kChunks * kLanes <= dim; d += kChunks * kLanes) {
    Packet a[static_cast<size_t>(kRows)][static_cast<size_t>(kChunks)];
    for (int i = 0; i < kRows; ++i)
      for (int c = 0; c < kChunks; ++c) a[i][c] = ploadu<Packet>(acc + i * dim + d + c * kLanes);
    for (index_t j = 0; j < keys; ++j) {
      Packet vp[static_cast<size_t>(kChunks)];
      for (int c = 0; c < kChunks; ++c) vp[c] = load(v[j] + d + c * kLanes);
      for (int i = 0; i < kRows; ++i) {
        const Packet w = pset1<Packet>(p[i * p_stride + j]);
        for (int c = 0; c < kChunks; ++c) a[i][c] = pmadd(w, vp[c], a[i][c]);
      }
    }
    for (int i = 0; i < kRows; ++i)
      for (int c = 0; c < kChunks; ++c) pstoreu(acc + i * dim + d + c * kLanes, a[i][c]);
  }
  for (; d + kLanes <= dim; d += kLanes) {
    Packet a[static_cast<size_t>(kRows)];
    for (int i = 0; i < kRows; ++i) a[i] = ploadu<Packet>(acc + i * dim + d);
    for (index_t j = 0; j < keys; ++j) {
      const Packet vp = load(v[j] + d);
      for (int i = 0; i < kRows; ++i) a[i] = pmadd(pset1<Packet>(p[i * p_stride + j]), vp, a[i]);
    }
    for (int i = 0; i < kRows; ++i) pstoreu(acc + i * dim + d, a[i]);
  }
  for (; d < dim; ++d)
    for (int i = 0; i < kRows; ++i)
      for (index_t j = 0; j < keys; ++j) acc[i * dim + d] += p[i * p_stride + j] * static_cast<float>(v[j][d]);
}

// The rows [0, rows) in groups of 4, the rest by a narrower kernel: one compiled kernel per width.
template <class Kernel>
inline void by_fours(index_t rows, Kernel&& kernel) {
  index_t r = 0;
  for (; r + 4 <= rows; r += 4) kernel(r, std::integral_constant<int, 4>{});
  switch (rows - r) {
    case 3: return kernel(r, std::integral_constant<int, 3>{});
    case 2: return kernel(r, std::integral_constant<int, 2>{});
    case 1: return kernel(r, std::integral_constant<int, 1>{});
    default: return;
  }
}

}  // namespace gemv

// The portable row kernels as a policy; simd_gemv.inl gives each instruction set's `Gemv` the
// same interface, and attend_tile_all_heads picks one at run time.
struct EigenGemv {
  template <class T>
  static constexpr bool kInPlace = gemv::kInPlace<T>;
  template <int kRows, class T>
  static void dots(const float* q, index_t dim, const T* k, float* s, index_t s_stride) {
    gemv::dots<kRows>(q, dim, k, s, s_stride);
  }
  template <int kRows, class T>
  static void axpy_block(const float* p, index_t p_stride, index_t keys, const T* const* v, index_t dim, float* acc) {
    gemv::axpy_block<kRows>(p, p_stride, keys, v, dim, acc);
  }
};

// Rows of the score tile start at a multiple of this many floats (and the buffer on Eigen's largest
// alignment), so Eigen's vectorised exp and sum see every row aligned alike: unaligned, they peel
// a scalar head whose length depends on the heap address, and std::exp and the packet exp differ
// in the last bit, so results would depend on which thread's buffer ran a tile.
inline index_t padded_keys(index_t keys) {
  constexpr index_t kAlign = EIGEN_MAX_ALIGN_BYTES / index_t{sizeof(float)};
  return (keys + kAlign - 1) / kAlign * kAlign;
}

// Asks for a row ahead of its use: the key read next in the same KV head. The hardware prefetchers
// do not bring the stream in early enough for a loop that spends ~100 cycles per 256-byte row
// (GQA, 4 query rows per row): with this, ~150 instead of ~180 cycles per (key, KV head) for K and
// V together on the 2-core AVX-512 machine (16k bf16 tokens, one thread).
template <class T>
inline void prefetch_row(const T* row, index_t dim, index_t dim_stride) {
  constexpr index_t kLine = 64;
  const char* bytes = reinterpret_cast<const char*>(row);
  const index_t span = ((dim - 1) * dim_stride + 1) * index_t{sizeof(T)};
  for (index_t b = 0; b < span; b += kLine) __builtin_prefetch(bytes + b);
}

// Per-thread scratch; grows to the largest shape seen and is then reused.
struct DecodeWorkspace {
  using Aligned = std::vector<float, Eigen::aligned_allocator<float>>;
  std::vector<float> q, acc;            // (heads * m, head_dim): row head * m + i
  Aligned scores;                       // (heads * m, keys of a block), rows padded_keys apart
  std::vector<float> row_max, row_sum;  // (heads * m)
  std::vector<float> bias;              // (m, keys): 0 or -inf, a partial block's mask
  std::vector<float> rows;              // (kSubKeys + 1, head_dim): widened rows, then a zero row
  std::vector<KeyRun> runs;             // a masked row's allowed keys

  void reserve(index_t query_rows, index_t m, index_t keys, index_t dim) {
    grow(q, query_rows * dim), grow(acc, query_rows * dim), grow(scores, query_rows * padded_keys(keys));
    grow(row_max, query_rows), grow(row_sum, query_rows), grow(bias, m * keys);
    grow(rows, (kSubKeys + 1) * dim);
  }

 private:
  template <class Buffer>
  static void grow(Buffer& buf, index_t n) {
    if (static_cast<index_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  }
};

// Q K^T for one key block: scores(r, j) for every head's rows, key by key in memory order (row
// (key, kv_head) for every KV head, then the next key). kInPlace: rows are read where they are,
// else widened into ws.rows first.
template <class Gemv, bool kInPlace, class KView>
void block_scores(const KView& k, const TokenRect& keys, index_t kv_heads, index_t group_rows, index_t dim,
                  bool prefetch, DecodeWorkspace& ws, StridedRowMap& scores) {
  const index_t n = keys.size(), hs = k.head_stride;
  const auto* next = k.row(keys.at(0), 0);
  for (index_t j = 0; j < n; ++j) {
    const auto* base = next;  // row (key j, KV head 0); head kh is kh * head_stride further
    if (j + 1 < n) next = k.row(keys.at(j + 1), 0);
    for (index_t kh = 0; kh < kv_heads; ++kh) {
      if (prefetch && j + 1 < n) prefetch_row(next + kh * hs, dim, k.dim_stride);
      const auto* row = [&] {
        if constexpr (kInPlace) {
          return base + kh * hs;
        } else {
          convert_row(base + kh * hs, dim, k.dim_stride, 1.0f, ws.rows.data());
          return static_cast<const float*>(ws.rows.data());
        }
      }();
      const index_t r0 = kh * group_rows;
      gemv::by_fours(group_rows, [&](index_t r, auto width) {
        Gemv::template dots<decltype(width)::value>(ws.q.data() + (r0 + r) * dim, dim, row, &scores(r0 + r, j),
                                           scores.outerStride());
      });
    }
  }
}

// Are all `dim` elements of a row finite? (Read only for rows some queries of a group must not see.)
template <class T>
bool row_finite(const T* row, index_t dim, index_t stride) {
  for (index_t d = 0; d < dim; ++d)
    if (!std::isfinite(static_cast<float>(row[d * stride]))) return false;
  return true;
}

// acc += P V for one key block, kSubKeys keys at a time per KV head. In a partial block (mask: the
// block's (m, keys) bias, 0 allowed and -inf masked; null for a full block) a row no query of its
// group may see is never read: a zero row stands in (masked keys may hold anything, even NaN). A
// row some queries may see and others not is checked: if it is not finite, 0 x it would be NaN in
// the rows that must not see it, so only the rows that may see it add it, alone (a visible NaN
// then reaches them even where its weight underflowed to 0).
template <class Gemv, bool kInPlace, class VView>
void block_values(const VView& v, const TokenRect& keys, const RowMap* mask, index_t kv_heads, index_t group_rows,
                  index_t dim, bool prefetch, DecodeWorkspace& ws, const StridedRowMap& p) {
  const bool full = mask == nullptr;
  auto may_see = [&](index_t r, index_t j) { return full || (*mask)(r % mask->rows(), j) != kNegInf; };
  using T = view_element_t<VView>;
  using E = std::conditional_t<kInPlace, T, float>;  // what the axpys read
  const index_t n = keys.size(), hs = v.head_stride;
  const T* const zero = zero_row<T>(dim);  // in the view's own type, for rows read in place
  float* const zero_float = ws.rows.data() + kSubKeys * dim;
  std::fill(zero_float, zero_float + dim, 0.0f);
  const T* base[2][kSubKeys];  // rows (key, KV head 0) of this step and of the next
  auto bases = [&](index_t j0, const T** out) {
    for (index_t j = j0; j < std::min(j0 + kSubKeys, n); ++j) out[j - j0] = v.row(keys.at(j), 0);
  };
  bases(0, base[0]);
  const E* rows[kSubKeys];
  index_t alone[kSubKeys];  // keys of this step added row by row
  float* const widened = ws.rows.data();  // one row, used only after the step's rows are consumed
  for (index_t j0 = 0, step = 0; j0 < n; j0 += kSubKeys, ++step) {
    const index_t sn = std::min(kSubKeys, n - j0), next_n = std::min(kSubKeys, n - j0 - sn);
    const T* const* now = base[step % 2];
    const T** ahead = base[(step + 1) % 2];
    bases(j0 + sn, ahead);
    for (index_t kh = 0; kh < kv_heads; ++kh) {
      const index_t r0 = kh * group_rows;
      if (prefetch)
        for (index_t j = 0; j < next_n; ++j) prefetch_row(ahead[j] + kh * hs, dim, v.dim_stride);
      index_t n_alone = 0;
      for (index_t j = 0; j < sn; ++j) {
        bool weighed = full;  // every key of a full block is allowed, so its row holds real data
        if (!full) {
          index_t seeing = 0;
          for (index_t r = r0; r < r0 + group_rows; ++r) seeing += may_see(r, j0 + j);
          weighed = seeing > 0;
          if (weighed && seeing < group_rows && !row_finite(now[j] + kh * hs, dim, v.dim_stride)) {
            alone[n_alone++] = j;
            weighed = false;
          }
        }
        if constexpr (kInPlace) {
          rows[j] = weighed ? now[j] + kh * hs : zero;
        } else if (weighed) {
          float* dst = ws.rows.data() + j * dim;
          convert_row(now[j] + kh * hs, dim, v.dim_stride, 1.0f, dst);
          rows[j] = dst;
        } else {
          rows[j] = zero_float;
        }
      }
      gemv::by_fours(group_rows, [&](index_t r, auto width) {
        Gemv::template axpy_block<decltype(width)::value>(&p(r0 + r, j0), p.outerStride(), sn, rows, dim,
                                                 ws.acc.data() + (r0 + r) * dim);
      });
      for (index_t a = 0; a < n_alone; ++a) {
        const index_t j = alone[a];
        convert_row(now[j] + kh * hs, dim, v.dim_stride, 1.0f, widened);
        for (index_t r = r0; r < r0 + group_rows; ++r) {
          if (!may_see(r, j0 + j)) continue;
          const float w = p(r, j0 + j);
          float* acc = ws.acc.data() + r * dim;
          for (index_t d = 0; d < dim; ++d) acc[d] += w * widened[d];
        }
      }
    }
  }
}

template <class Gemv, class QView, class KView, class VView, class TO>
void attend_tile_all_heads_with(const Plan& plan, const QueryTile& tile, PieceRange pieces,
                                const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                                const TensorView<TO>& out, const LseOut& lse, DecodeWorkspace& ws) {
  using Vec = Eigen::Map<Eigen::VectorXf>;
  using TK = view_element_t<KView>;
  using TV = view_element_t<VView>;
  const index_t m = tile.queries.size(), heads = cfg.num_heads, kv_heads = cfg.num_kv_heads;
  const index_t group_rows = heads_per_kv_head(cfg) * m;  // query rows per KV head, consecutive
  const index_t rows = heads * m, dim = cfg.head_dim;
  ws.reserve(rows, m, plan.tiles.key, dim);
  const ScoreScale scaling = ScoreScale::of(cfg.resolved_scale());
  for (index_t h = 0; h < heads; ++h)
    load_rows(q, h, tile.queries, plan.query_begin, scaling.q_factor, ws.q.data() + h * m * dim);
  Eigen::Map<RowMatrix> acc(ws.acc.data(), rows, dim);  // (heads * m, dim), unnormalised
  Vec row_max(ws.row_max.data(), rows), row_sum(ws.row_sum.data(), rows);
  acc.setZero();
  row_max.setConstant(kNegInf);
  row_sum.setZero();
  // In place when the rows are contiguous and widen in registers; else widened into ws.rows.
  const bool k_in_place = Gemv::template kInPlace<TK> && k.dim_stride == 1;
  const bool v_in_place = Gemv::template kInPlace<TV> && v.dim_stride == 1;
  // With one query row per KV head a row is consumed in ~40 cycles and the hardware prefetchers
  // keep up; software prefetches then only cost issue slots (MHA, 16k: 88 -> 105 cycles).
  const bool prefetch = group_rows > 1;

  plan.for_each_piece(tile, pieces, [&](index_t, const KeyBlock& block) {
    const TokenRect& keys = block.keys;
    const index_t n = keys.size();
    StridedRowMap scores(ws.scores.data(), rows, n, Eigen::OuterStride<>(padded_keys(n)));  // (heads * m, n)
    if constexpr (Gemv::template kInPlace<TK>) {
      if (k_in_place) block_scores<Gemv, true>(k, keys, kv_heads, group_rows, dim, prefetch, ws, scores);
    }
    if (!k_in_place) block_scores<Gemv, false>(k, keys, kv_heads, group_rows, dim, prefetch, ws, scores);

    RowMap bias(ws.bias.data(), m, n);  // (m, n): one mask for all heads, it depends on positions only
    if (!block.full) {
      bias.setZero();
      apply_block_mask(bias, tile.queries, keys, plan.mask(tile, block), ws.runs);
      for (index_t r = 0; r < rows; ++r)  // select, not add: a masked key's score may be anything
        for (index_t j = 0; j < n; ++j)
          if (bias(r % m, j) == kNegInf) scores(r, j) = kNegInf;
    }

    const RowMap* mask = block.full ? nullptr : &bias;
    for (index_t r = 0; r < rows; ++r) {  // masked keys get exactly 0, so block_values never reads them
      const float alpha = online_softmax_step(scores.row(r).array(), row_max[r], row_sum[r], !block.full,
                                              scaling.exp_factor);
      if (alpha != 1.0f) acc.row(r) *= alpha;
    }

    if constexpr (Gemv::template kInPlace<TV>) {
      if (v_in_place) block_values<Gemv, true>(v, keys, mask, kv_heads, group_rows, dim, prefetch, ws, scores);
    }
    if (!v_in_place) block_values<Gemv, false>(v, keys, mask, kv_heads, group_rows, dim, prefetch, ws, scores);
  });

  for (index_t r = 0; r < rows; ++r) {
    const index_t head = r / m, token = tile.queries.at(r % m) - plan.query_begin;
    const float inv = normaliser(row_sum[r]);
    TO* dst = out.row(token, head);
    for (index_t d = 0; d < dim; ++d) dst[d * out.dim_stride] = static_cast<TO>(acc(r, d) * inv);
    lse.write(token, head, row_max[r], row_sum[r], scaling);
  }
}

// All heads of a few-row tile (the contract above), on the row kernels of the active instruction
// set: chosen once per tile, as attend_tile chooses its micro-kernels.
template <class QView, class KView, class VView, class TO>
void attend_tile_all_heads(const Plan& plan, const QueryTile& tile, PieceRange pieces,
                           const AttentionConfig& cfg, const QView& q, const KView& k, const VView& v,
                           const TensorView<TO>& out, const LseOut& lse, DecodeWorkspace& ws) {
  switch (active_isa()) {
#if MMATTN_HAS_X86_KERNELS
    case Isa::kAvx512:
      return attend_tile_all_heads_with<avx512::Gemv>(plan, tile, pieces, cfg, q, k, v, out, lse, ws);
    case Isa::kAvx2:
      return attend_tile_all_heads_with<avx2::Gemv>(plan, tile, pieces, cfg, q, k, v, out, lse, ws);
#endif
    default:
      return attend_tile_all_heads_with<EigenGemv>(plan, tile, pieces, cfg, q, k, v, out, lse, ws);
  }
}

}  // namespace mmattn::kernel
