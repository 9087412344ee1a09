#pragma once
// Masking of partial blocks. Only partial blocks come here; full blocks never pay for a mask.
// The block's segment pair says, per query row, which keys are allowed as runs of block columns
// (pair_mask.hpp); everything between the runs becomes -inf, range by range, not key by key.

#include <algorithm>
#include <vector>

#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/mask/pair_mask.hpp"

namespace mmattn::kernel {

// scores: (queries.size(), keys.size()); `runs` is scratch.
template <class Scores>
void apply_block_mask(Scores& scores, const TokenRect& queries, const TokenRect& keys, const PairMask& mask,
                      std::vector<KeyRun>& runs) {
  const index_t n = scores.cols();
  for (index_t i = 0; i < scores.rows(); ++i) {
    runs.clear();
    mask.runs(queries.at(i), keys, runs);
    float* s = &scores(i, 0);
    index_t j = 0;
    for (const KeyRun& r : runs) {
      std::fill(s + j, s + r.begin, kNegInf);
      j = r.end;
    }
    std::fill(s + j, s + n, kNegInf);
  }
}

}  // namespace mmattn::kernel
