#pragma once
// The random-case generator of the property tests: random layouts, policies, tile sizes (the
// window patch's included), image tilings and query ranges for the planner test (PlanCase), plus
// head configurations, storages and executors for the attention tests (Case), so every test runs
// over the same families. A seed gives the same case in every test that draws it.

#include <cstdint>
#include <random>
#include <sstream>
#include <string>

#include "mmattn/attention_config.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"
#include "test_util.hpp"

namespace mmattn::test::cases {

// How long a random layout may be. Debug + sanitizer builds are ~20x slower, so both limits are
// shorter there; the attention tests pay heads x head_dim per pair, the planner test does not.
struct Limits {
  index_t max_segments, max_side, max_text;
};
constexpr Limits kAttentionLimits{kSlowBuild ? 4 : 5, kSlowBuild ? 8 : 10, kSlowBuild ? 14 : 20};
constexpr Limits kPlannerLimits{kSlowBuild ? 5 : 6, kSlowBuild ? 9 : 11, kSlowBuild ? 20 : 24};

// What the planner sees.
struct PlanCase {
  std::uint32_t seed = 0;
  std::string family;
  SequenceLayout layout;
  RegionPolicy policy;
  PlanOptions options;
};

// What an attention run sees besides: heads, storages and the executor.
struct Case : PlanCase {
  AttentionConfig cfg;
  Storage q_storage = Storage::contiguous, kv_storage = Storage::contiguous, out_storage = Storage::contiguous;
  index_t lse_pad = 0;  // extra floats between tokens of the LSE
  bool serial = false;  // Executor::serial() instead of the default
};

inline const char* tiling_name(ImageTiling t) {
  return t == ImageTiling::automatic ? "automatic" : t == ImageTiling::row_strips ? "row_strips" : "patches";
}

inline std::string describe(const PlanCase& c) {
  std::ostringstream s;
  s << "seed=" << c.seed << " family=" << c.family << "\n  layout:";
  for (const Segment& seg : c.layout.segments())
    s << (seg.is_image()   ? " I" + std::to_string(seg.rows) + "x" + std::to_string(seg.cols)
          : seg.is_video() ? " V" + std::to_string(seg.frames) + "x" + std::to_string(seg.rows) + "x" +
                                 std::to_string(seg.cols)
                           : " T" + std::to_string(seg.length));
  s << " (" << c.layout.size() << " tokens)\n  rules:";
  for (int i = 0; i < kRegions; ++i) s << " [" << Region::at(i).name() << ": " << c.policy.rule(Region::at(i)).name() << "]";
  for (index_t qs = 0; qs < c.layout.num_segments(); ++qs)
    for (index_t ks = 0; ks < c.layout.num_segments(); ++ks)
      if (&c.policy.rule_for(c.layout, qs, ks) != &c.policy.rule(region_of(c.layout, qs, ks)))
        s << " [override " << qs << "->" << ks << ": " << c.policy.rule_for(c.layout, qs, ks).name() << "]";
  if (c.policy.sinks() > 0) s << " sinks " << c.policy.sinks();
  s << "\n  tiles " << c.options.tiles.query << "x" << c.options.tiles.key << " (window_query "
    << c.options.tiles.window_query << "), tiling " << tiling_name(c.options.image_tiling) << ", queries ["
    << c.options.query_begin << ", " << c.options.query_end << ")";
  return s.str();
}

inline std::string describe(const Case& c) {
  std::ostringstream s;
  s << describe(static_cast<const PlanCase&>(c)) << "\n  heads=" << c.cfg.num_heads << " kv_heads="
    << c.cfg.num_kv_heads << " head_dim=" << c.cfg.head_dim << ", storage q " << storage_name(c.q_storage) << " kv "
    << storage_name(c.kv_storage) << " out " << storage_name(c.out_storage) << ", lse pad " << c.lse_pad
    << (c.serial ? ", serial" : ", default executor");
  return s.str();
}

inline index_t uniform(std::mt19937& gen, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(gen); }

inline SequenceLayout random_layout(std::mt19937& gen, const Limits& limits) {
  SequenceLayout layout;
  const index_t segments = uniform(gen, 1, limits.max_segments);
  for (index_t i = 0; i < segments; ++i) {
    switch (uniform(gen, 0, 5)) {
      case 0:
      case 1:
      case 2: layout.add_image(uniform(gen, 1, limits.max_side), uniform(gen, 1, limits.max_side)); break;  // non-square
      case 3: layout.add_image(uniform(gen, 1, 3), uniform(gen, 1, 3)); break;  // smaller than windows
      case 4: layout.add_text(uniform(gen, 1, limits.max_text)); break;
      default:
        if (gen() % 2) {  // one draw in ten is a video; keep text at ~1/3 of the rest
          layout.add_video(uniform(gen, 1, 4), uniform(gen, 1, limits.max_side / 2 + 1),
                           uniform(gen, 1, limits.max_side / 2 + 1));
        } else {
          layout.add_text(uniform(gen, 1, limits.max_text));
        }
        break;
    }
  }
  return layout;
}

inline Window2D random_window(std::mt19937& gen) {
  const index_t sizes[] = {1, 3, 5, 7, 9};
  if (gen() % 2) {
    return Window2D::sliding(sizes[uniform(gen, 0, 4)], sizes[uniform(gen, 0, 4)], uniform(gen, 1, 3),
                             uniform(gen, 1, 3));
  }
  Window2D w = Window2D::partitioned(uniform(gen, 1, 8), uniform(gen, 1, 8));
  if (gen() % 4 == 0) w.dilation_h = uniform(gen, 1, 3), w.dilation_w = uniform(gen, 1, 3);  // accepted input
  return w;
}

inline Window3D random_window3d(std::mt19937& gen) {
  const index_t odd[] = {1, 3, 5, 7};
  Window3D w = gen() % 2 ? Window3D::sliding(odd[uniform(gen, 0, 3)], odd[uniform(gen, 0, 3)], odd[uniform(gen, 0, 3)])
                         : Window3D::partitioned(uniform(gen, 1, 4), uniform(gen, 1, 5), uniform(gen, 1, 5));
  if (gen() % 3 == 0) w = w.dilated(uniform(gen, 1, 2), uniform(gen, 1, 3), uniform(gen, 1, 3));
  if (gen() % 3 == 0) {
    w = w.causal_in_time();
    w.frames = uniform(gen, 1, 4);  // any size: a causal axis need not be centred
  }
  return w;
}

// A predicate no built-in rule expresses: a deterministic scatter of allowed pairs.
inline Rule random_custom(std::mt19937& gen) {
  const index_t m = uniform(gen, 2, 5), r = uniform(gen, 0, 1);
  return Rule::predicate([m, r](index_t q, index_t k) { return (q * 7 + k * 3) % m != r || k == q; },
                         "scatter " + std::to_string(m));
}

// Any rule that applies to `region`.
inline Rule random_rule(std::mt19937& gen, Region region) {
  const bool image = region.same && region.query == SegmentKind::image;
  const bool video = region.same && region.query == SegmentKind::video;
  switch (uniform(gen, 0, image || video ? 8 : 6)) {
    case 0: return Rule::none();
    case 1: return Rule::full();
    case 2: return Rule::causal();
    case 3: return Rule::band(uniform(gen, 0, 12), gen() % 2 ? 0 : uniform(gen, 0, 12));
    case 4: return Rule::chunked(uniform(gen, 1, 20));
    case 5: return gen() % 4 == 0 ? random_custom(gen) : Rule::full();
    case 6: return Rule::none();
    case 7: return image ? Rule::windowed(random_window(gen)) : Rule(random_window3d(gen));
    default: return image ? Rule::windowed(random_window(gen)).and_causal() : Rule(random_window3d(gen));
  }
}

// Per-segment overrides and sinks on top of a policy, now and then.
inline void add_random_extras(std::mt19937& gen, RegionPolicy& p, const SequenceLayout& layout) {
  if (gen() % 4 == 0) p.with_sinks(uniform(gen, 1, 6));
  if (gen() % 4 == 0) {
    const index_t qs = uniform(gen, 0, layout.num_segments() - 1), ks = uniform(gen, 0, layout.num_segments() - 1);
    p.set_segments(qs, ks, random_rule(gen, region_of(layout, qs, ks)));
  }
}

inline RegionPolicy random_policy(std::mt19937& gen, std::string& family) {
  switch (uniform(gen, 0, 14)) {
    case 9: family = "gemma3_local"; return RegionPolicy::gemma3_local(uniform(gen, 1, 24));
    case 10: family = "llama4_chunked"; return RegionPolicy::llama4_chunked(uniform(gen, 1, 24));
    case 11: family = "vision_block_diagonal"; return RegionPolicy::vision_block_diagonal();
    case 12: family = "video_windows"; return RegionPolicy::video_windows(random_window3d(gen));
    case 13: {
      family = "structured+video";
      return RegionPolicy::structured(random_window(gen), random_window3d(gen));
    }
    case 0: family = "decoder_causal"; return RegionPolicy::decoder_causal();
    case 1: family = "structured"; return RegionPolicy::structured(random_window(gen));
    case 2: {
      family = "structured+causal window";
      RegionPolicy p = RegionPolicy::structured();
      p.set(Region::within(SegmentKind::image), Rule::windowed(random_window(gen)).and_causal());
      return p;
    }
    case 3: family = "bidirectional_images"; return RegionPolicy::bidirectional_images();
    case 4: family = "qwen25vl_window"; return RegionPolicy::qwen25vl_window(uniform(gen, 1, 9));
    case 5: family = "dense"; return RegionPolicy::dense();
    default: {
      family = "random rules";
      RegionPolicy p;
      for (int i = 0; i < kRegions; ++i) p.set(Region::at(i), random_rule(gen, Region::at(i)));
      return p;
    }
  }
}

inline index_t random_tile(std::mt19937& gen) {
  const index_t sizes[] = {1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 64, 128};
  return gen() % 3 ? sizes[uniform(gen, 0, 11)] : uniform(gen, 1, 40);
}

// Draws the planner's part of a case: layout, policy, tiles, image tiling and query range.
inline void draw_plan_case(std::mt19937& gen, const Limits& limits, PlanCase& c) {
  c.layout = random_layout(gen, limits);
  c.policy = random_policy(gen, c.family);
  add_random_extras(gen, c.policy, c.layout);
  c.options.tiles = {random_tile(gen), random_tile(gen)};
  c.options.image_tiling = static_cast<ImageTiling>(uniform(gen, 0, 2));
  const index_t n = c.layout.size();
  switch (uniform(gen, 0, 3)) {
    case 0:
    case 1: break;                                                  // every query
    case 2: c.options.query_begin = uniform(gen, 0, n - 1); break;  // a suffix (query_end = -1)
    default:
      c.options.query_begin = uniform(gen, 0, n - 1);
      c.options.query_end = uniform(gen, c.options.query_begin + 1, n);
  }
  c.options.all_keys_present = true;  // the tests pass K/V of the whole layout
}

// The window patch's rows: half the time 0 (= tiles.query), else any tile size, larger than
// tiles.query included (the planner clamps it). Drawn last, after everything else, so a seed
// gives every other field the value it gave before this axis was added.
inline void draw_window_query(std::mt19937& gen, PlanCase& c) {
  c.options.tiles.window_query = gen() % 2 ? 0 : random_tile(gen);
}

inline PlanCase random_plan_case(std::uint32_t seed) {
  std::mt19937 gen(seed);
  PlanCase c;
  c.seed = seed;
  draw_plan_case(gen, kPlannerLimits, c);
  draw_window_query(gen, c);
  return c;
}

inline Case random_case(std::uint32_t seed) {
  std::mt19937 gen(seed);
  Case c;
  c.seed = seed;
  draw_plan_case(gen, kAttentionLimits, c);
  // (heads, kv_heads): MHA, GQA, MQA.
  const index_t heads[][2] = {{1, 1}, {2, 2}, {3, 3}, {4, 2}, {6, 2}, {6, 3}, {4, 1}, {3, 1}, {8, 2}};
  const index_t* h = heads[uniform(gen, 0, kSlowBuild ? 7 : 8)];
  const index_t dims[] = {1, 2, 3, 8, 16, 17, 32, 64, 80};
  c.cfg = make_config(h[0], h[1], dims[uniform(gen, 0, 8)]);
  if (gen() % 4 == 0) c.cfg.scale = 0.05f + 0.5f * std::uniform_real_distribution<float>()(gen);
  c.q_storage = static_cast<Storage>(uniform(gen, 0, 3));
  c.kv_storage = static_cast<Storage>(uniform(gen, 0, 3));
  c.out_storage = static_cast<Storage>(uniform(gen, 0, 3));
  c.lse_pad = uniform(gen, 0, 2);
  c.serial = gen() % 4 == 0;
  draw_window_query(gen, c);
  return c;
}

}  // namespace mmattn::test::cases
