// The plan report and SVG block map: the region-pair table states the allowed pairs the mask
// really allows (checked against mmattn::allowed over every (q, k) pair), the totals and workspace
// lines match plan_stats, and the SVG has one rectangle per planned block plus its fixed decoration.

#include "mmattn/plan_report.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/mmattn.hpp"
#include "mmattn/planner.hpp"

namespace {

using mmattn::index_t;
using mmattn::Region;
using mmattn::SegmentKind;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(' ');
  if (a == std::string::npos) return {};
  return s.substr(a, s.find_last_not_of(' ') - a + 1);
}

// The rows of the fixed-width table whose header row starts with `first_header`, split into cells
// by the column extents of the dashed rule under the header. Fixed widths make this exact.
std::vector<std::vector<std::string>> table_rows(const std::string& report, const std::string& first_header) {
  const std::vector<std::string> lines = lines_of(report);
  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    if (trim(lines[i]).rfind(first_header, 0) != 0 || lines[i + 1].find("--") == std::string::npos) continue;
    std::vector<std::pair<size_t, size_t>> cols;  // [begin, end) of each dash run
    const std::string& rule = lines[i + 1];
    for (size_t c = 0; c < rule.size();) {
      if (rule[c] != '-') {
        ++c;
        continue;
      }
      size_t e = c;
      while (e < rule.size() && rule[e] == '-') ++e;
      cols.emplace_back(c, e);
      c = e;
    }
    for (size_t r = i + 2; r < lines.size() && !trim(lines[r]).empty() && lines[r].rfind("  ", 0) == 0; ++r) {
      std::vector<std::string> cells;
      for (const auto& [b, e] : cols) cells.push_back(b < lines[r].size() ? trim(lines[r].substr(b, e - b)) : "");
      rows.push_back(cells);
    }
    return rows;
  }
  ADD_FAILURE() << "no table headed '" << first_header << "' in\n" << report;
  return rows;
}

// Brute force over every (q, k) pair of the plan's query range: allowed pairs per region pair, and
// the dense extent of each pair (every (q, k) that falls in it).
struct Brute {
  std::array<index_t, mmattn::kRegions> allowed{}, extent{};
};
Brute brute_force(const mmattn::Plan& plan, const mmattn::SequenceLayout& layout, const mmattn::RegionPolicy& policy) {
  Brute b;
  for (index_t q = plan.query_begin; q < plan.query_end; ++q)
    for (index_t k = 0; k < layout.size(); ++k) {
      const auto p = static_cast<size_t>(
          mmattn::region_of(layout, layout.segment_index(q), layout.segment_index(k)).index());
      ++b.extent[p];
      b.allowed[p] += mmattn::allowed(layout, policy, q, k) ? 1 : 0;
    }
  return b;
}

std::string pct(index_t part, index_t whole) {
  if (whole == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * double(part) / double(whole));
  return buf;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

const mmattn::AttentionConfig kConfig{4, 2, 16, {}};

// Rects of the allowed-pairs group of a block map.
size_t allowed_rects(const std::string& svg) {
  const size_t begin = svg.find("<g fill=\"#1a237e\"");
  if (begin == std::string::npos) return 0;
  return count(svg.substr(begin, svg.find("</g>", begin) - begin), "<rect");
}

// Checks every region-pair row of the report against the brute-force mask and plan_stats.
void expect_pairs_table(const mmattn::Plan& plan, const mmattn::SequenceLayout& layout,
                        const mmattn::RegionPolicy& policy) {
  const std::string report = mmattn::plan_report(plan, layout, policy, kConfig);
  const mmattn::PlanStats st = mmattn::plan_stats(plan, layout, policy);
  const Brute brute = brute_force(plan, layout, policy);
  const auto rows = table_rows(report, "pair");
  // One row per region that some (query, key) pair of the plan falls in, in Region index order.
  size_t r = 0;
  for (int i = 0; i < mmattn::kRegions; ++i) {
    if (brute.extent[size_t(i)] == 0) continue;
    const Region p = Region::at(i);
    ASSERT_LT(r, rows.size()) << report;
    const auto& row = rows[r++];
    SCOPED_TRACE(p.name());
    ASSERT_EQ(row.size(), 9u);
    EXPECT_EQ(row[0], p.name());
    EXPECT_EQ(row[2], std::to_string(brute.allowed[size_t(i)]));
    EXPECT_EQ(row[3], pct(brute.allowed[size_t(i)], plan.num_queries() * layout.size()));
    EXPECT_EQ(row[4], pct(brute.allowed[size_t(i)], brute.extent[size_t(i)]));
    EXPECT_EQ(row[5], std::to_string(st.region(p).computed_pairs));
    EXPECT_EQ(row[7], std::to_string(st.region(p).full_blocks) + "/" + std::to_string(st.region(p).partial_blocks));
  }
  EXPECT_EQ(r, rows.size()) << report;
}

// One 4x4 image then 8 text tokens, structured with a 3x3 sliding window.
struct Small {
  mmattn::SequenceLayout layout = mmattn::SequenceLayout::images_then_text(1, 4, 4, 8);
  mmattn::RegionPolicy policy = mmattn::RegionPolicy::structured(mmattn::Window2D::sliding(3, 3));
  mmattn::Plan plan = mmattn::make_plan(layout, policy, {{8, 8}});
};

TEST(PlanReport, SmallLayoutRowsByHand) {
  const Small s;
  const std::string report = mmattn::plan_report(s.plan, s.layout, s.policy, kConfig);
  const auto rows = table_rows(report, "pair");
  ASSERT_EQ(rows.size(), 4u) << report;
  // By hand: a border-shifted 3x3 window always holds 9 keys, 16 image queries -> 144 pairs; the
  // image has 16 x 16 = 256 pairs with itself. Text sees all 16 earlier image keys (8 x 16 = 128)
  // and earlier text causally (8 * 9 / 2 = 36, of 64). Images see no text; there is no other image
  // and no other text segment, so those regions have no row.
  const std::vector<std::array<std::string, 5>> expected = {
      {"text->same text", "causal", "36", "6.2%", "56.2%"},
      {"image->same image", "window 3x3 sliding", "144", "25.0%", "56.2%"},
      {"text->image", "causal", "128", "22.2%", "100.0%"},
      {"image->text", "none", "0", "0.0%", "0.0%"},
  };
  for (size_t i = 0; i < expected.size(); ++i)
    for (size_t c = 0; c < 5; ++c) EXPECT_EQ(rows[i][c], expected[i][c]) << "row " << i << " col " << c << "\n" << report;
  EXPECT_NE(report.find("308"), std::string::npos);  // total allowed: 144 + 128 + 36
  // The same numbers from the mask itself.
  const Brute brute = brute_force(s.plan, s.layout, s.policy);
  EXPECT_EQ(brute.allowed[size_t(Region::within(SegmentKind::image).index())], 144);
  EXPECT_EQ(brute.allowed[size_t(Region::across(SegmentKind::text, SegmentKind::image).index())], 128);
  EXPECT_EQ(brute.allowed[size_t(Region::within(SegmentKind::text).index())], 36);
  expect_pairs_table(s.plan, s.layout, s.policy);
}

TEST(PlanReport, SectionsTotalsAndWorkspace) {
  const Small s;
  const std::string report = mmattn::plan_report(s.plan, s.layout, s.policy, kConfig, /*threads=*/3);
  const mmattn::PlanStats st = mmattn::plan_stats(s.plan, s.layout, s.policy);
  for (const char* section : {"layout:", "regions:", "region pairs", "totals:", "tiles:"})
    EXPECT_NE(report.find(section), std::string::npos) << section;

  const auto segs = table_rows(report, "#");
  ASSERT_EQ(segs.size(), 2u) << report;
  EXPECT_EQ(segs[0][1], "img0 4x4");
  EXPECT_EQ(segs[0][3], "[0, 16)");
  EXPECT_EQ(segs[0][5], "4x4");
  EXPECT_EQ(segs[1][1], "text 8");
  EXPECT_EQ(segs[1][3], "[16, 24)");

  const auto regions = table_rows(report, "region");
  ASSERT_EQ(regions.size(), 2u) << report;
  EXPECT_EQ(regions[0][1], "16");
  EXPECT_EQ(regions[0][2], "66.7%");
  EXPECT_EQ(regions[1][1], "8");
  EXPECT_EQ(regions[1][2], "33.3%");

  char speedup[32];
  std::snprintf(speedup, sizeof speedup, "%.2fx", 576.0 / double(st.computed_pairs()));
  EXPECT_NE(report.find(speedup), std::string::npos) << report;
  EXPECT_NE(report.find(std::to_string(st.computed_pairs())), std::string::npos);
  const index_t per_thread = mmattn::workspace_bytes_per_thread(s.plan, kConfig.head_dim);
  EXPECT_NE(report.find(std::to_string(3 * per_thread) + " bytes"), std::string::npos) << report;
  EXPECT_NE(report.find("query tiles"), std::string::npos);
  // Plain ASCII throughout.
  for (char c : report) EXPECT_TRUE(c == '\n' || (c >= 32 && c < 127)) << int(c);
}

TEST(PlanReport, PairRowsMatchTheMaskOnMixedLayouts) {
  mmattn::SequenceLayout interleaved;
  interleaved.add_text(5).add_image(3, 5).add_text(7).add_image(6, 4).add_text(3);
  const std::vector<mmattn::RegionPolicy> policies = {
      mmattn::RegionPolicy::structured(mmattn::Window2D::sliding(3, 3)),
      mmattn::RegionPolicy::decoder_causal(),
      mmattn::RegionPolicy::bidirectional_images(),
      mmattn::RegionPolicy::qwen25vl_window(2),
      mmattn::RegionPolicy::structured(mmattn::Window2D::sliding(3, 3, 2, 1)),
  };
  for (const auto& policy : policies)
    for (const auto tiling : {mmattn::ImageTiling::row_strips, mmattn::ImageTiling::patches}) {
      mmattn::PlanOptions options;
      options.tiles = {8, 16};
      options.image_tiling = tiling;
      expect_pairs_table(mmattn::make_plan(interleaved, policy, options), interleaved, policy);
      options.query_begin = 9;  // a chunk that starts inside the first image
      options.query_end = 40;
      options.all_keys_present = true;
      expect_pairs_table(mmattn::make_plan(interleaved, policy, options), interleaved, policy);
    }
}

TEST(PlanReport, RuleWords) {
  const mmattn::SequenceLayout layout = mmattn::SequenceLayout::images_then_text(2, 4, 4, 4);
  mmattn::RegionPolicy policy = mmattn::RegionPolicy::qwen25vl_window(2);
  policy.set(Region::within(SegmentKind::image), mmattn::Rule::windowed(mmattn::Window2D::sliding(3, 5, 1, 2)).and_causal());
  const std::string report =
      mmattn::plan_report(mmattn::make_plan(layout, policy, {{8, 8}}), layout, policy, kConfig);
  const auto rows = table_rows(report, "pair");
  ASSERT_EQ(rows.size(), 5u);  // text->same text, image->same image, text->image, image->text, image->other image
  EXPECT_EQ(rows[1][1], "window 3x5 sliding dil 1x2, causal");
  const auto q = mmattn::RegionPolicy::qwen25vl_window(2);
  const std::string r2 = mmattn::plan_report(mmattn::make_plan(layout, q, {{8, 8}}), layout, q, kConfig);
  EXPECT_EQ(table_rows(r2, "pair")[1][1], "window 2x2 partitioned");
  EXPECT_EQ(table_rows(r2, "pair")[0][1], "full");
  // Sinks and per-segment overrides are named.
  mmattn::RegionPolicy o = mmattn::RegionPolicy::decoder_causal().with_sinks(2);
  o.set_segments(1, 1, mmattn::Rule::full());
  const auto r3 = table_rows(mmattn::plan_report(mmattn::make_plan(layout, o, {{8, 8}}), layout, o, kConfig), "pair");
  EXPECT_EQ(r3[1][1], "causal + overrides");
  EXPECT_EQ(r3[0][1], "causal + sinks 2");
}

TEST(PlanSvg, OneRectPerBlockAndLabels) {
  const Small s;
  const std::string svg = mmattn::plan_svg(s.plan, s.layout);
  ASSERT_FALSE(s.plan.blocks.empty());
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  ASSERT_GE(svg.size(), 7u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  // Blocks, plus the page and plot backgrounds, the legend's five swatches and two overlays on
  // them, and the allowed pairs.
  EXPECT_EQ(count(svg, "<rect"), s.plan.blocks.size() + 2 + 7 + allowed_rects(svg));
  EXPECT_EQ(count(svg, "<g"), count(svg, "</g>"));
  EXPECT_EQ(count(svg, "<svg"), 1u);
  for (const char* word : {">full block<", ">partial block (masked pairs)<", ">allowed pair, full block<",
                           ">allowed pair, partial block<", ">skipped<", ">img0 4x4<", ">text 8<", "#2e7d32", "#f9a825",
                           "#eeeeee", "#1a237e", "allowed pairs of every query"})
    EXPECT_NE(svg.find(word), std::string::npos) << word;

  // Full blocks are drawn first, partial ones over them; each group holds its own blocks.
  index_t full = 0;
  for (const auto& b : s.plan.blocks) full += b.full ? 1 : 0;
  const size_t full_group = svg.find("<g fill=\"#2e7d32\">"), partial_group = svg.find("<g fill=\"#f9a825\">");
  ASSERT_NE(full_group, std::string::npos);
  ASSERT_NE(partial_group, std::string::npos);
  EXPECT_LT(full_group, partial_group);
  EXPECT_EQ(count(svg.substr(full_group, partial_group - full_group), "<rect"), size_t(full));
  const size_t partial_end = svg.find("</g>", partial_group);
  EXPECT_EQ(count(svg.substr(partial_group, partial_end - partial_group), "<rect"), s.plan.blocks.size() - size_t(full));
}

TEST(PlanSvg, CoordinatesStayShortOnLargePlans) {
  // 8 images of 32x32 + 512 text with small tiles: many blocks; every number has at most one decimal.
  const auto layout = mmattn::SequenceLayout::images_then_text(8, 32, 32, 512);
  const auto policy = mmattn::RegionPolicy::structured();
  const mmattn::Plan plan = mmattn::make_plan(layout, policy, {{16, 16}});
  const std::string svg = mmattn::plan_svg(plan, layout);
  EXPECT_EQ(count(svg, "<rect"), plan.blocks.size() + 9 + allowed_rects(svg));
  EXPECT_LT(svg.size(), (plan.blocks.size() + allowed_rects(svg)) * 60 + 8192);
  // Every numeric attribute value has at most one decimal.
  const std::regex attribute("=\"(-?[0-9]+(\\.[0-9]+)?)\"");
  size_t numbers = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), attribute); it != std::sregex_iterator(); ++it) {
    ++numbers;
    const std::string value = (*it)[1];
    const size_t dot = value.find('.');
    if (dot != std::string::npos && value.size() - dot - 1 > 1) {
      ADD_FAILURE() << "long coordinate " << value;
      break;
    }
  }
  EXPECT_GT(numbers, 4 * plan.blocks.size());
  for (int i = 0; i < 8; ++i) EXPECT_NE(svg.find(">img" + std::to_string(i) + " 32x32<"), std::string::npos);
  EXPECT_NE(svg.find(">text 512<"), std::string::npos);
  // 8704 queries on an 800 px plot: the map says it samples them.
  EXPECT_NE(svg.find("one query per pixel row (800 of 8704 queries)"), std::string::npos);
}

TEST(PlanSvg, LabelsOfShortSegmentsDoNotOverlap) {
  // 40 two-token images after a long text: 2 px apart on the map, so most labels are left out; the
  // ones drawn are a line of text apart (slanted key labels: 20 px along x, 10 px across the text).
  mmattn::SequenceLayout layout;
  layout.add_text(720);
  for (int i = 0; i < 40; ++i) layout.add_image(1, 2);
  const auto policy = mmattn::RegionPolicy::decoder_causal();
  const mmattn::Plan plan = mmattn::make_plan(layout, policy, {{16, 16}});
  const std::string svg = mmattn::plan_svg(plan, layout);
  const std::regex key_label("<text x=\"(-?[0-9.]+)\" y=\"-4\""), query_label("<text x=\"-4\" y=\"(-?[0-9.]+)\"");
  for (const auto& [re, spacing] : {std::pair{&key_label, 20.0}, std::pair{&query_label, 11.0}}) {
    std::vector<double> at;
    for (auto it = std::sregex_iterator(svg.begin(), svg.end(), *re); it != std::sregex_iterator(); ++it)
      at.push_back(std::stod((*it)[1]));
    ASSERT_GE(at.size(), 2u);
    EXPECT_LT(at.size(), 10u);
    for (size_t i = 1; i < at.size(); ++i) EXPECT_GE(at[i] - at[i - 1], spacing) << i;
  }
}

TEST(PlanSvg, ChunkedQueryRange) {
  const Small s;
  mmattn::PlanOptions options;
  options.tiles = {8, 8};
  options.query_begin = 20;
  options.query_end = 21;  // one decode step
  const mmattn::Plan plan = mmattn::make_plan(s.layout, s.policy, options);
  const std::string svg = mmattn::plan_svg(plan, s.layout);
  EXPECT_EQ(count(svg, "<rect"), plan.blocks.size() + 9 + allowed_rects(svg));
  EXPECT_NE(svg.find("queries (positions 20..21)"), std::string::npos);
  EXPECT_EQ(svg.find("height=\"0\""), std::string::npos);
}

TEST(MultimodalAttention, StatsReportAndSvgMatchTheFreeFunctions) {
  const Small s;
  const mmattn::MultimodalAttention<float> attn(kConfig, s.layout, s.policy, mmattn::PlanOptions{{8, 8}});
  EXPECT_EQ(attn.stats().allowed_pairs(), 308);
  EXPECT_EQ(attn.stats().computed_pairs(), mmattn::plan_stats(attn.plan(), s.layout, s.policy).computed_pairs());
  EXPECT_EQ(attn.report(2), mmattn::plan_report(attn.plan(), s.layout, s.policy, kConfig, 2));
  EXPECT_EQ(attn.svg(), mmattn::plan_svg(attn.plan(), s.layout));
}

}  // namespace
