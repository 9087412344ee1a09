#pragma once
// A 1-D band on positions: keys in [q - left, q + right], FlashAttention's window_size=(left,
// right). Mistral's and Gemma-3's local layers are (window - 1, 0): causal, the last `window`
// positions including the query. Unlike NATTEN's sliding window it is clipped, not shifted, at
// the sequence's ends.

#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct SlidingWindowRule {
  index_t left = 0, right = 0;

  // The causal band of Mistral / Gemma-3: the query and the window - 1 positions before it.
  static SlidingWindowRule causal(index_t window) { return {window - 1, 0}; }

  std::string name() const { return "band (" + std::to_string(left) + ", " + std::to_string(right) + ")"; }
  void check(const Segment&, const Segment&) const {
    MMATTN_REQUIRE(left >= 0 && right >= 0, "policy: a 1-D band needs left, right >= 0, got (" +
                                                std::to_string(left) + ", " + std::to_string(right) + ")");
  }
  KeySet keys(const Segment&, const Segment& key, index_t q) const {
    // Saturated: q is a position, so q - left never wraps, and q + right + 1 is bounded first.
    const index_t lo = q - std::min(left, q);
    const index_t hi = right >= key.end() - q ? key.end() : q + right + 1;
    return KeySet::all(key).within(lo, hi);
  }
};

}  // namespace mmattn
