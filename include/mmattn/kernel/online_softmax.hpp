#pragma once
// FlashAttention-2's running softmax for one query tile: row max, row sum and the unnormalised
// output accumulator, rescaled as each key block arrives, normalised once at the end.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

#include "mmattn/config.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::kernel {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMap = Eigen::Map<RowMatrix>;
using StridedRowMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstStridedRowMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// How the scale enters the softmax. Scores stay raw, q.k (Q loaded times the scale's sign), and
// the scale's magnitude multiplies inside the max-subtracted exponent, exp(factor * (s - max)):
// scale * q.k may pass fp32's range (scale 1e30 on scores of 1e10) while every exponent stays in
// it, so the output is exact; only the log-sum-exp, factor * max + log(sum), rounds to +-inf where
// its true value is past +-3.4e38. Scale 0 is folded into Q instead, since 0 * -inf (a masked key's
// score minus the max) is NaN.
struct ScoreScale {
  float q_factor = 1.0f;  // Q rows are loaded times this: the scale's sign, or 0
  float exp_factor = 1.0f;  // > 0

  static ScoreScale of(float scale) {
    if (scale == 0.0f) return {0.0f, 1.0f};
    return {scale < 0.0f ? -1.0f : 1.0f, std::abs(scale)};
  }
  // The unit split-KV's partial log-sum-exps are kept in (LseOut): with a factor above 1 a part's
  // log-sum-exp may be past fp32's range where the merged output is not, so parts are kept in raw
  // score units and merge exactly; at or below 1, |factor * max| <= |max| and they stay true.
  float partial_unit() const { return std::max(exp_factor, 1.0f); }
};

// One row's step of the online softmax. s: the row's raw scores of a key block (in a masked block,
// masked keys -inf), overwritten with exp(factor * (s - new running max));
// row_max and row_sum are updated; returns alpha, the factor the caller rescales the row's
// accumulator by (P V stays with the caller). In a masked block a masked key gets exactly 0:
// Eigen's vectorised exp(-inf) is ~3e-39, not 0, and a tiny weight times a huge value would leak
// into the row. A NaN score the row does see reaches row_sum, so the row's output and log-sum-exp
// become NaN instead of the key being dropped.
template <class Row>
float online_softmax_step(Row&& s, float& row_max, float& row_sum, bool masked, float factor) {
  const float m_new = std::max(row_max, s.maxCoeff());
  if (m_new == kNegInf) {  // nothing allowed yet: -inf minus -inf would be NaN
    if (s.isNaN().any()) row_sum = std::numeric_limits<float>::quiet_NaN();  // a NaN among no finite score
    s.setZero();
    return 1.0f;
  }
  if (masked) {
    s = (s != kNegInf).select(((s - m_new) * factor).exp(), 0.0f);  // NaN != -inf: a visible NaN stays NaN
  } else {
    s = ((s - m_new) * factor).exp();
  }
  const float alpha = std::exp((row_max - m_new) * factor);  // 0 on the first allowed block
  row_sum = row_sum * alpha + s.sum();
  row_max = m_new;
  return alpha;
}

// A finished row: what its accumulator is multiplied by, and its log-sum-exp. A row that saw no
// allowed key (sum 0) gets 0 and -inf, so its output is zeros; a NaN sum stays NaN in both.
inline float normaliser(float row_sum) { return row_sum == 0 ? 0.0f : 1.0f / row_sum; }
// In units of `unit` (the true value / unit; see ScoreScale::partial_unit).
inline float row_log_sum_exp(float row_max, float row_sum, float factor, float unit) {
  if (row_sum == 0) return kNegInf;
  return unit == 1.0f ? factor * row_max + std::log(row_sum) : factor / unit * row_max + std::log(row_sum) / unit;
}

// Where a tile writes its rows' log-sum-exps: a view (may be empty) and their unit, 1 except for
// split-KV's partials (ScoreScale::partial_unit). Converts from an LseView for every other caller.
struct LseOut {
  LseOut(const LseView& v, bool partial = false) : view(v), partial_(partial) {}  // NOLINT: implicit
  void write(index_t token, index_t head, float row_max, float row_sum, const ScoreScale& scaling) const {
    const float unit = partial_ ? scaling.partial_unit() : 1.0f;
    if (view) view(token, head) = row_log_sum_exp(row_max, row_sum, scaling.exp_factor, unit);
  }

 private:
  LseView view;
  bool partial_;
};

class OnlineSoftmax {
 public:
  // Buffers belong to the caller's workspace: acc (rows, dim), row_max and row_sum (rows).
  OnlineSoftmax(float* acc, float* row_max, float* row_sum, index_t rows, index_t dim, float exp_factor)
      : acc_(acc, rows, dim), max_(row_max, rows), sum_(row_sum, rows), factor_(exp_factor) {
    acc_.setZero();
    max_.setConstant(kNegInf);
    sum_.setZero();
  }

  // scores: (rows, keys), raw; `masked`: a partial block whose masked entries are -inf.
  // Overwritten with the probabilities, and the accumulator rescaled to the new row maxima. The
  // caller then adds P V to accumulator().
  void rescale(RowMap& scores, bool masked) {
    for (index_t i = 0; i < scores.rows(); ++i) {
      const float alpha = online_softmax_step(scores.row(i).array(), max_[i], sum_[i], masked, factor_);
      if (alpha != 1.0f) acc_.row(i) *= alpha;
    }
  }
  RowMap& accumulator() { return acc_; }  // (rows, dim), unnormalised

  // Hands row i's normalised output to write_row(i, o_row, row_max, row_sum), whose log-sum-exp
  // LseOut::write gives; a row that saw no allowed key gets zeros, a row that saw a NaN NaN.
  template <class WriteRow>
  void finalize(WriteRow&& write_row) const {
    for (index_t i = 0; i < acc_.rows(); ++i) write_row(i, acc_.row(i) * normaliser(sum_[i]), max_[i], sum_[i]);
  }

 private:
  RowMap acc_;
  Eigen::Map<Eigen::VectorXf> max_, sum_;
  float factor_;
};

}  // namespace mmattn::kernel
