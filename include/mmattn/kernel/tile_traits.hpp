#pragma once
// Compile-time tile shape of the tiled kernels.
//
// Defaults measured on this project's 2-core AVX-512 machine (single thread, user time, median of
// 5, 1536 tokens x 8 heads x head_dim 128; see README "Choosing tile sizes"): 128-row query tiles
// beat 64 by ~10% on dense and causal attention because Eigen packs each K and V block once per
// query tile, so taller tiles amortise the packing; 192/256 rows gained nothing further on causal
// (a taller diagonal triangle is masked) and 256-key blocks nothing over 128. Windowed images
// use 64-row (8 x 8) patches: a smaller patch shrinks the window union a tile visits.

#include <algorithm>

#include "mmattn/plan.hpp"

namespace mmattn {

template <int BlockQueries, int BlockKeys, int WindowQueries = 64>
struct TileTraits {
  static constexpr int kBlockQueries = BlockQueries;
  static constexpr int kBlockKeys = BlockKeys;
  static constexpr int kWindowQueries = std::min(WindowQueries, BlockQueries);
  static_assert(kBlockQueries > 0 && kBlockKeys > 0 && kWindowQueries > 0, "tile sizes must be positive");
  static_assert(kBlockQueries % 8 == 0 && kBlockKeys % 8 == 0,
                "tile sizes are multiples of 8 so full tiles fill whole AVX registers");
  static TileSizes sizes() { return {kBlockQueries, kBlockKeys, kWindowQueries}; }
};

using DefaultTiles = TileTraits<128, 128>;

}  // namespace mmattn
