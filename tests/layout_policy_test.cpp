// SequenceLayout's position <-> (segment, row, col) maps over interleaved layouts, region rules,
// the presets, and every validation error with the words its message must hold.

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "mmattn/layout.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

std::string describe(const SequenceLayout& layout) {
  std::string s;
  for (const Segment& seg : layout.segments())
    s += seg.is_image() ? " I" + std::to_string(seg.rows) + "x" + std::to_string(seg.cols)
                        : " T" + std::to_string(seg.length);
  return s;
}

SequenceLayout random_layout(std::mt19937& gen) {
  SequenceLayout layout;
  const int segments = std::uniform_int_distribution<int>(1, 7)(gen);
  for (int i = 0; i < segments; ++i) {
    if (gen() % 2)
      layout.add_image(std::uniform_int_distribution<index_t>(1, 9)(gen),
                       std::uniform_int_distribution<index_t>(1, 9)(gen));
    else
      layout.add_text(std::uniform_int_distribution<index_t>(1, 12)(gen));
  }
  return layout;
}

TEST(SequenceLayout, PositionAndCoordinatesRoundTripOverInterleavedLayouts) {
  std::mt19937 gen(20240611);
  for (int trial = 0; trial < 200; ++trial) {
    const SequenceLayout layout = random_layout(gen);
    SCOPED_TRACE("layout" + describe(layout));
    // Segments tile [0, size) in order; image lengths are rows x cols, text is one row.
    index_t next = 0, images = 0, text = 0;
    for (const Segment& s : layout.segments()) {
      ASSERT_EQ(s.start, next);
      ASSERT_GT(s.length, 0);
      ASSERT_EQ(s.length, s.rows * s.cols);
      if (!s.is_image()) {
        ASSERT_EQ(s.rows, 1);
      }
      (s.is_image() ? images : text) += s.length;
      next = s.end();
    }
    ASSERT_EQ(layout.size(), next);
    ASSERT_EQ(layout.image_tokens(), images);
    ASSERT_EQ(layout.text_tokens(), text);
    ASSERT_NO_THROW(layout.validate());

    // position -> coordinates -> position.
    for (index_t pos = 0; pos < layout.size(); ++pos) {
      const TokenCoord c = layout.locate(pos);
      ASSERT_EQ(c.segment, layout.segment_index(pos));
      const Segment& s = layout.segment(c.segment);
      ASSERT_GE(pos, s.start);
      ASSERT_LT(pos, s.end());
      ASSERT_GE(c.row, 0);
      ASSERT_LT(c.row, s.rows);
      ASSERT_GE(c.col, 0);
      ASSERT_LT(c.col, s.cols);
      ASSERT_EQ(s.start + c.row * s.cols + c.col, pos);  // raster order
      if (!s.is_image()) {
        ASSERT_EQ(c.row, 0);
      }
      ASSERT_EQ(layout.position(c), pos);
    }
    // coordinates -> position -> coordinates, every coordinate of every segment.
    for (index_t si = 0; si < layout.num_segments(); ++si) {
      const Segment& s = layout.segment(si);
      for (index_t r = 0; r < s.rows; ++r)
        for (index_t c = 0; c < s.cols; ++c) {
          const index_t pos = layout.position({si, r, c});
          const TokenCoord back = layout.locate(pos);
          ASSERT_EQ(back.segment, si);
          ASSERT_EQ(back.row, r);
          ASSERT_EQ(back.col, c);
        }
    }
  }
}

TEST(SequenceLayout, ImagesThenText) {
  const SequenceLayout layout = SequenceLayout::images_then_text(3, 4, 5, 7);
  ASSERT_EQ(layout.num_segments(), 4);
  EXPECT_EQ(layout.size(), 3 * 20 + 7);
  EXPECT_EQ(layout.image_tokens(), 60);
  EXPECT_EQ(layout.text_tokens(), 7);
  EXPECT_TRUE(layout.segment(2).is_image());
  EXPECT_EQ(layout.segment(2).start, 40);
  EXPECT_FALSE(layout.segment(3).is_image());
  EXPECT_EQ(SequenceLayout::images_then_text(2, 3, 3, 0).num_segments(), 2);  // no empty text segment
}

TEST(SequenceLayout, ErrorsNameTheProblem) {
  SequenceLayout layout;
  std::string m = error_message([&] { layout.validate(); });
  EXPECT_TRUE(contains(m, "the sequence has no tokens")) << m;

  m = error_message([&] { layout.add_text(0); });
  EXPECT_TRUE(contains(m, "text segment needs at least one token, got 0")) << m;
  m = error_message([&] { layout.add_text(-3); });
  EXPECT_TRUE(contains(m, "got -3")) << m;
  m = error_message([&] { layout.add_image(0, 3); });
  EXPECT_TRUE(contains(m, "image grid must be at least 1 x 1, got 0 x 3")) << m;
  m = error_message([&] { layout.add_image(2, 0); });
  EXPECT_TRUE(contains(m, "got 2 x 0")) << m;
  m = error_message([&] { layout.add_image(-1, 2); });
  EXPECT_TRUE(contains(m, "got -1 x 2")) << m;
  EXPECT_EQ(layout.num_segments(), 0);  // a failed add leaves the layout as it was

  layout.add_text(2).add_image(1, 3);  // 5 tokens
  EXPECT_EQ(layout.size(), 5);
  for (const index_t bad : {index_t{-1}, index_t{5}, index_t{100}}) {
    m = error_message([&] { layout.locate(bad); });
    EXPECT_TRUE(contains(m, "position " + std::to_string(bad) + " is outside [0, 5)")) << m;
    m = error_message([&] { layout.segment_index(bad); });
    EXPECT_TRUE(contains(m, "is outside [0, 5)")) << m;
  }
  m = error_message([&] { layout.position({2, 0, 0}); });
  EXPECT_TRUE(contains(m, "no segment 2")) << m;
  m = error_message([&] { layout.position({-1, 0, 0}); });
  EXPECT_TRUE(contains(m, "no segment -1")) << m;
  m = error_message([&] { layout.position({1, 1, 0}); });
  EXPECT_TRUE(contains(m, "(1, 0) is outside segment 1")) << m;
  m = error_message([&] { layout.position({1, 0, 3}); });
  EXPECT_TRUE(contains(m, "(0, 3) is outside segment 1")) << m;
  m = error_message([&] { layout.position({0, 0, -1}); });
  EXPECT_TRUE(contains(m, "is outside segment 0")) << m;

  // An empty layout is refused where it is used, too.
  m = error_message([] { make_plan(SequenceLayout{}, RegionPolicy::dense()); });
  EXPECT_TRUE(contains(m, "the sequence has no tokens")) << m;
}

TEST(RegionPair, ClassifiesEverySegmentPair) {
  SequenceLayout layout;
  layout.add_image(2, 2).add_text(3).add_image(1, 4).add_text(1);
  EXPECT_EQ(region_pair(layout, 0, 0), RegionPair::image_same_image);
  EXPECT_EQ(region_pair(layout, 2, 2), RegionPair::image_same_image);
  EXPECT_EQ(region_pair(layout, 0, 2), RegionPair::image_other_image);
  EXPECT_EQ(region_pair(layout, 2, 0), RegionPair::image_other_image);
  EXPECT_EQ(region_pair(layout, 0, 1), RegionPair::image_text);
  EXPECT_EQ(region_pair(layout, 2, 3), RegionPair::image_text);
  EXPECT_EQ(region_pair(layout, 1, 0), RegionPair::text_image);
  EXPECT_EQ(region_pair(layout, 3, 2), RegionPair::text_image);
  EXPECT_EQ(region_pair(layout, 1, 1), RegionPair::text_text);
  EXPECT_EQ(region_pair(layout, 1, 3), RegionPair::text_text);
  EXPECT_STREQ(region_pair_name(RegionPair::image_same_image), "image->same image");
  EXPECT_STREQ(region_pair_name(RegionPair::text_text), "text->text");
}

void expect_rule(const RegionPolicy& p, RegionPair pair, Access access, bool causal, const char* preset) {
  SCOPED_TRACE(std::string(preset) + " " + region_pair_name(pair));
  EXPECT_EQ(p.rule(pair).access, access);
  EXPECT_EQ(p.rule(pair).causal, causal);
}

void expect_window(const Window2D& w, WindowKind kind, index_t h, index_t wd, index_t dh, index_t dw) {
  EXPECT_EQ(w.kind, kind);
  EXPECT_EQ(w.height, h);
  EXPECT_EQ(w.width, wd);
  EXPECT_EQ(w.dilation_h, dh);
  EXPECT_EQ(w.dilation_w, dw);
}

TEST(RegionPolicy, PresetRules) {
  using RP = RegionPair;
  const RegionPolicy decoder = RegionPolicy::decoder_causal();
  for (int i = 0; i < kRegionPairs; ++i)
    expect_rule(decoder, static_cast<RP>(i), Access::full, true, "decoder_causal");

  const RegionPolicy dense = RegionPolicy::dense();
  for (int i = 0; i < kRegionPairs; ++i) expect_rule(dense, static_cast<RP>(i), Access::full, false, "dense");

  const RegionPolicy bidi = RegionPolicy::bidirectional_images();
  expect_rule(bidi, RP::image_same_image, Access::full, false, "bidirectional_images");
  for (const RP p : {RP::image_other_image, RP::image_text, RP::text_image, RP::text_text})
    expect_rule(bidi, p, Access::full, true, "bidirectional_images");

  const RegionPolicy structured = RegionPolicy::structured();
  expect_rule(structured, RP::image_same_image, Access::window, false, "structured");
  expect_window(structured.rule(RP::image_same_image).window, WindowKind::sliding, 7, 7, 1, 1);
  expect_rule(structured, RP::image_other_image, Access::none, false, "structured");
  expect_rule(structured, RP::image_text, Access::none, false, "structured");
  expect_rule(structured, RP::text_image, Access::full, false, "structured");
  expect_rule(structured, RP::text_text, Access::full, true, "structured");
  const RegionPolicy structured_d = RegionPolicy::structured(Window2D::sliding(5, 3, 2, 3));
  expect_window(structured_d.rule(RP::image_same_image).window, WindowKind::sliding, 5, 3, 2, 3);

  const RegionPolicy qwen = RegionPolicy::qwen25vl_window();
  expect_rule(qwen, RP::image_same_image, Access::window, false, "qwen25vl_window");
  expect_window(qwen.rule(RP::image_same_image).window, WindowKind::partitioned, 8, 8, 1, 1);
  expect_rule(qwen, RP::image_other_image, Access::none, false, "qwen25vl_window");
  expect_rule(qwen, RP::image_text, Access::none, false, "qwen25vl_window");
  expect_rule(qwen, RP::text_image, Access::none, false, "qwen25vl_window");
  expect_rule(qwen, RP::text_text, Access::full, false, "qwen25vl_window");
  expect_window(RegionPolicy::qwen25vl_window(4).rule(RP::image_same_image).window, WindowKind::partitioned, 4, 4,
                1, 1);

  // Every preset validates.
  for (const RegionPolicy& p : {decoder, dense, bidi, structured, structured_d, qwen}) EXPECT_NO_THROW(p.validate());
}

TEST(RegionPolicy, RuleHelpers) {
  EXPECT_EQ(Rule::none().access, Access::none);
  EXPECT_EQ(Rule::full().access, Access::full);
  EXPECT_FALSE(Rule::full().causal);
  EXPECT_TRUE(Rule::causal_full().causal);
  const Rule w = Rule::windowed(Window2D::sliding(3, 5, 2, 1)).and_causal();
  EXPECT_EQ(w.access, Access::window);
  EXPECT_TRUE(w.causal);
  expect_window(w.window, WindowKind::sliding, 3, 5, 2, 1);
  RegionPolicy p;  // default: everything none
  for (int i = 0; i < kRegionPairs; ++i) EXPECT_EQ(p.rule(static_cast<RegionPair>(i)).access, Access::none);
  p.set(RegionPair::text_image, Rule::causal_full());
  EXPECT_TRUE(p.rule(RegionPair::text_image).causal);
}

// The message of validating `p` directly, through make_plan and through MultimodalAttention: all three
// must refuse it with the same words.
std::vector<std::string> policy_errors(const RegionPolicy& p) {
  SequenceLayout layout;
  layout.add_image(3, 3).add_text(2);
  return {error_message([&] { p.validate(); }), error_message([&] { make_plan(layout, p); }),
          error_message([&] { MultimodalAttention<float>(make_config(1, 1, 4), layout, p); })};
}

void expect_policy_error(const RegionPolicy& p, const std::vector<std::string>& words) {
  for (const std::string& m : policy_errors(p))
    for (const std::string& w : words) EXPECT_TRUE(contains(m, w)) << "message: " << m << "\nmissing: " << w;
}

TEST(RegionPolicy, ValidationErrorsNameTheProblem) {
  using RP = RegionPair;
  // Even sliding sizes cannot be centred.
  expect_policy_error(RegionPolicy::structured(Window2D::sliding(6, 7)),
                      {"image->same image", "sliding window needs odd sizes", "6 x 7"});
  expect_policy_error(RegionPolicy::structured(Window2D::sliding(5, 4)), {"odd sizes", "5 x 4"});
  // Zero and negative sizes.
  expect_policy_error(RegionPolicy::structured(Window2D::sliding(0, 3)), {"window size must be positive", "0 x 3"});
  expect_policy_error(RegionPolicy::structured(Window2D::sliding(3, -1)), {"window size must be positive", "3 x -1"});
  expect_policy_error(RegionPolicy::qwen25vl_window(0), {"window size must be positive", "0 x 0"});
  expect_policy_error(RegionPolicy::structured(Window2D::partitioned(-2, 4)), {"window size must be positive"});
  // Zero and negative dilation.
  expect_policy_error(RegionPolicy::structured(Window2D::sliding(3, 3, 0, 1)), {"dilation must be positive", "0 x 1"});
  expect_policy_error(RegionPolicy::structured(Window2D::sliding(3, 3, 1, -2)),
                      {"dilation must be positive", "1 x -2"});
  // A window rule anywhere but image -> same image.
  for (const RP pair : {RP::image_other_image, RP::image_text, RP::text_image, RP::text_text}) {
    RegionPolicy p = RegionPolicy::dense();
    p.set(pair, Rule::windowed(Window2D::sliding(3, 3)));
    expect_policy_error(p, {"2-D window needs one image's grid", std::string("cannot apply to ") + region_pair_name(pair)});
  }
  // Causal on top does not change what is refused.
  RegionPolicy p;
  p.set(RP::image_same_image, Rule::windowed(Window2D::sliding(2, 3)).and_causal());
  expect_policy_error(p, {"odd sizes", "2 x 3"});
}

TEST(RegionPolicy, AcceptedWindows) {
  // Partitioned windows may be even; sliding windows of size 1 are just the query.
  EXPECT_NO_THROW(RegionPolicy::qwen25vl_window(8).validate());
  EXPECT_NO_THROW(RegionPolicy::structured(Window2D::partitioned(2, 6)).validate());
  EXPECT_NO_THROW(RegionPolicy::structured(Window2D::sliding(1, 1)).validate());
  EXPECT_NO_THROW(RegionPolicy::structured(Window2D::sliding(3, 5, 4, 7)).validate());
}

TEST(RegionPolicy, WindowLargerThanTheGridIsNotAnErrorAndCoversTheImage) {
  SequenceLayout layout;
  layout.add_text(2).add_image(3, 4).add_image(1, 2).add_text(3);
  for (const RegionPolicy& policy : {RegionPolicy::structured(Window2D::sliding(9, 15)),
                                     RegionPolicy::structured(Window2D::sliding(11, 5)),
                                     RegionPolicy::qwen25vl_window(16)}) {
    ASSERT_NO_THROW(policy.validate());
    ASSERT_NO_THROW(make_plan(layout, policy));
    for (const index_t image : {index_t{1}, index_t{2}}) {
      const Segment& s = layout.segment(image);
      for (index_t q = s.start; q < s.end(); ++q)
        for (index_t k = 0; k < layout.size(); ++k)
          EXPECT_EQ(allowed(layout, policy, q, k), k >= s.start && k < s.end()) << "q=" << q << " k=" << k;
    }
  }
  // Dilated: the window covers the query's dilation group (equal row and col residues) of the image.
  const RegionPolicy dilated = RegionPolicy::structured(Window2D::sliding(5, 5, 2, 3));
  ASSERT_NO_THROW(make_plan(layout, dilated));
  const Segment& s = layout.segment(1);
  for (index_t q = s.start; q < s.end(); ++q)
    for (index_t k = s.start; k < s.end(); ++k) {
      const index_t qr = (q - s.start) / s.cols, qc = (q - s.start) % s.cols;
      const index_t kr = (k - s.start) / s.cols, kc = (k - s.start) % s.cols;
      EXPECT_EQ(allowed(layout, dilated, q, k), qr % 2 == kr % 2 && qc % 3 == kc % 3) << "q=" << q << " k=" << k;
    }
}

// allowed() on a hand-checked case: structured 3x3 window on a 4x4 image, then 2 text tokens.
TEST(Allowed, StructuredByHand) {
  const SequenceLayout layout = SequenceLayout::images_then_text(1, 4, 4, 2);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  // Query (0, 0) sees rows 0..2 x cols 0..2 (shifted at the border), nothing of the text.
  for (index_t k = 0; k < 18; ++k) {
    const bool in_image = k < 16 && k / 4 <= 2 && k % 4 <= 2;
    EXPECT_EQ(allowed(layout, policy, 0, k), in_image) << "k=" << k;
  }
  // Query (1, 2) sees rows 0..2 x cols 1..3.
  for (index_t k = 0; k < 16; ++k)
    EXPECT_EQ(allowed(layout, policy, 6, k), k / 4 <= 2 && k % 4 >= 1) << "k=" << k;
  // Text 16 sees the image and itself; text 17 sees the image and both text tokens.
  for (index_t k = 0; k < 18; ++k) {
    EXPECT_EQ(allowed(layout, policy, 16, k), k <= 16) << "k=" << k;
    EXPECT_TRUE(allowed(layout, policy, 17, k)) << "k=" << k;
  }
  // The predicate object is the same function.
  const MaskPredicate pred{&layout, &policy};
  for (index_t q = 0; q < 18; ++q)
    for (index_t k = 0; k < 18; ++k) EXPECT_EQ(pred(q, k), allowed(layout, policy, q, k));
}

}  // namespace
}  // namespace mmattn::test
