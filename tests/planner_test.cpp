// Property tests of make_plan over hundreds of random layouts, policies, tile sizes, image tilings
// and query ranges: every property is checked against the predicate allowed(q, k) pair by pair.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "mmattn/kernel/block_mask.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

// ---- Random cases -------------------------------------------------------------------------------

// The same 400 cases over the same families and axes in Debug + sanitizer builds, with somewhat
// shorter sequences there (random_cases.hpp; about 3 s there, 0.3 s optimised).
constexpr int kCases = 400;
using cases::PlanCase;

// ---- The checker --------------------------------------------------------------------------------

// Failures by property letter: how many cases failed it and the first message.
struct Failures {
  std::map<char, std::pair<int, std::string>> by_property;
  void add(char property, const std::string& what) {
    auto& [count, first] = by_property[property];
    if (count++ == 0) first = what;
  }
};

class PlanChecker {
 public:
  PlanChecker(const PlanCase& c, const Plan& plan) : c_(c), plan_(plan), n_(c.layout.size()) {
    qb_ = plan.query_begin;
    nq_ = plan.query_end - plan.query_begin;
    allowed_.resize(static_cast<size_t>(nq_ * n_));
    for (index_t q = qb_; q < plan.query_end; ++q)
      for (index_t k = 0; k < n_; ++k) allowed_[idx(q, k)] = allowed(c.layout, c.policy, q, k);
  }

  // Records at most one failure per property for this case.
  void run(Failures& failures) {
    std::map<char, std::string> first;
    auto fail = [&](char p, const std::string& what) {
      if (!first.count(p)) first[p] = what;
    };
    check_structure(fail);
    if (!first.count('s')) {  // the rest indexes through the structure
      check_queries(fail);
      check_blocks(fail);
      check_stats(fail);
      check_order(fail);
    }
    for (const auto& [p, what] : first) failures.add(p, what + "\n  " + cases::describe(c_));
  }

 private:
  size_t idx(index_t q, index_t k) const { return static_cast<size_t>((q - qb_) * n_ + k); }
  bool ok(index_t q, index_t k) const { return allowed_[idx(q, k)] != 0; }

  template <class Fail>
  void check_structure(Fail& fail) {
    const Plan& p = plan_;
    if (p.query_begin != c_.options.query_begin) fail('s', "query_begin differs from the options");
    const index_t want_end = c_.options.query_end < 0 ? n_ : c_.options.query_end;
    if (p.query_end != want_end) fail('s', "query_end " + std::to_string(p.query_end));
    if (p.key_tokens != n_) fail('s', "key_tokens " + std::to_string(p.key_tokens));
    if (p.tiles.query != c_.options.tiles.query || p.tiles.key != c_.options.tiles.key ||
        p.tiles.window_query != c_.options.tiles.window_query)
      fail('s', "tiles differ");
    index_t next_block = 0;
    for (size_t t = 0; t < p.query_tiles.size(); ++t) {
      const QueryTile& tile = p.query_tiles[t];
      if (tile.block_begin != next_block || tile.block_end < tile.block_begin ||
          tile.block_end > static_cast<index_t>(p.blocks.size()))
        fail('s', "tile " + std::to_string(t) + " block range [" + std::to_string(tile.block_begin) + ", " +
                      std::to_string(tile.block_end) + ") does not continue the previous tile's");
      next_block = tile.block_end;
      if (!rect_ok(tile.queries, qb_, p.query_end)) fail('s', "tile " + std::to_string(t) + " queries malformed");
    }
    if (next_block != static_cast<index_t>(p.blocks.size())) fail('s', "blocks not covered by tiles");
    for (size_t b = 0; b < p.blocks.size(); ++b)
      if (!rect_ok(p.blocks[b].keys, 0, n_)) fail('s', "block " + std::to_string(b) + " keys malformed");
  }

  static bool rect_ok(const TokenRect& r, index_t lo, index_t hi) {
    if (r.rows < 1 || r.cols < 1) return false;
    if (r.rows > 1 && r.pitch < r.cols) return false;
    return r.first() >= lo && r.last() < hi;
  }

  // (a) tiles partition the query range; (e) query tiles within size; tiles lie in their segment.
  template <class Fail>
  void check_queries(Fail& fail) {
    std::vector<int> seen(static_cast<size_t>(nq_), 0);
    for (size_t t = 0; t < plan_.query_tiles.size(); ++t) {
      const QueryTile& tile = plan_.query_tiles[t];
      if (tile.queries.size() > plan_.tiles.query)
        fail('e', "query tile " + std::to_string(t) + " holds " + std::to_string(tile.queries.size()) +
                      " queries > tiles.query " + std::to_string(plan_.tiles.query) + " (start " +
                      std::to_string(tile.queries.start) + ", " + std::to_string(tile.queries.rows) + "x" +
                      std::to_string(tile.queries.cols) + ", pitch " + std::to_string(tile.queries.pitch) + ")");
      for (index_t i = 0; i < tile.queries.size(); ++i) {
        const index_t q = tile.queries.at(i);
        ++seen[static_cast<size_t>(q - qb_)];
        if (c_.layout.segment_index(q) != tile.segment)
          fail('a', "query " + std::to_string(q) + " is not in its tile's segment " + std::to_string(tile.segment));
      }
    }
    for (index_t q = qb_; q < plan_.query_end; ++q)
      if (seen[static_cast<size_t>(q - qb_)] != 1)
        fail('a', "query " + std::to_string(q) + " is in " + std::to_string(seen[static_cast<size_t>(q - qb_)]) +
                      " tiles");
  }

  // (b) full blocks hold only allowed pairs; (c) allowed pairs in exactly one block of their tile;
  // (d) no empty block; (e) key blocks within size; (f) partial masks reproduce the predicate,
  // as the kernel applies them; a block's key segment holds its keys.
  template <class Fail>
  void check_blocks(Fail& fail) {
    std::vector<int> key_count(static_cast<size_t>(n_));
    std::vector<float> scores;
    std::vector<KeyRun> runs;
    for (size_t t = 0; t < plan_.query_tiles.size(); ++t) {
      const QueryTile& tile = plan_.query_tiles[t];
      const TokenRect& qs = tile.queries;
      std::mt19937 rng(static_cast<unsigned>(t));
      check_piece_ranges(tile, rng, fail);
      std::fill(key_count.begin(), key_count.end(), 0);
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        const KeyBlock& block = plan_.blocks[static_cast<size_t>(b)];
        const TokenRect& ks = block.keys;
        const std::string where = "tile " + std::to_string(t) + " (queries " + std::to_string(qs.first()) + ".." +
                                  std::to_string(qs.last()) + ") block " + std::to_string(b) + " (keys " +
                                  std::to_string(ks.first()) + ".." + std::to_string(ks.last()) + ", " +
                                  (block.full ? "full" : "partial") + ")";
        if (ks.size() > plan_.tiles.key && !(block.full && ks.rows == 1))
          fail('e', where + " holds " + std::to_string(ks.size()) + " keys > tiles.key and is not a full run");
        check_pieces(block, where, fail);
        const index_t key_segment = c_.layout.segment_index(ks.first());
        if (key_segment != block.key_segment)
          fail('g', where + " names key segment " + std::to_string(block.key_segment) + ", its keys are in " +
                        std::to_string(key_segment));

        if (!block.full) {  // the kernel's own masking of this block, on a zero score tile
          scores.assign(static_cast<size_t>(qs.size() * ks.size()), 0.0f);
          kernel::RowMap map(scores.data(), qs.size(), ks.size());
          kernel::apply_block_mask(map, qs, ks, plan_.mask(tile, block), runs);
        }
        index_t allowed_pairs = 0;
        for (index_t j = 0; j < ks.size(); ++j) {
          const index_t k = ks.at(j);
          ++key_count[static_cast<size_t>(k)];
          if (c_.layout.segment_index(k) != key_segment) fail('g', where + " spans two key segments");
          for (index_t i = 0; i < qs.size(); ++i) {
            const index_t q = qs.at(i);
            const bool a = ok(q, k);
            allowed_pairs += a;
            const std::string pair = where + " pair (q " + std::to_string(q) + ", k " + std::to_string(k) + ")";
            if (block.full && !a) fail('b', pair + " is in a full block but not allowed");
            if (!block.full) {
              const bool kernel_keeps = scores[static_cast<size_t>(i * ks.size() + j)] == 0.0f;
              if (kernel_keeps != a) fail('f', pair + ": kernel mask gives " + std::to_string(kernel_keeps));
            }
          }
        }
        if (allowed_pairs == 0) fail('d', where + " has no allowed pair");
      }
      for (index_t i = 0; i < qs.size(); ++i) {
        const index_t q = qs.at(i);
        for (index_t k = 0; k < n_; ++k) {
          const int count = key_count[static_cast<size_t>(k)];
          if (ok(q, k) && count != 1)
            fail('c', "allowed pair (q " + std::to_string(q) + ", k " + std::to_string(k) + ") is in " +
                          std::to_string(count) + " blocks of tile " + std::to_string(t));
        }
      }
    }
  }

  // (e) the pieces a kernel runs a block as: at most tiles.key keys each, the block's keys in
  // order, each piece whole tiles.key from the block's start but the last; and for_each_piece
  // over a tile's sub-ranges visits exactly those pieces, in order.
  template <class Fail>
  void check_pieces(const KeyBlock& block, const std::string& where, Fail& fail) {
    const index_t key = plan_.tiles.key, n = block.keys.size(), want = (n + key - 1) / key;
    if (plan_.pieces(block) != want) fail('e', where + ": " + std::to_string(plan_.pieces(block)) + " pieces");
    index_t i = 0;
    for (index_t j = 0; j < plan_.pieces(block); ++j) {
      const KeyBlock p = plan_.piece(block, j);
      if (p.full != block.full || p.key_segment != block.key_segment || p.keys.size() != std::min(key, n - j * key))
        fail('e', where + ": piece " + std::to_string(j) + " has the wrong size or class");
      for (index_t x = 0; x < p.keys.size() && i < n; ++x, ++i)
        if (p.keys.at(x) != block.keys.at(i)) fail('e', where + ": piece " + std::to_string(j) + " keys differ");
    }
    if (i != n) fail('e', where + ": pieces hold " + std::to_string(i) + " keys");
  }

  template <class Fail>
  void check_piece_ranges(const QueryTile& tile, std::mt19937& rng, Fail& fail) {
    std::vector<TokenRect> all;
    for (index_t b = tile.block_begin; b < tile.block_end; ++b)
      for (index_t j = 0; j < plan_.pieces(plan_.blocks[static_cast<size_t>(b)]); ++j)
        all.push_back(plan_.piece(plan_.blocks[static_cast<size_t>(b)], j).keys);
    const auto n = static_cast<index_t>(all.size());
    if (plan_.pieces(tile) != n) fail('e', "a tile's piece count");
    for (int trial = 0; trial < 3; ++trial) {
      index_t a = std::uniform_int_distribution<index_t>(0, n)(rng), e = std::uniform_int_distribution<index_t>(0, n)(rng);
      if (a > e) std::swap(a, e);
      const PieceRange range = trial == 0 ? PieceRange{} : PieceRange{a, e};
      const index_t first = trial == 0 ? 0 : a, last = trial == 0 ? n : e;
      index_t at = first;
      plan_.for_each_piece(tile, range, [&](index_t, const KeyBlock& p) {
        if (at >= last || !(p.keys == all[static_cast<size_t>(at)]))
          fail('e', "for_each_piece over [" + std::to_string(first) + ", " + std::to_string(last) + ") visits piece " +
                        std::to_string(at) + " wrongly");
        ++at;
      });
      if (at != last) fail('e', "for_each_piece stopped at " + std::to_string(at) + " of " + std::to_string(last));
    }
  }

  // (g) plan_stats against brute force, under the layout and rules the plan carries.
  template <class Fail>
  void check_stats(Fail& fail) {
    const PlanStats st = plan_stats(plan_);
    std::array<index_t, kRegions> allowed_by{}, computed_by{}, full_by{}, full_blocks{}, partial_blocks{},
        query_tokens{};
    index_t image_queries = 0;
    for (index_t q = qb_; q < plan_.query_end; ++q) {
      const index_t qs = c_.layout.segment_index(q);
      image_queries += c_.layout.segment(qs).is_image();
      std::array<bool, kRegions> meets{};
      for (index_t k = 0; k < n_; ++k) {
        const auto pair = static_cast<size_t>(region_of(c_.layout, qs, c_.layout.segment_index(k)).index());
        meets[pair] = true;
        allowed_by[pair] += ok(q, k);
      }
      for (int p = 0; p < kRegions; ++p) query_tokens[static_cast<size_t>(p)] += meets[static_cast<size_t>(p)];
    }
    index_t computed_total = 0;
    for (const QueryTile& tile : plan_.query_tiles)
      for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
        const KeyBlock& block = plan_.blocks[static_cast<size_t>(b)];
        const auto pair = static_cast<size_t>(region_of(c_.layout, tile.segment, block.key_segment).index());
        const index_t pairs = tile.queries.size() * block.keys.size();
        computed_by[pair] += pairs;
        computed_total += pairs;
        (block.full ? full_blocks : partial_blocks)[pair] += (block.keys.size() + plan_.tiles.key - 1) / plan_.tiles.key;
        if (block.full) full_by[pair] += pairs;
      }
    index_t allowed_total = 0;
    for (int p = 0; p < kRegions; ++p) {
      const auto i = static_cast<size_t>(p);
      const RegionStats& rs = st.regions[i];
      const std::string region = Region::at(p).name();
      auto expect = [&](const char* field, index_t got, index_t want) {
        if (got != want)
          fail('g', region + " " + field + " = " + std::to_string(got) + ", brute force " + std::to_string(want));
      };
      expect("allowed_pairs", rs.allowed_pairs, allowed_by[i]);
      expect("computed_pairs", rs.computed_pairs, computed_by[i]);
      expect("full_pairs", rs.full_pairs, full_by[i]);
      expect("full_blocks", rs.full_blocks, full_blocks[i]);
      expect("partial_blocks", rs.partial_blocks, partial_blocks[i]);
      expect("query_tokens", rs.query_tokens, query_tokens[i]);
      allowed_total += allowed_by[i];
    }
    if (st.allowed_pairs() != allowed_total) fail('g', "allowed_pairs() total");
    if (st.computed_pairs() != computed_total) fail('g', "computed_pairs() total");
    if (st.query_tokens != nq_ || st.key_tokens != n_) fail('g', "query/key token counts");
    if (st.image_query_tokens() != image_queries) fail('g', "image query token count");
  }

  // (h) tile_order is a permutation by descending computed_pairs, which are queries x keys.
  template <class Fail>
  void check_order(Fail& fail) {
    const auto tiles = plan_.query_tiles.size();
    if (plan_.tile_order.size() != tiles) return fail('h', "tile_order has the wrong length");
    std::vector<int> seen(tiles, 0);
    for (const index_t t : plan_.tile_order) {
      if (t < 0 || static_cast<size_t>(t) >= tiles) return fail('h', "tile_order entry out of range");
      ++seen[static_cast<size_t>(t)];
    }
    if (std::count(seen.begin(), seen.end(), 1) != static_cast<long>(tiles)) fail('h', "tile_order is no permutation");
    for (size_t t = 0; t < tiles; ++t) {
      const QueryTile& tile = plan_.query_tiles[t];
      index_t pairs = 0;
      for (index_t b = tile.block_begin; b < tile.block_end; ++b)
        pairs += tile.queries.size() * plan_.blocks[static_cast<size_t>(b)].keys.size();
      if (pairs != tile.computed_pairs) fail('h', "tile " + std::to_string(t) + " computed_pairs is wrong");
    }
    for (size_t i = 1; i < tiles; ++i)
      if (plan_.query_tiles[static_cast<size_t>(plan_.tile_order[i - 1])].computed_pairs <
          plan_.query_tiles[static_cast<size_t>(plan_.tile_order[i])].computed_pairs)
        fail('h', "tile_order is not by descending computed_pairs at " + std::to_string(i));
  }

  const PlanCase& c_;
  const Plan& plan_;
  index_t n_, qb_ = 0, nq_ = 0;
  std::vector<char> allowed_;
};

const char* property_name(char p) {
  switch (p) {
    case 's': return "plan structure (ranges, rects, block ranges)";
    case 'a': return "(a) query tiles partition the query range";
    case 'b': return "(b) full blocks hold only allowed pairs";
    case 'c': return "(c) every allowed pair in exactly one block of its tile";
    case 'd': return "(d) no empty block";
    case 'e': return "(e) tile and block sizes";
    case 'f': return "(f) partial masks reproduce the predicate";
    case 'g': return "(g) plan_stats and region tags";
    case 'h': return "(h) tile_order and tile costs";
  }
  return "?";
}

TEST(Planner, PropertiesOverRandomLayoutsPoliciesTilesAndRanges) {
  Failures failures;
  int planned = 0, long_blocks = 0;
  std::map<std::string, int> families;
  for (int i = 0; i < kCases; ++i) {
    const PlanCase c = cases::random_plan_case(0x5eed0000u + static_cast<std::uint32_t>(i));
    Plan plan;
    const std::string err = error_message([&] { plan = make_plan(c.layout, c.policy, c.options); });
    if (err != "<no exception>") {
      failures.add('x', "make_plan threw: " + err + "\n  " + cases::describe(c));
      continue;
    }
    ++planned;
    ++families[c.family];
    for (const KeyBlock& b : plan.blocks) long_blocks += b.keys.size() > plan.tiles.key;
    PlanChecker(c, plan).run(failures);
  }
  EXPECT_EQ(planned, kCases);
  EXPECT_GT(long_blocks, kCases / 10);  // runs longer than a key tile were drawn and checked
  for (const auto& [family, count] : families) EXPECT_GT(count, 10) << family;  // every family was drawn
  for (const auto& [p, entry] : failures.by_property)
    ADD_FAILURE() << (p == 'x' ? "make_plan" : property_name(p)) << ": failed in " << entry.first << " of " << kCases
                  << " cases; first:\n  " << entry.second;
}

// The same properties over hand-picked corners: 1 x 1 images, tiles of 1, windows of 1, a range of one
// query, and grids exactly a tile or a window wide.
TEST(Planner, PropertiesOnCorners) {
  std::vector<PlanCase> corners;
  auto add = [&](SequenceLayout layout, RegionPolicy policy, TileSizes tiles, ImageTiling tiling, index_t qb = 0,
                 index_t qe = -1) {
    PlanCase c;
    c.family = "corner " + std::to_string(corners.size());
    c.layout = std::move(layout);
    c.policy = std::move(policy);
    c.options = {tiles, tiling, qb, qe, /*all_keys_present=*/true};
    corners.push_back(std::move(c));
  };
  const ImageTiling tilings[] = {ImageTiling::automatic, ImageTiling::row_strips, ImageTiling::patches};
  for (const ImageTiling t : tilings) {
    SequenceLayout one;
    one.add_image(1, 1);
    add(one, RegionPolicy::structured(Window2D::sliding(7, 7)), {1, 1}, t);
    add(one, RegionPolicy::dense(), {64, 128}, t);
    SequenceLayout mixed;
    mixed.add_text(1).add_image(8, 8).add_text(3).add_image(3, 8).add_image(1, 9).add_text(2);
    const index_t n = mixed.size();
    for (const RegionPolicy& p :
         {RegionPolicy::structured(Window2D::sliding(1, 1)), RegionPolicy::structured(Window2D::sliding(3, 3, 3, 3)),
          RegionPolicy::qwen25vl_window(8), RegionPolicy::decoder_causal(), RegionPolicy::bidirectional_images(),
          RegionPolicy::gemma3_local(5), RegionPolicy::llama4_chunked(7), RegionPolicy::decoder_causal().with_sinks(2)}) {
      add(mixed, p, {1, 1}, t);
      add(mixed, p, {8, 8}, t);
      add(mixed, p, {64, 9}, t);
      add(mixed, p, {7, 128}, t, 20, 21);  // one query, inside the first image
      add(mixed, p, {5, 3}, t, n - 1);     // decode: the last token only
      add(mixed, p, {16, 16}, t, 30, 60);  // a chunk cutting image rows
    }
  }
  Failures failures;
  for (const PlanCase& c : corners) {
    SCOPED_TRACE(cases::describe(c));
    Plan plan;
    ASSERT_NO_THROW(plan = make_plan(c.layout, c.policy, c.options));
    PlanChecker(c, plan).run(failures);
  }
  for (const auto& [p, entry] : failures.by_property)
    ADD_FAILURE() << property_name(p) << ": failed in " << entry.first << " of " << corners.size()
                  << " cases; first:\n  " << entry.second;
}

// The smallest case of (e): a query range ending inside an image's second row strip. The strip's
// whole first row is merged into the preceding (whole) strip, giving a tile of 6 > 4 queries.
TEST(Planner, QueryRangeCuttingAStripKeepsTilesWithinTheQueryTileSize) {
  SequenceLayout layout;
  layout.add_image(4, 2);  // strips of 2 rows x 2 cols at tiles.query = 4
  PlanOptions options;
  options.tiles = {4, 8};
  options.image_tiling = ImageTiling::row_strips;
  options.query_end = 7;
  options.all_keys_present = true;
  const Plan plan = make_plan(layout, RegionPolicy::dense(), options);
  for (const QueryTile& tile : plan.query_tiles)
    EXPECT_LE(tile.queries.size(), options.tiles.query)
        << "tile at " << tile.queries.start << ": " << tile.queries.rows << "x" << tile.queries.cols;
  EXPECT_LE(plan.max_query_tile(), options.tiles.query);
}

TEST(Planner, BadInputIsRefusedWithAMessage) {
  SequenceLayout layout;
  layout.add_text(3).add_image(2, 3).add_text(4);  // 13 tokens
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  auto plan_error = [&](PlanOptions o) { return error_message([&] { make_plan(layout, policy, o); }); };
  PlanOptions o;
  o.tiles = {0, 8};
  std::string m = plan_error(o);
  EXPECT_TRUE(contains(m, "tile sizes must be positive, got 0 x 8")) << m;
  o.tiles = {8, 0};
  m = plan_error(o);
  EXPECT_TRUE(contains(m, "tile sizes must be positive, got 8 x 0")) << m;
  o.tiles = {-4, 8};
  m = plan_error(o);
  EXPECT_TRUE(contains(m, "tile sizes must be positive")) << m;

  o = {};
  o.query_begin = 5, o.query_end = 5;  // empty
  m = plan_error(o);
  EXPECT_TRUE(contains(m, "query range [5, 5) must be a non-empty part of [0, 13)")) << m;
  o.query_begin = 6, o.query_end = 4;  // reversed
  m = plan_error(o);
  EXPECT_TRUE(contains(m, "query range [6, 4)")) << m;
  o.query_begin = 13, o.query_end = -1;  // begins at the end: empty
  m = plan_error(o);
  EXPECT_TRUE(contains(m, "query range [13, 13)")) << m;
  o.query_begin = -1, o.query_end = 4;  // before the layout
  m = plan_error(o);
  EXPECT_TRUE(contains(m, "query range [-1, 4)")) << m;
  o.query_begin = 2, o.query_end = 14;  // past the layout
  m = plan_error(o);
  EXPECT_TRUE(contains(m, "query range [2, 14) must be a non-empty part of [0, 13)")) << m;

  // The class refuses the same options when it is built.
  PlanOptions bad;
  bad.tiles = {0, 0};
  m = error_message([&] { MultimodalAttention<float>(make_config(2, 1, 8), layout, policy, bad); });
  EXPECT_TRUE(contains(m, "tile sizes must be positive")) << m;
  bad = {};
  bad.query_begin = 20;
  m = error_message([&] { MultimodalAttention<float>(make_config(2, 1, 8), layout, policy, bad); });
  EXPECT_TRUE(contains(m, "query range [20, 13)")) << m;
}

// One plan serves every layer: several "layers" with different Q/K/V through one object match the
// reference, and what the object runs is make_plan's plan for its inputs (the same tiles, blocks,
// block kinds and work order), not one of its own making.
TEST(Planner, OnePlanServesEveryLayer) {
  SequenceLayout layout;
  layout.add_text(5).add_image(6, 7).add_text(4).add_image(4, 5).add_text(9);
  const AttentionConfig cfg = make_config(4, 2, 24);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 5));
  PlanOptions options;
  options.tiles = {16, 24};
  options.query_begin = 3;
  const MultimodalAttention<float> mm(cfg, layout, policy, options);
  const index_t nq = mm.plan().num_queries(), n = layout.size();
  for (std::uint32_t layer = 0; layer < 4; ++layer) {
    SCOPED_TRACE("layer " + std::to_string(layer));
    const Buffers b = make_qkv(cfg, nq, n, 7001 + 97 * layer);
    Tensor out(nq, cfg.num_heads, cfg.head_dim);  // NaN until written
    Lse lse(nq, cfg.num_heads);
    mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);
    const Result ref = run_reference(cfg, b, mm.predicate(), mm.plan().query_begin);
    EXPECT_LE(max_relative_error(out, ref.out), 1e-5);
    EXPECT_LE(max_lse_error(lse, ref.lse), 1e-5);
  }
  const Plan want = make_plan(layout, policy, options);
  const Plan& used = mm.plan();
  EXPECT_EQ(used.query_begin, want.query_begin);
  EXPECT_EQ(used.query_end, want.query_end);
  EXPECT_EQ(used.tile_order, want.tile_order);
  ASSERT_EQ(used.query_tiles.size(), want.query_tiles.size());
  for (size_t t = 0; t < want.query_tiles.size(); ++t) {
    const QueryTile &a = used.query_tiles[t], &b = want.query_tiles[t];
    EXPECT_TRUE(a.queries == b.queries) << "tile " << t;
    ASSERT_EQ(a.block_end - a.block_begin, b.block_end - b.block_begin) << "tile " << t;
    for (index_t i = 0; i < b.block_end - b.block_begin; ++i) {
      const KeyBlock& x = used.blocks[static_cast<size_t>(a.block_begin + i)];
      const KeyBlock& y = want.blocks[static_cast<size_t>(b.block_begin + i)];
      EXPECT_TRUE(x.keys == y.keys && x.full == y.full && x.key_segment == y.key_segment)
          << "tile " << t << ", block " << i;
    }
  }
}

// Blocks a caller chooses (the approximations' way) are kept as given, in order; tiles dropped by
// truncate() take their blocks with them; finish() orders the tiles by cost.
TEST(Planner, BuilderKeepsGivenBlocksAndOrdersTilesByCost) {
  SequenceLayout layout;
  layout.add_text(40);
  PlanBuilder builder(layout, /*policy=*/nullptr, TileSizes{8, 8}, 0, 40, 40);
  const std::vector<KeyBlock> few = {{TokenRect::span(0, 8), true, 0}};
  const std::vector<KeyBlock> many = {{TokenRect::span(16, 8), true, 0}, {TokenRect::span(8, 4), true, 0}};
  builder.add_query_tile_with(TokenRect::span(0, 8), 0, few);
  builder.add_query_tile_with(TokenRect::span(8, 8), 0, many);
  builder.add_query_tile_with(TokenRect::span(16, 8), 0, many);
  builder.truncate(2);
  EXPECT_EQ(builder.plan().blocks.size(), 3u);
  builder.add_query_tile_with(TokenRect::span(16, 8), 0, {});  // sees nothing
  const Plan plan = builder.finish();
  ASSERT_EQ(plan.query_tiles.size(), 3u);
  ASSERT_EQ(plan.blocks.size(), 3u);
  EXPECT_EQ(plan.blocks[1].keys.start, 16);  // as given, not sorted
  EXPECT_EQ(plan.blocks[2].keys.start, 8);
  EXPECT_EQ(plan.query_tiles[0].computed_pairs, 8 * 8);
  EXPECT_EQ(plan.query_tiles[1].computed_pairs, 8 * 12);
  EXPECT_EQ(plan.query_tiles[2].computed_pairs, 0);
  EXPECT_EQ(plan.tile_order, (std::vector<index_t>{1, 0, 2}));
  EXPECT_EQ(plan.key_tokens, 40);
  PlanBuilder no_rules(layout, /*policy=*/nullptr, TileSizes{8, 8}, 0, 40, 40);
  EXPECT_TRUE(contains(error_message([&] { no_rules.add_query_tile(TokenRect::span(0, 8), 0); }), "without rules"));
  // Longer than tiles.key: only a full run of positions, which the kernels cut into pieces.
  no_rules.add_query_tile_with(TokenRect::span(0, 8), 0, {{TokenRect::span(0, 20), true, 0}});
  const std::string refused = "keys > tiles.key (8) must be full and one run of positions";
  EXPECT_TRUE(contains(error_message([&] {
    no_rules.add_query_tile_with(TokenRect::span(0, 8), 0, {{TokenRect::span(0, 20), false, 0}});
  }), refused));
  EXPECT_TRUE(contains(error_message([&] {
    no_rules.add_query_tile_with(TokenRect::span(0, 8), 0, {{TokenRect{0, 10, 2, 5}, true, 0}});
  }), refused));
  // A plan filled by hand is refused where its pieces are counted, before a kernel runs it.
  Plan by_hand = no_rules.finish();
  EXPECT_EQ(by_hand.pieces(by_hand.blocks[0]), 3);
  by_hand.blocks[0].full = false;
  EXPECT_TRUE(contains(error_message([&] { by_hand.pieces(by_hand.query_tiles[0]); }), refused));
}

// One default tile size: what a plan gets without options is what the kernels are built for.
TEST(Planner, DefaultTileSizesAreTheKernelDefaults) {
  const TileSizes plain{}, kernel = DefaultTiles::sizes();
  EXPECT_EQ(plain.query, kernel.query);
  EXPECT_EQ(plain.key, kernel.key);
  EXPECT_EQ(plain.window_query, kernel.window_query);
  SequenceLayout layout;
  layout.add_image(4, 4).add_text(3);
  const Plan plan = make_plan(layout, RegionPolicy::structured());
  EXPECT_EQ(plan.tiles.query, kernel.query);
  EXPECT_EQ(plan.tiles.key, kernel.key);
  EXPECT_EQ(plan.tiles.window_query, kernel.window_query);
}

}  // namespace
}  // namespace mmattn::test
