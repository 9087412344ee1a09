#pragma once
// Masking of partial blocks. Only partial blocks come here; full blocks never pay for a mask.
// The rule is evaluated with the same per-axis window functions the predicate uses.

#include <vector>

#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/plan.hpp"

namespace mmattn::kernel {

// Per-key coordinates of a block, computed once per block instead of once per (query, key).
struct KeyCoords {
  std::vector<index_t> pos, row, col;

  void bind(const TokenRect& keys, const BlockMask& mask) {
    const auto n = static_cast<size_t>(keys.size());
    pos.resize(n);
    row.resize(n);
    col.resize(n);
    for (size_t j = 0; j < n; ++j) {
      pos[j] = keys.at(static_cast<index_t>(j));
      const index_t offset = pos[j] - mask.image_start;
      row[j] = mask.window ? offset / mask.grid_cols : 0;
      col[j] = mask.window ? offset % mask.grid_cols : 0;
    }
  }
};

template <bool kWindow, bool kCausal>
void mask_block(RowMap& scores, const TokenRect& queries, const KeyCoords& keys, const BlockMask& mask) {
  static_assert(kWindow || kCausal, "a partial block is masked by a window, causality or both");
  const index_t n = scores.cols();
  for (index_t i = 0; i < scores.rows(); ++i) {
    float* s = &scores(i, 0);
    const index_t q = queries.at(i);
    AxisWindow rows, cols;
    if constexpr (kWindow) {
      const index_t offset = q - mask.image_start;
      rows = mask.shape.row_window(offset / mask.grid_cols, mask.grid_rows);
      cols = mask.shape.col_window(offset % mask.grid_cols, mask.grid_cols);
    }
    for (index_t j = 0; j < n; ++j) {
      bool ok = true;
      if constexpr (kWindow) ok = rows.contains(keys.row[j]) && cols.contains(keys.col[j]);
      if constexpr (kCausal) ok = ok && keys.pos[j] <= q;
      if (!ok) s[j] = kNegInf;
    }
  }
}

// The one place a block's runtime rule picks a compiled mask.
inline void apply_block_mask(RowMap& scores, const TokenRect& queries, const TokenRect& keys, const BlockMask& mask,
                             KeyCoords& coords) {
  coords.bind(keys, mask);
  if (mask.window && mask.causal) return mask_block</*kWindow=*/true, /*kCausal=*/true>(scores, queries, coords, mask);
  if (mask.window) return mask_block</*kWindow=*/true, /*kCausal=*/false>(scores, queries, coords, mask);
  mask_block</*kWindow=*/false, /*kCausal=*/true>(scores, queries, coords, mask);
}

}  // namespace mmattn::kernel
