// context_parallel_forward (distributed/mpi_context_parallel.hpp) on every rank of MPI_COMM_WORLD,
// run by ctest under mpirun with 2 and 4 processes. Every rank builds the same layout, plan and
// Q/K/V from the same seed, keeps its shard in NaN-padded storage, and checks its rows of O and
// log-sum-exp against the reference and the single-process forward. Checks never return early:
// a rank that left a test would leave the others waiting in the next collective.

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "mmattn/distributed/mpi_context_parallel.hpp"
#include "mmattn/mmattn.hpp"
#include "random_cases.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

using namespace cases;

index_t world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
index_t world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// The worst value over every rank, so every rank reports the same verdict.
double worst_over_ranks(double local) {
  double worst = 0;
  MPI_Allreduce(&local, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

// Rows [begin, begin + tokens) of a view.
template <class T>
TensorView<T> rows_of(TensorView<T> v, index_t begin, index_t tokens) {
  v.data += begin * v.token_stride;
  v.tokens = tokens;
  return v;
}
LseView rows_of(LseView v, index_t begin, index_t tokens) {
  v.data += begin * v.token_stride;
  v.tokens = tokens;
  return v;
}

Tensor shard_copy(const Tensor& full, PositionRange shard, Storage storage) {
  Tensor t(shard.size(), full.heads(), full.head_dim(), storage);
  for_each_index(t.view, [&](index_t i, index_t h, index_t d) { t.view(i, h, d) = full.view(shard.begin + i, h, d); });
  return t;
}

struct CaseSpec {
  std::string name;
  SequenceLayout layout;
  RegionPolicy policy;
  PlanOptions options;
  AttentionConfig cfg;
  std::uint32_t seed = 1;
};

// Runs one case with every split, even and random shards; every rank checks its rows.
void run_case(const CaseSpec& c) {
  const Plan plan = make_plan(c.layout, c.policy, c.options);
  const index_t n = plan.key_tokens, ranks = world_size(), me = world_rank();
  if (n < ranks) return;  // the same on every rank: the layout alone decides
  const Buffers x = make_qkv(c.cfg, n, n, c.seed);
  const Result ref = run_reference(c.cfg, x, MaskPredicate{&c.layout, &c.policy});
  const MultimodalAttention<float> single(c.cfg, c.layout, c.policy, c.options, Executor::serial());
  Tensor single_out(n, c.cfg.num_heads, c.cfg.head_dim);
  single.forward(x.q.cview(), x.k.cview(), x.v.cview(), single_out.view);

  std::mt19937 gen(c.seed * 2654435761u);
  for (CpSplit split : {CpSplit::automatic, CpSplit::work_cut, CpSplit::query_home, CpSplit::key_home,
                        CpSplit::by_position})
    for (bool even : {true, false}) {
      std::vector<index_t> bounds;
      if (!even) {  // random cut points, the same on every rank (same generator, same draws)
        while (static_cast<index_t>(bounds.size()) < ranks - 1) {
          const index_t cut = uniform(gen, 1, n - 1);
          if (std::find(bounds.begin(), bounds.end(), cut) == bounds.end()) bounds.push_back(cut);
        }
        std::sort(bounds.begin(), bounds.end());
        bounds.insert(bounds.begin(), 0);
        bounds.push_back(n);
      }
      const ContextParallelPlan cp = partition_plan(plan, ranks, split, bounds);
      const PositionRange shard = cp.rank(me).shard;
      const auto storage = static_cast<Storage>(uniform(gen, 0, 3));
      const Tensor q = shard_copy(x.q, shard, storage), k = shard_copy(x.k, shard, storage),
                   v = shard_copy(x.v, shard, storage);
      Tensor out(shard.size(), c.cfg.num_heads, c.cfg.head_dim, storage);
      Lse lse(shard.size(), c.cfg.num_heads, c.cfg.num_heads + 1);
      const Executor executor = gen() % 2 ? Executor::serial() : Executor::default_executor();
      context_parallel_forward(cp, c.cfg, q.cview(), k.cview(), v.cview(), out.view, lse.view, MPI_COMM_WORLD,
                               executor);
      const std::string what = c.name + " (" + cp_split_name(split) + ", " + (even ? "even" : "random") +
                               " shards, storage " + storage_name(storage) + ")";
      const TensorView<const float> ref_rows = rows_of(ref.out.cview(), shard.begin, shard.size());
      EXPECT_LE(worst_over_ranks(max_relative_error(out.cview(), ref_rows)), 1e-5) << what;
      EXPECT_LE(worst_over_ranks(max_lse_error(lse.view, rows_of(ref.lse.view, shard.begin, shard.size()))), 1e-5)
          << what;
      EXPECT_LE(worst_over_ranks(max_relative_error(
                    out.cview(), rows_of(single_out.cview(), shard.begin, shard.size()))),
                1e-5)
          << what;
      EXPECT_EQ(worst_over_ranks(out.padding_intact() ? 0.0 : 1.0), 0.0) << what << ": padding written";
    }
}

CaseSpec preset(std::string name, SequenceLayout layout, RegionPolicy policy, std::uint32_t seed) {
  CaseSpec c{std::move(name), std::move(layout), std::move(policy), {}, make_config(4, 2, 32), seed};
  c.options.tiles = {16, 32};
  return c;
}

TEST(MpiContextParallel, PresetsMatchTheReference) {
  const CaseSpec cases[] = {
      preset("dense", SequenceLayout().add_text(70).add_image(8, 9).add_text(30), RegionPolicy::dense(), 1),
      preset("causal", SequenceLayout().add_image(9, 8).add_text(120), RegionPolicy::decoder_causal(), 2),
      preset("structured", SequenceLayout().add_image(12, 10).add_text(40).add_image(7, 9).add_text(60),
             RegionPolicy::structured(Window2D::sliding(5, 5)), 3),
      preset("gemma3_local", SequenceLayout().add_text(30).add_image(10, 10).add_text(150),
             RegionPolicy::gemma3_local(48), 4),
      preset("video", SequenceLayout().add_text(12).add_video(6, 8, 8).add_text(50),
             RegionPolicy::video_windows(Window3D::sliding(3, 5, 5)), 5),
  };
  for (const CaseSpec& c : cases) run_case(c);
}

TEST(MpiContextParallel, RandomCasesMatchTheReference) {
  for (std::uint32_t seed = 1; seed <= 40; ++seed) {
    const Case r = random_case(seed);
    CaseSpec c{"random " + describe(r), r.layout, r.policy, r.options, r.cfg, seed};
    c.options.query_begin = 0, c.options.query_end = -1;
    run_case(c);
  }
}

// bf16 storage: the ranks' merge against the single-process forward on the same inputs.
TEST(MpiContextParallel, Bfloat16InputsMatchTheSingleProcessForward) {
  const SequenceLayout layout = SequenceLayout().add_image(10, 12).add_text(90);
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(3, 3));
  const AttentionConfig cfg = make_config(4, 4, 16);
  const Plan plan = make_plan(layout, policy);
  const index_t n = plan.key_tokens, me = world_rank();
  const Buffers x = make_qkv(cfg, n, n, 9);
  std::vector<Eigen::bfloat16> q(static_cast<size_t>(n * 4 * 16)), k(q.size()), v(q.size());
  for_each_index(x.q.view, [&](index_t t, index_t h, index_t d) {
    const auto i = static_cast<size_t>((t * 4 + h) * 16 + d);
    q[i] = Eigen::bfloat16(x.q.view(t, h, d)), k[i] = Eigen::bfloat16(x.k.view(t, h, d));
    v[i] = Eigen::bfloat16(x.v.view(t, h, d));
  });
  const auto full = [&](const std::vector<Eigen::bfloat16>& s) { return view_thd<const Eigen::bfloat16>(s.data(), n, 4, 16); };
  Tensor single(n, 4, 16);
  MultimodalAttention<Eigen::bfloat16>(cfg, layout, policy).forward(full(q), full(k), full(v), single.view);
  const ContextParallelPlan cp = partition_plan(plan, world_size());
  const PositionRange shard = cp.rank(me).shard;
  Tensor out(shard.size(), 4, 16);
  context_parallel_forward(cp, cfg, rows_of(full(q), shard.begin, shard.size()),
                           rows_of(full(k), shard.begin, shard.size()), rows_of(full(v), shard.begin, shard.size()),
                           out.view, {}, MPI_COMM_WORLD);
  EXPECT_LE(worst_over_ranks(max_relative_error(out.cview(), rows_of(single.cview(), shard.begin, shard.size()))),
            1e-5);
}

// Bad input on one rank: every rank throws, none waits in a collective; the rank at fault names it.
TEST(MpiContextParallel, BadInputOnOneRankFailsEveryRank) {
  const SequenceLayout layout = SequenceLayout().add_image(6, 6).add_text(20);
  const RegionPolicy policy = RegionPolicy::structured();
  const AttentionConfig cfg = make_config(2, 2, 8);
  const Plan plan = make_plan(layout, policy);
  const ContextParallelPlan cp = partition_plan(plan, world_size());
  const index_t me = world_rank();
  const PositionRange shard = cp.rank(me).shard;
  const index_t q_tokens = me == 0 ? shard.size() + 1 : shard.size();  // rank 0 passes one row too many
  const Tensor q(q_tokens, 2, 8), k(shard.size(), 2, 8), v(shard.size(), 2, 8);
  Tensor out(q_tokens, 2, 8);
  const std::string message = error_message(
      [&] { context_parallel_forward(cp, cfg, q.cview(), k.cview(), v.cview(), out.view, {}, MPI_COMM_WORLD); });
  if (me == 0) {
    EXPECT_TRUE(contains(message, "q and k must have")) << message;
  } else {
    EXPECT_TRUE(contains(message, "another rank's input was refused")) << message;
  }
  EXPECT_TRUE(out.padding_intact() && std::all_of(out.storage.begin(), out.storage.end(), [](float f) { return std::isnan(f); }))
      << "nothing written";

  // A plan for another number of ranks.
  const ContextParallelPlan other = partition_plan(plan, world_size() + 1);
  const Tensor q2(other.rank(std::min(me, other.num_ranks() - 1)).shard.size(), 2, 8);
  Tensor out2(q2.tokens(), 2, 8);
  const std::string m2 = error_message([&] {
    context_parallel_forward(other, cfg, q2.cview(), q2.cview(), q2.cview(), out2.view, {}, MPI_COMM_WORLD);
  });
  EXPECT_TRUE(contains(m2, "the plan is for " + std::to_string(world_size() + 1) + " ranks")) << m2;
}

}  // namespace
}  // namespace mmattn::test

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // Only rank 0 prints: the checks take the worst value over all ranks, so its verdict is theirs.
  if (mmattn::test::world_rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int result = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
