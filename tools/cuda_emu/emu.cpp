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
//
// Warp-synchronous operations (shuffles, __syncwarp, mma, ldmatrix, WMMA) suspend each lane
// until the whole warp has arrived; the scheduler then checks that every lane waits at the same
// operation and, before letting them go on, runs the operation's `complete` once for the warp.
// Shared memory: __shared__ arrays (static, one per kernel) and the launch's dynamic shared
// memory, both NaN-filled per block; cp.async copies wait in per-thread queues.

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
// Shared memory per block, as on sm_90 (H100/H200): 48 KB without opting in, at most 227 KB
// with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n).
constexpr size_t kDefaultSharedBytes = 48 << 10;
constexpr size_t kMaxSharedOptIn = 227 << 10;
// The shared-window addresses that shared_address gives out: __shared__ arrays from
// kStaticWindow up, the dynamic shared memory at kDynamicWindow (never overlapping).
constexpr uint32_t kStaticWindow = 0x400, kDynamicWindow = 0x1000000;
constexpr size_t kDynamicAlignment = 128;

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
  int at_shuffle = 0;      // lanes waiting in a warp-synchronous operation
};

// What a lane waits at in a warp-synchronous operation (see warp_collective).
struct WarpPost {
  WarpOp op = WarpOp::Shuffle;
  const void* key = nullptr;
  void* args = nullptr;
  WarpOpComplete complete = nullptr;
};

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Shuffle: return "a shuffle";
    case WarpOp::SyncWarp: return "__syncwarp";
    case WarpOp::Mma: return "mma.sync";
    case WarpOp::LdMatrix: return "ldmatrix";
    case WarpOp::WmmaFill: return "wmma::fill_fragment";
    case WarpOp::WmmaLoad: return "wmma::load_matrix_sync";
    case WarpOp::WmmaMma: return "wmma::mma_sync";
    case WarpOp::WmmaStore: return "wmma::store_matrix_sync";
  }
  return "?";
}

// A cp.async copy that has not landed yet.
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
};
struct AsyncQueue {
  std::vector<AsyncCopy> open;                    // not committed yet
  std::deque<std::vector<AsyncCopy>> committed;  // oldest first
};

// A __shared__ array: where it is on the host and in the shared window.
struct SharedArray {
  char* host;
  size_t bytes;
  uint32_t window;
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
WarpPost posts[kMaxThreads];      // what each thread waits at in a warp operation
AsyncQueue async_queues[kMaxThreads];
int completing_warp = -1;         // the warp whose operation `complete` is running, else -1
char context_text[200];

std::mt19937_64 rng(1);
// cp.async landing: a generator of its own, so that kernels without cp.async see the same
// schedules as before it was modelled
std::mt19937_64 async_rng(1);
bool async_eager = false;  // this block's cp.async copies land at issue (else at the wait)
int blocks_per_sm = 2;
long errors = 0;
std::string last_error_message;
cudaError_t launch_error = cudaSuccess;
uint64_t block_serial = 0;                          // counts blocks run, from 1
std::unordered_map<void*, uint64_t> shared_filled;  // __shared__ array -> block it was filled for
std::vector<SharedArray> shared_arrays;             // every __shared__ array reached so far
uint32_t next_static_window = kStaticWindow;
size_t block_static_bytes = 0;                      // __shared__ bytes the running block reached
std::unordered_map<const void*, size_t> max_dynamic_shared;  // cudaFuncSetAttribute, per kernel

// The running launch's dynamic shared memory: `bytes` at `base`, inside a mapping with an
// inaccessible page on both sides; the bytes around it (guard) must keep 0xff.
struct DynamicShared {
  char* mapping = nullptr;
  size_t mapping_bytes = 0;
  char* inside = nullptr;  // the accessible bytes
  size_t inside_bytes = 0;
  char* base = nullptr;
  size_t bytes = 0;
} dyn;

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
  } else if (running_kernel != nullptr && completing_warp >= 0) {
    std::snprintf(where, sizeof where, " in %s, block (%u,%u,%u), warp %d (a warp operation)",
                  running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, completing_warp);
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

// Lets the lanes of a warp that wait in a warp operation go on. complete: every lane is there;
// check that they wait at the same operation and run its `complete` once, for all of them.
void release_shuffle(Warp& w, int warp_index, bool complete) {
  const int first = warp_index * warpSize;
  if (complete) {
    const WarpPost& p = posts[first];
    bool same = true;
    for (int lane = 1; lane < w.lanes; ++lane) {
      const WarpPost& q = posts[first + lane];
      same &= q.op == p.op && (p.op == WarpOp::Shuffle || p.op == WarpOp::SyncWarp ||
                               (q.key == p.key && q.complete == p.complete));
      if (!same) {
        error("%s block (%u,%u,%u) warp %d: lane 0 waits at %s, lane %d at %s (a different "
              "warp-synchronous operation: undefined on a GPU)",
              running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, warp_index, op_name(p.op), lane,
              op_name(q.op));
        break;
      }
    }
    if (same && p.complete != nullptr) {
      void* args[warpSize];
      for (int lane = 0; lane < w.lanes; ++lane) args[lane] = posts[first + lane].args;
      completing_warp = warp_index;
      p.complete(args);
      completing_warp = -1;
    }
  }
  for (int lane = 0; lane < w.lanes; ++lane) {
    const int i = first + lane;
    if (fibers[i].state == State::AtShuffle) make_ready(i);
  }
  w.at_shuffle = 0;
}

// The first thread of warp w that waits in a warp operation.
int first_waiting(int w) {
  for (int lane = 0; lane < warps[w].lanes; ++lane) {
    if (fibers[w * warpSize + lane].state == State::AtShuffle) return w * warpSize + lane;
  }
  return w * warpSize;
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
  block_static_bytes = 0;
  for (int i = 0; i < n_threads; ++i) async_queues[i] = AsyncQueue{};
  async_eager = async_rng() % 2 == 0;
  if (dyn.mapping != nullptr) std::memset(dyn.base, 0xff, dyn.bytes);
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
        release_shuffle(warps[w], w, true);  // the whole warp is in the operation
      }
      continue;
    }
    // Nothing can run: the block is done, or every live thread waits.
    if (done == n_threads) return;
    bool stuck = false;
    for (int v = 0; v < n_warps; ++v) {
      if (warps[v].at_shuffle == 0) continue;
      error("%s block (%u,%u,%u) warp %d: %d of %d lanes wait in %s, the others are at "
            "__syncthreads or have returned (a hang on a GPU)",
            running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, v, warps[v].at_shuffle,
            warps[v].lanes, op_name(posts[first_waiting(v)].op));
      release_shuffle(warps[v], v, false);  // go on (results not computed) to finish the block
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

// Maps the dynamic shared memory of a launch (see DynamicShared): the data ends at the upper
// inaccessible page, or less than kDynamicAlignment bytes below it; at least 256 guard bytes
// below it.
void map_dynamic_shared(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t span = (bytes + kDynamicAlignment - 1) / kDynamicAlignment * kDynamicAlignment;
  dyn.inside_bytes = (span + 256 + page - 1) / page * page;
  dyn.mapping_bytes = dyn.inside_bytes + 2 * page;
  void* m = mmap(nullptr, dyn.mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  dyn.mapping = static_cast<char*>(m);
  if (m == MAP_FAILED || mprotect(dyn.mapping, page, PROT_NONE) != 0 ||
      mprotect(dyn.mapping + page + dyn.inside_bytes, page, PROT_NONE) != 0) {
    std::perror("emu: dynamic shared memory");
    std::abort();
  }
  dyn.inside = dyn.mapping + page;
  dyn.base = dyn.inside + dyn.inside_bytes - span;
  dyn.bytes = bytes;
  std::memset(dyn.inside, 0xff, dyn.inside_bytes);
}

void unmap_dynamic_shared() {
  if (dyn.mapping != nullptr) munmap(dyn.mapping, dyn.mapping_bytes);
  dyn = DynamicShared{};
}

// After a block: the guard bytes around the dynamic shared memory are intact.
void check_dynamic_guards(const char* kernel) {
  if (dyn.mapping == nullptr) return;
  const char* end = dyn.base + dyn.bytes;
  for (const char* p = dyn.inside; p < dyn.inside + dyn.inside_bytes; ++p) {
    if (p == dyn.base) p = end;
    if (p < dyn.inside + dyn.inside_bytes && *p != '\xff') {
      const long offset = static_cast<long>(p - dyn.base);
      error("%s block (%u,%u,%u): a write outside the dynamic shared memory (%zu bytes), at "
            "byte offset %ld", kernel, blockIdx.x, blockIdx.y, blockIdx.z, dyn.bytes, offset);
      std::memset(dyn.inside, 0xff, dyn.inside_bytes);
      return;
    }
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
void seed(uint64_t s) {
  rng.seed(s);
  async_rng.seed(s ^ 0x9e3779b97f4a7c15ull);
}
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
  posts[current] = WarpPost{};  // a shuffle
  suspend(State::AtShuffle);  // until every lane has put its value
  const uint64_t result = exchange[warp * warpSize + (src_lane & (warpSize - 1))];
  suspend(State::AtShuffle);  // until every lane has read: the slots are free again
  return result;
}

void warp_collective(WarpOp op, const void* key, void* args, WarpOpComplete complete) {
  if (current < 0) return error("%s outside a kernel", op_name(op));
  const int warp = current / warpSize;
  if (warps[warp].lanes != warpSize) {
    error("%s in a warp of %d threads: only full warps are modelled", op_name(op),
          warps[warp].lanes);
  }
  posts[current] = WarpPost{op, key, args, complete};
  suspend(State::AtShuffle);  // until every lane is here; then `complete` has run
}

const char* collective_context() {
  std::snprintf(context_text, sizeof context_text, "%s block (%u,%u,%u) warp %d",
                running_kernel ? running_kernel : "?", blockIdx.x, blockIdx.y, blockIdx.z,
                completing_warp >= 0 ? completing_warp : current / warpSize);
  return context_text;
}

void shared_memory(void* array, size_t bytes) {
  uint64_t& filled_for = shared_filled[array];
  if (filled_for == 0) {  // the first time ever: give it a place in the shared window
    shared_arrays.push_back(SharedArray{static_cast<char*>(array), bytes, next_static_window});
    next_static_window += static_cast<uint32_t>((bytes + 127) / 128 * 128);
  }
  if (filled_for != block_serial) {
    std::memset(array, 0xff, bytes);
    filled_for = block_serial;
    block_static_bytes += bytes;
    if (block_static_bytes > kDefaultSharedBytes ||
        block_static_bytes + dyn.bytes > kMaxSharedOptIn) {
      error("%s: %zu bytes of __shared__ arrays and %zu of dynamic shared memory: more than a "
            "block can have", running_kernel, block_static_bytes, dyn.bytes);
    }
  }
}

void* dynamic_shared_memory(size_t alignment) {
  if (current < 0) {
    error("dynamic shared memory outside a kernel");
    return nullptr;
  }
  if (alignment > kDynamicAlignment) {
    error("%s: extern __shared__ aligned to %zu bytes; the emulator gives %zu", running_kernel,
          alignment, kDynamicAlignment);
  }
  return dyn.base;
}

uint32_t shared_address(const void* generic) {
  const char* p = static_cast<const char*>(generic);
  if (dyn.mapping != nullptr && p >= dyn.base && p <= dyn.base + dyn.bytes) {
    return kDynamicWindow + static_cast<uint32_t>(p - dyn.base);
  }
  // NOTE: inside an array first, its end (a loop's bound) second: the compiler may put two
  // __shared__ arrays back to back, and then the end of one is the start of the next
  for (const SharedArray& a : shared_arrays) {
    if (p >= a.host && p < a.host + a.bytes) return a.window + static_cast<uint32_t>(p - a.host);
  }
  for (const SharedArray& a : shared_arrays) {
    if (p == a.host + a.bytes) return a.window + static_cast<uint32_t>(a.bytes);
  }
  error("%s: __cvta_generic_to_shared(%p): not a shared-memory address (undefined on a GPU)",
        running_kernel ? running_kernel : "?", generic);
  return 0xffffffffu;
}

void* shared_pointer(uint32_t address, size_t bytes, const char* what) {
  if (dyn.mapping != nullptr && address >= kDynamicWindow &&
      uint64_t{address} - kDynamicWindow + bytes <= dyn.bytes) {
    return dyn.base + (address - kDynamicWindow);
  }
  for (const SharedArray& a : shared_arrays) {
    if (address >= a.window && uint64_t{address} - a.window + bytes <= a.bytes) {
      return a.host + (address - a.window);
    }
  }
  error("%s: %s of %zu bytes at shared address 0x%x: outside every shared array (the dynamic "
        "shared memory has %zu bytes)",
        running_kernel ? running_kernel : "?", what, bytes, address, dyn.bytes);
  return nullptr;
}

// A cp.async copy lands: reads the source now, src_bytes of it, and zero-fills the rest.
static void land(const AsyncCopy& c) {
  std::memcpy(c.dst, c.src, c.src_bytes);
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
}

void cp_async(uint32_t dst_shared, const void* src, int cp_size, int src_size) {
  if (current < 0) return error("cp.async outside a kernel");
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) {
    return error("cp.async of %d bytes (4, 8 or 16)", cp_size);
  }
  if (src_size < 0 || src_size > cp_size) {
    return error("cp.async src-size %d with cp-size %d", src_size, cp_size);
  }
  void* dst = shared_pointer(dst_shared, cp_size, "cp.async destination");
  if (dst == nullptr) return;
  if (reinterpret_cast<uintptr_t>(dst) % cp_size != 0 || dst_shared % cp_size != 0 ||
      reinterpret_cast<uintptr_t>(src) % cp_size != 0) {
    return error("%s block (%u,%u,%u) thread %d: cp.async of %d bytes from %p to shared 0x%x: "
                 "both addresses must be aligned to %d bytes",
                 running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, current, cp_size, src,
                 dst_shared, cp_size);
  }
  const AsyncCopy copy{dst, src, cp_size, src_size};
  if (async_eager) land(copy);  // the earliest it may land; else at the wait, the latest
  else async_queues[current].open.push_back(copy);
}

void cp_async_commit() {
  if (current < 0) return error("cp.async.commit_group outside a kernel");
  AsyncQueue& q = async_queues[current];
  q.committed.push_back(std::move(q.open));
  q.open.clear();
}

void cp_async_wait(int pending) {
  if (current < 0) return error("cp.async.wait_group outside a kernel");
  if (pending < 0) return error("cp.async.wait_group %d", pending);
  AsyncQueue& q = async_queues[current];
  while (q.committed.size() > static_cast<size_t>(pending)) {
    for (const AsyncCopy& c : q.committed.front()) land(c);
    q.committed.pop_front();
  }
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSharedOptIn) return cudaErrorInvalidValue;
  max_dynamic_shared[kernel] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

void run_grid(const char* kernel, const void* kernel_address, const LaunchConfig& config,
              const std::function<void()>& body) {
  if (current >= 0) return error("%s: a launch from inside a kernel is not modelled", kernel);
  if (!valid_config(config)) {
    launch_error = cudaErrorInvalidConfiguration;
    return;
  }
  // More dynamic shared memory than the kernel's attribute allows (48 KB unless raised with
  // cudaFuncSetAttribute): the launch fails, as on a GPU.
  const auto attribute = max_dynamic_shared.find(kernel_address);
  const size_t allowed =
      attribute == max_dynamic_shared.end() ? kDefaultSharedBytes : attribute->second;
  if (config.dynamic_shared_bytes > allowed) {
    launch_error = cudaErrorInvalidValue;
    return;
  }
  ++launch_counts()[kernel];
  const dim3 grid = config.grid, block = config.block;
  const int n = static_cast<int>(block.x * block.y * block.z);
  make_fibers(n);
  if (config.dynamic_shared_bytes > 0) map_dynamic_shared(config.dynamic_shared_bytes);
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
        check_dynamic_guards(kernel);
      }
    }
  }
  unmap_dynamic_shared();
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

void __syncwarp(unsigned mask) {
  if (mask != 0xffffffffu) emu::error("__syncwarp(0x%x): only the full mask is modelled", mask);
  emu::warp_collective(emu::WarpOp::SyncWarp, nullptr, nullptr, nullptr);
}
