#pragma once
// Tile sizes: TileSizes, the run-time form every plan is built with, and TileTraits, the
// compile-time form a kernel is instantiated with (its sizes() is a TileSizes). The default is
// written once, as TileSizes' member initialisers; DefaultTiles is made from it.
//
// Why 128 x 128: Eigen packs each K and V block once per query tile, so taller query tiles
// amortise the packing over more rows; beyond 128 rows causal attention masks a taller diagonal
// triangle, and 256-key blocks waste more of the diagonal than their longer GEMMs win back
// (bench/kernel_global: BM_FlashDenseTiles, BM_FlashCausalTiles). Under a 2-D window an image's
// query tile is a 64-row (8 x 8) patch: a smaller patch shrinks the window union the tile visits,
// at the price of shorter GEMMs (bench/regions: BM_WindowSliding).

#include <algorithm>
#include <string>

#include "mmattn/config.hpp"

namespace mmattn {

struct TileSizes {
  index_t query = 128;  // rows of a query tile
  index_t key = 128;    // keys in a key block
  // Rows of an image's query patch under a 2-D window (0: `query`).
  index_t window_query = 64;

  index_t window_query_rows() const { return window_query > 0 ? std::min(window_query, query) : query; }

  constexpr bool valid() const { return query > 0 && key > 0 && window_query >= 0; }
  void validate() const {
    MMATTN_REQUIRE(valid(), "plan: tile sizes must be positive, got " + std::to_string(query) + " x " +
                                std::to_string(key) + " (window " + std::to_string(window_query) + ")");
  }
};

template <int BlockQueries, int BlockKeys, int WindowQueries = static_cast<int>(TileSizes{}.window_query)>
struct TileTraits {
  static constexpr int kBlockQueries = BlockQueries;
  static constexpr int kBlockKeys = BlockKeys;
  static constexpr int kWindowQueries = std::min(WindowQueries, BlockQueries);
  static_assert(TileSizes{kBlockQueries, kBlockKeys, kWindowQueries}.valid() && kWindowQueries > 0,
                "tile sizes must be positive");
  static_assert(kBlockQueries % 8 == 0 && kBlockKeys % 8 == 0,
                "tile sizes are multiples of 8 so full tiles fill whole AVX registers");
  static constexpr TileSizes sizes() { return {kBlockQueries, kBlockKeys, kWindowQueries}; }
};

using DefaultTiles = TileTraits<static_cast<int>(TileSizes{}.query), static_cast<int>(TileSizes{}.key)>;

}  // namespace mmattn
