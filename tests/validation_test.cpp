// Bad input: each case must throw mmattn::Error, name the problem in its message, and leave the
// output and log-sum-exp buffers exactly as they were (nothing is written before validation).
// And input accepted on purpose, with what it gives: broadcast keys, scores that overflow fp32.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/decode.hpp"
#include "mmattn/flash_attention.hpp"
#include "mmattn/merge.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/reference.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

constexpr float kSentinel = 42.0f;
constexpr index_t kHuge = std::numeric_limits<index_t>::max() / 2 + 1;  // 2 x kHuge overflows

// A valid call (4 heads, 2 kv heads, head_dim 16, 5 queries, 7 keys) that each test breaks in one way.
struct Call {
  AttentionConfig cfg = make_config(4, 2, 16);
  Buffers b = make_qkv(cfg, 5, 7, 1);
  Tensor out{5, 4, 16, Storage::padded_tokens};  // padding NaN, elements the sentinel
  Lse lse{5, 4};
  TensorView<const float> q = b.q.cview(), k = b.k.cview(), v = b.v.cview();
  TensorView<float> o = out.view;
  LseView l = lse.view;
  GlobalOptions options;

  Call() {
    fill_value(out.view, kSentinel);
    for (float& x : lse.storage) x = kSentinel;
  }

  void flash() const { flash_attention(cfg, q, k, v, o, l, options, Executor::serial()); }
  void reference() const { reference_attention(cfg, q, k, v, o, l, AllKeys{}); }
};

// Checks both entry points (they share validate_attention) unless only flash applies.
void expect_rejected(const Call& c, const std::string& needle, bool reference_too = true) {
  const std::vector<float> out_before = c.out.storage, lse_before = c.lse.storage;
  const std::string flash_msg = error_message([&] { c.flash(); });
  EXPECT_TRUE(contains(flash_msg, needle)) << "flash_attention message: " << flash_msg << "\nexpected: " << needle;
  EXPECT_TRUE(contains(flash_msg, "mmattn: ")) << flash_msg;
  EXPECT_TRUE(same_bits(c.out.storage, out_before)) << "flash_attention wrote the output";
  EXPECT_TRUE(same_bits(c.lse.storage, lse_before)) << "flash_attention wrote the lse";
  if (!reference_too) return;
  const std::string ref_msg = error_message([&] { c.reference(); });
  EXPECT_TRUE(contains(ref_msg, needle)) << "reference_attention message: " << ref_msg << "\nexpected: " << needle;
  EXPECT_TRUE(same_bits(c.out.storage, out_before)) << "reference_attention wrote the output";
  EXPECT_TRUE(same_bits(c.lse.storage, lse_before)) << "reference_attention wrote the lse";
}

TEST(Validation, BaselineCallIsAccepted) {
  const Call c;
  c.flash();
  EXPECT_LE(max_relative_error(c.out, run_reference(c.cfg, c.b, AllKeys{}).out), 1e-5);
}

// ---- Shapes ----

TEST(Validation, KeyAndValueTokenCountsDiffer) {
  Call c;
  const Tensor v6 = random_tensor(6, 2, 16, 3);
  c.v = v6.cview();
  expect_rejected(c, "v: shape [6, 2, 16] must be [7, 2, 16]");
}

TEST(Validation, OutputTokensDifferFromQueries) {
  Call c;
  c.o.tokens = 4;
  expect_rejected(c, "out: shape [4, 4, 16] must be [5, 4, 16]");
}

TEST(Validation, OutputHeadsDifferFromQueries) {
  Call c;
  c.o.heads = 3;
  expect_rejected(c, "out: shape [5, 3, 16] must be [5, 4, 16]");
}

TEST(Validation, QueryHeadDimDiffersFromConfig) {
  Call c;
  c.q.head_dim = 8;
  expect_rejected(c, "q: head_dim 8 does not match the config's 16");
}

TEST(Validation, KeyHeadDimDiffers) {
  Call c;
  c.k.head_dim = 8;
  expect_rejected(c, "k: shape [7, 2, 8] must be [7, 2, 16]");
}

TEST(Validation, ValueHeadDimDiffers) {
  Call c;
  c.v.head_dim = 15;
  expect_rejected(c, "v: shape [7, 2, 15] must be [7, 2, 16]");
}

TEST(Validation, OutputHeadDimDiffers) {
  Call c;
  c.o.head_dim = 15;
  expect_rejected(c, "out: shape [5, 4, 15] must be [5, 4, 16]");
}

TEST(Validation, QueryHeadsDifferFromNumHeads) {
  Call c;
  c.q.heads = 3;
  expect_rejected(c, "q: has 3 heads but num_heads is 4");
}

TEST(Validation, KeyHeadsDifferFromNumKvHeads) {
  Call c;
  c.k.heads = 1;
  expect_rejected(c, "k: has 1 heads but num_kv_heads is 2");
}

TEST(Validation, ValueHeadsDifferFromNumKvHeads) {
  Call c;
  c.v.heads = 1;
  expect_rejected(c, "v: shape [7, 1, 16] must be [7, 2, 16]");
}

TEST(Validation, NegativeShape) {
  Call c;
  c.k.tokens = -1;
  expect_rejected(c, "k: negative shape");
}

// ---- Head configuration ----

TEST(Validation, ZeroNumHeads) {
  Call c;
  c.cfg.num_heads = 0;
  expect_rejected(c, "num_heads must be positive, got 0");
}

TEST(Validation, NegativeNumHeads) {
  Call c;
  c.cfg.num_heads = -4;
  expect_rejected(c, "num_heads must be positive, got -4");
}

TEST(Validation, ZeroNumKvHeads) {
  Call c;
  c.cfg.num_kv_heads = 0;
  expect_rejected(c, "num_kv_heads must be positive, got 0");
}

TEST(Validation, KvHeadsDoNotDivideHeads) {
  Call c;
  c.cfg = make_config(6, 4, 16);
  const Buffers b = make_qkv(c.cfg, 5, 7, 2);
  Tensor out(5, 6, 16);
  fill_value(out.view, kSentinel);
  c.q = b.q.cview(), c.k = b.k.cview(), c.v = b.v.cview();
  c.o = out.view;
  c.l = {};
  const std::vector<float> before = out.storage;
  expect_rejected(c, "num_kv_heads (4) must divide num_heads (6)");
  EXPECT_TRUE(same_bits(out.storage, before));
}

TEST(Validation, ZeroHeadDim) {
  Call c;
  c.cfg.head_dim = 0;
  expect_rejected(c, "head_dim must be positive, got 0");
}

// ---- Pointers and strides ----

TEST(Validation, NullQueryData) {
  Call c;
  c.q.data = nullptr;
  expect_rejected(c, "q: null data");
}

TEST(Validation, NullKeyData) {
  Call c;
  c.k.data = nullptr;
  expect_rejected(c, "k: null data");
}

TEST(Validation, NullValueData) {
  Call c;
  c.v.data = nullptr;
  expect_rejected(c, "v: null data");
}

TEST(Validation, NullOutputData) {
  Call c;
  c.o.data = nullptr;
  expect_rejected(c, "out: null data");
}

TEST(Validation, NegativeTokenStride) {
  Call c;
  c.q.token_stride = -c.q.token_stride;
  expect_rejected(c, "q: negative stride");
}

TEST(Validation, NegativeHeadStride) {
  Call c;
  c.k.head_stride = -16;
  expect_rejected(c, "k: negative stride -16");
}

TEST(Validation, NegativeOutputDimStride) {
  Call c;
  c.o.dim_stride = -1;
  expect_rejected(c, "out: negative stride -1");
}

TEST(Validation, OverflowingInputStride) {
  Call c;
  c.v.token_stride = kHuge;  // 6 x kHuge overflows int64
  expect_rejected(c, "v: strides overflow the index type");
}

TEST(Validation, OverflowingSumOfStrides) {
  Call c;
  // Each term fits, their sum does not.
  c.q.token_stride = std::numeric_limits<index_t>::max() / 4;
  c.q.head_stride = std::numeric_limits<index_t>::max() / 3;
  expect_rejected(c, "q: strides overflow the index type");
}

TEST(Validation, OverflowingOutputStride) {
  Call c;
  c.o.head_stride = kHuge;
  expect_rejected(c, "out: strides overflow the index type");
}

TEST(Validation, OutputTokenStrideZeroOverlaps) {
  Call c;
  c.o.token_stride = 0;
  expect_rejected(c, "out: strides make elements overlap");
}

TEST(Validation, OutputHeadsInterleaveOverlap) {
  Call c;
  c.o.token_stride = 16;  // token t, head h+1 and token t+1, head h share an address
  c.o.head_stride = 16;
  expect_rejected(c, "out: strides make elements overlap");
}

TEST(Validation, OutputDimStrideZeroOverlaps) {
  Call c;
  c.o.dim_stride = 0;
  expect_rejected(c, "out: strides make elements overlap");
}

// An empty output has no elements to share an address, whatever its strides (a C or Python
// caller's empty array may carry zero strides); a non-empty one with the same strides is refused.
TEST(Validation, EmptyOutputAcceptsAnyStrides) {
  float x = 0;
  for (int axis = 0; axis < 3; ++axis) {
    TensorView<float> o{&x, 4, 3, 8, 0, 0, 0};
    (axis == 0 ? o.tokens : axis == 1 ? o.heads : o.head_dim) = 0;
    EXPECT_EQ(error_message([&] { validate_view("out", o, /*is_output=*/true); }), "<no exception>") << axis;
    o.tokens = 4, o.heads = 3, o.head_dim = 8;
    EXPECT_TRUE(contains(error_message([&] { validate_view("out", o, /*is_output=*/true); }),
                         "out: strides make elements overlap"));
  }
}

// Inputs are only read: a broadcast (stride 0) key is legal and equals repeating the row.
TEST(Validation, BroadcastInputIsAccepted) {
  Call c;
  c.k.token_stride = 0;
  c.flash();
  Tensor k_rep(7, 2, 16);
  for_each_index(k_rep.view, [&](index_t t, index_t h, index_t d) { k_rep.view(t, h, d) = c.b.k.view(0, h, d); });
  const Result expected = run_reference(c.cfg, c.b.q.cview(), k_rep.cview(), c.b.v.cview(), AllKeys{});
  EXPECT_LE(max_relative_error(c.out, expected.out), 1e-5);
  EXPECT_LE(max_lse_error(c.lse, expected.lse), 1e-5);
}

// ---- Scale and options ----

TEST(Validation, NaNScale) {
  Call c;
  c.cfg.scale = kNaN;
  expect_rejected(c, "scale must be finite");
}

TEST(Validation, InfiniteScale) {
  Call c;
  c.cfg.scale = kInf;
  expect_rejected(c, "scale must be finite");
  c.cfg.scale = -kInf;
  expect_rejected(c, "scale must be finite");
}

// A finite scale is accepted whatever the inputs. The kernels keep the raw scores q . k and apply
// the scale inside the max-subtracted exponent, so scale * q . k past fp32's range is exact (the
// log-sum-exp rounds to +-inf only where its true value is past +-3.4e38). The raw scores are fp32
// and nothing scans Q and K for products beyond +-3.4e38 (a second pass over the whole K cache in
// decode): a q . k that overflows is +inf or NaN (inf - inf), and the row's output and
// log-sum-exp are NaN; one that overflows to -inf weighs nothing, as a -inf key does: a row whose
// every score does gets zeros and -inf, like a row that sees no key. The reference, in double, is
// finite there.
struct OverflowRun {
  Tensor out;
  Lse lse;
};
// tiles: of forward, split-KV and decode; small key blocks make split-KV merge several parts.
std::vector<OverflowRun> run_every_path(const AttentionConfig& cfg, const Buffers& b, TileSizes tiles = {}) {
  const index_t n = b.k.tokens();
  SequenceLayout layout;
  layout.add_text(n);
  PlanOptions plan_options;
  plan_options.tiles = tiles;
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::decoder_causal(), plan_options);
  std::vector<OverflowRun> runs;
  for (int path = 0; path < 4; ++path) {
    OverflowRun r{Tensor(n, cfg.num_heads, cfg.head_dim), Lse(n, cfg.num_heads)};
    GlobalOptions options;
    options.causal = true;
    SplitKvOptions split;
    split.splits = 2;
    split.min_keys_per_split = 1;
    DecodeOptions decode;
    decode.split = split;
    decode.tiles = tiles;
    TensorView<const float> last_q = b.q.cview();  // decode: the last token against the cache
    last_q.data = b.q.view.row(n - 1, 0), last_q.tokens = 1;
    TensorView<float> last_out = r.out.view;
    last_out.data = r.out.view.row(n - 1, 0), last_out.tokens = 1;
    LseView last_lse = r.lse.view;
    last_lse.data = &r.lse.view(n - 1, 0), last_lse.tokens = 1;
    if (path == 0) mm.forward(b.q.cview(), b.k.cview(), b.v.cview(), r.out.view, r.lse.view);
    if (path == 1) mm.forward_split_kv(b.q.cview(), b.k.cview(), b.v.cview(), r.out.view, r.lse.view, split);
    if (path == 2) flash_attention(cfg, b.q.cview(), b.k.cview(), b.v.cview(), r.out.view, r.lse.view, options);
    if (path == 3)
      decode_attention(cfg, layout, RegionPolicy::decoder_causal(), last_q, b.k.cview(), b.v.cview(), last_out, last_lse,
                       decode);
    runs.push_back(std::move(r));
  }
  return runs;
}
// The rows every path computed (decode: the last one).
template <class F>
void for_each_computed_row(const std::vector<OverflowRun>& runs, index_t n, F&& f) {
  for (size_t p = 0; p < runs.size(); ++p)
    for (index_t r = p == 3 ? n - 1 : 0; r < n; ++r) f(p, r, runs[p]);
}

TEST(Validation, HugeFiniteScoresAreExact) {
  const index_t n = 6;
  AttentionConfig cfg = make_config(2, 1, 16);
  cfg.scale = 1e30f;  // scores ~1e30: the softmax is the arg max, the LSE the largest score
  const Buffers b = make_qkv(cfg, n, n, 3);
  const Result ref = run_reference(cfg, b, CausalKeys{});
  for_each_computed_row(run_every_path(cfg, b), n, [&](size_t path, index_t r, const OverflowRun& run) {
    for (index_t h = 0; h < 2; ++h) {
      EXPECT_NEAR(run.lse(r, h), ref.lse(r, h), 1e-5 * std::abs(ref.lse(r, h))) << "path " << path << " row " << r;
      for (index_t d = 0; d < 16; ++d) EXPECT_NEAR(run.out.view(r, h, d), ref.out.view(r, h, d), 1e-5) << "path " << path;
    }
  });
}

// Scales whose scores scale * q . k leave fp32's range (either way) while q . k does not, and
// scales of every sign: exact output; log-sum-exp within 1e-5, or the same infinity where the
// double reference's is past fp32's range.
TEST(Validation, ScaleIsAppliedInsideTheExponent) {
  const index_t n = 7;
  struct Case {
    float scale, magnitude;  // Q and K elements are drawn in [-1, 1] times magnitude
  };
  for (const Case c : {Case{1e30f, 1e5f}, Case{-1e30f, 1e5f}, Case{3e38f, 1.0f}, Case{1e-30f, 1e16f},
                       Case{1e-44f, 1e18f}, Case{-0.3f, 2.0f}, Case{0.0f, 5.0f}, Case{-1e-30f, 1e15f}}) {
    AttentionConfig cfg = make_config(2, 1, 16);
    cfg.scale = c.scale;
    Buffers b = make_qkv(cfg, n, n, 11);
    for (float& x : b.q.storage) x *= c.magnitude;
    for (float& x : b.k.storage) x *= c.magnitude;
    const Result ref = run_reference(cfg, b, CausalKeys{});
    const TileSizes tiles{/*query=*/4, /*key=*/2, /*window_query=*/0};  // split-KV merges up to 4 parts
    for_each_computed_row(run_every_path(cfg, b, tiles), n, [&](size_t path, index_t r, const OverflowRun& run) {
      for (index_t h = 0; h < 2; ++h) {
        const float want = ref.lse(r, h), got = run.lse(r, h);
        if (std::isinf(want)) {
          EXPECT_EQ(got, want) << "scale " << c.scale << " path " << path << " row " << r;
        } else {
          EXPECT_LE(std::abs(got - want), 1e-5 * std::max(1.0f, std::abs(want)))
              << "scale " << c.scale << " path " << path << " row " << r << ": " << got << " vs " << want;
        }
        for (index_t d = 0; d < 16; ++d) {
          const float o = run.out.view(r, h, d), o_ref = ref.out.view(r, h, d);
          EXPECT_LE(std::abs(o - o_ref), 1e-5f) << "scale " << c.scale << " path " << path << " row " << r;
        }
      }
    });
  }
}

TEST(Validation, OverflowingScoresGiveNaNOrAnEmptyRow) {
  const index_t n = 6;
  // Inputs ~1e20 at head_dim 128: q . k ~ 1e41, each product past fp32's range.
  AttentionConfig cfg = make_config(1, 1, 128);
  Buffers b = make_qkv(cfg, n, n, 3);
  for (float& x : b.q.storage) x *= 1e20f;
  for (float& x : b.k.storage) x *= 1e20f;
  const Result ref = run_reference(cfg, b, CausalKeys{});
  EXPECT_TRUE(std::isfinite(ref.out.view(n - 1, 0, 0)));
  for_each_computed_row(run_every_path(cfg, b), n, [&](size_t path, index_t r, const OverflowRun& run) {
    EXPECT_TRUE(std::isnan(run.out.view(r, 0, 0)) && std::isnan(run.lse(r, 0))) << "path " << path << " row " << r;
  });

  // Every score -1e40 * scale: -inf, so no key weighs anything.
  cfg = make_config(1, 1, 4);
  b = make_qkv(cfg, n, n, 3);
  for (index_t t = 0; t < n; ++t)
    for (index_t d = 0; d < 4; ++d) b.q.view(t, 0, d) = -1e20f, b.k.view(t, 0, d) = 1e20f;
  const Result empty_ref = run_reference(cfg, b, CausalKeys{});
  EXPECT_EQ(empty_ref.out.view(0, 0, 0), b.v.view(0, 0, 0));  // one key, weight 1
  for_each_computed_row(run_every_path(cfg, b), n, [&](size_t path, index_t r, const OverflowRun& run) {
    for (index_t d = 0; d < 4; ++d) EXPECT_EQ(run.out.view(r, 0, d), 0.0f) << "path " << path << " row " << r;
    EXPECT_EQ(run.lse(r, 0), -kInf) << "path " << path << " row " << r;
  });
}

TEST(Validation, NegativeQueryOffset) {
  Call c;
  c.options.query_offset = -1;
  expect_rejected(c, "query_offset must be non-negative, got -1", /*reference_too=*/false);
  c.options.causal = true;
  expect_rejected(c, "query_offset must be non-negative, got -1", /*reference_too=*/false);
}

// ---- Log-sum-exp ----

TEST(Validation, LseWrongTokenCount) {
  Call c;
  c.l.tokens = 4;
  expect_rejected(c, "lse: shape [4, 4] must be [5, 4]");
}

TEST(Validation, LseWrongHeadCount) {
  Call c;
  c.l.heads = 2;
  expect_rejected(c, "lse: shape [5, 2] must be [5, 4]");
}

TEST(Validation, LseOverlapping) {
  Call c;
  c.l.token_stride = 0;
  expect_rejected(c, "lse: strides make elements overlap");
}

TEST(Validation, LseNegativeStride) {
  Call c;
  c.l.head_stride = -1;
  expect_rejected(c, "lse: negative stride -1");
}

// ---- Other entry points ----

TEST(Validation, EmptyCustomExecutor) {
  EXPECT_TRUE(contains(error_message([] { Executor::custom({}); }), "executor: parallel_for is empty"));
}

TEST(Validation, ViewMatrixHeadsMustDivideColumns) {
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(3, 10);
  EXPECT_TRUE(contains(error_message([&] { view_matrix(m, 4); }), "heads (4) must divide the column count (10)"));
  EXPECT_TRUE(contains(error_message([&] { view_matrix(m, 0); }), "heads (0) must divide"));
  const auto v = view_matrix(m, 5);
  EXPECT_EQ(v.tokens, 3);
  EXPECT_EQ(v.heads, 5);
  EXPECT_EQ(v.head_dim, 2);
}

// Outputs must not share memory with inputs or each other: out over q shifted by one element, out
// over k, lse inside out and lse over q are refused before anything is written.
TEST(Validation, OutputsOverlappingInputsAreRefused) {
  {
    Call c;
    Tensor shared(6, 4, 16);  // q and out in one buffer, out one element later
    fill_value(shared.view, 0.5f);
    c.q = TensorView<const float>{shared.view.data, 5, 4, 16, 64, 16, 1};
    c.o = TensorView<float>{shared.view.data + 1, 5, 4, 16, 64, 16, 1};
    expect_rejected(c, "out: overlaps q in memory");
  }
  {
    Call c;
    Tensor kv(7, 4, 16);  // out laid over k's storage
    fill_value(kv.view, 0.5f);
    c.k = TensorView<const float>{kv.view.data, 7, 2, 16, 32, 16, 1};
    c.o = TensorView<float>{kv.view.data + 8, 5, 4, 16, 64, 16, 1};
    expect_rejected(c, "out: overlaps k in memory", /*reference_too=*/false);
  }
  {
    Call c;
    c.l = LseView{c.out.view.data, 5, 4, 4, 1};  // the lse inside out
    expect_rejected(c, "out: overlaps lse in memory");
  }
  {
    Call c;
    std::vector<float> q_and_lse(static_cast<size_t>(5 * 4 * 16), 0.5f);
    c.q = TensorView<const float>{q_and_lse.data(), 5, 4, 16, 64, 16, 1};
    c.l = LseView{q_and_lse.data() + 3, 5, 4, 4, 1};
    expect_rejected(c, "lse: overlaps q in memory");
  }
}

// tokens x heads x head_dim that wraps to 0 is not an empty view: null data is refused.
TEST(Validation, NullDataWithAWrappingSizeIsRefused) {
  Call c;
  c.k = TensorView<const float>{nullptr, std::int64_t{1} << 62, 2, 16, 0, 0, 0};
  const std::string m = error_message([&] { c.flash(); });
  EXPECT_TRUE(contains(m, "k: null data")) << m;
}

TEST(Validation, MergeRefusesANullPartList) {
  Tensor out(2, 1, 4);
  const std::string m = error_message([&] { merge(static_cast<const PartialAttention<float>*>(nullptr), 2, out.view); });
  EXPECT_TRUE(contains(m, "merge: parts is null")) << m;
}

// An output stride near the index maximum must be rejected cleanly, never overflow a product.
TEST(Validation, OutputStrideNearIndexMaxIsNotUndefinedBehaviour) {
  Call c;
  const Tensor q2 = random_tensor(2, 4, 16, 5);
  c.q = q2.cview();  // 2 queries: the strides pass, then out's 1 head fails the shape check
  c.o.tokens = 2;
  c.o.token_stride = std::numeric_limits<index_t>::max() - 1000;
  c.o.heads = 1;  // keep the other axes from adding to the extent
  expect_rejected(c, "out: shape [2, 1, 16] must be [2, 4, 16]");
}

}  // namespace
}  // namespace mmattn::test
