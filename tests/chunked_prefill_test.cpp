// Chunked prefill: the queries cut into chunks of random sizes, each chunk a MultimodalAttention
// over its query slice (PlanOptions::query_begin / query_end) with every key, give one-shot
// prefill's result: bit for bit for rows whose query tile is the same in both plans (the same
// blocks in the same order), within 1e-6 otherwise; over the random families of
// multimodal_attention_test.cpp. Chunks cut at one-shot tile boundaries are bitwise throughout;
// under a causal decoder, keys after a chunk's end are never read.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "mmattn/multimodal_attention.hpp"
#include "mmattn/reference.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

constexpr int kCases = kSlowBuild ? 100 : 160;  // fewer in sanitizer builds, same families

// Rows [first, first + count) of a view.
template <class View>
View rows_of(View v, index_t first, index_t count) {
  v.data += first * v.token_stride;
  v.tokens = count;
  return v;
}
LseView rows_of(LseView v, index_t first, index_t count) {
  v.data += first * v.token_stride;
  v.tokens = count;
  return v;
}

using RectKey = std::tuple<index_t, index_t, index_t, index_t>;
RectKey key_of(const TokenRect& r) { return {r.start, r.pitch, r.rows, r.cols}; }

// position -> the rect of the query tile holding it.
std::map<index_t, RectKey> tile_of_position(const Plan& plan) {
  std::map<index_t, RectKey> m;
  for (const QueryTile& t : plan.query_tiles)
    for (index_t i = 0; i < t.queries.size(); ++i) m[t.queries.at(i)] = key_of(t.queries);
  return m;
}

// Is row `token` (all heads) of a and b the same bits?
bool same_row(const Tensor& a, const Tensor& b, const Lse& la, const Lse& lb, index_t token) {
  for (index_t h = 0; h < a.heads(); ++h) {
    if (std::memcmp(&la.view(token, h), &lb.view(token, h), sizeof(float)) != 0) return false;
    for (index_t d = 0; d < a.head_dim(); ++d)
      if (std::memcmp(&a.view(token, h, d), &b.view(token, h, d), sizeof(float)) != 0) return false;
  }
  return true;
}

struct Outcome {
  int same_tile_rows = 0, other_rows = 0;
  double worst_other = 0;
};

// Runs c's layout in one shot and in the given chunks ([cuts[i], cuts[i + 1])); returns "" or
// what went wrong. split: run the chunks through forward_split_kv with 16 claimed workers.
std::string run_chunked(const cases::Case& c, const std::vector<index_t>& cuts, bool split, Outcome& outcome) {
  const index_t n = c.layout.size();
  PlanOptions whole = c.options;
  whole.query_begin = 0, whole.query_end = -1;
  const Executor executor = split ? Executor::custom([](index_t count, const Executor::Body& body) {
    for (index_t i = 0; i < count; ++i) body(i);
  }, 16) : (c.serial ? Executor::serial() : Executor::default_executor());
  const MultimodalAttention<float> one_shot(c.cfg, c.layout, c.policy, whole, executor);
  const Buffers b = make_qkv(c.cfg, n, n, c.seed, c.kv_storage);
  Tensor expected(n, c.cfg.num_heads, c.cfg.head_dim), chunked(n, c.cfg.num_heads, c.cfg.head_dim, c.out_storage);
  Lse l_expected(n, c.cfg.num_heads), l_chunked(n, c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
  one_shot.forward(b.q.cview(), b.k.cview(), b.v.cview(), expected.view, l_expected.view);

  const std::map<index_t, RectKey> whole_tiles = tile_of_position(one_shot.plan());
  std::vector<char> same_tile(static_cast<size_t>(n), 0);
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    PlanOptions options = c.options;
    options.query_begin = cuts[i], options.query_end = cuts[i + 1];
    const MultimodalAttention<float> chunk(c.cfg, c.layout, c.policy, options, executor);
    const index_t len = cuts[i + 1] - cuts[i];
    const auto q = rows_of(b.q.cview(), cuts[i], len);
    const auto o = rows_of(chunked.view, cuts[i], len);
    const auto l = rows_of(l_chunked.view, cuts[i], len);
    if (split)
      chunk.forward_split_kv(q, b.k.cview(), b.v.cview(), o, l);
    else
      chunk.forward(q, b.k.cview(), b.v.cview(), o, l);
    for (const auto& [pos, rect] : tile_of_position(chunk.plan()))
      same_tile[static_cast<size_t>(pos)] = !split && whole_tiles.at(pos) == rect;
  }

  std::string problems;
  for (index_t t = 0; t < n; ++t) {
    if (same_tile[static_cast<size_t>(t)]) {
      ++outcome.same_tile_rows;
      if (!same_row(chunked, expected, l_chunked, l_expected, t)) problems += " row " + std::to_string(t) + " not bitwise;";
    } else {
      ++outcome.other_rows;
    }
  }
  const double err = std::max(max_relative_error(chunked, expected), max_lse_error(l_chunked, l_expected));
  outcome.worst_other = std::max(outcome.worst_other, err);
  // Rows in other tiles are two fp32 computations of one exact value over different key blockings.
  if (!(err <= 4e-6)) problems += " differs from one-shot by " + std::to_string(err) + ";";
  if (!chunked.padding_intact()) problems += " output padding written;";
  return problems;
}

std::string cuts_string(const std::vector<index_t>& cuts) {
  std::string s;
  for (const index_t x : cuts) s += " " + std::to_string(x);
  return s;
}

TEST(ChunkedPrefill, RandomChunksEqualOneShot) {
  int failed = 0;
  Outcome outcome;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = cases::random_case(0xc4a70000u + static_cast<std::uint32_t>(i));
    std::mt19937 gen(c.seed);
    const index_t n = c.layout.size();
    std::set<index_t> cut_set{0, n};
    const index_t extra = cases::uniform(gen, 1, std::min<index_t>(6, n));
    for (index_t j = 0; j < extra; ++j) cut_set.insert(cases::uniform(gen, 1, n));
    const std::vector<index_t> cuts(cut_set.begin(), cut_set.end());
    const bool split = i % 4 == 3;
    SCOPED_TRACE(cases::describe(c) + "\n  chunks at" + cuts_string(cuts) + (split ? ", split-KV" : ""));
    std::string problems;
    const std::string err = error_message([&] { problems = run_chunked(c, cuts, split, outcome); });
    if (err != "<no exception>") problems = " threw: " + err;
    if (!problems.empty() && ++failed <= 5) ADD_FAILURE() << "case failed:" << problems;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases;
  EXPECT_GT(outcome.same_tile_rows, 0);
  std::printf("%d cases: %d rows in the same tile as one-shot (bitwise), %d in other tiles; worst difference %.3g\n",
              kCases, outcome.same_tile_rows, outcome.other_rows, outcome.worst_other);
}

// Chunks cut only where one-shot tiles start (text tiles and segment starts): every tile is the
// same in both plans, so the whole output is bitwise one-shot's.
TEST(ChunkedPrefill, ChunksAtTileBoundariesAreBitwise) {
  for (int i = 0; i < 40; ++i) {
    const cases::Case c = cases::random_case(0xb0a70000u + static_cast<std::uint32_t>(i));
    PlanOptions whole = c.options;
    whole.query_begin = 0, whole.query_end = -1;
    const Plan plan = make_plan(c.layout, c.policy, whole);
    std::vector<index_t> candidates;
    for (const QueryTile& t : plan.query_tiles)
      if (c.layout.segment(t.segment).is_text() || t.queries.first() == c.layout.segment(t.segment).start)
        candidates.push_back(t.queries.first());
    std::mt19937 gen(c.seed);
    std::set<index_t> cut_set{0, c.layout.size()};
    for (const index_t x : candidates)
      if (gen() % 2) cut_set.insert(x);
    const std::vector<index_t> cuts(cut_set.begin(), cut_set.end());
    SCOPED_TRACE(cases::describe(c) + "\n  chunks at" + cuts_string(cuts));
    Outcome outcome;
    EXPECT_EQ(run_chunked(c, cuts, /*split=*/false, outcome), "");
    EXPECT_EQ(outcome.other_rows, 0);
  }
}

// A causal decoder never reads keys after a chunk's last query: with the cache beyond the chunk
// NaN (not yet written, as in a runtime), the chunk's output is unchanged bit for bit.
TEST(ChunkedPrefill, CausalChunksNeverReadLaterKeys) {
  SequenceLayout layout;
  layout.add_text(13).add_image(5, 7).add_text(40).add_image(3, 3).add_text(21);
  const AttentionConfig cfg = make_config(4, 2, 32);
  const index_t n = layout.size();
  const Buffers b = make_qkv(cfg, n, n, 21);
  for (const index_t tile : {index_t{8}, index_t{64}}) {
    PlanOptions whole;
    whole.tiles = {tile, 16};
    const MultimodalAttention<float> one_shot(cfg, layout, RegionPolicy::decoder_causal(), whole);
    Tensor expected(n, 4, 32);
    one_shot.forward(b.q.cview(), b.k.cview(), b.v.cview(), expected.view);
    for (const index_t end : {index_t{5}, index_t{13}, index_t{30}, index_t{90}, index_t{101}, n}) {
      const index_t begin = end / 2;
      Buffers cut = b;
      for (index_t t = end; t < n; ++t)
        for (index_t h = 0; h < 2; ++h)
          for (index_t d = 0; d < 32; ++d) cut.k.view(t, h, d) = kNaN, cut.v.view(t, h, d) = kNaN;
      PlanOptions options = whole;
      options.query_begin = begin, options.query_end = end;
      const MultimodalAttention<float> chunk(cfg, layout, RegionPolicy::decoder_causal(), options);
      Tensor out(end - begin, 4, 32);
      chunk.forward(rows_of(cut.q.cview(), begin, end - begin), cut.k.cview(), cut.v.cview(), out.view);
      for_each_index(out.view, [&](index_t t, index_t h, index_t d) {
        ASSERT_TRUE(std::isfinite(out.view(t, h, d))) << "chunk [" << begin << ", " << end << ") read a later key";
      });
      EXPECT_LE(max_relative_error(out.cview(), rows_of(expected.cview(), begin, end - begin)), 1e-6);
    }
  }
}

}  // namespace
}  // namespace mmattn::test
