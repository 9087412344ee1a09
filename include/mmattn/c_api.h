/* mmattn's C API: exact multimodal attention from C, Rust, Go or any language with a C FFI.
 *
 * Built as the shared library mmattn_c (CMake option MMATTN_BUILD_C_API); this header compiles as
 * C99 and as C++. It wraps the header-only C++ library: a layout (text, image and video segments),
 * a policy (presets or a rule per region), a planned attention object, and forward / decode over
 * raw pointers with shapes, strides and element-type tags.
 *
 * Errors: every function that can fail returns an mmattn_status; MMATTN_OK is 0. On failure
 * mmattn_last_error() returns the message of the last failing call on the calling thread (the C++
 * library's mmattn::Error text, naming the bad argument); nothing has been written to any output.
 * No C++ exception ever crosses this boundary. Handles are freed with their _destroy function
 * (NULL is accepted). A handle may be read by several threads at once (forward on one attention
 * object is thread-safe); functions that change a layout or a policy need exclusive access.
 *
 * Element types: f32, bf16 (the top 16 bits of an IEEE float, stored as uint16_t) and f16 (IEEE
 * half, stored as uint16_t). Supported mixes: Q and O of one type, K and V of one type, either all
 * four alike or f32 Q/O over a bf16 / f16 K/V cache. Computation is fp32 throughout.
 *
 * Enums: each has a *_MAX_ENUM member so that its type holds any 32-bit value (as in Vulkan's
 * headers); a value not listed is an error, not undefined behaviour, on the C++ side.
 *
 * Tensors are [tokens, heads, head_dim] with strides in elements, so any storage order (the
 * contiguous [tokens, heads, head_dim] a fused QKV projection writes, [heads, tokens, head_dim],
 * a slice of a fused QKV buffer) is a choice of strides. */
#ifndef MMATTN_C_API_H
#define MMATTN_C_API_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(MMATTN_C_BUILDING)
#define MMATTN_C_EXPORT __declspec(dllexport)
#elif defined(_WIN32)
#define MMATTN_C_EXPORT __declspec(dllimport)
#elif defined(__GNUC__)
#define MMATTN_C_EXPORT __attribute__((visibility("default")))
#else
#define MMATTN_C_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mmattn_status {
  MMATTN_OK = 0,
  MMATTN_ERROR_INVALID_ARGUMENT = 1, /* bad input: the message names it */
  MMATTN_ERROR_OUT_OF_MEMORY = 2,
  MMATTN_ERROR_INTERNAL = 3, /* a bug: please report the message */
  MMATTN_STATUS_MAX_ENUM = 0x7FFFFFFF
} mmattn_status;

typedef enum mmattn_dtype {
  MMATTN_F32 = 0,
  MMATTN_BF16 = 1,
  MMATTN_F16 = 2,
  MMATTN_DTYPE_MAX_ENUM = 0x7FFFFFFF
} mmattn_dtype;

typedef enum mmattn_segment_kind {
  MMATTN_TEXT = 0,
  MMATTN_IMAGE = 1,
  MMATTN_VIDEO = 2,
  MMATTN_SEGMENT_KIND_MAX_ENUM = 0x7FFFFFFF
} mmattn_segment_kind;

/* ---- Errors and version ---- */

/* The message of the last failing call on this thread ("" when none failed yet). Valid until the
 * next failing call on this thread. */
MMATTN_C_EXPORT const char* mmattn_last_error(void);
MMATTN_C_EXPORT const char* mmattn_status_name(mmattn_status status);
MMATTN_C_EXPORT const char* mmattn_version(void);

/* ---- Layout: the token sequence, segments in order ---- */

typedef struct mmattn_layout mmattn_layout;

MMATTN_C_EXPORT mmattn_status mmattn_layout_create(mmattn_layout** out);
MMATTN_C_EXPORT void mmattn_layout_destroy(mmattn_layout* layout);
MMATTN_C_EXPORT mmattn_status mmattn_layout_add_text(mmattn_layout* layout, int64_t tokens);
MMATTN_C_EXPORT mmattn_status mmattn_layout_add_image(mmattn_layout* layout, int64_t rows, int64_t cols);
MMATTN_C_EXPORT mmattn_status mmattn_layout_add_video(mmattn_layout* layout, int64_t frames, int64_t rows,
                                                      int64_t cols);
/* Lengthens the last text segment by `tokens` (or appends one after an image): a decode step's
 * growth, which keeps one segment however many tokens are generated. */
MMATTN_C_EXPORT mmattn_status mmattn_layout_extend_text(mmattn_layout* layout, int64_t tokens);
/* Tokens in the layout. */
MMATTN_C_EXPORT mmattn_status mmattn_layout_size(const mmattn_layout* layout, int64_t* size);

/* ---- Rules: which keys of one key segment a query may see (README, Masks) ---- */

typedef enum mmattn_rule_kind {
  MMATTN_RULE_NONE = 0,     /* nothing */
  MMATTN_RULE_FULL = 1,     /* every key */
  MMATTN_RULE_CAUSAL = 2,   /* keys at positions <= the query's */
  MMATTN_RULE_BAND = 3,     /* positions [q - left, q + right] (FlashAttention's window_size) */
  MMATTN_RULE_CHUNKED = 4,  /* the query's chunk of `chunk` positions, up to the query */
  MMATTN_RULE_WINDOW2D = 5, /* inside an image: height x width window (NATTEN sliding or partitioned) */
  MMATTN_RULE_WINDOW3D = 6, /* inside a video: frames x height x width window */
  MMATTN_RULE_DILATED_BAND = 7, /* every dilation-th position in [q - left * d, q + right * d], text keys */
  MMATTN_RULE_KIND_MAX_ENUM = 0x7FFFFFFF
} mmattn_rule_kind;

typedef enum mmattn_window_kind {
  MMATTN_WINDOW_SLIDING = 0,    /* centred, shifted at borders (NATTEN); odd sizes */
  MMATTN_WINDOW_PARTITIONED = 1, /* fixed non-overlapping windows (Swin, Qwen2.5-VL) */
  MMATTN_WINDOW_KIND_MAX_ENUM = 0x7FFFFFFF
} mmattn_window_kind;

/* One rule. Fields a kind does not use are ignored; a zero dilation counts as 1. */
typedef struct mmattn_rule {
  mmattn_rule_kind kind;
  int64_t left, right;            /* BAND, DILATED_BAND */
  int64_t chunk;                  /* CHUNKED */
  mmattn_window_kind window_kind; /* WINDOW2D, WINDOW3D */
  int64_t frames, height, width;  /* WINDOW2D: height, width; WINDOW3D: all three */
  int64_t dilation_f, dilation_h, dilation_w; /* WINDOW2D/3D: per axis; DILATED_BAND: dilation_w */
  int causal; /* WINDOW2D: also key position <= query position; WINDOW3D: causal in time */
} mmattn_rule;

/* ---- Policy: a rule per region, per-segment overrides, attention sinks ---- */

typedef struct mmattn_policy mmattn_policy;

/* The presets of policy.hpp, one per model family (README, Masks). */
typedef enum mmattn_preset {
  MMATTN_PRESET_DECODER_CAUSAL = 0,     /* LLaVA's language model: causal everywhere */
  MMATTN_PRESET_DENSE = 1,              /* every pair */
  MMATTN_PRESET_GEMMA3_GLOBAL = 2,      /* causal, bidirectional inside each image */
  MMATTN_PRESET_GEMMA3_LOCAL = 3,       /* causal band of `size` (1024), bidirectional images */
  MMATTN_PRESET_SLIDING_CAUSAL = 4,     /* causal band of `size` positions (required) */
  MMATTN_PRESET_LLAMA4_CHUNKED = 5,     /* causal inside chunks of `size` (8192) */
  MMATTN_PRESET_VISION_BLOCK_DIAGONAL = 6, /* full inside each segment */
  MMATTN_PRESET_QWEN25VL_WINDOW = 7,    /* partitioned size x size (8) windows in images */
  MMATTN_PRESET_VIDEO_WINDOWS = 8,      /* causal, a 3-D window (video_window) inside videos */
  MMATTN_PRESET_STRUCTURED = 9,         /* image 2-D window (image_window), text causal */
  MMATTN_PRESET_MAX_ENUM = 0x7FFFFFFF
} mmattn_preset;

/* Parameters of a preset; NULL or zero fields take the preset's defaults. */
typedef struct mmattn_preset_options {
  /* GEMMA3_LOCAL, SLIDING_CAUSAL: the window; LLAMA4_CHUNKED: the chunk; QWEN25VL_WINDOW: the side */
  int64_t size;
  const mmattn_rule* image_window; /* STRUCTURED: a WINDOW2D rule (default 7 x 7 sliding) */
  const mmattn_rule* video_window; /* STRUCTURED, VIDEO_WINDOWS: a WINDOW3D rule (default 3 x 7 x 7 sliding) */
} mmattn_preset_options;

/* Which key segments a region rule covers, relative to the query's segment. */
typedef enum mmattn_region_scope {
  MMATTN_SCOPE_SAME_SEGMENT = 0,  /* the query's own segment (query kind == key kind) */
  MMATTN_SCOPE_OTHER_SEGMENT = 1, /* every other segment of the key kind */
  MMATTN_SCOPE_ANY_SEGMENT = 2,   /* both */
  MMATTN_REGION_SCOPE_MAX_ENUM = 0x7FFFFFFF
} mmattn_region_scope;

/* A policy with every region's rule NONE. */
MMATTN_C_EXPORT mmattn_status mmattn_policy_create(mmattn_policy** out);
MMATTN_C_EXPORT mmattn_status mmattn_policy_create_preset(mmattn_preset preset, const mmattn_preset_options* options,
                                                          mmattn_policy** out);
MMATTN_C_EXPORT void mmattn_policy_destroy(mmattn_policy* policy);
/* Queries of kind query_kind over keys of kind key_kind, within `scope`. */
MMATTN_C_EXPORT mmattn_status mmattn_policy_set_region(mmattn_policy* policy, mmattn_segment_kind query_kind,
                                                       mmattn_segment_kind key_kind, mmattn_region_scope scope,
                                                       const mmattn_rule* rule);
/* Queries of segment query_segment over keys of key_segment (indices into the layout used with it). */
MMATTN_C_EXPORT mmattn_status mmattn_policy_set_segments(mmattn_policy* policy, int64_t query_segment,
                                                         int64_t key_segment, const mmattn_rule* rule);
/* Positions [0, sinks) are seen by every query at or after them, on top of any rule. */
MMATTN_C_EXPORT mmattn_status mmattn_policy_set_sinks(mmattn_policy* policy, int64_t sinks);
/* May the query at position q see the key at position k? Checks the policy against the layout
 * first. One pair per call: for tests and tools, not a way to build a mask on a fast path. */
MMATTN_C_EXPORT mmattn_status mmattn_policy_allowed(const mmattn_policy* policy, const mmattn_layout* layout,
                                                    int64_t q, int64_t k, int* allowed);

/* ---- Tensors ---- */

/* [tokens, heads, head_dim]; strides in elements, non-negative. */
typedef struct mmattn_tensor {
  void* data;
  mmattn_dtype dtype;
  int64_t tokens, heads, head_dim;
  int64_t token_stride, head_stride, dim_stride;
} mmattn_tensor;

/* Contiguous [tokens, heads, head_dim]. */
static inline mmattn_tensor mmattn_tensor_thd(void* data, mmattn_dtype dtype, int64_t tokens, int64_t heads,
                                              int64_t head_dim) {
  mmattn_tensor t;
  t.data = data;
  t.dtype = dtype;
  t.tokens = tokens;
  t.heads = heads;
  t.head_dim = head_dim;
  t.token_stride = heads * head_dim;
  t.head_stride = head_dim;
  t.dim_stride = 1;
  return t;
}

/* Log-sum-exp output, [tokens, heads] floats (natural log of the scaled scores; -inf for a row
 * the mask leaves empty). */
typedef struct mmattn_lse {
  float* data;
  int64_t tokens, heads;
  int64_t token_stride, head_stride;
} mmattn_lse;

/* A paged K or V cache (vLLM's layout): a pool of blocks [num_blocks, block_size, heads, head_dim]
 * through the strides (elements), and a block table mapping logical block b (tokens
 * [b * block_size, (b + 1) * block_size)) to a physical block. A contiguous cache is one block of
 * block_size = tokens with the table {0}. */
typedef struct mmattn_paged_cache {
  const void* pool;
  mmattn_dtype dtype;
  const int32_t* block_table;
  int64_t num_blocks, block_size, table_blocks;
  int64_t tokens, heads, head_dim;
  int64_t block_stride, token_stride, head_stride, dim_stride;
} mmattn_paged_cache;

/* ---- Planned attention ---- */

typedef struct mmattn_attention mmattn_attention;

typedef struct mmattn_attention_config {
  int64_t num_heads;
  int64_t num_kv_heads; /* divides num_heads (GQA / MQA) */
  int64_t head_dim;
  int has_scale; /* 0: scale = 1 / sqrt(head_dim) */
  float scale;
} mmattn_attention_config;

/* Zero-initialised fields take the defaults. */
typedef struct mmattn_plan_options {
  int64_t query_begin, query_end; /* queries are positions [query_begin, query_end); query_end 0: the end */
  int all_keys_present; /* chunked prefill: K/V already hold the whole layout */
  int64_t tile_query, tile_key, tile_window_query; /* 0: the library's default tiles */
  int num_threads; /* OpenMP threads for forward; 0: OpenMP's default */
} mmattn_plan_options;

/* Plans the layout under the policy once (both are copied; destroy them when you like). */
MMATTN_C_EXPORT mmattn_status mmattn_attention_create(const mmattn_attention_config* config,
                                                      const mmattn_layout* layout, const mmattn_policy* policy,
                                                      const mmattn_plan_options* options /* NULL: defaults */,
                                                      mmattn_attention** out);
MMATTN_C_EXPORT void mmattn_attention_destroy(mmattn_attention* attention);
/* Queries the plan covers (the rows of Q and O). */
MMATTN_C_EXPORT mmattn_status mmattn_attention_num_queries(const mmattn_attention* attention, int64_t* num_queries);
/* Q/O: [num_queries, num_heads, head_dim]; K/V: [layout size, num_kv_heads, head_dim]; lse NULL or
 * [num_queries, num_heads]. Thread-safe on one attention object. */
MMATTN_C_EXPORT mmattn_status mmattn_attention_forward(const mmattn_attention* attention, const mmattn_tensor* q,
                                                       const mmattn_tensor* k, const mmattn_tensor* v,
                                                       const mmattn_tensor* out, const mmattn_lse* lse);

/* The plan's statistics (plan_stats.hpp). */
typedef struct mmattn_plan_stats {
  int64_t query_tokens, key_tokens;
  int64_t allowed_pairs;  /* pairs the mask allows */
  int64_t computed_pairs; /* pairs inside planned blocks */
  int64_t full_pairs;     /* of those, in blocks needing no mask */
  int64_t dense_pairs;    /* query_tokens * key_tokens */
  double efficiency;      /* allowed / computed */
  double density;         /* allowed / dense */
  int64_t workspace_bytes_per_thread;
} mmattn_plan_stats;

MMATTN_C_EXPORT mmattn_status mmattn_attention_stats(const mmattn_attention* attention, mmattn_plan_stats* stats);

/* The text report (threads: the team that will run forward) and the SVG block map. Writes at most
 * capacity bytes including the terminating NUL (buffer may be NULL when capacity is 0) and sets
 * *length to the full text's length without the NUL: call once with capacity 0 to size the buffer. */
MMATTN_C_EXPORT mmattn_status mmattn_attention_report(const mmattn_attention* attention, int threads, char* buffer,
                                                      size_t capacity, size_t* length);
MMATTN_C_EXPORT mmattn_status mmattn_attention_svg(const mmattn_attention* attention, char* buffer, size_t capacity,
                                                   size_t* length);

/* ---- Decode ---- */

/* The layout's last q->tokens positions attend to the cache holding the whole layout
 * (k->tokens == layout size), split-KV over the threads and merged exactly (decode.hpp). Plans
 * per call: the layout grows by the new tokens every step. */
MMATTN_C_EXPORT mmattn_status mmattn_decode(const mmattn_attention_config* config, const mmattn_layout* layout,
                                            const mmattn_policy* policy, const mmattn_tensor* q,
                                            const mmattn_paged_cache* k, const mmattn_paged_cache* v,
                                            const mmattn_tensor* out, const mmattn_lse* lse, int num_threads);

/* A decode step planned once and run by every layer of the step (decode.hpp's DecodeStep): the
 * layout's last new_tokens positions. The layout and policy are copied. */
typedef struct mmattn_decode_step mmattn_decode_step;

MMATTN_C_EXPORT mmattn_status mmattn_decode_step_create(const mmattn_layout* layout, const mmattn_policy* policy,
                                                        int64_t new_tokens, mmattn_decode_step** out);
MMATTN_C_EXPORT void mmattn_decode_step_destroy(mmattn_decode_step* step);
/* The step reads keys [0, key_end): the caches need hold only that many tokens. */
MMATTN_C_EXPORT mmattn_status mmattn_decode_step_key_end(const mmattn_decode_step* step, int64_t* key_end);
/* One layer of the step: q/out [new_tokens, num_heads, head_dim]; k/v caches holding at least
 * key_end tokens (more, such as a cache's capacity, are never read). Thread-safe on one step. */
MMATTN_C_EXPORT mmattn_status mmattn_decode_step_run(const mmattn_attention_config* config,
                                                     const mmattn_decode_step* step, const mmattn_tensor* q,
                                                     const mmattn_paged_cache* k, const mmattn_paged_cache* v,
                                                     const mmattn_tensor* out, const mmattn_lse* lse, int num_threads);

/* ---- Batches: many sequences in one call (varlen) ---- */

/* Each sequence has its own layout, policy, query range and K/V; queries and outputs of all are
 * packed into one tensor, sequence i at rows [offsets[i], offsets[i + 1]) (batched_attention.hpp). */
typedef struct mmattn_batch mmattn_batch;

typedef struct mmattn_batch_sequence {
  const mmattn_layout* layout;
  const mmattn_policy* policy;
  int64_t query_begin, query_end; /* queries are positions [query_begin, query_end); query_end 0: the end */
} mmattn_batch_sequence;

/* Plans every sequence once (layouts and policies are copied). */
MMATTN_C_EXPORT mmattn_status mmattn_batch_create(const mmattn_attention_config* config,
                                                  const mmattn_batch_sequence* sequences, int64_t count,
                                                  int num_threads, mmattn_batch** out);
MMATTN_C_EXPORT void mmattn_batch_destroy(mmattn_batch* batch);
/* The packed rows: offsets[0] = 0, ..., offsets[count] = total queries; `offsets` holds count + 1. */
MMATTN_C_EXPORT mmattn_status mmattn_batch_query_offsets(const mmattn_batch* batch, int64_t* offsets,
                                                         int64_t capacity);
/* q/out: [total queries, num_heads, head_dim]; k[i], v[i]: sequence i's cache (count of each);
 * lse NULL or [total queries, num_heads]. split_kv: split each sequence's keys over the threads
 * (decode, short chunks). */
MMATTN_C_EXPORT mmattn_status mmattn_batch_forward(const mmattn_batch* batch, const mmattn_tensor* q,
                                                   const mmattn_paged_cache* k, const mmattn_paged_cache* v,
                                                   const mmattn_tensor* out, const mmattn_lse* lse, int split_kv);

#ifdef __cplusplus
}
#endif

#endif /* MMATTN_C_API_H */
