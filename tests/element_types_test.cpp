// Q, K, V and O as float, Eigen::bfloat16 or Eigen::half in the mixes runtimes use, through
// MultimodalAttention::forward (the random families of multimodal_attention_test.cpp) and
// flash_attention. Each case is checked twice:
//  - against the reference run on the same rounded inputs: only fp32 accumulation and O's own
//    rounding differ, so O is within 2 unit roundoffs of its type (1e-5 for f32) and LSE 1e-5;
//  - against the fp32 reference on the unrounded inputs, with the tolerance of the narrowest type
//    in the call: bf16 2e-2, f16 2e-3 for O (normwise relative), twice that for the LSE. bf16 keeps
//    8 significant bits (unit roundoff 2^-9 ~ 2e-3); rounding Q and K moves each score by up to a
//    few unit roundoffs of |q||k| summed over head_dim, which rows with few keys (windows, chunks)
//    do not average out: 2e-2 is ten unit roundoffs.
//    (|a - e| / max(1, |e|)): the LSE is a score, whose input-rounding error scales with
//    scale * sum_d |q_d k_d| rather than with the score itself (a row seeing one key shows it).

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

#include "mmattn/flash_attention.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/reference.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"
#include "typed_tensor.hpp"

namespace mmattn::test {
namespace {

using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;

// Sanitizer builds run half (15 per mix): the families and mixes stay, the count drops.
constexpr int kCases = kSlowBuild ? 120 : 240;  // 30 per mix

// Tolerance against the fp32 reference on unrounded inputs, by the narrowest type in the call.
template <class T>
double fp32_tolerance() {
  if constexpr (std::is_same_v<T, bf16>) return 2e-2;
  if constexpr (std::is_same_v<T, f16>) return 2e-3;
  return 1e-5;
}
template <class... T>
double narrowest_tolerance() {
  return std::max({fp32_tolerance<T>()...});
}
template <class TO>
double rounded_tolerance() {
  return std::is_same_v<TO, float> ? 1e-5 : 2 * unit_roundoff<TO>() + 1e-5;
}

struct Worst {
  double o_rounded = 0, lse_rounded = 0, o_fp32 = 0, lse_fp32 = 0;
};

template <class TQ, class TK, class TV, class TO>
std::string run_typed_case(const cases::Case& c, Worst& worst) {
  const MultimodalAttention<float> mm(c.cfg, c.layout, c.policy, c.options,
                                      c.serial ? Executor::serial() : Executor::default_executor());
  const index_t nq = mm.plan().num_queries(), n = c.layout.size();
  const Buffers fp32 = make_qkv(c.cfg, nq, n, c.seed);
  const TypedTensor<TQ> q(restride(fp32.q, c.q_storage));
  const TypedTensor<TK> k(restride(fp32.k, c.kv_storage));
  const TypedTensor<TV> v(restride(fp32.v, c.kv_storage));
  TypedTensor<TO> out(nq, c.cfg.num_heads, c.cfg.head_dim, c.out_storage);
  Lse lse(nq, c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
  mm.forward(q.cview(), k.cview(), v.cview(), out.view, lse.view);

  const Tensor qr = q.widened(), kr = k.widened(), vr = v.widened(), o = out.widened();
  const Result rounded = run_reference(c.cfg, qr.cview(), kr.cview(), vr.cview(), mm.predicate(), mm.plan().query_begin);
  const Result exact = run_reference(c.cfg, fp32, mm.predicate(), mm.plan().query_begin);

  std::string problems;
  const double o_r = max_relative_error(o, rounded.out), l_r = max_lse_error(lse, rounded.lse);
  const double o_e = max_relative_error(o, exact.out), l_e = max_lse_error(lse, exact.lse);
  const double tol_r = rounded_tolerance<TO>(), tol_e = narrowest_tolerance<TQ, TK, TV, TO>();
  if (!(o_r <= tol_r)) problems += " O vs rounded-input reference " + std::to_string(o_r) + ";";
  if (!(l_r <= 1e-5)) problems += " LSE vs rounded-input reference " + std::to_string(l_r) + ";";
  if (!(o_e <= tol_e)) problems += " O vs fp32 reference " + std::to_string(o_e) + ";";
  if (!(l_e <= 2 * tol_e)) problems += " LSE vs fp32 reference " + std::to_string(l_e) + ";";
  if (!out.padding_intact()) problems += " output padding written;";
  worst.o_rounded = std::max(worst.o_rounded, o_r), worst.lse_rounded = std::max(worst.lse_rounded, l_r);
  worst.o_fp32 = std::max(worst.o_fp32, o_e), worst.lse_fp32 = std::max(worst.lse_fp32, l_e);
  return problems;
}

using Runner = std::string (*)(const cases::Case&, Worst&);
struct Mix {
  const char* name;
  Runner run;
};

// What runtimes store: fp32 activations over a 16-bit cache, all-16-bit, 16-bit in and fp32 out,
// and one odd mix of all three types.
const Mix kMixes[] = {
    {"q f32, kv bf16, o f32", &run_typed_case<float, bf16, bf16, float>},
    {"q f32, kv f16, o f32", &run_typed_case<float, f16, f16, float>},
    {"all bf16", &run_typed_case<bf16, bf16, bf16, bf16>},
    {"all f16", &run_typed_case<f16, f16, f16, f16>},
    {"q bf16, kv bf16, o f32", &run_typed_case<bf16, bf16, bf16, float>},
    {"q f32, kv f32, o bf16", &run_typed_case<float, float, float, bf16>},
    {"q f16, k bf16, v f32, o f16", &run_typed_case<f16, bf16, float, f16>},
    {"all f32", &run_typed_case<float, float, float, float>},
};
constexpr int kMixCount = sizeof(kMixes) / sizeof(kMixes[0]);

TEST(ElementTypes, MatchReferenceOverRandomCases) {
  std::map<std::string, int> families;
  std::map<std::string, Worst> worst;
  int failed = 0;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = cases::random_case(0x7e9e0000u + static_cast<std::uint32_t>(i));
    const Mix& mix = kMixes[i % kMixCount];
    SCOPED_TRACE(std::string(mix.name) + ": " + cases::describe(c));
    ++families[c.family];
    std::string problems;
    const std::string err = error_message([&] { problems = mix.run(c, worst[mix.name]); });
    if (err != "<no exception>") problems = " threw: " + err;
    if (!problems.empty() && ++failed <= 5) ADD_FAILURE() << "case failed:" << problems;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases << " cases (first 5 shown)";
  std::printf("%d cases; worst errors (O / LSE) vs rounded-input reference, vs fp32 reference:\n", kCases);
  for (const auto& [name, w] : worst)
    std::printf("  %-28s %.3g / %.3g   %.3g / %.3g\n", name.c_str(), w.o_rounded, w.lse_rounded, w.o_fp32, w.lse_fp32);
  for (const auto& [family, count] : families) EXPECT_GE(count, 3) << family;
}

// flash_attention (dense and causal, chunk offsets) in fp32-over-bf16 and all-f16.
template <class TQ, class TKV, class TO>
void check_flash(bool causal, index_t query_offset) {
  const AttentionConfig cfg = make_config(4, 2, 64);
  const index_t nq = 37, nk = query_offset + nq + (causal ? 0 : 11);
  const Buffers fp32 = make_qkv(cfg, nq, nk, 77 + static_cast<std::uint32_t>(query_offset));
  const TypedTensor<TQ> q(fp32.q);
  const TypedTensor<TKV> k(restride(fp32.k, Storage::padded_tokens)), v(restride(fp32.v, Storage::heads_major));
  TypedTensor<TO> out(nq, cfg.num_heads, cfg.head_dim, Storage::dim_strided);
  Lse lse(nq, cfg.num_heads);
  GlobalOptions options;
  options.causal = causal;
  options.query_offset = query_offset;
  flash_attention<TileTraits<16, 32>>(cfg, q.cview(), k.cview(), v.cview(), out.view, lse.view, options);
  const Tensor qr = q.widened(), kr = k.widened(), vr = v.widened();
  const Result rounded = causal ? run_reference(cfg, qr.cview(), kr.cview(), vr.cview(), CausalKeys{}, query_offset)
                                : run_reference(cfg, qr.cview(), kr.cview(), vr.cview(), AllKeys{}, query_offset);
  const Result exact = causal ? run_reference(cfg, fp32, CausalKeys{}, query_offset)
                              : run_reference(cfg, fp32, AllKeys{}, query_offset);
  EXPECT_LE(max_relative_error(out.widened(), rounded.out), rounded_tolerance<TO>());
  EXPECT_LE(max_lse_error(lse, rounded.lse), 1e-5);
  EXPECT_LE(max_relative_error(out.widened(), exact.out), (narrowest_tolerance<TQ, TKV, TO>()));
  EXPECT_LE(max_lse_error(lse, exact.lse), (2 * narrowest_tolerance<TQ, TKV, TO>()));
  EXPECT_TRUE(out.padding_intact());
}

TEST(ElementTypes, FlashAttentionMixes) {
  for (const bool causal : {false, true})
    for (const index_t offset : {index_t{0}, index_t{29}}) {
      SCOPED_TRACE(std::string(causal ? "causal" : "dense") + ", query offset " + std::to_string(offset));
      check_flash<float, bf16, float>(causal, offset);
      check_flash<f16, f16, f16>(causal, offset);
      check_flash<bf16, bf16, bf16>(causal, offset);
    }
}

// Conversion edge values pass through unchanged: bf16 and f16 outputs of exact inputs are the
// rounded fp32 results, and large values in bf16 (beyond f16's range) stay finite.
TEST(ElementTypes, OutputIsTheRoundedFp32Result) {
  const AttentionConfig cfg = make_config(2, 1, 16);
  const SequenceLayout layout = SequenceLayout::images_then_text(1, 3, 3, 6);
  PlanOptions options;
  options.tiles = {8, 8};
  const MultimodalAttention<float> mm(cfg, layout, RegionPolicy::structured(Window2D::sliding(3, 3)), options);
  const index_t n = layout.size();
  Buffers b = make_qkv(cfg, n, n, 5);
  for (float& x : b.v.storage) x *= 1e5f;  // |V| up to ~4e5: inf in f16, fine in bf16
  const TypedTensor<bf16> k(b.k), v(b.v);
  Tensor out32(n, cfg.num_heads, cfg.head_dim);
  TypedTensor<bf16> out16(n, cfg.num_heads, cfg.head_dim);
  mm.forward(b.q.cview(), k.cview(), v.cview(), out32.view);
  mm.forward(b.q.cview(), k.cview(), v.cview(), out16.view);
  for_each_index(out32.view, [&](index_t t, index_t h, index_t d) {
    ASSERT_EQ(static_cast<float>(out16.view(t, h, d)), static_cast<float>(bf16(out32.view(t, h, d))))
        << t << " " << h << " " << d;
    ASSERT_TRUE(std::isfinite(out32.view(t, h, d)));
  });
}

}  // namespace
}  // namespace mmattn::test
