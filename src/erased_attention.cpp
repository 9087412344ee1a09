// The bindings' instantiations of forward() and decode_attention(), one per supported element-type
// mix (erased_attention.hpp). All run-time-to-template dispatch of the bindings happens here.

#include "erased_attention.hpp"

#include <Eigen/Core>

#include "mmattn/decode.hpp"
#include "mmattn/paged_kv.hpp"

namespace mmattn::bindings {

namespace {

template <class T>
struct Type {
  using type = T;
};

// Calls f(Type<Q/O element>{}, Type<K/V element>{}) for a supported mix (checked before).
template <class F>
void with_types(ElementType qo, ElementType kv, F&& f) {
  auto with_kv = [&](auto qo_type) {
    switch (kv) {
      case ElementType::f32: return f(qo_type, Type<float>{});
      case ElementType::bf16: return f(qo_type, Type<Eigen::bfloat16>{});
      case ElementType::f16: return f(qo_type, Type<Eigen::half>{});
    }
  };
  switch (qo) {
    case ElementType::f32: return with_kv(Type<float>{});
    // All-16-bit mixes only: the K/V type equals Q/O's (require_supported_mix).
    case ElementType::bf16: return f(Type<Eigen::bfloat16>{}, Type<Eigen::bfloat16>{});
    case ElementType::f16: return f(Type<Eigen::half>{}, Type<Eigen::half>{});
  }
}

template <class T>
TensorView<T> typed(const ErasedTensor& t) {
  return {static_cast<T*>(t.data), t.tokens, t.heads, t.head_dim, t.token_stride, t.head_stride, t.dim_stride};
}

template <class T>
PagedKVView<const T> typed(const ErasedPagedCache& c) {
  return {static_cast<const T*>(c.pool), c.block_table, c.num_blocks, c.block_size, c.table_blocks, c.tokens,
          c.heads,  c.head_dim,  c.block_stride, c.token_stride, c.head_stride, c.dim_stride};
}

}  // namespace

const char* element_type_name(ElementType t) {
  switch (t) {
    case ElementType::f32: return "f32";
    case ElementType::bf16: return "bf16";
    case ElementType::f16: return "f16";
  }
  return "unknown";
}

index_t element_size(ElementType t) { return t == ElementType::f32 ? 4 : 2; }

std::string supported_mixes() {
  return "(q/out, k/v) in (f32, f32), (bf16, bf16), (f16, f16), (f32, bf16), (f32, f16)";
}

void require_supported_mix(ElementType q, ElementType k, ElementType v, ElementType out) {
  const bool ok = q == out && k == v && (q == k || q == ElementType::f32);
  MMATTN_REQUIRE(ok, std::string("element types: q ") + element_type_name(q) + ", k " + element_type_name(k) + ", v " +
                         element_type_name(v) + ", out " + element_type_name(out) +
                         " is not a mix the bindings compile; supported: " + supported_mixes());
}

void forward(const MultimodalAttention<float>& attention, const ErasedTensor& q, const ErasedTensor& k,
             const ErasedTensor& v, const ErasedTensor& out, const LseView& lse) {
  require_supported_mix(q.type, k.type, v.type, out.type);
  with_types(q.type, k.type, [&](auto qo_type, auto kv_type) {
    using TQ = typename decltype(qo_type)::type;
    using TKV = typename decltype(kv_type)::type;
    attention.forward(TensorView<const TQ>(typed<TQ>(q)), TensorView<const TKV>(typed<TKV>(k)),
                      TensorView<const TKV>(typed<TKV>(v)), typed<TQ>(out), lse);
  });
}

void decode(const AttentionConfig& cfg, const SequenceLayout& layout, const RegionPolicy& policy, const ErasedTensor& q,
            const ErasedPagedCache& k, const ErasedPagedCache& v, const ErasedTensor& out, const LseView& lse,
            const Executor& executor) {
  require_supported_mix(q.type, k.type, v.type, out.type);
  with_types(q.type, k.type, [&](auto qo_type, auto kv_type) {
    using TQ = typename decltype(qo_type)::type;
    using TKV = typename decltype(kv_type)::type;
    decode_attention(cfg, layout, policy, TensorView<const TQ>(typed<TQ>(q)), typed<TKV>(k), typed<TKV>(v),
                     typed<TQ>(out), lse, DecodeOptions{}, executor);
  });
}

void decode(const AttentionConfig& cfg, const DecodeStep& step, const ErasedTensor& q, const ErasedPagedCache& k,
            const ErasedPagedCache& v, const ErasedTensor& out, const LseView& lse, const Executor& executor) {
  require_supported_mix(q.type, k.type, v.type, out.type);
  with_types(q.type, k.type, [&](auto qo_type, auto kv_type) {
    using TQ = typename decltype(qo_type)::type;
    using TKV = typename decltype(kv_type)::type;
    decode_attention(cfg, step, TensorView<const TQ>(typed<TQ>(q)), typed<TKV>(k), typed<TKV>(v), typed<TQ>(out), lse,
                     SplitKvOptions{}, executor);
  });
}

namespace {

// Every cache of a batch holds one element type: one instantiation per call.
void require_one_type(const char* who, const char* name, const std::vector<ErasedPagedCache>& caches) {
  MMATTN_REQUIRE(!caches.empty(), std::string(who) + ": no " + name + " caches");
  for (size_t i = 0; i < caches.size(); ++i)
    MMATTN_REQUIRE(caches[i].type == caches[0].type,
                   std::string(who) + ": " + name + " of sequence " + std::to_string(i) + " is " +
                       element_type_name(caches[i].type) + " but sequence 0's is " +
                       element_type_name(caches[0].type));
}

// The checks and typed views every batch entry point needs: each cache list of one element type, a
// supported mix; then f(Type<Q/O element>{}, Type<K/V element>{}, k views, v views).
template <class F>
void with_batch_caches(const char* who, const ErasedTensor& q, const std::vector<ErasedPagedCache>& k,
                       const std::vector<ErasedPagedCache>& v, const ErasedTensor& out, F&& f) {
  require_one_type(who, "k", k);
  require_one_type(who, "v", v);
  require_supported_mix(q.type, k[0].type, v[0].type, out.type);
  with_types(q.type, k[0].type, [&](auto qo_type, auto kv_type) {
    using TKV = typename decltype(kv_type)::type;
    std::vector<PagedKVView<const TKV>> kv_k, kv_v;
    for (const ErasedPagedCache& c : k) kv_k.push_back(typed<TKV>(c));
    for (const ErasedPagedCache& c : v) kv_v.push_back(typed<TKV>(c));
    f(qo_type, kv_type, kv_k, kv_v);
  });
}

}  // namespace

void batched_forward(const BatchedAttention& batch, const ErasedTensor& q, const std::vector<ErasedPagedCache>& k,
                     const std::vector<ErasedPagedCache>& v, const ErasedTensor& out, const LseView& lse,
                     bool split_kv) {
  with_batch_caches("batch", q, k, v, out, [&](auto qo_type, auto, const auto& kv_k, const auto& kv_v) {
    using TQ = typename decltype(qo_type)::type;
    const TensorView<const TQ> tq = typed<TQ>(q);
    if (split_kv)
      batch.forward_split_kv(tq, batch.query_offsets(), kv_k, kv_v, typed<TQ>(out), lse);
    else
      batch.forward(tq, batch.query_offsets(), kv_k, kv_v, typed<TQ>(out), lse);
  });
}

void cascade_forward(const CascadeAttention& cascade, const ErasedTensor& q, const ErasedTensor& prefix_k,
                     const ErasedTensor& prefix_v, const std::vector<ErasedPagedCache>& k,
                     const std::vector<ErasedPagedCache>& v, const ErasedTensor& out, const LseView& lse) {
  MMATTN_REQUIRE(!k.empty() && !v.empty() && prefix_k.type == k[0].type && prefix_v.type == v[0].type,
                 std::string("cascade: the prefix's k/v are ") + element_type_name(prefix_k.type) + "/" +
                     element_type_name(prefix_v.type) + " but the sequences' are " +
                     (k.empty() ? "missing" : element_type_name(k[0].type)) + "/" +
                     (v.empty() ? "missing" : element_type_name(v[0].type)));
  with_batch_caches("cascade", q, k, v, out, [&](auto qo_type, auto kv_type, const auto& kv_k, const auto& kv_v) {
    using TQ = typename decltype(qo_type)::type;
    using TKV = typename decltype(kv_type)::type;
    cascade.forward(TensorView<const TQ>(typed<TQ>(q)), cascade.query_offsets(),
                    TensorView<const TKV>(typed<TKV>(prefix_k)), TensorView<const TKV>(typed<TKV>(prefix_v)), kv_k,
                    kv_v, typed<TQ>(out), lse);
  });
}

}  // namespace mmattn::bindings
