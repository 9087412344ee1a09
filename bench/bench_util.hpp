#pragma once
// Helpers shared by the benchmark programs: seeded random buffers, peak-memory readings, FLOP-rate
// counters and thread control. Everything here runs outside the timed loops.
//
// Conventions every bench file follows:
//  - a rate counter is named `GFLOPs` and reads in GFLOP/s (set_gflops), so tables compare at a glance;
//  - the thread count is part of the name (`/threads:2`) or a `threads` counter (set_threads);
//  - benchmarks that report memory call reset_peak_rss() before allocating, so an earlier
//    benchmark's N x N buffers do not leak into a later one's `peak_rss_MiB`.

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <ctime>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace mmattn::bench {

// ---- inputs ---------------------------------------------------------------------------------------

// Fills data[0, n) uniformly in [lo, hi) from `seed`: every run and every benchmark sees the same data,
// so two benchmarks over the same shape compare the same work (exp and denormal costs included).
inline void fill_random(float* data, std::size_t n, std::uint32_t seed = 42, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (std::size_t i = 0; i < n; ++i) data[i] = dist(gen);
}

inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed = 42, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> out(n);
  fill_random(out.data(), n, seed, lo, hi);
  return out;
}

// ---- memory ---------------------------------------------------------------------------------------

inline double to_mib(double bytes) { return bytes / (1024.0 * 1024.0); }

// A "Key:   123 kB" line of /proc/self/status, in MiB; -1 where there is no such file (not Linux).
inline double proc_status_mib(const char* key) {
  std::ifstream status("/proc/self/status");
  const std::size_t key_len = std::strlen(key);
  for (std::string line; std::getline(status, line);) {
    if (line.compare(0, key_len, key) != 0) continue;
    return std::stod(line.substr(key_len)) / 1024.0;  // the kernel reports kB
  }
  return -1.0;
}

// Peak resident set size since start or since the last reset_peak_rss(), in MiB.
inline double peak_rss_mib() { return proc_status_mib("VmHWM:"); }
inline double current_rss_mib() { return proc_status_mib("VmRSS:"); }

// Returns freed heap to the OS, then resets VmHWM to the current RSS (Linux >= 4.0: "5" into
// clear_refs). Without the trim, glibc keeps a previous benchmark's freed buffers resident and they
// would count as this one's peak. Returns false where the reset is not available.
inline bool reset_peak_rss() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f == nullptr) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

// Adds `peak_rss_MiB` (VmHWM), and `<what>_MiB` for the bytes the benchmark's own operands need,
// so a reader sees directly how much the kernel adds on top of its inputs and outputs.
inline void set_memory_counters(benchmark::State& state, double operand_bytes, const char* what = "qkvo") {
  state.counters["peak_rss_MiB"] = benchmark::Counter(peak_rss_mib());
  state.counters[std::string(what) + "_MiB"] = benchmark::Counter(to_mib(operand_bytes));
}

// ---- rates ----------------------------------------------------------------------------------------

// Counter `name` = flops_per_iteration per second of real time, in GFLOP/s. IterationInvariantRate
// multiplies by the iteration count and divides by the elapsed time, so the value does not depend
// on how many iterations Google Benchmark chose. Benchmarks that run OpenMP teams should also call
// state.SetIterationTime or ->UseRealTime(): CPU time of the main thread alone is meaningless there.
inline void set_gflops(benchmark::State& state, double flops_per_iteration, const char* name = "GFLOPs") {
  state.counters[name] = benchmark::Counter(flops_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// CPU time of the whole process (every thread), in seconds.
inline double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Counter `GFLOPs_cpu`: FLOPs per second of process CPU time, times `threads`. On a shared machine
// another process stretches our real time but not our CPU time, so this reads about what GFLOPs
// would be with the cores to ourselves; on a quiet machine it is close to GFLOPs. It reads low
// for code whose threads spin while they wait (Eigen's own multi-threaded GEMM does, between
// panels) and is trustworthy for one thread or for dynamically scheduled independent items (the
// tiled kernels). Take the CPU time around the timed loop only:
//   const double cpu0 = bench::process_cpu_seconds();
//   for (auto _ : state) { ... }
//   bench::set_cpu_gflops(state, flops, bench::process_cpu_seconds() - cpu0, threads);
inline void set_cpu_gflops(benchmark::State& state, double flops_per_iteration, double cpu_seconds, int threads) {
  const double flops = flops_per_iteration * static_cast<double>(state.iterations());
  state.counters["GFLOPs_cpu"] =
      benchmark::Counter(cpu_seconds > 0 ? 1e-9 * flops * static_cast<double>(threads) / cpu_seconds : 0.0);
}

// FLOPs of softmax attention over `pairs` allowed (query, key) pairs: QK^T and PV are each
// 2 * head_dim FLOPs per pair; softmax's exp and sums are not counted (the FlashAttention convention).
inline double attention_flops(std::int64_t heads, std::int64_t head_dim, double pairs) {
  return 4.0 * static_cast<double>(head_dim) * pairs * static_cast<double>(heads);
}
inline double dense_pairs(std::int64_t queries, std::int64_t keys) {
  return static_cast<double>(queries) * static_cast<double>(keys);
}
// Square causal: query i sees keys [0, i], N (N + 1) / 2 pairs in all.
inline double causal_pairs(std::int64_t n) { return static_cast<double>(n) * static_cast<double>(n + 1) / 2.0; }

// ---- threads --------------------------------------------------------------------------------------

// Sets OpenMP's default team size and Eigen's GEMM thread count to n (n <= 0: leave both as they
// are) and returns the count now in effect. Eigen parallelises one product only from outside any
// OpenMP team: inside a team (as in the tiled kernel) its products run on the calling thread.
inline int set_threads(int n) {
#if defined(_OPENMP)
  if (n > 0) omp_set_num_threads(n);
  if (n > 0) Eigen::setNbThreads(n);
  return omp_get_max_threads();
#else
  (void)n;
  return 1;
#endif
}

// set_threads(n) and a `threads` counter, so the count shows next to every result.
inline int set_threads(benchmark::State& state, int n) {
  const int threads = set_threads(n);
  state.counters["threads"] = benchmark::Counter(threads);
  return threads;
}

}  // namespace mmattn::bench
