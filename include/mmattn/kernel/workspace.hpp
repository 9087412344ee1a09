#pragma once
// Per-thread scratch of the prefill kernels: tiles of Q, K, V, scores and the accumulator.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "mmattn/config.hpp"
#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/mask/key_set.hpp"
#include "mmattn/token_rect.hpp"

namespace mmattn::kernel {

// K^T and V of key blocks as the micro-kernels read them (kernel/simd_attention.inl), kept by a
// thread for one KV head within one execute_plan call: the query tiles of a head, and the query
// heads of a KV group, visit the same blocks, so each is packed once per thread instead of once
// per tile. Within a call K and V do not change; a new call (`call` differs) or another KV head
// starts afresh. Bounded by kBudgetFloats; blocks past it are packed into scratch every time.
class PackedBlocks {
 public:
  using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;
  static constexpr index_t kBudgetFloats = index_t{2} << 20;  // 8 MiB a thread

  struct Block {
    float* kt = nullptr;        // (dim, keys_p)
    float* v = nullptr;         // (keys, dim_p)
    bool values_finite = true;  // every packed value finite: P V needs no guard
  };

  // Floats one packed block of `keys` keys takes, padded as the widest kernels pad (16 floats).
  static index_t block_floats(index_t keys, index_t dim) {
    constexpr index_t kPad = 16;
    return dim * ((keys + kPad - 1) / kPad * kPad) + keys * ((dim + kPad - 1) / kPad * kPad);
  }

  // Starts using the cache for KV head `kv_head` of call `call` (0: never cache).
  void begin(std::uint64_t call, index_t kv_head) {
    if (call != call_ || kv_head != kv_head_) entries_.clear(), used_ = 0;
    call_ = call, kv_head_ = kv_head;
  }

  std::uint64_t call() const { return call_; }

  Block* find(const TokenRect& keys) {
    for (Entry& e : entries_)
      if (e.keys == keys) return &e.block;
    return nullptr;
  }

  // Room for a block's K^T and V, to be filled by the caller; nullptr when caching is off or the
  // budget is spent. Valid until the next add().
  Block* add(const TokenRect& keys, index_t kt_floats, index_t v_floats) {
    const index_t floats = kt_floats + v_floats;
    if (call_ == 0 || used_ + floats > kBudgetFloats) return nullptr;
    if (static_cast<index_t>(storage_.size()) < used_ + floats) {
      const index_t grown = std::min(kBudgetFloats, std::max(2 * (used_ + floats), index_t{1} << 16));
      storage_.resize(static_cast<size_t>(grown));
      for (Entry& e : entries_) e.block.kt = storage_.data() + e.offset, e.block.v = e.block.kt + e.kt_floats;
    }
    float* kt = storage_.data() + used_;
    entries_.push_back({keys, used_, kt_floats, {kt, kt + kt_floats, true}});
    used_ += floats;
    return &entries_.back().block;
  }

 private:
  struct Entry {
    TokenRect keys;
    index_t offset, kt_floats;
    Block block;
  };

  std::uint64_t call_ = 0;
  index_t kv_head_ = -1;
  std::vector<Entry> entries_;
  Buffer storage_;
  index_t used_ = 0;
};

// Per-thread scratch; grows to the largest tile seen and is then reused.
struct Workspace {
  // Aligned to Eigen's packet size: a product's vectorised path then does not depend on where a
  // thread's buffers happen to sit, so every thread computes the same bits.
  using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;
  Buffer q, k, v, scores, acc, row_max, row_sum;
  Buffer packed;             // a block's K^T or V packed for the micro-kernels when not cached
  std::vector<KeyRun> runs;  // a masked row's allowed keys
  BlockRuns block_runs;      // a partial block's allowed keys, row by row
  std::vector<KeyRun> spans;  // the keys each group of micro-kernel rows works on
  std::vector<const float*> key_rows;  // where a block's K or V rows start
  PackedBlocks packed_blocks;

  KeyRun* group_spans(index_t groups) {
    if (static_cast<index_t>(spans.size()) < groups) spans.resize(static_cast<size_t>(groups));
    return spans.data();
  }

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
