// The strategy comparison table: for each workload of workloads.hpp (the six, Gemma-3 local
// and a video), every strategy side by side in one run, and an SVG bar chart of the speedups.
//
//   ./build/bench/bench/comparison_table [--threads N] [--reps N] [--only SUBSTRING] [--quick] [out.svg]
//
// Per workload: operands, plans and the naive mask are built first; then one warm-up call of each
// strategy, which also measures its peak-RSS growth and checks its output against the double
// precision reference (mmattn::reference_attention) on a few query rows under the strategy's own
// mask; then rounds in which every strategy runs once, in an order rotated each round so slow
// drifts of a shared machine fall on all strategies alike. At least --reps rounds (default 5), more
// when a round is short (about 4 s of them, at most 50), and more again (up to 3x) until every
// strategy has --reps clean rounds: rounds in which the process's CPU time shows that its threads
// had the cores (see kCleanUtilisation). Latency is the median of the clean rounds (of all rounds,
// marked *, when fewer than 3 are clean); speedups are ratios of medians from this one run.
//
// Columns: exact? = the output matches the reference for the strategy's mask (largest error
// relative to the largest reference value); FLOP ratio = dense pairs / pairs the mask allows;
// plan eff. = allowed / computed pairs; workspace = planned scratch of all threads (naive: its
// score matrices and the shared mask); ΔRSS = peak resident memory growth during the warm-up call;
// GFLOP/s on allowed pairs (4 * head_dim FLOPs per pair and head); rounds = clean / all; spread =
// (slowest - fastest) / median over the rounds used.
//
// --quick shrinks every workload (8 x 8 images, an eighth of the text, 2 heads of 16; see
// bench::workloads) for a smoke run.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "workloads.hpp"

namespace {

using mmattn::index_t;
namespace bench = mmattn::bench;

// ---- arguments ------------------------------------------------------------------------------------

struct Args {
  int threads = 2;
  int reps = 5;
  bool quick = false;
  std::string only;
  std::string svg = "comparison.svg";
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "comparison_table: %s\nusage: comparison_table [--threads N] [--reps N] [--only SUBSTRING] "
               "[--quick] [out.svg]\n",
               why);
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage((s + " needs a value").c_str());
      return argv[++i];
    };
    if (s == "--threads") a.threads = std::atoi(value().c_str());
    else if (s == "--reps") a.reps = std::atoi(value().c_str());
    else if (s == "--only") a.only = value();
    else if (s == "--quick") a.quick = true;
    else if (s == "-h" || s == "--help") usage("help");
    else if (!s.empty() && s[0] == '-') usage(("unknown flag " + s).c_str());
    else a.svg = s;
  }
  if (a.threads < 1) usage("--threads must be >= 1");
  if (a.reps < 1) usage("--reps must be >= 1");
  return a;
}

// ---- the machine ----------------------------------------------------------------------------------

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
  }
  return "unknown CPU";
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string one, five, fifteen;
  f >> one >> five >> fifteen;
  return one.empty() ? "n/a" : one + " " + five + " " + fifteen;
}

// ---- formatting -----------------------------------------------------------------------------------

template <class... T>
std::string fmt(const char* f, T... v) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, v...);
  return buf;
}

std::string bytes_text(double b) {
  if (b >= 1024.0 * 1024.0) return fmt("%.1f MiB", b / (1024.0 * 1024.0));
  return fmt("%.0f KiB", b / 1024.0);
}

std::string ratio_text(double r) { return r >= 10 ? fmt("%.1fx", r) : fmt("%.2fx", r); }

// A markdown pipe table whose columns are also aligned as plain text.
std::string markdown_table(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right) {
  std::vector<size_t> w(right.size(), 3);
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) w[c] = std::max(w[c], r[c].size());
  auto cell = [&](const std::string& s, size_t c) {
    const std::string pad(w[c] - s.size(), ' ');
    return right[c] ? pad + s : s + pad;
  };
  std::string out;
  for (size_t i = 0; i < rows.size(); ++i) {
    out += "|";
    for (size_t c = 0; c < rows[i].size(); ++c) out += " " + cell(rows[i][c], c) + " |";
    out += "\n";
    if (i == 0) {
      out += "|";
      for (size_t c = 0; c < w.size(); ++c) out += right[c] ? " " + std::string(w[c] - 1, '-') + ": |" : " " + std::string(w[c], '-') + " |";
      out += "\n";
    }
  }
  return out;
}

// ---- exactness ------------------------------------------------------------------------------------

// A few query rows spread over the sequence: the first, the middle, the first text token, the last,
// and two seeded random ones.
std::vector<index_t> check_rows(const mmattn::SequenceLayout& layout) {
  const index_t n = layout.size();
  std::vector<index_t> rows = {0, n / 2, n - 1};
  for (const mmattn::Segment& s : layout.segments())
    if (s.is_text()) rows.push_back(s.start);
  std::mt19937 gen(7);
  for (int i = 0; i < 2; ++i) rows.push_back(std::uniform_int_distribution<index_t>(0, n - 1)(gen));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

// Largest |out - reference| / largest |reference| over `rows` (every head), the reference computed
// one row at a time in double under `policy`'s mask.
double max_relative_error(const bench::Operands& x, const mmattn::AttentionConfig& cfg,
                          const mmattn::SequenceLayout& layout, const mmattn::RegionPolicy& policy,
                          const std::vector<index_t>& rows) {
  const auto out = mmattn::view_thd<const float>(x.o.data(), x.tokens, x.heads, x.head_dim);
  return mmattn::sampled_relative_error(cfg, x.qv(), x.kv(), x.vv(), out, rows,
                                        mmattn::MaskPredicate{&layout, &policy});  // NaN-aware
}

// ---- one workload ---------------------------------------------------------------------------------

// A call's wall time and the CPU time all of the process's threads spent in it.
struct Sample {
  double wall = 0, cpu = 0;
};

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

Sample measure(const std::function<void()>& f) {
  const double cpu0 = process_cpu_seconds();
  const double wall = bench::time_seconds(f);
  return {wall, process_cpu_seconds() - cpu0};
}

// A round is clean for a strategy when its threads had the cores: CPU time >= 85% of wall time x
// threads (OpenMP threads waiting at a barrier spin first, so imbalance still counts as busy). When
// another process takes a core, our threads wait runnable and the ratio falls towards 1/2.
constexpr double kCleanUtilisation = 0.85;
constexpr int kExtraRoundsSeconds = 120;  // rounds beyond the minimum stop after this long

struct Row {
  bench::StrategyRun run;
  std::vector<Sample> samples;  // one per round
  double rss_delta_mib = -1;
  double error = 0;
  double warmup_s = 0;
  std::vector<double> used;  // wall times the statistics use: the clean rounds, or all of them

  int clean(int threads) const {
    int n = 0;
    for (const Sample& x : samples) n += x.cpu >= kCleanUtilisation * x.wall * threads ? 1 : 0;
    return n;
  }
  void select(int threads, bool clean_only) {
    used.clear();
    for (const Sample& x : samples)
      if (!clean_only || x.cpu >= kCleanUtilisation * x.wall * threads) used.push_back(x.wall);
  }
  double median_cpu_s() const {
    std::vector<double> cpu;
    for (const Sample& x : samples) cpu.push_back(x.cpu);
    return bench::median(cpu);
  }
  double median_s() const { return bench::median(used); }
  double min_s() const { return *std::min_element(used.begin(), used.end()); }
};

struct Result {
  const bench::Workload* workload = nullptr;
  std::vector<Row> rows;
  int rounds = 0;
  bool contended = false;  // some strategy had < 3 clean rounds: every strategy uses all rounds
  const Row* find(bench::Strategy s) const {
    for (const Row& r : rows)
      if (r.run.strategy == s) return &r;
    return nullptr;
  }
  // The strategy that plans the workload's own mask: structured, the vision encoder's windows,
  // Gemma-3's local band or the video's 3-D window.
  const Row* target() const {
    for (const Row& r : rows)
      if (bench::is_planned_target(r.run.strategy)) return &r;
    return nullptr;
  }
};

constexpr double kExactTolerance = 1e-4;

std::string describe(const bench::Workload& w, int threads) {
  index_t images = 0, videos = 0;
  std::string grid, video;  // of the last image and video
  for (const mmattn::Segment& s : w.layout.segments()) {
    if (s.is_image()) ++images, grid = std::to_string(s.rows) + "x" + std::to_string(s.cols);
    if (s.is_video())
      ++videos, video = std::to_string(s.frames) + "x" + std::to_string(s.rows) + "x" + std::to_string(s.cols);
  }
  std::vector<std::string> parts;
  if (images > 0) parts.push_back(std::to_string(images) + (images == 1 ? " image " : " images ") + grid);
  if (videos > 0) parts.push_back(std::to_string(videos) + (videos == 1 ? " video " : " videos ") + video);
  if (w.layout.text_tokens() > 0) parts.push_back(std::to_string(w.layout.text_tokens()) + " text");
  std::string text;
  for (const std::string& p : parts) text += (text.empty() ? "" : " + ") + p;
  return text + " = " + std::to_string(w.tokens()) + " tokens, " + std::to_string(w.heads) + " heads x " +
         std::to_string(w.head_dim) + ", " + std::to_string(threads) + " threads";
}

Result run_workload(const bench::Workload& w, const Args& args) {
  Result res;
  res.workload = &w;
  bench::Operands x(w.tokens(), w.heads, w.head_dim);
  const mmattn::AttentionConfig cfg = bench::workload_config(w);
  for (bench::Strategy s : w.strategies) res.rows.push_back({bench::make_strategy(s, w, args.threads, x), {}, -1, 0, 0, {}});

  const std::vector<index_t> rows = check_rows(w.layout);
  for (Row& r : res.rows) {  // warm-up: memory and exactness
    const bool rss = bench::reset_peak_rss();
    const double base = bench::current_rss_mib();
    std::fill(x.o.begin(), x.o.end(), std::nanf(""));  // a row the strategy fails to write shows
    r.warmup_s = bench::time_seconds(r.run.run);
    if (rss && base >= 0) r.rss_delta_mib = std::max(0.0, bench::peak_rss_mib() - base);
    r.error = max_relative_error(x, cfg, w.layout, r.run.policy, rows);
  }
  // Short workloads get more rounds (up to ~4 s of them, at most 50): a 20 ms call is easily hit by
  // one scheduler tick of another process, a 10 s call averages such ticks out by itself. Then
  // rounds go on (up to 3x as many, and only while the extra ones have taken < 2 minutes) until
  // every strategy has --reps clean rounds.
  double round_s = 0;
  for (const Row& r : res.rows) round_s += r.warmup_s;
  const int min_rounds =
      args.quick ? args.reps : std::max(args.reps, std::min(50, static_cast<int>(4.0 / std::max(round_s, 1e-3))));
  const int max_rounds = args.quick ? args.reps : 3 * min_rounds;
  auto enough_clean = [&] {
    for (const Row& r : res.rows)
      if (r.clean(args.threads) < args.reps) return false;
    return true;
  };
  const size_t n = res.rows.size();
  std::chrono::steady_clock::time_point extra_start;  // when the rounds beyond min_rounds began
  auto extra_time_left = [&] {                        // asked only once min_rounds are done
    const auto now = std::chrono::steady_clock::now();
    if (res.rounds == min_rounds) extra_start = now;
    return now - extra_start < std::chrono::seconds(kExtraRoundsSeconds);
  };
  for (res.rounds = 0;
       res.rounds < max_rounds && (res.rounds < min_rounds || (!enough_clean() && extra_time_left())); ++res.rounds)
    for (size_t i = 0; i < n; ++i) {
      Row& r = res.rows[(i + static_cast<size_t>(res.rounds)) % n];
      r.samples.push_back(measure(r.run.run));
    }
  // One rule for every strategy of the workload, so the ratios compare like with like.
  for (const Row& r : res.rows) res.contended = res.contended || (!args.quick && r.clean(args.threads) < 3);
  for (Row& r : res.rows) r.select(args.threads, /*clean_only=*/!args.quick && !res.contended);
  return res;
}

bool print_result(const Result& res, int threads) {
  const bench::Workload& w = *res.workload;
  const Row* dense = res.find(bench::Strategy::dense);
  const Row* causal = res.find(bench::Strategy::causal);
  const double dense_pairs = static_cast<double>(w.tokens()) * static_cast<double>(w.tokens());
  std::printf("### %s\n\n%s; %d rounds\n\n", w.name.c_str(), describe(w, threads).c_str(), res.rounds);

  std::vector<std::vector<std::string>> table = {{"strategy", "exact?", "median ms", "rounds", "spread", "vs dense", "vs causal",
                                                  "FLOP ratio", "plan eff.", "workspace", "ΔRSS", "GFLOP/s"}};
  bool all_exact = true;
  for (const Row& r : res.rows) {
    const double t = r.median_s();
    const auto [lo, hi] = std::minmax_element(r.used.begin(), r.used.end());
    const bool exact = r.error <= kExactTolerance && std::isfinite(r.error);
    all_exact = all_exact && exact;
    const double gflops = 4.0 * double(w.head_dim) * double(w.heads) * r.run.allowed_pairs / t * 1e-9;
    table.push_back({r.run.name, fmt("%s (%.0e)", exact ? "yes" : "NO", r.error), fmt("%.1f", 1e3 * t),
                     fmt("%d/%zu%s", r.clean(threads), r.samples.size(), res.contended ? "*" : ""),
                     fmt("%.0f%%", 100.0 * (*hi - *lo) / t), dense ? ratio_text(dense->median_s() / t) : "-",
                     causal ? ratio_text(causal->median_s() / t) : "-", ratio_text(dense_pairs / r.run.allowed_pairs),
                     fmt("%.2f", r.run.efficiency()), bytes_text(r.run.workspace_bytes),
                     r.rss_delta_mib >= 0 ? fmt("%.1f MiB", r.rss_delta_mib) : "n/a", fmt("%.1f", gflops)});
  }
  std::printf("%s\n",
              markdown_table(table, {false, false, true, true, true, true, true, true, true, true, true, true}).c_str());
  if (res.contended)
    std::printf("\\* fewer than 3 clean rounds for some strategy (another process held a core): medians are over "
                "all rounds.\n\n");

  // The bar: the planned strategy's speedup over dense reaches 80% of its FLOP ratio. The
  // shortfall splits exactly into plan efficiency x the speed per computed pair relative to dense.
  // Cross-checks: the same from the fastest round of each (noise only ever adds time), and from the
  // median CPU time of the process (the work done, whoever else held the cores).
  if (const Row* s = res.target(); s && dense) {
    const double flop_ratio = dense_pairs / s->run.allowed_pairs;
    const double share = dense->median_s() / s->median_s() / flop_ratio;
    const double share_min = dense->min_s() / s->min_s() / flop_ratio;
    const double share_cpu = dense->median_cpu_s() / s->median_cpu_s() / flop_ratio;
    std::printf("%s: speedup %s of FLOP ratio %s = %.1f%% (target >= 80%%: %s) = plan efficiency %.2f x speed per "
                "computed pair %.2f of dense's. Cross-checks: fastest rounds %.0f%%, CPU time %.0f%%\n\n",
                s->run.name.c_str(), ratio_text(dense->median_s() / s->median_s()).c_str(),
                ratio_text(flop_ratio).c_str(), 100.0 * share, share >= 0.8 ? "met" : "NOT met", s->run.efficiency(),
                share / s->run.efficiency(), 100.0 * share_min, 100.0 * share_cpu);
  }
  std::fflush(stdout);
  return all_exact;
}

// The done-when, one line per workload.
void print_summary(const std::vector<Result>& results) {
  std::vector<std::vector<std::string>> table = {{"workload", "planned strategy", "FLOP ratio", "speedup vs dense",
                                                  "share of FLOP ratio", ">= 80%?", "plan eff.", "pair speed vs dense"}};
  for (const Result& res : results) {
    const Row* s = res.target();
    const Row* dense = res.find(bench::Strategy::dense);
    if (!s || !dense) continue;
    const double ratio = double(res.workload->tokens()) * double(res.workload->tokens()) / s->run.allowed_pairs;
    const double speedup = dense->median_s() / s->median_s();
    table.push_back({res.workload->name + (res.contended ? " *" : ""), s->run.name, ratio_text(ratio),
                     ratio_text(speedup), fmt("%.1f%%", 100.0 * speedup / ratio), speedup >= 0.8 * ratio ? "yes" : "no",
                     fmt("%.2f", s->run.efficiency()), fmt("%.2f", speedup / ratio / s->run.efficiency())});
  }
  std::printf("### Summary: planned strategy's speedup vs its FLOP ratio\n\n%s\n",
              markdown_table(table, {false, false, true, true, true, false, true, true}).c_str());
}

// ---- the chart ------------------------------------------------------------------------------------

const char* strategy_color(bench::Strategy s) {
  switch (s) {
    case bench::Strategy::dense: return "#9e9e9e";
    case bench::Strategy::causal: return "#4e79a7";
    case bench::Strategy::window_global: return "#f28e2b";
    case bench::Strategy::structured: return "#59a14f";
    case bench::Strategy::qwen_window: return "#b07aa1";
    case bench::Strategy::gemma3_local: return "#76b7b2";
    case bench::Strategy::video_window3d: return "#edc948";
    case bench::Strategy::naive: return "#e15759";
  }
  return "#000000";
}

constexpr bench::Strategy kAllStrategies[] = {bench::Strategy::dense,          bench::Strategy::causal,
                                              bench::Strategy::window_global,  bench::Strategy::structured,
                                              bench::Strategy::qwen_window,    bench::Strategy::gemma3_local,
                                              bench::Strategy::video_window3d, bench::Strategy::naive};

// Why a workload has no bar for a baseline that other workloads of the chart have, so a gap in a
// group is never left to guessing. Each workload's planned strategy is its own model's mask, so the
// others' planned strategies are not missing from it.
std::string absence_reason(bench::Strategy s, const bench::Workload& w) {
  const auto has = [&](bench::Strategy x) {
    return std::find(w.strategies.begin(), w.strategies.end(), x) != w.strategies.end();
  };
  if (s == bench::Strategy::naive && !bench::naive_fits(w.tokens()))
    return fmt("its N x N float scores would exceed the %.0f MiB budget", bench::kNaiveScoreBudgetBytes / 1048576.0);
  if (s == bench::Strategy::causal && w.layout.text_tokens() == 0)
    return "a vision-encoder layer has no causal order";
  if (s == bench::Strategy::window_global && !has(bench::Strategy::structured))
    return "it varies structured's image window, so it runs only beside structured";
  return "not in the workload's strategy list (bench/workloads.hpp)";
}

// Grouped bars of the speedup over dense on a log2 axis. Bars rise from the axis floor, a power of
// two below the slowest strategy, so dense (1x) and a baseline slower than dense both get a bar
// whose top is read against the 1x line. The planned strategy's FLOP ratio (the speedup it would
// reach computing only allowed pairs as fast as dense) is a dashed tick over its bar; a value label
// that would touch the tick moves above it. Missing bars are explained under the chart.
bool write_svg(const std::string& path, const std::vector<Result>& results, const std::string& subtitle) {
  const double bar_w = 24, gap = 34, left = 70, top = 64, plot_h = 320, legend_w = 250;
  auto speedup = [](const Result& r, const Row& row) { return r.find(bench::Strategy::dense)->median_s() / row.median_s(); };
  auto flop_ratio = [](const Result& r, const Row& row) {
    return double(r.workload->tokens()) * double(r.workload->tokens()) / row.run.allowed_pairs;
  };

  double lo = 1.0, hi = 2.0;
  size_t bars = 0;
  auto shown = [&](bench::Strategy st) {
    for (const Result& r : results)
      if (r.find(bench::Strategy::dense) && r.find(st)) return true;
    return false;
  };
  std::vector<std::pair<std::string, std::string>> notes;  // (what is missing and why, workloads)
  auto note = [&](const std::string& what, const std::string& workload) {
    for (auto& [w, names] : notes)
      if (w == what) return void(names += ", " + workload);
    notes.emplace_back(what, workload);
  };
  for (const Result& r : results) {
    if (!r.find(bench::Strategy::dense)) {
      note("no bars: dense did not run, so there is nothing to divide by", r.workload->name);
      continue;
    }
    for (const Row& row : r.rows) lo = std::min(lo, speedup(r, row)), hi = std::max(hi, speedup(r, row)), ++bars;
    if (const Row* t = r.target()) hi = std::max(hi, flop_ratio(r, *t));
  }
  for (const Result& r : results)
    for (bench::Strategy s : {bench::Strategy::causal, bench::Strategy::window_global, bench::Strategy::naive})
      if (shown(s) && r.find(bench::Strategy::dense) && !r.find(s))
        note(fmt("no %s bar: ", bench::strategy_name(s)) + absence_reason(s, *r.workload), r.workload->name);
  bool contended = false;
  for (const Result& r : results) contended = contended || r.contended;
  if (contended) note("* fewer than 3 clean rounds (another process held a core): medians over all rounds", "");

  double lo2 = std::floor(std::log2(lo));
  if (std::log2(lo) - lo2 < 0.25) lo2 -= 1;  // the slowest bar stays a quarter octave tall
  const double hi2 = std::ceil(std::log2(hi));
  const double plot_w = double(bars) * bar_w + double(results.size()) * gap + gap;
  const double notes_y = top + plot_h + 44;
  const double width = left + plot_w + legend_w, height = notes_y + 14.0 * double(notes.size()) + 10;
  auto y = [&](double v) { return top + plot_h * (hi2 - std::log2(v)) / (hi2 - lo2); };

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Speedup over dense FlashAttention "
    << "per workload (ratio of median latencies; higher is faster)</text>\n<text x=\"" << left
    << "\" y=\"40\" fill=\"#555\">" << subtitle << "</text>\n<text x=\"14\" y=\"" << top + plot_h / 2
    << "\" transform=\"rotate(-90 14 " << top + plot_h / 2
    << ")\" text-anchor=\"middle\">speedup over dense (log scale)</text>\n";
  for (double e = lo2; e <= hi2; ++e) {
    const double v = std::exp2(e), yy = y(v);
    s << "<line x1=\"" << left << "\" x2=\"" << left + plot_w << "\" y1=\"" << yy << "\" y2=\"" << yy
      << "\" stroke=\"" << (e == 0 ? "#333" : "#ddd") << "\"/>\n<text x=\"" << left - 6 << "\" y=\"" << yy + 4
      << "\" text-anchor=\"end\">" << (v < 1 ? fmt("%gx", v) : fmt("%.0fx", v)) << "</text>\n";
  }
  double x = left + gap;
  for (const Result& r : results) {
    if (!r.find(bench::Strategy::dense)) continue;
    const double group_x = x;
    for (const Row& row : r.rows) {
      const double v = speedup(r, row), bar_top = std::min(y(v), top + plot_h - 2);  // >= 2 px tall
      const double mid = x + (bar_w - 3) / 2;
      double label_y = bar_top - 3;
      s << "<rect x=\"" << x << "\" y=\"" << bar_top << "\" width=\"" << bar_w - 3 << "\" height=\""
        << top + plot_h - bar_top << "\" fill=\"" << strategy_color(row.run.strategy) << "\"><title>" << row.run.name
        << ": " << ratio_text(v) << "</title></rect>\n";
      if (&row == r.target()) {
        const double ty = y(flop_ratio(r, row));
        if (std::abs(ty - bar_top) < 13) label_y = std::min(ty, bar_top) - 4;
        s << "<line x1=\"" << x - 3 << "\" x2=\"" << x + bar_w << "\" y1=\"" << ty << "\" y2=\"" << ty
          << "\" stroke=\"black\" stroke-width=\"2\" stroke-dasharray=\"4 2\"><title>FLOP ratio "
          << ratio_text(flop_ratio(r, row)) << "</title></line>\n";
      }
      s << "<text x=\"" << mid << "\" y=\"" << label_y << "\" text-anchor=\"middle\" font-size=\"9\">"
        << (v < 10 ? fmt("%.2f", v) : fmt("%.1f", v)) << "</text>\n";
      x += bar_w;
    }
    s << "<text x=\"" << (group_x + x - 3) / 2 << "\" y=\"" << top + plot_h + 18 << "\" text-anchor=\"middle\">"
      << r.workload->name << (r.contended ? " *" : "") << "</text>\n";
    x += gap;
  }
  for (size_t i = 0; i < notes.size(); ++i)
    s << "<text x=\"" << left << "\" y=\"" << notes_y + 14.0 * double(i) << "\" fill=\"#444\">"
      << (notes[i].second.empty() ? notes[i].first : notes[i].second + ": " + notes[i].first) << "</text>\n";

  double ly = top + 10;
  const double lx = left + plot_w + 20;
  for (bench::Strategy st : kAllStrategies) {
    if (!shown(st)) continue;
    s << "<rect x=\"" << lx << "\" y=\"" << ly - 9 << "\" width=\"12\" height=\"12\" fill=\"" << strategy_color(st)
      << "\"/>\n<text x=\"" << lx + 18 << "\" y=\"" << ly + 1 << "\">" << bench::strategy_name(st) << "</text>\n";
    ly += 18;
  }
  s << "<line x1=\"" << lx - 2 << "\" x2=\"" << lx + 14 << "\" y1=\"" << ly - 3 << "\" y2=\"" << ly - 3
    << "\" stroke=\"black\" stroke-width=\"2\" stroke-dasharray=\"4 2\"/>\n<text x=\"" << lx + 18 << "\" y=\"" << ly + 1
    << "\">FLOP ratio of the planned strategy</text>\n<text x=\"" << lx + 18 << "\" y=\"" << ly + 14
    << "\">(dense pairs / allowed pairs)</text>\n</svg>\n";
  return static_cast<bool>(std::ofstream(path) << s.str());
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  bench::set_threads(args.threads);
  const std::string machine = cpu_model() + ", " + std::to_string(std::thread::hardware_concurrency()) +
                              " hardware threads; " + std::to_string(args.threads) + " threads used";
  const std::string load_start = load_average();
  std::printf("machine: %s\nload average at start: %s\nrounds: each strategy once per round after 1 warm-up call, "
              "until >= %d clean rounds each (more rounds for short workloads)%s\n\n",
              machine.c_str(), load_start.c_str(), args.reps, args.quick ? "; --quick sizes" : "");
  std::fflush(stdout);

  const std::vector<bench::Workload> workloads = bench::workloads(args.quick);
  std::vector<Result> results;
  bool all_exact = true;
  try {
    for (const bench::Workload& w : workloads) {
      if (!args.only.empty() && w.name.find(args.only) == std::string::npos) continue;
      results.push_back(run_workload(w, args));
      all_exact = print_result(results.back(), args.threads) && all_exact;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "comparison_table: %s\n", e.what());
    return 1;
  }
  print_summary(results);
  const std::string load_end = load_average();
  std::printf("load average at end: %s\n", load_end.c_str());
  if (!write_svg(args.svg, results,
                 machine + ", median of >= " + std::to_string(args.reps) + " rounds; load average " + load_start +
                     " at start, " + load_end + " at end")) {
    std::fprintf(stderr, "comparison_table: cannot write %s\n", args.svg.c_str());
    return 1;
  }
  std::printf("chart: %s\n", args.svg.c_str());
  if (!all_exact) std::fprintf(stderr, "comparison_table: a strategy's output does not match the reference\n");
  return all_exact ? 0 : 1;
}
