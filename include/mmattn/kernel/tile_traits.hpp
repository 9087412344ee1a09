#pragma once
// Compile-time tile shape of the tiled kernels. Defaults measured on this project's 2-core AVX-512
// machine with bench/kernel_global (see README): 64 query rows keep the (64, head_dim) Q tile and
// the (64, 128) score tile in L1/L2 while 128-key blocks give Eigen's GEMM enough depth to amortise
// its packing.

#include "mmattn/plan.hpp"

namespace mmattn {

template <int BlockQueries, int BlockKeys>
struct TileTraits {
  static constexpr int kBlockQueries = BlockQueries;
  static constexpr int kBlockKeys = BlockKeys;
  static_assert(kBlockQueries > 0 && kBlockKeys > 0, "tile sizes must be positive");
  static_assert(kBlockQueries % 8 == 0 && kBlockKeys % 8 == 0,
                "tile sizes are multiples of 8 so full tiles fill whole AVX registers");
  static TileSizes sizes() { return {kBlockQueries, kBlockKeys}; }
};

using DefaultTiles = TileTraits<64, 128>;

}  // namespace mmattn
