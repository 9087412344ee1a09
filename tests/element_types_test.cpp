// Q, K, V and O as float, Eigen::bfloat16 or Eigen::half in the mixes runtimes use, through
// MultimodalAttention::forward (every mix on every random case of multimodal_attention_test.cpp's
// families) and flash_attention. Each run is checked twice:
//  - against the reference on the same rounded inputs, the kernel's own error: fp32 arithmetic
//    and O's final rounding, so O within u_O + 1e-5 (normwise) and the LSE within 1e-5;
//  - against the fp32 reference on the unrounded inputs, what the storage types cost: each mix
//    against its own bound from input rounding (InputRoundingBound below).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <type_traits>

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

// Every mix runs on every case; slow (sanitizer, debug) builds run a quarter, same families and mixes.
constexpr int kCases = kSlowBuild ? 60 : 240;

// The unit roundoff of a tensor stored as T, against the reference on the fp32 originals: 0 for
// float, whose values are the originals.
template <class T>
double input_roundoff() {
  return std::is_same_v<T, float> ? 0.0 : unit_roundoff<T>();
}

// The error rounding Q, K, V and O to their types may cause, against the fp32 reference on the
// unrounded inputs. O's error is measured relative to A = max over (row, dim) of sum_j p_j |v_j|,
// the size of the values each output averages (A >= max |O|; max |O| can be 45x smaller where
// long rows average to about 0, which would make V's rounding look 45x worse than it is):
//   O:   u_O + u_V + 6 (u_Q + u_K),  max |o - ref| / A
//   LSE: 8 (u_Q + u_K),              max |lse - ref| / max(1, |ref|)
// plus 1e-5 for fp32 arithmetic. Why these multiples of the unit roundoff u (2^-8 bf16, 2^-11 f16):
//  - rounding O moves each element by at most u_O |o| <= u_O A; O is a p-weighted average of V
//    rows, so rounding V moves it by at most u_V sum_j p_j |v_j| <= u_V A. Both are exact bounds.
//  - rounding Q or K moves a score s = scale q.k by u scale sum_d e_d q_d k_d with |e_d| <= 1: at
//    most u scale sum_d |q_d k_d| (tens of u here at head_dim 80 and the drawn scales up to 0.55),
//    but the e_d are independent, so it is a random walk of size ~u scale |q * k|_2 / sqrt(3):
//    0.6 u at the default scale, 2.8 u at the largest drawn one. The LSE moves by the p-weighted
//    score error, O by at most twice it (in units of A). Over 2000 random cases (seeds 0x1230000
//    on) the largest were 3.6 u per rounded Q or K for O and 5.3 u for the LSE: 6 and 8 leave room
//    without being loose (the test prints the measured maxima next to the bounds).
struct InputRoundingBound {
  double o = 0, lse = 0;
};
template <class TQ, class TK, class TV, class TO>
InputRoundingBound input_rounding_bound() {
  const double uq = input_roundoff<TQ>(), uk = input_roundoff<TK>(), uv = input_roundoff<TV>();
  const double uo = input_roundoff<TO>();
  return {uo + uv + 6 * (uq + uk) + 1e-5, 8 * (uq + uk) + 1e-5};
}
// Against the reference on the rounded inputs: O's own rounding plus fp32 arithmetic.
template <class TO>
double rounded_tolerance() {
  return input_roundoff<TO>() + 1e-5;
}

// A = max over (row, head, dim) of sum_j p_j |v_j|: the reference run on |V|.
template <class Allowed>
double averaged_magnitude(const AttentionConfig& cfg, const Buffers& b, const Allowed& allowed, index_t query_offset) {
  Tensor abs_v = b.v;
  for_each_index(abs_v.view, [&](index_t t, index_t h, index_t d) { abs_v.view(t, h, d) = std::abs(abs_v.view(t, h, d)); });
  const Result r = run_reference(cfg, b.q.cview(), b.k.cview(), abs_v.cview(), allowed, query_offset);
  double a = 0;
  for_each_index(r.out.view, [&](index_t t, index_t h, index_t d) { a = std::max(a, double(r.out.view(t, h, d))); });
  return a;
}
// max |a - e| / A; NaN if either side has a NaN, so a bound check fails.
double error_over(const Tensor& actual, const Tensor& expected, double magnitude) {
  double worst = 0;
  for_each_index(expected.view, [&](index_t t, index_t h, index_t d) {
    const double diff = std::abs(double(actual.view(t, h, d)) - double(expected.view(t, h, d)));
    worst = std::isnan(diff) || std::isnan(worst) ? std::numeric_limits<double>::quiet_NaN() : std::max(worst, diff);
  });
  return worst / std::max(magnitude, 1e-30);
}

struct Worst {
  double o_rounded = 0, lse_rounded = 0, o_fp32 = 0, lse_fp32 = 0;
};
double nan_max(double a, double b) { return std::isnan(a) || std::isnan(b) ? std::numeric_limits<double>::quiet_NaN() : std::max(a, b); }

// The fp32 inputs and what every mix of a case compares with.
struct Expected {
  Buffers fp32;
  Result exact;
  double magnitude = 0;
};

template <class TQ, class TK, class TV, class TO>
std::string run_typed_case(const cases::Case& c, const MultimodalAttention<float>& mm, const Expected& want,
                           Worst& worst) {
  const index_t nq = mm.plan().num_queries();
  const TypedTensor<TQ> q(restride(want.fp32.q, c.q_storage));
  const TypedTensor<TK> k(restride(want.fp32.k, c.kv_storage));
  const TypedTensor<TV> v(restride(want.fp32.v, c.kv_storage));
  TypedTensor<TO> out(nq, c.cfg.num_heads, c.cfg.head_dim, c.out_storage);
  Lse lse(nq, c.cfg.num_heads, c.cfg.num_heads + c.lse_pad);
  mm.forward(q.cview(), k.cview(), v.cview(), out.view, lse.view);

  const Tensor qr = q.widened(), kr = k.widened(), vr = v.widened(), o = out.widened();
  const Result rounded = run_reference(c.cfg, qr.cview(), kr.cview(), vr.cview(), mm.predicate(), mm.plan().query_begin);

  std::string problems;
  const double o_r = max_relative_error(o, rounded.out), l_r = max_lse_error(lse, rounded.lse);
  const double o_e = error_over(o, want.exact.out, want.magnitude), l_e = max_lse_error(lse, want.exact.lse);
  const InputRoundingBound bound = input_rounding_bound<TQ, TK, TV, TO>();
  if (!(o_r <= rounded_tolerance<TO>())) problems += " O vs rounded-input reference " + std::to_string(o_r) + ";";
  if (!(l_r <= 1e-5)) problems += " LSE vs rounded-input reference " + std::to_string(l_r) + ";";
  if (!(o_e <= bound.o)) problems += " O vs fp32 reference " + std::to_string(o_e) + " > " + std::to_string(bound.o) + ";";
  if (!(l_e <= bound.lse)) problems += " LSE vs fp32 reference " + std::to_string(l_e) + " > " + std::to_string(bound.lse) + ";";
  if (!out.padding_intact()) problems += " output padding written;";
  worst.o_rounded = nan_max(worst.o_rounded, o_r), worst.lse_rounded = nan_max(worst.lse_rounded, l_r);
  worst.o_fp32 = nan_max(worst.o_fp32, o_e), worst.lse_fp32 = nan_max(worst.lse_fp32, l_e);
  return problems;
}

using Runner = std::string (*)(const cases::Case&, const MultimodalAttention<float>&, const Expected&, Worst&);
struct Mix {
  const char* name;
  Runner run;
  InputRoundingBound bound;
};
template <class TQ, class TK, class TV, class TO>
Mix mix(const char* name) {
  return {name, &run_typed_case<TQ, TK, TV, TO>, input_rounding_bound<TQ, TK, TV, TO>()};
}

// What runtimes store: fp32 activations over a 16-bit cache, all-16-bit, 16-bit in and fp32 out,
// and one odd mix of all three types; fp32 throughout as the control.
const Mix kMixes[] = {
    mix<float, bf16, bf16, float>("q f32, kv bf16, o f32"),
    mix<float, f16, f16, float>("q f32, kv f16, o f32"),
    mix<bf16, bf16, bf16, bf16>("all bf16"),
    mix<f16, f16, f16, f16>("all f16"),
    mix<bf16, bf16, bf16, float>("q bf16, kv bf16, o f32"),
    mix<float, float, float, bf16>("q f32, kv f32, o bf16"),
    mix<f16, bf16, float, f16>("q f16, k bf16, v f32, o f16"),
    mix<float, float, float, float>("all f32"),
};

TEST(ElementTypes, MatchReferenceOverRandomCases) {
  std::map<std::string, int> families;
  std::map<std::string, Worst> worst;
  int failed = 0;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = cases::random_case(0x7e9e0000u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    ++families[c.family];
    const MultimodalAttention<float> mm(c.cfg, c.layout, c.policy, c.options,
                                        c.serial ? Executor::serial() : Executor::default_executor());
    const index_t nq = mm.plan().num_queries(), n = c.layout.size(), q0 = mm.plan().query_begin;
    Expected want{make_qkv(c.cfg, nq, n, c.seed), {}, 0};
    want.exact = run_reference(c.cfg, want.fp32, mm.predicate(), q0);
    want.magnitude = averaged_magnitude(c.cfg, want.fp32, mm.predicate(), q0);
    for (const Mix& m : kMixes) {
      std::string problems;
      const std::string err = error_message([&] { problems = m.run(c, mm, want, worst[m.name]); });
      if (err != "<no exception>") problems = " threw: " + err;
      if (!problems.empty() && ++failed <= 5) ADD_FAILURE() << m.name << ":" << problems;
    }
  }
  EXPECT_EQ(failed, 0) << "of " << kCases << " cases x " << std::size(kMixes) << " mixes (first 5 shown)";
  std::printf("%d cases x %zu mixes; worst O / LSE error vs the rounded-input reference, then vs the fp32 "
              "reference (O over max sum p|v|) with the bound:\n",
              kCases, std::size(kMixes));
  for (const Mix& m : kMixes) {
    const Worst& w = worst[m.name];
    std::printf("  %-28s %.3g / %.3g   %.3g / %.3g  (bound %.3g / %.3g)\n", m.name, w.o_rounded, w.lse_rounded,
                w.o_fp32, w.lse_fp32, m.bound.o, m.bound.lse);
  }
  for (const auto& [family, count] : families) EXPECT_GE(count, kSlowBuild ? 1 : 3) << family;
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
  const double magnitude = causal ? averaged_magnitude(cfg, fp32, CausalKeys{}, query_offset)
                                  : averaged_magnitude(cfg, fp32, AllKeys{}, query_offset);
  const InputRoundingBound bound = input_rounding_bound<TQ, TKV, TKV, TO>();
  EXPECT_LE(max_relative_error(out.widened(), rounded.out), rounded_tolerance<TO>());
  EXPECT_LE(max_lse_error(lse, rounded.lse), 1e-5);
  EXPECT_LE(error_over(out.widened(), exact.out, magnitude), bound.o);
  EXPECT_LE(max_lse_error(lse, exact.lse), bound.lse);
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
