#pragma once
// Masking of partial blocks. Only partial blocks come here; full blocks never pay for a mask.
// The block's segment pair says, per query row, which keys are allowed as runs of block columns
// (pair_mask.hpp); everything between the runs becomes -inf, range by range, not key by key.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/mask/pair_mask.hpp"

namespace mmattn::kernel {

// Sets s[0, n) to -inf outside the runs [first, last), which are in increasing order.
inline void mask_outside_runs(float* s, index_t n, const KeyRun* first, const KeyRun* last) {
  index_t j = 0;
  for (const KeyRun* r = first; r != last; ++r) {
    std::fill(s + j, s + r->begin, kNegInf);
    j = r->end;
  }
  std::fill(s + j, s + n, kNegInf);
}

// scores: (queries.size(), keys.size()); `runs` is scratch.
template <class Scores>
void apply_block_mask(Scores& scores, const TokenRect& queries, const TokenRect& keys, const PairMask& mask,
                      std::vector<KeyRun>& runs) {
  for (index_t i = 0; i < scores.rows(); ++i) {
    runs.clear();
    mask.runs(queries.at(i), keys, runs);
    mask_outside_runs(&scores(i, 0), scores.cols(), runs.data(), runs.data() + runs.size());
  }
}

// The allowed keys of a partial block for each row of a query tile, worked out once and used
// twice: the micro-kernels compute a group of rows only over the columns its rows' runs span
// (a window's rows see a band of its key rect, a causal diagonal block's rows a prefix of it),
// then mask between the runs.
class BlockRuns {
 public:
  void compute(const TokenRect& queries, const TokenRect& keys, const PairMask& mask) {
    call_ = 0;
    runs_.clear();
    row_end_.clear();
    for (index_t i = 0; i < queries.size(); ++i) {
      mask.runs(queries.at(i), keys, runs_);
      row_end_.push_back(static_cast<index_t>(runs_.size()));
    }
  }

  // compute() for block `block` of plan `plan` in the call numbered `call` (kernel::next_call_id),
  // unless the runs hold it already: the heads of a tile share them. A call may run several plans
  // (context parallelism's groups), so the plan is part of the key. Call 0 always computes.
  void compute_once(std::uint64_t call, const void* plan, index_t block, const TokenRect& queries,
                    const TokenRect& keys, const PairMask& mask) {
    if (call != 0 && call == call_ && plan == plan_ && block == block_) return;
    compute(queries, keys, mask);
    call_ = call, plan_ = plan, block_ = block;
  }

  // Block columns [begin, end) holding every key rows [r0, r1) see; begin == end when none.
  KeyRun span(index_t r0, index_t r1) const {
    KeyRun s{0, 0};
    r1 = std::min(r1, static_cast<index_t>(row_end_.size()));
    for (index_t i = r0; i < r1; ++i) {
      const index_t a = row_begin(i), b = row_end_[static_cast<size_t>(i)];
      if (a == b) continue;
      const KeyRun& lo = runs_[static_cast<size_t>(a)];
      const KeyRun& hi = runs_[static_cast<size_t>(b - 1)];
      s = s.begin == s.end ? KeyRun{lo.begin, hi.end} : KeyRun{std::min(s.begin, lo.begin), std::max(s.end, hi.end)};
    }
    return s;
  }

  // Row i's scores s[0, n) to -inf outside its runs.
  void mask_row(index_t i, float* s, index_t n) const {
    const KeyRun* base = runs_.data();
    mask_outside_runs(s, n, base + row_begin(i), base + row_end_[static_cast<size_t>(i)]);
  }

 private:
  index_t row_begin(index_t i) const { return i == 0 ? 0 : row_end_[static_cast<size_t>(i - 1)]; }

  std::uint64_t call_ = 0;
  const void* plan_ = nullptr;
  index_t block_ = -1;
  std::vector<KeyRun> runs_;     // every row's runs, row after row
  std::vector<index_t> row_end_;  // where row i's runs end in runs_
};

}  // namespace mmattn::kernel
