#pragma once
// Keys at or before the query's position: the window (infinity, 0) on the position axis, as
// FlashAttention-2 writes causality.

#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct CausalRule {
  std::string name() const { return "causal"; }
  void check(const Segment&, const Segment&) const {}
  KeySet keys(const Segment&, const Segment& key, index_t q) const { return KeySet::all(key).within(0, q + 1); }
};

}  // namespace mmattn
