#pragma once
// PlanCache: plans by (layout, policy, PlanOptions), so that a runtime serving many requests of a
// few shapes plans each shape once. Thread-safe, bounded by a plan count (least recently used
// first out). A hit costs a hash of the layout and policy (O(segments + overrides)) and a full
// comparison with the stored plan's own layout and policy, so different keys never share a plan,
// whatever their hashes. Custom predicate rules compare by the identity of their shared callable
// (policy.hpp, detail::rule_fields): a policy copied from another hits, a predicate built again
// from the same lambda misses.

#include <cstddef>
#include <iterator>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "mmattn/layout.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"

namespace mmattn {

class PlanCache {
 public:
  // capacity: plans kept (a plan's size grows with its blocks; a layout of N tokens under a window
  // rule holds O(N) blocks).
  explicit PlanCache(std::size_t capacity = 256) : capacity_(capacity) {
    MMATTN_REQUIRE(capacity > 0, "plan cache: capacity must be positive");
  }
  PlanCache(const PlanCache&) = delete;
  PlanCache& operator=(const PlanCache&) = delete;

  // make_plan(layout, policy, options), planned on the first request of a key and shared after.
  // Errors of make_plan propagate and nothing is stored. Planning runs outside the lock, so a
  // slow plan (a custom predicate's) blocks no other lookup; when two threads plan the same key at
  // once, both get the plan stored first.
  std::shared_ptr<const Plan> get(const SequenceLayout& layout, const RegionPolicy& policy,
                                  const PlanOptions& options = {}) {
    PlanOptions key = options;
    if (key.query_end < 0) key.query_end = layout.size();  // -1 and the layout's end plan alike
    std::size_t hash = layout.hash();
    detail::hash_combine(hash, policy.hash());
    detail::hash_combine(hash, key.hash());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (auto plan = find(hash, layout, policy, key)) {
        ++hits_;
        return plan;
      }
      ++misses_;
    }
    auto made = std::make_shared<const Plan>(make_plan(layout, policy, options));
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto plan = find(hash, layout, policy, key)) return plan;  // another thread stored it first
    lru_.push_front({hash, key, made});
    index_.emplace(hash, lru_.begin());
    if (lru_.size() > capacity_) {
      const auto last = std::prev(lru_.end());
      const auto range = index_.equal_range(last->hash);
      for (auto it = range.first; it != range.second; ++it)
        if (it->second == last) {
          index_.erase(it);
          break;
        }
      lru_.pop_back();
    }
    return made;
  }

  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return lru_.size();
  }
  std::size_t capacity() const { return capacity_; }
  std::size_t hits() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return hits_;
  }
  std::size_t misses() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return misses_;
  }
  // Drops every plan (those handed out stay valid: they are shared).
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    lru_.clear();
    index_.clear();
  }

 private:
  // The key's layout and policy are the plan's own copies (Plan::layout, Plan::policy): stored once.
  struct Entry {
    std::size_t hash;
    PlanOptions options;
    std::shared_ptr<const Plan> plan;
  };
  using List = std::list<Entry>;

  // The stored plan of this key, moved to the front; null if none. Caller holds the lock.
  std::shared_ptr<const Plan> find(std::size_t hash, const SequenceLayout& layout, const RegionPolicy& policy,
                                   const PlanOptions& options) {
    const auto range = index_.equal_range(hash);
    for (auto it = range.first; it != range.second; ++it) {
      const Entry& e = *it->second;
      if (e.options == options && e.plan->layout == layout && *e.plan->policy == policy) {
        lru_.splice(lru_.begin(), lru_, it->second);
        return e.plan;
      }
    }
    return nullptr;
  }

  std::size_t capacity_;
  mutable std::mutex mutex_;
  List lru_;  // most recently used first
  std::unordered_multimap<std::size_t, List::iterator> index_;
  std::size_t hits_ = 0, misses_ = 0;
};

}  // namespace mmattn
