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

TEST(Region, ClassifiesEverySegmentPair) {
  SequenceLayout layout;
  layout.add_image(2, 2).add_text(3).add_image(1, 4).add_text(1).add_video(2, 2, 2);
  const Region same_image = Region::within(SegmentKind::image);
  EXPECT_EQ(region_of(layout, 0, 0), same_image);
  EXPECT_EQ(region_of(layout, 2, 2), same_image);
  EXPECT_EQ(region_of(layout, 0, 2), Region::across(SegmentKind::image, SegmentKind::image));
  EXPECT_EQ(region_of(layout, 0, 1), Region::across(SegmentKind::image, SegmentKind::text));
  EXPECT_EQ(region_of(layout, 1, 0), Region::across(SegmentKind::text, SegmentKind::image));
  EXPECT_EQ(region_of(layout, 1, 1), Region::within(SegmentKind::text));
  EXPECT_EQ(region_of(layout, 1, 3), Region::across(SegmentKind::text, SegmentKind::text));
  EXPECT_EQ(region_of(layout, 4, 4), Region::within(SegmentKind::video));
  EXPECT_EQ(region_of(layout, 3, 4), Region::across(SegmentKind::text, SegmentKind::video));
  EXPECT_EQ(same_image.name(), "image->same image");
  EXPECT_EQ(Region::across(SegmentKind::text, SegmentKind::text).name(), "text->other text");
  EXPECT_EQ(Region::across(SegmentKind::text, SegmentKind::video).name(), "text->video");
  // index() and at() are inverse over every region, and indices are dense.
  for (int i = 0; i < kRegions; ++i) EXPECT_EQ(Region::at(i).index(), i);
}

void expect_rule(const RegionPolicy& p, Region region, const std::string& name, const char* preset) {
  SCOPED_TRACE(std::string(preset) + " " + region.name());
  EXPECT_EQ(p.rule(region).name(), name);
}

void expect_window(const Window2D& w, WindowKind kind, index_t h, index_t wd, index_t dh, index_t dw) {
  EXPECT_EQ(w.kind, kind);
  EXPECT_EQ(w.height, h);
  EXPECT_EQ(w.width, wd);
  EXPECT_EQ(w.dilation_h, dh);
  EXPECT_EQ(w.dilation_w, dw);
}

constexpr SegmentKind kText = SegmentKind::text, kImage = SegmentKind::image, kVideo = SegmentKind::video;

TEST(RegionPolicy, PresetRules) {
  const RegionPolicy decoder = RegionPolicy::decoder_causal();
  for (int i = 0; i < kRegions; ++i) expect_rule(decoder, Region::at(i), "causal", "decoder_causal");

  const RegionPolicy dense = RegionPolicy::dense();
  for (int i = 0; i < kRegions; ++i) expect_rule(dense, Region::at(i), "full", "dense");

  const RegionPolicy bidi = RegionPolicy::bidirectional_images();
  for (int i = 0; i < kRegions; ++i) {
    const Region r = Region::at(i);
    expect_rule(bidi, r, r.same && r.query != kText ? "full" : "causal", "bidirectional_images");
  }

  const RegionPolicy structured = RegionPolicy::structured();
  expect_rule(structured, Region::within(kImage), "window 7x7 sliding", "structured");
  expect_window(*structured.rule(Region::within(kImage)).get<Window2D>(), WindowKind::sliding, 7, 7, 1, 1);
  expect_rule(structured, Region::within(kVideo), "window 3x7x7 sliding", "structured");
  expect_rule(structured, Region::across(kImage, kImage), "none", "structured");
  expect_rule(structured, Region::across(kImage, kText), "none", "structured");
  expect_rule(structured, Region::across(kText, kImage), "causal", "structured");
  expect_rule(structured, Region::across(kText, kText), "causal", "structured");
  expect_rule(structured, Region::within(kText), "causal", "structured");
  const RegionPolicy structured_d = RegionPolicy::structured(Window2D::sliding(5, 3, 2, 3));
  expect_window(*structured_d.rule(Region::within(kImage)).get<Window2D>(), WindowKind::sliding, 5, 3, 2, 3);

  const RegionPolicy qwen = RegionPolicy::qwen25vl_window();
  expect_window(*qwen.rule(Region::within(kImage)).get<Window2D>(), WindowKind::partitioned, 8, 8, 1, 1);
  expect_rule(qwen, Region::within(kVideo), "window 1x8x8 partitioned", "qwen25vl_window");
  expect_rule(qwen, Region::across(kImage, kImage), "none", "qwen25vl_window");
  expect_rule(qwen, Region::across(kImage, kText), "none", "qwen25vl_window");
  expect_rule(qwen, Region::across(kText, kImage), "none", "qwen25vl_window");
  expect_rule(qwen, Region::within(kText), "full", "qwen25vl_window");
  expect_window(*RegionPolicy::qwen25vl_window(4).rule(Region::within(kImage)).get<Window2D>(),
                WindowKind::partitioned, 4, 4, 1, 1);

  const RegionPolicy local = RegionPolicy::gemma3_local();
  expect_rule(local, Region::within(kImage), "full", "gemma3_local");
  expect_rule(local, Region::across(kText, kImage), "band (1023, 0)", "gemma3_local");
  expect_rule(RegionPolicy::llama4_chunked(), Region::within(kText), "chunked local 8192", "llama4_chunked");

  // Every preset validates on a layout with every kind.
  SequenceLayout layout;
  layout.add_image(3, 3).add_text(2).add_video(2, 3, 3).add_text(1);
  for (const RegionPolicy& p : {decoder, dense, bidi, structured, structured_d, qwen, local, RegionPolicy::gemma3_global(),
                                RegionPolicy::llama4_chunked(), RegionPolicy::vision_block_diagonal(),
                                RegionPolicy::video_windows(), RegionPolicy::sliding_causal(4)})
    EXPECT_NO_THROW(p.validate(layout));
}

TEST(RegionPolicy, RuleHelpers) {
  EXPECT_TRUE(Rule::none().is_none());
  EXPECT_TRUE(Rule{}.is_none());
  EXPECT_EQ(Rule::full().name(), "full");
  EXPECT_EQ(Rule::causal_full().name(), "causal");
  EXPECT_EQ(Rule::full().and_causal().name(), "causal");
  EXPECT_EQ(Rule::band(5, 3).and_causal().name(), "band (5, 0)");
  const Rule w = Rule::windowed(Window2D::sliding(3, 5, 2, 1)).and_causal();
  ASSERT_NE(w.get<Window2D>(), nullptr);
  EXPECT_TRUE(w.get<Window2D>()->causal);
  expect_window(*w.get<Window2D>(), WindowKind::sliding, 3, 5, 2, 1);
  EXPECT_TRUE(contains(error_message([] { Rule(Window3D::sliding(1, 1, 1)).and_causal(); }), "no causal form"));
  RegionPolicy p;  // default: everything none
  for (int i = 0; i < kRegions; ++i) EXPECT_TRUE(p.rule(Region::at(i)).is_none());
  p.set(Region::across(kText, kImage), Rule::causal());
  EXPECT_EQ(p.rule(Region::across(kText, kImage)).name(), "causal");
  p.set(kText, kText, Rule::full());  // within and across
  EXPECT_EQ(p.rule(Region::within(kText)).name(), "full");
  EXPECT_EQ(p.rule(Region::across(kText, kText)).name(), "full");
}

// The message of validating `p` directly, through make_plan and through MultimodalAttention: all three
// must refuse it with the same words.
std::vector<std::string> policy_errors(const RegionPolicy& p) {
  SequenceLayout layout;
  layout.add_image(3, 3).add_text(2);
  return {error_message([&] { p.validate(layout); }), error_message([&] { make_plan(layout, p); }),
          error_message([&] { MultimodalAttention<float>(make_config(1, 1, 4), layout, p); })};
}

void expect_policy_error(const RegionPolicy& p, const std::vector<std::string>& words) {
  for (const std::string& m : policy_errors(p))
    for (const std::string& w : words) EXPECT_TRUE(contains(m, w)) << "message: " << m << "\nmissing: " << w;
}

TEST(RegionPolicy, ValidationErrorsNameTheProblem) {
  // Even sliding sizes cannot be centred.
  expect_policy_error(RegionPolicy::structured(Window2D::sliding(6, 7)),
                      {"image->same image", "sliding window needs odd sizes", "NATTEN", "6 x 7"});
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
  // A 2-D window anywhere but an image's own keys.
  for (const Region region : {Region::across(kImage, kImage), Region::across(kImage, kText),
                              Region::across(kText, kImage), Region::within(kText)}) {
    RegionPolicy p = RegionPolicy::dense();
    p.set(region, Window2D::sliding(3, 3));
    expect_policy_error(p, {region.name(), "a 2-D window applies to an image's own keys"});
  }
  // Causal on top does not change what is refused.
  RegionPolicy p;
  p.set(Region::within(kImage), Rule::windowed(Window2D::sliding(2, 3)).and_causal());
  expect_policy_error(p, {"odd sizes", "2 x 3"});
  // Other rules' parameters.
  expect_policy_error(RegionPolicy::sliding_causal(0), {"band needs left, right >= 0", "(-1, 0)"});
  expect_policy_error(RegionPolicy::llama4_chunked(0), {"chunked-local rule needs chunk > 0"});
  RegionPolicy o = RegionPolicy::dense();
  o.set_segments(0, 5, Rule::full());
  expect_policy_error(o, {"override names segments 0 -> 5", "layout has 2"});
  EXPECT_TRUE(contains(error_message([] { RegionPolicy().with_sinks(-1); }), "sink tokens must be non-negative"));
}

TEST(RegionPolicy, AcceptedWindows) {
  // Partitioned windows may be even; sliding windows of size 1 are just the query.
  SequenceLayout layout;
  layout.add_image(4, 5).add_text(3);
  EXPECT_NO_THROW(RegionPolicy::qwen25vl_window(8).validate(layout));
  EXPECT_NO_THROW(RegionPolicy::structured(Window2D::partitioned(2, 6)).validate(layout));
  EXPECT_NO_THROW(RegionPolicy::structured(Window2D::sliding(1, 1)).validate(layout));
  EXPECT_NO_THROW(RegionPolicy::structured(Window2D::sliding(3, 5, 4, 7)).validate(layout));
}

TEST(RegionPolicy, WindowLargerThanTheGridIsNotAnErrorAndCoversTheImage) {
  SequenceLayout layout;
  layout.add_text(2).add_image(3, 4).add_image(1, 2).add_text(3);
  for (const RegionPolicy& policy : {RegionPolicy::structured(Window2D::sliding(9, 15)),
                                     RegionPolicy::structured(Window2D::sliding(11, 5)),
                                     RegionPolicy::qwen25vl_window(16)}) {
    ASSERT_NO_THROW(policy.validate(layout));
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
