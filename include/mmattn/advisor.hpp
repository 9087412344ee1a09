#pragma once
// The strategy advisor: given a layout, a head config and a memory budget, it recommends a
// strategy by the report's checklist, shows the plan statistics of every candidate, and, when
// given real Q/K/V, their measured time and error.
//
// The checklist, in order (each step can override the one before):
//   1. more than 512 image tokens   -> windowed   (images see a local 2-D window of themselves)
//   2. more than 2 images           -> structured (region split: an image sees only itself, text
//                                                  sees every image and earlier text)
//   3. KV cache over the budget     -> pooled p   (text sees images pooled p x p; the smallest p
//                                                  in options.pools whose cache fits)
// Otherwise: causal, the plain decoder mask. The approximations (pooled, sparse) are never picked
// for speed alone: their rows state the measured error next to the speed, and the choice is the
// user's. Exact candidates are checked against the reference on a few rows; approximate ones are
// measured against exact structured, the policy they approximate.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mmattn/approx/measure_error.hpp"
#include "mmattn/approx/pooled_cross.hpp"
#include "mmattn/approx/sparse_cross.hpp"
#include "mmattn/attention_config.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/flash_attention.hpp"
#include "mmattn/kernel/tile_traits.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/policy.hpp"
#include "mmattn/reference.hpp"

namespace mmattn {

struct AdvisorOptions {
  double memory_budget_bytes = 0;  // KV cache this sequence may take, per layer; <= 0: no limit
  index_t kv_element_bytes = 2;    // bytes of one cached K or V element (bf16/f16: 2, fp32: 4)
  Window2D window = Window2D::sliding(7, 7);  // the image window of `windowed` and `structured`
  std::vector<index_t> pools = {2, 4};        // pooled candidates
  approx::SparseCrossOptions sparse{};        // the sparse candidate
  TileSizes tiles{};
  int runs = 3;              // timed calls per candidate at most; the latency is their median ...
  double time_budget_s = 5;  // ... of as many as fit in this many seconds (at least one)
  index_t check_rows = 3;    // rows of each exact candidate checked against the reference
  Executor executor = Executor::default_executor();
};

// The candidates the advisor compares.
enum class AdvisorStrategy : unsigned char {
  dense,       // every pair (the global kernel)
  causal,      // every pair causal by position (the global kernel)
  windowed,    // images: a 2-D window of themselves; every other pair causal
  structured,  // images: own window; text: every image and earlier text
  pooled,      // structured, text sees images pooled p x p (exact only for p = 1)
  sparse,      // structured, text sees the top-k patch tiles of each image per head (approximate)
};

inline const char* name(AdvisorStrategy s) {
  switch (s) {
    case AdvisorStrategy::dense: return "dense";
    case AdvisorStrategy::causal: return "causal";
    case AdvisorStrategy::windowed: return "windowed";
    case AdvisorStrategy::structured: return "structured";
    case AdvisorStrategy::pooled: return "pooled";
    case AdvisorStrategy::sparse: return "sparse";
  }
  return "?";
}

// The checklist's thresholds.
inline constexpr index_t kAdvisorWindowAboveImageTokens = 512;
inline constexpr index_t kAdvisorSplitAboveImages = 2;

struct AdvisorRow {
  AdvisorStrategy strategy = AdvisorStrategy::dense;
  index_t pool = 0;   // pooled: p; 0 for the others
  std::string label;  // for people: the name with its parameter ("causal", "pooled p=2", "sparse top-1")
  bool exact = true;
  std::string what;               // the mask or approximation, in words
  double computed_pairs = 0;      // (query, key) pairs the kernels compute per head (sparse: mean)
  double dense_fraction = 0;      // computed_pairs / N^2
  double kv_bytes = 0;            // K and V a later decode step must keep for this sequence
  double scratch_bytes = 0;       // what one forward allocates beyond Q, K, V, O (all threads)
  bool fits_budget = true;
  // With Q/K/V only:
  bool measured = false;
  double latency_ms = 0;
  int timed_runs = 0;
  double speedup_vs_dense = 0, speedup_vs_structured = 0;
  double reference_error = -1;  // exact candidates: largest relative error against the reference, few rows
  approx::ErrorReport error;    // approximations (reference_error < 0): against exact structured
};

struct Advice {
  size_t recommended = 0;            // into rows
  std::vector<std::string> reasons;  // the checklist steps that led there
  std::vector<AdvisorRow> rows;
  std::string table;  // markdown: strategy | exact? | pairs | latency | speedups | memory | errors
  std::string report;  // the workload, the recommendation with its reasons, the table and a legend

  const AdvisorRow& recommendation() const { return rows[recommended]; }
  // The row of strategy s (pooled: of pool p), or null.
  const AdvisorRow* row(AdvisorStrategy s, index_t pool = 0) const {
    for (const AdvisorRow& r : rows)
      if (r.strategy == s && r.pool == pool) return &r;
    return nullptr;
  }
};

namespace detail {

template <class... Args>
std::string advisor_format(const char* f, Args... args) {
  char buf[160];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}

inline std::string advisor_bytes(double b) {
  if (b >= 1024.0 * 1024.0 * 1024.0) return advisor_format("%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
  if (b >= 1024.0 * 1024.0) return advisor_format("%.1f MiB", b / (1024.0 * 1024.0));
  return advisor_format("%.0f KiB", b / 1024.0);
}

inline std::string advisor_count(double n) {
  if (n >= 1e9) return advisor_format("%.2fG", n / 1e9);
  if (n >= 1e6) return advisor_format("%.2fM", n / 1e6);
  if (n >= 1e3) return advisor_format("%.1fk", n / 1e3);
  return advisor_format("%.0f", n);
}

inline std::string advisor_ms(double ms) {
  return ms >= 100 ? advisor_format("%.0f ms", ms) : ms >= 1 ? advisor_format("%.1f ms", ms) : advisor_format("%.3f ms", ms);
}

// A markdown pipe table whose columns also line up as plain text; `right` aligns numbers.
inline std::string advisor_markdown(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right) {
  std::vector<size_t> w(right.size(), 3);
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) w[c] = std::max(w[c], r[c].size());
  std::string out;
  for (size_t i = 0; i < rows.size(); ++i) {
    out += "|";
    for (size_t c = 0; c < rows[i].size(); ++c) {
      const std::string pad(w[c] - rows[i][c].size(), ' ');
      out += " " + (right[c] ? pad + rows[i][c] : rows[i][c] + pad) + " |";
    }
    out += "\n";
    if (i == 0) {
      out += "|";
      for (size_t c = 0; c < w.size(); ++c)
        out += right[c] ? " " + std::string(w[c] - 1, '-') + ": |" : " " + std::string(w[c], '-') + " |";
      out += "\n";
    }
  }
  return out;
}

// Median of up to `runs` timed calls that fit in `budget_s`, after one untimed warm-up when a
// call is short (the first one pays for page faults and per-thread workspaces).
template <class F>
double advisor_median_ms(F&& f, int runs, double budget_s, int& timed) {
  auto once = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<double> ms{once()};
  if (ms[0] < 500) ms[0] = once();
  double total = ms[0];
  while (static_cast<int>(ms.size()) < runs && (total + ms.back()) <= 1e3 * budget_s) {
    ms.push_back(once());
    total += ms.back();
  }
  timed = static_cast<int>(ms.size());
  std::sort(ms.begin(), ms.end());
  return ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
}

using ConstView = TensorView<const float>;

// One candidate ready to run: its row, its call, and how its accuracy is measured.
struct AdvisorCandidate {
  AdvisorRow row;
  RegionPolicy policy;  // exact candidates: the mask checked against the reference
  std::function<void(const ConstView&, const ConstView&, const ConstView&, const TensorView<float>&,
                     const LseView&)>
      forward;
  // Approximate candidates: error against the exact result (out, lse) on the same Q/K/V.
  std::function<approx::ErrorReport(const ConstView&, const ConstView&, const ConstView&, const ConstView&,
                                    const LseView&)>
      error;
  // Pairs computed on these Q/K (sparse: its selection depends on them); empty: the plan's.
  std::function<double(const ConstView&, const ConstView&)> pairs;
};

inline RegionPolicy advisor_windowed_policy(Window2D window) {
  RegionPolicy p = RegionPolicy::decoder_causal();
  p.set(Region::within(SegmentKind::image), window);
  return p;
}

inline std::vector<AdvisorCandidate> advisor_candidates(const SequenceLayout& layout, const AttentionConfig& cfg,
                                                        const AdvisorOptions& o) {
  const int threads = o.executor.concurrency();
  const double n = static_cast<double>(layout.size());
  const double kv_token_bytes = 2.0 * static_cast<double>(cfg.num_kv_heads * cfg.head_dim * o.kv_element_bytes);
  const PlanOptions plan_options{o.tiles};
  const Executor ex = o.executor;
  std::vector<AdvisorCandidate> out;
  auto finish = [&](AdvisorCandidate& c, double pairs, double scratch, double kv_tokens) {
    c.row.computed_pairs = pairs;
    c.row.dense_fraction = pairs / (n * n);
    c.row.scratch_bytes = scratch;
    c.row.kv_bytes = kv_tokens * kv_token_bytes;
    c.row.fits_budget = o.memory_budget_bytes <= 0 || c.row.kv_bytes <= o.memory_budget_bytes;
    out.push_back(std::move(c));
  };

  // dense and causal: the global kernel's plan (key spans straight across segments).
  for (const bool causal : {false, true}) {
    AdvisorCandidate c;
    c.row.strategy = causal ? AdvisorStrategy::causal : AdvisorStrategy::dense;
    c.row.label = name(c.row.strategy);
    c.row.what = causal ? "every pair causal by position" : "every pair";
    c.policy = causal ? RegionPolicy::decoder_causal() : RegionPolicy::dense();
    GlobalOptions g;
    g.causal = causal;
    auto plan = std::make_shared<const Plan>(plan_global(layout.size(), layout.size(), g, o.tiles));
    c.forward = [plan, cfg, ex](const ConstView& q, const ConstView& k, const ConstView& v,
                                const TensorView<float>& out_view, const LseView& lse) {
      validate_attention(cfg, q, k, v, out_view, lse);
      kernel::execute_plan(*plan, cfg, q, k, v, out_view, lse, ex);
    };
    const double pairs = static_cast<double>(plan_stats(*plan).computed_pairs());
    finish(c, pairs, double(threads * workspace_bytes_per_thread(*plan, cfg.head_dim)), n);
  }

  // windowed and structured: MultimodalAttention under the region policy.
  const RegionPolicy structured = RegionPolicy::structured(o.window);
  for (const bool split : {false, true}) {
    AdvisorCandidate c;
    c.row.strategy = split ? AdvisorStrategy::structured : AdvisorStrategy::windowed;
    c.row.label = name(c.row.strategy);
    c.row.what = split ? "image: own window; text: all images + causal text" : "image: own window; the rest causal";
    c.policy = split ? structured : advisor_windowed_policy(o.window);
    auto att = std::make_shared<const MultimodalAttention<float>>(cfg, layout, c.policy, plan_options, ex);
    c.forward = [att](const ConstView& q, const ConstView& k, const ConstView& v, const TensorView<float>& out_view,
                      const LseView& lse) { att->forward(q, k, v, out_view, lse); };
    const double pairs = static_cast<double>(att->stats().computed_pairs());
    finish(c, pairs, double(threads * workspace_bytes_per_thread(att->plan(), cfg.head_dim)), n);
  }

  // The approximations of structured.
  for (const index_t p : o.pools) {
    AdvisorCandidate c;
    c.row.strategy = AdvisorStrategy::pooled;
    c.row.pool = p;
    c.row.label = "pooled p=" + std::to_string(p);
    c.row.exact = p == 1;
    c.row.what = "structured; text sees images pooled " + std::to_string(p) + "x" + std::to_string(p);
    c.policy = structured;
    auto att = std::make_shared<const approx::PooledCrossAttention<float>>(cfg, layout, structured,
                                                                           approx::PooledCrossOptions{p, true},
                                                                           plan_options, ex);
    c.forward = [att](const ConstView& q, const ConstView& k, const ConstView& v, const TensorView<float>& out_view,
                      const LseView& lse) { att->forward(q, k, v, out_view, lse); };
    c.error = [att](const ConstView& q, const ConstView& k, const ConstView& v, const ConstView& exact,
                    const LseView& lse) { return approx::measure_error_against(*att, q, k, v, exact, lse); };
    const double kv_tokens = n - double(layout.image_tokens()) + double(att->pooled_images().size());
    finish(c, double(att->computed_pairs()), double(att->scratch_bytes(threads)), kv_tokens);
  }
  {
    AdvisorCandidate c;
    c.row.strategy = AdvisorStrategy::sparse;
    c.row.label = "sparse top-" + std::to_string(o.sparse.top_k);
    c.row.exact = false;
    c.row.what = "structured; per head, text sees the top-" + std::to_string(o.sparse.top_k) + " " +
                 std::to_string(o.sparse.tile_rows) + "x" + std::to_string(o.sparse.tile_cols) +
                 "-patch tiles of each image";
    c.policy = structured;
    auto att = std::make_shared<const approx::SparseCrossAttention<float>>(cfg, layout, structured, o.sparse,
                                                                           plan_options, ex);
    c.forward = [att](const ConstView& q, const ConstView& k, const ConstView& v, const TensorView<float>& out_view,
                      const LseView& lse) { att->forward(q, k, v, out_view, lse); };
    c.error = [att](const ConstView& q, const ConstView& k, const ConstView& v, const ConstView& exact,
                    const LseView& lse) { return approx::measure_error_against(*att, q, k, v, exact, lse); };
    const double scratch = double(threads * workspace_bytes_per_thread(att->exact_plan(), cfg.head_dim)) +
                           double(att->key_tiles().size()) * double(cfg.num_kv_heads * cfg.head_dim) * sizeof(float);
    c.pairs = [att](const ConstView& q, const ConstView& k) { return att->computed_pairs(att->select(q, k)); };
    finish(c, att->computed_pairs(att->nominal_selection()), scratch, n);
  }
  return out;
}

// The checklist (see the top of the file).
inline void advisor_checklist(const SequenceLayout& layout, const AdvisorOptions& o, Advice& a) {
  index_t images = 0;
  for (const Segment& s : layout.segments()) images += s.is_image() ? 1 : 0;
  auto recommend = [&](const AdvisorRow* r) { a.recommended = static_cast<size_t>(r - a.rows.data()); };
  recommend(a.row(AdvisorStrategy::causal));
  if (layout.image_tokens() > kAdvisorWindowAboveImageTokens) {
    recommend(a.row(AdvisorStrategy::windowed));
    a.reasons.push_back(advisor_format("%lld image tokens > %lld: window the image->image attention (windowed)",
                                       static_cast<long long>(layout.image_tokens()),
                                       static_cast<long long>(kAdvisorWindowAboveImageTokens)));
  }
  if (images > kAdvisorSplitAboveImages) {
    recommend(a.row(AdvisorStrategy::structured));
    a.reasons.push_back(advisor_format("%lld images > %lld: split by region, each image sees only itself (structured)",
                                       static_cast<long long>(images), static_cast<long long>(kAdvisorSplitAboveImages)));
  }
  if (a.reasons.empty())
    a.reasons.push_back(advisor_format("%lld image tokens in %lld image(s): the plain causal mask is cheap enough",
                                       static_cast<long long>(layout.image_tokens()), static_cast<long long>(images)));
  const AdvisorRow& exact = a.recommendation();
  if (!exact.fits_budget) {
    // The least compression that fits; when none fits, the most there is.
    const AdvisorRow* pick = nullptr;
    for (const AdvisorRow& r : a.rows) {
      if (r.strategy != AdvisorStrategy::pooled) continue;
      if (!pick || (r.fits_budget && (!pick->fits_budget || r.kv_bytes > pick->kv_bytes)) ||
          (!r.fits_budget && !pick->fits_budget && r.kv_bytes < pick->kv_bytes))
        pick = &r;
    }
    if (pick) {
      a.reasons.push_back("KV cache " + advisor_bytes(exact.kv_bytes) + " > budget " +
                          advisor_bytes(o.memory_budget_bytes) + ": compress image tokens for text (" + pick->label +
                          ": " + advisor_bytes(pick->kv_bytes) + (pick->fits_budget ? ")" : ", still over budget)"));
      recommend(pick);
    }
  }
}

inline std::string advisor_table(const Advice& a) {
  std::vector<std::vector<std::string>> t = {{"strategy", "exact?", "pairs/head", "of dense", "latency", "vs dense",
                                              "vs structured", "KV cache", "scratch", "rel. error", "text rows",
                                              "worst row", "exact mass left out"}};
  for (const AdvisorRow& r : a.rows) {
    std::vector<std::string> row = {r.label + (&r == &a.recommendation() ? " *" : ""), r.exact ? "yes" : "no",
                                    advisor_count(r.computed_pairs), advisor_format("%.1f%%", 100 * r.dense_fraction)};
    if (r.measured) {
      row.push_back(advisor_ms(r.latency_ms));
      row.push_back(advisor_format("%.2fx", r.speedup_vs_dense));
      row.push_back(advisor_format("%.2fx", r.speedup_vs_structured));
    } else {
      row.insert(row.end(), {"-", "-", "-"});
    }
    row.push_back(advisor_bytes(r.kv_bytes) + (r.fits_budget ? "" : " (over)"));
    row.push_back(advisor_bytes(r.scratch_bytes));
    if (!r.measured) {
      row.insert(row.end(), {"-", "-", "-", "-"});
    } else if (r.reference_error >= 0) {
      row.push_back(advisor_format("%.1e (ref)", r.reference_error));
      row.insert(row.end(), {"-", "-", "-"});
    } else {
      const approx::ErrorReport& e = r.error;
      row.push_back(advisor_format("%.2e", e.total_rel_l2));
      row.push_back(advisor_format("%.2e", e.text_rel_l2));
      row.push_back(advisor_format("%.2e @%lld", e.worst_row_rel_l2, static_cast<long long>(e.worst_row)));
      if (e.dropped_mass_max > 0 || e.approximated_mass_max == 0)
        row.push_back(advisor_format("dropped %.1f%% (max %.1f%%)", 100 * e.dropped_mass_mean, 100 * e.dropped_mass_max));
      else
        row.push_back(advisor_format("pooled %.1f%% (max %.1f%%)", 100 * e.approximated_mass_mean,
                                     100 * e.approximated_mass_max));
    }
    t.push_back(std::move(row));
  }
  return advisor_markdown(t, {false, false, true, true, true, true, true, true, true, true, true, true, false});
}

inline std::string advisor_report(const SequenceLayout& layout, const AttentionConfig& cfg, const AdvisorOptions& o,
                                  const Advice& a) {
  index_t images = 0;
  for (const Segment& s : layout.segments()) images += s.is_image() ? 1 : 0;
  std::string r = advisor_format("workload: %lld tokens (%lld image tokens in %lld images, %lld text), %lld heads "
                                 "(%lld KV) x %lld, %d threads\n",
                                 static_cast<long long>(layout.size()), static_cast<long long>(layout.image_tokens()),
                                 static_cast<long long>(images), static_cast<long long>(layout.text_tokens()),
                                 static_cast<long long>(cfg.num_heads), static_cast<long long>(cfg.num_kv_heads),
                                 static_cast<long long>(cfg.head_dim), o.executor.concurrency());
  r += "memory budget: " + (o.memory_budget_bytes > 0 ? advisor_bytes(o.memory_budget_bytes) : std::string("none")) +
       advisor_format(" (KV cache at %lld bytes per element)\n", static_cast<long long>(o.kv_element_bytes));
  r += "recommended: " + a.recommendation().label + "\n";
  for (const std::string& reason : a.reasons) r += "  - " + reason + "\n";
  r += "candidates:\n";
  for (const AdvisorRow& row : a.rows) r += "  " + row.label + ": " + row.what + "\n";
  r += "\n" + a.table + "\n";
  r += "* = recommended. pairs/head: (query, key) pairs the kernels compute per head (sparse: the mean over "
       "heads of its selection on these inputs, or of a nominal one without inputs). KV cache: K and V a decode step keeps for this sequence. scratch: what one call allocates beyond "
       "Q/K/V/O. Exact rows: rel. error = largest error against the double-precision reference on a few rows. "
       "Approximate rows: relative L2 error against exact structured over all rows / text rows, the worst row "
       "(position), and the exact softmax mass per text row and head that is dropped (sparse) or seen only through "
       "pooled averages (pooled), mean (max).\n";
  return r;
}

// Largest |out - reference| / largest |reference| over `rows` (every head), the reference one row
// at a time under `policy`, so a check never costs the full dense attention.
inline double advisor_reference_error(const SequenceLayout& layout, const RegionPolicy& policy,
                                      const AttentionConfig& cfg, const ConstView& q, const ConstView& k,
                                      const ConstView& v, const ConstView& out, const std::vector<index_t>& rows) {
  return sampled_relative_error(cfg, q, k, v, out, rows, MaskPredicate{&layout, &policy});  // NaN-aware
}

// The rows an exact candidate is checked on: the first image row, the first text row, the last
// row, then evenly spread ones, at most `count`.
inline std::vector<index_t> advisor_check_rows(const SequenceLayout& layout, index_t count) {
  std::vector<index_t> rows;
  auto add = [&](index_t r) {
    if (static_cast<index_t>(rows.size()) < count && std::find(rows.begin(), rows.end(), r) == rows.end())
      rows.push_back(r);
  };
  for (const Segment& s : layout.segments())
    if (s.is_image()) {
      add(s.start);
      break;
    }
  for (const Segment& s : layout.segments())
    if (!s.is_image()) {
      add(s.start);
      break;
    }
  add(layout.size() - 1);
  for (index_t i = 0; i < count; ++i) add((2 * i + 1) * layout.size() / (2 * count));
  return rows;
}

}  // namespace detail

// The recommendation and every candidate's plan statistics; no data needed.
inline Advice advise(const SequenceLayout& layout, const AttentionConfig& cfg, const AdvisorOptions& options = {}) {
  layout.validate();
  cfg.validate();
  Advice a;
  for (detail::AdvisorCandidate& c : detail::advisor_candidates(layout, cfg, options)) a.rows.push_back(std::move(c.row));
  detail::advisor_checklist(layout, options, a);
  a.table = detail::advisor_table(a);
  a.report = detail::advisor_report(layout, cfg, options, a);
  return a;
}

// advise(), and every candidate run on Q, K, V ([layout size, heads, head_dim], float): latency
// (median of options.runs), speedups over dense and structured, and its error.
inline Advice advise(const SequenceLayout& layout, const AttentionConfig& cfg, const AdvisorOptions& options,
                     const TensorView<const float>& q, const TensorView<const float>& k,
                     const TensorView<const float>& v) {
  layout.validate();
  cfg.validate();
  const index_t n = layout.size(), heads = cfg.num_heads, dim = cfg.head_dim;
  MMATTN_REQUIRE(q.tokens == n && k.tokens == n, "advisor: q and k must hold the layout's " + std::to_string(n) +
                                                     " tokens, got " + std::to_string(q.tokens) + " and " +
                                                     std::to_string(k.tokens));
  std::vector<float> exact(static_cast<size_t>(n * heads * dim)), exact_lse(static_cast<size_t>(n * heads));
  std::vector<float> out(exact.size());
  const TensorView<float> exact_view = view_thd(exact.data(), n, heads, dim), out_view = view_thd(out.data(), n, heads, dim);
  const LseView lse_view = view_lse(exact_lse.data(), n, heads);
  validate_attention(cfg, q, k, v, out_view, lse_view);
  std::vector<detail::AdvisorCandidate> candidates = detail::advisor_candidates(layout, cfg, options);

  // The exact result every approximation is measured against: structured, with its lse.
  for (detail::AdvisorCandidate& c : candidates)
    if (c.row.strategy == AdvisorStrategy::structured) c.forward(q, k, v, exact_view, lse_view);

  const std::vector<index_t> rows = detail::advisor_check_rows(layout, options.check_rows);
  for (detail::AdvisorCandidate& c : candidates) {
    c.row.latency_ms = detail::advisor_median_ms([&] { c.forward(q, k, v, out_view, {}); }, std::max(options.runs, 1),
                                                 options.time_budget_s, c.row.timed_runs);
    c.row.measured = true;
    if (c.pairs) {
      c.row.computed_pairs = c.pairs(q, k);
      c.row.dense_fraction = c.row.computed_pairs / (double(n) * double(n));
    }
    if (c.error) {
      c.row.error = c.error(q, k, v, exact_view, lse_view);
    } else {
      c.row.reference_error = detail::advisor_reference_error(layout, c.policy, cfg, q, k, v, out_view, rows);
    }
  }
  Advice a;
  for (detail::AdvisorCandidate& c : candidates) a.rows.push_back(std::move(c.row));
  const AdvisorRow* dense = a.row(AdvisorStrategy::dense);
  const AdvisorRow* split = a.row(AdvisorStrategy::structured);
  for (AdvisorRow& r : a.rows) {
    r.speedup_vs_dense = dense->latency_ms / r.latency_ms;
    r.speedup_vs_structured = split->latency_ms / r.latency_ms;
  }
  detail::advisor_checklist(layout, options, a);
  a.table = detail::advisor_table(a);
  a.report = detail::advisor_report(layout, cfg, options, a);
  return a;
}

}  // namespace mmattn
