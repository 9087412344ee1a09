// PlanCache: a repeated key returns the stored plan object; keys that differ in any field of the
// layout, the policy or the options (near-identical keys, one field apart, over random cases) get
// their own plan, equal to make_plan's; LRU eviction, counters, errors and concurrent use.

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mmattn/plan_cache.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

// Field by field: two plans that would run the same blocks in the same order over the same mask.
std::string plan_difference(const Plan& a, const Plan& b) {
  if (a.tiles.query != b.tiles.query || a.tiles.key != b.tiles.key || a.tiles.window_query != b.tiles.window_query)
    return "tiles";
  if (a.query_begin != b.query_begin || a.query_end != b.query_end || a.key_tokens != b.key_tokens) return "range";
  if (a.query_tiles.size() != b.query_tiles.size() || a.blocks.size() != b.blocks.size()) return "sizes";
  for (size_t i = 0; i < a.query_tiles.size(); ++i) {
    const QueryTile &x = a.query_tiles[i], &y = b.query_tiles[i];
    if (!(x.queries == y.queries) || x.segment != y.segment || x.block_begin != y.block_begin ||
        x.block_end != y.block_end || x.computed_pairs != y.computed_pairs)
      return "query tile " + std::to_string(i);
  }
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    const KeyBlock &x = a.blocks[i], &y = b.blocks[i];
    if (!(x.keys == y.keys) || x.full != y.full || x.key_segment != y.key_segment) return "block " + std::to_string(i);
  }
  if (a.tile_order != b.tile_order) return "tile order";
  if (a.layout != b.layout) return "layout";
  if (!a.policy || !b.policy || *a.policy != *b.policy) return "policy";
  return "";
}

// Rules one field away from r (some are invalid for their region: make_plan refuses those).
std::vector<Rule> neighbours(const Rule& r) {
  std::vector<Rule> out;
  if (const auto* w = r.get<Window2D>()) {
    for (int f = 0; f < 6; ++f) {
      Window2D x = *w;
      if (f == 0) x.height += 2;
      if (f == 1) x.width += 2;
      if (f == 2) x.dilation_h += 1;
      if (f == 3) x.dilation_w += 1;
      if (f == 4) x.causal = !x.causal;
      if (f == 5) x.kind = x.kind == WindowKind::sliding ? WindowKind::partitioned : WindowKind::sliding;
      out.emplace_back(x);
    }
  } else if (const auto* v = r.get<Window3D>()) {
    for (int f = 0; f < 8; ++f) {
      Window3D x = *v;
      if (f == 0) x.frames += 2;
      if (f == 1) x.height += 2;
      if (f == 2) x.width += 2;
      if (f == 3) x.dilation_f += 1;
      if (f == 4) x.dilation_h += 1;
      if (f == 5) x.dilation_w += 1;
      if (f == 6) x.causal_frames = !x.causal_frames;
      if (f == 7) x.kind = x.kind == WindowKind::sliding ? WindowKind::partitioned : WindowKind::sliding;
      out.emplace_back(x);
    }
  } else if (const auto* b = r.get<SlidingWindowRule>()) {
    out.emplace_back(SlidingWindowRule{b->left + 1, b->right});
    out.emplace_back(SlidingWindowRule{b->left, b->right + 1});
  } else if (const auto* c = r.get<ChunkedRule>()) {
    out.emplace_back(ChunkedRule{c->chunk + 1});
  } else if (const auto* d = r.get<DilatedBandRule>()) {
    out.emplace_back(DilatedBandRule{d->left + 1, d->right, d->dilation});
    out.emplace_back(DilatedBandRule{d->left, d->right + 1, d->dilation});
    out.emplace_back(DilatedBandRule{d->left, d->right, d->dilation + 1});
  } else if (const CustomRule* u = r.custom()) {
    out.emplace_back(*u);  // the same predicate, a new shared object: another rule to the cache
  }
  // Another kind of rule altogether.
  out.push_back(r.is_none() ? Rule::full() : Rule::none());
  if (!r.get<CausalRule>()) out.push_back(Rule::causal());
  return out;
}

struct Variant {
  std::string what;
  SequenceLayout layout;
  RegionPolicy policy;
  PlanOptions options;
};

// Keys one field away from c's: every segment field, every rule field of every region, sinks,
// overrides, every option.
std::vector<Variant> near_keys(const cases::PlanCase& c) {
  std::vector<Variant> out;
  auto add = [&](std::string what, const SequenceLayout& l, const RegionPolicy& p, const PlanOptions& o) {
    out.push_back({std::move(what), l, p, o});
  };
  const std::vector<Segment>& segs = c.layout.segments();
  for (size_t i = 0; i < segs.size(); ++i) {
    for (int f = 0; f < 4; ++f) {  // one segment with one more frame, row or column, or another kind
      SequenceLayout l;
      for (size_t j = 0; j < segs.size(); ++j) {
        const Segment& s = segs[j];
        index_t frames = s.frames, rows = s.rows, cols = s.cols;
        SegmentKind kind = s.kind;
        if (j == i) {
          if (f == 0) ++cols;
          if (f == 1 && !s.is_text()) ++rows;
          if (f == 2 && s.is_video()) ++frames;
          if (f == 3) kind = s.is_image() ? SegmentKind::video : SegmentKind::image;
        }
        if (kind == SegmentKind::text) l.add_text(cols);
        else if (kind == SegmentKind::image && frames == 1) l.add_image(rows, cols);
        else l.add_video(frames, rows, cols);
      }
      if (l != c.layout) add("segment " + std::to_string(i) + " field " + std::to_string(f), l, c.policy, c.options);
    }
  }
  {
    SequenceLayout l = c.layout;
    add("extend_text(1)", l.extend_text(1), c.policy, c.options);
    SequenceLayout m = c.layout;
    add("add_text(1)", m.add_text(1), c.policy, c.options);
  }
  for (int i = 0; i < kRegions; ++i) {
    const Region region = Region::at(i);
    for (const Rule& r : neighbours(c.policy.rule(region))) {
      RegionPolicy p = c.policy;
      add("region " + region.name() + " -> " + r.name(), c.layout, p.set(region, r), c.options);
    }
  }
  {
    RegionPolicy p = c.policy;
    add("sinks + 1", c.layout, p.with_sinks(c.policy.sinks() + 1), c.options);
    RegionPolicy q = c.policy;
    const index_t last = c.layout.num_segments() - 1;
    const Rule& own = c.policy.rule_for(c.layout, last, last);
    add("override", c.layout, q.set_segments(last, last, own.is_none() ? Rule::full() : Rule::none()), c.options);
  }
  for (int f = 0; f < 7; ++f) {
    PlanOptions o = c.options;
    if (f == 0) ++o.tiles.query;
    if (f == 1) ++o.tiles.key;
    if (f == 2) ++o.tiles.window_query;
    if (f == 3) o.image_tiling = static_cast<ImageTiling>((static_cast<int>(o.image_tiling) + 1) % 3);
    if (f == 4) o.query_begin += o.query_begin > 0 ? -1 : 1;
    if (f == 5) o.query_end = (o.query_end < 0 ? c.layout.size() : o.query_end) - 1;
    if (f == 6) o.all_keys_present = !o.all_keys_present;
    add("option " + std::to_string(f), c.layout, c.policy, o);
  }
  return out;
}

TEST(PlanCache, RepeatedKeyReturnsTheSamePlan) {
  PlanCache cache;
  const SequenceLayout layout = SequenceLayout::images_then_text(2, 6, 5, 20);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  const auto a = cache.get(layout, policy);
  const SequenceLayout layout_copy = layout;
  const RegionPolicy policy_copy = policy;
  const auto b = cache.get(layout_copy, policy_copy);
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.hits(), 1u);
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_EQ(plan_difference(*a, make_plan(layout, policy)), "");
  // query_end -1 and the layout's end are the same query range.
  PlanOptions to_end;
  to_end.query_end = layout.size();
  EXPECT_EQ(cache.get(layout, policy, to_end).get(), a.get());
  EXPECT_EQ(cache.size(), 1u);
}

// Over random cases, every key one field away from the case's own: a plan of its own, equal to
// make_plan's for that key, never the base key's object; the base key still hits its own plan.
TEST(PlanCache, NearIdenticalKeysNeverCollide) {
  const int kCases = kSlowBuild ? 15 : 60;
  int variants = 0, refused = 0;
  for (int seed = 1; seed <= kCases; ++seed) {
    const cases::PlanCase c = cases::random_plan_case(static_cast<std::uint32_t>(seed));
    PlanCache cache(1024);
    const auto base = cache.get(c.layout, c.policy, c.options);
    ASSERT_EQ(plan_difference(*base, make_plan(c.layout, c.policy, c.options)), "") << cases::describe(c);
    for (const Variant& v : near_keys(c)) {
      ASSERT_FALSE(v.layout == c.layout && v.policy == c.policy && v.options == c.options) << v.what;
      std::shared_ptr<const Plan> got;
      std::string expected_error, error;
      try {
        got = cache.get(v.layout, v.policy, v.options);
      } catch (const Error& e) {
        error = e.what();
      }
      try {
        const Plan expected = make_plan(v.layout, v.policy, v.options);
        ASSERT_TRUE(got) << v.what << ": cache refused a key make_plan plans: " << error << "\n" << cases::describe(c);
        ASSERT_EQ(plan_difference(*got, expected), "") << v.what << "\n" << cases::describe(c);
        ASSERT_NE(got.get(), base.get()) << v.what << "\n" << cases::describe(c);
        ++variants;
      } catch (const Error& e) {
        expected_error = e.what();
        EXPECT_FALSE(got) << v.what;
        EXPECT_EQ(error, expected_error) << v.what;
        ++refused;
      }
      ASSERT_EQ(cache.get(c.layout, c.policy, c.options).get(), base.get()) << v.what << "\n" << cases::describe(c);
    }
    EXPECT_LE(cache.size(), cache.misses()) << "refused keys are never stored";
  }
  EXPECT_GT(variants, kCases * 20);
  RecordProperty("variants", variants);
  RecordProperty("refused", refused);
}

TEST(PlanCache, EqualityAndHashOfKeys) {
  // Copies are equal and hash alike; a custom rule is its shared predicate.
  const Rule scatter = Rule::predicate([](index_t q, index_t k) { return (q + k) % 3 != 0 || k == q; });
  RegionPolicy a = RegionPolicy::structured();
  a.set(Region::within(SegmentKind::text), scatter);
  const RegionPolicy b = a;
  EXPECT_TRUE(a == b);
  EXPECT_EQ(a.hash(), b.hash());
  RegionPolicy rebuilt = RegionPolicy::structured();
  rebuilt.set(Region::within(SegmentKind::text), Rule::predicate([](index_t q, index_t k) { return (q + k) % 3 != 0 || k == q; }));
  EXPECT_FALSE(a == rebuilt);
  // Presets with their defaults are equal however often they are built.
  EXPECT_TRUE(RegionPolicy::gemma3_local(64) == RegionPolicy::gemma3_local(64));
  EXPECT_EQ(RegionPolicy::gemma3_local(64).hash(), RegionPolicy::gemma3_local(64).hash());
  EXPECT_FALSE(RegionPolicy::gemma3_local(64) == RegionPolicy::gemma3_local(65));
  EXPECT_FALSE(RegionPolicy::decoder_causal() == RegionPolicy::decoder_causal().with_sinks(1));

  SequenceLayout l1, l2;
  l1.add_image(3, 4).add_text(5);
  l2.add_image(4, 3).add_text(5);  // same tokens, other grid
  EXPECT_FALSE(l1 == l2);
  SequenceLayout l3;
  l3.add_image(3, 4).add_text(2).extend_text(3);
  EXPECT_TRUE(l1 == l3);
  EXPECT_EQ(l1.hash(), l3.hash());

  PlanCache cache;
  const auto p = cache.get(l1, a);
  EXPECT_EQ(cache.get(l1, b).get(), p.get());
  EXPECT_NE(cache.get(l1, rebuilt).get(), p.get());
}

TEST(PlanCache, EvictsTheLeastRecentlyUsed) {
  PlanCache cache(2);
  const RegionPolicy policy = RegionPolicy::decoder_causal();
  const SequenceLayout l1 = SequenceLayout::images_then_text(1, 2, 2, 3);
  const SequenceLayout l2 = SequenceLayout::images_then_text(1, 2, 2, 4);
  const SequenceLayout l3 = SequenceLayout::images_then_text(1, 2, 2, 5);
  const auto p1 = cache.get(l1, policy);
  const auto p2 = cache.get(l2, policy);
  EXPECT_EQ(cache.get(l1, policy).get(), p1.get());  // l1 is now the most recent
  cache.get(l3, policy);                             // evicts l2
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.get(l1, policy).get(), p1.get());
  const size_t misses = cache.misses();
  const auto p2_again = cache.get(l2, policy);
  EXPECT_EQ(cache.misses(), misses + 1);
  EXPECT_NE(p2_again.get(), p2.get());  // planned again; the old one is still valid where held
  EXPECT_EQ(plan_difference(*p2_again, *p2), "");
  cache.clear();
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(p1->layout, l1);
}

TEST(PlanCache, ErrorsAreNotStored) {
  PlanCache cache;
  const SequenceLayout layout = SequenceLayout::images_then_text(1, 3, 3, 4);
  PlanOptions bad;
  bad.query_begin = 5, bad.query_end = 3;
  const std::string msg = error_message([&] { cache.get(layout, RegionPolicy::decoder_causal(), bad); });
  EXPECT_TRUE(contains(msg, "plan: query range [5, 3)")) << msg;
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_TRUE(contains(error_message([] { PlanCache zero(0); }), "plan cache: capacity must be positive"));
}

// Threads asking for the same few keys at once: one plan object per key, equal to make_plan's,
// and every request counted once.
TEST(PlanCache, ConcurrentUse) {
  PlanCache cache(16);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  std::vector<SequenceLayout> layouts;
  for (index_t t = 1; t <= 6; ++t) layouts.push_back(SequenceLayout::images_then_text(2, 5, 4, 7 * t));
  constexpr int kThreads = 4, kRequests = 300;
  std::vector<std::vector<const Plan*>> seen(kThreads, std::vector<const Plan*>(layouts.size(), nullptr));
  std::vector<std::shared_ptr<const Plan>> keep;  // holds every plan so addresses are never reused
  std::mutex keep_mutex;
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRequests; ++r) {
        const size_t i = static_cast<size_t>((r * 7 + t) % static_cast<int>(layouts.size()));
        const auto plan = cache.get(layouts[i], policy);
        if (seen[static_cast<size_t>(t)][i] && seen[static_cast<size_t>(t)][i] != plan.get()) ++mismatches;
        seen[static_cast<size_t>(t)][i] = plan.get();
        std::lock_guard<std::mutex> lock(keep_mutex);
        keep.push_back(plan);
      }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  for (size_t i = 0; i < layouts.size(); ++i) {
    for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[static_cast<size_t>(t)][i], seen[0][i]);
    EXPECT_EQ(plan_difference(*cache.get(layouts[i], policy), make_plan(layouts[i], policy)), "");
  }
  EXPECT_EQ(cache.hits() + cache.misses(), size_t{kThreads * kRequests} + layouts.size());
  EXPECT_EQ(cache.size(), layouts.size());
}

}  // namespace
}  // namespace mmattn::test
