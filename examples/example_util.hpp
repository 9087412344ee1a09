#pragma once
// Small helpers the examples share: argument parsing, random inputs, timing, row checks.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <mmattn/mmattn.hpp>

namespace example {

// argv[i] as a number, or `fallback` when absent. "--smoke" anywhere asks for a tiny run.
inline bool smoke(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--smoke") == 0) return true;
  return false;
}
inline long arg(int argc, char** argv, int i, long fallback) {
  return i < argc && std::strcmp(argv[i], "--smoke") != 0 ? std::strtol(argv[i], nullptr, 10) : fallback;
}

inline std::vector<float> random_values(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Median wall time in milliseconds of `runs` calls.
template <class F>
double median_ms(int runs, F&& f) {
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Largest |out - reference| / max|reference| over the given query rows (all heads), with the
// reference computed one row at a time so a check never costs the full dense attention.
template <class Predicate>
double check_rows(const mmattn::AttentionConfig& cfg, mmattn::TensorView<const float> q,
                  mmattn::TensorView<const float> k, mmattn::TensorView<const float> v,
                  mmattn::TensorView<float> out, const std::vector<mmattn::index_t>& rows,
                  const Predicate& allowed) {
  return mmattn::sampled_relative_error(cfg, q, k, v, out, rows, allowed);  // NaN-aware
}

}  // namespace example
