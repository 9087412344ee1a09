#pragma once
// No key of the key segment: the pair is never visited.

#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct NoneRule {
  std::string name() const { return "none"; }
  void check(const Segment&, const Segment&) const {}
  KeySet keys(const Segment&, const Segment& key, index_t) const { return KeySet::all(key).within(0, 0); }
};

}  // namespace mmattn
