#pragma once
// FlashAttention-2's running softmax for one query tile: row max, row sum and the unnormalised
// output accumulator, rescaled as each key block arrives, normalised once at the end.

#include <Eigen/Core>
#include <cmath>
#include <limits>

#include "mmattn/config.hpp"

namespace mmattn::kernel {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMap = Eigen::Map<RowMatrix>;
using StridedRowMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstStridedRowMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One row's step of the online softmax. s: the row's scores of a key block (scaled; in a masked
// block, masked keys -inf), overwritten with its probabilities against the new running max;
// row_max and row_sum are updated; returns alpha, the factor the caller rescales the row's
// accumulator by (P V stays with the caller). In a masked block a masked key gets exactly 0:
// Eigen's vectorised exp(-inf) is ~3e-39, not 0, and a tiny weight times a huge value would leak
// into the row. A NaN score the row does see reaches row_sum, so the row's output and log-sum-exp
// become NaN instead of the key being dropped.
template <class Row>
float online_softmax_step(Row&& s, float& row_max, float& row_sum, bool masked) {
  const float m_new = std::max(row_max, s.maxCoeff());
  if (m_new == kNegInf) {  // nothing allowed yet: -inf minus -inf would be NaN
    if (s.isNaN().any()) row_sum = std::numeric_limits<float>::quiet_NaN();  // a NaN among no finite score
    s.setZero();
    return 1.0f;
  }
  if (masked) {
    s = (s != kNegInf).select((s - m_new).exp(), 0.0f);  // NaN != -inf: a visible NaN stays NaN
  } else {
    s = (s - m_new).exp();
  }
  const float alpha = std::exp(row_max - m_new);  // 0 on the first allowed block
  row_sum = row_sum * alpha + s.sum();
  row_max = m_new;
  return alpha;
}

// A finished row: what its accumulator is multiplied by, and its log-sum-exp. A row that saw no
// allowed key (sum 0) gets 0 and -inf, so its output is zeros; a NaN sum stays NaN in both.
inline float normaliser(float row_sum) { return row_sum == 0 ? 0.0f : 1.0f / row_sum; }
inline float row_log_sum_exp(float row_max, float row_sum) {
  return row_sum == 0 ? kNegInf : row_max + std::log(row_sum);
}

class OnlineSoftmax {
 public:
  // Buffers belong to the caller's workspace: acc (rows, dim), row_max and row_sum (rows).
  OnlineSoftmax(float* acc, float* row_max, float* row_sum, index_t rows, index_t dim)
      : acc_(acc, rows, dim), max_(row_max, rows), sum_(row_sum, rows) {
    acc_.setZero();
    max_.setConstant(kNegInf);
    sum_.setZero();
  }

  // scores: (rows, keys), scaled; `masked`: a partial block whose masked entries are -inf.
  // Overwritten with the probabilities, and the accumulator rescaled to the new row maxima. The
  // caller then adds P V to accumulator().
  void rescale(RowMap& scores, bool masked) {
    for (index_t i = 0; i < scores.rows(); ++i) {
      const float alpha = online_softmax_step(scores.row(i).array(), max_[i], sum_[i], masked);
      if (alpha != 1.0f) acc_.row(i) *= alpha;
    }
  }
  RowMap& accumulator() { return acc_; }  // (rows, dim), unnormalised

  // Writes row i's normalised output through out(i, c) and its log-sum-exp; a row that saw no
  // allowed key gets zeros and -inf, a row that saw a NaN gets NaN for both.
  template <class WriteRow>
  void finalize(WriteRow&& write_row) const {
    for (index_t i = 0; i < acc_.rows(); ++i)
      write_row(i, acc_.row(i) * normaliser(sum_[i]), row_log_sum_exp(max_[i], sum_[i]));
  }

 private:
  RowMap acc_;
  Eigen::Map<Eigen::VectorXf> max_, sum_;
};

}  // namespace mmattn::kernel
