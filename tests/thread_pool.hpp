#pragma once
// A fixed set of std::thread workers, as a serving runtime has, for the executor tests and
// bench/serving: Executor::custom over it is how a runtime plugs its own pool in.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "mmattn/executor.hpp"

namespace mmattn::test {

// run(n, f) hands out f(0..n-1) by an atomic counter (as Executor::openmp's dynamic schedule
// does) and returns when all have returned, rethrowing the first exception.
class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  int size() const { return static_cast<int>(threads_.size()); }

  void run(index_t n, const std::function<void(index_t)>& f) {
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &f, n_ = n, next_ = 0, finished_ = 0, error_ = nullptr;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [&] { return finished_ == size(); });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  // concurrency <= 0: the worker count.
  Executor executor(int concurrency = 0) {
    return Executor::custom([this](index_t n, const Executor::Body& body) { run(n, body); },
                            concurrency > 0 ? concurrency : size());
  }

 private:
  void work() {
    std::uint64_t seen = 0;
    for (;;) {
      const std::function<void(index_t)>* job = nullptr;
      index_t n = 0;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_, job = job_, n = n_;
      }
      for (index_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) {
        try {
          (*job)(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mutex_);
          if (!error_) error_ = std::current_exception();
        }
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (++finished_ == size()) done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(index_t)>* job_ = nullptr;
  index_t n_ = 0;
  std::atomic<index_t> next_{0};
  int finished_ = 0;
  std::uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace mmattn::test
