// libFuzzer target: random layouts, rules, windows, sinks, overrides, tiles and query ranges into
// make_plan. Either mmattn::Error, or a plan whose invariants hold against the predicate pair by
// pair (every allowed pair in exactly one block of its tile, full blocks only allowed pairs, no
// empty block, exact counts), and safe_chunk_ends() cuts exact chunks. Never a crash or UB.

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "fuzz_input.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"

namespace {

using namespace mmattn;

Rule any_rule(fuzz::Input& in) {
  switch (in.in(0, 8)) {
    case 0: return Rule::none();
    case 1: return Rule::full();
    case 2: return Rule::causal();
    case 3: return Rule::band(in.in(-1, 20), in.in(0, 20));
    case 4: return Rule::chunked(in.in(0, 30));
    case 5: {
      Window2D w = in.flip() ? Window2D::sliding(in.in(0, 9), in.in(0, 9), in.in(0, 3), in.in(1, 3))
                             : Window2D::partitioned(in.in(1, 9), in.in(1, 9));
      return in.flip() ? Rule(w.and_causal()) : Rule(w);
    }
    case 6: {
      Window3D w = in.flip() ? Window3D::sliding(in.in(1, 5), in.in(1, 7), in.in(1, 7))
                             : Window3D::partitioned(in.in(1, 4), in.in(1, 6), in.in(1, 6));
      w = w.dilated(in.in(1, 3), in.in(1, 3), in.in(1, 3));
      return in.flip() ? Rule(w.causal_in_time()) : Rule(w);
    }
    case 7: return DilatedBandRule{in.in(0, 8), in.in(0, 8), in.in(1, 4)};
    default: {
      const index_t m = in.in(1, 5);
      return Rule::predicate([m](index_t q, index_t k) { return (q + 2 * k) % m == 0 || k == q; });
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  SequenceLayout layout;
  RegionPolicy policy;
  PlanOptions options;
  try {
    for (index_t s = in.in(1, 5); s > 0; --s) {
      switch (in.in(0, 2)) {
        case 0: layout.add_text(in.in(0, 40)); break;
        case 1: layout.add_image(in.in(0, 9), in.in(1, 9)); break;
        default: layout.add_video(in.in(1, 4), in.in(1, 5), in.in(1, 5)); break;
      }
    }
    for (int i = 0; i < kRegions; ++i) policy.set(Region::at(i), any_rule(in));
    if (in.flip()) policy.with_sinks(in.in(-1, 6));
    if (in.flip()) policy.set_segments(in.in(0, 5), in.in(0, 5), any_rule(in));
    options.tiles = {in.in(0, 40), in.in(0, 40), in.in(0, 20)};
    options.image_tiling = static_cast<ImageTiling>(in.in(0, 2));
    options.query_begin = in.in(0, layout.size());
    options.query_end = in.flip() ? -1 : in.in(0, layout.size());
    options.all_keys_present = in.flip();
  } catch (const Error&) {
    return 0;  // a bad layout or policy piece, refused by name
  }

  Plan plan;
  try {
    plan = make_plan(layout, policy, options);
  } catch (const Error&) {
    return 0;
  }
  const index_t n = layout.size();
  index_t allowed_total = 0;
  std::vector<int> seen(static_cast<std::size_t>(n));
  for (const QueryTile& tile : plan.query_tiles) {
    std::fill(seen.begin(), seen.end(), 0);
    for (index_t b = tile.block_begin; b < tile.block_end; ++b) {
      const KeyBlock& block = plan.blocks[static_cast<std::size_t>(b)];
      index_t block_allowed = 0;
      for (index_t j = 0; j < block.keys.size(); ++j) {
        const index_t k = block.keys.at(j);
        if (k < 0 || k >= n) std::abort();
        if (!options.all_keys_present && k >= plan.query_end) std::abort();  // not written yet
        ++seen[static_cast<std::size_t>(k)];
        for (index_t i = 0; i < tile.queries.size(); ++i) {
          const bool a = allowed(layout, policy, tile.queries.at(i), k);
          block_allowed += a;
          if (block.full && !a) std::abort();
        }
      }
      if (block_allowed == 0) std::abort();
    }
    for (index_t i = 0; i < tile.queries.size(); ++i)
      for (index_t k = 0; k < n; ++k)
        if (allowed(layout, policy, tile.queries.at(i), k)) {
          if (seen[static_cast<std::size_t>(k)] != 1) std::abort();
          ++allowed_total;
        }
  }
  if (plan_stats(plan, layout, policy).allowed_pairs() != allowed_total) std::abort();

  const std::vector<index_t> ends = safe_chunk_ends(layout, policy, in.in(1, 16));
  index_t begin = 0;
  for (const index_t end : ends) {
    if (end <= begin) std::abort();
    for (index_t q = begin; q < end; ++q)
      for (index_t k = end; k < n; ++k)
        if (allowed(layout, policy, q, k)) std::abort();
    begin = end;
  }
  if (begin != n) std::abort();
  return 0;
}
