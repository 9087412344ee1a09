#pragma once
// Workloads, strategies and timing shared by regions.cpp, strategies.cpp, comparison_table.cpp
// and thread_scaling.cpp. A strategy is one way to run attention over a workload's layout: the
// global kernel (dense or causal FlashAttention), MultimodalAttention under a region policy, or the
// naive baseline that materialises the N x N scores. Plans, masks and operands are built here,
// outside every timed call; what a strategy's run() does is exactly what a model would do per layer.
//
// Speedup counters. Every Google Benchmark here reports `speedup_vs_dense`: the dense strategy of
// the same layout is timed once per process with std::chrono (dense_seconds(): median of up to 3
// calls, at most ~3 s of calls, after one untimed warm-up call when a call is short) and cached
// by layout; the benchmark then exports the counter {dense seconds, kIsIterationInvariantRate},
// which Google Benchmark turns into dense_seconds * iterations / elapsed real time, i.e.
// dense_ms / this_ms with this benchmark's own timing. Both come from the same process, so the
// ratio holds on a noisy machine better than either absolute time.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench_util.hpp"
#include "mmattn/mmattn.hpp"

namespace mmattn::bench {

// The head shape of every strategy benchmark: a 7B-class decoder layer (LLaVA-1.5-7B, Qwen2-7B's
// 28 heads rounded to 32). The Qwen2.5-VL vision workload keeps it too, so rates compare directly.
inline constexpr index_t kHeads = 32;
inline constexpr index_t kHeadDim = 128;

// The naive baseline runs only where its per-thread score matrix (N x N floats) fits this.
inline constexpr double kNaiveScoreBudgetBytes = 64.0 * 1024 * 1024;

// ---- operands -------------------------------------------------------------------------------------

// Q, K, V, O as [tokens, heads, head_dim] (the runtime layout), seeded so that every strategy of a
// workload computes on the same data.
struct Operands {
  index_t tokens = 0, heads = 0, head_dim = 0;
  std::vector<float> q, k, v, o;

  Operands(index_t tokens_, index_t heads_, index_t head_dim_)
      : tokens(tokens_), heads(heads_), head_dim(head_dim_),
        q(random_floats(count(), 1)), k(random_floats(count(), 2)), v(random_floats(count(), 3)), o(count(), 0.0f) {}

  std::size_t count() const { return static_cast<std::size_t>(tokens * heads * head_dim); }
  double bytes() const { return 4.0 * sizeof(float) * static_cast<double>(count()); }
  TensorView<const float> qv() const { return view_thd<const float>(q.data(), tokens, heads, head_dim); }
  TensorView<const float> kv() const { return view_thd<const float>(k.data(), tokens, heads, head_dim); }
  TensorView<const float> vv() const { return view_thd<const float>(v.data(), tokens, heads, head_dim); }
  TensorView<float> ov() { return view_thd(o.data(), tokens, heads, head_dim); }
};

// One set of operands at a time, reused by consecutive benchmarks of the same size: filling the
// 32-image workload's 570 MB takes seconds, and benchmarks are registered workload by workload.
inline Operands& shared_operands(index_t tokens, index_t heads = kHeads, index_t head_dim = kHeadDim) {
  static std::unique_ptr<Operands> held;
  if (!held || held->tokens != tokens || held->heads != heads || held->head_dim != head_dim) {
    held.reset();  // free the old set before filling the new one
    held = std::make_unique<Operands>(tokens, heads, head_dim);
  }
  return *held;
}

// ---- timing ---------------------------------------------------------------------------------------

template <class F>
double time_seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Median seconds of a few calls of f: one untimed warm-up when a call is short (< 0.5 s), then up
// to `max_reps` timed calls while their total stays under `budget_s`.
template <class F>
double measure_seconds(F&& f, int max_reps = 3, double budget_s = 3.0) {
  std::vector<double> runs{time_seconds(f)};
  if (runs[0] < 0.5) runs[0] = time_seconds(f);  // the first call paid for page faults and workspaces
  double total = runs[0];
  while (static_cast<int>(runs.size()) < max_reps && total + runs.back() <= budget_s) {
    runs.push_back(time_seconds(f));
    total += runs.back();
  }
  return median(runs);
}

// One map for the process (a static inside the template below would be one per lambda type).
inline std::map<std::string, double>& seconds_cache() {
  static std::map<std::string, double> cache;
  return cache;
}

// Seconds of `key`'s reference call (the dense strategy of one layout), measured by `f` the first
// time it is asked for in this process and reused afterwards.
template <class F>
double cached_seconds(const std::string& key, F&& f) {
  std::map<std::string, double>& cache = seconds_cache();
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, measure_seconds(std::forward<F>(f))).first;
  return it->second;
}

// ---- strategies -----------------------------------------------------------------------------------

// gemma3_local and video_window3d plan the workload's own mask (its `target`): the Gemma-3 local
// band and the video's 3-D window are set per workload, so --quick can shrink the band with the text.
enum class Strategy : unsigned char {
  dense, causal, window_global, structured, qwen_window, gemma3_local, video_window3d, naive
};

inline const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::dense: return "dense";
    case Strategy::causal: return "causal";
    case Strategy::window_global: return "window+global";
    case Strategy::structured: return "structured";
    case Strategy::qwen_window: return "qwen_window8";
    case Strategy::gemma3_local: return "gemma3_local";
    case Strategy::video_window3d: return "video_window3d";
    case Strategy::naive: return "naive";
  }
  return "?";
}

// The strategies that plan the workload's model mask with MultimodalAttention: the ones whose
// speedup over dense the comparison table holds against the FLOP ratio.
inline bool is_planned_target(Strategy s) {
  return s == Strategy::structured || s == Strategy::qwen_window || s == Strategy::gemma3_local ||
         s == Strategy::video_window3d;
}

// The image window of the decoder strategies: 7 x 7 patches, NATTEN-style sliding.
inline Window2D decoder_window() { return Window2D::sliding(7, 7); }

// Windowed images inside a causal decoder: each image sees a 7 x 7 window of itself (both
// directions), every other pair is causal by position (earlier images, text -> images, text).
inline RegionPolicy window_global_policy(Window2D window = decoder_window()) {
  RegionPolicy p = RegionPolicy::decoder_causal();
  p.set(Region::within(SegmentKind::image), window);
  return p;
}

struct Workload {
  std::string name;
  SequenceLayout layout;
  RegionPolicy target;  // the model's mask: the one `naive` materialises and `structured` plans
  std::vector<Strategy> strategies;
  index_t heads = kHeads, head_dim = kHeadDim;

  index_t tokens() const { return layout.size(); }
};

// The mask a strategy computes.
inline RegionPolicy strategy_policy(Strategy s, const Workload& w) {
  switch (s) {
    case Strategy::dense: return RegionPolicy::dense();
    case Strategy::causal: return RegionPolicy::decoder_causal();
    case Strategy::window_global: return window_global_policy();
    case Strategy::structured: return RegionPolicy::structured(decoder_window());
    case Strategy::qwen_window: return RegionPolicy::qwen25vl_window(8);
    case Strategy::gemma3_local:
    case Strategy::video_window3d:
    case Strategy::naive: return w.target;
  }
  return w.target;
}

inline bool naive_fits(index_t tokens) {
  return static_cast<double>(tokens) * static_cast<double>(tokens) * sizeof(float) <= kNaiveScoreBudgetBytes;
}

// The six workloads of the issue: images of 16 x 16 patches then text (prefill of a decoder),
// LLaVA-1.5 (24 x 24 = 576 tokens per image) and one Qwen2.5-VL vision-encoder window layer; then
// a Gemma-3 local (sliding) layer and a video under a 3-D window, each against dense and causal.
// quick: the same shapes shrunk (8 x 8 patches, an eighth of the text and of Gemma-3's band, half
// the video's frames, 2 heads of 16) for a smoke run.
inline std::vector<Workload> workloads(bool quick = false) {
  const index_t g = quick ? 8 : 16, llava = quick ? 12 : 24, t = quick ? 8 : 1;
  const std::vector<Strategy> decoder = {Strategy::dense, Strategy::causal, Strategy::window_global,
                                         Strategy::structured, Strategy::naive};
  const RegionPolicy structured = RegionPolicy::structured(decoder_window());
  auto prompt = [&](std::string name, index_t images, index_t grid, index_t text) {
    return Workload{std::move(name), SequenceLayout::images_then_text(images, grid, grid, text / t), structured,
                    decoder};
  };
  std::vector<Workload> out = {
      prompt("1img_256+256", 1, g, 256),
      prompt("4img_1024+512", 4, g, 512),
      prompt("8img_2048+2048", 8, g, 2048),
      prompt("32img_8192+512", 32, g, 512),
      prompt("llava_2x576+512", 2, llava, 512),
      // Qwen2.5-VL's vision encoder at ~500 x 730 pixels: a 36 x 52 patch grid; its window layers
      // attend in 8 x 8 partitions (112 px windows of 14 px patches), the others are dense.
      Workload{"qwen25vl_vision", SequenceLayout().add_image(quick ? 9 : 36, quick ? 13 : 52),
               RegionPolicy::qwen25vl_window(8), {Strategy::dense, Strategy::qwen_window, Strategy::naive}},
      // Gemma-3's local layers (5 of every 6): a causal band of sliding_window = 1024 positions,
      // ORed with bidirectional attention inside each image (RegionPolicy::gemma3_local). Two
      // images then 2048 text tokens, so most text rows see a band and not the images.
      Workload{"gemma3_local", SequenceLayout::images_then_text(2, g, g, 2048 / t),
               RegionPolicy::gemma3_local(1024 / t),
               {Strategy::dense, Strategy::causal, Strategy::gemma3_local, Strategy::naive}},
      // A video language model's prompt: one video of 8 frames of 16 x 16 patches then text; the
      // video sees a 3 x 7 x 7 sliding window of itself (NATTEN na3d), every other pair is causal.
      Workload{"video", SequenceLayout().add_video(quick ? 4 : 8, g, g).add_text(256 / t),
               RegionPolicy::video_windows(Window3D::sliding(3, 7, 7)),
               {Strategy::dense, Strategy::causal, Strategy::video_window3d, Strategy::naive}},
  };
  for (Workload& w : out) {
    if (quick) w.heads = 2, w.head_dim = 16;
    if (!naive_fits(w.tokens())) w.strategies.erase(std::remove(w.strategies.begin(), w.strategies.end(), Strategy::naive),
                                                    w.strategies.end());
  }
  return out;
}

// ---- the naive baseline ---------------------------------------------------------------------------

// softmax(scale Q K^T + mask) V the way a framework without a fused kernel runs it: the mask is an
// additive (N, N) float tensor (0 or -inf) built once per sequence and shared by every layer, and
// each call allocates one (N, N) score matrix per thread, heads split over the threads.
class NaiveAttention {
 public:
  using RowMatrix = kernel::RowMatrix;

  NaiveAttention(const AttentionConfig& cfg, const SequenceLayout& layout, const RegionPolicy& policy, int threads)
      : cfg_(cfg), n_(layout.size()), threads_(std::max(threads, 1)), bias_(n_, n_) {
    for (index_t q = 0; q < n_; ++q)
      for (index_t k = 0; k < n_; ++k) bias_(q, k) = allowed(layout, policy, q, k) ? 0.0f : kernel::kNegInf;
  }

  // Score matrices of every thread plus the shared mask.
  index_t workspace_bytes() const {
    return static_cast<index_t>(sizeof(float)) * n_ * n_ * (static_cast<index_t>(threads_) + 1);
  }

  // q, k, v, out: [N, heads, head_dim] with unit dim stride (MHA: num_kv_heads == num_heads).
  void forward(const TensorView<const float>& q, const TensorView<const float>& k, const TensorView<const float>& v,
               const TensorView<float>& out) const {
    using Map = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
    using OutMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
    const index_t d = cfg_.head_dim;
    const float scale = cfg_.resolved_scale();
#pragma omp parallel num_threads(threads_)
    {
      RowMatrix s(n_, n_);  // (N, N): the buffer a fused kernel never needs
#pragma omp for schedule(static)
      for (index_t h = 0; h < cfg_.num_heads; ++h) {
        const Map qh(q.row(0, h), n_, d, Eigen::OuterStride<>(q.token_stride));  // (N, d)
        const Map kh(k.row(0, h), n_, d, Eigen::OuterStride<>(k.token_stride));  // (N, d)
        const Map vh(v.row(0, h), n_, d, Eigen::OuterStride<>(v.token_stride));  // (N, d)
        OutMap oh(out.row(0, h), n_, d, Eigen::OuterStride<>(out.token_stride));  // (N, d)
        s.noalias() = qh * kh.transpose();  // (N, N)
        s = s * scale + bias_;
        for (index_t i = 0; i < n_; ++i) {
          auto row = s.row(i).array();
          const float m = row.maxCoeff();
          if (m == kernel::kNegInf) {  // every key masked: zeros, as the kernels give
            row.setZero();
            continue;
          }
          row = (row - m).exp();
          row *= 1.0f / row.sum();
        }
        oh.noalias() = s * vh;  // (N, d)
      }
    }
  }

 private:
  AttentionConfig cfg_;
  index_t n_;
  int threads_;
  RowMatrix bias_;  // (N, N)
};

// ---- a strategy ready to run ----------------------------------------------------------------------

// One strategy bound to a workload and a set of operands: what it computes (its mask), what that
// costs in pairs and scratch, and run(), the per-layer call that is timed.
struct StrategyRun {
  Strategy strategy = Strategy::dense;
  std::string name;
  RegionPolicy policy;          // the mask it computes exactly
  double allowed_pairs = 0;     // pairs its mask allows
  double computed_pairs = 0;    // pairs it computes (blocks of its plan; N x N for naive)
  double workspace_bytes = 0;   // scratch of all threads (naive: score matrices + mask)
  std::function<void()> run;

  double efficiency() const { return computed_pairs > 0 ? allowed_pairs / computed_pairs : 1.0; }
};

inline AttentionConfig workload_config(const Workload& w) { return AttentionConfig{w.heads, w.heads, w.head_dim, {}}; }

// dense and causal run the global kernel (flash_attention: 128-key spans straight across segment
// borders, the strongest dense baseline); the region strategies run MultimodalAttention with a plan
// built here, once; naive builds its mask here, once.
inline StrategyRun make_strategy(Strategy s, const Workload& w, int threads, Operands& x) {
  StrategyRun r;
  r.strategy = s;
  r.name = strategy_name(s);
  r.policy = strategy_policy(s, w);
  const AttentionConfig cfg = workload_config(w);
  const Executor executor = Executor::openmp(threads);
  Operands* px = &x;
  auto plan_counts = [&](const Plan& plan) {
    const PlanStats st = plan_stats(plan, w.layout, r.policy);
    r.allowed_pairs = static_cast<double>(st.allowed_pairs());
    r.computed_pairs = static_cast<double>(st.computed_pairs());
    r.workspace_bytes = static_cast<double>(workspace_bytes_per_thread(plan, cfg.head_dim)) * threads;
  };
  switch (s) {
    case Strategy::dense:
    case Strategy::causal: {
      GlobalOptions options;
      options.causal = s == Strategy::causal;
      plan_counts(plan_global(w.tokens(), w.tokens(), options, DefaultTiles::sizes()));
      r.run = [cfg, options, executor, px] {
        flash_attention(cfg, px->qv(), px->kv(), px->vv(), px->ov(), {}, options, executor);
      };
      break;
    }
    case Strategy::naive: {
      auto naive = std::make_shared<NaiveAttention>(cfg, w.layout, r.policy, threads);
      const PlanStats st = plan_stats(make_plan(w.layout, r.policy), w.layout, r.policy);
      r.allowed_pairs = static_cast<double>(st.allowed_pairs());
      r.computed_pairs = static_cast<double>(w.tokens()) * static_cast<double>(w.tokens());
      r.workspace_bytes = static_cast<double>(naive->workspace_bytes());
      r.run = [naive, px] { naive->forward(px->qv(), px->kv(), px->vv(), px->ov()); };
      break;
    }
    default: {
      auto att = std::make_shared<MultimodalAttention<float>>(cfg, w.layout, r.policy,
                                                             PlanOptions{DefaultTiles::sizes()}, executor);
      plan_counts(att->plan());
      r.run = [att, px] { att->forward(px->qv(), px->kv(), px->vv(), px->ov()); };
      break;
    }
  }
  return r;
}

// ---- counters -------------------------------------------------------------------------------------

// The counters every region and strategy benchmark reports (see the top of this file for
// speedup_vs_dense). GFLOPs counts allowed pairs (useful work), GFLOPs_computed the pairs the
// kernels actually multiply; their ratio is `efficiency`.
inline void set_attention_counters(benchmark::State& state, const AttentionConfig& cfg, double allowed_pairs,
                                   double computed_pairs, double workspace_bytes, double dense_s) {
  const double heads = static_cast<double>(cfg.num_heads), dim = static_cast<double>(cfg.head_dim);
  set_gflops(state, 4.0 * dim * heads * allowed_pairs);
  set_gflops(state, 4.0 * dim * heads * computed_pairs, "GFLOPs_computed");
  state.counters["efficiency"] = benchmark::Counter(computed_pairs > 0 ? allowed_pairs / computed_pairs : 1.0);
  state.counters["workspace_bytes"] = benchmark::Counter(workspace_bytes, benchmark::Counter::kDefaults,
                                                         benchmark::Counter::kIs1024);
  state.counters["dense_ms"] = benchmark::Counter(1e3 * dense_s);
  state.counters["speedup_vs_dense"] = benchmark::Counter(dense_s, benchmark::Counter::kIsIterationInvariantRate);
}

inline void set_attention_counters(benchmark::State& state, const StrategyRun& r, const AttentionConfig& cfg,
                                   double dense_s) {
  set_attention_counters(state, cfg, r.allowed_pairs, r.computed_pairs, r.workspace_bytes, dense_s);
}

// Runs r.run() in the timed loop and sets every counter.
inline void run_strategy_benchmark(benchmark::State& state, const StrategyRun& r, const AttentionConfig& cfg,
                                   const Operands& x, double dense_s) {
  reset_peak_rss();
  for (auto _ : state) {
    r.run();
    benchmark::DoNotOptimize(x.o.data());
    benchmark::ClobberMemory();
  }
  set_attention_counters(state, r, cfg, dense_s);
  set_memory_counters(state, x.bytes());
}

}  // namespace mmattn::bench
