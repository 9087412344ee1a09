#pragma once
// Attention over tensors whose element type is a run-time tag, for the bindings (the C API and the
// Python module): they receive pointers, shapes, strides and a type tag, while the library's entry
// points are templates on the element type. Every template instantiation the bindings need lives in
// erased_attention.cpp, compiled once into a static library both bindings link, so the kernels
// are built once however many bindings there are. Internal: not installed, not part of the
// header-only library. Errors are mmattn::Error, as everywhere in the library.

#include <cstdint>
#include <string>

#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/batched_attention.hpp"
#include "mmattn/cascade.hpp"
#include "mmattn/decode.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/policy.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::bindings {

// Storage types of Q, K, V and O. bf16 is the top 16 bits of an IEEE float (Eigen::bfloat16),
// f16 IEEE half (Eigen::half).
enum class ElementType : unsigned char { f32, bf16, f16 };

const char* element_type_name(ElementType t);
index_t element_size(ElementType t);

// A [tokens, heads, head_dim] view whose element type is known at run time. Strides in elements.
struct ErasedTensor {
  void* data = nullptr;
  ElementType type = ElementType::f32;
  index_t tokens = 0, heads = 0, head_dim = 0;
  index_t token_stride = 0, head_stride = 0, dim_stride = 1;
};

// A paged K or V cache (paged_kv.hpp's PagedKVView) whose element type is known at run time. A
// contiguous cache is one block holding every token, with the table {0}.
struct ErasedPagedCache {
  void* pool = nullptr;
  ElementType type = ElementType::f32;
  const std::int32_t* block_table = nullptr;
  index_t num_blocks = 0, block_size = 0, table_blocks = 0;
  index_t tokens = 0, heads = 0, head_dim = 0;
  index_t block_stride = 0, token_stride = 0, head_stride = 0, dim_stride = 1;
};

// The element-type mixes the bindings compile: Q and O of one type, K and V of one type, and
// either all four alike or fp32 Q/O over a 16-bit K/V cache. Each mix is one instantiation of
// the kernels; the header-only library takes any mix.
void require_supported_mix(ElementType q, ElementType k, ElementType v, ElementType out);
std::string supported_mixes();

// attention.forward(q, k, v, out, lse) with the tags resolved to their types.
void forward(const MultimodalAttention<float>& attention, const ErasedTensor& q, const ErasedTensor& k,
             const ErasedTensor& v, const ErasedTensor& out, const LseView& lse);

// decode_attention(cfg, layout, policy, q, k, v, out, lse) over paged caches (decode.hpp).
void decode(const AttentionConfig& cfg, const SequenceLayout& layout, const RegionPolicy& policy, const ErasedTensor& q,
            const ErasedPagedCache& k, const ErasedPagedCache& v, const ErasedTensor& out, const LseView& lse,
            const Executor& executor);

// decode_attention(cfg, step, q, k, v, out, lse): a step planned once, run by every layer.
void decode(const AttentionConfig& cfg, const DecodeStep& step, const ErasedTensor& q, const ErasedPagedCache& k,
            const ErasedPagedCache& v, const ErasedTensor& out, const LseView& lse, const Executor& executor);

// batch.forward (or forward_split_kv) over packed Q/O, sequence i at rows
// [batch.query_offsets()[i], batch.query_offsets()[i + 1]), with its own K/V caches; every k (and
// every v) of one element type.
void batched_forward(const BatchedAttention& batch, const ErasedTensor& q, const std::vector<ErasedPagedCache>& k,
                     const std::vector<ErasedPagedCache>& v, const ErasedTensor& out, const LseView& lse,
                     bool split_kv);

// cascade.forward over packed Q/O: the shared prefix's K/V as [prefix_tokens, kv_heads, head_dim]
// tensors, each sequence's suffix from its own caches (positions >= prefix_tokens read); the
// prefix, k and v all of one element type.
void cascade_forward(const CascadeAttention& cascade, const ErasedTensor& q, const ErasedTensor& prefix_k,
                     const ErasedTensor& prefix_v, const std::vector<ErasedPagedCache>& k,
                     const std::vector<ErasedPagedCache>& v, const ErasedTensor& out, const LseView& lse);

}  // namespace mmattn::bindings
