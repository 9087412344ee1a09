#pragma once
// A paged copy of a [tokens, heads, head_dim] K or V for the tests: the vLLM pool
// [num_blocks, block_size, heads, head_dim] with the logical blocks at shuffled physical blocks,
// spare blocks and the unused tail of the last block NaN (a kernel that reads them shows it).

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "mmattn/paged_kv.hpp"
#include "mmattn/tensor_view.hpp"
#include "test_util.hpp"

namespace mmattn::test {

template <class T>
struct PagedCache {
  std::vector<T> pool;
  std::vector<std::int32_t> table;
  PagedKVView<T> view;

  // src: any view with tokens, heads, head_dim and operator(); spare: unused physical blocks.
  template <class Src>
  PagedCache(const Src& src, index_t block_size, index_t spare, std::mt19937& gen) {
    const index_t used = (src.tokens + block_size - 1) / block_size, blocks = used + spare;
    std::vector<std::int32_t> physical(static_cast<size_t>(blocks));
    std::iota(physical.begin(), physical.end(), 0);
    std::shuffle(physical.begin(), physical.end(), gen);
    table.assign(physical.begin(), physical.begin() + used);
    pool.assign(static_cast<size_t>(blocks * block_size * src.heads * src.head_dim),
                T(std::numeric_limits<float>::quiet_NaN()));
    view = view_paged(pool.data(), blocks, block_size, src.heads, src.head_dim, table.data(), used, src.tokens);
    for_each_index(view_thd<T>(nullptr, src.tokens, src.heads, src.head_dim), [&](index_t t, index_t h, index_t d) {
      view(t, h, d) = T(static_cast<float>(src(t, h, d)));
    });
  }
  PagedCache(const PagedCache&) = delete;
  PagedCache& operator=(const PagedCache&) = delete;

  PagedKVView<const T> cview() const { return view; }
};

}  // namespace mmattn::test
