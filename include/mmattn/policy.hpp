#pragma once
// Region rules: for each (query region, key region) pair, which keys a query may see; the presets;
// and allowed(q, k), the single definition of the mask that the reference and the tests use.

#include <array>
#include <string>

#include "mmattn/layout.hpp"
#include "mmattn/mask/window1d.hpp"

namespace mmattn {

struct Window2D {
  WindowKind kind = WindowKind::sliding;
  index_t height = 7, width = 7;
  index_t dilation_h = 1, dilation_w = 1;

  static Window2D sliding(index_t height, index_t width, index_t dilation_h = 1, index_t dilation_w = 1) {
    return {WindowKind::sliding, height, width, dilation_h, dilation_w};
  }
  static Window2D partitioned(index_t height, index_t width) { return {WindowKind::partitioned, height, width, 1, 1}; }

  AxisWindow row_window(index_t row, index_t grid_rows) const {
    return axis_window(row, grid_rows, height, dilation_h, kind);
  }
  AxisWindow col_window(index_t col, index_t grid_cols) const {
    return axis_window(col, grid_cols, width, dilation_w, kind);
  }

  void validate(const std::string& where) const {
    MMATTN_REQUIRE(height > 0 && width > 0, where + ": window size must be positive, got " +
                                                std::to_string(height) + " x " + std::to_string(width));
    MMATTN_REQUIRE(dilation_h > 0 && dilation_w > 0, where + ": dilation must be positive, got " +
                                                         std::to_string(dilation_h) + " x " +
                                                         std::to_string(dilation_w));
    MMATTN_REQUIRE(kind != WindowKind::sliding || (height % 2 == 1 && width % 2 == 1),
                   where + ": a sliding window needs odd sizes to be centred, got " + std::to_string(height) + " x " +
                       std::to_string(width));
  }
};

enum class Access : unsigned char { none, full, window };

struct Rule {
  Access access = Access::none;
  bool causal = false;  // on top of the access: key position <= query position
  Window2D window{};    // used when access == window

  static Rule none() { return {}; }
  static Rule full() { return {Access::full, false, {}}; }
  static Rule causal_full() { return {Access::full, true, {}}; }
  static Rule windowed(Window2D w) { return {Access::window, false, w}; }
  Rule and_causal() const { return {access, true, window}; }
};

enum class RegionPair : unsigned char { image_same_image, image_other_image, image_text, text_image, text_text };
inline constexpr int kRegionPairs = 5;

inline const char* region_pair_name(RegionPair p) {
  constexpr const char* names[kRegionPairs] = {"image->same image", "image->other image", "image->text",
                                               "text->image", "text->text"};
  return names[static_cast<int>(p)];
}

inline RegionPair region_pair(const SequenceLayout& layout, index_t query_segment, index_t key_segment) {
  const bool q_image = layout.segment(query_segment).is_image();
  const bool k_image = layout.segment(key_segment).is_image();
  if (q_image && k_image)
    return query_segment == key_segment ? RegionPair::image_same_image : RegionPair::image_other_image;
  if (q_image) return RegionPair::image_text;
  return k_image ? RegionPair::text_image : RegionPair::text_text;
}

class RegionPolicy {
 public:
  const Rule& rule(RegionPair p) const { return rules_[static_cast<size_t>(p)]; }
  RegionPolicy& set(RegionPair p, Rule r) {
    rules_[static_cast<size_t>(p)] = r;
    return *this;
  }

  // Every pair causal by position: a decoder as LLaVA was trained.
  static RegionPolicy decoder_causal() { return uniform(Rule::causal_full()); }

  // Image -> own image 2-D window, text -> all images and earlier text, image -> text none.
  static RegionPolicy structured(Window2D window = Window2D::sliding(7, 7)) {
    RegionPolicy p;
    p.set(RegionPair::image_same_image, Rule::windowed(window));
    p.set(RegionPair::text_image, Rule::full());
    p.set(RegionPair::text_text, Rule::causal_full());
    return p;
  }

  // A causal decoder in which each image attends to itself in both directions (prefix-LM images).
  static RegionPolicy bidirectional_images() {
    RegionPolicy p = decoder_causal();
    p.set(RegionPair::image_same_image, Rule::full());
    return p;
  }

  // Qwen2.5-VL vision encoder's window layers: partitioned windows of `size` x `size` patches.
  static RegionPolicy qwen25vl_window(index_t size = 8) {
    RegionPolicy p;
    p.set(RegionPair::image_same_image, Rule::windowed(Window2D::partitioned(size, size)));
    p.set(RegionPair::text_text, Rule::full());
    return p;
  }

  // Every pair sees every pair: plain bidirectional attention.
  static RegionPolicy dense() { return uniform(Rule::full()); }

  void validate() const {
    for (int i = 0; i < kRegionPairs; ++i) {
      const auto pair = static_cast<RegionPair>(i);
      const Rule& r = rules_[static_cast<size_t>(i)];
      if (r.access != Access::window) continue;
      MMATTN_REQUIRE(pair == RegionPair::image_same_image,
                     std::string("policy: a 2-D window needs one image's grid; it cannot apply to ") +
                         region_pair_name(pair));
      r.window.validate(std::string("policy: ") + region_pair_name(pair));
    }
  }

 private:
  static RegionPolicy uniform(Rule r) {
    RegionPolicy p;
    p.rules_.fill(r);
    return p;
  }
  std::array<Rule, kRegionPairs> rules_{};  // all none
};

// May the query at position q see the key at position k? Positions are in the layout.
inline bool allowed(const SequenceLayout& layout, const RegionPolicy& policy, index_t q, index_t k) {
  const TokenCoord qc = layout.locate(q), kc = layout.locate(k);
  const Rule& r = policy.rule(region_pair(layout, qc.segment, kc.segment));
  if (r.access == Access::none || (r.causal && k > q)) return false;
  if (r.access == Access::full) return true;
  const Segment& s = layout.segment(qc.segment);
  return r.window.row_window(qc.row, s.rows).contains(kc.row) && r.window.col_window(qc.col, s.cols).contains(kc.col);
}

// The predicate as a callable, for reference_attention and tests.
struct MaskPredicate {
  const SequenceLayout* layout;
  const RegionPolicy* policy;
  bool operator()(index_t q, index_t k) const { return allowed(*layout, *policy, q, k); }
};

}  // namespace mmattn
