// selftest.h: the launchers of selftest.cu, the CUDA emulator's own test kernels (see
// selftest_harness.cpp). Each launches one kernel and returns cudaGetLastError().
#pragma once

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace selftest {

constexpr int kRotateThreads = 128;  // block_rotate: threads per block, elements per block
constexpr int kShuffleThreads = 64;  // warp_shuffles: two warps per block
constexpr int kCopyThreads = 64;     // cp_async_copy: 16 bytes (4 floats) per thread per block

// out[b, t] = in[b, (t + 37) % 128] - 2 in[b, 127 - t], through static shared memory; without
// the barrier between the writes and the reads (`barrier` false: a bug the emulator must catch).
cudaError_t block_rotate(const float* in, float* out, int blocks, bool barrier);

// Per warp of 32 ints: sums[i] = the warp's sum (__shfl_xor_sync butterfly), rotated[i] = the
// value of lane (lane + 3) % 32, broadcast[i] = the value of lane (block + warp) % 32
// (__shfl_sync).
cudaError_t warp_shuffles(const int* in, int* sums, int* rotated, int* broadcast, int blocks);

// out[b, t] = in[b, n - 1 - t] through n floats of dynamic shared memory (blocks of n threads),
// launched with `shared_bytes` of it (at least n * 4).
cudaError_t reverse_dynamic(const float* in, float* out, int blocks, int n, size_t shared_bytes);
// Raises (or resets) reverse_dynamic's limit of dynamic shared memory (cudaFuncSetAttribute).
cudaError_t set_reverse_dynamic_limit(int bytes);

// A launch of 2048 threads per block (more than 1024): fails, nothing runs.
cudaError_t bad_block_size(float* out);

// D = A B + C for one m16n8k16 tile: A (16 x 16) row-major, B (16 x 8) row-major (k, n), C and
// D (16 x 8) row-major; each lane loads its fragments by the PTX ISA's layout (mma.sync).
cudaError_t mma_m16n8k16(const __half* a, const __half* b, const float* c, float* d);

// The same product with the fragments loaded by ldmatrix from shared memory (A: x4, B: x2
// .trans), as a tensor-core kernel loads them; C is zero.
cudaError_t ldmatrix_mma(const __half* a, const __half* b, float* d);

// ldmatrix.x4 (or .x4.trans) of four 8 x 8 matrices of b16 (rows 8m .. 8m + 7 of m, a 32 x 8
// row-major array): out[lane * 4 + r] = register r of that lane.
cudaError_t ldmatrix_x4(const __half* m, uint32_t* out, bool trans);

// cp.async of 16 bytes per thread into shared memory (the last thread's copy with a src-size
// of 8: its last 8 bytes zero-filled), then out[b, i] = what shared memory holds; without the
// wait_group (`wait` false: a bug the emulator must catch).
cudaError_t cp_async_copy(const float* in, float* out, int blocks, bool wait);

// out[4 t + i] = in[4 t + i], copied by cp.async into the t-th of four small __shared__ arrays
// (reached in reverse order with `reversed`) and read back: each array's shared-window address
// maps to that array, although the compiler may put them back to back.
cudaError_t shared_windows(const float* in, float* out, bool reversed);

// Bugs the emulator must catch, each in its own kernel:
cudaError_t read_past_the_end(const float* in, float* out, int n);  // in[n + 256 + t]
cudaError_t unmodelled_ptx(float* out);  // an instruction the emulator does not model
cudaError_t divergent_shuffle(const int* in, int* out);  // a shuffle only half the warp reaches

}  // namespace selftest
