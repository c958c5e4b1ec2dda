// emu.h: the device side of CUDA as a transformed .cu file sees it on the host (see README.md).
//
// transform.py puts `#include "emu.h"` on top of the .cu source and turns its kernel launches
// into emu::launch, its __shared__ declarations into static arrays, `extern __shared__` into
// emu::dynamic_shared_memory and inline PTX into emu::ptx; everything else in the kernels
// compiles as written against the definitions below. emu.cpp runs the threads, ptx.cpp the PTX.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <utility>

#include <cuda_runtime.h>

// ---- CUDA qualifiers and attributes: nothing to do on the host ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__ __restrict

// ---- built-in variables: set by the scheduler before it resumes a thread ----
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

namespace emu {

// An emulator error: something that would hang or be undefined on a GPU (a shuffle that not
// every lane of the warp reaches, ...) or that the emulator does not model. Printed to stderr
// and counted; the harness fails the case it happened in.
void error(const char* format, ...) __attribute__((format(printf, 1, 2)));
long error_count();
const char* last_error();

void seed(uint64_t seed);      // the scheduler's random choices (per case, for reproducibility)
void set_occupancy(int blocks_per_sm);

// On SIGSEGV or SIGBUS (an access out of bounds, into a guard page, or misaligned) or SIGILL
// (the trap of -fsanitize=alignment, which the kernel source is compiled with): writes what
// was running (kernel, block, thread) to stderr, calls on_fault with that text, and exits with
// status 3. Not async-signal-safe, but the process is ending anyway.
void catch_memory_faults(void (*on_fault)(const char* what));

// ---- what the running thread calls: each may switch to another thread ----
void barrier();                                                             // __syncthreads
uint64_t warp_exchange(uint64_t bits, int src_lane, unsigned mask, int width);  // shuffles
int lane();                                                                 // 0..31

// A warp-synchronous operation (mma, ldmatrix, WMMA, __syncwarp): the calling lane posts `args`
// (a struct on its stack) and waits until all 32 lanes of its warp have arrived at the same
// operation (same `op`, `key` and `complete`); then `complete` runs once, with every lane's args
// in lane order, and computes each lane's results, and the lanes go on. A lane that arrives at a
// different operation, or a warp that not every lane reaches, is an emulator error.
enum class WarpOp : int { Shuffle, SyncWarp, Mma, LdMatrix, WmmaFill, WmmaLoad, WmmaMma, WmmaStore };
using WarpOpComplete = void (*)(void* const* lane_args);
void warp_collective(WarpOp op, const void* key, void* args, WarpOpComplete complete);
// "<kernel> block (x,y,z) warp w": where the warp operation being completed runs (messages)
const char* collective_context();

template <typename T> T shuffle(T value, int src_lane, unsigned mask, int width) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(bits, src_lane, mask, width);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// A __shared__ declaration, reached by a thread (transform.py puts the call after the static
// array it declares): the first thread of each block to get here fills the array with 0xff
// bytes (NaN in every float format), so a read of a slot that this block never wrote shows.
void shared_memory(void* array, size_t bytes);

// `extern __shared__ __align__(A) T name[];` becomes `T* const name = static_cast<T*>(
// emu::dynamic_shared_memory(A));`: the launch's dynamic shared memory, exactly as many bytes as
// the launch's third <<< >>> argument, 128-byte aligned, filled with 0xff bytes at each block's
// start and followed by guard bytes and an inaccessible page.
void* dynamic_shared_memory(size_t alignment);

// Shared-memory addresses (the 32-bit .shared window of PTX): __cvta_generic_to_shared of a
// pointer into a __shared__ array or the dynamic shared memory, and back. shared_pointer checks
// that all `bytes` lie inside one shared array (else an emulator error and nullptr).
uint32_t shared_address(const void* generic);
void* shared_pointer(uint32_t address, size_t bytes, const char* what);

// cp.async (see ptx.cpp): a copy joins the issuing thread's open group; commit closes the
// group; wait(n) performs every committed group of this thread but the newest n. Until then
// the destination keeps what it held.
void cp_async(uint32_t dst_shared, const void* src, int cp_size, int src_size);
void cp_async_commit();
void cp_async_wait(int pending);

// ---- inline PTX ----
// transform.py turns `asm volatile("text" : outputs : inputs)` into
// `emu::ptx("text", {emu::ptx_out("+f", c), ..., emu::ptx_in("r", a), ...})`; ptx.cpp parses
// the text and runs the instruction (an instruction it does not model is an emulator error).
struct PtxOperand {
  char constraint = '?';  // f (.f32), r (.b32), l (.b64), h (.b16), d (.f64), n (immediate)
  bool output = false, read = false;  // output: "=" (write only) or "+" (read and write)
  bool floating = false;              // the C++ operand is a float or double
  int size = 0;                       // of the C++ operand, bytes
  void* ptr = nullptr;                // outputs: the operand
  uint64_t bits = 0;                  // inputs: the value
};
PtxOperand make_ptx_operand(const char* constraint, bool output, bool floating, int size, void* ptr,
                            const void* value);
template <typename T> PtxOperand ptx_out(const char* constraint, T& x) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "asm operand");
  return make_ptx_operand(constraint, true, std::is_floating_point<T>::value, sizeof(T), &x, &x);
}
template <typename T> PtxOperand ptx_in(const char* constraint, const T& x) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "asm operand");
  return make_ptx_operand(constraint, false, std::is_floating_point<T>::value, sizeof(T), nullptr,
                          &x);
}
void ptx(const char* text, std::initializer_list<PtxOperand> operands);

// ---- kernel launches ----
struct LaunchConfig {
  dim3 grid, block;
  size_t dynamic_shared_bytes;
  cudaStream_t stream;
  LaunchConfig(dim3 grid_, dim3 block_, size_t shared = 0, cudaStream_t stream_ = nullptr)
      : grid(grid_), block(block_), dynamic_shared_bytes(shared), stream(stream_) {}
};

// Runs every block of the grid, one after another, each thread calling thread_body; a bad
// configuration sets the error cudaGetLastError returns, as on a GPU, and runs nothing.
// `kernel_address` identifies the kernel for cudaFuncSetAttribute.
void run_grid(const char* kernel, const void* kernel_address, const LaunchConfig& config,
              const std::function<void()>& thread_body);

// Kernel instantiations compiled into this binary and how often each was launched (coverage).
void register_kernel(const char* name);
void report_launches();  // prints a "launched <count> <kernel>" line per kernel to stdout

// The kernel's name from the compiler's spelling of KernelInfo<Kernel>::name, e.g.
// "row_kernel<float, 4, 2>" (namespaces dropped).
const char* kernel_name(const char* pretty_function);

template <auto Kernel> struct KernelInfo {
  static const char* name() {
    static const char* const n = kernel_name(__PRETTY_FUNCTION__);
    return n;
  }
  // Instantiated with launch<Kernel>: registers the kernel at program start, launched or not.
  static inline const bool registered = (register_kernel(name()), true);
};

// kernel<<<config>>>(args...) becomes launch<&kernel>(LaunchConfig(config), args...).
// The arguments are converted to the kernel's parameter types once, as CUDA copies them into
// the parameter space at launch; every thread then calls the kernel with those values.
template <auto Kernel, typename... Params, typename... Args>
void launch_as(void (*)(Params...), const LaunchConfig& config, Args&&... args) {
  (void)KernelInfo<Kernel>::registered;
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run_grid(KernelInfo<Kernel>::name(), reinterpret_cast<const void*>(Kernel), config,
           [&] { std::apply(Kernel, params); });
}

template <auto Kernel, typename... Args> void launch(const LaunchConfig& config, Args&&... args) {
  launch_as<Kernel>(Kernel, config, std::forward<Args>(args)...);
}

}  // namespace emu

// ---- device functions ----
inline void __syncthreads() { emu::barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
  return emu::shuffle(value, emu::lane() ^ lane_mask, mask, width);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = warpSize) {
  return emu::shuffle(value, src_lane, mask, width);  // src_lane % 32, as on a GPU
}

// Waits for all 32 lanes of the warp (only the full mask is modelled).
void __syncwarp(unsigned mask = 0xffffffffu);

inline size_t __cvta_generic_to_shared(const void* p) { return emu::shared_address(p); }

// CUDA's integer and float min/max overloads of device code (the same types on both sides).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// CUDA's __expf is a fast approximation (ex2.approx); here expf.
inline float __expf(float x) { return std::exp(x); }

// CUDA's rsqrtf is a hardware approximation (within 2 ulp); here 1 / sqrt(x) in float.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
