#include "parallel.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "peregrine/kernels.hpp"

namespace peregrine {

int hardware_threads() {
  static const int count = std::max(1u, std::thread::hardware_concurrency());
  return count;
}

namespace detail {
namespace {

class Pool {
 public:
  // Returns false (and runs nothing) when another job holds the pool.
  bool run(std::int64_t n_tasks, int threads, TaskFn fn, void* context) {
    std::unique_lock<std::mutex> job_lock(job_mutex_, std::try_to_lock);
    if (!job_lock.owns_lock()) return false;
    const int helpers = threads - 1;
    start_workers(helpers);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = fn;
      context_ = context;
      n_tasks_ = n_tasks;
      next_.store(0, std::memory_order_relaxed);
      participants_ = helpers;
      remaining_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    drain(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return remaining_ == 0; });
    return true;
  }

 private:
  void drain(int worker) {
    for (;;) {
      const std::int64_t task = next_.fetch_add(1, std::memory_order_relaxed);
      if (task >= n_tasks_) return;
      fn_(context_, task, worker);
    }
  }

  void start_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
      workers_.back().detach();
    }
  }

  void loop(int id) {
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= participants_) continue;
      lock.unlock();
      drain(id + 1);
      lock.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  TaskFn fn_ = nullptr;
  void* context_ = nullptr;
  std::int64_t n_tasks_ = 0;
  std::atomic<std::int64_t> next_{0};
  int participants_ = 0;
  int remaining_ = 0;
  std::uint64_t generation_ = 0;
};

// The pool is never destroyed (its threads block forever at exit). After fork() the child starts a fresh
// pool: the parent's worker threads do not exist there and its mutexes may be held.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool& pool() {
  std::call_once(g_atfork_once, [] {
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  });
  Pool* current = g_pool.load();
  if (current == nullptr) {
    static std::mutex create_mutex;
    std::lock_guard<std::mutex> lock(create_mutex);
    current = g_pool.load();
    if (current == nullptr) {
      current = new Pool();
      g_pool.store(current);
    }
  }
  return *current;
}

}  // namespace

int resolve_threads(int requested, std::int64_t n_tasks) {
  std::int64_t threads = requested <= 0 ? hardware_threads() : requested;
  threads = std::min<std::int64_t>(threads, std::max<std::int64_t>(n_tasks, 1));
  return static_cast<int>(std::max<std::int64_t>(threads, 1));
}

void parallel_for(std::int64_t n_tasks, int threads, TaskFn fn, void* context) {
  if (n_tasks <= 0) return;
  threads = resolve_threads(threads, n_tasks);
  if (threads > 1 && pool().run(n_tasks, threads, fn, context)) return;
  for (std::int64_t task = 0; task < n_tasks; ++task) fn(context, task, 0);
}

}  // namespace detail
}  // namespace peregrine
