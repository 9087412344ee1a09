// Every mask rule and every preset against its definition, written here from the models' own
// descriptions (NATTEN's neighbourhoods, Swin / Qwen2.5-VL's partitions, FlashAttention's band,
// Llama-4's chunks, Gemma-3's bidirectional images, StreamingLLM's sinks) and never from the
// library's window arithmetic (axis_window, KeySet, PairMask). A policy and its definition are
// drawn side by side from one seed; allowed(), PairMask's arithmetic, make_plan, plan_stats, the
// forward pass and chunked prefill's cut points are then checked against the definition pair by
// pair, over random layouts of text, images and videos (sizes from 1, windows larger than the
// grid, dilation, even partitions, sinks, per-segment overrides).

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

constexpr SegmentKind kText = SegmentKind::text, kImage = SegmentKind::image, kVideo = SegmentKind::video;
constexpr index_t kHuge = std::numeric_limits<index_t>::max();

// Random cases per family (25 families). Debug + sanitizer builds are ~20x slower: a sixth there,
// same families and axes.
constexpr int kScale = kSlowBuild ? 4 : 24;
constexpr int kAllowedCases = 6 * kScale;  // + 6 corner layouts per family
constexpr int kPairMaskCases = 3 * kScale;
constexpr int kPlanCases = 3 * kScale;     // 2 plans each
constexpr int kServingCases = 2 * kScale;  // 3 query ranges and 2 chunkings each

// ---- Tokens, as the definitions see them --------------------------------------------------------

// A position with its segment and its (frame, row, col) in the segment's grid (text: 1 x 1 x n).
struct Tok {
  index_t pos = 0, seg = 0;
  SegmentKind kind = kText;
  index_t frame = 0, row = 0, col = 0;
  index_t frames = 1, rows = 1, cols = 1;
};

std::vector<Tok> tokens_of(const SequenceLayout& layout) {
  std::vector<Tok> out;
  index_t pos = 0;
  for (index_t s = 0; s < layout.num_segments(); ++s) {
    const Segment& g = layout.segment(s);
    const index_t frame_cells = g.rows * g.cols;
    for (index_t f = 0; f < g.frames; ++f)
      for (index_t r = 0; r < g.rows; ++r)
        for (index_t c = 0; c < g.cols; ++c) out.push_back({pos++, s, g.kind, f, r, c, g.frames, g.rows, g.cols});
    EXPECT_EQ(g.length, g.frames * frame_cells);
  }
  return out;
}

// ---- One axis of a window, from its definition ---------------------------------------------------

enum class AxisKind { sliding, partitioned, causal };
struct Axis {
  AxisKind kind = AxisKind::sliding;
  index_t size = 1, dilation = 1;
};

// May query cell i see key cell j on an axis of `length` cells? Dilation d splits the axis into d
// interleaved groups (cells equal mod d) and the window lives inside the query's group (NATTEN):
// - sliding: the `size` consecutive group cells centred on the query, shifted back inside the
//   group at its ends (NATTEN's get_window_start); a window larger than the group is the group;
// - partitioned: the group cut into pieces of `size` from its first cell (Swin, Qwen2.5-VL);
// - causal: the query's cell and the size - 1 group cells before it (NATTEN's is_causal).
bool on_axis(const Axis& a, index_t i, index_t j, index_t length) {
  if (i % a.dilation != j % a.dilation) return false;
  index_t cells = 0;
  for (index_t x = i % a.dilation; x < length; x += a.dilation) ++cells;
  const index_t qi = i / a.dilation, kj = j / a.dilation;  // indices inside the group
  switch (a.kind) {
    case AxisKind::sliding: {
      if (a.size >= cells) return true;
      const index_t half = a.size / 2;
      index_t start = std::max<index_t>(qi - half, 0);
      if (qi + half >= cells) start = cells - a.size;
      return kj >= start && kj < start + a.size;
    }
    case AxisKind::partitioned: return qi / a.size == kj / a.size;
    case AxisKind::causal: return kj <= qi && qi - kj < a.size;
  }
  return false;
}

std::string axis_text(const Axis& a) {
  const char* k = a.kind == AxisKind::sliding ? "s" : a.kind == AxisKind::partitioned ? "p" : "c";
  return k + std::to_string(a.size) + (a.dilation > 1 ? "/" + std::to_string(a.dilation) : "");
}

// ---- One rule, from its definition, and the library object for it -------------------------------

struct RuleSpec {
  enum Kind { none, full, causal, band, chunked, window2d, window3d, custom };
  Kind kind = none;
  index_t left = 0, right = 0;                 // band
  index_t chunk = 1;                           // chunked
  Axis frame, row, col;                        // windows (frame: window3d)
  bool also_causal = false;                    // and k <= q
  bool causal_by_window = false;               // window2d: built as Window2D::and_causal(), else Rule::and_causal()
  std::function<bool(index_t, index_t)> pred;  // custom
  std::function<BlockCoverage(const TokenRect&, const TokenRect&)> classify;
  std::string label;

  bool allowed(const Tok& q, const Tok& k) const {
    if (also_causal && k.pos > q.pos) return false;
    switch (kind) {
      case none: return false;
      case full: return true;
      case causal: return k.pos <= q.pos;
      case band: return q.pos - k.pos <= left && k.pos - q.pos <= right;  // differences: no overflow
      case chunked: return k.pos / chunk == q.pos / chunk && k.pos <= q.pos;
      case window2d: return q.seg == k.seg && on_axis(row, q.row, k.row, q.rows) && on_axis(col, q.col, k.col, q.cols);
      case window3d:
        return q.seg == k.seg && on_axis(frame, q.frame, k.frame, q.frames) && on_axis(row, q.row, k.row, q.rows) &&
               on_axis(col, q.col, k.col, q.cols);
      case custom: return pred(q.pos, k.pos);
    }
    return false;
  }

  Window2D w2() const {
    Window2D w = row.kind == AxisKind::sliding ? Window2D::sliding(row.size, col.size, row.dilation, col.dilation)
                                               : Window2D::partitioned(row.size, col.size);
    w.dilation_h = row.dilation, w.dilation_w = col.dilation;
    return also_causal ? w.and_causal() : w;
  }
  Window3D w3() const {
    Window3D w = row.kind == AxisKind::sliding ? Window3D::sliding(frame.size, row.size, col.size)
                                               : Window3D::partitioned(frame.size, row.size, col.size);
    w = w.dilated(frame.dilation, row.dilation, col.dilation);
    return frame.kind == AxisKind::causal ? w.causal_in_time() : w;
  }

  Rule rule() const {
    Rule r;
    switch (kind) {
      case none: r = Rule::none(); break;
      case full: r = Rule::full(); break;
      case causal: r = Rule::causal(); break;
      case band: r = Rule::band(left, right); break;
      case chunked: r = Rule::chunked(chunk); break;
      case window2d: {
        Window2D w = w2();  // causal when also_causal
        if (!also_causal || causal_by_window) return Rule::windowed(w);
        w.causal = false;
        return Rule::windowed(w).and_causal();
      }
      case window3d: return Rule(w3());
      case custom:
        if (classify) return CustomRule{pred, classify, label};
        return Rule::predicate(pred, label);
    }
    return also_causal ? r.and_causal() : r;
  }

  std::string text() const {
    std::string s;
    switch (kind) {
      case none: s = "none"; break;
      case full: s = "full"; break;
      case causal: s = "causal"; break;
      case band:
        s = "band(" + (left == kHuge ? "inf" : std::to_string(left)) + ", " +
            (right == kHuge ? "inf" : std::to_string(right)) + ")";
        break;
      case chunked: s = "chunked " + (chunk == kHuge ? "inf" : std::to_string(chunk)); break;
      case window2d: s = "2d " + axis_text(row) + " x " + axis_text(col); break;
      case window3d: s = "3d " + axis_text(frame) + " x " + axis_text(row) + " x " + axis_text(col); break;
      case custom: s = label; break;
    }
    return also_causal ? s + " & k<=q" : s;
  }
};

RuleSpec window2d_rule(Axis row, Axis col, bool causal = false) {
  RuleSpec r;
  r.kind = RuleSpec::window2d, r.row = row, r.col = col, r.also_causal = causal, r.causal_by_window = true;
  return r;
}
RuleSpec window3d_rule(Axis frame, Axis row, Axis col) {
  RuleSpec r;
  r.kind = RuleSpec::window3d, r.frame = frame, r.row = row, r.col = col;
  return r;
}

// ---- A policy and its definition -----------------------------------------------------------------

struct Definition {
  std::function<bool(const Tok&, const Tok&)> base;  // the model's or the table's rule
  std::map<std::pair<index_t, index_t>, RuleSpec> overrides;
  index_t sinks = 0;

  bool operator()(const Tok& q, const Tok& k) const {
    if (k.pos < sinks && k.pos <= q.pos) return true;  // StreamingLLM: sinks, never a later key
    const auto it = overrides.find({q.seg, k.seg});
    return it != overrides.end() ? it->second.allowed(q, k) : base(q, k);
  }
};

enum class Family {
  rule_none,
  rule_full,
  rule_causal,
  rule_band,
  rule_chunked,
  rule_window2d_sliding,
  rule_window2d_partitioned,
  rule_window2d_causal,
  rule_window3d_sliding,
  rule_window3d_partitioned,
  rule_window3d_causal_time,
  rule_custom,
  random_table,
  decoder_causal,
  dense,
  bidirectional_images,
  gemma3_global,
  gemma3_local,
  sliding_causal,
  llama4_chunked,
  vision_block_diagonal,
  qwen25vl_window,
  video_windows,
  structured,
  structured_default,
};
constexpr int kFamilies = 25;
constexpr int kFirstPreset = static_cast<int>(Family::decoder_causal);

const char* family_name(Family f) {
  constexpr const char* names[kFamilies] = {"rule none",
                                            "rule full",
                                            "rule causal",
                                            "rule band",
                                            "rule chunked",
                                            "rule 2-D sliding",
                                            "rule 2-D partitioned",
                                            "rule 2-D causal",
                                            "rule 3-D sliding",
                                            "rule 3-D partitioned",
                                            "rule 3-D causal in time",
                                            "rule custom predicate",
                                            "random table",
                                            "decoder_causal",
                                            "dense",
                                            "bidirectional_images",
                                            "gemma3_global",
                                            "gemma3_local",
                                            "sliding_causal",
                                            "llama4_chunked",
                                            "vision_block_diagonal",
                                            "qwen25vl_window",
                                            "video_windows",
                                            "structured",
                                            "structured (defaults)"};
  return names[static_cast<int>(f)];
}

struct Model {
  Family family = Family::dense;
  std::uint32_t seed = 0;
  SequenceLayout layout;
  RegionPolicy policy;
  Definition def;
  std::string notes;  // the definition's parameters, for messages
  std::vector<Tok> toks;
  std::vector<char> truth;  // n x n, from the definition
  index_t n = 0;

  void finish() {
    toks = tokens_of(layout);
    n = layout.size();
    truth.assign(static_cast<size_t>(n * n), 0);
    for (index_t q = 0; q < n; ++q)
      for (index_t k = 0; k < n; ++k) truth[static_cast<size_t>(q * n + k)] = def(toks[size_t(q)], toks[size_t(k)]);
  }
  bool ok(index_t q, index_t k) const { return truth[static_cast<size_t>(q * n + k)] != 0; }
};

std::string layout_text(const SequenceLayout& layout) {
  std::string s;
  for (const Segment& g : layout.segments())
    s += g.is_image()   ? " I" + std::to_string(g.rows) + "x" + std::to_string(g.cols)
         : g.is_video() ? " V" + std::to_string(g.frames) + "x" + std::to_string(g.rows) + "x" + std::to_string(g.cols)
                        : " T" + std::to_string(g.length);
  return s + " (" + std::to_string(layout.size()) + " tokens)";
}

std::string describe(const Model& m) {
  std::ostringstream s;
  s << family_name(m.family) << ", seed " << m.seed << "\n  layout:" << layout_text(m.layout)
    << "\n  definition: " << m.notes;
  if (m.def.sinks > 0) s << "; sinks " << m.def.sinks;
  for (const auto& [pair, spec] : m.def.overrides)
    s << "; override " << pair.first << "->" << pair.second << ": " << spec.text();
  s << "\n  library rules:";
  for (int i = 0; i < kRegions; ++i)
    s << " [" << Region::at(i).name() << ": " << m.policy.rule(Region::at(i)).name() << "]";
  return s.str();
}

// ---- Random draws ---------------------------------------------------------------------------------

index_t draw(std::mt19937& gen, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(gen); }
bool one_in(std::mt19937& gen, index_t n) { return draw(gen, 1, n) == 1; }

SequenceLayout random_layout(std::mt19937& gen, bool need_image, bool need_video) {
  struct Seg {
    SegmentKind kind;
    index_t f, r, c;
  };
  std::vector<Seg> segs;
  auto image = [&] {
    return one_in(gen, 3) ? Seg{kImage, 1, draw(gen, 1, 2), draw(gen, 1, 3)}
                          : Seg{kImage, 1, draw(gen, 1, 6), draw(gen, 1, 6)};
  };
  auto video = [&] { return Seg{kVideo, draw(gen, 1, 3), draw(gen, 1, 4), draw(gen, 1, 4)}; };
  const index_t count = draw(gen, 1, 5);
  for (index_t i = 0; i < count; ++i) {
    const index_t pick = draw(gen, 0, 9);
    segs.push_back(pick < 4 ? Seg{kText, 1, 1, draw(gen, 1, 10)} : pick < 7 ? image() : video());
  }
  auto has = [&](SegmentKind k) {
    return std::any_of(segs.begin(), segs.end(), [&](const Seg& s) { return s.kind == k; });
  };
  if (need_image && !has(kImage)) segs.insert(segs.begin() + draw(gen, 0, index_t(segs.size())), image());
  if (need_video && !has(kVideo)) segs.insert(segs.begin() + draw(gen, 0, index_t(segs.size())), video());
  SequenceLayout layout;
  for (const Seg& s : segs) {
    if (s.kind == kText)
      layout.add_text(s.c);
    else if (s.kind == kImage)
      layout.add_image(s.r, s.c);
    else
      layout.add_video(s.f, s.r, s.c);
  }
  return layout;
}

index_t odd_size(std::mt19937& gen, index_t largest) { return 2 * draw(gen, 0, (largest - 1) / 2) + 1; }
index_t dilation(std::mt19937& gen) { return one_in(gen, 3) ? draw(gen, 2, 3) : 1; }

// variant: 0 sliding, 1 partitioned, 2 causal (2-D: and k <= q; 3-D: causal in time), -1 any.
RuleSpec random_window2d(std::mt19937& gen, int variant) {
  const bool sliding = variant == 0 || ((variant < 0 || variant == 2) && one_in(gen, 2));
  RuleSpec r;
  r.kind = RuleSpec::window2d;
  if (sliding) {
    r.row = {AxisKind::sliding, odd_size(gen, 11), dilation(gen)};
    r.col = {AxisKind::sliding, odd_size(gen, 11), dilation(gen)};
  } else {  // any size, even ones too; dilation is accepted input here
    const bool dilated = one_in(gen, 4);
    r.row = {AxisKind::partitioned, draw(gen, 1, 7), dilated ? draw(gen, 1, 3) : 1};
    r.col = {AxisKind::partitioned, draw(gen, 1, 7), dilated ? draw(gen, 1, 3) : 1};
  }
  r.also_causal = variant == 2 || (variant < 0 && one_in(gen, 3));
  r.causal_by_window = one_in(gen, 2);
  return r;
}

RuleSpec random_window3d(std::mt19937& gen, int variant) {
  const bool sliding = variant == 0 || ((variant < 0 || variant == 2) && one_in(gen, 2));
  RuleSpec r;
  r.kind = RuleSpec::window3d;
  if (sliding) {
    r.frame = {AxisKind::sliding, odd_size(gen, 5), 1};
    r.row = {AxisKind::sliding, odd_size(gen, 7), 1};
    r.col = {AxisKind::sliding, odd_size(gen, 7), 1};
  } else {
    r.frame = {AxisKind::partitioned, draw(gen, 1, 3), 1};
    r.row = {AxisKind::partitioned, draw(gen, 1, 5), 1};
    r.col = {AxisKind::partitioned, draw(gen, 1, 5), 1};
  }
  if (one_in(gen, 3))
    r.frame.dilation = draw(gen, 1, 2), r.row.dilation = draw(gen, 1, 3), r.col.dilation = draw(gen, 1, 3);
  if (variant == 2 || (variant < 0 && one_in(gen, 3))) {
    r.frame.kind = AxisKind::causal;
    r.frame.size = draw(gen, 1, 4);  // any size: a causal axis is not centred
  }
  return r;
}

RuleSpec random_custom(std::mt19937& gen) {
  RuleSpec r;
  r.kind = RuleSpec::custom;
  const index_t m = draw(gen, 2, 5), rest = draw(gen, 0, 1);
  switch (draw(gen, 0, 3)) {
    case 0:
      r.pred = [m, rest](index_t q, index_t k) { return (q * 7 + k * 3) % m != rest || k == q; };
      r.label = "scatter " + std::to_string(m) + "/" + std::to_string(rest);
      break;
    case 1:
      r.pred = [m](index_t q, index_t k) { return (q > k ? q - k : k - q) % m == 0; };
      r.label = "|q-k| % " + std::to_string(m) + " == 0";
      break;
    case 2:
      r.pred = [m](index_t q, index_t k) { return k <= q && (k % m == 0 || k == q); };
      r.label = "causal stride " + std::to_string(m);
      break;
    default:  // causal, with an exact classification of its own (the planner then trusts it)
      r.pred = [](index_t q, index_t k) { return k <= q; };
      r.classify = [](const TokenRect& qs, const TokenRect& ks) {
        if (ks.last() <= qs.first()) return BlockCoverage::full;
        if (ks.first() > qs.last()) return BlockCoverage::empty;
        return BlockCoverage::partial;
      };
      r.label = "causal predicate with classify";
  }
  return r;
}

// A rule that applies to (query kind, same segment or not); `forced` (a RuleSpec::Kind, or -1)
// where it applies.
RuleSpec random_rule(std::mt19937& gen, SegmentKind qk, bool same, int forced = -1, int variant = -1) {
  const bool image_own = same && qk == kImage, video_own = same && qk == kVideo;
  int kind = forced;
  if ((kind == RuleSpec::window2d && !image_own) || (kind == RuleSpec::window3d && !video_own)) kind = -1;
  if (kind < 0) {
    if ((image_own || video_own) && one_in(gen, 3)) {
      kind = image_own ? RuleSpec::window2d : RuleSpec::window3d;
    } else {
      constexpr int kinds[] = {RuleSpec::none, RuleSpec::full,    RuleSpec::causal,
                               RuleSpec::band, RuleSpec::chunked, RuleSpec::custom};
      kind = kinds[draw(gen, 0, 5)];
    }
  }
  RuleSpec r;
  switch (kind) {
    case RuleSpec::window2d: return random_window2d(gen, variant);
    case RuleSpec::window3d: return random_window3d(gen, variant);
    case RuleSpec::custom: return random_custom(gen);
    case RuleSpec::band:
      r.left = one_in(gen, 8) ? kHuge : draw(gen, 0, 10);
      r.right = one_in(gen, 2) ? 0 : one_in(gen, 8) ? kHuge : draw(gen, 0, 10);
      break;
    case RuleSpec::chunked: r.chunk = one_in(gen, 8) ? kHuge : draw(gen, 1, 16); break;
    default: break;
  }
  r.kind = static_cast<RuleSpec::Kind>(kind);
  r.also_causal = one_in(gen, 6);  // through Rule::and_causal()
  return r;
}

// A table of region rules, built through set(Region), and set(kind, kind) now and then.
void random_table(std::mt19937& gen, Model& m, int forced, int variant) {
  using Key = std::tuple<SegmentKind, SegmentKind, bool>;
  std::map<Key, RuleSpec> table;
  const bool window = forced == RuleSpec::window2d || forced == RuleSpec::window3d;
  for (const SegmentKind qk : {kText, kImage, kVideo})
    for (const SegmentKind kk : {kText, kImage, kVideo}) {
      if (qk == kk && one_in(gen, 4)) {  // one rule for the kind's own segment and the others
        const RuleSpec r = random_rule(gen, qk, /*same=*/false, window ? -1 : forced);
        m.policy.set(qk, kk, r.rule());
        table[{qk, kk, true}] = table[{qk, kk, false}] = r;
        continue;
      }
      for (const bool same : {false, true}) {
        if (same && qk != kk) continue;
        const bool use = forced >= 0 && (window || draw(gen, 1, 4) <= 3);
        const RuleSpec r = random_rule(gen, qk, same, use ? forced : -1, variant);
        m.policy.set(same ? Region::within(qk) : Region::across(qk, kk), r.rule());
        table[{qk, kk, same}] = r;
      }
    }
  std::ostringstream notes;
  for (const auto& [key, r] : table)
    notes << "[" << segment_kind_name(std::get<0>(key)) << "->" << (std::get<2>(key) ? "same " : "")
          << segment_kind_name(std::get<1>(key)) << ": " << r.text() << "] ";
  m.notes = notes.str();
  m.def.base = [table](const Tok& q, const Tok& k) { return table.at({q.kind, k.kind, q.seg == k.seg}).allowed(q, k); };
}

bool same_vision(const Tok& q, const Tok& k) { return q.seg == k.seg && q.kind != kText; }

struct DrawOptions {
  const SequenceLayout* layout = nullptr;  // else a random one
  bool need_video = false;
  bool extras = true;  // sinks and per-segment overrides now and then
};

Model draw_model(Family f, std::uint32_t seed, const DrawOptions& o = {}) {
  std::mt19937 gen(seed);
  Model m;
  m.family = f;
  m.seed = seed;
  const bool needs_image =
      f == Family::rule_window2d_sliding || f == Family::rule_window2d_partitioned || f == Family::rule_window2d_causal;
  const bool needs_video = o.need_video || f == Family::rule_window3d_sliding ||
                           f == Family::rule_window3d_partitioned || f == Family::rule_window3d_causal_time ||
                           f == Family::video_windows;
  m.layout = o.layout ? *o.layout : random_layout(gen, needs_image, needs_video);
  const auto causal = [](const Tok& q, const Tok& k) { return k.pos <= q.pos; };
  switch (f) {
    case Family::rule_none: random_table(gen, m, RuleSpec::none, -1); break;
    case Family::rule_full: random_table(gen, m, RuleSpec::full, -1); break;
    case Family::rule_causal: random_table(gen, m, RuleSpec::causal, -1); break;
    case Family::rule_band: random_table(gen, m, RuleSpec::band, -1); break;
    case Family::rule_chunked: random_table(gen, m, RuleSpec::chunked, -1); break;
    case Family::rule_window2d_sliding: random_table(gen, m, RuleSpec::window2d, 0); break;
    case Family::rule_window2d_partitioned: random_table(gen, m, RuleSpec::window2d, 1); break;
    case Family::rule_window2d_causal: random_table(gen, m, RuleSpec::window2d, 2); break;
    case Family::rule_window3d_sliding: random_table(gen, m, RuleSpec::window3d, 0); break;
    case Family::rule_window3d_partitioned: random_table(gen, m, RuleSpec::window3d, 1); break;
    case Family::rule_window3d_causal_time: random_table(gen, m, RuleSpec::window3d, 2); break;
    case Family::rule_custom: random_table(gen, m, RuleSpec::custom, -1); break;
    case Family::random_table: random_table(gen, m, -1, -1); break;
    case Family::decoder_causal:
      m.policy = RegionPolicy::decoder_causal();
      m.def.base = causal;
      m.notes = "k <= q";
      break;
    case Family::dense:
      m.policy = RegionPolicy::dense();
      m.def.base = [](const Tok&, const Tok&) { return true; };
      m.notes = "all";
      break;
    case Family::bidirectional_images:
    case Family::gemma3_global:
      m.policy = f == Family::gemma3_global ? RegionPolicy::gemma3_global() : RegionPolicy::bidirectional_images();
      m.def.base = [](const Tok& q, const Tok& k) { return k.pos <= q.pos || same_vision(q, k); };
      m.notes = "k <= q, or the same image / video";
      break;
    case Family::gemma3_local: {
      const index_t w = draw(gen, 1, 12);
      m.policy = RegionPolicy::gemma3_local(w);
      m.def.base = [w](const Tok& q, const Tok& k) {
        return (k.pos <= q.pos && q.pos - k.pos < w) || same_vision(q, k);
      };
      m.notes = "0 <= q - k < " + std::to_string(w) + ", or the same image / video";
      break;
    }
    case Family::sliding_causal: {
      const index_t w = draw(gen, 1, 12);
      m.policy = RegionPolicy::sliding_causal(w);
      m.def.base = [w](const Tok& q, const Tok& k) { return k.pos <= q.pos && q.pos - k.pos < w; };
      m.notes = "0 <= q - k < " + std::to_string(w);
      break;
    }
    case Family::llama4_chunked: {
      const index_t c = draw(gen, 1, 16);
      m.policy = RegionPolicy::llama4_chunked(c);
      m.def.base = [c](const Tok& q, const Tok& k) { return k.pos <= q.pos && k.pos / c == q.pos / c; };
      m.notes = "k <= q in the same chunk of " + std::to_string(c);
      break;
    }
    case Family::vision_block_diagonal:
      m.policy = RegionPolicy::vision_block_diagonal();
      m.def.base = [](const Tok& q, const Tok& k) { return q.seg == k.seg; };
      m.notes = "the same segment";
      break;
    case Family::qwen25vl_window: {
      const index_t s = draw(gen, 1, 5);
      m.policy = RegionPolicy::qwen25vl_window(s);
      m.def.base = [s](const Tok& q, const Tok& k) {
        if (q.seg != k.seg) return false;
        if (q.kind == kText) return true;
        return q.frame == k.frame && q.row / s == k.row / s && q.col / s == k.col / s;
      };
      m.notes = "the same segment; images and each video frame cut into " + std::to_string(s) + " x " +
                std::to_string(s) + " windows";
      break;
    }
    case Family::video_windows: {
      RuleSpec w3 = window3d_rule({AxisKind::sliding, 3, 1}, {AxisKind::sliding, 7, 1}, {AxisKind::sliding, 7, 1});
      if (one_in(gen, 4)) {
        m.policy = RegionPolicy::video_windows();  // the default window
      } else {
        w3 = random_window3d(gen, -1);
        m.policy = RegionPolicy::video_windows(w3.w3());
      }
      m.def.base = [w3](const Tok& q, const Tok& k) {
        if (q.seg == k.seg && q.kind == kVideo) return w3.allowed(q, k);
        return k.pos <= q.pos;
      };
      m.notes = "inside a video " + w3.text() + ", else k <= q";
      break;
    }
    case Family::structured:
    case Family::structured_default: {
      RuleSpec w2 = window2d_rule({AxisKind::sliding, 7, 1}, {AxisKind::sliding, 7, 1});
      RuleSpec w3 = window3d_rule({AxisKind::sliding, 3, 1}, {AxisKind::sliding, 7, 1}, {AxisKind::sliding, 7, 1});
      if (f == Family::structured_default) {
        m.policy = RegionPolicy::structured();
      } else {
        w2 = random_window2d(gen, -1);
        w3 = random_window3d(gen, -1);
        m.policy = RegionPolicy::structured(w2.w2(), w3.w3());
      }
      m.def.base = [w2, w3](const Tok& q, const Tok& k) {
        if (q.seg == k.seg && q.kind == kImage) return w2.allowed(q, k);
        if (q.seg == k.seg && q.kind == kVideo) return w3.allowed(q, k);
        return q.kind == kText && k.pos <= q.pos;  // text -> anything causal; image / video -> others none
      };
      m.notes = "image own " + w2.text() + ", video own " + w3.text() + ", text -> any k <= q, else none";
      break;
    }
  }
  if (o.extras) {
    if (one_in(gen, 3)) {
      m.def.sinks = one_in(gen, 8) ? 1000 : draw(gen, 1, 8);
      m.policy.with_sinks(m.def.sinks);
    }
    if (one_in(gen, 3)) {
      const int forced = f == Family::rule_window2d_sliding || f == Family::rule_window2d_partitioned ||
                                 f == Family::rule_window2d_causal
                             ? RuleSpec::window2d
                         : f >= Family::rule_window3d_sliding && f <= Family::rule_window3d_causal_time
                             ? RuleSpec::window3d
                             : -1;
      for (index_t i = draw(gen, 1, 3); i > 0; --i) {
        const index_t qs = draw(gen, 0, m.layout.num_segments() - 1);
        const index_t ks = one_in(gen, 2) ? qs : draw(gen, 0, m.layout.num_segments() - 1);
        const RuleSpec r = random_rule(gen, m.layout.segment(qs).kind, qs == ks, forced);
        m.policy.set_segments(qs, ks, r.rule());  // a second override of one pair replaces the first
        m.def.overrides[{qs, ks}] = r;
      }
    }
  }
  m.finish();
  return m;
}

std::uint32_t seed_of(Family f, int i, std::uint32_t salt) {
  return salt + 1000u * static_cast<std::uint32_t>(f) + static_cast<std::uint32_t>(i);
}

// Awkward layouts every family also meets: one token, grids of one row or column, a video of
// single pixels, two images (image -> other image).
std::vector<SequenceLayout> corner_layouts() {
  std::vector<SequenceLayout> out(6);
  out[0].add_text(1);
  out[1].add_image(1, 1);
  out[2].add_video(1, 1, 1);
  out[3].add_image(1, 9).add_video(3, 1, 1).add_text(1).add_image(9, 1);
  out[4].add_video(4, 1, 5).add_text(2).add_video(1, 3, 1);
  out[5].add_text(3).add_image(2, 2).add_text(1).add_image(3, 2).add_video(2, 2, 2);
  return out;
}

// Failures grouped by what failed; the first message of each group is kept.
struct Failures {
  std::map<std::string, std::pair<int, std::string>> groups;
  int checked = 0;
  void add(const std::string& what, const std::string& detail) {
    auto& [count, first] = groups[what];
    if (count++ == 0) first = detail;
  }
  void report() const {
    for (const auto& [what, entry] : groups)
      ADD_FAILURE() << what << ": " << entry.first << " failure(s); first:\n  " << entry.second;
  }
};

std::string pair_text(index_t q, index_t k) { return "(q " + std::to_string(q) + ", k " + std::to_string(k) + ")"; }
std::string rect_text(const TokenRect& r) {
  return "{start " + std::to_string(r.start) + ", pitch " + std::to_string(r.pitch) + ", " + std::to_string(r.rows) +
         "x" + std::to_string(r.cols) + "}";
}

// ---- The definitions themselves --------------------------------------------------------------------

// The oracle's axis windows against examples worked by hand from NATTEN's get_window_start.
TEST(MaskRulesDefinition, AxisWindowsFollowNattenSwinAndCausalExamples) {
  using V = std::vector<index_t>;
  auto keys = [](Axis a, index_t i, index_t length) {
    V v;
    for (index_t j = 0; j < length; ++j)
      if (on_axis(a, i, j, length)) v.push_back(j);
    return v;
  };
  const Axis s3{AxisKind::sliding, 3, 1}, s3d2{AxisKind::sliding, 3, 2};
  EXPECT_EQ(keys(s3, 0, 7), (V{0, 1, 2}));  // shifted at the start
  EXPECT_EQ(keys(s3, 3, 7), (V{2, 3, 4}));
  EXPECT_EQ(keys(s3, 6, 7), (V{4, 5, 6}));  // and at the end
  EXPECT_EQ(keys(s3d2, 0, 7), (V{0, 2, 4}));
  EXPECT_EQ(keys(s3d2, 6, 7), (V{2, 4, 6}));                       // NATTEN: start 2 for index 6 of 7, dilation 2
  EXPECT_EQ(keys(s3d2, 5, 7), (V{1, 3, 5}));                       // NATTEN: start 1 for index 5
  EXPECT_EQ(keys({AxisKind::sliding, 5, 1}, 1, 3), (V{0, 1, 2}));  // larger than the axis: all of it
  EXPECT_EQ(keys({AxisKind::sliding, 5, 2}, 3, 7), (V{1, 3, 5}));  // larger than the group
  EXPECT_EQ(keys({AxisKind::partitioned, 3, 1}, 4, 7), (V{3, 4, 5}));
  EXPECT_EQ(keys({AxisKind::partitioned, 3, 1}, 6, 7), (V{6}));  // the last window is smaller
  EXPECT_EQ(keys({AxisKind::partitioned, 2, 2}, 5, 7), (V{5}));  // group {1, 3, 5}: pieces {1, 3}, {5}
  EXPECT_EQ(keys({AxisKind::causal, 3, 1}, 1, 7), (V{0, 1}));
  EXPECT_EQ(keys({AxisKind::causal, 3, 1}, 5, 7), (V{3, 4, 5}));
  EXPECT_EQ(keys({AxisKind::causal, 2, 2}, 5, 7), (V{3, 5}));
}

// ---- 1. allowed(q, k) ------------------------------------------------------------------------------

TEST(MaskRulesAllowed, EveryRuleAndPresetMatchesItsDefinitionOnEveryPair) {
  Failures failures;
  const std::vector<SequenceLayout> corners = corner_layouts();
  long pairs = 0;
  int with_sinks = 0, with_overrides = 0, with_video = 0;
  for (int fi = 0; fi < kFamilies; ++fi) {
    const auto f = static_cast<Family>(fi);
    const int total = kAllowedCases + static_cast<int>(corners.size());
    for (int i = 0; i < total; ++i) {
      DrawOptions o;
      if (i >= kAllowedCases) o.layout = &corners[static_cast<size_t>(i - kAllowedCases)];
      const Model m = draw_model(f, seed_of(f, i, 0x11000000u), o);
      const MaskPredicate predicate{&m.layout, &m.policy};
      with_sinks += m.def.sinks > 0;
      with_overrides += !m.def.overrides.empty();
      with_video += m.layout.video_tokens() > 0;
      for (index_t q = 0; q < m.n; ++q)
        for (index_t k = 0; k < m.n; ++k) {
          const bool got = allowed(m.layout, m.policy, q, k);
          ++pairs;
          if (got != m.ok(q, k) || predicate(q, k) != got)
            failures.add(std::string("allowed, ") + family_name(f),
                         pair_text(q, k) + ": library " + std::to_string(got) + ", definition " +
                             std::to_string(m.ok(q, k)) + "\n  " + describe(m));
        }
    }
  }
  failures.report();
  // Each axis drawn often: about a third of the cases have sinks, a third overrides, most a video.
  const int models = kFamilies * (kAllowedCases + static_cast<int>(corners.size()));
  EXPECT_GT(with_sinks, models / 5);
  EXPECT_GT(with_overrides, models / 5);
  EXPECT_GT(with_video, models / 3);
  EXPECT_GT(pairs, 50000 * kScale);
}

// ---- 2. PairMask ---------------------------------------------------------------------------------

TokenRect random_rect(std::mt19937& gen, const Segment& s) {
  if (s.is_text() || one_in(gen, 4)) {  // a run of positions, across grid rows where it may
    const index_t a = draw(gen, s.start, s.end() - 1);
    return TokenRect::span(a, draw(gen, 1, s.end() - a));
  }
  index_t r0 = 0, rows = 0;  // rows of the frames stacked into one tall grid
  if (one_in(gen, 2)) {      // inside one frame
    const index_t f = draw(gen, 0, s.frames - 1);
    r0 = f * s.rows + draw(gen, 0, s.rows - 1);
    rows = draw(gen, 1, (f + 1) * s.rows - r0);
  } else {
    r0 = draw(gen, 0, s.frames * s.rows - 1);
    rows = draw(gen, 1, s.frames * s.rows - r0);
  }
  const index_t c0 = draw(gen, 0, s.cols - 1), cols = draw(gen, 1, s.cols - c0);
  return {s.start + r0 * s.cols + c0, s.cols, rows, cols};
}

// Expands runs into block-local indices, checking they are ordered, non-empty and inside the block.
bool expand_runs(const std::vector<KeyRun>& runs, index_t block, std::vector<char>& seen) {
  seen.assign(static_cast<size_t>(block), 0);
  index_t prev_end = 0;
  for (const KeyRun& r : runs) {
    if (r.begin < prev_end || r.begin >= r.end || r.end > block) return false;
    for (index_t j = r.begin; j < r.end; ++j) seen[static_cast<size_t>(j)] = 1;
    prev_end = r.end;
  }
  return true;
}

TEST(MaskRulesPairMask, CountClassifyRunsAndKeySearchesMatchTheDefinition) {
  Failures failures;
  std::vector<KeyRun> runs;
  std::vector<char> seen;
  kernel::BlockRuns block_runs;
  for (int fi = 0; fi < kFamilies; ++fi) {
    const auto f = static_cast<Family>(fi);
    for (int i = 0; i < kPairMaskCases; ++i) {
      const Model m = draw_model(f, seed_of(f, i, 0x22000000u));
      std::mt19937 gen(m.seed ^ 0x9e3779b9u);
      const std::string fam = family_name(f);
      for (index_t qs = 0; qs < m.layout.num_segments(); ++qs)
        for (index_t ks = 0; ks < m.layout.num_segments(); ++ks) {
          const Segment& qseg = m.layout.segment(qs);
          const Segment& kseg = m.layout.segment(ks);
          const PairMask mask = m.policy.pair(m.layout, qs, ks);
          const std::string where = "segments " + std::to_string(qs) + "->" + std::to_string(ks) + "\n  " + describe(m);
          auto truth_count = [&](index_t a, index_t b) {
            index_t c = 0;
            for (index_t q = a; q < b; ++q)
              for (index_t k = kseg.start; k < kseg.end(); ++k) c += m.ok(q, k);
            return c;
          };
          // count over the whole segment, empty ranges and random ranges
          for (int t = 0; t < 4; ++t) {
            index_t a = qseg.start, b = qseg.end();
            if (t > 0) a = draw(gen, qseg.start, qseg.end()), b = draw(gen, a, qseg.end());
            const index_t got = mask.count(a, b), want = truth_count(a, b);
            if (got != want)
              failures.add("count, " + fam, "queries [" + std::to_string(a) + ", " + std::to_string(b) +
                                                "): " + std::to_string(got) + ", definition " + std::to_string(want) +
                                                ", " + where);
          }
          if (!mask.visits() && truth_count(qseg.start, qseg.end()) > 0)
            failures.add("visits, " + fam, "visits() is false but pairs are allowed, " + where);
          // last_key and first_key_from for every query
          for (index_t q = qseg.start; q < qseg.end(); ++q) {
            index_t last = -1;
            for (index_t k = kseg.start; k < kseg.end(); ++k)
              if (m.ok(q, k)) last = k;
            if (mask.last_key(q) != last)
              failures.add("last_key, " + fam, "query " + std::to_string(q) + ": " + std::to_string(mask.last_key(q)) +
                                                   ", definition " + std::to_string(last) + ", " + where);
            for (const index_t from : {kseg.start, draw(gen, kseg.start - 2, kseg.end() + 1)}) {
              index_t first = -1;
              for (index_t k = std::max(from, kseg.start); k < kseg.end() && first < 0; ++k)
                if (m.ok(q, k)) first = k;
              const index_t got = mask.first_key_from(q, from);
              if (got != first)
                failures.add("first_key_from, " + fam, "query " + std::to_string(q) + " from " + std::to_string(from) +
                                                           ": " + std::to_string(got) + ", definition " +
                                                           std::to_string(first) + ", " + where);
            }
          }
          // classify and runs on random rects
          for (int t = 0; t < 3; ++t) {
            const TokenRect qr = random_rect(gen, qseg), kr = random_rect(gen, kseg);
            bool all = true, any = false;
            for (index_t a = 0; a < qr.size(); ++a)
              for (index_t b = 0; b < kr.size(); ++b) {
                const bool ok = m.ok(qr.at(a), kr.at(b));
                all = all && ok, any = any || ok;
              }
            const BlockCoverage want = all ? BlockCoverage::full : any ? BlockCoverage::partial : BlockCoverage::empty;
            const BlockCoverage got = mask.classify(qr, kr);
            if (got != want)
              failures.add("classify, " + fam, "queries " + rect_text(qr) + " keys " + rect_text(kr) + ": " +
                                                   std::to_string(int(got)) + ", definition " +
                                                   std::to_string(int(want)) + " (0 empty 1 partial 2 full), " + where);
            for (index_t a = 0; a < qr.size(); ++a) {
              const index_t q = qr.at(a);
              runs.clear();
              mask.runs(q, kr, runs);
              if (!expand_runs(runs, kr.size(), seen)) {
                failures.add("runs, " + fam, "query " + std::to_string(q) + " keys " + rect_text(kr) +
                                                 ": runs out of order, empty or outside the block, " + where);
                continue;
              }
              for (index_t b = 0; b < kr.size(); ++b)
                if ((seen[size_t(b)] != 0) != m.ok(q, kr.at(b)))
                  failures.add("runs, " + fam, pair_text(q, kr.at(b)) + " in keys " + rect_text(kr) + ": runs say " +
                                                   std::to_string(int(seen[size_t(b)])) + ", " + where);
            }
            // The kernels' view of the same block: all rows' runs at once, the span of a group of
            // rows, and each row masked between its runs.
            block_runs.compute(qr, kr, mask);
            for (int g = 0; g < 3; ++g) {
              const index_t r0 = draw(gen, 0, qr.size()), r1 = draw(gen, r0, qr.size() + 2);
              index_t lo = kr.size(), hi = 0;
              for (index_t a = r0; a < std::min(r1, qr.size()); ++a)
                for (index_t b = 0; b < kr.size(); ++b)
                  if (m.ok(qr.at(a), kr.at(b))) lo = std::min(lo, b), hi = std::max(hi, b + 1);
              const KeyRun span = block_runs.span(r0, r1);
              const bool none = lo >= hi;
              if (none ? span.begin < span.end : span.begin != lo || span.end != hi)
                failures.add("BlockRuns::span, " + fam,
                             "rows [" + std::to_string(r0) + ", " + std::to_string(r1) + ") of queries " + rect_text(qr) +
                                 " keys " + rect_text(kr) + ": [" + std::to_string(span.begin) + ", " +
                                 std::to_string(span.end) + "), definition " +
                                 (none ? "none" : "[" + std::to_string(lo) + ", " + std::to_string(hi) + ")") + ", " +
                                 where);
            }
            std::vector<float> row(static_cast<size_t>(kr.size()));
            for (index_t a = 0; a < qr.size(); ++a) {
              std::fill(row.begin(), row.end(), 1.0f);
              block_runs.mask_row(a, row.data(), kr.size());
              for (index_t b = 0; b < kr.size(); ++b)
                if ((row[size_t(b)] == 1.0f) != m.ok(qr.at(a), kr.at(b)))
                  failures.add("BlockRuns::mask_row, " + fam, pair_text(qr.at(a), kr.at(b)) + " in keys " +
                                                                  rect_text(kr) + ": " + std::to_string(row[size_t(b)]) +
                                                                  ", " + where);
            }
          }
        }
    }
  }
  failures.report();
}

// ---- 3. make_plan and plan_stats --------------------------------------------------------------------

index_t random_tile(std::mt19937& gen) {
  const index_t sizes[] = {1, 2, 3, 5, 8, 13, 16, 32, 64, 128};
  return one_in(gen, 3) ? draw(gen, 1, 40) : sizes[draw(gen, 0, 9)];
}

PlanOptions random_options(std::mt19937& gen, index_t n) {
  PlanOptions o;
  o.tiles = {random_tile(gen), random_tile(gen), one_in(gen, 2) ? 0 : random_tile(gen)};
  o.image_tiling = static_cast<ImageTiling>(draw(gen, 0, 2));
  switch (draw(gen, 0, 3)) {
    case 0:
    case 1: break;
    case 2: o.query_begin = draw(gen, 0, n - 1); break;
    default: o.query_begin = draw(gen, 0, n - 1), o.query_end = draw(gen, o.query_begin + 1, n);
  }
  o.all_keys_present = true;
  return o;
}

void check_plan(const Model& m, const PlanOptions& o, Failures& failures) {
  const std::string fam = family_name(m.family);
  const std::string where = "tiles " + std::to_string(o.tiles.query) + "x" + std::to_string(o.tiles.key) + " (window " +
                            std::to_string(o.tiles.window_query) + "), tiling " + std::to_string(int(o.image_tiling)) +
                            ", queries [" + std::to_string(o.query_begin) + ", " + std::to_string(o.query_end) +
                            ")\n  " + describe(m);
  Plan plan;
  const std::string err = error_message([&] { plan = make_plan(m.layout, m.policy, o); });
  if (err != "<no exception>") return failures.add("make_plan threw, " + fam, err + ", " + where);
  ++failures.checked;
  const index_t qb = plan.query_begin, qe = plan.query_end, n = m.n;
  // Query tiles partition the range, each inside its segment.
  std::vector<int> tiles_of(static_cast<size_t>(n), 0);
  for (const QueryTile& tile : plan.query_tiles)
    for (index_t i = 0; i < tile.queries.size(); ++i) {
      const index_t q = tile.queries.at(i);
      if (q < qb || q >= qe)
        return failures.add("query tiles, " + fam, "query " + std::to_string(q) + " outside, " + where);
      ++tiles_of[size_t(q)];
      if (m.toks[size_t(q)].seg != tile.segment)
        failures.add("query tiles, " + fam, "query " + std::to_string(q) + " not in its tile's segment, " + where);
    }
  for (index_t q = qb; q < qe; ++q)
    if (tiles_of[size_t(q)] != 1)
      failures.add("query tiles, " + fam,
                   "query " + std::to_string(q) + " in " + std::to_string(tiles_of[size_t(q)]) + " tiles, " + where);
  // Blocks: full ones only allowed pairs, none empty, partial ones masked exactly, every allowed
  // pair in exactly one block of its tile.
  std::vector<int> cover(static_cast<size_t>(n));
  std::vector<KeyRun> runs;
  std::vector<char> seen;
  for (const QueryTile& tile : plan.query_tiles) {
    const TokenRect& qr = tile.queries;
    std::fill(cover.begin(), cover.end(), 0);
    for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
      const KeyBlock& block = plan.blocks[size_t(b)];
      const TokenRect& kr = block.keys;
      const std::string at =
          "queries " + rect_text(qr) + " keys " + rect_text(kr) + (block.full ? " full" : " partial");
      if (kr.size() <= 0 || kr.first() < 0 || kr.last() >= n) {
        failures.add("blocks, " + fam, at + " outside the layout, " + where);
        continue;
      }
      index_t allowed_pairs = 0;
      for (index_t j = 0; j < kr.size(); ++j) {
        const index_t k = kr.at(j);
        ++cover[size_t(k)];
        if (m.toks[size_t(k)].seg != block.key_segment)
          failures.add("blocks, " + fam,
                       at + ": key " + std::to_string(k) + " not in the block's key segment, " + where);
        for (index_t i = 0; i < qr.size(); ++i) {
          const bool ok = m.ok(qr.at(i), k);
          allowed_pairs += ok;
          if (block.full && !ok)
            failures.add("full block holds a masked pair, " + fam, at + ": " + pair_text(qr.at(i), k) + ", " + where);
        }
      }
      if (allowed_pairs == 0) failures.add("empty block, " + fam, at + ", " + where);
      if (!block.full) {
        const PairMask mask = plan.mask(tile, block);
        for (index_t i = 0; i < qr.size(); ++i) {
          runs.clear();
          mask.runs(qr.at(i), kr, runs);
          const bool well_formed = expand_runs(runs, kr.size(), seen);
          for (index_t j = 0; j < kr.size() && well_formed; ++j)
            if ((seen[size_t(j)] != 0) != m.ok(qr.at(i), kr.at(j)))
              failures.add("partial block mask, " + fam, at + ": " + pair_text(qr.at(i), kr.at(j)) + ", " + where);
          if (!well_formed) failures.add("partial block mask, " + fam, at + ": malformed runs, " + where);
        }
      }
    }
    for (index_t i = 0; i < qr.size(); ++i)
      for (index_t k = 0; k < n; ++k)
        if (m.ok(qr.at(i), k) && cover[size_t(k)] != 1)
          failures.add(
              "allowed pair not in exactly one block, " + fam,
              pair_text(qr.at(i), k) + " in " + std::to_string(cover[size_t(k)]) + " blocks of its tile, " + where);
  }
  // plan_stats' allowed pairs per region.
  using Key = std::tuple<SegmentKind, SegmentKind, bool>;
  std::map<Key, index_t> by_region;
  index_t total = 0;
  for (index_t q = qb; q < qe; ++q)
    for (index_t k = 0; k < n; ++k)
      if (m.ok(q, k)) {
        const Tok &a = m.toks[size_t(q)], &c = m.toks[size_t(k)];
        ++by_region[{a.kind, c.kind, a.seg == c.seg}];
        ++total;
      }
  const PlanStats st = plan_stats(plan, m.layout, m.policy);
  for (const SegmentKind qk : {kText, kImage, kVideo})
    for (const SegmentKind kk : {kText, kImage, kVideo})
      for (const bool same : {false, true}) {
        if (same && qk != kk) continue;
        const Region r = same ? Region::within(qk) : Region::across(qk, kk);
        const index_t want = by_region[{qk, kk, same}];
        if (st.region(r).allowed_pairs != want)
          failures.add("plan_stats allowed_pairs, " + fam, r.name() + ": " +
                                                               std::to_string(st.region(r).allowed_pairs) +
                                                               ", definition " + std::to_string(want) + ", " + where);
      }
  if (st.allowed_pairs() != total)
    failures.add("plan_stats allowed_pairs total, " + fam,
                 std::to_string(st.allowed_pairs()) + ", definition " + std::to_string(total) + ", " + where);
}

TEST(MaskRulesPlan, BlocksCoverEveryAllowedPairOnceAndStatsCountThemForEveryRuleAndPreset) {
  Failures failures;
  for (int fi = 0; fi < kFamilies; ++fi) {
    const auto f = static_cast<Family>(fi);
    for (int i = 0; i < kPlanCases; ++i) {
      const Model m = draw_model(f, seed_of(f, i, 0x33000000u));
      std::mt19937 gen(m.seed ^ 0x85ebca6bu);
      for (int t = 0; t < 2; ++t) check_plan(m, random_options(gen, m.n), failures);
    }
  }
  failures.report();
  EXPECT_EQ(failures.checked, kFamilies * kPlanCases * 2);
}

// ---- 4. Outputs -------------------------------------------------------------------------------------

// The forward pass against the reference under the definition (not the library's predicate), on
// layouts that hold a video, with small random tiles so blocks are many and often partial.
TEST(MaskRulesForward, OutputsEqualTheReferenceUnderTheDefinition) {
  const AttentionConfig configs[] = {make_config(2, 1, 8), make_config(3, 3, 5), make_config(4, 2, 16)};
  int runs = 0;
  for (int fi = 0; fi < kFamilies; ++fi) {
    const auto f = static_cast<Family>(fi);
    const int count = fi >= kFirstPreset ? 4 : 2;  // every preset on four layouts, every rule on two
    for (int i = 0; i < count; ++i) {
      DrawOptions o;
      o.need_video = true;
      const Model m = draw_model(f, seed_of(f, i, 0x44000000u), o);
      SCOPED_TRACE(describe(m));
      std::mt19937 gen(m.seed);
      const AttentionConfig& cfg = configs[(fi + i) % 3];
      PlanOptions options;
      options.tiles = {draw(gen, 1, 24), draw(gen, 1, 32)};
      options.image_tiling = static_cast<ImageTiling>(draw(gen, 0, 2));
      std::optional<MultimodalAttention<float>> mm;
      // Serial mostly: many small runs, and OpenMP's barriers cost much on a loaded 2-core machine.
      const Executor executor = (fi + i) % 4 == 0 ? Executor::default_executor() : Executor::serial();
      ASSERT_EQ(error_message([&] { mm.emplace(cfg, m.layout, m.policy, options, executor); }), "<no exception>");
      const Buffers b = make_qkv(cfg, m.n, m.n, m.seed);
      Tensor out(m.n, cfg.num_heads, cfg.head_dim);  // NaN until written
      Lse lse(m.n, cfg.num_heads);
      mm->forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);
      const Result ref = run_reference(cfg, b, [&m](index_t q, index_t k) { return m.ok(q, k); });
      EXPECT_LE(max_relative_error(out, ref.out), 1e-5);  // +inf on any NaN
      EXPECT_LE(max_lse_error(lse, ref.lse), 1e-5);
      ++runs;
    }
  }
  EXPECT_EQ(runs, 2 * kFirstPreset + 4 * (kFamilies - kFirstPreset));
}

// ---- 5. Serving safety --------------------------------------------------------------------------------

// The last key each query sees, by the definition (-1: none).
std::vector<index_t> reach_of(const Model& m) {
  std::vector<index_t> reach(static_cast<size_t>(m.n), -1);
  for (index_t q = 0; q < m.n; ++q)
    for (index_t k = 0; k < m.n; ++k)
      if (m.ok(q, k)) reach[size_t(q)] = k;
  return reach;
}

// Is [s, e) a chunk no query of which sees a key at or after e?
bool exact_chunk(const std::vector<index_t>& reach, index_t s, index_t e) {
  for (index_t q = s; q < e; ++q)
    if (reach[size_t(q)] >= e) return false;
  return true;
}

TEST(MaskRulesServing, PlanOfAQueryRangeSeeingLaterKeysNamesTheQueryAndTheKey) {
  SequenceLayout layout;
  layout.add_text(4).add_image(3, 3).add_text(3);  // image at [4, 13)
  PlanOptions o;
  o.query_end = 6;  // cuts the bidirectional image: query 4 sees key 6
  std::string msg = error_message([&] { make_plan(layout, RegionPolicy::bidirectional_images(), o); });
  EXPECT_TRUE(contains(msg, "query 4 may see key 6")) << msg;
  o.all_keys_present = true;
  EXPECT_NO_THROW(make_plan(layout, RegionPolicy::bidirectional_images(), o));
  o = {};
  o.query_end = 13;  // the image whole: exact
  EXPECT_NO_THROW(make_plan(layout, RegionPolicy::bidirectional_images(), o));

  // Every family, random query ranges ending before the layout's end.
  const std::regex named("query (\\d+) may see key (\\d+)");
  Failures failures;
  int refused = 0, accepted = 0;
  for (int fi = 0; fi < kFamilies; ++fi) {
    const auto f = static_cast<Family>(fi);
    for (int i = 0; i < kServingCases; ++i) {
      const Model m = draw_model(f, seed_of(f, i, 0x55000000u));
      if (m.n < 2) continue;
      std::mt19937 gen(m.seed);
      const std::vector<index_t> reach = reach_of(m);
      for (int t = 0; t < 3; ++t) {
        PlanOptions r;
        r.tiles = {random_tile(gen), random_tile(gen)};
        r.query_begin = draw(gen, 0, m.n - 2);
        r.query_end = draw(gen, r.query_begin + 1, m.n - 1);
        const std::string where =
            "queries [" + std::to_string(r.query_begin) + ", " + std::to_string(r.query_end) + ")\n  " + describe(m);
        const bool exact = exact_chunk(reach, r.query_begin, r.query_end);
        const std::string err = error_message([&] { make_plan(m.layout, m.policy, r); });
        if (exact) {
          ++accepted;
          if (err != "<no exception>")
            failures.add("exact range refused, " + std::string(family_name(f)), err + ", " + where);
          continue;
        }
        ++refused;
        std::smatch match;
        if (!std::regex_search(err, match, named)) {
          failures.add("range seeing later keys not refused by name, " + std::string(family_name(f)),
                       err + ", " + where);
        } else {
          const index_t q = std::stoll(match[1]), k = std::stoll(match[2]);
          if (q < r.query_begin || q >= r.query_end || k < r.query_end || k >= m.n || !m.ok(q, k))
            failures.add("named pair is no witness, " + std::string(family_name(f)), err + ", " + where);
        }
        r.all_keys_present = true;
        const std::string err2 = error_message([&] { make_plan(m.layout, m.policy, r); });
        if (err2 != "<no exception>")
          failures.add("all_keys_present refused, " + std::string(family_name(f)), err2 + ", " + where);
      }
    }
  }
  failures.report();
  EXPECT_GT(refused, 10);
  EXPECT_GT(accepted, 10);
}

template <class T>
TensorView<T> rows_of(TensorView<T> v, index_t first, index_t count) {
  v.data += first * v.token_stride;
  v.tokens = count;
  return v;
}

// Chunked prefill of the structured mask over text, image, text, at safe_chunk_ends' cut points:
// each chunk a MultimodalAttention over its own queries (all_keys_present = false, so the plan
// would refuse a chunk that needs later keys); the chunks together must give the one-shot forward
// and the reference. poison_unwritten: K/V rows at or after the chunk's end are NaN, as memory not
// yet written by chunked prefill may be; a kernel that reads them (even to multiply by 0) shows it.
void chunked_prefill_of_structured(bool poison_unwritten) {
  SequenceLayout layout;
  layout.add_text(5).add_image(6, 5).add_text(7);  // 42 tokens: the image at [5, 35)
  const index_t n = layout.size();
  const AttentionConfig cfg = make_config(2, 1, 8);
  const Buffers b = make_qkv(cfg, n, n, 4242);
  const Axis s3{AxisKind::sliding, 3, 1}, s5d2{AxisKind::sliding, 5, 2}, p2{AxisKind::partitioned, 2, 1},
      p3{AxisKind::partitioned, 3, 1}, s1{AxisKind::sliding, 1, 1};
  // Bidirectional windows keep the image whole; causal ones let chunks cut it.
  const RuleSpec windows[] = {window2d_rule(s3, s3), window2d_rule(s5d2, s3),
                              window2d_rule(p2, p3), window2d_rule(p3, p3, /*causal=*/true),
                              window2d_rule(s1, s1), window2d_rule(s3, s5d2, /*causal=*/true)};
  int chunks = 0, image_cuts = 0;
  for (const RuleSpec& w : windows) {
    Model m;
    m.family = Family::structured;
    m.layout = layout;
    m.policy = RegionPolicy::structured(w.w2());
    m.def.base = [w](const Tok& q, const Tok& k) {
      if (q.seg == k.seg && q.kind == kImage) return w.allowed(q, k);
      return q.kind == kText && k.pos <= q.pos;
    };
    m.notes = "image own " + w.text() + ", text -> any k <= q, else none";
    m.finish();
    SCOPED_TRACE(describe(m));
    const std::vector<index_t> reach = reach_of(m);
    PlanOptions whole;
    whole.tiles = {8, 16};
    const MultimodalAttention<float> one_shot(cfg, layout, m.policy, whole, Executor::serial());
    Tensor expected(n, cfg.num_heads, cfg.head_dim);
    one_shot.forward(b.q.cview(), b.k.cview(), b.v.cview(), expected.view);
    const Result ref = run_reference(cfg, b, [&m](index_t q, index_t k) { return m.ok(q, k); });
    EXPECT_LE(max_relative_error(expected, ref.out), 1e-5);
    for (const index_t max_chunk : {index_t(1), index_t(3), index_t(8), index_t(64)}) {
      SCOPED_TRACE("max_chunk " + std::to_string(max_chunk));
      const std::vector<index_t> ends = safe_chunk_ends(layout, m.policy, max_chunk);
      ASSERT_FALSE(ends.empty());
      ASSERT_EQ(ends.back(), n);
      Tensor chunked(n, cfg.num_heads, cfg.head_dim);  // NaN until written
      std::vector<std::string> bad_chunks;
      index_t s = 0;
      for (const index_t e : ends) {
        ASSERT_GT(e, s);
        EXPECT_TRUE(exact_chunk(reach, s, e)) << "chunk [" << s << ", " << e << ") sees later keys";
        image_cuts += e > 5 && e < 35;
        PlanOptions o;
        o.tiles = {8, 16};
        o.query_begin = s, o.query_end = e;
        o.all_keys_present = false;
        std::optional<MultimodalAttention<float>> part;
        const std::string err = error_message([&] { part.emplace(cfg, layout, m.policy, o, Executor::serial()); });
        ASSERT_EQ(err, "<no exception>") << "chunk [" << s << ", " << e << ")";
        Tensor k = b.k, v = b.v;
        if (poison_unwritten)
          for (index_t t = e; t < n; ++t)
            for (index_t h = 0; h < cfg.num_kv_heads; ++h)
              for (index_t d = 0; d < cfg.head_dim; ++d) k.view(t, h, d) = v.view(t, h, d) = kNaN;
        const TensorView<float> rows = rows_of(chunked.view, s, e - s);
        part->forward(rows_of(b.q.cview(), s, e - s), k.cview(), v.cview(), rows);
        if (!(max_relative_error(TensorView<const float>(rows), rows_of(ref.out.cview(), s, e - s)) <= 1e-5))
          bad_chunks.push_back("[" + std::to_string(s) + ", " + std::to_string(e) + ")");
        ++chunks;
        s = e;
      }
      EXPECT_LE(max_relative_error(chunked, expected), 1e-6);
      EXPECT_LE(max_relative_error(chunked, ref.out), 1e-5);
      if (!bad_chunks.empty()) {
        std::string list;
        for (const std::string& c : bad_chunks) list += " " + c;
        ADD_FAILURE() << bad_chunks.size() << " chunk(s) differ from the reference (NaN or wrong):" << list;
      }
    }
  }
  EXPECT_GT(chunks, 50);
  EXPECT_GT(image_cuts, 10);  // the causal windows let chunks end inside the image
}

TEST(MaskRulesServing, ChunkedPrefillOfStructuredAtSafeCutsEqualsOneShot) {
  chunked_prefill_of_structured(/*poison_unwritten=*/false);
}

// The same with K/V after each chunk NaN. Masked means not read: a partial block whose masked
// columns reach past the chunk's end must not multiply their V rows by zero (0 x NaN = NaN).
TEST(MaskRulesServing, ChunkedPrefillNeverReadsKeysAfterTheChunk) {
  chunked_prefill_of_structured(/*poison_unwritten=*/true);
}

// The smallest case of the above: a causal predicate over three text tokens, a chunk of query 0.
// The plan is accepted (query 0 sees only key 0) but lists keys 0..2 as one partial block.
TEST(MaskRulesServing, ChunkOfACausalPredicateNeverReadsLaterValues) {
  SequenceLayout layout;
  layout.add_text(3);
  RegionPolicy policy;
  policy.set_all(Rule::predicate([](index_t q, index_t k) { return k <= q; }, "causal predicate"));
  const AttentionConfig cfg = make_config(1, 1, 4);
  Buffers b = make_qkv(cfg, 3, 3, 7);
  PlanOptions o;
  o.query_end = 1;  // all_keys_present = false: keys 1 and 2 are not written yet
  const MultimodalAttention<float> mm(cfg, layout, policy, o, Executor::serial());
  const Result ref = run_reference(cfg, rows_of(b.q.cview(), 0, 1), b.k.cview(), b.v.cview(), CausalKeys{});
  for (index_t t = 1; t < 3; ++t)
    for (index_t d = 0; d < 4; ++d) b.v.view(t, 0, d) = kNaN;
  Tensor out(1, 1, 4);
  mm.forward(rows_of(b.q.cview(), 0, 1), b.k.cview(), b.v.cview(), out.view);
  EXPECT_LE(max_relative_error(out, ref.out), 1e-6) << "out[0] = " << out.view(0, 0, 0);
}

// Gemma-3's images (and videos) attend to themselves in both directions: a cut inside one would
// need keys not written yet, so safe_chunk_ends never cuts there, whatever max_chunk asks.
TEST(MaskRulesServing, SafeChunkEndsNeverCutABidirectionalImageOrVideo) {
  Failures failures;
  int layouts = 0;
  for (const Family f : {Family::bidirectional_images, Family::gemma3_global, Family::gemma3_local}) {
    for (int i = 0; i < 4 * kServingCases; ++i) {
      DrawOptions o;
      o.extras = false;  // an override could make an image causal
      const Model m = draw_model(f, seed_of(f, i, 0x66000000u), o);
      std::mt19937 gen(m.seed);
      const index_t max_chunk = draw(gen, 1, 20);
      const std::vector<index_t> ends = safe_chunk_ends(m.layout, m.policy, max_chunk);
      ++layouts;
      for (const index_t e : ends)
        for (const Segment& g : m.layout.segments())
          if (!g.is_text() && g.start < e && e < g.end())
            failures.add(
                std::string("cut inside an image or video, ") + family_name(f),
                "cut " + std::to_string(e) + " with max_chunk " + std::to_string(max_chunk) + "\n  " + describe(m));
    }
  }
  failures.report();
  EXPECT_EQ(layouts, 3 * 4 * kServingCases);
}

// Every chunk safe_chunk_ends gives is exact by the definition, and longer than max_chunk only
// where no exact cut lies within max_chunk of its start.
TEST(MaskRulesServing, SafeChunkEndsAreExactForEveryRuleAndPreset) {
  Failures failures;
  int chunkings = 0;
  for (int fi = 0; fi < kFamilies; ++fi) {
    const auto f = static_cast<Family>(fi);
    for (int i = 0; i < kServingCases; ++i) {
      const Model m = draw_model(f, seed_of(f, i, 0x77000000u));
      const std::vector<index_t> reach = reach_of(m);
      std::mt19937 gen(m.seed);
      for (const index_t max_chunk : {draw(gen, 1, 6), draw(gen, 1, 40)}) {
        ++chunkings;
        const std::string where = "max_chunk " + std::to_string(max_chunk) + "\n  " + describe(m);
        std::vector<index_t> ends;
        const std::string err = error_message([&] { ends = safe_chunk_ends(m.layout, m.policy, max_chunk); });
        if (err != "<no exception>") {
          failures.add(std::string("safe_chunk_ends threw, ") + family_name(f), err + ", " + where);
          continue;
        }
        if (ends.empty() || ends.back() != m.n) {
          failures.add(std::string("cuts do not end at the layout's end, ") + family_name(f), where);
          continue;
        }
        index_t s = 0;
        for (const index_t e : ends) {
          const std::string chunk = "chunk [" + std::to_string(s) + ", " + std::to_string(e) + "), ";
          if (e <= s) {
            failures.add(std::string("cuts not increasing, ") + family_name(f), chunk + where);
            break;
          }
          if (!exact_chunk(reach, s, e)) failures.add(std::string("inexact chunk, ") + family_name(f), chunk + where);
          if (e - s > max_chunk)
            for (index_t c = s + 1; c <= s + max_chunk; ++c)
              if (exact_chunk(reach, s, c)) {
                failures.add(std::string("chunk longer than max_chunk needlessly, ") + family_name(f),
                             chunk + "exact cut " + std::to_string(c) + " exists, " + where);
                break;
              }
          s = e;
        }
      }
    }
  }
  failures.report();
  EXPECT_EQ(chunkings, kFamilies * kServingCases * 2);
}

// ---- 6. Bad input ------------------------------------------------------------------------------------

SequenceLayout every_kind() {
  SequenceLayout layout;
  layout.add_text(3).add_image(4, 4).add_video(2, 3, 3).add_text(2).add_image(2, 3);  // 5 segments
  return layout;
}

std::string plan_error(const RegionPolicy& p) {
  const SequenceLayout layout = every_kind();
  return error_message([&] { make_plan(layout, p); });
}

TEST(MaskRulesBadInput, EvenSlidingWindowsAreRefusedNamingNattenAndOddSizes) {
  for (const Window2D& w : {Window2D::sliding(4, 3), Window2D::sliding(3, 2), Window2D::sliding(2, 2, 2, 1)}) {
    const std::string m = plan_error(RegionPolicy::structured(w));
    EXPECT_TRUE(contains(m, "NATTEN") && contains(m, "odd")) << m;
  }
  for (const Window3D& w : {Window3D::sliding(2, 3, 3), Window3D::sliding(3, 4, 3), Window3D::sliding(3, 3, 6)}) {
    const std::string m = plan_error(RegionPolicy::video_windows(w));
    EXPECT_TRUE(contains(m, "NATTEN") && contains(m, "odd")) << m;
  }
  // Not centred, so any size: a causal time axis, and partitioned windows.
  EXPECT_EQ(plan_error(RegionPolicy::video_windows(Window3D::sliding(2, 3, 3).causal_in_time())), "<no exception>");
  EXPECT_EQ(plan_error(RegionPolicy::structured(Window2D::partitioned(2, 4), Window3D::partitioned(2, 2, 4))),
            "<no exception>");
  // Sizes and dilations must be positive.
  EXPECT_TRUE(contains(plan_error(RegionPolicy::structured(Window2D::partitioned(0, 2))), "must be positive"));
  EXPECT_TRUE(
      contains(plan_error(RegionPolicy::structured(Window2D::sliding(3, 3, 0, 1))), "dilation must be positive"));
  EXPECT_TRUE(contains(plan_error(RegionPolicy::video_windows(Window3D::partitioned(1, 0, 2))), "must be positive"));
  EXPECT_TRUE(contains(plan_error(RegionPolicy::video_windows(Window3D::sliding(1, 1, 1).dilated(1, 0, 1))),
                       "dilation must be positive"));
}

TEST(MaskRulesBadInput, WindowsOnRegionsTheyDoNotFitAreRefusedAtMakePlan) {
  auto with = [](Region r, Rule rule) {
    RegionPolicy p = RegionPolicy::decoder_causal();
    p.set(r, std::move(rule));
    return plan_error(p);
  };
  std::string m = with(Region::within(kText), Window2D::sliding(3, 3));
  EXPECT_TRUE(contains(m, "2-D window applies to an image's own keys, not to text->text")) << m;
  m = with(Region::within(kVideo), Window2D::sliding(3, 3));
  EXPECT_TRUE(contains(m, "not to video->video") && contains(m, "Window3D")) << m;
  m = with(Region::across(kText, kImage), Window2D::partitioned(2, 2));
  EXPECT_TRUE(contains(m, "not to text->image of another segment")) << m;
  m = with(Region::across(kImage, kImage), Window2D::partitioned(2, 2));  // the other image
  EXPECT_TRUE(contains(m, "not to image->image of another segment")) << m;
  m = with(Region::within(kImage), Window3D::sliding(1, 3, 3));
  EXPECT_TRUE(contains(m, "3-D window applies to a video's own keys, not to image->image")) << m;
  m = with(Region::across(kVideo, kText), Window3D::sliding(1, 3, 3));
  EXPECT_TRUE(contains(m, "not to video->text of another segment")) << m;
  // Through per-segment overrides too: a window on another segment's keys.
  RegionPolicy p = RegionPolicy::decoder_causal();
  p.set_segments(1, 4, Window2D::sliding(3, 3));  // image 1 -> image 4
  m = plan_error(p);
  EXPECT_TRUE(contains(m, "not to image->image of another segment")) << m;
  p = RegionPolicy::decoder_causal();
  p.set_segments(0, 0, Window3D::partitioned(1, 2, 2));
  m = plan_error(p);
  EXPECT_TRUE(contains(m, "not to text->text")) << m;
  // MultimodalAttention refuses it with the same words.
  m = error_message([&] { MultimodalAttention<float>(make_config(1, 1, 4), every_kind(), p); });
  EXPECT_TRUE(contains(m, "not to text->text")) << m;
}

TEST(MaskRulesBadInput, BadBandsChunksSinksOverridesAndPredicatesAreRefused) {
  auto everywhere = [](Rule r) {
    RegionPolicy p;
    p.set_all(r);
    return plan_error(p);
  };
  std::string m = everywhere(Rule::band(-1, 0));
  EXPECT_TRUE(contains(m, "a 1-D band needs left, right >= 0, got (-1, 0)")) << m;
  m = everywhere(Rule::band(2, -3));
  EXPECT_TRUE(contains(m, "got (2, -3)")) << m;
  m = everywhere(Rule::chunked(0));
  EXPECT_TRUE(contains(m, "chunked-local rule needs chunk > 0, got 0")) << m;
  m = everywhere(Rule::chunked(-4));
  EXPECT_TRUE(contains(m, "got -4")) << m;
  m = everywhere(Rule::predicate(nullptr));
  EXPECT_TRUE(contains(m, "custom rule needs a predicate")) << m;
  m = error_message([] { RegionPolicy::decoder_causal().with_sinks(-1); });
  EXPECT_TRUE(contains(m, "number of sink tokens must be non-negative, got -1")) << m;
  // Overrides: negative indices at once, indices past the layout when it is met.
  m = error_message([] { RegionPolicy().set_segments(-1, 0, Rule::full()); });
  EXPECT_TRUE(contains(m, "segment indices must be non-negative, got -1, 0")) << m;
  RegionPolicy p = RegionPolicy::decoder_causal();
  p.set_segments(0, 5, Rule::full());
  m = plan_error(p);
  EXPECT_TRUE(contains(m, "override names segments 0 -> 5 but the layout has 5")) << m;
  p = RegionPolicy::decoder_causal();
  p.set_segments(9, 1, Rule::full());
  m = error_message([&] { safe_chunk_ends(every_kind(), p, 4); });
  EXPECT_TRUE(contains(m, "override names segments 9 -> 1")) << m;
  m = error_message([] { safe_chunk_ends(every_kind(), RegionPolicy::decoder_causal(), 0); });
  EXPECT_TRUE(contains(m, "max_chunk must be positive, got 0")) << m;
  // The table is checked whole: a bad rule on a region this layout never meets is refused too.
  RegionPolicy unused = RegionPolicy::decoder_causal();
  unused.set(Region::across(kVideo, kVideo), Rule::band(-1, 0));  // one video only
  m = plan_error(unused);
  EXPECT_TRUE(contains(m, "video->other video") && contains(m, "got (-1, 0)")) << m;
}

}  // namespace
}  // namespace mmattn::test
