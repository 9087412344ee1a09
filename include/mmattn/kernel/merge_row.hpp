#pragma once
// The exact merge of one (token, head) row computed over disjoint key sets, from each part's
// normalised row O_i and log-sum-exp lse_i, given in units of u (the true value / u):
//   lse = log sum_i exp(u lse_i),   O = sum_i w_i O_i  with  w_i = exp(u lse_i - lse).
// Split-KV merges its key chunks with it; merge.hpp builds the public merge of whole tensors on it.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "mmattn/config.hpp"
#include "mmattn/kernel/online_softmax.hpp"

namespace mmattn::kernel {

// part_lse[i] is part i's log-sum-exp in units of `unit`; add_part(i, w, acc) adds w * O_i to
// acc[0, dim). Parts with lse = -inf saw no key: weight 0 and never read, so their rows may hold
// anything. acc receives the merged row; returns the merged lse (true units), -inf (and zeros)
// when no part saw a key, NaN (and a NaN row) when a part saw a NaN score.
template <class AddPart>
float merge_row(index_t parts, const float* part_lse, float unit, index_t dim, AddPart&& add_part, float* acc) {
  float top = kNegInf;
  for (index_t i = 0; i < parts; ++i) top = std::isnan(part_lse[i]) ? part_lse[i] : std::max(top, part_lse[i]);
  Eigen::Map<Eigen::ArrayXf> out(acc, dim);
  if (std::isnan(top)) return out.setConstant(top), top;  // a part saw a NaN: so does the whole row
  out.setZero();
  if (top == kNegInf) return kNegInf;  // -inf minus -inf would be NaN
  float sum = 0;
  for (index_t i = 0; i < parts; ++i) {
    if (part_lse[i] == kNegInf) continue;
    const float w = std::exp(unit == 1.0f ? part_lse[i] - top : (part_lse[i] - top) * unit);  // the largest: 1
    sum += w;
    add_part(i, w, acc);
  }
  out *= 1.0f / sum;  // sum >= 1: the largest part's weight
  return unit * top + std::log(sum);
}

}  // namespace mmattn::kernel
