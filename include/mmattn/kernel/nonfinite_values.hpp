#pragma once
// Masked means not read, for values: how a partial block keeps a non-finite V row away from the
// queries that may not see it.

#include <cmath>
#include <vector>

#include "mmattn/config.hpp"
#include "mmattn/kernel/online_softmax.hpp"
#include "mmattn/mask/pair_mask.hpp"
#include "mmattn/token_rect.hpp"

namespace mmattn::kernel {

// A partial block whose values are not all finite (padding, unwritten cache slots): 0 x NaN is
// NaN, so P V runs on a copy with those rows zeroed, bit for bit the product of an input whose
// masked rows are finite (P is exactly 0 there); then each such row is added alone to the queries
// that may see it, which makes those rows non-finite, as they must be.
struct NonFiniteRows {
  std::vector<index_t> keys;  // block-local indices
  RowMatrix values;           // (keys.size(), dim): the rows as they were
};

// clean (keys, dim) = v with its non-finite rows zeroed; `clean` may be v's own storage.
inline NonFiniteRows take_nonfinite_rows(const ConstStridedRowMap& v, float* clean) {
  NonFiniteRows bad;
  for (index_t j = 0; j < v.rows(); ++j)
    if (!std::isfinite(v.row(j).sum())) bad.keys.push_back(j);
  bad.values.resize(static_cast<index_t>(bad.keys.size()), v.cols());
  for (size_t b = 0; b < bad.keys.size(); ++b) bad.values.row(static_cast<index_t>(b)) = v.row(bad.keys[b]);
  RowMap c(clean, v.rows(), v.cols());
  if (v.data() != clean) c = v;
  for (index_t j : bad.keys) c.row(j).setZero();
  return bad;
}

// acc row i += P(i, j) * row j for every taken row j that query i may see. P(i, j) at
// p[i * ldp + j], acc row i at acc + i * ld_acc.
inline void add_nonfinite_rows(const NonFiniteRows& bad, const float* p, index_t ldp, float* acc, index_t ld_acc,
                               const TokenRect& queries, const TokenRect& keys, const PairMask& mask) {
  for (size_t b = 0; b < bad.keys.size(); ++b) {
    const index_t j = bad.keys[b];
    const auto row = bad.values.row(static_cast<index_t>(b));
    for (index_t i = 0; i < queries.size(); ++i)
      if (mask.allowed(queries.at(i), keys.at(j)))
        Eigen::Map<Eigen::RowVectorXf>(acc + i * ld_acc, row.cols()) += p[i * ldp + j] * row;
  }
}

}  // namespace mmattn::kernel
