#pragma once
// The region policy: which rule (mask/rules.hpp) each (query segment, key segment) pair follows.
// A table by (query kind, key kind, same segment or another), per-segment overrides on top (one
// image full, another windowed; a thumbnail and its tiles), and attention sinks. Presets for the
// models people run, and allowed(q, k), the single definition of the mask that the reference and
// the tests use.

#include <array>
#include <cstddef>
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "mmattn/layout.hpp"
#include "mmattn/mask/pair_mask.hpp"
#include "mmattn/mask/rule.hpp"

namespace mmattn {

// A class of (query segment, key segment) pairs: by kinds, and whether the key segment is the
// query's own. The statistics and the report count per region.
struct Region {
  SegmentKind query = SegmentKind::text, key = SegmentKind::text;
  bool same = false;  // the key segment is the query's own (then the kinds are equal)

  static constexpr Region within(SegmentKind kind) { return {kind, kind, true}; }
  static constexpr Region across(SegmentKind query, SegmentKind key) { return {query, key, false}; }

  int index() const { return same ? int(query) : kSegmentKinds + int(query) * kSegmentKinds + int(key); }
  static Region at(int index) {
    if (index < kSegmentKinds) return within(static_cast<SegmentKind>(index));
    index -= kSegmentKinds;
    return across(static_cast<SegmentKind>(index / kSegmentKinds), static_cast<SegmentKind>(index % kSegmentKinds));
  }
  std::string name() const {
    const std::string q = segment_kind_name(query), k = segment_kind_name(key);
    if (same) return q + "->same " + k;
    return q + "->" + (query == key ? "other " : "") + k;
  }
  friend bool operator==(Region a, Region b) { return a.index() == b.index(); }
};
inline constexpr int kRegions = kSegmentKinds + kSegmentKinds * kSegmentKinds;

inline Region region_of(const SequenceLayout& layout, index_t query_segment, index_t key_segment) {
  const Segment& q = layout.segment(query_segment);
  const Segment& k = layout.segment(key_segment);
  return query_segment == key_segment ? Region::within(q.kind) : Region::across(q.kind, k.kind);
}

namespace detail {

// What makes a rule the rule it is, as a tuple, for equality and hashing (PlanCache keys). A new
// rule in RuleVariant needs an overload here, or rule_equal below fails to compile. A custom rule
// is its shared predicate's identity: std::function has no equality, so two policies are equal
// when they hold the same Rule::predicate object (copies of one policy or one Rule), and two
// predicates built apart never compare equal, even from the same lambda (a cache miss, never a
// wrong hit).
inline std::tuple<> rule_fields(const NoneRule&) { return {}; }
inline std::tuple<> rule_fields(const FullRule&) { return {}; }
inline std::tuple<> rule_fields(const CausalRule&) { return {}; }
inline auto rule_fields(const SlidingWindowRule& r) { return std::make_tuple(r.left, r.right); }
inline auto rule_fields(const ChunkedRule& r) { return std::make_tuple(r.chunk); }
inline auto rule_fields(const DilatedBandRule& r) { return std::make_tuple(r.left, r.right, r.dilation); }
inline auto rule_fields(const Window2D& w) {
  return std::make_tuple(static_cast<int>(w.kind), w.height, w.width, w.dilation_h, w.dilation_w, w.causal);
}
inline auto rule_fields(const Window3D& w) {
  return std::make_tuple(static_cast<int>(w.kind), w.frames, w.height, w.width, w.dilation_f, w.dilation_h,
                         w.dilation_w, w.causal_frames);
}
inline auto rule_fields(const SharedCustomRule& r) { return std::make_tuple(static_cast<const void*>(r.rule.get())); }

template <class Tuple>
std::size_t hash_tuple(std::size_t seed, const Tuple& t) {
  std::apply([&](const auto&... f) { (hash_combine(seed, std::hash<std::decay_t<decltype(f)>>{}(f)), ...); }, t);
  return seed;
}

// f(alternative) on the rule's alternative of RuleVariant (Rule keeps its variant private).
template <class F, std::size_t I = 0>
auto visit_rule(const Rule& r, F&& f) {
  using R = std::variant_alternative_t<I, RuleVariant>;
  if constexpr (I + 1 == std::variant_size_v<RuleVariant>) {
    return f(I, *r.get<R>());
  } else {
    if (const R* alt = r.get<R>()) return f(I, *alt);
    return visit_rule<F, I + 1>(r, std::forward<F>(f));
  }
}

inline bool rule_equal(const Rule& a, const Rule& b) {
  return visit_rule(a, [&](std::size_t, const auto& x) {
    using R = std::decay_t<decltype(x)>;
    const R* y = b.get<R>();
    return y != nullptr && rule_fields(x) == rule_fields(*y);
  });
}

inline std::size_t rule_hash(const Rule& r) {
  return visit_rule(r, [](std::size_t alternative, const auto& x) { return hash_tuple(alternative, rule_fields(x)); });
}

}  // namespace detail

class RegionPolicy {
 public:
  // One region's rule.
  RegionPolicy& set(Region region, Rule rule) {
    MMATTN_REQUIRE(!region.same || region.query == region.key, "policy: a segment's own keys have its own kind");
    table_[static_cast<size_t>(region.index())] = std::move(rule);
    return *this;
  }
  // query kind -> key kind, within one segment and across segments alike.
  RegionPolicy& set(SegmentKind query, SegmentKind key, const Rule& rule) {
    if (query == key) set(Region::within(query), rule);
    return set(Region::across(query, key), rule);
  }
  // Every region.
  RegionPolicy& set_all(const Rule& rule) {
    table_.fill(rule);
    return *this;
  }
  // Queries of segment `query_segment` over keys of `key_segment`: overrides the table (the
  // segments are indices into the layout the policy is used with).
  RegionPolicy& set_segments(index_t query_segment, index_t key_segment, Rule rule) {
    MMATTN_REQUIRE(query_segment >= 0 && key_segment >= 0, "policy: segment indices must be non-negative, got " +
                                                               std::to_string(query_segment) + ", " +
                                                               std::to_string(key_segment));
    for (Override& o : overrides_)
      if (o.query_segment == query_segment && o.key_segment == key_segment) return o.rule = std::move(rule), *this;
    overrides_.push_back({query_segment, key_segment, std::move(rule)});
    return *this;
  }
  // Attention sinks (StreamingLLM): positions [0, n) are seen by every query at or after them,
  // on top of any rule. Sinks never let a query see a later position.
  RegionPolicy& with_sinks(index_t n) {
    MMATTN_REQUIRE(n >= 0, "policy: the number of sink tokens must be non-negative, got " + std::to_string(n));
    sinks_ = n;
    return *this;
  }

  const Rule& rule(Region region) const { return table_[static_cast<size_t>(region.index())]; }
  const Rule& rule_for(const SequenceLayout& layout, index_t query_segment, index_t key_segment) const {
    for (const Override& o : overrides_)
      if (o.query_segment == query_segment && o.key_segment == key_segment) return o.rule;
    return rule(region_of(layout, query_segment, key_segment));
  }
  index_t sinks() const { return sinks_; }

  // The mask of one segment pair: what planner, kernel, statistics and report ask.
  PairMask pair(const SequenceLayout& layout, index_t query_segment, index_t key_segment) const {
    return {layout.segment(query_segment), layout.segment(key_segment),
            rule_for(layout, query_segment, key_segment), sinks_};
  }

  // Every rule of the table suits its region (a 2-D window only an image's own keys, sizes
  // positive, ...), checked on unit segments of the region's kinds.
  void validate() const {
    for (int i = 0; i < kRegions; ++i) {
      const Region region = Region::at(i);
      const Segment query{region.query, 0, 1, 1, 1, 1};
      const Segment other{region.key, 1, 1, 1, 1, 1};
      check(rule(region), query, region.same ? query : other, region.name());
    }
  }
  // validate(), and every override names a segment of `layout` and suits its pair.
  void validate(const SequenceLayout& layout) const {
    validate();
    for (const Override& o : overrides_) {
      const std::string where = "segments " + std::to_string(o.query_segment) + " -> " + std::to_string(o.key_segment);
      MMATTN_REQUIRE(o.query_segment < layout.num_segments() && o.key_segment < layout.num_segments(),
                     "policy: an override names " + where + " but the layout has " +
                         std::to_string(layout.num_segments()));
      check(o.rule, layout.segment(o.query_segment), layout.segment(o.key_segment), where);
    }
  }

  // Same table, same overrides in the same order, same sinks (custom rules: see detail::rule_fields).
  // Overrides set in another order compare unequal: for a cache that is only a miss.
  friend bool operator==(const RegionPolicy& a, const RegionPolicy& b) {
    if (a.sinks_ != b.sinks_ || a.overrides_.size() != b.overrides_.size()) return false;
    for (size_t i = 0; i < a.table_.size(); ++i)
      if (!detail::rule_equal(a.table_[i], b.table_[i])) return false;
    for (size_t i = 0; i < a.overrides_.size(); ++i) {
      const Override &x = a.overrides_[i], &y = b.overrides_[i];
      if (x.query_segment != y.query_segment || x.key_segment != y.key_segment || !detail::rule_equal(x.rule, y.rule))
        return false;
    }
    return true;
  }
  friend bool operator!=(const RegionPolicy& a, const RegionPolicy& b) { return !(a == b); }
  // Equal policies hash alike.
  std::size_t hash() const {
    std::size_t h = std::hash<index_t>{}(sinks_);
    for (const Rule& r : table_) detail::hash_combine(h, detail::rule_hash(r));
    for (const Override& o : overrides_) {
      detail::hash_combine(h, std::hash<index_t>{}(o.query_segment));
      detail::hash_combine(h, std::hash<index_t>{}(o.key_segment));
      detail::hash_combine(h, detail::rule_hash(o.rule));
    }
    return h;
  }

  // --- Presets. Each names the model and where its mask comes from. ---

  // Every pair causal by position: a plain decoder, as LLaVA-1.5 / LLaVA-NeXT's language model
  // runs (image tokens are ordinary tokens of a causal LM).
  static RegionPolicy decoder_causal() { return uniform(Rule::causal()); }

  // Every pair sees every pair: plain bidirectional attention.
  static RegionPolicy dense() { return uniform(Rule::full()); }

  // A causal decoder in which each image (and video) attends to itself in both directions.
  // Gemma-3's global layers: causal, plus bidirectional inside each image (transformers'
  // Gemma3 token_type_ids_mask_function ORed with the causal mask).
  static RegionPolicy bidirectional_images() {
    RegionPolicy p = decoder_causal();
    p.set(Region::within(SegmentKind::image), Rule::full());
    p.set(Region::within(SegmentKind::video), Rule::full());
    return p;
  }
  static RegionPolicy gemma3_global() { return bidirectional_images(); }

  // Gemma-3's local (sliding) layers: a causal band of `window` positions (config
  // sliding_window = 1024, transformers' sliding_window_overlay: q - k < window), ORed with
  // bidirectional attention inside each image.
  static RegionPolicy gemma3_local(index_t window = 1024) {
    RegionPolicy p = uniform(SlidingWindowRule::causal(window));
    p.set(Region::within(SegmentKind::image), Rule::full());
    p.set(Region::within(SegmentKind::video), Rule::full());
    return p;
  }

  // Mistral-style local layers over every token: a causal band of `window` positions.
  static RegionPolicy sliding_causal(index_t window) { return uniform(SlidingWindowRule::causal(window)); }

  // Llama-4's chunked local layers (config attention_chunk_size = 8192): causal inside fixed
  // chunks of positions.
  static RegionPolicy llama4_chunked(index_t chunk = 8192) { return uniform(Rule::chunked(chunk)); }

  // A vision encoder over several images (Pixtral, ViT, Qwen2.5-VL's full layers, which cut
  // attention at each image with cu_seqlens): block-diagonal, full inside each image or video.
  static RegionPolicy vision_block_diagonal() {
    RegionPolicy p;
    p.set(Region::within(SegmentKind::image), Rule::full());
    p.set(Region::within(SegmentKind::video), Rule::full());
    p.set(Region::within(SegmentKind::text), Rule::full());
    return p;
  }

  // Qwen2.5-VL vision encoder's window layers: partitioned windows of `size` x `size` merged
  // patches (window_size 112 px / 14 px patches / 2 x 2 merge = 8); a video is windowed frame by
  // frame (Qwen2_5_VisionTransformer.get_window_index windows each temporal slice).
  static RegionPolicy qwen25vl_window(index_t size = 8) {
    RegionPolicy p;
    p.set(Region::within(SegmentKind::image), Window2D::partitioned(size, size));
    p.set(Region::within(SegmentKind::video), Window3D::partitioned(1, size, size));
    p.set(Region::within(SegmentKind::text), Rule::full());
    return p;
  }

  // A video language model with local spatio-temporal attention inside the video (NATTEN na3d
  // semantics, optionally causal in time) and a causal decoder elsewhere.
  static RegionPolicy video_windows(Window3D window = Window3D::sliding(3, 7, 7)) {
    RegionPolicy p = decoder_causal();
    p.set(Region::within(SegmentKind::video), window);
    return p;
  }

  // The seed's structured mask: an image sees a 2-D window of itself (a video a 3-D one), text
  // sees the images before it and earlier text, image -> text nothing. Text -> image is causal
  // by position, so chunked prefill never needs an image that is not written yet (identical to
  // full when images precede the text).
  static RegionPolicy structured(Window2D window = Window2D::sliding(7, 7),
                                 Window3D video = Window3D::sliding(3, 7, 7)) {
    RegionPolicy p;
    p.set(Region::within(SegmentKind::image), window);
    p.set(Region::within(SegmentKind::video), video);
    p.set(SegmentKind::text, SegmentKind::image, Rule::causal());
    p.set(SegmentKind::text, SegmentKind::video, Rule::causal());
    p.set(SegmentKind::text, SegmentKind::text, Rule::causal());
    return p;
  }

 private:
  struct Override {
    index_t query_segment, key_segment;
    Rule rule;
  };
  // A rule's own check, its message prefixed with where the rule was set.
  static void check(const Rule& r, const Segment& query, const Segment& key, const std::string& where) {
    try {
      r.check(query, key);
    } catch (const Error& e) {
      const std::string what = e.what(), prefix = "mmattn: policy: ";
      detail::fail("policy: " + where + ": " + (what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what));
    }
  }
  static RegionPolicy uniform(const Rule& r) {
    RegionPolicy p;
    p.set_all(r);
    return p;
  }
  std::array<Rule, kRegions> table_{};  // all none
  std::vector<Override> overrides_;
  index_t sinks_ = 0;
};

// May the query at position q see the key at position k? Positions are in the layout.
inline bool allowed(const SequenceLayout& layout, const RegionPolicy& policy, index_t q, index_t k) {
  return policy.pair(layout, layout.segment_index(q), layout.segment_index(k)).allowed(q, k);
}

// The predicate as a callable, for reference_attention and tests.
struct MaskPredicate {
  const SequenceLayout* layout;
  const RegionPolicy* policy;
  bool operator()(index_t q, index_t k) const { return allowed(*layout, *policy, q, k); }
};

}  // namespace mmattn
