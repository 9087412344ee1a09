// A row's result depends only on the keys it may see: garbage (NaN, inf, the type's largest values)
// in any other K or V row leaves it unchanged bit for bit, over random layouts and query ranges,
// with K/V stored as fp32, bf16 or fp16, contiguous or paged, through forward, forward_split_kv
// (the decode kernel on short tiles) and decode_attention; and merge() never reads a part's row
// for a (token, head) the part saw no key of. What a poisoned row the query does see gives is
// pinned down where it is defined: a NaN makes the output NaN, an infinite value row makes it
// non-finite, and an infinite key row makes the log-sum-exp NaN unless its score is -inf.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mmattn/decode.hpp"
#include "mmattn/merge.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "paged_cache.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"
#include "typed_tensor.hpp"

namespace mmattn::test {
namespace {

using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;

constexpr int kCases = kSlowBuild ? 120 : 540;

// NaN, both infinities and two huge finite values of the storage type: fp32 keeps 1e36 (scores
// stay finite) and -3e38; bf16 and fp16 their largest magnitude (fp16's 65504 is a plain value).
template <class T>
std::vector<float> poisons() {
  if constexpr (std::is_same_v<T, float>) return {kNaN, kInf, -kInf, 1e36f, -3e38f};
  const float top = static_cast<float>(std::numeric_limits<T>::max());
  return {kNaN, kInf, -kInf, top, -top};
}

enum class Path { forward, split_kv, decode };
const char* path_name(Path p) { return p == Path::forward ? "forward" : p == Path::split_kv ? "split-KV" : "decode"; }

enum Which { kKey = 0, kValue = 1, kBoth = 2 };
const char* which_name(int w) { return w == kKey ? "K" : w == kValue ? "V" : "K+V"; }

// K and V in T, optionally as paged copies; the same generator seed gives the clean and the
// poisoned cache the same block tables, so the two differ only in the poisoned values.
template <class T>
struct Cache {
  TypedTensor<T> k, v;
  std::unique_ptr<PagedCache<T>> pk, pv;

  Cache(const Buffers& b, Storage storage, index_t block_size, std::uint32_t seed)
      : k(restride(b.k, storage)), v(restride(b.v, storage)) {
    if (block_size == 0) return;
    std::mt19937 gen(seed);
    pk = std::make_unique<PagedCache<T>>(k.cview(), block_size, 2, gen);
    pv = std::make_unique<PagedCache<T>>(v.cview(), block_size, 1, gen);
  }
  // Writes `value` (rounded to T) into token t's K row, V row or both, every head, every dim.
  void poison(index_t t, int which, float value) {
    for (index_t h = 0; h < k.view.heads; ++h)
      for (index_t d = 0; d < k.view.head_dim; ++d) {
        if (which != kValue) k.view(t, h, d) = T(value);
        if (which != kKey) v.view(t, h, d) = T(value);
        if (pk && which != kValue) pk->view(t, h, d) = T(value);
        if (pk && which != kKey) pv->view(t, h, d) = T(value);
      }
  }
  template <class F>
  void with_views(F&& f) const {
    if (pk) f(pk->cview(), pv->cview());
    else f(k.cview(), v.cview());
  }
};

struct Outputs {
  Tensor out;
  Lse lse;
};

// One draw: the attention call and the poisoned token.
struct Draw {
  cases::Case c;
  Path path = Path::forward;
  int type = 0;            // K/V storage: 0 fp32, 1 bf16, 2 fp16
  index_t block_size = 0;  // 0: contiguous cache, else paged with this block size
  index_t new_tokens = 1;  // decode only: queries are the layout's last new_tokens positions
  index_t token = 0;
  int which = kKey;
  int poison = 0;  // index into poisons<T>()
};

std::string describe(const Draw& d) {
  static const char* const types[] = {"f32", "bf16", "f16"};
  return std::string(path_name(d.path)) + ", " + types[d.type] + " K/V" +
         (d.block_size ? ", paged block " + std::to_string(d.block_size) : ", contiguous") +
         (d.path == Path::decode ? ", " + std::to_string(d.new_tokens) + " new tokens" : "") + ", token " +
         std::to_string(d.token) + " " + which_name(d.which) + "\n  " + cases::describe(d.c);
}

Draw random_draw(std::uint32_t seed, int i) {
  Draw d;
  d.c = cases::random_case(seed);
  std::mt19937 gen(seed ^ 0x9a5eu);
  d.type = i % 3;
  d.path = static_cast<Path>((i / 3) % 3);
  const index_t blocks[] = {0, 0, 1, 3, 5, 16, 17};
  d.block_size = blocks[cases::uniform(gen, 0, 6)];
  const index_t n = d.c.layout.size();
  d.new_tokens = cases::uniform(gen, 1, std::min<index_t>(4, n));
  d.token = cases::uniform(gen, 0, n - 1);
  d.which = static_cast<int>(cases::uniform(gen, 0, 2));
  d.poison = static_cast<int>(cases::uniform(gen, 0, 4));
  return d;
}

// Runs the draw's path on a cache; Q (fp32) holds the path's query rows.
template <class T>
Outputs run(const Draw& d, const Tensor& q, const Cache<T>& cache) {
  const cases::Case& c = d.c;
  Outputs o{Tensor(q.tokens(), c.cfg.num_heads, c.cfg.head_dim), Lse(q.tokens(), c.cfg.num_heads)};
  SplitKvOptions split;
  split.splits = 3;  // at most the tile's block count: chunks of a block or more
  split.min_keys_per_split = 1;
  cache.with_views([&](const auto& k, const auto& v) {
    if (d.path == Path::decode) {
      DecodeOptions options;
      options.tiles = c.options.tiles;
      options.split = split;
      decode_attention(c.cfg, c.layout, c.policy, q.cview(), k, v, o.out.view, o.lse.view, options);
      return;
    }
    const MultimodalAttention<float> mm(c.cfg, c.layout, c.policy, c.options);
    if (d.path == Path::split_kv) mm.forward_split_kv(q.cview(), k, v, o.out.view, o.lse.view, split);
    else mm.forward(q.cview(), k, v, o.out.view, o.lse.view);
  });
  return o;
}

struct Tally {
  int unseen_rows = 0, seen_rows = 0, failures = 0;
};

// Compares the poisoned run with the clean one row by row; returns what went wrong.
template <class T>
std::string check_draw(const Draw& d, Tally& tally) {
  const cases::Case& c = d.c;
  const index_t n = c.layout.size();
  index_t qb = n - d.new_tokens, nq = d.new_tokens;
  if (d.path != Path::decode) {
    const Plan plan = make_plan(c.layout, c.policy, c.options);
    qb = plan.query_begin, nq = plan.num_queries();
  }
  const Buffers b = make_qkv(c.cfg, nq, n, c.seed);
  const Tensor q = restride(b.q, c.q_storage);
  const float value = poisons<T>()[static_cast<size_t>(d.poison)];
  const Cache<T> clean(b, c.kv_storage, d.block_size, c.seed);
  Cache<T> dirty(b, c.kv_storage, d.block_size, c.seed);
  dirty.poison(d.token, d.which, value);
  const Outputs want = run(d, q, clean), got = run(d, q, dirty);

  const bool is_nan = std::isnan(value), is_inf = std::isinf(value);
  std::string problems;
  auto complain = [&](index_t r, index_t h, const std::string& what) {
    if (problems.size() < 400) problems += " row " + std::to_string(r) + " head " + std::to_string(h) + ": " + what + ";";
  };
  for (index_t r = 0; r < nq; ++r) {
    const bool sees = allowed(c.layout, c.policy, qb + r, d.token);
    for (index_t h = 0; h < c.cfg.num_heads; ++h) {
      const float lse = got.lse(r, h);
      if (!sees) {
        ++tally.unseen_rows;
        for (index_t dd = 0; dd < c.cfg.head_dim; ++dd) {
          const float a = got.out.view(r, h, dd), e = want.out.view(r, h, dd);
          if (!(a == e)) complain(r, h, "dim " + std::to_string(dd) + " " + std::to_string(a) + " vs clean " + std::to_string(e));
        }
        if (!(lse == want.lse(r, h))) complain(r, h, "lse " + std::to_string(lse) + " vs clean " + std::to_string(want.lse(r, h)));
        continue;
      }
      ++tally.seen_rows;
      if (!is_nan && !is_inf) continue;  // a huge finite value may overflow the fp32 scores or not
      // The key's score is scale * q . k with every k_d = value: NaN for a NaN, for a 0 component
      // of q or for components of both signs (inf - inf); else +-inf, and +inf - +inf is NaN in
      // the softmax while -inf weighs nothing.
      bool score_nan = is_nan;
      if (d.which != kValue && !is_nan) {
        bool pos = false, neg = false, zero = c.cfg.resolved_scale() == 0;
        for (index_t dd = 0; dd < c.cfg.head_dim; ++dd) {
          const float x = q.view(r, h, dd);
          pos |= x > 0, neg |= x < 0, zero |= x == 0;
        }
        const bool plus_inf = (pos == (value > 0)) == (c.cfg.resolved_scale() > 0);
        score_nan = zero || (pos && neg) || plus_inf;
      }
      if (d.which != kValue) {
        if (std::isnan(lse) != score_nan) complain(r, h, std::string("lse ") + std::to_string(lse) + (score_nan ? ", want NaN" : ", want a number"));
      } else if (!(lse == want.lse(r, h))) {
        complain(r, h, "the values changed the lse: " + std::to_string(lse) + " vs " + std::to_string(want.lse(r, h)));
      }
      const bool value_seen = d.which != kKey;  // with a NaN score the output is NaN whatever the values
      for (index_t dd = 0; dd < c.cfg.head_dim; ++dd) {
        const float a = got.out.view(r, h, dd);
        if ((score_nan || (value_seen && is_nan)) && !std::isnan(a)) complain(r, h, "dim " + std::to_string(dd) + " hid a NaN: " + std::to_string(a));
        if (d.which == kValue && is_inf && std::isfinite(a)) complain(r, h, "dim " + std::to_string(dd) + " hid an inf: " + std::to_string(a));
      }
    }
  }
  return problems;
}

TEST(MaskedKeys, GarbageInKeysARowCannotSeeNeverChangesIt) {
  Tally tally;
  int counts[3][3][2] = {};  // [path][type][paged]
  for (int i = 0; i < kCases; ++i) {
    const Draw d = random_draw(0x9a5e0000u + static_cast<std::uint32_t>(i), i);
    ++counts[static_cast<int>(d.path)][d.type][d.block_size > 0];
    std::string problems;
    const std::string err = error_message([&] {
      problems = d.type == 0 ? check_draw<float>(d, tally) : d.type == 1 ? check_draw<bf16>(d, tally)
                                                                         : check_draw<f16>(d, tally);
    });
    if (err != "<no exception>") problems = " threw: " + err;
    if (!problems.empty() && ++tally.failures <= 3) ADD_FAILURE() << describe(d) << "\n " << problems;
  }
  EXPECT_EQ(tally.failures, 0) << "of " << kCases;
  std::printf("%d cases: %d (row, head) pairs unchanged bit for bit, %d that see the poison\n", kCases,
              tally.unseen_rows, tally.seen_rows);
  EXPECT_GT(tally.unseen_rows, kSlowBuild ? 500 : 2000);
  EXPECT_GT(tally.seen_rows, kSlowBuild ? 100 : 500);
  for (int p = 0; p < 3; ++p)
    for (int t = 0; t < 3; ++t)
      for (int paged = 0; paged < 2; ++paged)
        EXPECT_GT(counts[p][t][paged], 0) << path_name(static_cast<Path>(p)) << " type " << t << " paged " << paged;
}

// The two smallest cases: two text tokens, causal, the later ones poisoned; row 0 sees only token 0.
template <class T>
void check_causal_row_ignores_later_garbage() {
  SequenceLayout layout;
  layout.add_text(8);
  const AttentionConfig cfg = make_config(1, 1, 4);
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::decoder_causal());
  for (const float value : poisons<T>()) {
    const Buffers b = make_qkv(cfg, 8, 8, 5);
    for (const index_t block : {index_t{0}, index_t{3}}) {
      Cache<T> cache(b, Storage::contiguous, block, 5);
      for (index_t t = 1; t < 8; ++t) cache.poison(t, kBoth, value);
      for (const bool split : {false, true}) {
        Tensor out(8, 1, 4);
        SplitKvOptions options;
        options.splits = 2;
        options.min_keys_per_split = 1;
        cache.with_views([&](const auto& k, const auto& v) {
          if (split) mm.forward_split_kv(b.q.cview(), k, v, out.view, {}, options);
          else mm.forward(b.q.cview(), k, v, out.view);
        });
        for (index_t d = 0; d < 4; ++d)
          EXPECT_EQ(out.view(0, 0, d), static_cast<float>(cache.v.view(0, 0, d)))
              << type_name<T>() << " " << value << " paged " << block << " split " << split;
      }
    }
  }
}

TEST(MaskedKeys, CausalRowIgnoresLaterGarbage) {
  check_causal_row_ignores_later_garbage<float>();
  check_causal_row_ignores_later_garbage<bf16>();
  check_causal_row_ignores_later_garbage<f16>();
}

// A NaN key the row sees is not "no key": output and log-sum-exp are NaN, in every path, and the
// reference agrees.
TEST(MaskedKeys, AVisibleNaNKeyMakesTheRowNaN) {
  SequenceLayout layout;
  layout.add_text(8);
  const AttentionConfig cfg = make_config(1, 1, 4);
  PlanOptions options;
  options.tiles = {8, 4};  // the NaN key in the second key block
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::dense(), options);
  Buffers b = make_qkv(cfg, 8, 8, 6);
  for (index_t d = 0; d < 4; ++d) b.k.view(6, 0, d) = kNaN;
  for (const bool split : {false, true}) {
    Tensor out(8, 1, 4);
    Lse lse(8, 1);
    SplitKvOptions split_options;
    split_options.splits = 2;
    if (split) mm.forward_split_kv(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view, split_options);
    else mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), out.view, lse.view);
    for (index_t r = 0; r < 8; ++r) {
      EXPECT_TRUE(std::isnan(out.view(r, 0, 0))) << "row " << r << " split " << split;
      EXPECT_TRUE(std::isnan(lse(r, 0))) << "row " << r << " split " << split;
    }
  }
  const Result ref = run_reference(cfg, b, AllKeys{});
  EXPECT_TRUE(std::isnan(ref.out.view(0, 0, 0)));
  EXPECT_TRUE(std::isnan(ref.lse(0, 0)));
}

// merge(): a part's output row for a (token, head) whose log-sum-exp is -inf (it saw no key) is
// never read, whatever it holds, so the merged result is the same bit for bit; a part row that
// was seen passes its garbage on (NaN stays NaN, inf is not finite), and a NaN log-sum-exp makes
// the merged row NaN. Parts in fp32, bf16 and fp16, over random key partitions of random cases.
struct PartMask {
  MaskPredicate allowed;
  const std::vector<int>* part_of;
  int part;
  bool operator()(index_t q, index_t k) const { return (*part_of)[static_cast<size_t>(k)] == part && allowed(q, k); }
};

template <class TP>
std::string check_merge(const cases::Case& c, int& poisoned_unseen, int& poisoned_seen) {
  std::mt19937 gen(c.seed);
  const index_t n = c.layout.size();
  const index_t q0 = c.options.query_begin, q1 = c.options.query_end < 0 ? n : c.options.query_end, nq = q1 - q0;
  const int parts = static_cast<int>(cases::uniform(gen, 2, 5));
  std::vector<int> part_of(static_cast<size_t>(n));
  for (int& p : part_of) p = static_cast<int>(cases::uniform(gen, 0, parts - 1));
  const Buffers b = make_qkv(c.cfg, nq, n, c.seed);
  const MaskPredicate allowed{&c.layout, &c.policy};

  std::vector<Result> results;
  std::vector<std::unique_ptr<TypedTensor<TP>>> clean, dirty;
  for (int p = 0; p < parts; ++p) {
    results.push_back(run_reference(c.cfg, b, PartMask{allowed, &part_of, p}, q0));
    clean.push_back(std::make_unique<TypedTensor<TP>>(results.back().out));
    dirty.push_back(std::make_unique<TypedTensor<TP>>(results.back().out));
  }
  // Poison random part rows: unseen ones (lse -inf) must not matter, seen ones must show.
  const std::vector<float> values = poisons<TP>();
  struct Seen {
    index_t t, h;
    float value;
  };
  std::vector<Seen> seen;
  std::vector<char> touched(static_cast<size_t>(nq * c.cfg.num_heads), 0);
  for (int p = 0; p < parts; ++p)
    for (index_t t = 0; t < nq; ++t)
      for (index_t h = 0; h < c.cfg.num_heads; ++h) {
        if (gen() % 3 != 0) continue;
        const float value = values[cases::uniform(gen, 0, 4)];
        const bool part_saw = results[static_cast<size_t>(p)].lse(t, h) != -kInf;
        char& row_touched = touched[static_cast<size_t>(t * c.cfg.num_heads + h)];
        if (part_saw && (row_touched || !(std::isnan(value) || std::isinf(value)))) continue;  // one clear poison a row
        for (index_t d = 0; d < c.cfg.head_dim; ++d) dirty[static_cast<size_t>(p)]->view(t, h, d) = TP(value);
        if (part_saw) seen.push_back({t, h, value}), row_touched = 1, ++poisoned_seen;
        else ++poisoned_unseen;
      }
  std::vector<PartialAttention<TP>> clean_views, dirty_views;
  for (int p = 0; p < parts; ++p) {
    clean_views.push_back({clean[static_cast<size_t>(p)]->cview(), results[static_cast<size_t>(p)].lse.view});
    dirty_views.push_back({dirty[static_cast<size_t>(p)]->cview(), results[static_cast<size_t>(p)].lse.view});
  }
  Tensor want(nq, c.cfg.num_heads, c.cfg.head_dim), got(nq, c.cfg.num_heads, c.cfg.head_dim);
  Lse want_lse(nq, c.cfg.num_heads), got_lse(nq, c.cfg.num_heads);
  merge(clean_views, want.view, want_lse.view);
  merge(dirty_views, got.view, got_lse.view);

  std::string problems;
  if (!same_bits(want_lse.storage, got_lse.storage)) problems += " part outputs changed the merged lse;";
  for (index_t t = 0; t < nq; ++t)
    for (index_t h = 0; h < c.cfg.num_heads; ++h) {
      if (touched[static_cast<size_t>(t * c.cfg.num_heads + h)]) continue;
      for (index_t d = 0; d < c.cfg.head_dim; ++d)
        if (!(got.view(t, h, d) == want.view(t, h, d)) && problems.size() < 400) {
          problems += " token " + std::to_string(t) + " head " + std::to_string(h) + " read an unseen part row;";
          break;
        }
    }
  for (const Seen& s : seen)
    for (index_t d = 0; d < c.cfg.head_dim; ++d) {
      const float a = got.view(s.t, s.h, d);
      if ((std::isnan(s.value) ? !std::isnan(a) : std::isfinite(a)) && problems.size() < 400)
        problems += " token " + std::to_string(s.t) + " head " + std::to_string(s.h) + " hid " + std::to_string(s.value) + ";";
    }

  // A NaN log-sum-exp in a part makes the merged row NaN, output and lse.
  if (nq > 0) {
    Lse nan_lse = results[0].lse;
    nan_lse.view(0, 0) = kNaN;
    dirty_views[0].lse = nan_lse.view;
    merge(dirty_views, got.view, got_lse.view);
    for (index_t d = 0; d < c.cfg.head_dim; ++d)
      if (!std::isnan(got.view(0, 0, d))) problems += " a NaN part lse was dropped;";
    if (!std::isnan(got_lse(0, 0))) problems += " a NaN part lse left a number;";
  }
  return problems;
}

TEST(MaskedKeys, MergeNeverReadsAPartRowThatSawNothing) {
  constexpr int kMergeCases = kSlowBuild ? 30 : 90;
  int failed = 0, unseen = 0, seen = 0;
  for (int i = 0; i < kMergeCases; ++i) {
    const cases::Case c = cases::random_case(0x3e9a0000u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    const std::string problems = i % 3 == 0   ? check_merge<float>(c, unseen, seen)
                                 : i % 3 == 1 ? check_merge<bf16>(c, unseen, seen)
                                              : check_merge<f16>(c, unseen, seen);
    if (!problems.empty() && ++failed <= 3) ADD_FAILURE() << problems;
  }
  EXPECT_EQ(failed, 0) << "of " << kMergeCases;
  std::printf("%d cases: %d part rows that saw nothing poisoned, %d seen\n", kMergeCases, unseen, seen);
  EXPECT_GT(unseen, 100);
  EXPECT_GT(seen, 100);
}

}  // namespace
}  // namespace mmattn::test
