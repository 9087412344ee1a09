#pragma once
// What a plan looks like to a person choosing a strategy: a plain-text report of the token
// structure (segments, regions, per region-pair rule, allowed and computed pairs, FLOPs, tiles,
// workspace) and an SVG block map. Pair counts come from plan_stats(), the rest from the plan and
// the layout as they are; nothing here plans, and the map's allowed pairs are the plan's rules'
// runs of sampled queries (pair_mask.hpp).

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/plan.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/policy.hpp"

namespace mmattn {

namespace detail {

// printf into a std::string; the report's numbers are short, 64 bytes is plenty, and longer output
// is still written in full.
template <class... Args>
std::string format(const char* fmt, Args... args) {
  char buf[64];
  const int n = std::snprintf(buf, sizeof buf, fmt, args...);
  if (n < 0) return {};
  if (static_cast<size_t>(n) < sizeof buf) return std::string(buf, static_cast<size_t>(n));
  std::string out(static_cast<size_t>(n) + 1, '\0');
  std::snprintf(&out[0], out.size(), fmt, args...);
  out.resize(static_cast<size_t>(n));
  return out;
}

inline std::string percent(double share) { return format("%.1f%%", 100.0 * share); }
inline std::string percent_of(index_t part, index_t whole) { return whole > 0 ? percent(double(part) / double(whole)) : "-"; }

inline std::string grid_words(const Segment& seg, const std::string& prefix);

// A region's rule; "+ overrides" when per-segment overrides change it for some pair, "+ sinks N"
// with attention sinks.
inline std::string rule_words(const RegionPolicy& policy, const SequenceLayout& layout, Region region) {
  std::string s = policy.rule(region).name();
  for (index_t qs = 0; qs < layout.num_segments(); ++qs)
    for (index_t ks = 0; ks < layout.num_segments(); ++ks)
      if (region_of(layout, qs, ks) == region && &policy.rule_for(layout, qs, ks) != &policy.rule(region))
        return s + " + overrides";
  return policy.sinks() > 0 ? s + " + sinks " + std::to_string(policy.sinks()) : s;
}

inline std::string segment_label(const SequenceLayout& layout, index_t s) {
  const Segment& seg = layout.segment(s);
  if (seg.is_text()) return "text " + std::to_string(seg.length);
  index_t number = 0;  // images and videos are numbered in order, each kind on its own
  for (index_t i = 0; i < s; ++i) number += layout.segment(i).kind == seg.kind ? 1 : 0;
  return grid_words(seg, (seg.is_image() ? "img" : "video") + std::to_string(number) + " ");
}

inline std::string grid_words(const Segment& seg, const std::string& prefix = "") {
  if (seg.is_text()) return "-";
  return prefix + (seg.is_video() ? std::to_string(seg.frames) + "x" : "") + std::to_string(seg.rows) + "x" +
         std::to_string(seg.cols);
}

// Fixed-width columns: every cell padded to its column's widest; text left, numbers right.
class TextTable {
 public:
  explicit TextTable(std::vector<bool> right_aligned) : right_(std::move(right_aligned)) {}
  void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }

  std::string str(const std::string& indent = "  ") const {
    std::vector<size_t> width(right_.size(), 0);
    for (const auto& r : rows_)
      for (size_t c = 0; c < r.size() && c < width.size(); ++c) width[c] = std::max(width[c], r[c].size());
    std::string out;
    for (size_t i = 0; i < rows_.size(); ++i) {
      std::string line = indent;
      for (size_t c = 0; c < rows_[i].size() && c < width.size(); ++c) {
        const std::string& cell = rows_[i][c];
        const std::string pad(width[c] - cell.size(), ' ');
        line += c ? "  " : "";
        line += right_[c] ? pad + cell : cell + pad;
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line + "\n";
      if (i == 0 && header_rule_) {  // a dashed rule under the header row
        std::string rule = indent;
        for (size_t c = 0; c < width.size(); ++c) rule += (c ? "  " : "") + std::string(width[c], '-');
        out += rule + "\n";
      }
    }
    return out;
  }
  TextTable& with_header_rule() {
    header_rule_ = true;
    return *this;
  }

 private:
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
  bool header_rule_ = false;
};

// Per region, how many (query, key) pairs fall in it at all: the dense extent of the region.
// For image->same image that is each image's queries times its own tokens, not all image tokens,
// so the density reads "how much of what this rule could see does it see".
inline std::array<index_t, kRegions> region_extents(const Plan& plan, const SequenceLayout& layout) {
  std::array<index_t, kRegions> extent{};
  for (index_t qs = 0; qs < layout.num_segments(); ++qs) {
    const Segment& q = layout.segment(qs);
    const index_t queries = std::min(q.end(), plan.query_end) - std::max(q.start, plan.query_begin);
    if (queries <= 0) continue;
    for (index_t ks = 0; ks < layout.num_segments(); ++ks)
      extent[static_cast<size_t>(region_of(layout, qs, ks).index())] += queries * layout.segment(ks).length;
  }
  return extent;
}

// SVG coordinates: one decimal, "12" rather than "12.0", so a map of 200k blocks stays ~10 MB.
inline std::string svg_num(double v) {
  std::string s = format("%.1f", v);
  if (s.size() > 2 && s.compare(s.size() - 2, 2, ".0") == 0) s.resize(s.size() - 2);
  return s == "-0" ? "0" : s;
}

}  // namespace detail

// The token-structure analysis to read before choosing a strategy. `threads` only scales the
// workspace line (one scratch set per thread).
inline std::string plan_report(const Plan& plan, const SequenceLayout& layout, const RegionPolicy& policy,
                               const AttentionConfig& config, int threads = 1) {
  using detail::format;
  using detail::percent_of;
  const PlanStats st = plan_stats(plan, layout, policy);
  const std::array<index_t, kRegions> extent = detail::region_extents(plan, layout);
  const index_t n = layout.size();
  std::string out = "mmattn plan report\n";

  out += "\nlayout: " + std::to_string(layout.num_segments()) + " segments, " + std::to_string(n) +
         " tokens; queries [" + std::to_string(plan.query_begin) + ", " + std::to_string(plan.query_end) +
         "), keys [0, " + std::to_string(plan.key_tokens) + ")\n";
  detail::TextTable segs({true, false, false, false, true, false});
  segs.with_header_rule();
  segs.row({"#", "segment", "kind", "positions", "tokens", "grid"});
  for (index_t s = 0; s < layout.num_segments(); ++s) {
    const Segment& seg = layout.segment(s);
    segs.row({std::to_string(s), detail::segment_label(layout, s), segment_kind_name(seg.kind),
              "[" + std::to_string(seg.start) + ", " + std::to_string(seg.end()) + ")", std::to_string(seg.length),
              detail::grid_words(seg)});
  }
  out += segs.str();

  out += "\nregions:\n";
  detail::TextTable regions({false, true, true, true});
  regions.with_header_rule();
  regions.row({"region", "tokens", "of sequence", "queries planned"});
  for (const SegmentKind kind : {SegmentKind::image, SegmentKind::video, SegmentKind::text}) {
    const auto k = static_cast<int>(kind);
    const index_t tokens = layout.tokens_of(kind);
    if (tokens == 0 && kind == SegmentKind::video) continue;  // most layouts have none
    regions.row({std::string(segment_kind_name(kind)) + " tokens", std::to_string(tokens), percent_of(tokens, n),
                 std::to_string(st.query_tokens_of[static_cast<size_t>(k)])});
  }
  out += regions.str();

  out += "\nregion pairs, with the rule of each (" + std::to_string(config.num_heads) + " heads x head_dim " +
         std::to_string(config.head_dim) + "; of dense = allowed / (queries x keys), density = allowed / the pair's "
         "own queries x keys):\n";
  detail::TextTable pairs({false, false, true, true, true, true, true, true, true});
  pairs.with_header_rule();
  pairs.row({"pair", "rule", "allowed", "of dense", "density", "computed", "efficiency", "full/partial", "GFLOP"});
  for (int i = 0; i < kRegions; ++i) {
    if (extent[static_cast<size_t>(i)] == 0) continue;  // no pair of the layout falls in it
    const Region p = Region::at(i);
    const RegionStats& rs = st.region(p);
    pairs.row({p.name(), detail::rule_words(policy, layout, p), std::to_string(rs.allowed_pairs),
               percent_of(rs.allowed_pairs, st.dense_pairs()), percent_of(rs.allowed_pairs, extent[static_cast<size_t>(i)]),
               std::to_string(rs.computed_pairs), rs.computed_pairs ? detail::percent(rs.efficiency()) : "-",
               std::to_string(rs.full_blocks) + "/" + std::to_string(rs.partial_blocks),
               format("%.3f", 1e-9 * PlanStats::flops(rs.computed_pairs, config))});
  }
  out += pairs.str();

  const double dense_flops = PlanStats::flops(st.dense_pairs(), config);
  const double planned_flops = PlanStats::flops(st.computed_pairs(), config);
  out += "\ntotals:\n";
  detail::TextTable totals({false, true, false});
  totals.row({"allowed pairs", std::to_string(st.allowed_pairs()), "(" + percent_of(st.allowed_pairs(), st.dense_pairs()) + " of dense)"});
  totals.row({"computed pairs", std::to_string(st.computed_pairs()),
              "(" + percent_of(st.full_pairs(), st.computed_pairs()) + " in full blocks, no mask work)"});
  totals.row({"efficiency", detail::percent(st.efficiency()), "(allowed / computed)"});
  totals.row({"dense GFLOP", format("%.3f", 1e-9 * dense_flops),
              "(" + std::to_string(st.query_tokens) + " x " + std::to_string(st.key_tokens) + " pairs)"});
  totals.row({"planned GFLOP", format("%.3f", 1e-9 * planned_flops), "(computed pairs)"});
  totals.row({"ideal speedup", planned_flops > 0 ? format("%.2fx", dense_flops / planned_flops) : "-",
              "(dense / planned FLOPs)"});
  out += totals.str();

  index_t full_blocks = 0;
  for (const KeyBlock& b : plan.blocks) full_blocks += b.full ? 1 : 0;
  const index_t per_thread = workspace_bytes_per_thread(plan, config.head_dim);
  const index_t all_threads = per_thread * std::max(threads, 1);
  out += "\ntiles:\n";
  detail::TextTable tiles({false, true, false});
  tiles.row({"tile sizes", std::to_string(plan.tiles.query) + " x " + std::to_string(plan.tiles.key),
             "(query rows x keys per piece)"});
  tiles.row({"query tiles", std::to_string(plan.query_tiles.size()), ""});
  index_t pieces = 0;  // what the kernels run: a long run of keys is a piece per tiles.key keys
  for (const QueryTile& t : plan.query_tiles) pieces += plan.pieces(t);
  tiles.row({"blocks", std::to_string(plan.blocks.size()),
             "(" + std::to_string(full_blocks) + " full, " + std::to_string(plan.blocks.size() - size_t(full_blocks)) +
                 " partial; run as " + std::to_string(pieces) + " pieces of at most " +
                 std::to_string(plan.tiles.key) + " keys)"});
  tiles.row({"workspace", std::to_string(all_threads) + " bytes",
             "(" + std::to_string(per_thread) + " per thread x " + std::to_string(std::max(threads, 1)) + " threads, " +
                 format("%.2f", double(all_threads) / (1024.0 * 1024.0)) + " MiB)"});
  out += tiles.str();
  return out;
}

// The block map as a standalone SVG: keys along x, queries along y. Each planned block is drawn as
// the envelope [first, last] of its query tile x [first, last] of its key block (a 2-D patch
// tile's positions are not contiguous, so envelopes can overlap and cover pairs no block
// computes); full blocks first, partial ones over them. Over the blocks, the mask itself: the
// allowed keys of one query per pixel row (every query when they fit), from the plan's rules, so
// a window over an image shows as its band and the causal triangle as a triangle. Empty space is
// the grey background. The legend shows the colours as they appear: allowed pairs are translucent,
// so they read differently over full and over partial blocks.
inline std::string plan_svg(const Plan& plan, const SequenceLayout& layout) {
  using detail::svg_num;
  constexpr double kPlot = 800.0;  // the longer side of the plot area, px
  constexpr double kLeft = 110.0, kTop = 84.0, kBottom = 66.0, kRight = 60.0;
  constexpr const char* kFull = "#2e7d32";
  constexpr const char* kPartial = "#f9a825";
  const std::string allowed_fill = "fill=\"#1a237e\" fill-opacity=\"0.6\"";
  const index_t nq = std::max<index_t>(plan.num_queries(), 1), nk = std::max<index_t>(plan.key_tokens, 1);
  // Keys always span the full width; a short query range (chunked prefill, decode) keeps a readable height.
  const double width = kPlot, height = std::clamp(kPlot * double(nq) / double(nk), 120.0, kPlot);
  const double sx = width / double(nk), sy = height / double(nq);
  const double total_w = kLeft + width + kRight, total_h = kTop + height + kBottom;

  index_t full = 0, computed = 0;
  for (const KeyBlock& b : plan.blocks) full += b.full ? 1 : 0;
  for (const QueryTile& t : plan.query_tiles) computed += t.computed_pairs;
  const index_t dense = plan.num_queries() * plan.key_tokens;
  // One sampled query per pixel row when the queries outnumber the rows.
  const index_t samples = std::min<index_t>(nq, std::max<index_t>(1, static_cast<index_t>(height)));

  std::string out;
  out.reserve(plan.blocks.size() * 48 + 4096);
  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + svg_num(total_w) + "\" height=\"" + svg_num(total_h) +
         "\" viewBox=\"0 0 " + svg_num(total_w) + " " + svg_num(total_h) +
         "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  out += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  out += "<text x=\"" + svg_num(kLeft) + "\" y=\"18\" font-size=\"13\">mmattn block map: " +
         std::to_string(plan.num_queries()) + " queries x " + std::to_string(plan.key_tokens) + " keys, " +
         std::to_string(plan.query_tiles.size()) + " query tiles, " + std::to_string(plan.blocks.size()) + " blocks (" +
         std::to_string(full) + " full, " + std::to_string(plan.blocks.size() - size_t(full)) + " partial), computed " +
         detail::percent_of(computed, dense) + " of dense</text>\n";
  out += "<text x=\"" + svg_num(kLeft) + "\" y=\"36\" fill=\"#555555\">" +
         (!plan.policy        ? std::string("no rules attached: blocks only")
          : samples < nq      ? "allowed pairs of one query per pixel row (" + std::to_string(samples) + " of " +
                               std::to_string(nq) + " queries)"
                              : std::string("allowed pairs of every query")) +
         "; a block is drawn from its first to its last token, gaps of 2-D tiles included</text>\n";
  out += "<g transform=\"translate(" + svg_num(kLeft) + "," + svg_num(kTop) + ")\">\n";
  out += "<rect width=\"" + svg_num(width) + "\" height=\"" + svg_num(height) + "\" fill=\"#eeeeee\"/>\n";
  auto block_rect = [&](const TokenRect& q, const TokenRect& k) {
    const double x0 = double(k.first()) * sx, x1 = double(k.last() + 1) * sx;
    const double y0 = double(q.first() - plan.query_begin) * sy, y1 = double(q.last() + 1 - plan.query_begin) * sy;
    // At least 0.1 px, so a block narrower than the rounding step still shows.
    out += "<rect x=\"" + svg_num(x0) + "\" y=\"" + svg_num(y0) + "\" width=\"" + svg_num(std::max(x1 - x0, 0.1)) +
           "\" height=\"" + svg_num(std::max(y1 - y0, 0.1)) + "\"/>\n";
  };
  for (int pass = 0; pass < 2; ++pass) {  // full first, then partial over it
    const bool want_full = pass == 0;
    out += std::string("<g fill=\"") + (want_full ? kFull : kPartial) + "\">\n";
    for (const QueryTile& t : plan.query_tiles)
      for (index_t b = t.block_begin; b < t.block_end; ++b) {
        const KeyBlock& block = plan.blocks[static_cast<size_t>(b)];
        if (block.full == want_full) block_rect(t.queries, block.keys);
      }
    out += "</g>\n";
  }

  // The allowed pairs of sampled queries, runs closer than a third of a pixel drawn as one.
  if (plan.policy) {
    const double row_h = height / double(samples);
    std::vector<KeyRun> runs;
    out += "<g " + allowed_fill + ">\n";
    for (index_t i = 0; i < samples && plan.num_queries() > 0; ++i) {
      const index_t q = plan.query_begin + i * plan.num_queries() / samples;
      const index_t qs = layout.segment_index(q);
      double x0 = -1, x1 = -1;
      auto flush = [&] {
        if (x1 > x0)
          out += "<rect x=\"" + svg_num(x0) + "\" y=\"" + svg_num(double(i) * row_h) + "\" width=\"" +
                 svg_num(std::max(x1 - x0, 0.1)) + "\" height=\"" + svg_num(std::max(row_h, 0.1)) + "\"/>\n";
      };
      for (index_t ks = 0; ks < layout.num_segments(); ++ks) {
        const PairMask mask = plan.policy->pair(layout, qs, ks);
        if (!mask.visits()) continue;
        const Segment& key = layout.segment(ks);
        runs.clear();
        mask.runs(q, TokenRect::span(key.start, key.length), runs);
        for (const KeyRun& r : runs) {
          const double a = double(key.start + r.begin) * sx, b = double(key.start + r.end) * sx;
          if (a - x1 > 0.33) flush(), x0 = a;
          x1 = b;
        }
      }
      flush();
    }
    out += "</g>\n";
  }

  // Segment boundaries and labels: key segments along the top, query segments down the left.
  out += "<g stroke=\"#333333\" stroke-width=\"0.5\">\n";
  for (const Segment& seg : layout.segments()) {
    if (seg.start > 0 && seg.start < plan.key_tokens)
      out += "<line x1=\"" + svg_num(double(seg.start) * sx) + "\" y1=\"0\" x2=\"" + svg_num(double(seg.start) * sx) +
             "\" y2=\"" + svg_num(height) + "\"/>\n";
    if (seg.start > plan.query_begin && seg.start < plan.query_end) {
      const std::string y = svg_num(double(seg.start - plan.query_begin) * sy);
      out += "<line x1=\"0\" y1=\"" + y + "\" x2=\"" + svg_num(width) + "\" y2=\"" + y + "\"/>\n";
    }
  }
  // Labels a line of text apart: one that would touch the previous label moves along its segment,
  // and is left out (its boundary line stays) when the segment ends first, so runs of short
  // segments do not print over each other. Key labels slant at 30 degrees, so two of them dx apart
  // are dx / 2 apart across the text; query labels keep clear of the range's end printed below them.
  out += "</g>\n<g font-size=\"9\" fill=\"#333333\">\n";
  double last_x = -1e9, last_y = -1e9;
  for (index_t s = 0; s < layout.num_segments(); ++s) {
    const Segment& seg = layout.segment(s);
    const std::string label = detail::segment_label(layout, s);
    const double x0 = double(seg.start) * sx, x = std::max(x0, last_x + 20);
    if (seg.start < plan.key_tokens && (x == x0 || x + 4 <= double(seg.end()) * sx)) {
      out += "<text x=\"" + svg_num(x + 2) + "\" y=\"-4\" transform=\"rotate(-30 " + svg_num(x + 2) + " -4)\">" +
             label + "</text>\n";
      last_x = x;
    }
    const index_t a = std::max(seg.start, plan.query_begin), b = std::min(seg.end(), plan.query_end);
    const double y0 = double(a - plan.query_begin) * sy, y = std::max(y0, last_y + 11);
    if (a < b && (y == y0 || y + 9 <= double(b - plan.query_begin) * sy) && y + 20 <= height) {
      out += "<text x=\"-4\" y=\"" + svg_num(y + 9) + "\" text-anchor=\"end\">" + label + "</text>\n";
      last_y = y;
    }
  }
  out += "</g>\n";
  // Axes: the ranges in positions.
  out += "<text x=\"0\" y=\"" + svg_num(height + 16) + "\">0</text><text x=\"" + svg_num(width) + "\" y=\"" +
         svg_num(height + 16) + "\" text-anchor=\"end\">" + std::to_string(plan.key_tokens) + "</text>\n";
  out += "<text x=\"" + svg_num(width / 2) + "\" y=\"" + svg_num(height + 30) +
         "\" text-anchor=\"middle\">keys (positions 0.." + std::to_string(plan.key_tokens) + ")</text>\n";
  out += "<text x=\"-4\" y=\"" + svg_num(height) + "\" text-anchor=\"end\">" + std::to_string(plan.query_end) +
         "</text>\n";
  out += "<text x=\"-" + svg_num(kLeft - 14) + "\" y=\"" + svg_num(height / 2) + "\" transform=\"rotate(-90 -" +
         svg_num(kLeft - 14) + " " + svg_num(height / 2) + ")\" text-anchor=\"middle\">queries (positions " +
         std::to_string(plan.query_begin) + ".." + std::to_string(plan.query_end) + ")</text>\n";
  // Legend, under the key axis: each swatch drawn the way its colour appears in the map.
  struct Swatch {
    const char* fill;
    bool allowed;  // the translucent allowed-pair overlay on top
    const char* text;
  };
  const Swatch legend[] = {{kFull, false, "full block"},
                           {kPartial, false, "partial block (masked pairs)"},
                           {kFull, true, "allowed pair, full block"},
                           {kPartial, true, "allowed pair, partial block"},
                           {"#eeeeee", false, "skipped"}};
  double x = 0;
  for (const Swatch& sw : legend) {
    const std::string at = "x=\"" + svg_num(x) + "\" y=\"" + svg_num(height + 44) + "\" width=\"12\" height=\"12\"";
    out += "<rect " + at + " fill=\"" + sw.fill + "\" stroke=\"#555555\" stroke-width=\"0.5\"/>";
    if (sw.allowed) out += "<rect " + at + " " + allowed_fill + "/>";
    out += "<text x=\"" + svg_num(x + 16) + "\" y=\"" + svg_num(height + 54) + "\">" + sw.text + "</text>\n";
    x += 26.0 + 5.8 * double(std::char_traits<char>::length(sw.text));  // ~5.8 px per 11 px sans character
  }
  out += "</g>\n</svg>\n";
  return out;
}

}  // namespace mmattn
