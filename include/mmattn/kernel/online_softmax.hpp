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
using ConstStridedRowMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

class OnlineSoftmax {
 public:
  // Buffers belong to the caller's workspace: acc (rows, dim), row_max and row_sum (rows).
  OnlineSoftmax(float* acc, float* row_max, float* row_sum, index_t rows, index_t dim)
      : acc_(acc, rows, dim), max_(row_max, rows), sum_(row_sum, rows) {
    acc_.setZero();
    max_.setConstant(kNegInf);
    sum_.setZero();
  }

  // scores: (rows, keys), scaled, masked entries -inf; overwritten with the probabilities.
  // values: (keys, dim).
  template <class Values>
  void update(RowMap& scores, const Values& values) {
    for (index_t i = 0; i < scores.rows(); ++i) {
      auto s = scores.row(i).array();
      const float m_new = std::max(max_[i], s.maxCoeff());
      if (m_new == kNegInf) {  // nothing allowed yet: -inf minus -inf would be NaN
        s.setZero();
        continue;
      }
      s = (s - m_new).exp();  // masked keys become exactly 0
      const float alpha = std::exp(max_[i] - m_new);  // 0 on the first allowed block
      sum_[i] = sum_[i] * alpha + s.sum();
      if (alpha != 1.0f) acc_.row(i) *= alpha;
      max_[i] = m_new;
    }
    acc_.noalias() += scores * values;
  }

  // Writes row i's normalised output through out(i, c) and its log-sum-exp; a row that saw no
  // allowed key gets zeros and -inf.
  template <class WriteRow>
  void finalize(WriteRow&& write_row) const {
    for (index_t i = 0; i < acc_.rows(); ++i) {
      const float l = sum_[i];
      const float inv = l > 0 ? 1.0f / l : 0.0f;
      write_row(i, acc_.row(i) * inv, l > 0 ? max_[i] + std::log(l) : kNegInf);
    }
  }

 private:
  RowMap acc_;
  Eigen::Map<Eigen::VectorXf> max_, sum_;
};

}  // namespace mmattn::kernel
