#pragma once
// Head configuration shared by every entry point, and the one validation of Q/K/V/O against it.

#include <cmath>
#include <optional>
#include <type_traits>
#include <string>

#include "mmattn/config.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

struct AttentionConfig {
  index_t num_heads = 0;
  index_t num_kv_heads = 0;  // divides num_heads: GQA groups num_heads / num_kv_heads query heads per KV head
  index_t head_dim = 0;
  // Defaults to 1 / sqrt(head_dim); must be finite, any sign or 0. The kernels apply it inside the
  // softmax's max-subtracted exponent (kernel/online_softmax.hpp, ScoreScale), so scale * q.k may
  // pass fp32's range; q.k itself must not (README, Exactness).
  std::optional<float> scale;

  float resolved_scale() const { return scale ? *scale : 1.0f / std::sqrt(static_cast<float>(head_dim)); }
  index_t kv_head_of(index_t head) const { return head / (num_heads / num_kv_heads); }

  void validate() const {
    MMATTN_REQUIRE(num_heads > 0, "num_heads must be positive, got " + std::to_string(num_heads));
    MMATTN_REQUIRE(num_kv_heads > 0, "num_kv_heads must be positive, got " + std::to_string(num_kv_heads));
    MMATTN_REQUIRE(num_heads % num_kv_heads == 0, "num_kv_heads (" + std::to_string(num_kv_heads) +
                                                      ") must divide num_heads (" + std::to_string(num_heads) + ")");
    MMATTN_REQUIRE(head_dim > 0, "head_dim must be positive, got " + std::to_string(head_dim));
    MMATTN_REQUIRE(!scale || std::isfinite(*scale), "scale must be finite");
  }
};

// The kernels compute in fp32 from these storage types only (the reference takes anything that
// converts to float). A static_assert at the entry points, so a wrong type fails where it is passed.
template <class T>
inline constexpr bool is_element_type_v = std::is_same_v<std::remove_cv_t<T>, float> ||
                                          std::is_same_v<std::remove_cv_t<T>, Eigen::bfloat16> ||
                                          std::is_same_v<std::remove_cv_t<T>, Eigen::half>;

template <class QView, class KView, class VView, class OView>
constexpr void static_assert_element_types() {
  static_assert(is_element_type_v<view_element_t<QView>>, "mmattn: q elements must be float, Eigen::bfloat16 or Eigen::half");
  static_assert(is_element_type_v<view_element_t<KView>>, "mmattn: k elements must be float, Eigen::bfloat16 or Eigen::half");
  static_assert(is_element_type_v<view_element_t<VView>>, "mmattn: v elements must be float, Eigen::bfloat16 or Eigen::half");
  static_assert(is_element_type_v<view_element_t<OView>>, "mmattn: out elements must be float, Eigen::bfloat16 or Eigen::half");
}

namespace detail {
inline std::string shape_string(index_t a, index_t b, index_t c) {
  return "[" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + "]";
}
}  // namespace detail

// Q is [query_tokens, num_heads, head_dim]; K and V are [key_tokens, num_kv_heads, head_dim];
// O matches Q. Throws mmattn::Error naming the first bad argument; nothing is written before.
// K and V are TensorViews or any view with tokens, heads, head_dim, row(token, head) and a
// validate_view(name, view, is_output) overload found by ADL (PagedKVView, paged_kv.hpp).
template <class TQ, class KView, class VView, class TO>
void validate_attention(const AttentionConfig& cfg, const TensorView<TQ>& q, const KView& k, const VView& v,
                        const TensorView<TO>& out, const LseView& lse) {
  static_assert(!std::is_const_v<TO>, "out must be writable");
  cfg.validate();
  validate_view("q", q, false);
  validate_view("k", k, false);
  validate_view("v", v, false);
  validate_view("out", out, true);
  auto expect = [&](const char* name, auto& view, index_t tokens, index_t heads) {
    MMATTN_REQUIRE(view.tokens == tokens && view.heads == heads && view.head_dim == cfg.head_dim,
                   std::string(name) + ": shape " + detail::shape_string(view.tokens, view.heads, view.head_dim) +
                       " must be " + detail::shape_string(tokens, heads, cfg.head_dim));
  };
  MMATTN_REQUIRE(q.heads == cfg.num_heads, "q: has " + std::to_string(q.heads) + " heads but num_heads is " +
                                               std::to_string(cfg.num_heads));
  MMATTN_REQUIRE(k.heads == cfg.num_kv_heads, "k: has " + std::to_string(k.heads) +
                                                  " heads but num_kv_heads is " + std::to_string(cfg.num_kv_heads));
  MMATTN_REQUIRE(q.head_dim == cfg.head_dim, "q: head_dim " + std::to_string(q.head_dim) +
                                                 " does not match the config's " + std::to_string(cfg.head_dim));
  expect("k", k, k.tokens, cfg.num_kv_heads);
  expect("v", v, k.tokens, cfg.num_kv_heads);
  expect("out", out, q.tokens, cfg.num_heads);
  validate_lse(lse, q.tokens, cfg.num_heads);
  const MemoryRange o = memory_range(out), l = memory_range(lse);
  const std::pair<const char*, MemoryRange> inputs[] = {{"q", memory_range(q)}, {"k", memory_range(k)},
                                                       {"v", memory_range(v)}, {"lse", l}};
  for (const auto& [name, range] : inputs)
    MMATTN_REQUIRE(!o.overlaps(range), std::string("out: overlaps ") + name +
                                           " in memory (outputs are written while inputs are read)");
  for (int i = 0; i < 3; ++i)
    MMATTN_REQUIRE(!l.overlaps(inputs[i].second), std::string("lse: overlaps ") + inputs[i].first + " in memory");
}

}  // namespace mmattn
