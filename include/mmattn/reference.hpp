#pragma once
// The oracle: dense softmax attention under a mask predicate, accumulated in double.
// Slow and obvious on purpose. Every test checks against it, and a runtime can call it
// to validate its own results.

#include <cmath>
#include <limits>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

// allowed(query_pos, key_pos) -> bool. Query row i sits at position query_offset + i; key row j at j.
// Rows with no allowed key get zeros and log-sum-exp = -inf.
template <class Allowed, class TQ, class TK, class TV, class TO>
void reference_attention(const AttentionConfig& cfg, const TensorView<TQ>& q, const TensorView<TK>& k,
                         const TensorView<TV>& v, const TensorView<TO>& out, const LseView& lse,
                         const Allowed& allowed, index_t query_offset = 0) {
  validate_attention(cfg, q, k, v, out, lse);
  const double scale = cfg.resolved_scale();
  const index_t d = cfg.head_dim;
  std::vector<double> scores(static_cast<size_t>(k.tokens));
  std::vector<double> acc(static_cast<size_t>(d));
  double* const score = scores.data();  // (keys): a row's scores
  double* const sum_v = acc.data();     // (d): a row's weighted sum of values
  for (index_t h = 0; h < cfg.num_heads; ++h) {
    const index_t kvh = cfg.kv_head_of(h);
    for (index_t i = 0; i < q.tokens; ++i) {
      double row_max = -std::numeric_limits<double>::infinity();
      for (index_t j = 0; j < k.tokens; ++j) {
        if (!allowed(query_offset + i, j)) {
          score[j] = -std::numeric_limits<double>::infinity();
          continue;
        }
        double dot = 0;
        for (index_t c = 0; c < d; ++c) dot += double(float(q(i, h, c))) * double(float(k(j, kvh, c)));
        score[j] = dot * scale;
        if (!std::isnan(row_max) && !(score[j] <= row_max)) row_max = score[j];  // a NaN score sticks
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double sum = 0;
      if (row_max != -std::numeric_limits<double>::infinity()) {
        for (index_t j = 0; j < k.tokens; ++j) {
          if (score[j] == -std::numeric_limits<double>::infinity()) continue;
          const double p = std::exp(score[j] - row_max);
          sum += p;
          for (index_t c = 0; c < d; ++c) sum_v[c] += p * double(float(v(j, kvh, c)));
        }
      }
      // A row that saw no key: zeros and -inf; a row that saw a NaN: NaN (sum is NaN, not 0).
      for (index_t c = 0; c < d; ++c) out(i, h, c) = TO(float(sum == 0 ? 0.0 : sum_v[c] / sum));
      if (lse) lse(i, h) = float(sum == 0 ? -std::numeric_limits<double>::infinity() : row_max + std::log(sum));
    }
  }
}

// max |out - ref| / max |ref| over some query rows (Q row r is position query_offset + r), the
// reference computed for those rows alone: how examples, the advisor and benchmarks check a run.
// A NaN anywhere compared returns NaN, so a check `err <= tol` fails (std::max would drop it).
template <class TQ, class TK, class TV, class TO, class Allowed>
double sampled_relative_error(const AttentionConfig& cfg, const TensorView<TQ>& q, const TensorView<TK>& k,
                              const TensorView<TV>& v, const TensorView<TO>& out, const std::vector<index_t>& rows,
                              const Allowed& allowed, index_t query_offset = 0) {
  std::vector<float> ref(static_cast<size_t>(cfg.num_heads * cfg.head_dim));
  double err = 0, peak = 1e-30;
  for (const index_t r : rows) {
    TensorView<TQ> q_row = q;
    q_row.data = q.row(r, 0);
    q_row.tokens = 1;
    reference_attention(cfg, q_row, k, v, view_thd(ref.data(), 1, cfg.num_heads, cfg.head_dim), {}, allowed,
                        query_offset + r);
    for (index_t h = 0; h < cfg.num_heads; ++h)
      for (index_t d = 0; d < cfg.head_dim; ++d) {
        const double e = ref[static_cast<size_t>(h * cfg.head_dim + d)];
        const double diff = std::abs(double(float(out(r, h, d))) - e);
        if (std::isnan(diff)) return diff;
        err = std::max(err, diff);
        peak = std::max(peak, std::abs(e));
      }
  }
  return err / peak;
}

}  // namespace mmattn
