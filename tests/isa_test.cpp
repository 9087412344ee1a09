// The instruction-set paths of the prefill kernel (kernel/isa.hpp): every path this CPU runs
// against the reference over random cases, bit-identical results whatever thread computed them,
// a path the CPU lacks reported as skipped by name, and the MMATTN_ISA switch. ctest also runs the
// whole test binary once per path with MMATTN_ISA set (tests/CMakeLists.txt); the environment
// below skips every test of such a run when the CPU lacks the path it asks for.

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "mmattn/kernel/isa.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/reference.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

class RequestedIsa : public ::testing::Environment {
 public:
  void SetUp() override {
    const std::optional<Isa> isa = isa_from_environment();
    if (isa && !isa_supported(*isa)) GTEST_SKIP() << "MMATTN_ISA=" << isa_name(*isa) << ": this CPU lacks it";
  }
};
[[maybe_unused]] ::testing::Environment* const kRequestedIsa = ::testing::AddGlobalTestEnvironment(new RequestedIsa);

// Runs the test body with `isa` forced, restoring the process's path afterwards.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) : saved_(active_isa()) { set_isa(isa); }
  ~ScopedIsa() { set_isa(saved_); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa saved_;
};

class IsaPath : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!isa_supported(GetParam())) GTEST_SKIP() << isa_name(GetParam()) << ": this CPU lacks it";
  }
};

// Odd head dims and tiles that don't divide exercise every padding of the micro-kernels: rows to
// kRows, keys to whole panels, dims to whole vectors.
TEST_P(IsaPath, MatchesReferenceOverRandomCases) {
  const ScopedIsa isa(GetParam());
  constexpr int kCases = kSlowBuild ? 40 : 150;
  int failed = 0;
  for (int i = 0; i < kCases; ++i) {
    const cases::Case c = cases::random_case(0x15a00000u + static_cast<std::uint32_t>(i));
    SCOPED_TRACE(cases::describe(c));
    const MultimodalAttention<float> mm(c.cfg, c.layout, c.policy, c.options);
    const index_t nq = mm.plan().num_queries(), n = c.layout.size();
    const Buffers in = make_qkv(c.cfg, nq, n, c.seed);
    Tensor out(nq, c.cfg.num_heads, c.cfg.head_dim);
    Lse lse(nq, c.cfg.num_heads);
    mm.forward(in.q.cview(), in.k.cview(), in.v.cview(), out.view, lse.view);
    const Result ref = run_reference(c.cfg, in, mm.predicate(), mm.plan().query_begin);
    const double o_err = max_relative_error(out, ref.out), l_err = max_lse_error(lse, ref.lse);
    if (!(o_err <= 1e-5 && l_err <= 1e-5) && ++failed <= 5)
      ADD_FAILURE() << "O error " << o_err << ", LSE error " << l_err;
  }
  EXPECT_EQ(failed, 0) << "of " << kCases << " cases";
}

// Work items go to whichever thread is free: the bits must not depend on which one it was.
TEST_P(IsaPath, SameBitsSerialAndThreaded) {
  const ScopedIsa isa(GetParam());
  SequenceLayout layout;
  layout.add_image(13, 11).add_text(41).add_image(9, 9).add_text(70);
  const AttentionConfig cfg = make_config(6, 2, 72);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(5, 7));
  const MultimodalAttention<float> serial(cfg, layout, policy, {}, Executor::serial());
  const MultimodalAttention<float> threaded(cfg, layout, policy, {}, Executor::openmp(2));
  const index_t n = layout.size();
  const Buffers in = make_qkv(cfg, n, n, 7);
  Tensor a(n, 6, 72), b(n, 6, 72);
  serial.forward(in.q.cview(), in.k.cview(), in.v.cview(), a.view);
  threaded.forward(in.q.cview(), in.k.cview(), in.v.cview(), b.view);
  EXPECT_TRUE(same_bits(a.storage, b.storage));
}

INSTANTIATE_TEST_SUITE_P(, IsaPath, ::testing::ValuesIn(kAllIsas),
                         [](const ::testing::TestParamInfo<Isa>& info) { return std::string(isa_name(info.param)); });

TEST(Isa, NamesRoundTripAndUnknownNamesAreErrors) {
  for (Isa isa : kAllIsas) EXPECT_EQ(isa_from_name(isa_name(isa)), isa);
  EXPECT_FALSE(isa_from_name("sse9").has_value());
  const char* saved = std::getenv("MMATTN_ISA");
  const std::string saved_value = saved ? saved : "";
  ::setenv("MMATTN_ISA", "sse9", 1);
  EXPECT_TRUE(contains(error_message([] { (void)isa_from_environment(); }), "MMATTN_ISA=sse9"));
  if (saved) {
    ::setenv("MMATTN_ISA", saved_value.c_str(), 1);
  } else {
    ::unsetenv("MMATTN_ISA");
  }
}

TEST(Isa, ForcingAPathTheCpuLacksIsAnError) {
  EXPECT_TRUE(isa_supported(Isa::kEigen));
  EXPECT_TRUE(isa_supported(best_isa()));
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) {
      EXPECT_TRUE(contains(error_message([&] { set_isa(isa); }), isa_name(isa)));
    }
  }
}

}  // namespace
}  // namespace mmattn::test
