#pragma once
// Every key of the key segment (bidirectional).

#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct FullRule {
  std::string name() const { return "full"; }
  void check(const Segment&, const Segment&) const {}
  KeySet keys(const Segment&, const Segment& key, index_t) const { return KeySet::all(key); }
};

}  // namespace mmattn
