#pragma once
// Where work items run: OpenMP when built with it, serial otherwise, or the runtime's own pool.

#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include "mmattn/config.hpp"

#if defined(MMATTN_HAS_OPENMP)
#include <omp.h>
#endif

namespace mmattn {

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

  // concurrency: how many items the pool runs at once (<= 0: the hardware's thread count). Only a
  // hint: split-KV cuts work into enough pieces to keep that many workers busy.
  static Executor custom(ParallelFor parallel_for, int concurrency = 0) {
    MMATTN_REQUIRE(static_cast<bool>(parallel_for), "executor: parallel_for is empty");
    return Executor(std::move(parallel_for), concurrency);
  }

  static Executor default_executor() { return openmp(); }

  void parallel_for(index_t n, const Body& body) const {
    if (n > 0) parallel_for_(n, body);
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
