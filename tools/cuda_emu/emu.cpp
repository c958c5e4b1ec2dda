// emu.cpp: runs CUDA threads as fibers on one host thread (see README.md).
//
// Every thread of a block is a fiber with its own stack. A fiber runs until it reaches a
// point where a GPU thread would wait for others (__syncthreads, a warp shuffle) or until the
// kernel returns; then the scheduler picks the next fiber. The blocks of a grid run one after
// another. Which fiber runs next is random (seeded), and in most blocks one warp at a time
// runs ahead to its next wait before any other warp moves: a kernel that forgot a
// __syncthreads then reads what the running-ahead warp has (or has not yet) written.
//
// Switching: a fiber is started once with makecontext/setcontext; after that every switch is
// _setjmp/_longjmp, which (unlike swapcontext) makes no system call.

#undef _FORTIFY_SOURCE  // glibc's checked longjmp refuses a jump to another stack

#include "emu.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
namespace {

constexpr int kMaxThreads = 1024;          // per block, as on every GPU since sm_20
constexpr size_t kStackBytes = 256 << 10;  // per fiber; only the pages touched are memory

enum class State { Ready, AtBarrier, AtShuffle, Done };

struct Fiber {
  jmp_buf resume_point;  // where the fiber continues (once started)
  ucontext_t start;      // its first start: fiber_main on a fresh stack
  bool started = false;
  State state = State::Done;
  dim3 tid;
};

struct Warp {
  std::vector<int> ready;  // fibers of this warp that can run
  int lanes = 0;           // threads in this warp (32, or fewer in a block's last warp)
  int at_shuffle = 0;      // lanes waiting in a shuffle
};

// The fibers live in one array that never moves: a ucontext_t holds pointers into itself.
Fiber* fibers = nullptr;
int n_fibers_with_stacks = 0;
int current = -1;            // the running fiber, -1 while the scheduler runs
jmp_buf scheduler_point;     // where a suspending fiber returns to
const std::function<void()>* thread_body = nullptr;  // the current grid's kernel call
const char* running_kernel = nullptr;
std::vector<Warp> warps;
uint64_t exchange[kMaxThreads];  // shuffle values, one slot per thread

std::mt19937_64 rng(1);
int blocks_per_sm = 2;
long errors = 0;
std::string last_error_message;
cudaError_t launch_error = cudaSuccess;
uint64_t block_serial = 0;                          // counts blocks run, from 1
std::unordered_map<void*, uint64_t> shared_filled;  // __shared__ array -> block it was filled for

void (*fault_hook)(const char*) = nullptr;

void on_memory_fault(int signal, siginfo_t* info, void*) {
  char what[160], where[160] = ", outside a kernel";
  if (signal == SIGILL) {  // the trap of -fsanitize=alignment (the only one compiled in)
    std::snprintf(what, sizeof what, "misaligned access (a pointer not aligned for its type)");
  } else {
    std::snprintf(what, sizeof what, "%s at %p (out of bounds or misaligned)",
                  signal == SIGBUS ? "bus error" : "memory fault", info->si_addr);
  }
  if (running_kernel != nullptr && current >= 0) {
    std::snprintf(where, sizeof where, " in %s, block (%u,%u,%u), thread (%u,%u,%u)",
                  running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
                  threadIdx.z);
  }
  const std::string text = std::string(what) + where;
  std::fprintf(stderr, "emu: %s\n", text.c_str());
  if (fault_hook != nullptr) fault_hook(text.c_str());
  std::fflush(nullptr);
  _exit(3);
}

std::map<std::string, long>& launch_counts() {  // registered at static init: a function static
  static std::map<std::string, long> counts;
  return counts;
}

// A fiber stack with an inaccessible page below it: an overflow faults instead of silently
// overwriting another fiber's stack.
void* new_stack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) {
    std::perror("emu: fiber stack");
    std::abort();
  }
  return static_cast<char*>(p) + page;
}

// The running fiber gives control back to the scheduler, in `state`; returns when resumed.
void suspend(State state) {
  Fiber& f = fibers[current];
  f.state = state;
  if (_setjmp(f.resume_point) == 0) _longjmp(scheduler_point, 1);
}

// Each fiber runs this forever: one call of the kernel per block it takes part in.
void fiber_main() {
  for (;;) {
    (*thread_body)();
    suspend(State::Done);
  }
}

void make_fibers(int n) {
  if (fibers == nullptr) fibers = new Fiber[kMaxThreads];
  for (; n_fibers_with_stacks < n; ++n_fibers_with_stacks) {
    Fiber& f = fibers[n_fibers_with_stacks];
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = new_stack();
    f.start.uc_stack.ss_size = kStackBytes;
    f.start.uc_link = nullptr;  // fiber_main never returns
    makecontext(&f.start, fiber_main, 0);
  }
}

// Runs fiber i until it suspends (noinline: the _setjmp frame must stay put while it runs).
__attribute__((noinline)) void resume(int i) {
  Fiber& f = fibers[i];
  current = i;
  threadIdx = f.tid;
  if (_setjmp(scheduler_point) == 0) {
    if (f.started) _longjmp(f.resume_point, 1);
    f.started = true;
    setcontext(&f.start);
  }
  current = -1;
}

void make_ready(int i) {
  fibers[i].state = State::Ready;
  warps[i / warpSize].ready.push_back(i);
}

void release_shuffle(Warp& w, int warp_index) {
  for (int lane = 0; lane < w.lanes; ++lane) {
    const int i = warp_index * warpSize + lane;
    if (fibers[i].state == State::AtShuffle) make_ready(i);
  }
  w.at_shuffle = 0;
}

// The next warp to take a fiber from: in run-ahead mode the first warp of `order` that has a
// ready fiber (it keeps running through its shuffles until it reaches __syncthreads or
// returns), else a random one. -1: no fiber can run.
int pick_warp(const std::vector<int>& order, bool run_ahead) {
  const size_t n = order.size(), first = run_ahead ? 0 : rng() % n;
  for (size_t k = 0; k < n; ++k) {
    const int w = order[(first + k) % n];
    if (!warps[w].ready.empty()) return w;
  }
  return -1;
}

void run_block(int n_threads) {
  ++block_serial;
  const int n_warps = (n_threads + warpSize - 1) / warpSize;
  warps.assign(n_warps, Warp{});
  for (int w = 0; w < n_warps; ++w) warps[w].lanes = std::min(warpSize, n_threads - w * warpSize);
  for (int i = 0; i < n_threads; ++i) make_ready(i);

  std::vector<int> order(n_warps);  // warp priority in run-ahead mode, redrawn at every barrier
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  const bool run_ahead = rng() % 4 != 0;  // else fibers of all warps interleave at random
  int done = 0;

  for (;;) {
    const int w = pick_warp(order, run_ahead);
    if (w >= 0) {
      std::vector<int>& ready = warps[w].ready;
      const size_t k = rng() % ready.size();
      const int i = ready[k];
      ready[k] = ready.back();
      ready.pop_back();
      resume(i);
      if (fibers[i].state == State::Done) ++done;
      if (fibers[i].state == State::AtShuffle && ++warps[w].at_shuffle == warps[w].lanes) {
        release_shuffle(warps[w], w);  // the whole warp is in the shuffle
      }
      continue;
    }
    // Nothing can run: the block is done, or every live thread waits.
    if (done == n_threads) return;
    bool stuck = false;
    for (int v = 0; v < n_warps; ++v) {
      if (warps[v].at_shuffle == 0) continue;
      error("block (%u,%u,%u) warp %d: %d of %d lanes wait in a shuffle, the others are at "
            "__syncthreads or have returned (a hang on a GPU)",
            blockIdx.x, blockIdx.y, blockIdx.z, v, warps[v].at_shuffle, warps[v].lanes);
      release_shuffle(warps[v], v);  // go on (reading stale values) to finish the block
      stuck = true;
    }
    if (stuck) continue;
    // Every live thread is at __syncthreads: pass the barrier. Threads that have returned do
    // not count, as on sm_70 and later.
    for (int i = 0; i < n_threads; ++i) {
      if (fibers[i].state == State::AtBarrier) make_ready(i);
    }
    std::shuffle(order.begin(), order.end(), rng);
  }
}

bool valid_config(const LaunchConfig& c) {
  const uint64_t threads = uint64_t{c.block.x} * c.block.y * c.block.z;
  return c.grid.x >= 1 && c.grid.y >= 1 && c.grid.z >= 1 && c.grid.x <= 0x7fffffffu &&
         c.grid.y <= 65535 && c.grid.z <= 65535 && threads >= 1 && threads <= kMaxThreads &&
         c.block.x <= 1024 && c.block.y <= 1024 && c.block.z <= 64;
}

}  // namespace

void error(const char* format, ...) {
  char text[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof text, format, args);
  va_end(args);
  ++errors;
  last_error_message = text;
  std::fprintf(stderr, "emu error: %s\n", text);
}

void catch_memory_faults(void (*on_fault)(const char* what)) {
  fault_hook = on_fault;
  // the handler runs on a stack of its own: a fiber that overflowed its stack has none left
  static std::vector<char> signal_stack(1 << 16);
  stack_t ss{};
  ss.ss_sp = signal_stack.data();
  ss.ss_size = signal_stack.size();
  sigaltstack(&ss, nullptr);
  struct sigaction action {};
  action.sa_sigaction = on_memory_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  for (const int signal : {SIGSEGV, SIGBUS, SIGILL}) sigaction(signal, &action, nullptr);
}

long error_count() { return errors; }
const char* last_error() { return last_error_message.c_str(); }
void seed(uint64_t s) { rng.seed(s); }
void set_occupancy(int blocks) { blocks_per_sm = blocks; }
int occupancy() { return blocks_per_sm; }

cudaError_t take_last_error() {
  const cudaError_t e = launch_error;
  launch_error = cudaSuccess;
  return e;
}
cudaError_t peek_last_error() { return launch_error; }

void barrier() {
  if (current < 0) return error("__syncthreads outside a kernel");
  suspend(State::AtBarrier);
}

int lane() { return current % warpSize; }

uint64_t warp_exchange(uint64_t bits, int src_lane, unsigned mask, int width) {
  if (current < 0) {
    error("warp shuffle outside a kernel");
    return bits;
  }
  const int warp = current / warpSize;
  if (mask != 0xffffffffu || width != warpSize || warps[warp].lanes != warpSize) {
    error("only full-warp shuffles are modelled (mask 0x%x, width %d, %d lanes)", mask, width,
          warps[warp].lanes);
  }
  exchange[current] = bits;
  suspend(State::AtShuffle);  // until every lane has put its value
  const uint64_t result = exchange[warp * warpSize + (src_lane & (warpSize - 1))];
  suspend(State::AtShuffle);  // until every lane has read: the slots are free again
  return result;
}

void shared_memory(void* array, size_t bytes) {
  uint64_t& filled_for = shared_filled[array];
  if (filled_for != block_serial) {
    std::memset(array, 0xff, bytes);
    filled_for = block_serial;
  }
}

void run_grid(const char* kernel, const LaunchConfig& config, const std::function<void()>& body) {
  if (current >= 0) return error("%s: a launch from inside a kernel is not modelled", kernel);
  if (!valid_config(config)) {
    launch_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (config.dynamic_shared_bytes != 0) {
    return error("%s: dynamic shared memory is not modelled", kernel);
  }
  ++launch_counts()[kernel];
  const dim3 grid = config.grid, block = config.block;
  const int n = static_cast<int>(block.x * block.y * block.z);
  make_fibers(n);
  thread_body = &body;
  running_kernel = kernel;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        for (int i = 0; i < n; ++i) {
          fibers[i].tid = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
        }
        run_block(n);
      }
    }
  }
  thread_body = nullptr;
  running_kernel = nullptr;
}

void register_kernel(const char* name) { launch_counts().emplace(name, 0); }

void report_launches() {
  for (const auto& [name, count] : launch_counts()) {
    std::printf("launched %ld %s\n", count, name.c_str());
  }
}

const char* kernel_name(const char* pretty_function) {
  // g++: "... [with auto Kernel = ns::{anonymous}::kernel<float, 4, 2>]",
  // clang: "... [Kernel = &ns::(anonymous namespace)::kernel<float, 4, 2>]"
  std::string s = pretty_function;
  const size_t at = s.find("Kernel = ");
  static std::deque<std::string> names;  // one per kernel instantiation, kept for good
  if (at == std::string::npos) return names.emplace_back(pretty_function).c_str();
  s = s.substr(at + 9);
  if (!s.empty() && s.back() == ']') s.pop_back();
  if (!s.empty() && s.front() == '&') s.erase(0, 1);
  const size_t scope = s.rfind("::", s.find('<'));
  if (scope != std::string::npos) s.erase(0, scope + 2);
  return names.emplace_back(s).c_str();
}

}  // namespace emu
