// The Python module `mmattn`: layouts, rules, policies and presets, MultimodalAttention over numpy
// arrays in [tokens, heads, head_dim], and decode over contiguous or paged caches.
//
// Arrays are used in place: their strides become the library's TensorView strides (zero-copy),
// and an array the library cannot view (a dtype it does not take, strides that are not whole
// elements, not a numpy array) is refused with a message, never copied, so `out` is always
// written where the caller expects. torch CPU tensors pass through `.numpy()`, which shares
// memory. Element types: float32, float16, and bf16 as uint16 holding the top 16 bits of a
// float32 (numpy has no bfloat16; `to_bf16` / `from_bf16` convert, and torch's bf16 tensors
// give the same bits through `t.view(torch.int16).numpy().view(np.uint16)`). The GIL is released
// while the kernels run. mmattn::Error arrives as mmattn.Error, a ValueError, with the C++ message.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "erased_attention.hpp"
#include "mmattn/batched_attention.hpp"
#include "mmattn/cascade.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"

namespace py = pybind11;
using mmattn::index_t;
namespace bindings = mmattn::bindings;

namespace {

// Which key segments a region rule covers, relative to the query's segment.
enum class Scope : unsigned char { same_segment, other_segment, any_segment };

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// A numpy array as the library's strided view, in place. `name` prefixes every message.
bindings::ErasedTensor tensor_of(const py::object& object, const char* name, bool writable) {
  const std::string n(name);
  if (!py::isinstance<py::array>(object))
    mmattn::detail::fail(n + ": expected a numpy array [tokens, heads, head_dim], got " +
                         py::str(py::type::of(object)).cast<std::string>() + " (torch CPU tensors: pass t.numpy())");
  const auto a = py::reinterpret_borrow<py::array>(object);
  MMATTN_REQUIRE(a.ndim() == 3, n + ": expected a [tokens, heads, head_dim] array, got " + std::to_string(a.ndim()) +
                                    " dimensions");
  // By kind, size and byte order: an equal dtype need not be numpy's singleton descriptor.
  const py::dtype dt = a.dtype();
  const std::string kind = py::str(dt.attr("kind")).cast<std::string>();
  const bool native = dt.attr("isnative").cast<bool>();
  bindings::ElementType type = bindings::ElementType::f32;
  if (native && kind == "f" && a.itemsize() == 4) {
    type = bindings::ElementType::f32;
  } else if (native && kind == "f" && a.itemsize() == 2) {
    type = bindings::ElementType::f16;
  } else if (native && kind == "u" && a.itemsize() == 2) {
    type = bindings::ElementType::bf16;
  } else {
    mmattn::detail::fail(n + ": dtype " + dtype_str(a) +
                         " is not supported: float32, float16, or uint16 holding bf16 bits (mmattn.to_bf16)");
  }
  MMATTN_REQUIRE(!writable || a.writeable(), n + ": the array is read-only");
  const auto item = static_cast<index_t>(a.itemsize());
  index_t strides[3] = {};
  for (py::ssize_t i = 0; i < 3; ++i) {
    const auto bytes = static_cast<index_t>(a.strides(i));
    MMATTN_REQUIRE(bytes % item == 0, n + ": stride " + std::to_string(bytes) + " bytes of axis " + std::to_string(i) +
                                          " is not a whole number of " + std::to_string(item) +
                                          "-byte elements; pass np.ascontiguousarray(" + n + ")");
    strides[i] = bytes / item;
  }
  if (a.size() == 0) {  // numpy gives empty arrays zero strides; an empty view's strides mean nothing
    strides[2] = 1;
    strides[1] = static_cast<index_t>(a.shape(2));
    strides[0] = static_cast<index_t>(a.shape(1) * a.shape(2));
  }
  MMATTN_REQUIRE(reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(item) == 0,
                 n + ": data is not aligned to its " + std::to_string(item) + "-byte elements");
  return {const_cast<void*>(a.data()), type,       static_cast<index_t>(a.shape(0)), static_cast<index_t>(a.shape(1)),
          static_cast<index_t>(a.shape(2)), strides[0], strides[1], strides[2]};
}

py::dtype numpy_dtype(bindings::ElementType t) {
  switch (t) {
    case bindings::ElementType::f32: return py::dtype::of<float>();
    case bindings::ElementType::f16: return py::dtype("float16");
    case bindings::ElementType::bf16: return py::dtype::of<std::uint16_t>();
  }
  return py::dtype::of<float>();
}

// The output array: the caller's (checked writable, used in place) or a new one of q's dtype.
py::array output_of(const py::object& out, const bindings::ErasedTensor& q, index_t heads, index_t head_dim,
                    bindings::ErasedTensor& view) {
  if (!out.is_none()) {
    view = tensor_of(out, "out", /*writable=*/true);
    return py::reinterpret_borrow<py::array>(out);
  }
  py::array a(numpy_dtype(q.type), std::vector<py::ssize_t>{static_cast<py::ssize_t>(q.tokens),
                                                            static_cast<py::ssize_t>(heads),
                                                            static_cast<py::ssize_t>(head_dim)});
  view = tensor_of(a, "out", /*writable=*/true);
  return a;
}

py::array_t<float> lse_array(index_t tokens, index_t heads, mmattn::LseView& view) {
  py::array_t<float> lse({static_cast<py::ssize_t>(tokens), static_cast<py::ssize_t>(heads)});
  view = mmattn::view_lse(lse.mutable_data(), tokens, heads);
  return lse;
}

// Every entry point's ending: `call(out_view, lse_view)` runs without the GIL into `out` (or a new
// array, output_of) and the LSE when asked for; returns out, or (out, lse).
template <class Call>
py::object run_into_output(const py::object& out, const bindings::ErasedTensor& q, index_t heads, index_t head_dim,
                           bool return_lse, Call&& call) {
  bindings::ErasedTensor to;
  py::array out_array = output_of(out, q, heads, head_dim, to);
  mmattn::LseView lse_view;
  std::optional<py::array_t<float>> lse;
  if (return_lse) lse = lse_array(to.tokens, heads, lse_view);
  {
    py::gil_scoped_release release;
    call(to, lse_view);
  }
  if (lse) return py::make_tuple(std::move(out_array), std::move(*lse));
  return std::move(out_array);
}

// The attention class as Python holds it: the planned C++ object plus what the constructor was told.
struct Attention {
  mmattn::MultimodalAttention<float> attention;

  // The constructor's keyword arguments; None takes the library's default.
  static Attention make(const mmattn::SequenceLayout& layout,
                                                 const mmattn::RegionPolicy& policy, index_t num_heads,
                                                 std::optional<index_t> num_kv_heads, index_t head_dim,
                                                 std::optional<float> scale, index_t query_begin,
                                                 std::optional<index_t> query_end, bool all_keys_present, int threads,
                                                 std::optional<index_t> tile_query, std::optional<index_t> tile_key,
                                                 std::optional<index_t> tile_window_query) {
    MMATTN_REQUIRE(threads >= 0, "threads must be >= 0 (0: OpenMP's default), got " + std::to_string(threads));
    mmattn::PlanOptions options;
    options.query_begin = query_begin;
    options.query_end = query_end.value_or(-1);
    options.all_keys_present = all_keys_present;
    if (tile_query) options.tiles.query = *tile_query;
    if (tile_key) options.tiles.key = *tile_key;
    if (tile_window_query) options.tiles.window_query = *tile_window_query;
    const mmattn::AttentionConfig cfg{num_heads, num_kv_heads.value_or(num_heads), head_dim, scale};
    return {{cfg, layout, policy, options, mmattn::Executor::openmp(threads)}};
  }

  py::object forward(const py::object& q, const py::object& k, const py::object& v, const py::object& out,
                     bool return_lse) const {
    const bindings::ErasedTensor tq = tensor_of(q, "q", false), tk = tensor_of(k, "k", false),
                                 tv = tensor_of(v, "v", false);
    const mmattn::AttentionConfig& cfg = attention.config();
    return run_into_output(out, tq, cfg.num_heads, cfg.head_dim, return_lse,
                           [&](const bindings::ErasedTensor& to, const mmattn::LseView& lse) {
                             bindings::forward(attention, tq, tk, tv, to, lse);
                           });
  }

  // Seconds of each of `reps` forward calls, timed in C++ around the library call alone: what
  // python/bench/bench_binding.py subtracts from the Python-side time to get the binding's overhead.
  std::vector<double> time_forward(const py::object& q, const py::object& k, const py::object& v,
                                   const py::object& out, int reps) const {
    MMATTN_REQUIRE(reps >= 1, "reps must be >= 1, got " + std::to_string(reps));
    const bindings::ErasedTensor tq = tensor_of(q, "q", false), tk = tensor_of(k, "k", false),
                                 tv = tensor_of(v, "v", false), to = tensor_of(out, "out", true);
    std::vector<double> seconds;
    py::gil_scoped_release release;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      bindings::forward(attention, tq, tk, tv, to, {});
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return seconds;
  }

  // The mask as a dense bool array [num_queries, layout size], from the library's predicate.
  // O(queries x keys): for tests and pictures, never a fast path.
  py::array_t<bool> mask() const {
    const mmattn::Plan& plan = attention.plan();
    const index_t rows = plan.num_queries(), cols = attention.layout().size(), begin = plan.query_begin;
    py::array_t<bool> m({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
    bool* data = m.mutable_data();
    const mmattn::MaskPredicate allowed = attention.predicate();
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) data[r * cols + c] = allowed(begin + r, c);
    return m;
  }

  py::dict stats() const {
    const mmattn::PlanStats s = attention.stats();
    py::dict d;
    d["query_tokens"] = s.query_tokens;
    d["key_tokens"] = s.key_tokens;
    d["allowed_pairs"] = s.allowed_pairs();
    d["computed_pairs"] = s.computed_pairs();
    d["full_pairs"] = s.full_pairs();
    d["dense_pairs"] = s.dense_pairs();
    d["efficiency"] = s.efficiency();
    d["density"] = s.density();
    d["workspace_bytes_per_thread"] = mmattn::workspace_bytes_per_thread(attention.plan(), attention.config().head_dim);
    py::dict regions;
    for (int i = 0; i < mmattn::kRegions; ++i) {
      const mmattn::RegionStats& r = s.regions[static_cast<size_t>(i)];
      if (r.allowed_pairs == 0 && r.computed_pairs == 0) continue;
      py::dict rd;
      rd["query_tokens"] = r.query_tokens;
      rd["allowed_pairs"] = r.allowed_pairs;
      rd["computed_pairs"] = r.computed_pairs;
      rd["full_pairs"] = r.full_pairs;
      rd["full_blocks"] = r.full_blocks;
      rd["partial_blocks"] = r.partial_blocks;
      rd["efficiency"] = r.efficiency();
      regions[py::str(mmattn::Region::at(i).name())] = rd;
    }
    d["regions"] = regions;
    return d;
  }
};

// K or V of decode: [tokens, heads, head_dim] (one block holding every token) or a paged pool
// [num_blocks, block_size, heads, head_dim] with a block table.
bindings::ErasedPagedCache cache_of(const py::object& object, const char* name, const py::object& block_table,
                                    index_t tokens, std::vector<std::int32_t>& contiguous_table) {
  const std::string n(name);
  if (!py::isinstance<py::array>(object))
    mmattn::detail::fail(n + ": expected a numpy array, got " + py::str(py::type::of(object)).cast<std::string>());
  const auto a = py::reinterpret_borrow<py::array>(object);
  bindings::ErasedPagedCache c;
  if (block_table.is_none()) {  // contiguous: one block holding every token
    const bindings::ErasedTensor t = tensor_of(object, name, false);
    contiguous_table.assign(1, 0);
    c = {t.data,        t.type,      contiguous_table.data(), 1, std::max<index_t>(t.tokens, 1), 1, t.tokens, t.heads,
         t.head_dim,    0,           t.token_stride,          t.head_stride, t.dim_stride};
    return c;
  }
  MMATTN_REQUIRE(a.ndim() == 4, n + ": a paged cache is [num_blocks, block_size, heads, head_dim], got " +
                                    std::to_string(a.ndim()) + " dimensions");
  MMATTN_REQUIRE(a.shape(0) > 0, n + ": the pool has no blocks");
  // The pool's last three axes as a [block_size, heads, head_dim] tensor, for the dtype and strides.
  const bindings::ErasedTensor block = tensor_of(a[py::make_tuple(0)], name, false);
  MMATTN_REQUIRE(a.strides(0) % a.itemsize() == 0, n + ": the block stride is not a whole number of elements");
  if (!py::isinstance<py::array_t<std::int32_t>>(block_table) ||
      !py::reinterpret_borrow<py::array>(block_table).dtype().is(py::dtype::of<std::int32_t>()))
    mmattn::detail::fail("block_table: expected a 1-D numpy int32 array");
  const auto table = py::reinterpret_borrow<py::array>(block_table);
  MMATTN_REQUIRE(table.ndim() == 1 && (table.strides(0) == 4 || table.shape(0) <= 1),
                 "block_table: expected a contiguous 1-D int32 array");
  c.pool = const_cast<void*>(a.data());
  c.type = block.type;
  c.block_table = static_cast<const std::int32_t*>(table.data());
  c.num_blocks = static_cast<index_t>(a.shape(0));
  c.block_size = static_cast<index_t>(a.shape(1));
  c.table_blocks = static_cast<index_t>(table.shape(0));
  c.tokens = tokens;
  c.heads = block.heads;
  c.head_dim = block.head_dim;
  c.block_stride = static_cast<index_t>(a.strides(0) / a.itemsize());
  c.token_stride = block.token_stride;
  c.head_stride = block.head_stride;
  c.dim_stride = block.dim_stride;
  return c;
}

// Decode's arguments as views, then run(cfg, q, k, v, out, lse, executor) without the GIL. A
// paged cache holds `paged_tokens` tokens; heads and head_dim come from q and the cache.
template <class Run>
py::object decode_with(const py::object& q, const py::object& k, const py::object& v, const py::object& block_table,
                       index_t paged_tokens, const py::object& out, bool return_lse, std::optional<float> scale,
                       int threads, Run&& run) {
  MMATTN_REQUIRE(threads >= 0, "threads must be >= 0 (0: OpenMP's default), got " + std::to_string(threads));
  const bindings::ErasedTensor tq = tensor_of(q, "q", false);
  std::vector<std::int32_t> k_table, v_table;
  const bindings::ErasedPagedCache ck = cache_of(k, "k", block_table, paged_tokens, k_table);
  const bindings::ErasedPagedCache cv = cache_of(v, "v", block_table, paged_tokens, v_table);
  const mmattn::AttentionConfig cfg{tq.heads, ck.heads, tq.head_dim, scale};
  return run_into_output(out, tq, tq.heads, tq.head_dim, return_lse,
                         [&](const bindings::ErasedTensor& to, const mmattn::LseView& lse) {
                           run(cfg, tq, ck, cv, to, lse, mmattn::Executor::openmp(threads));
                         });
}

// Sequences as Python gives them: (layout, policy) or (layout, policy, query_begin, query_end) tuples.
std::vector<mmattn::BatchSequence> sequences_of(const std::vector<py::tuple>& sequences) {
  std::vector<mmattn::BatchSequence> seqs;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const py::tuple& t = sequences[i];
    MMATTN_REQUIRE(t.size() == 2 || t.size() == 4, "batch: sequence " + std::to_string(i) +
                                                       " must be (layout, policy) or (layout, policy, "
                                                       "query_begin, query_end), got " +
                                                       std::to_string(t.size()) + " items");
    mmattn::BatchSequence s{t[0].cast<mmattn::SequenceLayout>(), t[1].cast<mmattn::RegionPolicy>()};
    if (t.size() == 4) {
      s.query_begin = t[2].cast<index_t>();
      s.query_end = t[3].is_none() ? -1 : t[3].cast<index_t>();
    }
    seqs.push_back(std::move(s));
  }
  return seqs;
}

// One K or V cache per sequence of `batch`: `arg` a list of caches (contiguous, or paged pools with
// `block_tables`), or one paged pool shared by every sequence's table. `contiguous` keeps the
// tables of contiguous caches alive (one per sequence).
std::vector<bindings::ErasedPagedCache> caches_of(const mmattn::BatchedAttention& batch, const py::object& arg,
                                                  const char* name, const py::object& block_tables,
                                                  std::vector<std::vector<std::int32_t>>& contiguous) {
  const index_t n = batch.num_sequences();
  std::vector<py::object> tables(static_cast<size_t>(n), py::none());
  if (!block_tables.is_none()) {
    const auto list = block_tables.cast<std::vector<py::object>>();
    MMATTN_REQUIRE(static_cast<index_t>(list.size()) == n, "block_tables: holds " + std::to_string(list.size()) +
                                                               " tables but the batch has " + std::to_string(n) +
                                                               " sequences");
    tables = list;
  }
  const bool per_sequence = py::isinstance<py::list>(arg) || py::isinstance<py::tuple>(arg);
  const auto list = per_sequence ? arg.cast<std::vector<py::object>>() : std::vector<py::object>{};
  MMATTN_REQUIRE(!per_sequence || static_cast<index_t>(list.size()) == n,
                 std::string(name) + ": holds " + std::to_string(list.size()) + " caches but the batch has " +
                     std::to_string(n) + " sequences");
  MMATTN_REQUIRE(per_sequence || !block_tables.is_none(),
                 std::string(name) + ": one array for every sequence is a shared paged pool and needs "
                                     "block_tables; otherwise pass a list of caches");
  contiguous.assign(static_cast<size_t>(n), {});
  std::vector<bindings::ErasedPagedCache> caches;
  for (index_t i = 0; i < n; ++i) {
    const auto at = static_cast<size_t>(i);
    const std::string who = std::string(name) + "[" + std::to_string(i) + "]";
    caches.push_back(cache_of(per_sequence ? list[at] : arg, who.c_str(), tables[at], batch.plan(i).key_tokens,
                              contiguous[at]));
  }
  return caches;
}

// The batched class as Python holds it.
struct Batch {
  mmattn::BatchedAttention batch;

  static Batch make(const std::vector<py::tuple>& sequences, index_t num_heads, std::optional<index_t> num_kv_heads,
                    index_t head_dim, std::optional<float> scale, int threads) {
    MMATTN_REQUIRE(threads >= 0, "threads must be >= 0 (0: OpenMP's default), got " + std::to_string(threads));
    const mmattn::AttentionConfig cfg{num_heads, num_kv_heads.value_or(num_heads), head_dim, scale};
    return {mmattn::BatchedAttention(cfg, sequences_of(sequences), {}, mmattn::Executor::openmp(threads))};
  }

  py::object forward(const py::object& q, const py::object& k, const py::object& v, const py::object& block_tables,
                     const py::object& out, bool return_lse, bool split_kv) const {
    const bindings::ErasedTensor tq = tensor_of(q, "q", false);
    std::vector<std::vector<std::int32_t>> k_tables, v_tables;
    const auto ck = caches_of(batch, k, "k", block_tables, k_tables), cv = caches_of(batch, v, "v", block_tables, v_tables);
    const mmattn::AttentionConfig& cfg = batch.config();
    return run_into_output(out, tq, cfg.num_heads, cfg.head_dim, return_lse,
                           [&](const bindings::ErasedTensor& to, const mmattn::LseView& lse) {
                             bindings::batched_forward(batch, tq, ck, cv, to, lse, split_kv);
                           });
  }
};

// The cascade class as Python holds it: sequences as Batch's, sharing their first prefix_tokens K/V.
struct Cascade {
  mmattn::CascadeAttention cascade;

  static Cascade make(const std::vector<py::tuple>& sequences, index_t prefix_tokens, index_t num_heads,
                      std::optional<index_t> num_kv_heads, index_t head_dim, std::optional<float> scale, int threads) {
    MMATTN_REQUIRE(threads >= 0, "threads must be >= 0 (0: OpenMP's default), got " + std::to_string(threads));
    const mmattn::AttentionConfig cfg{num_heads, num_kv_heads.value_or(num_heads), head_dim, scale};
    return {mmattn::CascadeAttention(cfg, prefix_tokens, sequences_of(sequences), {},
                                     mmattn::Executor::openmp(threads))};
  }

  py::object forward(const py::object& q, const py::object& prefix_k, const py::object& prefix_v, const py::object& k,
                     const py::object& v, const py::object& block_tables, const py::object& out,
                     bool return_lse) const {
    const bindings::ErasedTensor tq = tensor_of(q, "q", false), pk = tensor_of(prefix_k, "prefix_k", false),
                                 pv = tensor_of(prefix_v, "prefix_v", false);
    std::vector<std::vector<std::int32_t>> k_tables, v_tables;
    const mmattn::BatchedAttention& batch = cascade.suffixes();
    const auto ck = caches_of(batch, k, "k", block_tables, k_tables), cv = caches_of(batch, v, "v", block_tables, v_tables);
    const mmattn::AttentionConfig& cfg = batch.config();
    return run_into_output(out, tq, cfg.num_heads, cfg.head_dim, return_lse,
                           [&](const bindings::ErasedTensor& to, const mmattn::LseView& lse) {
                             bindings::cascade_forward(cascade, tq, pk, pv, ck, cv, to, lse);
                           });
  }
};

py::object decode(const mmattn::SequenceLayout& layout, const mmattn::RegionPolicy& policy, const py::object& q,
                  const py::object& k, const py::object& v, const py::object& block_table, const py::object& out,
                  bool return_lse, std::optional<float> scale, int threads) {
  return decode_with(q, k, v, block_table, layout.size(), out, return_lse, scale, threads,
                     [&](const mmattn::AttentionConfig& cfg, const auto& tq, const auto& ck, const auto& cv,
                         const auto& to, const mmattn::LseView& lse, const mmattn::Executor& executor) {
                       bindings::decode(cfg, layout, policy, tq, ck, cv, to, lse, executor);
                     });
}

py::object decode_step(const mmattn::DecodeStep& step, const py::object& q, const py::object& k, const py::object& v,
                       const py::object& block_table, const py::object& out, bool return_lse,
                       std::optional<float> scale, int threads) {
  return decode_with(q, k, v, block_table, step.layout().size(), out, return_lse, scale, threads,
                     [&](const mmattn::AttentionConfig& cfg, const auto& tq, const auto& ck, const auto& cv,
                         const auto& to, const mmattn::LseView& lse, const mmattn::Executor& executor) {
                       bindings::decode(cfg, step, tq, ck, cv, to, lse, executor);
                     });
}

// float32 -> bf16 bits, rounding to nearest even (Eigen::bfloat16's conversion); NaN stays NaN.
py::array_t<std::uint16_t> to_bf16(const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
  py::array_t<std::uint16_t> r(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  const float* src = x.data();
  std::uint16_t* dst = r.mutable_data();
  for (py::ssize_t i = 0; i < x.size(); ++i) dst[i] = Eigen::bfloat16(src[i]).value;
  return r;
}

py::array_t<float> from_bf16(const py::array_t<std::uint16_t, py::array::c_style>& x) {
  py::array_t<float> r(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  const std::uint16_t* src = x.data();
  float* dst = r.mutable_data();
  for (py::ssize_t i = 0; i < x.size(); ++i) {
    const std::uint32_t bits = std::uint32_t{src[i]} << 16;
    std::memcpy(&dst[i], &bits, sizeof(float));
  }
  return r;
}

py::list segments_of(const mmattn::SequenceLayout& layout) {
  py::list l;
  for (const mmattn::Segment& s : layout.segments()) {
    py::dict d;
    d["kind"] = s.kind;
    d["start"] = s.start;
    d["length"] = s.length;
    d["frames"] = s.frames;
    d["rows"] = s.rows;
    d["cols"] = s.cols;
    l.append(d);
  }
  return l;
}

}  // namespace

PYBIND11_MODULE(mmattn, m) {
  m.doc() = "Exact attention for multimodal LLM inference on CPUs (mmattn, header-only C++ library).";
  m.attr("__version__") = mmattn::version_string();
  m.attr("ELEMENT_MIXES") = bindings::supported_mixes();
  py::register_exception<mmattn::Error>(m, "Error", PyExc_ValueError);

  py::enum_<mmattn::SegmentKind>(m, "SegmentKind")
      .value("text", mmattn::SegmentKind::text)
      .value("image", mmattn::SegmentKind::image)
      .value("video", mmattn::SegmentKind::video);
  py::enum_<mmattn::WindowKind>(m, "WindowKind")
      .value("sliding", mmattn::WindowKind::sliding)
      .value("partitioned", mmattn::WindowKind::partitioned);
  py::enum_<Scope>(m, "Scope", "Which key segments a region rule covers, relative to the query's segment.")
      .value("same_segment", Scope::same_segment)
      .value("other_segment", Scope::other_segment)
      .value("any_segment", Scope::any_segment);

  py::class_<mmattn::SequenceLayout>(m, "Layout", "The token sequence: text, image and video segments in order.")
      .def(py::init<>())
      .def("add_text", &mmattn::SequenceLayout::add_text, py::arg("tokens"), py::return_value_policy::reference)
      .def("add_image", &mmattn::SequenceLayout::add_image, py::arg("rows"), py::arg("cols"),
           py::return_value_policy::reference)
      .def("add_video", &mmattn::SequenceLayout::add_video, py::arg("frames"), py::arg("rows"), py::arg("cols"),
           py::return_value_policy::reference)
      .def("extend_text", &mmattn::SequenceLayout::extend_text, py::arg("tokens"), py::return_value_policy::reference,
           "Lengthens the last text segment (or appends one): a decode step's growth.")
      .def_static("images_then_text", &mmattn::SequenceLayout::images_then_text, py::arg("images"), py::arg("rows"),
                  py::arg("cols"), py::arg("text_tokens"))
      .def("size", &mmattn::SequenceLayout::size)
      .def("__len__", [](const mmattn::SequenceLayout& l) { return l.size(); })
      .def_property_readonly("segments", &segments_of)
      .def("segment_index", &mmattn::SequenceLayout::segment_index, py::arg("position"));

  py::class_<mmattn::Window2D>(m, "Window2D", "A 2-D window inside one image (NATTEN sliding or partitioned).")
      .def_static("sliding", &mmattn::Window2D::sliding, py::arg("height"), py::arg("width"), py::arg("dilation_h") = 1,
                  py::arg("dilation_w") = 1)
      .def_static("partitioned", &mmattn::Window2D::partitioned, py::arg("height"), py::arg("width"))
      .def("and_causal", &mmattn::Window2D::and_causal)
      .def_readonly("kind", &mmattn::Window2D::kind)
      .def_readonly("height", &mmattn::Window2D::height)
      .def_readonly("width", &mmattn::Window2D::width)
      .def_readonly("dilation_h", &mmattn::Window2D::dilation_h)
      .def_readonly("dilation_w", &mmattn::Window2D::dilation_w)
      .def_readonly("causal", &mmattn::Window2D::causal)
      .def("name", &mmattn::Window2D::name)
      .def("__repr__", [](const mmattn::Window2D& w) { return "Window2D(" + w.name() + ")"; });

  py::class_<mmattn::Window3D>(m, "Window3D", "A (frame, row, col) window inside one video (NATTEN na3d).")
      .def_static("sliding", &mmattn::Window3D::sliding, py::arg("frames"), py::arg("height"), py::arg("width"))
      .def_static("partitioned", &mmattn::Window3D::partitioned, py::arg("frames"), py::arg("height"), py::arg("width"))
      .def("dilated", &mmattn::Window3D::dilated, py::arg("frames"), py::arg("height"), py::arg("width"))
      .def("causal_in_time", &mmattn::Window3D::causal_in_time)
      .def_readonly("kind", &mmattn::Window3D::kind)
      .def_readonly("frames", &mmattn::Window3D::frames)
      .def_readonly("height", &mmattn::Window3D::height)
      .def_readonly("width", &mmattn::Window3D::width)
      .def_readonly("dilation_f", &mmattn::Window3D::dilation_f)
      .def_readonly("dilation_h", &mmattn::Window3D::dilation_h)
      .def_readonly("dilation_w", &mmattn::Window3D::dilation_w)
      .def_readonly("causal_frames", &mmattn::Window3D::causal_frames)
      .def("name", &mmattn::Window3D::name)
      .def("__repr__", [](const mmattn::Window3D& w) { return "Window3D(" + w.name() + ")"; });

  py::class_<mmattn::Rule>(m, "Rule", "Which keys of one key segment a query may see.")
      .def(py::init<mmattn::Window2D>(), py::arg("window"))
      .def(py::init<mmattn::Window3D>(), py::arg("window"))
      .def_static("none", &mmattn::Rule::none)
      .def_static("full", &mmattn::Rule::full)
      .def_static("causal", &mmattn::Rule::causal)
      .def_static("band", &mmattn::Rule::band, py::arg("left"), py::arg("right"))
      .def_static("chunked", &mmattn::Rule::chunked, py::arg("chunk"))
      .def_static(
          "dilated_band",
          [](index_t left, index_t right, index_t dilation) {
            return mmattn::Rule(mmattn::DilatedBandRule{left, right, dilation});
          },
          py::arg("left"), py::arg("right"), py::arg("dilation"))
      .def("and_causal", &mmattn::Rule::and_causal)
      .def("name", &mmattn::Rule::name)
      .def("__repr__", [](const mmattn::Rule& r) { return "Rule(" + r.name() + ")"; });
  py::implicitly_convertible<mmattn::Window2D, mmattn::Rule>();
  py::implicitly_convertible<mmattn::Window3D, mmattn::Rule>();

  using P = mmattn::RegionPolicy;
  py::class_<P>(m, "Policy", "A rule per region (query kind, key kind, same segment or another), overrides, sinks.")
      .def(py::init<>(), "Every region's rule none.")
      .def(
          "set",
          [](P& p, mmattn::SegmentKind query, mmattn::SegmentKind key, const mmattn::Rule& rule, Scope scope) -> P& {
            if (scope == Scope::same_segment) return p.set(mmattn::Region{query, key, true}, rule);
            if (scope == Scope::other_segment) return p.set(mmattn::Region::across(query, key), rule);
            return p.set(query, key, rule);
          },
          py::arg("query_kind"), py::arg("key_kind"), py::arg("rule"), py::arg("scope") = Scope::any_segment,
          py::return_value_policy::reference)
      .def("set_all", &P::set_all, py::arg("rule"), py::return_value_policy::reference)
      .def("set_segments", &P::set_segments, py::arg("query_segment"), py::arg("key_segment"), py::arg("rule"),
           py::return_value_policy::reference)
      .def("with_sinks", &P::with_sinks, py::arg("sinks"), py::return_value_policy::reference)
      .def_property_readonly("sinks", &P::sinks)
      .def(
          "rule",
          [](const P& p, mmattn::SegmentKind query, mmattn::SegmentKind key, bool same) {
            return p.rule(mmattn::Region{query, key, same});
          },
          py::arg("query_kind"), py::arg("key_kind"), py::arg("same_segment"))
      .def(
          "validate", [](const P& p, const mmattn::SequenceLayout& layout) { p.validate(layout); }, py::arg("layout"))
      .def(
          "allowed",
          [](const P& p, const mmattn::SequenceLayout& layout, index_t q, index_t k) {
            return mmattn::allowed(layout, p, q, k);
          },
          py::arg("layout"), py::arg("q"), py::arg("k"))
      .def_static("decoder_causal", &P::decoder_causal)
      .def_static("dense", &P::dense)
      .def_static("bidirectional_images", &P::bidirectional_images)
      .def_static("gemma3_global", &P::gemma3_global)
      .def_static("gemma3_local", &P::gemma3_local, py::arg("window") = 1024)
      .def_static("sliding_causal", &P::sliding_causal, py::arg("window"))
      .def_static("llama4_chunked", &P::llama4_chunked, py::arg("chunk") = 8192)
      .def_static("vision_block_diagonal", &P::vision_block_diagonal)
      .def_static("qwen25vl_window", &P::qwen25vl_window, py::arg("size") = 8)
      .def_static("video_windows", &P::video_windows, py::arg("window") = mmattn::Window3D::sliding(3, 7, 7))
      .def_static("structured", &P::structured, py::arg("window") = mmattn::Window2D::sliding(7, 7),
                  py::arg("video") = mmattn::Window3D::sliding(3, 7, 7));

  py::class_<Attention>(m, "MultimodalAttention",
                        "Plans a layout under a policy once; forward() runs exact attention under that mask.")
      .def(py::init(&Attention::make),
           py::arg("layout"), py::arg("policy"), py::kw_only(), py::arg("num_heads"),
           py::arg("num_kv_heads") = py::none(),
           py::arg("head_dim"), py::arg("scale") = py::none(), py::arg("query_begin") = 0,
           py::arg("query_end") = py::none(), py::arg("all_keys_present") = false, py::arg("threads") = 0,
           py::arg("tile_query") = py::none(), py::arg("tile_key") = py::none(),
           py::arg("tile_window_query") = py::none())
      .def("forward", &Attention::forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out") = py::none(),
           py::arg("return_lse") = false,
           "q: [num_queries, num_heads, head_dim]; k, v: [layout size, num_kv_heads, head_dim]; float32, float16 or "
           "uint16 (bf16 bits). Returns out, or (out, lse) with lse float32 [num_queries, num_heads].")
      .def("_time_forward", &Attention::time_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
           py::arg("reps"))
      .def("mask", &Attention::mask)
      .def("plan_report", [](const Attention& a, int threads) { return a.attention.report(threads); },
           py::arg("threads") = 1)
      .def("svg", [](const Attention& a) { return a.attention.svg(); })
      .def("stats", &Attention::stats)
      .def_property_readonly("num_queries", [](const Attention& a) { return a.attention.plan().num_queries(); })
      .def_property_readonly("query_begin", [](const Attention& a) { return a.attention.plan().query_begin; })
      .def_property_readonly("num_heads", [](const Attention& a) { return a.attention.config().num_heads; })
      .def_property_readonly("num_kv_heads", [](const Attention& a) { return a.attention.config().num_kv_heads; })
      .def_property_readonly("head_dim", [](const Attention& a) { return a.attention.config().head_dim; })
      .def_property_readonly("scale", [](const Attention& a) { return a.attention.config().resolved_scale(); })
      .def_property_readonly("layout", [](const Attention& a) { return a.attention.layout(); });

  m.def("decode", &decode, py::arg("layout"), py::arg("policy"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::kw_only(), py::arg("block_table") = py::none(), py::arg("out") = py::none(), py::arg("return_lse") = false,
        py::arg("scale") = py::none(), py::arg("threads") = 0,
        "The layout's last q.shape[0] positions over a cache of the whole layout: k, v [tokens, kv_heads, head_dim], "
        "or paged pools [num_blocks, block_size, kv_heads, head_dim] with block_table (int32).");
  py::class_<mmattn::DecodeStep>(m, "DecodeStep",
                                 "A decode step planned once (the layout's last new_tokens positions), run by every "
                                 "layer of the step.")
      .def(py::init([](const mmattn::SequenceLayout& layout, const P& policy, index_t new_tokens) {
             return mmattn::DecodeStep(layout, policy, new_tokens);
           }),
           py::arg("layout"), py::arg("policy"), py::arg("new_tokens") = 1)
      .def_property_readonly("new_tokens", &mmattn::DecodeStep::new_tokens)
      .def_property_readonly("query_begin", &mmattn::DecodeStep::query_begin)
      .def_property_readonly("key_end", &mmattn::DecodeStep::key_end,
                             "The step reads keys [0, key_end): caches need hold only that many tokens.")
      .def_property_readonly("layout", [](const mmattn::DecodeStep& s) { return s.layout(); })
      .def("forward", &decode_step, py::arg("q"), py::arg("k"), py::arg("v"), py::kw_only(),
           py::arg("block_table") = py::none(), py::arg("out") = py::none(), py::arg("return_lse") = false,
           py::arg("scale") = py::none(), py::arg("threads") = 0,
           "One layer of the step: q [new_tokens, heads, head_dim]; k, v [capacity >= key_end, kv_heads, "
           "head_dim], or paged pools with block_table. Returns out, or (out, lse).");

  py::class_<Batch>(m, "BatchedAttention",
                    "Many sequences in one call (varlen): each its own layout, policy, query range and K/V; "
                    "queries and outputs packed, sequence i at rows query_offsets[i]:query_offsets[i + 1].")
      .def(py::init(&Batch::make), py::arg("sequences"), py::kw_only(), py::arg("num_heads"),
           py::arg("num_kv_heads") = py::none(), py::arg("head_dim"), py::arg("scale") = py::none(),
           py::arg("threads") = 0)
      .def("forward", &Batch::forward, py::arg("q"), py::arg("k"), py::arg("v"), py::kw_only(),
           py::arg("block_tables") = py::none(), py::arg("out") = py::none(), py::arg("return_lse") = false,
           py::arg("split_kv") = false,
           "q: [total_queries, heads, head_dim]; k, v: a list of caches (one per sequence, [tokens, kv_heads, "
           "head_dim] or paged pools with block_tables), or one paged pool shared by all with block_tables. "
           "split_kv: decode and short chunks.")
      .def_property_readonly("query_offsets", [](const Batch& b) { return b.batch.query_offsets(); })
      .def_property_readonly("total_queries", [](const Batch& b) { return b.batch.total_queries(); })
      .def_property_readonly("num_sequences", [](const Batch& b) { return b.batch.num_sequences(); })
      .def("keys_read", [](const Batch& b, index_t i) {
             MMATTN_REQUIRE(i >= 0 && i < b.batch.num_sequences(), "batch: no sequence " + std::to_string(i));
             return b.batch.keys_read(i);
           }, py::arg("sequence"));

  py::class_<Cascade>(m, "CascadeAttention",
                      "Sequences (as BatchedAttention's) whose first prefix_tokens K/V rows are the same (one image "
                      "and system prompt, many requests): every query attends to that prefix in one product, then "
                      "to its own suffix, merged exactly. Every query must see the whole prefix.")
      .def(py::init(&Cascade::make), py::arg("sequences"), py::kw_only(), py::arg("prefix_tokens"),
           py::arg("num_heads"), py::arg("num_kv_heads") = py::none(), py::arg("head_dim"),
           py::arg("scale") = py::none(), py::arg("threads") = 0)
      .def("forward", &Cascade::forward, py::arg("q"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("k"),
           py::arg("v"), py::kw_only(), py::arg("block_tables") = py::none(), py::arg("out") = py::none(),
           py::arg("return_lse") = false,
           "q: [total_queries, heads, head_dim]; prefix_k, prefix_v: [prefix_tokens, kv_heads, head_dim]; k, v: "
           "each sequence's cache as BatchedAttention.forward takes them, of which only positions >= "
           "prefix_tokens are read.")
      .def_property_readonly("prefix_tokens", [](const Cascade& c) { return c.cascade.prefix_tokens(); })
      .def_property_readonly("query_offsets", [](const Cascade& c) { return c.cascade.query_offsets(); })
      .def_property_readonly("total_queries", [](const Cascade& c) { return c.cascade.total_queries(); })
      .def_property_readonly("num_sequences", [](const Cascade& c) { return c.cascade.num_sequences(); });

  m.def("safe_chunk_ends", &mmattn::safe_chunk_ends, py::arg("layout"), py::arg("policy"), py::arg("max_chunk"),
        "Chunk ends for chunked prefill where every chunk is exact (never reads a key not written yet).");
  m.def("to_bf16", &to_bf16, py::arg("x"), "float32 -> uint16 bf16 bits, rounded to nearest even.");
  m.def("from_bf16", &from_bf16, py::arg("x"), "uint16 bf16 bits -> float32 (exact).");
}
