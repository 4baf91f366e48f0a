// threads.hpp: the worker thread pool the example's engines split their work over (detail::parallel_for).
//
// detail::parallel_for(count, threads, f) runs f(task, thread) for every task on a pool of
// std::thread::hardware_concurrency() threads (the caller included; detail::default_threads()
// says how many) whose idle threads sleep rather than spin, which keeps the speed on a
// shared machine; no OpenMP is needed.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include <ptq/config.hpp>

namespace ptq_example {

using ptq::index;

namespace detail {

// Worker threads for the conv tasks. Between jobs a worker polls for the next one for a
// short while (yielding the CPU each time), then sleeps on a condition variable: the
// next layer's job usually comes within microseconds, and on a shared machine idle
// threads neither spin for long (as OpenMP's default policy does) nor steal the CPU from
// the threads doing the work. One job at a time; a second caller runs its job alone.
class worker_pool {
 public:
  static worker_pool& instance() {
    static worker_pool pool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) - 1);
    return pool;
  }
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // f(task, thread) for task in [0, count), thread in [0, threads); f must not throw.
  template <class F>
  void run(index count, int threads, const F& f) {
    threads = static_cast<int>(std::min<index>({index{threads}, index{this->threads()}, count}));
    std::unique_lock<std::mutex> busy(busy_, std::defer_lock);
    if (threads <= 1 || !busy.try_lock()) {
      for (index i = 0; i < count; ++i) f(i, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      call_ = [](const void* ctx, index i, int t) { (*static_cast<const F*>(ctx))(i, t); };
      ctx_ = &f;
      count_ = count;
      next_.store(0);
      wanted_ = threads;
      running_.store(static_cast<int>(workers_.size()));  // every worker acknowledges every job
      job_.store(job_.load() + 1, std::memory_order_release);
    }
    wake_.notify_all();
    for (index i; (i = next_.fetch_add(1)) < count;) f(i, 0);
    if (!poll([&] { return running_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(m_);
      done_.wait(lock, [&] { return running_.load(std::memory_order_acquire) == 0; });
    }
  }

  ~worker_pool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  explicit worker_pool(int workers) {
    for (int id = 1; id <= workers; ++id) workers_.emplace_back([this, id] { loop(id); });
  }

  // Polls `ready` for up to 200 microseconds, yielding between tries.
  template <class Ready>
  static bool poll(const Ready& ready) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    while (!ready()) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::yield();
    }
    return true;
  }

  void loop(int id) {
    std::uint64_t seen = 0;
    for (;;) {
      auto posted = [&] { return stop_.load() || job_.load(std::memory_order_acquire) != seen; };
      if (!poll(posted)) {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, posted);
      }
      if (stop_.load()) return;
      seen = job_.load(std::memory_order_acquire);
      if (id < wanted_)
        for (index i; (i = next_.fetch_add(1)) < count_;) call_(ctx_, i, id);
      if (running_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(m_);
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex busy_, m_;
  std::condition_variable wake_, done_;
  void (*call_)(const void*, index, int) = nullptr;  // the job, set before job_ is bumped
  const void* ctx_ = nullptr;
  index count_ = 0;
  int wanted_ = 0;
  std::atomic<index> next_{0};
  std::atomic<int> running_{0};
  std::atomic<std::uint64_t> job_{0};
  std::atomic<bool> stop_{false};
};

inline int default_threads() { return worker_pool::instance().threads(); }

// f(task, thread) for task in [0, count) on up to `threads` threads, thread in [0, threads).
// f must not throw.
template <class F>
void parallel_for(index count, int threads, const F& f) {
  if (count > 0) worker_pool::instance().run(count, threads, f);
}

}  // namespace detail

}  // namespace ptq_example
