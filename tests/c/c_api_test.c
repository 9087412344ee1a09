/* The C API from C: every preset on random layouts against a dense double-precision reference
 * written here (masked by mmattn_policy_allowed, and for the position rules also by predicates
 * written here from their definitions), GQA, strided views, a bf16 K/V cache, decode over a
 * shuffled paged cache, plan statistics, the report and SVG, and errors: a status, a message
 * naming the argument, and outputs left untouched. Prints "N passed, M failed". */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmattn/c_api.h"

static int passed = 0, failed = 0;

#define CHECK(cond, ...)                                      \
  do {                                                        \
    if (cond) {                                               \
      ++passed;                                               \
    } else {                                                  \
      ++failed;                                               \
      fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                           \
      fprintf(stderr, "\n");                                  \
    }                                                         \
  } while (0)

#define OK(call) CHECK((call) == MMATTN_OK, "%s: %s", #call, mmattn_last_error())

/* ---- A small deterministic generator: the same cases on every machine ---- */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint32_t next_u32(void) {
  rng_state = rng_state * 6364136223846793005u + 1442695040888963407u;
  return (uint32_t)(rng_state >> 33);
}
static int64_t uniform(int64_t lo, int64_t hi) { return lo + (int64_t)(next_u32() % (uint32_t)(hi - lo + 1)); }
static float normal(void) { /* sum of uniforms: enough spread for attention scores */
  float s = 0;
  int i;
  for (i = 0; i < 4; ++i) s += (float)next_u32() / 4294967296.0f - 0.5f;
  return s * 1.7f;
}
static float* random_floats(int64_t n) {
  float* p = (float*)malloc((size_t)n * sizeof(float));
  int64_t i;
  for (i = 0; i < n; ++i) p[i] = normal();
  return p;
}
static float* nan_floats(int64_t n) {
  float* p = (float*)malloc((size_t)n * sizeof(float));
  int64_t i;
  for (i = 0; i < n; ++i) p[i] = NAN;
  return p;
}

/* bf16: the top 16 bits of a float, rounded to nearest even. */
static uint16_t to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}
static float from_bf16(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Element (t, h, d) of a float tensor view. */
static float at(const mmattn_tensor* t, int64_t token, int64_t head, int64_t d) {
  return ((const float*)t->data)[token * t->token_stride + head * t->head_stride + d * t->dim_stride];
}

/* Dense masked softmax attention in double. mask[i * keys + j]: query row i may see key j. Rows
 * with no key get zeros. q/out rows are [0, rows); keys [0, keys). */
static void reference(const mmattn_tensor* q, const mmattn_tensor* k, const mmattn_tensor* v, const unsigned char* mask,
                      int64_t rows, int64_t keys, int64_t heads, int64_t kv_heads, int64_t dim, double scale,
                      double* out /* [rows, heads, dim] */) {
  double* s = (double*)malloc((size_t)keys * sizeof(double));
  int64_t i, h, j, d;
  for (i = 0; i < rows; ++i)
    for (h = 0; h < heads; ++h) {
      const int64_t kh = h / (heads / kv_heads);
      double mx = -INFINITY, sum = 0;
      double* o = out + (i * heads + h) * dim;
      for (d = 0; d < dim; ++d) o[d] = 0;
      for (j = 0; j < keys; ++j) {
        double dot = 0;
        if (!mask[i * keys + j]) continue;
        for (d = 0; d < dim; ++d) dot += (double)at(q, i, h, d) * (double)at(k, j, kh, d);
        s[j] = dot * scale;
        if (s[j] > mx) mx = s[j];
      }
      if (mx == -INFINITY) continue;
      for (j = 0; j < keys; ++j)
        if (mask[i * keys + j]) sum += exp(s[j] - mx);
      for (j = 0; j < keys; ++j)
        if (mask[i * keys + j])
          for (d = 0; d < dim; ++d) o[d] += exp(s[j] - mx) / sum * (double)at(v, j, kh, d);
    }
  free(s);
}

/* max |actual - expected| / max |expected|; NaN anywhere gives +inf. */
static double max_relative_error(const mmattn_tensor* actual, const double* expected, int64_t rows, int64_t heads,
                                 int64_t dim) {
  double diff = 0, ref = 0;
  int64_t i, h, d;
  for (i = 0; i < rows; ++i)
    for (h = 0; h < heads; ++h)
      for (d = 0; d < dim; ++d) {
        const double a = (double)at(actual, i, h, d), e = expected[(i * heads + h) * dim + d];
        if (isnan(a) || isnan(e)) return INFINITY;
        if (fabs(a - e) > diff) diff = fabs(a - e);
        if (fabs(e) > ref) ref = fabs(e);
      }
  return diff / (ref > 1e-30 ? ref : 1e-30);
}

static mmattn_layout* random_layout(int allow_video) {
  mmattn_layout* layout = NULL;
  int64_t segments = uniform(1, 4), i;
  OK(mmattn_layout_create(&layout));
  for (i = 0; i < segments; ++i) {
    switch (uniform(0, allow_video ? 3 : 2)) {
      case 0: OK(mmattn_layout_add_image(layout, uniform(1, 9), uniform(1, 9))); break;
      case 1: OK(mmattn_layout_add_text(layout, uniform(1, 20))); break;
      case 2: OK(mmattn_layout_add_image(layout, uniform(1, 3), uniform(1, 3))); break;
      default: OK(mmattn_layout_add_video(layout, uniform(1, 3), uniform(1, 5), uniform(1, 5))); break;
    }
  }
  return layout;
}

static mmattn_rule window2d_rule(mmattn_window_kind kind, int64_t h, int64_t w) {
  mmattn_rule r;
  memset(&r, 0, sizeof r);
  r.kind = MMATTN_RULE_WINDOW2D;
  r.window_kind = kind;
  r.height = h;
  r.width = w;
  return r;
}

/* Independent predicates for the presets whose mask is a rule on positions alone. */
static int position_rule_allows(mmattn_preset preset, int64_t size, int64_t q, int64_t k) {
  switch (preset) {
    case MMATTN_PRESET_DECODER_CAUSAL: return k <= q;
    case MMATTN_PRESET_DENSE: return 1;
    case MMATTN_PRESET_SLIDING_CAUSAL: return k <= q && q - k < size;
    case MMATTN_PRESET_LLAMA4_CHUNKED: return k <= q && k / size == q / size;
    default: return -1; /* not a position rule */
  }
}

/* One preset on one random layout: forward against the reference, mask against the predicates. */
static void check_preset_case(mmattn_preset preset, int case_index) {
  mmattn_layout* layout = random_layout(1);
  mmattn_policy* policy = NULL;
  mmattn_attention* attention = NULL;
  mmattn_preset_options options;
  mmattn_rule image_window = window2d_rule(uniform(0, 1) ? MMATTN_WINDOW_SLIDING : MMATTN_WINDOW_PARTITIONED, 3, 5);
  const int64_t kv_heads = uniform(1, 2), heads = kv_heads * uniform(1, 3), dim = uniform(1, 3) * 8 - uniform(0, 1);
  int64_t n = 0, i, j, mismatches = 0, predicate_mismatches = 0;
  unsigned char* mask;
  float *qd, *kd, *vd, *od;
  double* expected;
  mmattn_tensor q, k, v, out;
  mmattn_attention_config cfg;
  memset(&options, 0, sizeof options);
  memset(&cfg, 0, sizeof cfg);
  options.size = uniform(1, 12);
  options.image_window = &image_window;
  if (preset == MMATTN_PRESET_GEMMA3_LOCAL && uniform(0, 1)) options.size = 0; /* the default window */
  OK(mmattn_layout_size(layout, &n));
  OK(mmattn_policy_create_preset(preset, &options, &policy));
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.head_dim = dim;
  OK(mmattn_attention_create(&cfg, layout, policy, NULL, &attention));
  if (attention == NULL) goto done;

  mask = (unsigned char*)malloc((size_t)(n * n));
  for (i = 0; i < n; ++i)
    for (j = 0; j < n; ++j) {
      int allowed = 0;
      const int expected_allowed = position_rule_allows(preset, options.size, i, j);
      if (mmattn_policy_allowed(policy, layout, i, j, &allowed) != MMATTN_OK) ++mismatches;
      mask[i * n + j] = (unsigned char)allowed;
      if (expected_allowed >= 0 && expected_allowed != allowed) ++predicate_mismatches;
    }
  CHECK(mismatches == 0, "preset %d case %d: mmattn_policy_allowed failed: %s", (int)preset, case_index,
        mmattn_last_error());
  CHECK(predicate_mismatches == 0, "preset %d case %d: %lld pairs differ from the predicate written here", (int)preset,
        case_index, (long long)predicate_mismatches);

  qd = random_floats(n * heads * dim);
  kd = random_floats(n * kv_heads * dim);
  vd = random_floats(n * kv_heads * dim);
  od = nan_floats(n * heads * dim);
  /* Q in [heads, tokens, dim] storage: the strides carry the order. */
  q = mmattn_tensor_thd(qd, MMATTN_F32, n, heads, dim);
  q.token_stride = dim;
  q.head_stride = n * dim;
  k = mmattn_tensor_thd(kd, MMATTN_F32, n, kv_heads, dim);
  v = mmattn_tensor_thd(vd, MMATTN_F32, n, kv_heads, dim);
  out = mmattn_tensor_thd(od, MMATTN_F32, n, heads, dim);
  OK(mmattn_attention_forward(attention, &q, &k, &v, &out, NULL));
  expected = (double*)malloc((size_t)(n * heads * dim) * sizeof(double));
  reference(&q, &k, &v, mask, n, n, heads, kv_heads, dim, 1.0 / sqrt((double)dim), expected);
  {
    const double err = max_relative_error(&out, expected, n, heads, dim);
    CHECK(err <= 1e-5, "preset %d case %d (%lld tokens, %lld/%lld heads, dim %lld): max relative error %g",
          (int)preset, case_index, (long long)n, (long long)heads, (long long)kv_heads, (long long)dim, err);
  }
  {
    mmattn_plan_stats stats;
    int64_t allowed_pairs = 0;
    for (i = 0; i < n * n; ++i) allowed_pairs += mask[i];
    OK(mmattn_attention_stats(attention, &stats));
    CHECK(stats.allowed_pairs == allowed_pairs && stats.dense_pairs == n * n,
          "preset %d: stats count %lld allowed pairs, the mask %lld", (int)preset, (long long)stats.allowed_pairs,
          (long long)allowed_pairs);
  }
  free(mask);
  free(qd);
  free(kd);
  free(vd);
  free(od);
  free(expected);
done:
  mmattn_attention_destroy(attention);
  mmattn_policy_destroy(policy);
  mmattn_layout_destroy(layout);
}

/* f32 Q/O over a bf16 K/V cache, chunked prefill in two plans, then decode of the last tokens over
 * a paged copy of the same cache with its blocks shuffled. */
static void check_bf16_chunks_and_decode(void) {
  const int64_t heads = 4, kv_heads = 2, dim = 16, block = 5, fresh = 3;
  mmattn_layout* layout = NULL;
  mmattn_policy* policy = NULL;
  mmattn_attention *first = NULL, *second = NULL;
  mmattn_plan_options opts;
  mmattn_attention_config cfg;
  int64_t n = 0, i, j, cut, blocks, b;
  float *qd, *kd, *vd, *kr, *vr, *od, *dd;
  uint16_t *kb, *vb, *pool_k, *pool_v;
  int32_t* table;
  unsigned char* mask;
  double* expected;
  mmattn_tensor q, k, v, out, kref, vref, q_last, out_last;
  mmattn_paged_cache pk, pv;
  memset(&cfg, 0, sizeof cfg);
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.head_dim = dim;
  OK(mmattn_layout_create(&layout));
  OK(mmattn_layout_add_image(layout, 6, 7));
  OK(mmattn_layout_add_text(layout, 23));
  OK(mmattn_policy_create_preset(MMATTN_PRESET_STRUCTURED, NULL, &policy));
  OK(mmattn_layout_size(layout, &n));
  cut = 42 + 11; /* after the image: the text before it is causal, so the first chunk is exact */

  qd = random_floats(n * heads * dim);
  kd = random_floats(n * kv_heads * dim);
  vd = random_floats(n * kv_heads * dim);
  kb = (uint16_t*)malloc((size_t)(n * kv_heads * dim) * sizeof(uint16_t));
  vb = (uint16_t*)malloc((size_t)(n * kv_heads * dim) * sizeof(uint16_t));
  kr = (float*)malloc((size_t)(n * kv_heads * dim) * sizeof(float));
  vr = (float*)malloc((size_t)(n * kv_heads * dim) * sizeof(float));
  for (i = 0; i < n * kv_heads * dim; ++i) {
    kb[i] = to_bf16(kd[i]);
    vb[i] = to_bf16(vd[i]);
    kr[i] = from_bf16(kb[i]);
    vr[i] = from_bf16(vb[i]);
  }
  od = nan_floats(n * heads * dim);
  q = mmattn_tensor_thd(qd, MMATTN_F32, n, heads, dim);
  k = mmattn_tensor_thd(kb, MMATTN_BF16, n, kv_heads, dim);
  v = mmattn_tensor_thd(vb, MMATTN_BF16, n, kv_heads, dim);
  kref = mmattn_tensor_thd(kr, MMATTN_F32, n, kv_heads, dim);
  vref = mmattn_tensor_thd(vr, MMATTN_F32, n, kv_heads, dim);

  memset(&opts, 0, sizeof opts);
  opts.query_end = cut;
  OK(mmattn_attention_create(&cfg, layout, policy, &opts, &first));
  opts.query_begin = cut;
  opts.query_end = 0;
  OK(mmattn_attention_create(&cfg, layout, policy, &opts, &second));
  if (first && second) {
    mmattn_tensor q1 = mmattn_tensor_thd(qd, MMATTN_F32, cut, heads, dim);
    mmattn_tensor o1 = mmattn_tensor_thd(od, MMATTN_F32, cut, heads, dim);
    mmattn_tensor q2 = mmattn_tensor_thd(qd + cut * heads * dim, MMATTN_F32, n - cut, heads, dim);
    mmattn_tensor o2 = mmattn_tensor_thd(od + cut * heads * dim, MMATTN_F32, n - cut, heads, dim);
    OK(mmattn_attention_forward(first, &q1, &k, &v, &o1, NULL));
    OK(mmattn_attention_forward(second, &q2, &k, &v, &o2, NULL));
  }
  mask = (unsigned char*)malloc((size_t)(n * n));
  for (i = 0; i < n; ++i)
    for (j = 0; j < n; ++j) {
      int allowed = 0;
      OK(mmattn_policy_allowed(policy, layout, i, j, &allowed));
      mask[i * n + j] = (unsigned char)allowed;
    }
  expected = (double*)malloc((size_t)(n * heads * dim) * sizeof(double));
  reference(&q, &kref, &vref, mask, n, n, heads, kv_heads, dim, 1.0 / sqrt((double)dim), expected);
  out = mmattn_tensor_thd(od, MMATTN_F32, n, heads, dim);
  {
    const double err = max_relative_error(&out, expected, n, heads, dim);
    CHECK(err <= 1e-5, "bf16 K/V chunked prefill: max relative error %g against the rounded inputs", err);
  }

  /* Decode: the last `fresh` tokens over a paged pool whose blocks are stored in reverse order. */
  blocks = (n + block - 1) / block;
  pool_k = (uint16_t*)calloc((size_t)(blocks * block * kv_heads * dim), sizeof(uint16_t));
  pool_v = (uint16_t*)calloc((size_t)(blocks * block * kv_heads * dim), sizeof(uint16_t));
  table = (int32_t*)malloc((size_t)blocks * sizeof(int32_t));
  for (b = 0; b < blocks; ++b) table[b] = (int32_t)(blocks - 1 - b);
  for (i = 0; i < n; ++i) {
    const int64_t physical = table[i / block], row = (physical * block + i % block) * kv_heads * dim;
    memcpy(pool_k + row, kb + i * kv_heads * dim, (size_t)(kv_heads * dim) * sizeof(uint16_t));
    memcpy(pool_v + row, vb + i * kv_heads * dim, (size_t)(kv_heads * dim) * sizeof(uint16_t));
  }
  memset(&pk, 0, sizeof pk);
  pk.pool = pool_k;
  pk.dtype = MMATTN_BF16;
  pk.block_table = table;
  pk.num_blocks = blocks;
  pk.block_size = block;
  pk.table_blocks = blocks;
  pk.tokens = n;
  pk.heads = kv_heads;
  pk.head_dim = dim;
  pk.block_stride = block * kv_heads * dim;
  pk.token_stride = kv_heads * dim;
  pk.head_stride = dim;
  pk.dim_stride = 1;
  pv = pk;
  pv.pool = pool_v;
  dd = nan_floats(fresh * heads * dim);
  q_last = mmattn_tensor_thd(qd + (n - fresh) * heads * dim, MMATTN_F32, fresh, heads, dim);
  out_last = mmattn_tensor_thd(dd, MMATTN_F32, fresh, heads, dim);
  OK(mmattn_decode(&cfg, layout, policy, &q_last, &pk, &pv, &out_last, NULL, 2));
  {
    const double err = max_relative_error(&out_last, expected + (n - fresh) * heads * dim, fresh, heads, dim);
    CHECK(err <= 1e-5, "decode over a shuffled paged bf16 cache: max relative error %g", err);
  }

  /* The same decode as a step planned once and run by two "layers", over a contiguous cache of
   * larger capacity (one block; the unwritten tail holds bf16 NaNs and is never read). */
  {
    const int64_t capacity = n + 9;
    uint16_t *cap_k = (uint16_t*)malloc((size_t)(capacity * kv_heads * dim) * sizeof(uint16_t)),
             *cap_v = (uint16_t*)malloc((size_t)(capacity * kv_heads * dim) * sizeof(uint16_t));
    int32_t zero = 0;
    int64_t key_end = -1;
    int layer;
    mmattn_decode_step* step = NULL;
    mmattn_paged_cache ck = pk, cv;
    for (i = 0; i < capacity * kv_heads * dim; ++i) {
      cap_k[i] = i < n * kv_heads * dim ? kb[i] : (uint16_t)0x7FC0;
      cap_v[i] = i < n * kv_heads * dim ? vb[i] : (uint16_t)0x7FC0;
    }
    ck.pool = cap_k;
    ck.block_table = &zero;
    ck.num_blocks = 1;
    ck.block_size = capacity;
    ck.table_blocks = 1;
    ck.tokens = capacity;
    ck.block_stride = 0;
    cv = ck;
    cv.pool = cap_v;
    OK(mmattn_decode_step_create(layout, policy, fresh, &step));
    OK(mmattn_decode_step_key_end(step, &key_end));
    CHECK(key_end > 0 && key_end <= n, "key_end %lld of %lld tokens", (long long)key_end, (long long)n);
    for (layer = 0; layer < 2; ++layer) {
      for (i = 0; i < fresh * heads * dim; ++i) dd[i] = NAN;
      OK(mmattn_decode_step_run(&cfg, step, &q_last, &ck, &cv, &out_last, NULL, 2));
      {
        const double err = max_relative_error(&out_last, expected + (n - fresh) * heads * dim, fresh, heads, dim);
        CHECK(err <= 1e-5, "decode step, layer %d, over a cache of capacity %lld: max relative error %g", layer,
              (long long)capacity, err);
      }
    }
    ck.tokens = cv.tokens = key_end - 1;
    CHECK(mmattn_decode_step_run(&cfg, step, &q_last, &ck, &cv, &out_last, NULL, 2) == MMATTN_ERROR_INVALID_ARGUMENT &&
              strstr(mmattn_last_error(), "the step reads keys") != NULL,
          "a cache shorter than key_end: got '%s'", mmattn_last_error());
    mmattn_decode_step_destroy(step);
    free(cap_k);
    free(cap_v);
  }

  /* A table entry outside the pool: an error naming it, and the output untouched. */
  table[0] = (int32_t)blocks;
  for (i = 0; i < fresh * heads * dim; ++i) dd[i] = NAN;
  CHECK(mmattn_decode(&cfg, layout, policy, &q_last, &pk, &pv, &out_last, NULL, 2) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "block_table[0]") != NULL,
        "a stale block table: got '%s'", mmattn_last_error());
  {
    int untouched = 1;
    for (i = 0; i < fresh * heads * dim; ++i) untouched &= isnan(dd[i]) ? 1 : 0;
    CHECK(untouched, "a failing decode wrote its output");
  }

  mmattn_attention_destroy(first);
  mmattn_attention_destroy(second);
  mmattn_policy_destroy(policy);
  mmattn_layout_destroy(layout);
  free(qd), free(kd), free(vd), free(kb), free(vb), free(kr), free(vr), free(od), free(dd);
  free(pool_k), free(pool_v), free(table), free(mask), free(expected);
}

static void check_report_and_svg(void) {
  mmattn_layout* layout = NULL;
  mmattn_policy* policy = NULL;
  mmattn_attention* attention = NULL;
  mmattn_attention_config cfg = {8, 2, 64, 0, 0.0f};
  size_t length = 0, again = 0;
  char* text;
  OK(mmattn_layout_create(&layout));
  OK(mmattn_layout_add_image(layout, 12, 12));
  OK(mmattn_layout_add_text(layout, 20));
  OK(mmattn_policy_create_preset(MMATTN_PRESET_STRUCTURED, NULL, &policy));
  OK(mmattn_attention_create(&cfg, layout, policy, NULL, &attention));
  OK(mmattn_attention_report(attention, 2, NULL, 0, &length));
  text = (char*)malloc(length + 1);
  OK(mmattn_attention_report(attention, 2, text, length + 1, &again));
  CHECK(again == length && strlen(text) == length && length > 0, "report: %zu then %zu bytes", length, again);
  free(text);
  OK(mmattn_attention_svg(attention, NULL, 0, &length));
  text = (char*)malloc(16);
  OK(mmattn_attention_svg(attention, text, 16, &again));
  CHECK(strlen(text) == 15 && strstr(text, "<svg") != NULL && again == length, "svg truncated to 15 bytes: '%s'", text);
  free(text);
  mmattn_attention_destroy(attention);
  mmattn_policy_destroy(policy);
  mmattn_layout_destroy(layout);
}

static void check_errors(void) {
  mmattn_layout* layout = NULL;
  mmattn_policy* policy = NULL;
  mmattn_attention* attention = NULL;
  mmattn_attention_config cfg = {8, 3, 16, 0, 0.0f};
  mmattn_rule even = window2d_rule(MMATTN_WINDOW_SLIDING, 4, 3);
  mmattn_preset_options options = {0, NULL, NULL};
  float q[2 * 8 * 16], kv[2 * 2 * 16], out[2 * 8 * 16];
  mmattn_tensor tq, tk, tv, tout;
  int i, untouched = 1;

  OK(mmattn_layout_create(&layout));
  OK(mmattn_layout_add_text(layout, 1));
  OK(mmattn_layout_extend_text(layout, 1)); /* one text segment of 2 */
  OK(mmattn_policy_create_preset(MMATTN_PRESET_DECODER_CAUSAL, NULL, &policy));
  CHECK(mmattn_attention_create(&cfg, layout, policy, NULL, &attention) == MMATTN_ERROR_INVALID_ARGUMENT &&
            attention == NULL && strstr(mmattn_last_error(), "num_kv_heads (3) must divide num_heads (8)") != NULL,
        "GQA heads that do not divide: got '%s'", mmattn_last_error());
  CHECK(mmattn_layout_add_image(layout, 0, 4) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "at least 1 x 1") != NULL,
        "an empty image: got '%s'", mmattn_last_error());
  CHECK(mmattn_layout_add_text(NULL, 3) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "mmattn_layout_add_text: layout is NULL") != NULL,
        "a NULL handle: got '%s'", mmattn_last_error());
  options.image_window = &even;
  {
    mmattn_policy* bad = NULL;
    CHECK(mmattn_policy_create_preset(MMATTN_PRESET_STRUCTURED, &options, &bad) == MMATTN_ERROR_INVALID_ARGUMENT &&
              bad == NULL && strstr(mmattn_last_error(), "odd sizes") != NULL,
          "an even sliding window: got '%s'", mmattn_last_error());
    CHECK(mmattn_policy_create_preset((mmattn_preset)42, NULL, &bad) == MMATTN_ERROR_INVALID_ARGUMENT &&
              strstr(mmattn_last_error(), "unknown preset 42") != NULL,
          "an unknown preset: got '%s'", mmattn_last_error());
    CHECK(mmattn_policy_set_region(policy, MMATTN_TEXT, MMATTN_IMAGE, MMATTN_SCOPE_OTHER_SEGMENT, &even) ==
                  MMATTN_ERROR_INVALID_ARGUMENT &&
              strstr(mmattn_last_error(), "window") != NULL,
          "a 2-D window on text -> image: got '%s'", mmattn_last_error());
  }

  /* A shape mismatch: the error names k, and out keeps its sentinel. */
  cfg.num_kv_heads = 2;
  OK(mmattn_attention_create(&cfg, layout, policy, NULL, &attention));
  for (i = 0; i < 2 * 8 * 16; ++i) q[i] = 1.0f, out[i] = -7.0f;
  for (i = 0; i < 2 * 2 * 16; ++i) kv[i] = 1.0f;
  tq = mmattn_tensor_thd(q, MMATTN_F32, 2, 8, 16);
  tk = mmattn_tensor_thd(kv, MMATTN_F32, 2, 2, 8); /* head_dim 8, not 16 */
  tout = mmattn_tensor_thd(out, MMATTN_F32, 2, 8, 16);
  CHECK(mmattn_attention_forward(attention, &tq, &tk, &tk, &tout, NULL) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "k: shape [2, 2, 8] must be [2, 2, 16]") != NULL,
        "k of the wrong head_dim: got '%s'", mmattn_last_error());
  tk = mmattn_tensor_thd(kv, MMATTN_F16, 2, 2, 16);
  tv = mmattn_tensor_thd(kv, MMATTN_F32, 2, 2, 16);
  CHECK(mmattn_attention_forward(attention, &tq, &tk, &tv, &tout, NULL) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "not a mix the bindings compile") != NULL,
        "f16 K with f32 V: got '%s'", mmattn_last_error());
  tk = mmattn_tensor_thd(kv, (mmattn_dtype)9, 2, 2, 16);
  CHECK(mmattn_attention_forward(attention, &tq, &tk, &tk, &tout, NULL) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "k: unknown dtype 9") != NULL,
        "an unknown dtype: got '%s'", mmattn_last_error());
  tk = mmattn_tensor_thd(kv, MMATTN_F32, 2, 2, 16);
  tout.data = q; /* out aliases q */
  CHECK(mmattn_attention_forward(attention, &tq, &tk, &tk, &tout, NULL) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "out: overlaps q") != NULL,
        "out aliasing q: got '%s'", mmattn_last_error());
  for (i = 0; i < 2 * 8 * 16; ++i) untouched &= out[i] == -7.0f && q[i] == 1.0f;
  CHECK(untouched, "a failing forward wrote an output");
  tout.data = out;
  OK(mmattn_attention_forward(attention, &tq, &tk, &tk, &tout, NULL));
  CHECK(fabsf(out[0] - 1.0f) < 1e-6f, "uniform values average to 1, got %g", (double)out[0]);
  CHECK(strcmp(mmattn_status_name(MMATTN_ERROR_INVALID_ARGUMENT), "invalid argument") == 0 &&
            strlen(mmattn_version()) > 0,
        "status names and version");
  mmattn_attention_destroy(attention);
  mmattn_policy_destroy(policy);
  mmattn_layout_destroy(layout);
}

/* Region rules set one by one reproduce the structured preset. */
static void check_policy_by_regions(void) {
  mmattn_layout* layout = random_layout(0);
  mmattn_policy *by_hand = NULL, *preset = NULL;
  mmattn_rule window = window2d_rule(MMATTN_WINDOW_SLIDING, 5, 3), causal;
  int64_t n = 0, i, j, differ = 0;
  memset(&causal, 0, sizeof causal);
  causal.kind = MMATTN_RULE_CAUSAL;
  OK(mmattn_layout_add_image(layout, 7, 6));
  OK(mmattn_layout_add_text(layout, 9));
  OK(mmattn_layout_size(layout, &n));
  OK(mmattn_policy_create(&by_hand));
  OK(mmattn_policy_set_region(by_hand, MMATTN_IMAGE, MMATTN_IMAGE, MMATTN_SCOPE_SAME_SEGMENT, &window));
  OK(mmattn_policy_set_region(by_hand, MMATTN_TEXT, MMATTN_IMAGE, MMATTN_SCOPE_ANY_SEGMENT, &causal));
  OK(mmattn_policy_set_region(by_hand, MMATTN_TEXT, MMATTN_TEXT, MMATTN_SCOPE_ANY_SEGMENT, &causal));
  {
    mmattn_preset_options options = {0, &window, NULL};
    OK(mmattn_policy_create_preset(MMATTN_PRESET_STRUCTURED, &options, &preset));
  }
  for (i = 0; i < n; ++i)
    for (j = 0; j < n; ++j) {
      int a = 0, b = 0;
      OK(mmattn_policy_allowed(by_hand, layout, i, j, &a));
      OK(mmattn_policy_allowed(preset, layout, i, j, &b));
      differ += a != b;
    }
  CHECK(differ == 0, "region rules vs the structured preset: %lld pairs differ", (long long)differ);
  mmattn_policy_destroy(by_hand);
  mmattn_policy_destroy(preset);
  mmattn_layout_destroy(layout);
}

/* Two sequences in one batch: a structured prefill of a whole layout and a causal decode of the
 * last token of another, Q/O packed; each sequence's rows against the reference. */
static void check_batch(int split_kv) {
  const int64_t heads = 4, kv_heads = 1, dim = 8;
  mmattn_layout *a = random_layout(0), *b = random_layout(0);
  mmattn_policy *pa = NULL, *pb = NULL;
  mmattn_batch* batch = NULL;
  mmattn_batch_sequence seqs[2];
  mmattn_attention_config cfg = {4, 1, 8, 0, 0.0f};
  int64_t na = 0, nb = 0, offsets[3] = {-1, -1, -1}, s, i, j;
  OK(mmattn_layout_size(a, &na));
  OK(mmattn_layout_size(b, &nb));
  OK(mmattn_policy_create_preset(MMATTN_PRESET_STRUCTURED, NULL, &pa));
  OK(mmattn_policy_create_preset(MMATTN_PRESET_DECODER_CAUSAL, NULL, &pb));
  seqs[0].layout = a, seqs[0].policy = pa, seqs[0].query_begin = 0, seqs[0].query_end = 0;
  seqs[1].layout = b, seqs[1].policy = pb, seqs[1].query_begin = nb - 1, seqs[1].query_end = 0;
  OK(mmattn_batch_create(&cfg, seqs, 2, 2, &batch));
  OK(mmattn_batch_query_offsets(batch, offsets, 3));
  CHECK(offsets[0] == 0 && offsets[1] == na && offsets[2] == na + 1, "batch offsets %lld %lld %lld",
        (long long)offsets[0], (long long)offsets[1], (long long)offsets[2]);
  if (batch != NULL && offsets[2] == na + 1) {
    const int64_t total = offsets[2], lengths[2] = {na, nb}, begins[2] = {0, nb - 1};
    mmattn_layout* layouts[2];
    mmattn_policy* policies[2];
    float *qd = random_floats(total * heads * dim), *od = nan_floats(total * heads * dim);
    float* kd[2];
    float* vd[2];
    int32_t zero = 0;
    mmattn_paged_cache k[2], v[2];
    mmattn_tensor q = mmattn_tensor_thd(qd, MMATTN_F32, total, heads, dim);
    mmattn_tensor out = mmattn_tensor_thd(od, MMATTN_F32, total, heads, dim);
    layouts[0] = a, layouts[1] = b, policies[0] = pa, policies[1] = pb;
    for (s = 0; s < 2; ++s) {
      kd[s] = random_floats(lengths[s] * kv_heads * dim);
      vd[s] = random_floats(lengths[s] * kv_heads * dim);
      memset(&k[s], 0, sizeof k[s]);
      k[s].pool = kd[s];
      k[s].dtype = MMATTN_F32;
      k[s].block_table = &zero;
      k[s].num_blocks = 1;
      k[s].block_size = lengths[s];
      k[s].table_blocks = 1;
      k[s].tokens = lengths[s];
      k[s].heads = kv_heads;
      k[s].head_dim = dim;
      k[s].token_stride = kv_heads * dim;
      k[s].head_stride = dim;
      k[s].dim_stride = 1;
      v[s] = k[s];
      v[s].pool = vd[s];
    }
    OK(mmattn_batch_forward(batch, &q, k, v, &out, NULL, split_kv));
    for (s = 0; s < 2; ++s) {
      const int64_t rows = offsets[s + 1] - offsets[s], n = lengths[s];
      unsigned char* mask = (unsigned char*)malloc((size_t)(rows * n));
      double* expected = (double*)malloc((size_t)(rows * heads * dim) * sizeof(double));
      mmattn_tensor qs = mmattn_tensor_thd(qd + offsets[s] * heads * dim, MMATTN_F32, rows, heads, dim);
      mmattn_tensor os = mmattn_tensor_thd(od + offsets[s] * heads * dim, MMATTN_F32, rows, heads, dim);
      mmattn_tensor ks = mmattn_tensor_thd(kd[s], MMATTN_F32, n, kv_heads, dim);
      mmattn_tensor vs = mmattn_tensor_thd(vd[s], MMATTN_F32, n, kv_heads, dim);
      for (i = 0; i < rows; ++i)
        for (j = 0; j < n; ++j) {
          int allowed = 0;
          OK(mmattn_policy_allowed(policies[s], layouts[s], begins[s] + i, j, &allowed));
          mask[i * n + j] = (unsigned char)allowed;
        }
      reference(&qs, &ks, &vs, mask, rows, n, heads, kv_heads, dim, 1.0 / sqrt((double)dim), expected);
      {
        const double err = max_relative_error(&os, expected, rows, heads, dim);
        CHECK(err <= 1e-5, "batch (split_kv %d) sequence %lld: max relative error %g", split_kv, (long long)s, err);
      }
      free(mask);
      free(expected);
      free(kd[s]);
      free(vd[s]);
    }
    free(qd);
    free(od);
  }
  CHECK(mmattn_batch_create(&cfg, seqs, 0, 2, &batch) == MMATTN_ERROR_INVALID_ARGUMENT &&
            strstr(mmattn_last_error(), "count must be positive") != NULL,
        "an empty batch: got '%s'", mmattn_last_error());
  mmattn_batch_destroy(batch);
  mmattn_policy_destroy(pa);
  mmattn_policy_destroy(pb);
  mmattn_layout_destroy(a);
  mmattn_layout_destroy(b);
}

/* The last error is per thread: a failure on another thread leaves this thread's message alone. */
static void* fail_on_a_thread(void* message_out) {
  mmattn_layout* layout = NULL;
  if (mmattn_layout_create(&layout) == MMATTN_OK) {
    (void)mmattn_layout_add_text(layout, -5);
    strncpy((char*)message_out, mmattn_last_error(), 255);
    mmattn_layout_destroy(layout);
  }
  return NULL;
}

static void check_thread_local_error(void) {
  char other[256] = {0};
  pthread_t thread;
  CHECK(mmattn_layout_add_image(NULL, 1, 1) == MMATTN_ERROR_INVALID_ARGUMENT, "a NULL layout");
  CHECK(pthread_create(&thread, NULL, fail_on_a_thread, other) == 0 && pthread_join(thread, NULL) == 0,
        "pthread_create");
  CHECK(strstr(other, "a text segment needs at least one token, got -5") != NULL, "the thread's message: '%s'", other);
  CHECK(strstr(mmattn_last_error(), "mmattn_layout_add_image: layout is NULL") != NULL,
        "this thread's message after another failed: '%s'", mmattn_last_error());
}

int main(void) {
  const mmattn_preset presets[] = {MMATTN_PRESET_DECODER_CAUSAL,  MMATTN_PRESET_DENSE,
                                   MMATTN_PRESET_GEMMA3_GLOBAL,   MMATTN_PRESET_GEMMA3_LOCAL,
                                   MMATTN_PRESET_SLIDING_CAUSAL,  MMATTN_PRESET_LLAMA4_CHUNKED,
                                   MMATTN_PRESET_VISION_BLOCK_DIAGONAL, MMATTN_PRESET_QWEN25VL_WINDOW,
                                   MMATTN_PRESET_VIDEO_WINDOWS,   MMATTN_PRESET_STRUCTURED};
  size_t p;
  int c;
  for (p = 0; p < sizeof presets / sizeof presets[0]; ++p)
    for (c = 0; c < 6; ++c) check_preset_case(presets[p], c);
  check_bf16_chunks_and_decode();
  check_report_and_svg();
  check_errors();
  check_policy_by_regions();
  check_batch(0);
  check_batch(1);
  check_thread_local_error();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
