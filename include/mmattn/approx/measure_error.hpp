#pragma once
// What an approximate strategy costs in accuracy, measured on real Q/K/V: the strategy and the
// exact attention it approximates run on the same inputs, and the report gives the relative L2
// error per region (image rows, text rows), the worst row, and the exact softmax mass the strategy
// drops (sparse) or sees only through averages (pooled).

#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "mmattn/approx/uncovered_keys.hpp"
#include "mmattn/attention_config.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::approx {

struct ErrorReport {
  // ||O - O_exact|| / ||O_exact|| (Frobenius, every head and dim) over the region's rows.
  double image_rel_l2 = 0, text_rel_l2 = 0, total_rel_l2 = 0;
  // The row (position) with the largest such error, over all heads of that row.
  double worst_row_rel_l2 = 0;
  index_t worst_row = -1;
  // Per (text row, head): the exact softmax probability on keys the strategy never visits, and on
  // keys it sees only through pooled averages; mean and max over text rows and heads.
  double dropped_mass_mean = 0, dropped_mass_max = 0;
  double approximated_mass_mean = 0, approximated_mass_max = 0;
};

// Compares two outputs of [layout.size(), heads, head_dim]; masses are left at 0.
template <class TA, class TE>
ErrorReport compare_outputs(const SequenceLayout& layout, const TensorView<TA>& approx, const TensorView<TE>& exact) {
  MMATTN_REQUIRE(approx.tokens == layout.size() && exact.tokens == layout.size() && approx.heads == exact.heads &&
                     approx.head_dim == exact.head_dim,
                 "measure_error: outputs " + mmattn::detail::shape_string(approx.tokens, approx.heads, approx.head_dim) +
                     " and " + mmattn::detail::shape_string(exact.tokens, exact.heads, exact.head_dim) + " must both cover the " +
                     std::to_string(layout.size()) + " tokens of the layout");
  ErrorReport r;
  double diff[2] = {0, 0}, norm[2] = {0, 0};  // image, text
  for (const Segment& s : layout.segments()) {
    const int region = s.is_image() ? 0 : 1;
    for (index_t t = s.start; t < s.end(); ++t) {
      double d2 = 0, e2 = 0;
      for (index_t h = 0; h < exact.heads; ++h)
        for (index_t c = 0; c < exact.head_dim; ++c) {
          const double e = static_cast<double>(exact(t, h, c)), a = static_cast<double>(approx(t, h, c));
          d2 += (a - e) * (a - e);
          e2 += e * e;
        }
      diff[region] += d2;
      norm[region] += e2;
      // A row the exact attention leaves at zero (no key allowed) has error 0 when the
      // approximation agrees, +inf when it does not.
      double row = e2 > 0 ? std::sqrt(d2 / e2) : (d2 > 0 ? INFINITY : 0.0);
      if (std::isnan(row)) row = INFINITY;  // a NaN output is the worst row there is
      if (r.worst_row < 0 || row > r.worst_row_rel_l2) r.worst_row_rel_l2 = row, r.worst_row = t;
    }
  }
  auto rel = [](double d, double n) { return n > 0 ? std::sqrt(d / n) : (d > 0 ? INFINITY : 0.0); };
  r.image_rel_l2 = rel(diff[0], norm[0]);
  r.text_rel_l2 = rel(diff[1], norm[1]);
  r.total_rel_l2 = rel(diff[0] + diff[1], norm[0] + norm[1]);
  return r;
}

// Mean and max of the masses over text rows.
inline void add_masses(ErrorReport& r, const SequenceLayout& layout, const UncoveredMass& m) {
  double sum_d = 0, sum_a = 0;
  index_t n = 0;
  for (const Segment& s : layout.segments()) {
    if (s.is_image()) continue;
    for (index_t t = s.start; t < s.end(); ++t)
      for (index_t h = 0; h < m.heads; ++h, ++n) {
        const double d = m.dropped[static_cast<size_t>(t * m.heads + h)];
        const double a = m.approximated[static_cast<size_t>(t * m.heads + h)];
        sum_d += d, sum_a += a;
        r.dropped_mass_max = std::max(r.dropped_mass_max, d);
        r.approximated_mass_max = std::max(r.approximated_mass_max, a);
      }
  }
  r.dropped_mass_mean = n ? sum_d / static_cast<double>(n) : 0.0;
  r.approximated_mass_mean = n ? sum_a / static_cast<double>(n) : 0.0;
}

namespace detail {
template <class S, class Q, class K, class = void>
struct has_uncovered_keys : std::false_type {};
template <class S, class Q, class K>
struct has_uncovered_keys<S, Q, K,
                          std::void_t<decltype(std::declval<const S&>().uncovered_keys(std::declval<const Q&>(),
                                                                                       std::declval<const K&>()))>>
    : std::true_type {};
}  // namespace detail

// The strategy against an exact result already computed on the same Q/K/V: exact_out
// [tokens, heads, head_dim] and its log-sum-exp [tokens, heads] (for the masses). Strategy: has
// forward(q, k, v, out), layout(), config(), executor(); and uncovered_keys(q, k) when it leaves
// keys out (exact strategies do not, and report zero masses).
template <class Strategy, class TQ, class TK, class TV, class TE>
ErrorReport measure_error_against(const Strategy& strategy, const TensorView<TQ>& q, const TensorView<TK>& k,
                                  const TensorView<TV>& v, const TensorView<TE>& exact_out, const LseView& exact_lse) {
  const AttentionConfig& cfg = strategy.config();
  const index_t n = strategy.layout().size();
  std::vector<float> out(static_cast<size_t>(n * cfg.num_heads * cfg.head_dim));
  const TensorView<float> out_view = view_thd(out.data(), n, cfg.num_heads, cfg.head_dim);
  strategy.forward(q, k, v, out_view);
  ErrorReport r = compare_outputs(strategy.layout(), TensorView<const float>(out_view), exact_out);
  if constexpr (detail::has_uncovered_keys<Strategy, TensorView<TQ>, TensorView<TK>>::value) {
    MMATTN_REQUIRE(static_cast<bool>(exact_lse), "measure_error: the exact log-sum-exp is needed for the masses");
    validate_lse(exact_lse, n, cfg.num_heads);
    add_masses(r, strategy.layout(),
               uncovered_mass(strategy.uncovered_keys(q, k), cfg, q, k, exact_lse, strategy.executor()));
  }
  return r;
}

// Runs `exact` (anything with forward(q, k, v, out, lse), e.g. MultimodalAttention under the base
// policy) and `strategy` on the same Q/K/V ([layout size, heads, head_dim]) and reports the error.
template <class Strategy, class Exact, class TQ, class TK, class TV>
ErrorReport measure_error(const Strategy& strategy, const Exact& exact, const TensorView<TQ>& q,
                          const TensorView<TK>& k, const TensorView<TV>& v) {
  const AttentionConfig& cfg = strategy.config();
  const index_t n = strategy.layout().size();
  std::vector<float> out(static_cast<size_t>(n * cfg.num_heads * cfg.head_dim)), lse(static_cast<size_t>(n * cfg.num_heads));
  const TensorView<float> out_view = view_thd(out.data(), n, cfg.num_heads, cfg.head_dim);
  const LseView lse_view = view_lse(lse.data(), n, cfg.num_heads);
  exact.forward(q, k, v, out_view, lse_view);
  return measure_error_against(strategy, q, k, v, TensorView<const float>(out_view), lse_view);
}

}  // namespace mmattn::approx
