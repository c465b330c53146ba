// simcalkv: how a policy spreads per-head work over threads. The host supplies the executor.
//
// Each task writes only its own head's outputs, so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <thread>
#include <vector>

namespace simcalkv {

/// Runs task(i) for i in [0, count), in any order, possibly concurrently; returns when all are
/// done. If tasks throw, the exception of the lowest index is rethrown (deterministic).
class Executor {
 public:
  virtual ~Executor() = default;
  virtual void parallel_for(std::size_t count, const std::function<void(std::size_t)>& task) const = 0;
  [[nodiscard]] virtual int concurrency() const noexcept = 0;
};

namespace detail {
/// Collects per-task exceptions and rethrows the one of the lowest task index.
class FirstError {
 public:
  explicit FirstError(std::size_t count) : errors_(count) {}
  void run(std::size_t i, const std::function<void(std::size_t)>& task) noexcept {
    try {
      task(i);
    } catch (...) {
      errors_[i] = std::current_exception();
    }
  }
  void rethrow() const {
    for (const auto& e : errors_)
      if (e) std::rethrow_exception(e);
  }

 private:
  std::vector<std::exception_ptr> errors_;
};
}  // namespace detail

/// The default: one task after another on the calling thread.
class SequentialExecutor final : public Executor {
 public:
  void parallel_for(std::size_t count, const std::function<void(std::size_t)>& task) const override {
    detail::FirstError errors(count);
    for (std::size_t i = 0; i < count; ++i) errors.run(i, task);
    errors.rethrow();
  }
  [[nodiscard]] int concurrency() const noexcept override { return 1; }
};

/// std::thread workers started per call, pulling task indices from a shared counter.
class ThreadExecutor final : public Executor {
 public:
  explicit ThreadExecutor(int threads = static_cast<int>(std::thread::hardware_concurrency()))
      : threads_(std::max(1, threads)) {}

  void parallel_for(std::size_t count, const std::function<void(std::size_t)>& task) const override {
    detail::FirstError errors(count);
    std::atomic<std::size_t> next{0};
    auto worker = [&] {
      for (std::size_t i; (i = next.fetch_add(1)) < count;) errors.run(i, task);
    };
    const auto helpers = std::min<std::size_t>(static_cast<std::size_t>(threads_), count);
    std::vector<std::jthread> pool;
    for (std::size_t t = 1; t < helpers; ++t) pool.emplace_back(worker);
    worker();
    pool.clear();  // joins
    errors.rethrow();
  }
  [[nodiscard]] int concurrency() const noexcept override { return threads_; }

 private:
  int threads_;
};

#if defined(_OPENMP)
/// OpenMP's thread team; available when the including translation unit is built with OpenMP.
class OpenMPExecutor final : public Executor {
 public:
  explicit OpenMPExecutor(int threads = 0) : threads_(threads) {}
  void parallel_for(std::size_t count, const std::function<void(std::size_t)>& task) const override {
    detail::FirstError errors(count);
    const auto n = static_cast<long long>(count);
    if (threads_ > 0) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
      for (long long i = 0; i < n; ++i) errors.run(static_cast<std::size_t>(i), task);
    } else {
#pragma omp parallel for schedule(dynamic, 1)
      for (long long i = 0; i < n; ++i) errors.run(static_cast<std::size_t>(i), task);
    }
    errors.rethrow();
  }
  [[nodiscard]] int concurrency() const noexcept override { return threads_; }

 private:
  int threads_;
};
#endif

inline const Executor& sequential_executor() {
  static const SequentialExecutor instance;
  return instance;
}

}  // namespace simcalkv
