// A SIGBUS guard for memory mapped from files other processes own (POSIX shared memory).
//
// Reading a page of a MAP_SHARED mapping past the end of its file raises SIGBUS, and SIGBUS kills the
// process. The owner of a shared-memory object may shrink it (ftruncate) at any moment, also while this
// process reads it. A guarded mapping turns that fault into a flag: the handler replaces the whole mapping
// with private zero pages (one mmap with MAP_FIXED), marks it faulted and returns, so the faulting read
// resumes and reads zeros. The caller checks the flag after the reads and fails only the work that used
// the mapping. Faults outside every guarded mapping go to the handler installed before (Python's
// faulthandler, say) or kill the process as they would have.
//
// The handler runs in signal context: it reads the table with atomic loads only and calls mmap(2), a plain
// system call on Linux. Slots are claimed with a compare-and-swap; a slot being claimed or released is
// skipped by the handler.
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "peregrine/kernels.hpp"

namespace peregrine {
namespace {

struct Slot {
  std::atomic<std::uintptr_t> start{0};  // 0: free
  std::atomic<std::uintptr_t> end{0};
  std::atomic<int> faulted{0};
};

Slot slots[kMappingGuardSlots];
std::atomic<int> high_water{0};  // slots at or above it have never been used
struct sigaction previous_action;
std::mutex install_mutex;
bool installed = false;

void forward(int sig, siginfo_t* info, void* context) {
  const struct sigaction& prev = previous_action;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
    prev.sa_handler(sig);
    return;
  }
  // The default action: restore it; the faulting instruction runs again and the fault kills the process.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, nullptr);
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
  const int n = high_water.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    const std::uintptr_t start = slots[i].start.load(std::memory_order_acquire);
    if (start == 0 || address < start) continue;
    const std::uintptr_t end = slots[i].end.load(std::memory_order_acquire);
    if (address >= end) continue;
    void* got = mmap(reinterpret_cast<void*>(start), end - start, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (got == reinterpret_cast<void*>(start)) {
      slots[i].faulted.store(1, std::memory_order_release);
      return;  // the read resumes on zero pages
    }
    break;
  }
  forward(sig, info, context);
}

bool install() {
  std::lock_guard<std::mutex> lock(install_mutex);
  if (installed) return true;
  struct sigaction action = {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGBUS, &action, &previous_action) != 0) return false;
  installed = true;
  return true;
}

}  // namespace

int guard_mapping(void* address, std::size_t length) {
  if (address == nullptr || length == 0 || !install()) return -1;
  const auto start = reinterpret_cast<std::uintptr_t>(address);
  constexpr std::uintptr_t kClaiming = ~std::uintptr_t{0};  // above every address: the handler skips it
  for (int i = 0; i < kMappingGuardSlots; ++i) {
    std::uintptr_t expected = 0;
    if (!slots[i].start.compare_exchange_strong(expected, kClaiming, std::memory_order_acq_rel)) continue;
    slots[i].end.store(start + length, std::memory_order_release);
    slots[i].faulted.store(0, std::memory_order_release);
    slots[i].start.store(start, std::memory_order_release);  // live from here
    int seen = high_water.load(std::memory_order_acquire);
    while (seen <= i && !high_water.compare_exchange_weak(seen, i + 1, std::memory_order_acq_rel)) {
    }
    return i;
  }
  return -1;
}

bool mapping_faulted(int slot) {
  if (slot < 0 || slot >= kMappingGuardSlots) return false;
  return slots[slot].faulted.load(std::memory_order_acquire) != 0;
}

void unguard_mapping(int slot) {
  if (slot < 0 || slot >= kMappingGuardSlots) return;
  slots[slot].start.store(0, std::memory_order_release);
  slots[slot].end.store(0, std::memory_order_release);
}

}  // namespace peregrine
