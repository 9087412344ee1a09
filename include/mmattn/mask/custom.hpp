#pragma once
// The fallback for masks no built-in rule expresses: a user predicate allowed(q, k) on sequence
// positions. The planner then classifies each candidate block by evaluating the predicate on all
// its pairs, O(queries x keys) at plan time only (bench/planner measures it), unless the user also
// gives `classify`, a block classification of their own; the kernel masks partial blocks with the
// predicate, per element. The predicate is called from the executor's worker threads
// concurrently: it must be safe to call so.

#include <functional>
#include <memory>
#include <string>

#include "mmattn/mask/key_set.hpp"
#include "mmattn/token_rect.hpp"

namespace mmattn {


struct CustomRule {
  std::function<bool(index_t q, index_t k)> allowed;
  // Optional: what the predicate says of every pair of (queries x keys), without evaluating it
  // pair by pair. It must be exact for `full` and `empty`; `partial` is always safe.
  std::function<BlockCoverage(const TokenRect& queries, const TokenRect& keys)> classify;
  std::string label = "custom predicate";

  std::string name() const { return label; }
  void check(const Segment&, const Segment&) const {
    MMATTN_REQUIRE(static_cast<bool>(allowed), "policy: a custom rule needs a predicate");
  }
};

// How the rule list holds a custom rule: one shared immutable copy. Rules are copied into every
// policy, plan and override, and a std::function held directly in a std::variant trips GCC 12's
// -Wmaybe-uninitialized in every program that copies one.
struct SharedCustomRule {
  std::shared_ptr<const CustomRule> rule;

  std::string name() const { return rule->name(); }
  void check(const Segment& query, const Segment& key) const { rule->check(query, key); }
};

}  // namespace mmattn
