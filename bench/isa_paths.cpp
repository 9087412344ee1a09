// The prefill kernel on every instruction-set path this CPU runs, against the machine's own FMA
// peak and an Eigen GEMM measured in the same run:
//   fma_peak     independent FMA chains on every thread (the ceiling no kernel passes);
//   eigen_sgemm  Eigen's GEMM, 1024^3, on every thread (what a tuned general product reaches);
//   dense / structured forward on 4 images of 16 x 16 + 512 text, 32 heads x 128 (structured: 7 x 7
//   window, text causal), and 8 images of 32 x 32 + 512 text, 8 heads, per path.
// Rates count 4 * head_dim FLOPs per allowed (query, key) pair, so a structured row reads as the
// fraction of the peak it reaches on the work the mask leaves. Each figure is the median of --reps
// runs, the workloads taken in rotating order so drift hits all alike.
//
//   isa_paths [--reps N] [--threads T] [--quick]

#include <immintrin.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "mmattn/mmattn.hpp"

namespace {

using namespace mmattn;
using Clock = std::chrono::steady_clock;

double seconds(const std::function<void()>& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// 12 chains: 2 FMA ports x 4 cycles latency need 8 in flight; 12 leaves slack. Returns FLOPs done.
__attribute__((target("avx512f"))) double fma_chains_avx512(long iterations) {
  // Distinct starting values: equal chains would be merged into one by the compiler.
  __m512 a0 = _mm512_set1_ps(0.f), a1 = _mm512_set1_ps(1.f), a2 = _mm512_set1_ps(2.f), a3 = _mm512_set1_ps(3.f),
         a4 = _mm512_set1_ps(4.f), a5 = _mm512_set1_ps(5.f), a6 = _mm512_set1_ps(6.f), a7 = _mm512_set1_ps(7.f),
         a8 = _mm512_set1_ps(8.f), a9 = _mm512_set1_ps(9.f), a10 = _mm512_set1_ps(10.f), a11 = _mm512_set1_ps(11.f);
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < iterations; ++i) {
    a0 = _mm512_fmadd_ps(a0, x, y), a1 = _mm512_fmadd_ps(a1, x, y), a2 = _mm512_fmadd_ps(a2, x, y);
    a3 = _mm512_fmadd_ps(a3, x, y), a4 = _mm512_fmadd_ps(a4, x, y), a5 = _mm512_fmadd_ps(a5, x, y);
    a6 = _mm512_fmadd_ps(a6, x, y), a7 = _mm512_fmadd_ps(a7, x, y), a8 = _mm512_fmadd_ps(a8, x, y);
    a9 = _mm512_fmadd_ps(a9, x, y), a10 = _mm512_fmadd_ps(a10, x, y), a11 = _mm512_fmadd_ps(a11, x, y);
  }
  const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                 _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)),
                                               _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11))));
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  benchmark::DoNotOptimize(out[0]);
  return double(iterations) * 12 * 16 * 2;
}

__attribute__((target("avx2,fma"))) double fma_chains_avx2(long iterations) {
  __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f), a3 = _mm256_set1_ps(3.f),
         a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f), a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f),
         a8 = _mm256_set1_ps(8.f), a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iterations; ++i) {
    a0 = _mm256_fmadd_ps(a0, x, y), a1 = _mm256_fmadd_ps(a1, x, y), a2 = _mm256_fmadd_ps(a2, x, y);
    a3 = _mm256_fmadd_ps(a3, x, y), a4 = _mm256_fmadd_ps(a4, x, y), a5 = _mm256_fmadd_ps(a5, x, y);
    a6 = _mm256_fmadd_ps(a6, x, y), a7 = _mm256_fmadd_ps(a7, x, y), a8 = _mm256_fmadd_ps(a8, x, y);
    a9 = _mm256_fmadd_ps(a9, x, y), a10 = _mm256_fmadd_ps(a10, x, y), a11 = _mm256_fmadd_ps(a11, x, y);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                               _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  benchmark::DoNotOptimize(out[0]);
  return double(iterations) * 12 * 8 * 2;
}

// The best FMA path's rate on `threads` threads at once.
double fma_peak_gflops(int threads, long iterations) {
  const bool wide = isa_supported(Isa::kAvx512);
  std::vector<double> flops(static_cast<size_t>(threads));
  const double t = seconds([&] {
    Executor::openmp(threads).parallel_for(threads, [&](index_t i) {
      flops[static_cast<size_t>(i)] = wide ? fma_chains_avx512(iterations) : fma_chains_avx2(iterations);
    });
  });
  double total = 0;
  for (double f : flops) total += f;
  return total / t / 1e9;
}

struct Workload {
  std::string name;
  SequenceLayout layout;
  index_t heads;
};

struct Row {
  std::string name;
  std::function<void()> run;
  double flops;
  std::vector<double> times;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 7, threads = 2;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--threads" && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: isa_paths [--reps N] [--threads T] [--quick]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  const index_t dim = 128;
  std::vector<Workload> workloads(2);
  workloads[0].name = "4img16+512";
  for (int i = 0; i < 4; ++i) workloads[0].layout.add_image(16, 16);
  workloads[0].layout.add_text(512);
  workloads[0].heads = quick ? 2 : 32;
  workloads[1].name = "8img32+512";
  for (int i = 0; i < 8; ++i) workloads[1].layout.add_image(32, 32);
  workloads[1].layout.add_text(512);
  workloads[1].heads = quick ? 1 : 8;
  if (quick) workloads.pop_back();

  const Executor executor = Executor::openmp(threads);
  std::vector<Row> rows;
  std::vector<std::vector<float>> buffers;
  std::vector<std::unique_ptr<MultimodalAttention<float>>> kernels;
  for (const Workload& w : workloads) {
    const index_t n = w.layout.size(), h = w.heads;
    const AttentionConfig cfg{h, h, dim, {}};
    for (int b = 0; b < 4; ++b) {
      buffers.emplace_back(static_cast<size_t>(n * h * dim));
      bench::fill_random(buffers.back().data(), buffers.back().size(), 7u + static_cast<unsigned>(b));
    }
    float* q = buffers[buffers.size() - 4].data();
    float* k = buffers[buffers.size() - 3].data();
    float* v = buffers[buffers.size() - 2].data();
    float* o = buffers[buffers.size() - 1].data();
    for (const bool structured : {false, true}) {
      kernels.push_back(std::make_unique<MultimodalAttention<float>>(
          cfg, w.layout, structured ? RegionPolicy::structured(Window2D::sliding(7, 7)) : RegionPolicy::dense(),
          PlanOptions{}, executor));
      const MultimodalAttention<float>* mm = kernels.back().get();
      const double pairs = double(plan_stats(mm->plan()).allowed_pairs());
      for (Isa isa : kAllIsas) {
        if (!isa_supported(isa)) continue;
        rows.push_back({w.name + (structured ? " structured " : " dense ") + isa_name(isa), [=] {
                          set_isa(isa);
                          mm->forward(view_thd<const float>(q, n, h, dim), view_thd<const float>(k, n, h, dim),
                                      view_thd<const float>(v, n, h, dim), view_thd(o, n, h, dim));
                        },
                        4.0 * pairs * double(dim * h), {}});
      }
    }
  }
  const Eigen::Index g = quick ? 256 : 1024;
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(g, g), b = Eigen::MatrixXf::Random(g, g), c(g, g);
  Eigen::setNbThreads(threads);
  rows.push_back({"eigen_sgemm " + std::to_string(g) + "^3", [&] { c.noalias() = a * b; }, 2.0 * double(g * g * g), {}});
  const long fma_iterations = quick ? 2000000 : 50000000;
  std::vector<double> peaks;

  for (Row& r : rows) r.run();  // warm-up: plans, workspaces, page faults
  for (int rep = 0; rep < reps; ++rep) {
    peaks.push_back(fma_peak_gflops(threads, fma_iterations));
    for (size_t i = 0; i < rows.size(); ++i) {
      Row& r = rows[(i + static_cast<size_t>(rep)) % rows.size()];
      r.times.push_back(seconds(r.run));
    }
  }
  const double peak = median(peaks);
  std::printf("threads %d, best path %s, median of %d; FMA peak %.1f GFLOP/s\n", threads, isa_name(best_isa()), reps,
              peak);
  std::printf("%-36s %10s %10s %8s\n", "workload path", "median ms", "GFLOP/s", "of peak");
  for (const Row& r : rows) {
    const double t = median(r.times), rate = r.flops / t / 1e9;
    std::printf("%-36s %10.2f %10.1f %7.0f%%\n", r.name.c_str(), t * 1e3, rate, 100 * rate / peak);
  }
  set_isa(best_isa());
  return 0;
}
