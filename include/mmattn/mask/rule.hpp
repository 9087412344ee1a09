#pragma once
// Rule: one mask rule of any kind in rules.hpp, as a value. A policy maps each (query segment,
// key segment) pair to one of these.

#include <string>
#include <type_traits>
#include <utility>

#include "mmattn/mask/rules.hpp"

namespace mmattn {

class Rule {
 public:
  Rule() = default;  // none
  template <class R, class = std::enable_if_t<std::is_constructible_v<RuleVariant, R>>>
  Rule(R rule) : rule_(std::move(rule)) {}  // NOLINT: every rule converts implicitly
  Rule(CustomRule rule) : rule_(SharedCustomRule{std::make_shared<const CustomRule>(std::move(rule))}) {}  // NOLINT

  static Rule none() { return NoneRule{}; }
  static Rule full() { return FullRule{}; }
  static Rule causal() { return CausalRule{}; }
  static Rule causal_full() { return CausalRule{}; }
  static Rule windowed(Window2D w) { return w; }
  static Rule band(index_t left, index_t right) { return SlidingWindowRule{left, right}; }
  static Rule chunked(index_t chunk) { return ChunkedRule{chunk}; }
  static Rule predicate(std::function<bool(index_t, index_t)> allowed, std::string label = "custom predicate") {
    return CustomRule{std::move(allowed), {}, std::move(label)};
  }

  // This rule and key position <= query position.
  Rule and_causal() const {
    if (std::holds_alternative<NoneRule>(rule_) || std::holds_alternative<CausalRule>(rule_)) return *this;
    if (std::holds_alternative<FullRule>(rule_)) return CausalRule{};
    if (const auto* w = std::get_if<Window2D>(&rule_)) return w->and_causal();
    if (const auto* b = std::get_if<SlidingWindowRule>(&rule_)) return SlidingWindowRule{b->left, 0};
    if (std::holds_alternative<ChunkedRule>(rule_)) return *this;
    detail::fail("policy: " + name() + " has no causal form");
  }

  std::string name() const {
    return std::visit([](const auto& r) { return r.name(); }, rule_);
  }
  void check(const Segment& query, const Segment& key) const {
    std::visit([&](const auto& r) { r.check(query, key); }, rule_);
  }
  bool is_none() const { return std::holds_alternative<NoneRule>(rule_); }
  const CustomRule* custom() const {
    const auto* shared = std::get_if<SharedCustomRule>(&rule_);
    return shared ? shared->rule.get() : nullptr;
  }
  template <class R>
  const R* get() const {
    return std::get_if<R>(&rule_);
  }

  // The keys of `key` query position q sees. Not for custom rules, which have no KeySet.
  KeySet keys(const Segment& query, const Segment& key, index_t q) const {
    return std::visit(
        [&](const auto& r) -> KeySet {
          if constexpr (std::is_same_v<std::decay_t<decltype(r)>, SharedCustomRule>) {
            return KeySet::all(key);
          } else {
            return r.keys(query, key, q);
          }
        },
        rule_);
  }

 private:
  RuleVariant rule_{};
};

}  // namespace mmattn
