#pragma once
// Exact combination of attention computed over disjoint key sets. Part i holds, per (token, head),
// its normalised output O_i and log-sum-exp lse_i over its keys; over the union of the keys
//   lse = log sum_i exp(lse_i),   O = sum_i w_i O_i  with  w_i = exp(lse_i - lse).
// A shared image prefix computed once plus per-request text suffixes, or split-KV's key chunks,
// merge to what one pass over all the keys gives (to fp32 rounding). Row by row it is
// kernel::merge_row (kernel/merge_row.hpp), which split-KV uses directly.

#include <string>
#include <type_traits>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/config.hpp"
#include "mmattn/kernel/merge_row.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

// One part: [tokens, heads, head_dim] output normalised over the part's keys, and its
// [tokens, heads] log-sum-exp (required: without it the parts cannot be weighed).
template <class T>
struct PartialAttention {
  TensorView<const T> out;
  LseView lse;
};

// out[t, h] = the merge of parts[i].out[t, h]; lse (optional) = the merged log-sum-exp. Every part
// has out's shape. out may be one of the parts' own storage (same view): each row is merged in
// scratch and then written. Rows no part saw get zeros and -inf.
template <class TP, class TO>
void merge(const PartialAttention<TP>* parts, index_t count, const TensorView<TO>& out, const LseView& lse = {}) {
  static_assert(!std::is_const_v<TO>, "out must be writable");
  static_assert(is_element_type_v<TP> && is_element_type_v<TO>,
                "mmattn: merge elements must be float, Eigen::bfloat16 or Eigen::half");
  MMATTN_REQUIRE(count >= 1, "merge: needs at least one part, got " + std::to_string(count));
  MMATTN_REQUIRE(parts != nullptr, "merge: parts is null");
  validate_view("out", out, true);
  validate_lse(lse, out.tokens, out.heads);
  for (index_t i = 0; i < count; ++i) {
    const std::string name = "merge: part " + std::to_string(i);
    const PartialAttention<TP>& p = parts[i];
    validate_view(name.c_str(), p.out, false);
    MMATTN_REQUIRE(p.out.tokens == out.tokens && p.out.heads == out.heads && p.out.head_dim == out.head_dim,
                   name + " has shape " + detail::shape_string(p.out.tokens, p.out.heads, p.out.head_dim) +
                       " but out is " + detail::shape_string(out.tokens, out.heads, out.head_dim));
    MMATTN_REQUIRE(static_cast<bool>(p.lse), name + " has no lse: parts are weighed by their log-sum-exp");
    validate_lse(p.lse, out.tokens, out.heads);
  }
  const index_t dim = out.head_dim;
  std::vector<float> acc(static_cast<size_t>(dim)), part_lse(static_cast<size_t>(count));
  for (index_t t = 0; t < out.tokens; ++t) {
    for (index_t h = 0; h < out.heads; ++h) {
      for (index_t i = 0; i < count; ++i) part_lse[static_cast<size_t>(i)] = parts[i].lse(t, h);
      auto add_part = [&](index_t i, float w, float* a) {
        const TensorView<const TP>& o = parts[i].out;
        for (index_t d = 0; d < dim; ++d) a[d] += w * static_cast<float>(o(t, h, d));
      };
      const float row_lse = kernel::merge_row(count, part_lse.data(), /*unit=*/1.0f, dim, add_part, acc.data());
      for (index_t d = 0; d < dim; ++d) out(t, h, d) = static_cast<TO>(acc[static_cast<size_t>(d)]);
      if (lse) lse(t, h) = row_lse;
    }
  }
}

template <class TP, class TO>
void merge(const std::vector<PartialAttention<TP>>& parts, const TensorView<TO>& out, const LseView& lse = {}) {
  merge(parts.data(), static_cast<index_t>(parts.size()), out, lse);
}

// merge({prefix, suffix}, out, lse)
template <class TP, size_t N, class TO>
void merge(const PartialAttention<TP> (&parts)[N], const TensorView<TO>& out, const LseView& lse = {}) {
  merge(parts, static_cast<index_t>(N), out, lse);
}

}  // namespace mmattn
