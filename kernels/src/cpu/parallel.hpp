// A small persistent thread pool for the CPU kernels (internal to src/cpu).
#pragma once

#include <cstdint>

namespace peregrine::detail {

using TaskFn = void (*)(void* context, std::int64_t task, int worker);

// Runs fn(context, task, worker) for task in [0, n_tasks) on up to `threads` threads (<= 0: all cores),
// the calling thread included (worker ids are 0 .. threads-1, 0 being the caller). When the pool is busy
// with another caller's job (concurrent Python threads, nested calls) the tasks run on the calling thread.
void parallel_for(std::int64_t n_tasks, int threads, TaskFn fn, void* context);

// Number of threads parallel_for will use for this request (>= 1).
int resolve_threads(int requested, std::int64_t n_tasks);

template <class F>
void parallel_for(std::int64_t n_tasks, int threads, F& body) {
  parallel_for(
      n_tasks, threads,
      [](void* context, std::int64_t task, int worker) { (*static_cast<F*>(context))(task, worker); }, &body);
}

}  // namespace peregrine::detail
