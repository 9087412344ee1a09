#pragma once
// A paged KV cache as serving runtimes keep it (vLLM's layout): a pool of fixed-size blocks
// [num_blocks, block_size, kv_heads, head_dim] and a block table mapping the sequence's logical
// block b (tokens [b * block_size, (b + 1) * block_size)) to a physical block of the pool.
// PagedKVView has the interface the kernels load K and V rows through (row(token, head), tokens,
// heads, head_dim, dim_stride), so K and V may be paged wherever they may be a TensorView.

#include <array>
#include <cstdint>
#include <string>

#include "mmattn/config.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

template <class T>
struct PagedKVView {
  T* pool = nullptr;                          // [num_blocks, block_size, heads, head_dim] through the strides
  const std::int32_t* block_table = nullptr;  // [table_blocks]: logical block -> physical block
  index_t num_blocks = 0, block_size = 0, table_blocks = 0;
  index_t tokens = 0, heads = 0, head_dim = 0;  // tokens <= table_blocks * block_size
  index_t block_stride = 0, token_stride = 0, head_stride = 0, dim_stride = 1;  // elements

  // One division per row: the kernels load whole rows of head_dim elements per call.
  T* row(index_t token, index_t head) const {
    const index_t physical = block_table[token / block_size];
    return pool + physical * block_stride + (token % block_size) * token_stride + head * head_stride;
  }
  T& operator()(index_t token, index_t head, index_t d) const { return row(token, head)[d * dim_stride]; }

  operator PagedKVView<const T>() const {  // NOLINT: views convert to read-only like pointers do
    return {pool,   block_table, num_blocks, block_size,   table_blocks, tokens,     heads,
            head_dim, block_stride, token_stride, head_stride, dim_stride};
  }
};

// The vLLM layout: a contiguous pool [num_blocks, block_size, heads, head_dim] and a table of
// table_blocks entries, of which the first ceil(tokens / block_size) are used.
template <class T>
PagedKVView<T> view_paged(T* pool, index_t num_blocks, index_t block_size, index_t heads, index_t head_dim,
                          const std::int32_t* block_table, index_t table_blocks, index_t tokens) {
  return {pool,   block_table, num_blocks, block_size, table_blocks, tokens, heads, head_dim,
          block_size * heads * head_dim, heads * head_dim, head_dim, 1};
}

// Found by ADL from validate_attention. O(used table entries): every entry a read can reach is
// checked once per call, so a stale table fails with a message instead of reading outside the pool.
template <class T>
void validate_view(const char* name, const PagedKVView<T>& v, bool is_output) {
  const std::string n(name);
  MMATTN_REQUIRE(!is_output, n + ": a paged view is read-only here (K and V only)");
  MMATTN_REQUIRE(v.tokens >= 0 && v.heads >= 0 && v.head_dim >= 0 && v.num_blocks >= 0 && v.table_blocks >= 0,
                 n + ": negative shape");
  MMATTN_REQUIRE(v.block_size > 0, n + ": block_size must be positive, got " + std::to_string(v.block_size));
  if (v.tokens == 0 || v.heads == 0 || v.head_dim == 0) return;
  MMATTN_REQUIRE(v.pool != nullptr, n + ": null pool");
  MMATTN_REQUIRE(v.block_table != nullptr, n + ": null block table");
  const index_t used = (v.tokens - 1) / v.block_size + 1;  // tokens > 0; no overflow near INT64_MAX
  MMATTN_REQUIRE(used <= v.table_blocks, n + ": " + std::to_string(v.tokens) + " tokens need " + std::to_string(used) +
                                             " blocks of " + std::to_string(v.block_size) +
                                             " but the block table holds " + std::to_string(v.table_blocks));
  for (index_t b = 0; b < used; ++b) {
    const index_t physical = v.block_table[b];
    MMATTN_REQUIRE(physical >= 0 && physical < v.num_blocks,
                   n + ": block_table[" + std::to_string(b) + "] = " + std::to_string(physical) +
                       " is outside the pool's " + std::to_string(v.num_blocks) + " blocks");
  }
  // The largest offset in one block, then the block stride on top, without overflow.
  const index_t in_block = detail::checked_extent(name, {v.block_size, v.heads, v.head_dim},
                                                  {v.token_stride, v.head_stride, v.dim_stride});
  index_t last = 0;
  MMATTN_REQUIRE(v.block_stride >= 0, n + ": negative stride " + std::to_string(v.block_stride));
  MMATTN_REQUIRE(!__builtin_mul_overflow(v.num_blocks - 1, v.block_stride, &last) &&
                     !__builtin_add_overflow(last, in_block, &last),
                 n + ": strides overflow the index type");
}

// The bytes the pool spans (validated views only): what validate_attention keeps outputs out of.
template <class T>
MemoryRange memory_range(const PagedKVView<T>& v) {
  if (v.tokens == 0 || v.heads == 0 || v.head_dim == 0 || v.num_blocks == 0) return {};
  const index_t last = (v.num_blocks - 1) * v.block_stride + (v.block_size - 1) * v.token_stride +
                       (v.heads - 1) * v.head_stride + (v.head_dim - 1) * v.dim_stride;
  return MemoryRange::of(v.pool, last);
}

}  // namespace mmattn
