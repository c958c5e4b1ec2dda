// emu.h: the device side of CUDA as a transformed .cu file sees it on the host (see README.md).
//
// transform.py puts `#include "emu.h"` on top of the .cu source and turns its kernel launches
// into emu::launch and its __shared__ declarations into static arrays; everything else in the
// kernels compiles as written against the definitions below. emu.cpp runs the threads.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
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
void run_grid(const char* kernel, const LaunchConfig& config,
              const std::function<void()>& thread_body);

// Kernel instantiations compiled into this binary and how often each was launched (coverage).
void register_kernel(const char* name);
void report_launches();  // prints a "launched <count> <kernel>" line per kernel to stdout

// The kernel's name from the compiler's spelling of KernelInfo<Kernel>::name, e.g.
// "layer_norm_fwd_cached<float, 4, 2>" (namespaces dropped).
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
  run_grid(KernelInfo<Kernel>::name(), config, [&] { std::apply(Kernel, params); });
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

// CUDA's rsqrtf is a hardware approximation (within 2 ulp); here 1 / sqrt(x) in float.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
