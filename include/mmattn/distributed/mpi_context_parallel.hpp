#pragma once
// Context-parallel prefill over MPI: every rank of a communicator holds its shard of Q, K and V
// (the contiguous positions ContextParallelPlan::rank(r).shard) and receives its shard of O and
// log-sum-exp. Needs MPI (MMATTN_BUILD_MPI, target mmattn::mpi); the core never includes it.
//
// Three steps, each one collective:
//   1. MPI_Alltoallv of the Q rows and the K/V rows each rank's items read and it does not hold:
//      exactly the ranges the plan lists (context_parallel_plan.hpp), nothing else.
//   2. Each rank computes its items (rank_attention.hpp): normalised partial rows and log-sum-exp.
//   3. MPI_Alltoallv of the partial rows back to the ranks that own them, merged there exactly
//      through log-sum-exp by merge() (merge.hpp).
// Why one Alltoallv and not a ring: a ring passes every shard through every rank, (R - 1) / R of
// all K/V per rank, whatever the mask; the plan's ranges are never more than that, and far less
// under windowed masks (context_parallel_report prints both). A ring only pays where every rank
// needs nearly every key (dense, causal text) and its transfers overlap the compute, which this
// layer does not do.
//
// Bad input on any rank throws mmattn::Error on every rank (the failing one names the problem)
// before anything is sent or written, so no rank is left waiting in a collective.

#include <mpi.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/distributed/context_parallel_plan.hpp"
#include "mmattn/distributed/rank_attention.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

namespace detail {

inline void mpi_check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  fail(std::string("context parallel: ") + what + " failed: " + std::string(text, static_cast<size_t>(length)));
}

// A contiguous MPI type of one packed row, freed with the object.
class MpiRowType {
 public:
  MpiRowType(index_t bytes) {  // NOLINT: a row's size in bytes
    MMATTN_REQUIRE(bytes > 0 && bytes <= INT_MAX, "context parallel: a row of " + std::to_string(bytes) +
                                                      " bytes does not fit one MPI count");
    mpi_check(MPI_Type_contiguous(static_cast<int>(bytes), MPI_BYTE, &type_), "MPI_Type_contiguous");
    mpi_check(MPI_Type_commit(&type_), "MPI_Type_commit");
  }
  ~MpiRowType() { MPI_Type_free(&type_); }
  MpiRowType(const MpiRowType&) = delete;
  MpiRowType& operator=(const MpiRowType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// Counts and displacements of one Alltoallv, in rows; MPI takes them as int.
struct MpiCounts {
  std::vector<int> count, displ;
  index_t total = 0;
  void add(index_t rows) {
    MMATTN_REQUIRE(rows <= INT_MAX && total <= INT_MAX,
                   "context parallel: " + std::to_string(rows) + " rows at offset " + std::to_string(total) +
                       " exceed MPI's int counts; use more ranks");
    count.push_back(static_cast<int>(rows));
    displ.push_back(static_cast<int>(total));
    total += rows;
  }
};

inline void alltoallv(const void* send, const MpiCounts& s, void* recv, const MpiCounts& r, MPI_Datatype row,
                      MPI_Comm comm) {
  mpi_check(MPI_Alltoallv(send, s.count.data(), s.displ.data(), row, recv, r.count.data(), r.displ.data(), row, comm),
            "MPI_Alltoallv");
}

// Packs the rows `ranges` (positions; the view's token t is position shard_begin + t) of one or two
// views, each row heads * head_dim elements (K then V when two).
template <class T>
void pack_rows(const std::vector<PositionRange>& ranges, index_t shard_begin, const TensorView<const T>& a,
               const TensorView<const T>* b, T*& dst) {
  for (const PositionRange& r : ranges)
    for (index_t p = r.begin; p < r.end; ++p)
      for (const TensorView<const T>* view : {&a, b}) {
        if (!view) continue;
        for (index_t h = 0; h < view->heads; ++h)
          for (index_t d = 0; d < view->head_dim; ++d) *dst++ = (*view)(p - shard_begin, h, d);
      }
}

}  // namespace detail

// out[t] and lse[t] (optional) for this rank's shard, t = position - shard.begin, equal to the
// single-process forward of cp.plan to fp32 rounding. Every rank of `comm` calls it with the same
// plan (communicator size = cp.num_ranks(), rank r holding rank(r).shard). T: the Q, K and V
// element type (float, Eigen::bfloat16, Eigen::half); O any of them.
template <class T, class TO>
void context_parallel_forward(const ContextParallelPlan& cp, const AttentionConfig& cfg, const TensorView<const T>& q,
                              const TensorView<const T>& k, const TensorView<const T>& v, const TensorView<TO>& out,
                              const LseView& lse, MPI_Comm comm,
                              const Executor& executor = Executor::default_executor()) {
  static_assert(is_element_type_v<T> && is_element_type_v<TO>,
                "mmattn: context parallel elements must be float, Eigen::bfloat16 or Eigen::half");
  int rank_int = 0, size_int = 0;
  detail::mpi_check(MPI_Comm_rank(comm, &rank_int), "MPI_Comm_rank");
  detail::mpi_check(MPI_Comm_size(comm, &size_int), "MPI_Comm_size");
  const index_t me = rank_int, ranks = cp.num_ranks();

  // Every rank checks its input; all fail together so none waits in a collective.
  std::string problem;
  try {
    MMATTN_REQUIRE(size_int == ranks, "context parallel: the plan is for " + std::to_string(ranks) +
                                          " ranks but the communicator has " + std::to_string(size_int));
    validate_attention(cfg, q, k, v, out, lse);
    const index_t shard = cp.rank(me).shard.size();
    MMATTN_REQUIRE(q.tokens == shard && k.tokens == shard,
                   "context parallel: rank " + std::to_string(me) + " holds positions [" +
                       std::to_string(cp.rank(me).shard.begin) + ", " + std::to_string(cp.rank(me).shard.end) +
                       "): q and k must have " + std::to_string(shard) + " tokens, got " + std::to_string(q.tokens) +
                       " and " + std::to_string(k.tokens));
  } catch (const Error& e) {
    problem = e.what();
  }
  // The plan must be the same everywhere: its size, work and split, summed and compared.
  index_t work = 0;
  for (const RankWork& rw : cp.ranks) work += rw.computed_pairs;
  long long mine[4] = {static_cast<long long>(problem.empty() ? 0 : 1), static_cast<long long>(cp.plan.key_tokens),
                       static_cast<long long>(work), static_cast<long long>(cp.plan.blocks.size())};
  long long lo[4], hi[4];
  detail::mpi_check(MPI_Allreduce(mine, lo, 4, MPI_LONG_LONG, MPI_MIN, comm), "MPI_Allreduce");
  detail::mpi_check(MPI_Allreduce(mine, hi, 4, MPI_LONG_LONG, MPI_MAX, comm), "MPI_Allreduce");
  if (!problem.empty()) throw Error(problem);
  MMATTN_REQUIRE(hi[0] == 0, "context parallel: another rank's input was refused (its error names it)");
  MMATTN_REQUIRE(lo[1] == hi[1] && lo[2] == hi[2] && lo[3] == hi[3], "context parallel: the ranks hold different plans");

  const CpRowShape row(cfg);
  const RankWork& w = cp.rank(me);
  const PositionRange shard = w.shard;
  const auto elems = [](index_t n) { return static_cast<size_t>(n); };

  // 1. Q and K/V rows to the ranks that read them.
  detail::MpiCounts q_send, q_recv, kv_send, kv_recv;
  std::vector<std::vector<PositionRange>> q_out(static_cast<size_t>(ranks)), kv_out(static_cast<size_t>(ranks));
  for (index_t s = 0; s < ranks; ++s) {
    q_out[static_cast<size_t>(s)] = cp.queries_from(s, me);
    kv_out[static_cast<size_t>(s)] = cp.keys_from(s, me);
    q_send.add(detail::count_positions(q_out[static_cast<size_t>(s)]));
    kv_send.add(detail::count_positions(kv_out[static_cast<size_t>(s)]));
    q_recv.add(detail::count_positions(cp.queries_from(me, s)));
    kv_recv.add(detail::count_positions(cp.keys_from(me, s)));
  }
  std::vector<T> q_packed(elems(q_send.total * row.q)), kv_packed(elems(kv_send.total * row.kv));
  T* q_dst = q_packed.data();
  T* kv_dst = kv_packed.data();
  for (index_t s = 0; s < ranks; ++s) {
    detail::pack_rows(q_out[static_cast<size_t>(s)], shard.begin, q, static_cast<const TensorView<const T>*>(nullptr),
                      q_dst);
    detail::pack_rows(kv_out[static_cast<size_t>(s)], shard.begin, k, &v, kv_dst);
  }
  // One row more each: compute_rank_partials' NaN row for positions never read.
  std::vector<T> q_rows(elems((q_recv.total + 1) * row.q)), kv_rows(elems((kv_recv.total + 1) * row.kv));
  {
    const detail::MpiRowType q_type(row.q * static_cast<index_t>(sizeof(T)));
    const detail::MpiRowType kv_type(row.kv * static_cast<index_t>(sizeof(T)));
    detail::alltoallv(q_packed.data(), q_send, q_rows.data(), q_recv, q_type.get(), comm);
    detail::alltoallv(kv_packed.data(), kv_send, kv_rows.data(), kv_recv, kv_type.get(), comm);
  }
  q_packed = {}, kv_packed = {};

  // 2. This rank's items.
  std::vector<float> partial(elems(q_recv.total * row.partial));
  compute_rank_partials(cp, me, cfg, q_rows.data(), kv_rows.data(), partial.data(), executor);
  q_rows = {}, kv_rows = {};

  // 3. Partial rows back to their owners: this rank's rows for owner s are the slice of
  // rank(me).queries inside s's shard, already contiguous in `partial`.
  detail::MpiCounts back_send, back_recv;
  for (index_t s = 0; s < ranks; ++s) {
    back_send.add(q_recv.count[static_cast<size_t>(s)]);
    back_send.displ.back() = static_cast<int>(rows_before(w.queries, cp.rank(s).shard.begin));
    back_recv.add(q_send.count[static_cast<size_t>(s)]);
  }
  std::vector<float> merged_in(elems(back_recv.total * row.partial));
  {
    const detail::MpiRowType partial_type(row.partial * static_cast<index_t>(sizeof(float)));
    detail::alltoallv(partial.data(), back_send, merged_in.data(), back_recv, partial_type.get(), comm);
  }
  std::vector<const float*> from(static_cast<size_t>(ranks), nullptr);
  for (index_t s = 0; s < ranks; ++s)
    if (back_recv.count[static_cast<size_t>(s)] > 0)
      from[static_cast<size_t>(s)] = merged_in.data() + elems(back_recv.displ[static_cast<size_t>(s)] * row.partial);
  merge_rank_partials(cp, me, cfg, from, out, lse);
}

}  // namespace mmattn
