// The C API (include/mmattn/c_api.h) over the C++ library. Every entry point runs its body
// through `guarded`, which turns any exception into a status and the thread's last-error message:
// nothing thrown crosses into C. Enum values arriving from C are range-checked, since a C enum
// holds any int.

#include "mmattn/c_api.h"

#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "erased_attention.hpp"
#include "mmattn/batched_attention.hpp"
#include "mmattn/decode.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/plan_stats.hpp"

struct mmattn_layout {
  mmattn::SequenceLayout layout;
};
struct mmattn_policy {
  mmattn::RegionPolicy policy;
};
struct mmattn_attention {
  mmattn::MultimodalAttention<float> attention;
};
struct mmattn_decode_step {
  mmattn::DecodeStep step;
};
struct mmattn_batch {
  mmattn::BatchedAttention batch;
};

namespace {

using mmattn::index_t;
namespace bindings = mmattn::bindings;

thread_local std::string last_error;

// Runs body; any exception becomes a status and this thread's message.
template <class F>
mmattn_status guarded(F&& body) noexcept {
  try {
    body();
    return MMATTN_OK;
  } catch (const mmattn::Error& e) {
    last_error = e.what();
    return MMATTN_ERROR_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    last_error = "mmattn: out of memory";
    return MMATTN_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    last_error = std::string("mmattn: internal error: ") + e.what();
    return MMATTN_ERROR_INTERNAL;
  } catch (...) {
    last_error = "mmattn: internal error: unknown exception";
    return MMATTN_ERROR_INTERNAL;
  }
}

// *p, or an Error naming the function and the NULL argument. T may be const.
template <class T>
T& require_arg(T* p, const char* function, const char* name) {
  MMATTN_REQUIRE(p != nullptr, std::string(function) + ": " + name + " is NULL");
  return *p;
}

bindings::ElementType element_type(mmattn_dtype d, const char* name) {
  switch (d) {
    case MMATTN_F32: return bindings::ElementType::f32;
    case MMATTN_BF16: return bindings::ElementType::bf16;
    case MMATTN_F16: return bindings::ElementType::f16;
    case MMATTN_DTYPE_MAX_ENUM: break;
  }
  mmattn::detail::fail(std::string(name) + ": unknown dtype " + std::to_string(static_cast<int>(d)));
}

mmattn::SegmentKind segment_kind(mmattn_segment_kind k, const char* name) {
  switch (k) {
    case MMATTN_TEXT: return mmattn::SegmentKind::text;
    case MMATTN_IMAGE: return mmattn::SegmentKind::image;
    case MMATTN_VIDEO: return mmattn::SegmentKind::video;
    case MMATTN_SEGMENT_KIND_MAX_ENUM: break;
  }
  mmattn::detail::fail(std::string(name) + ": unknown segment kind " + std::to_string(static_cast<int>(k)));
}

mmattn::WindowKind window_kind(mmattn_window_kind k) {
  switch (k) {
    case MMATTN_WINDOW_SLIDING: return mmattn::WindowKind::sliding;
    case MMATTN_WINDOW_PARTITIONED: return mmattn::WindowKind::partitioned;
    case MMATTN_WINDOW_KIND_MAX_ENUM: break;
  }
  mmattn::detail::fail("rule: unknown window kind " + std::to_string(static_cast<int>(k)));
}

index_t dilation(int64_t d) { return d == 0 ? 1 : d; }

mmattn::Window2D window2d(const mmattn_rule& r) {
  mmattn::Window2D w{window_kind(r.window_kind), r.height, r.width, dilation(r.dilation_h), dilation(r.dilation_w),
                     r.causal != 0};
  w.validate("rule: window2d");
  return w;
}

mmattn::Window3D window3d(const mmattn_rule& r) {
  return {window_kind(r.window_kind), r.frames, r.height,  r.width, dilation(r.dilation_f), dilation(r.dilation_h),
          dilation(r.dilation_w),    r.causal != 0};
}

mmattn::Rule rule_of(const mmattn_rule& r) {
  switch (r.kind) {
    case MMATTN_RULE_NONE: return mmattn::Rule::none();
    case MMATTN_RULE_FULL: return mmattn::Rule::full();
    case MMATTN_RULE_CAUSAL: return mmattn::Rule::causal();
    case MMATTN_RULE_BAND: return mmattn::Rule::band(r.left, r.right);
    case MMATTN_RULE_CHUNKED: return mmattn::Rule::chunked(r.chunk);
    case MMATTN_RULE_WINDOW2D: return window2d(r);
    case MMATTN_RULE_WINDOW3D: return window3d(r);
    case MMATTN_RULE_DILATED_BAND: return mmattn::DilatedBandRule{r.left, r.right, dilation(r.dilation_w)};
    case MMATTN_RULE_KIND_MAX_ENUM: break;
  }
  mmattn::detail::fail("rule: unknown kind " + std::to_string(static_cast<int>(r.kind)));
}

mmattn::Window2D image_window_of(const mmattn_rule* r) {
  if (r == nullptr) return mmattn::Window2D::sliding(7, 7);
  MMATTN_REQUIRE(r->kind == MMATTN_RULE_WINDOW2D, "preset: image_window must be a WINDOW2D rule");
  return window2d(*r);
}
mmattn::Window3D video_window_of(const mmattn_rule* r) {
  if (r == nullptr) return mmattn::Window3D::sliding(3, 7, 7);
  MMATTN_REQUIRE(r->kind == MMATTN_RULE_WINDOW3D, "preset: video_window must be a WINDOW3D rule");
  return window3d(*r);
}

mmattn::RegionPolicy preset_policy(mmattn_preset preset, const mmattn_preset_options& o) {
  using P = mmattn::RegionPolicy;
  auto size_or = [&](index_t fallback) { return o.size != 0 ? o.size : fallback; };
  switch (preset) {
    case MMATTN_PRESET_DECODER_CAUSAL: return P::decoder_causal();
    case MMATTN_PRESET_DENSE: return P::dense();
    case MMATTN_PRESET_GEMMA3_GLOBAL: return P::gemma3_global();
    case MMATTN_PRESET_GEMMA3_LOCAL: return P::gemma3_local(size_or(1024));
    case MMATTN_PRESET_SLIDING_CAUSAL:
      MMATTN_REQUIRE(o.size > 0, "preset: sliding_causal needs options.size, the window, > 0");
      return P::sliding_causal(o.size);
    case MMATTN_PRESET_LLAMA4_CHUNKED: return P::llama4_chunked(size_or(8192));
    case MMATTN_PRESET_VISION_BLOCK_DIAGONAL: return P::vision_block_diagonal();
    case MMATTN_PRESET_QWEN25VL_WINDOW: return P::qwen25vl_window(size_or(8));
    case MMATTN_PRESET_VIDEO_WINDOWS: return P::video_windows(video_window_of(o.video_window));
    case MMATTN_PRESET_STRUCTURED:
      return P::structured(image_window_of(o.image_window), video_window_of(o.video_window));
    case MMATTN_PRESET_MAX_ENUM: break;
  }
  mmattn::detail::fail("preset: unknown preset " + std::to_string(static_cast<int>(preset)));
}

bindings::ErasedTensor erased(const mmattn_tensor& t, const char* name) {
  return {t.data, element_type(t.dtype, name), t.tokens, t.heads, t.head_dim, t.token_stride, t.head_stride,
          t.dim_stride};
}

bindings::ErasedPagedCache erased(const mmattn_paged_cache& c, const char* name) {
  return {const_cast<void*>(c.pool), element_type(c.dtype, name), c.block_table, c.num_blocks, c.block_size,
          c.table_blocks, c.tokens, c.heads, c.head_dim, c.block_stride, c.token_stride, c.head_stride, c.dim_stride};
}

mmattn::LseView lse_view(const mmattn_lse* lse) {
  if (lse == nullptr) return {};
  MMATTN_REQUIRE(lse->data != nullptr, "lse: null data (pass NULL for no log-sum-exp)");
  return {lse->data, lse->tokens, lse->heads, lse->token_stride, lse->head_stride};
}

mmattn::AttentionConfig config_of(const mmattn_attention_config& c) {
  mmattn::AttentionConfig cfg{c.num_heads, c.num_kv_heads, c.head_dim, {}};
  if (c.has_scale) cfg.scale = c.scale;
  cfg.validate();
  return cfg;
}

mmattn::Executor executor_of(int num_threads, const char* function) {
  MMATTN_REQUIRE(num_threads >= 0, std::string(function) + ": num_threads must be >= 0, got " +
                                       std::to_string(num_threads));
  return mmattn::Executor::openmp(num_threads);
}

void copy_text(const std::string& text, char* buffer, size_t capacity, size_t* length, const char* function) {
  require_arg(length, function, "length");
  MMATTN_REQUIRE(buffer != nullptr || capacity == 0, std::string(function) + ": buffer is NULL but capacity is " +
                                                         std::to_string(capacity));
  *length = text.size();
  if (capacity == 0) return;
  const size_t n = std::min(text.size(), capacity - 1);
  std::memcpy(buffer, text.data(), n);
  buffer[n] = '\0';
}

}  // namespace

extern "C" {

const char* mmattn_last_error(void) { return last_error.c_str(); }

const char* mmattn_status_name(mmattn_status status) {
  switch (status) {
    case MMATTN_OK: return "ok";
    case MMATTN_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case MMATTN_ERROR_OUT_OF_MEMORY: return "out of memory";
    case MMATTN_ERROR_INTERNAL: return "internal error";
    case MMATTN_STATUS_MAX_ENUM: break;
  }
  return "unknown status";
}

const char* mmattn_version(void) { return mmattn::version_string(); }

// ---- Layout ----

mmattn_status mmattn_layout_create(mmattn_layout** out) {
  return guarded([&] {
    require_arg(out, "mmattn_layout_create", "out");
    *out = new mmattn_layout{};
  });
}

void mmattn_layout_destroy(mmattn_layout* layout) { delete layout; }

mmattn_status mmattn_layout_add_text(mmattn_layout* layout, int64_t tokens) {
  return guarded([&] { require_arg(layout, "mmattn_layout_add_text", "layout").layout.add_text(tokens); });
}

mmattn_status mmattn_layout_add_image(mmattn_layout* layout, int64_t rows, int64_t cols) {
  return guarded([&] { require_arg(layout, "mmattn_layout_add_image", "layout").layout.add_image(rows, cols); });
}

mmattn_status mmattn_layout_add_video(mmattn_layout* layout, int64_t frames, int64_t rows, int64_t cols) {
  return guarded(
      [&] { require_arg(layout, "mmattn_layout_add_video", "layout").layout.add_video(frames, rows, cols); });
}

mmattn_status mmattn_layout_extend_text(mmattn_layout* layout, int64_t tokens) {
  return guarded([&] { require_arg(layout, "mmattn_layout_extend_text", "layout").layout.extend_text(tokens); });
}

mmattn_status mmattn_layout_size(const mmattn_layout* layout, int64_t* size) {
  return guarded([&] {
    const auto& l = require_arg(layout, "mmattn_layout_size", "layout");
    require_arg(size, "mmattn_layout_size", "size") = l.layout.size();
  });
}

// ---- Policy ----

mmattn_status mmattn_policy_create(mmattn_policy** out) {
  return guarded([&] { require_arg(out, "mmattn_policy_create", "out") = new mmattn_policy{}; });
}

mmattn_status mmattn_policy_create_preset(mmattn_preset preset, const mmattn_preset_options* options,
                                          mmattn_policy** out) {
  return guarded([&] {
    require_arg(out, "mmattn_policy_create_preset", "out");
    const mmattn_preset_options defaults{0, nullptr, nullptr};
    auto policy = std::make_unique<mmattn_policy>(mmattn_policy{preset_policy(preset, options ? *options : defaults)});
    policy->policy.validate();
    *out = policy.release();
  });
}

void mmattn_policy_destroy(mmattn_policy* policy) { delete policy; }

mmattn_status mmattn_policy_set_region(mmattn_policy* policy, mmattn_segment_kind query_kind,
                                       mmattn_segment_kind key_kind, mmattn_region_scope scope,
                                       const mmattn_rule* rule) {
  return guarded([&] {
    const char* f = "mmattn_policy_set_region";
    auto& p = require_arg(policy, f, "policy").policy;
    const mmattn::Rule r = rule_of(require_arg(rule, f, "rule"));
    const mmattn::SegmentKind q = segment_kind(query_kind, "query_kind"), k = segment_kind(key_kind, "key_kind");
    switch (scope) {
      case MMATTN_SCOPE_SAME_SEGMENT:
        MMATTN_REQUIRE(q == k, std::string(f) + ": a segment's own keys have its own kind; query kind " +
                                   mmattn::segment_kind_name(q) + " differs from key kind " +
                                   mmattn::segment_kind_name(k));
        r.check(mmattn::Segment{q, 0, 1, 1, 1, 1}, mmattn::Segment{q, 0, 1, 1, 1, 1});
        p.set(mmattn::Region::within(q), r);
        return;
      case MMATTN_SCOPE_OTHER_SEGMENT:
        r.check(mmattn::Segment{q, 0, 1, 1, 1, 1}, mmattn::Segment{k, 1, 1, 1, 1, 1});
        p.set(mmattn::Region::across(q, k), r);
        return;
      case MMATTN_SCOPE_ANY_SEGMENT:
        if (q == k) r.check(mmattn::Segment{q, 0, 1, 1, 1, 1}, mmattn::Segment{q, 0, 1, 1, 1, 1});
        r.check(mmattn::Segment{q, 0, 1, 1, 1, 1}, mmattn::Segment{k, 1, 1, 1, 1, 1});
        p.set(q, k, r);
        return;
      case MMATTN_REGION_SCOPE_MAX_ENUM: break;
    }
    mmattn::detail::fail(std::string(f) + ": unknown scope " + std::to_string(static_cast<int>(scope)));
  });
}

mmattn_status mmattn_policy_set_segments(mmattn_policy* policy, int64_t query_segment, int64_t key_segment,
                                         const mmattn_rule* rule) {
  return guarded([&] {
    const char* f = "mmattn_policy_set_segments";
    auto& p = require_arg(policy, f, "policy").policy;
    p.set_segments(query_segment, key_segment, rule_of(require_arg(rule, f, "rule")));
  });
}

mmattn_status mmattn_policy_set_sinks(mmattn_policy* policy, int64_t sinks) {
  return guarded([&] { require_arg(policy, "mmattn_policy_set_sinks", "policy").policy.with_sinks(sinks); });
}

mmattn_status mmattn_policy_allowed(const mmattn_policy* policy, const mmattn_layout* layout, int64_t q, int64_t k,
                                    int* allowed) {
  return guarded([&] {
    const char* f = "mmattn_policy_allowed";
    const auto& p = require_arg(policy, f, "policy").policy;
    const auto& l = require_arg(layout, f, "layout").layout;
    int& result = require_arg(allowed, f, "allowed");
    l.validate();
    p.validate(l);
    MMATTN_REQUIRE(q >= 0 && q < l.size() && k >= 0 && k < l.size(),
                   std::string(f) + ": (" + std::to_string(q) + ", " + std::to_string(k) + ") is outside [0, " +
                       std::to_string(l.size()) + ")");
    result = mmattn::allowed(l, p, q, k) ? 1 : 0;
  });
}

// ---- Attention ----

mmattn_status mmattn_attention_create(const mmattn_attention_config* config, const mmattn_layout* layout,
                                      const mmattn_policy* policy, const mmattn_plan_options* options,
                                      mmattn_attention** out) {
  return guarded([&] {
    const char* f = "mmattn_attention_create";
    const mmattn::AttentionConfig cfg = config_of(require_arg(config, f, "config"));
    const auto& l = require_arg(layout, f, "layout").layout;
    const auto& p = require_arg(policy, f, "policy").policy;
    require_arg(out, f, "out");
    const mmattn_plan_options o = options ? *options : mmattn_plan_options{};
    MMATTN_REQUIRE(o.query_end >= 0, std::string(f) + ": query_end must be >= 0 (0: the layout's end), got " +
                                         std::to_string(o.query_end));
    mmattn::PlanOptions plan;
    plan.query_begin = o.query_begin;
    plan.query_end = o.query_end == 0 ? -1 : o.query_end;
    plan.all_keys_present = o.all_keys_present != 0;
    if (o.tile_query != 0) plan.tiles.query = o.tile_query;
    if (o.tile_key != 0) plan.tiles.key = o.tile_key;
    if (o.tile_window_query != 0) plan.tiles.window_query = o.tile_window_query;
    *out = new mmattn_attention{mmattn::MultimodalAttention<float>(cfg, l, p, plan, executor_of(o.num_threads, f))};
  });
}

void mmattn_attention_destroy(mmattn_attention* attention) { delete attention; }

mmattn_status mmattn_attention_num_queries(const mmattn_attention* attention, int64_t* num_queries) {
  return guarded([&] {
    const char* f = "mmattn_attention_num_queries";
    require_arg(num_queries, f, "num_queries") = require_arg(attention, f, "attention").attention.plan().num_queries();
  });
}

mmattn_status mmattn_attention_forward(const mmattn_attention* attention, const mmattn_tensor* q,
                                       const mmattn_tensor* k, const mmattn_tensor* v, const mmattn_tensor* out,
                                       const mmattn_lse* lse) {
  return guarded([&] {
    const char* f = "mmattn_attention_forward";
    const auto& a = require_arg(attention, f, "attention").attention;
    // One statement each: the first bad argument in order q, k, v, out is the one reported.
    const bindings::ErasedTensor tq = erased(require_arg(q, f, "q"), "q");
    const bindings::ErasedTensor tk = erased(require_arg(k, f, "k"), "k");
    const bindings::ErasedTensor tv = erased(require_arg(v, f, "v"), "v");
    const bindings::ErasedTensor to = erased(require_arg(out, f, "out"), "out");
    bindings::forward(a, tq, tk, tv, to, lse_view(lse));
  });
}

mmattn_status mmattn_attention_stats(const mmattn_attention* attention, mmattn_plan_stats* stats) {
  return guarded([&] {
    const char* f = "mmattn_attention_stats";
    const auto& a = require_arg(attention, f, "attention").attention;
    mmattn_plan_stats& out = require_arg(stats, f, "stats");
    const mmattn::PlanStats s = a.stats();
    out.query_tokens = s.query_tokens;
    out.key_tokens = s.key_tokens;
    out.allowed_pairs = s.allowed_pairs();
    out.computed_pairs = s.computed_pairs();
    out.full_pairs = s.full_pairs();
    out.dense_pairs = s.dense_pairs();
    out.efficiency = s.efficiency();
    out.density = s.density();
    out.workspace_bytes_per_thread = mmattn::workspace_bytes_per_thread(a.plan(), a.config().head_dim);
  });
}

mmattn_status mmattn_attention_report(const mmattn_attention* attention, int threads, char* buffer, size_t capacity,
                                      size_t* length) {
  return guarded([&] {
    const char* f = "mmattn_attention_report";
    MMATTN_REQUIRE(threads >= 1, std::string(f) + ": threads must be >= 1, got " + std::to_string(threads));
    copy_text(require_arg(attention, f, "attention").attention.report(threads), buffer, capacity, length, f);
  });
}

mmattn_status mmattn_attention_svg(const mmattn_attention* attention, char* buffer, size_t capacity, size_t* length) {
  return guarded([&] {
    const char* f = "mmattn_attention_svg";
    copy_text(require_arg(attention, f, "attention").attention.svg(), buffer, capacity, length, f);
  });
}

// ---- Decode ----

mmattn_status mmattn_decode(const mmattn_attention_config* config, const mmattn_layout* layout,
                            const mmattn_policy* policy, const mmattn_tensor* q, const mmattn_paged_cache* k,
                            const mmattn_paged_cache* v, const mmattn_tensor* out, const mmattn_lse* lse,
                            int num_threads) {
  return guarded([&] {
    const char* f = "mmattn_decode";
    const mmattn::AttentionConfig cfg = config_of(require_arg(config, f, "config"));
    const auto& l = require_arg(layout, f, "layout").layout;
    const auto& p = require_arg(policy, f, "policy").policy;
    l.validate();
    p.validate(l);
    const bindings::ErasedTensor tq = erased(require_arg(q, f, "q"), "q");
    const bindings::ErasedPagedCache ck = erased(require_arg(k, f, "k"), "k");
    const bindings::ErasedPagedCache cv = erased(require_arg(v, f, "v"), "v");
    const bindings::ErasedTensor to = erased(require_arg(out, f, "out"), "out");
    bindings::decode(cfg, l, p, tq, ck, cv, to, lse_view(lse), executor_of(num_threads, f));
  });
}

mmattn_status mmattn_decode_step_create(const mmattn_layout* layout, const mmattn_policy* policy, int64_t new_tokens,
                                        mmattn_decode_step** out) {
  return guarded([&] {
    const char* f = "mmattn_decode_step_create";
    const auto& l = require_arg(layout, f, "layout").layout;
    const auto& p = require_arg(policy, f, "policy").policy;
    require_arg(out, f, "out") = new mmattn_decode_step{mmattn::DecodeStep(l, p, new_tokens)};
  });
}

void mmattn_decode_step_destroy(mmattn_decode_step* step) { delete step; }

mmattn_status mmattn_decode_step_key_end(const mmattn_decode_step* step, int64_t* key_end) {
  return guarded([&] {
    const char* f = "mmattn_decode_step_key_end";
    require_arg(key_end, f, "key_end") = require_arg(step, f, "step").step.key_end();
  });
}

mmattn_status mmattn_decode_step_run(const mmattn_attention_config* config, const mmattn_decode_step* step,
                                     const mmattn_tensor* q, const mmattn_paged_cache* k, const mmattn_paged_cache* v,
                                     const mmattn_tensor* out, const mmattn_lse* lse, int num_threads) {
  return guarded([&] {
    const char* f = "mmattn_decode_step_run";
    const mmattn::AttentionConfig cfg = config_of(require_arg(config, f, "config"));
    const mmattn::DecodeStep& s = require_arg(step, f, "step").step;
    const bindings::ErasedTensor tq = erased(require_arg(q, f, "q"), "q");
    const bindings::ErasedPagedCache ck = erased(require_arg(k, f, "k"), "k");
    const bindings::ErasedPagedCache cv = erased(require_arg(v, f, "v"), "v");
    const bindings::ErasedTensor to = erased(require_arg(out, f, "out"), "out");
    bindings::decode(cfg, s, tq, ck, cv, to, lse_view(lse), executor_of(num_threads, f));
  });
}

// ---- Batches ----

mmattn_status mmattn_batch_create(const mmattn_attention_config* config, const mmattn_batch_sequence* sequences,
                                  int64_t count, int num_threads, mmattn_batch** out) {
  return guarded([&] {
    const char* f = "mmattn_batch_create";
    const mmattn::AttentionConfig cfg = config_of(require_arg(config, f, "config"));
    require_arg(sequences, f, "sequences");
    require_arg(out, f, "out");
    MMATTN_REQUIRE(count > 0, std::string(f) + ": count must be positive, got " + std::to_string(count));
    std::vector<mmattn::BatchSequence> seqs;
    for (int64_t i = 0; i < count; ++i) {
      const mmattn_batch_sequence& s = sequences[i];
      const std::string who = "sequences[" + std::to_string(i) + "]";
      const auto& layout = require_arg(s.layout, f, (who + ".layout").c_str()).layout;
      const auto& policy = require_arg(s.policy, f, (who + ".policy").c_str()).policy;
      MMATTN_REQUIRE(s.query_end >= 0, std::string(f) + ": " + who + ".query_end must be >= 0 (0: the layout's end)");
      seqs.push_back({layout, policy, s.query_begin, s.query_end == 0 ? -1 : s.query_end});
    }
    *out = new mmattn_batch{mmattn::BatchedAttention(cfg, seqs, {}, executor_of(num_threads, f))};
  });
}

void mmattn_batch_destroy(mmattn_batch* batch) { delete batch; }

mmattn_status mmattn_batch_query_offsets(const mmattn_batch* batch, int64_t* offsets, int64_t capacity) {
  return guarded([&] {
    const char* f = "mmattn_batch_query_offsets";
    const auto& b = require_arg(batch, f, "batch").batch;
    require_arg(offsets, f, "offsets");
    const std::vector<index_t>& o = b.query_offsets();
    MMATTN_REQUIRE(capacity >= static_cast<int64_t>(o.size()), std::string(f) + ": offsets holds " +
                                                                   std::to_string(capacity) + " but the batch needs " +
                                                                   std::to_string(o.size()));
    for (size_t i = 0; i < o.size(); ++i) offsets[i] = o[i];
  });
}

mmattn_status mmattn_batch_forward(const mmattn_batch* batch, const mmattn_tensor* q, const mmattn_paged_cache* k,
                                   const mmattn_paged_cache* v, const mmattn_tensor* out, const mmattn_lse* lse,
                                   int split_kv) {
  return guarded([&] {
    const char* f = "mmattn_batch_forward";
    const auto& b = require_arg(batch, f, "batch").batch;
    const bindings::ErasedTensor tq = erased(require_arg(q, f, "q"), "q");
    require_arg(k, f, "k");
    require_arg(v, f, "v");
    std::vector<bindings::ErasedPagedCache> ck, cv;
    for (index_t i = 0; i < b.num_sequences(); ++i) {
      ck.push_back(erased(k[i], ("k[" + std::to_string(i) + "]").c_str()));
      cv.push_back(erased(v[i], ("v[" + std::to_string(i) + "]").c_str()));
    }
    const bindings::ErasedTensor to = erased(require_arg(out, f, "out"), "out");
    bindings::batched_forward(b, tq, ck, cv, to, lse_view(lse), split_kv != 0);
  });
}

}  // extern "C"
