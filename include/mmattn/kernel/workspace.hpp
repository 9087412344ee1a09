#pragma once
// Per-thread scratch of the prefill kernels: tiles of Q, K, V, scores and the accumulator.

#include <Eigen/Core>
#include <vector>

#include "mmattn/config.hpp"
#include "mmattn/mask/key_set.hpp"

namespace mmattn::kernel {

// Per-thread scratch; grows to the largest tile seen and is then reused.
struct Workspace {
  // Aligned to Eigen's packet size: a product's vectorised path then does not depend on where a
  // thread's buffers happen to sit, so every thread computes the same bits.
  using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;
  Buffer q, k, v, scores, acc, row_max, row_sum;
  Buffer packed;             // K^T of a block for the micro-kernels (kernel/simd_attention.inl)
  std::vector<KeyRun> runs;  // a masked row's allowed keys

  void reserve(index_t query_rows, index_t key_rows, index_t dim) {
    grow(q, query_rows * dim);
    grow(k, key_rows * dim);
    grow(v, key_rows * dim);
    grow(packed, key_rows * dim);
    grow(scores, query_rows * key_rows);
    grow(acc, query_rows * dim);
    grow(row_max, query_rows);
    grow(row_sum, query_rows);
  }
  static index_t bytes(index_t query_rows, index_t key_rows, index_t dim) {
    return static_cast<index_t>(sizeof(float)) *
           (2 * query_rows * dim + 3 * key_rows * dim + query_rows * key_rows + 2 * query_rows);
  }

 private:
  static void grow(Buffer& buf, index_t n) {
    if (static_cast<index_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  }
};

}  // namespace mmattn::kernel
