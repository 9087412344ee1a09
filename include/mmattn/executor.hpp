#pragma once
// Where work items run: OpenMP when built with it, serial otherwise, or the runtime's own pool.
//
// The rule: a work item never starts a parallel region of its own. The executor is the only
// parallelism; each item runs on the thread the executor gave it. Eigen's products (the Eigen
// fallback path, the approximations) would break it: built with OpenMP, Eigen's GEMM starts a
// team of Eigen::nbThreads() threads whenever omp_get_num_threads() == 1, and on a worker of a
// runtime's std::thread pool it is 1 (that thread is in no OpenMP team), so every worker would
// start a team of its own: workers x teams threads on the cores. So each item runs under
// SerialItemScope, which sets the calling thread's own OpenMP ICVs for the item's duration and
// restores them: nthreads-var 1 (Eigen::nbThreads() follows it unless the program called
// Eigen::setNbThreads) and max-active-levels-var 0 (any parallel region the item would start,
// Eigen's after setNbThreads(n) included, runs with a team of one). Both are per-task ICVs in
// OpenMP 5 (libgomp, LLVM's libomp), so the program's global Eigen and OpenMP settings, and its
// other threads, are left as they were.

#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include "mmattn/config.hpp"

#if defined(MMATTN_HAS_OPENMP) || defined(_OPENMP)
#include <omp.h>
#endif

namespace mmattn {

// For the duration of one work item: no parallel region started on this thread has more than one
// thread (see the rule above). Without OpenMP, Eigen 3.4 has no threading to turn off.
class SerialItemScope {
 public:
#if defined(_OPENMP)
  SerialItemScope() : levels_(omp_get_max_active_levels()), threads_(omp_get_max_threads()) {
    omp_set_max_active_levels(0);
    omp_set_num_threads(1);
  }
  ~SerialItemScope() {
    omp_set_max_active_levels(levels_);
    omp_set_num_threads(threads_);
  }
#else
  SerialItemScope() {}  // user-provided, so a scope object is never "unused"
  ~SerialItemScope() {}
#endif
  SerialItemScope(const SerialItemScope&) = delete;
  SerialItemScope& operator=(const SerialItemScope&) = delete;

 private:
#if defined(_OPENMP)
  int levels_, threads_;
#endif
};

class Executor {
 public:
  using Body = std::function<void(index_t)>;
  // Must call body(i) exactly once for every i in [0, n) and return when all calls have returned.
  using ParallelFor = std::function<void(index_t n, const Body& body)>;

  static Executor serial() {
    return Executor(
        [](index_t n, const Body& body) {
          for (index_t i = 0; i < n; ++i) body(i);
        },
        /*concurrency=*/1);
  }

  // num_threads <= 0 means OpenMP's default. Without OpenMP this is serial().
  static Executor openmp([[maybe_unused]] int num_threads = 0) {
#if defined(MMATTN_HAS_OPENMP)
    return Executor([num_threads](index_t n, const Body& body) {
      const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
      std::exception_ptr error;
      std::mutex error_mutex;
      // Items arrive costliest first, so dynamic scheduling is longest-processing-time-first.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
      for (index_t i = 0; i < n; ++i) {
        try {
          body(i);
        } catch (...) {  // an exception must not cross the OpenMP region
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
        }
      }
      if (error) std::rethrow_exception(error);
    }, /*concurrency=*/num_threads, /*openmp_default=*/num_threads <= 0);
#else
    return serial();
#endif
  }

  // A runtime's own pool. parallel_for(n, body) must call body(i) once for every i in [0, n), from
  // any threads, and return when all have returned; an exception body throws must reach the caller
  // of parallel_for (rethrow the first one). mmattn wraps body in SerialItemScope, so the pool needs
  // no OpenMP setting of its own. concurrency: how many items the pool runs at once (<= 0: the
  // hardware's thread count). Only a hint: split-KV cuts work into enough pieces to keep that many
  // workers busy; it does not change how a tile is computed, so results are the same bits as
  // openmp()'s wherever both have the same concurrency.
  static Executor custom(ParallelFor parallel_for, int concurrency = 0) {
    MMATTN_REQUIRE(static_cast<bool>(parallel_for), "executor: parallel_for is empty");
    return Executor(std::move(parallel_for), concurrency);
  }

  static Executor default_executor() { return openmp(); }

  // body(i) for every i in [0, n), each under SerialItemScope.
  void parallel_for(index_t n, const Body& body) const {
    if (n <= 0) return;
    parallel_for_(n, [&body](index_t i) {
      const SerialItemScope serial;
      body(i);
    });
  }

  // Items that run at the same time, at least 1.
  int concurrency() const {
    if (concurrency_ > 0) return concurrency_;
#if defined(MMATTN_HAS_OPENMP)
    if (openmp_default_) return omp_get_max_threads();
#endif
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
  }

 private:
  Executor(ParallelFor f, int concurrency, bool openmp_default = false)
      : parallel_for_(std::move(f)), concurrency_(concurrency), openmp_default_(openmp_default) {}
  ParallelFor parallel_for_;
  int concurrency_ = 1;
  [[maybe_unused]] bool openmp_default_ = false;  // concurrency follows omp_get_max_threads() at call time
};

}  // namespace mmattn
