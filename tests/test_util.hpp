#pragma once
// Helpers shared by every test: random Q/K/V, strided storage whose padding is NaN (a kernel that
// reads or writes padding shows it at once), normwise error measures, and the reference run.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/attention_config.hpp"
#include "mmattn/reference.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn::test {

// Debug + sanitizer builds run Eigen unoptimised and every access instrumented: 50-100x slower.
// Tests use this to drop their largest shapes there, never to drop a value of an axis.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

#if defined(__OPTIMIZE__)
inline constexpr bool kOptimized = true;
#else
inline constexpr bool kOptimized = false;
#endif

// Slow enough that the largest shapes should be skipped.
inline constexpr bool kSlowBuild = kSanitized || !kOptimized;

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
inline constexpr float kInf = std::numeric_limits<float>::infinity();

// How a [tokens, heads, head_dim] tensor sits in memory.
enum class Storage {
  contiguous,     // view_thd: [tokens, heads, head_dim], no gaps
  padded_tokens,  // [tokens, heads, head_dim] with token_stride = heads * head_dim + 3; the gaps are NaN
  heads_major,    // view_htd: [heads, tokens, head_dim]
  dim_strided,    // dim_stride 2 (every other float is NaN), plus one NaN after each token
};

inline const char* storage_name(Storage s) {
  switch (s) {
    case Storage::contiguous: return "contiguous";
    case Storage::padded_tokens: return "padded_tokens";
    case Storage::heads_major: return "heads_major";
    case Storage::dim_strided: return "dim_strided";
  }
  return "?";
}

// Elements one past the largest offset of a view: the storage it needs.
inline index_t storage_extent(index_t tokens, index_t heads, index_t dim, index_t token_stride, index_t head_stride,
                              index_t dim_stride) {
  if (tokens == 0 || heads == 0 || dim == 0) return 0;
  return (tokens - 1) * token_stride + (heads - 1) * head_stride + (dim - 1) * dim_stride + 1;
}

// Owning storage plus a view into it. Storage not covered by the view holds NaN.
struct Tensor {
  std::vector<float> storage;
  TensorView<float> view;

  Tensor() = default;
  Tensor(index_t tokens, index_t heads, index_t dim, Storage layout = Storage::contiguous) {
    index_t ts = heads * dim, hs = dim, ds = 1;  // contiguous
    switch (layout) {
      case Storage::contiguous: break;
      case Storage::padded_tokens: ts = heads * dim + 3; break;
      case Storage::heads_major: ts = dim, hs = tokens * dim; break;
      case Storage::dim_strided: ds = 2, hs = 2 * dim, ts = 2 * dim * heads + 1; break;
    }
    // One trailing NaN so a read one past the last element is a NaN, not an ASan report only.
    storage.assign(static_cast<size_t>(storage_extent(tokens, heads, dim, ts, hs, ds) + 1), kNaN);
    view = view_strided(storage.data(), tokens, heads, dim, ts, hs, ds);
  }

  // Tensor is copyable; the copy's view points into the copy's storage.
  Tensor(const Tensor& other) : storage(other.storage), view(other.view) { view.data = storage.data(); }
  Tensor& operator=(const Tensor& other) {
    if (this != &other) {
      storage = other.storage;
      view = other.view;
      view.data = storage.data();
    }
    return *this;
  }
  Tensor(Tensor&& other) noexcept : storage(std::move(other.storage)), view(other.view) {
    view.data = storage.data();
  }
  Tensor& operator=(Tensor&& other) noexcept {
    storage = std::move(other.storage);
    view = other.view;
    view.data = storage.data();
    return *this;
  }

  TensorView<const float> cview() const { return view; }
  index_t tokens() const { return view.tokens; }
  index_t heads() const { return view.heads; }
  index_t head_dim() const { return view.head_dim; }

  // True when every storage element outside the view is still NaN.
  bool padding_intact() const {
    std::vector<char> covered(storage.size(), 0);
    for (index_t t = 0; t < view.tokens; ++t)
      for (index_t h = 0; h < view.heads; ++h)
        for (index_t d = 0; d < view.head_dim; ++d) covered[static_cast<size_t>(&view(t, h, d) - storage.data())] = 1;
    for (size_t i = 0; i < storage.size(); ++i)
      if (!covered[i] && !std::isnan(storage[i])) return false;
    return true;
  }
};

// Calls f(token, head, dim) for every element of a view.
template <class T, class F>
void for_each_index(const TensorView<T>& v, F&& f) {
  for (index_t t = 0; t < v.tokens; ++t)
    for (index_t h = 0; h < v.heads; ++h)
      for (index_t d = 0; d < v.head_dim; ++d) f(t, h, d);
}

// Standard normal values, in logical order, reproducible from the seed.
inline void fill_normal(const TensorView<float>& v, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for_each_index(v, [&](index_t t, index_t h, index_t d) { v(t, h, d) = dist(gen); });
}

inline void fill_value(const TensorView<float>& v, float value) {
  for_each_index(v, [&](index_t t, index_t h, index_t d) { v(t, h, d) = value; });
}

inline Tensor random_tensor(index_t tokens, index_t heads, index_t dim, std::uint32_t seed,
                            Storage layout = Storage::contiguous) {
  Tensor t(tokens, heads, dim, layout);
  fill_normal(t.view, seed);
  return t;
}

// The same logical values in another storage order.
inline Tensor restride(const Tensor& src, Storage layout) {
  Tensor dst(src.tokens(), src.heads(), src.head_dim(), layout);
  for_each_index(src.view, [&](index_t t, index_t h, index_t d) { dst.view(t, h, d) = src.view(t, h, d); });
  return dst;
}

// Random Q [query_tokens, num_heads, head_dim], K and V [key_tokens, num_kv_heads, head_dim].
struct Buffers {
  Tensor q, k, v;

  Buffers restrided(Storage q_layout, Storage kv_layout) const {
    return {restride(q, q_layout), restride(k, kv_layout), restride(v, kv_layout)};
  }
};

inline Buffers make_qkv(const AttentionConfig& cfg, index_t query_tokens, index_t key_tokens, std::uint32_t seed,
                        Storage layout = Storage::contiguous) {
  return {random_tensor(query_tokens, cfg.num_heads, cfg.head_dim, seed, layout),
          random_tensor(key_tokens, cfg.num_kv_heads, cfg.head_dim, seed + 1000003u, layout),
          random_tensor(key_tokens, cfg.num_kv_heads, cfg.head_dim, seed + 2000003u, layout)};
}

inline AttentionConfig make_config(index_t num_heads, index_t num_kv_heads, index_t head_dim) {
  AttentionConfig cfg;
  cfg.num_heads = num_heads;
  cfg.num_kv_heads = num_kv_heads;
  cfg.head_dim = head_dim;
  return cfg;
}

// An owned [tokens, heads] log-sum-exp, NaN-initialised so unwritten entries show.
// token_stride > heads leaves NaN gaps between tokens.
struct Lse {
  std::vector<float> storage;
  LseView view;

  Lse() = default;
  Lse(index_t tokens, index_t heads, index_t token_stride = -1) {
    if (token_stride < 0) token_stride = heads;
    storage.assign(static_cast<size_t>(std::max<index_t>(tokens * token_stride, 0) + 1), kNaN);
    view = {storage.data(), tokens, heads, token_stride, 1};
  }
  Lse(const Lse& o) : storage(o.storage), view(o.view) { view.data = storage.data(); }
  Lse& operator=(const Lse& o) {
    if (this != &o) {
      storage = o.storage;
      view = o.view;
      view.data = storage.data();
    }
    return *this;
  }
  Lse(Lse&& o) noexcept : storage(std::move(o.storage)), view(o.view) { view.data = storage.data(); }
  Lse& operator=(Lse&& o) noexcept {
    storage = std::move(o.storage);
    view = o.view;
    view.data = storage.data();
    return *this;
  }

  float operator()(index_t token, index_t head) const { return view(token, head); }
};

// max |a - e| / max(max |e|, tiny) over all elements: normwise relative error. Shapes must agree;
// a NaN anywhere in `actual` or a shape mismatch gives +inf, so any bound fails.
template <class TA, class TE>
double max_relative_error(const TensorView<TA>& actual, const TensorView<TE>& expected) {
  if (actual.tokens != expected.tokens || actual.heads != expected.heads || actual.head_dim != expected.head_dim)
    return std::numeric_limits<double>::infinity();
  double max_diff = 0, max_ref = 0;
  bool nan = false;
  for_each_index(expected, [&](index_t t, index_t h, index_t d) {
    const double a = double(actual(t, h, d)), e = double(expected(t, h, d));
    if (std::isnan(a) || std::isnan(e)) nan = true;
    max_diff = std::max(max_diff, std::abs(a - e));
    max_ref = std::max(max_ref, std::abs(e));
  });
  if (nan) return std::numeric_limits<double>::infinity();
  return max_diff / std::max(max_ref, 1e-30);
}
inline double max_relative_error(const Tensor& actual, const Tensor& expected) {
  return max_relative_error(actual.cview(), expected.cview());
}

// max |a - e| / max(1, |e|) over a [tokens, heads] log-sum-exp. Equal infinities count as exact;
// NaN, a shape mismatch or one side infinite gives +inf.
inline double max_lse_error(const LseView& actual, const LseView& expected) {
  if (actual.tokens != expected.tokens || actual.heads != expected.heads) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (index_t t = 0; t < expected.tokens; ++t)
    for (index_t h = 0; h < expected.heads; ++h) {
      const double a = actual(t, h), e = expected(t, h);
      if (std::isnan(a) || std::isnan(e)) return std::numeric_limits<double>::infinity();
      if (std::isinf(a) || std::isinf(e)) {
        if (a != e) return std::numeric_limits<double>::infinity();
        continue;
      }
      worst = std::max(worst, std::abs(a - e) / std::max(1.0, std::abs(e)));
    }
  return worst;
}
inline double max_lse_error(const Lse& actual, const Lse& expected) { return max_lse_error(actual.view, expected.view); }

// Mask predicates for reference_attention: (query position, key position) -> allowed.
struct AllKeys {
  bool operator()(index_t, index_t) const { return true; }
};
struct CausalKeys {
  bool operator()(index_t q, index_t k) const { return k <= q; }
};

// The oracle's O (contiguous) and log-sum-exp for the given inputs and predicate.
struct Result {
  Tensor out;
  Lse lse;
};

template <class Allowed, class TQ, class TK, class TV>
Result run_reference(const AttentionConfig& cfg, const TensorView<TQ>& q, const TensorView<TK>& k,
                     const TensorView<TV>& v, const Allowed& allowed, index_t query_offset = 0) {
  Result r{Tensor(q.tokens, cfg.num_heads, cfg.head_dim), Lse(q.tokens, cfg.num_heads)};
  reference_attention(cfg, q, k, v, r.out.view, r.lse.view, allowed, query_offset);
  return r;
}
template <class Allowed>
Result run_reference(const AttentionConfig& cfg, const Buffers& b, const Allowed& allowed, index_t query_offset = 0) {
  return run_reference(cfg, b.q.cview(), b.k.cview(), b.v.cview(), allowed, query_offset);
}

// Bitwise equality of two storages (NaN padding compares equal to itself).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Runs f; returns the message of the mmattn::Error it throws, or "<no exception>".
// Any other exception type propagates and fails the test.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no exception>";
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace mmattn::test
