// selftest.cu: the CUDA emulator's own test kernels. Each exercises one thing the emulator
// models (barriers, shuffles, static and dynamic shared memory, launch checks, mma.sync,
// ldmatrix, cp.async) with an answer that selftest_harness.cpp computes on its own; a few hold a
// bug that the emulator must catch (a missing barrier or cp.async wait, a read past a buffer, an
// instruction it does not model, a shuffle half a warp reaches). Plain CUDA: nvcc compiles it
// too. Launchers in selftest.h.

#include "selftest.h"

namespace selftest {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- __syncthreads and static shared memory ----
template <bool kBarrier> __global__ void block_rotate_kernel(const float* in, float* out) {
  __shared__ float s[kRotateThreads];
  const int t = threadIdx.x, base = blockIdx.x * kRotateThreads;
  s[t] = in[base + t];
  if (kBarrier) __syncthreads();
  out[base + t] = s[(t + 37) % kRotateThreads] - 2.0f * s[kRotateThreads - 1 - t];
}

// ---- shuffles ----
__global__ void warp_shuffles_kernel(const int* in, int* sums, int* rotated, int* broadcast) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int v = in[i];
  int sum = v;
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
  sums[i] = sum;
  rotated[i] = __shfl_sync(kFullMask, v, (lane + 3) % 32);
  broadcast[i] = __shfl_sync(kFullMask, v, (blockIdx.x + warp) % 32);
}

// ---- dynamic shared memory ----
__global__ void reverse_dynamic_kernel(const float* in, float* out) {
  extern __shared__ float buffer[];
  const int t = threadIdx.x, n = blockDim.x;
  buffer[t] = in[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = buffer[n - 1 - t];
}

__global__ void fill_kernel(float* out) { out[threadIdx.x] = 1.0f; }

// ---- mma.sync m16n8k16 (f16 in, f32 accumulators) ----
__device__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                          const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

__device__ uint32_t pack(uint16_t lo, uint16_t hi) { return lo | (static_cast<uint32_t>(hi) << 16); }

// D's fragment: d[i] at row g (+ 8 from d[2]), column 2 t + (i & 1), as the PTX ISA lays it out
__device__ void store_d(float* d_out, const float (&d)[4], int g, int t) {
  for (int i = 0; i < 4; ++i) d_out[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = d[i];
}

// One warp; the fragments loaded from global memory by the PTX ISA's formulas (g = groupID,
// t = threadID_in_group): a_i at row g (+ 8 for a2, a3, a6, a7), column 2 t + (i & 1) (+ 8
// from a4); b_i at row 2 t + (i & 1) (+ 8 from b2), column g; c like d.
__global__ void mma_kernel(const __half* a, const __half* b, const float* c, float* d_out) {
  const uint16_t* a16 = reinterpret_cast<const uint16_t*>(a);
  const uint16_t* b16 = reinterpret_cast<const uint16_t*>(b);
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t ra[4], rb[2];
  for (int r = 0; r < 4; ++r) {
    const int row = g + (r % 2 == 1 ? 8 : 0), col = 2 * t + (r >= 2 ? 8 : 0);
    ra[r] = pack(a16[row * 16 + col], a16[row * 16 + col + 1]);
  }
  for (int r = 0; r < 2; ++r) {
    const int k = 2 * t + (r == 1 ? 8 : 0);
    rb[r] = pack(b16[k * 8 + g], b16[(k + 1) * 8 + g]);
  }
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i) rc[i] = c[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)];
  mma_16816(rd, ra, rb, rc);
  store_d(d_out, rd, g, t);
}

// ---- ldmatrix ----
__device__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One warp: A (16 x 16) and B (16 x 8) copied to shared memory, then loaded by ldmatrix the
// way a tensor-core kernel does (A: x4, matrix m at rows 8 (m % 2), columns 8 (m / 2); B: x2
// .trans, k rows 0-7 and 8-15), multiplied by mma.sync with C = 0.
__global__ void ldmatrix_mma_kernel(const __half* a, const __half* b, float* d_out) {
  __shared__ __align__(16) __half sa[16 * 16];
  __shared__ __align__(16) __half sb[16 * 8];
  const int lane = threadIdx.x;
  reinterpret_cast<uint4*>(sa)[lane] = reinterpret_cast<const uint4*>(a)[lane];  // 8 halves
  for (int k = 0; k < 2; ++k) {  // 4 halves
    reinterpret_cast<uint32_t*>(sb)[2 * lane + k] = reinterpret_cast<const uint32_t*>(b)[2 * lane + k];
  }
  __syncwarp();
  uint32_t ra[4], rb[2];
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(ra[0]), "=r"(ra[1]), "=r"(ra[2]), "=r"(ra[3])
               : "r"(shared_address(&sa[(lane % 16) * 16 + (lane / 16) * 8])));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(rb[0]), "=r"(rb[1])
               : "r"(shared_address(&sb[(lane % 16) * 8])));
  const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float rd[4];
  mma_16816(rd, ra, rb, zero);
  store_d(d_out, rd, lane / 4, lane % 4);
}

// One warp: four 8 x 8 matrices (32 rows of 8 halves), lane l giving the address of row l.
template <bool kTrans> __global__ void ldmatrix_x4_kernel(const __half* m, uint32_t* out) {
  __shared__ __align__(16) __half s[32 * 8];
  const int lane = threadIdx.x;
  reinterpret_cast<uint4*>(s)[lane] = reinterpret_cast<const uint4*>(m)[lane];
  __syncwarp();
  uint32_t r[4];
  const uint32_t address = shared_address(&s[lane * 8]);
  if (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  }
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// ---- cp.async ----
template <bool kWait> __global__ void cp_async_kernel(const float* in, float* out) {
  constexpr int kFloats = 4 * kCopyThreads;
  __shared__ __align__(16) float s[kFloats];
  const int t = threadIdx.x, base = blockIdx.x * kFloats;
  const int src_bytes = t == kCopyThreads - 1 ? 8 : 16;  // the last 8 bytes: zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(&s[4 * t])),
               "l"(in + base + 4 * t), "r"(src_bytes));
  asm volatile("cp.async.commit_group;\n" ::);
  if (kWait) asm volatile("cp.async.wait_group %0;\n" ::"n"(0));
  __syncthreads();
  for (int i = t; i < kFloats; i += kCopyThreads) out[base + i] = s[i];
}

// Four __shared__ arrays, reached in the order of `kReversed`'s choice, each filled by
// cp.async through its own shared-window address: the arrays may lie back to back, where
// the end of one is the start of the next, and each must still map to itself.
template <bool kReversed> __global__ void shared_windows_kernel(const float* in, float* out) {
  __shared__ __align__(16) float w0[4], w1[4], w2[4], w3[4];
  float* const arrays[4] = {kReversed ? w3 : w0, kReversed ? w2 : w1, kReversed ? w1 : w2,
                            kReversed ? w0 : w3};
  const int t = threadIdx.x;  // 4 threads
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(arrays[t])),
               "l"(in + 4 * t));
  asm volatile("cp.async.wait_all;\n" ::);
  __syncthreads();
  for (int i = 0; i < 4; ++i) out[4 * t + i] = arrays[t][i];
}

// ---- bugs the emulator must catch ----
__global__ void read_past_the_end_kernel(const float* in, float* out, int n) {
  out[threadIdx.x] = in[n + 256 + threadIdx.x];  // 1 KB past the end: the guard page
}

__global__ void unmodelled_ptx_kernel(float* out) {
  asm volatile("membar.cta;\n" ::);
  out[threadIdx.x] = 1.0f;
}

__global__ void divergent_shuffle_kernel(const int* in, int* out) {
  int v = in[threadIdx.x];
  if (threadIdx.x % 32 < 16) v += __shfl_xor_sync(kFullMask, v, 1);  // lanes 16-31 never come
  out[threadIdx.x] = v;
}

}  // namespace

cudaError_t block_rotate(const float* in, float* out, int blocks, bool barrier) {
  if (barrier) block_rotate_kernel<true><<<blocks, kRotateThreads>>>(in, out);
  else block_rotate_kernel<false><<<blocks, kRotateThreads>>>(in, out);
  return cudaGetLastError();
}

cudaError_t warp_shuffles(const int* in, int* sums, int* rotated, int* broadcast, int blocks) {
  warp_shuffles_kernel<<<blocks, kShuffleThreads>>>(in, sums, rotated, broadcast);
  return cudaGetLastError();
}

cudaError_t reverse_dynamic(const float* in, float* out, int blocks, int n, size_t shared_bytes) {
  reverse_dynamic_kernel<<<blocks, n, shared_bytes>>>(in, out);
  return cudaGetLastError();
}

cudaError_t set_reverse_dynamic_limit(int bytes) {
  return cudaFuncSetAttribute(reverse_dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              bytes);
}

cudaError_t bad_block_size(float* out) {
  fill_kernel<<<1, 2048>>>(out);
  return cudaGetLastError();
}

cudaError_t mma_m16n8k16(const __half* a, const __half* b, const float* c, float* d) {
  mma_kernel<<<1, 32>>>(a, b, c, d);
  return cudaGetLastError();
}

cudaError_t ldmatrix_mma(const __half* a, const __half* b, float* d) {
  ldmatrix_mma_kernel<<<1, 32>>>(a, b, d);
  return cudaGetLastError();
}

cudaError_t ldmatrix_x4(const __half* m, uint32_t* out, bool trans) {
  if (trans) ldmatrix_x4_kernel<true><<<1, 32>>>(m, out);
  else ldmatrix_x4_kernel<false><<<1, 32>>>(m, out);
  return cudaGetLastError();
}

cudaError_t cp_async_copy(const float* in, float* out, int blocks, bool wait) {
  if (wait) cp_async_kernel<true><<<blocks, kCopyThreads>>>(in, out);
  else cp_async_kernel<false><<<blocks, kCopyThreads>>>(in, out);
  return cudaGetLastError();
}

cudaError_t shared_windows(const float* in, float* out, bool reversed) {
  if (reversed) shared_windows_kernel<true><<<1, 4>>>(in, out);
  else shared_windows_kernel<false><<<1, 4>>>(in, out);
  return cudaGetLastError();
}

cudaError_t read_past_the_end(const float* in, float* out, int n) {
  read_past_the_end_kernel<<<1, 32>>>(in, out, n);
  return cudaGetLastError();
}

cudaError_t unmodelled_ptx(float* out) {
  unmodelled_ptx_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

cudaError_t divergent_shuffle(const int* in, int* out) {
  divergent_shuffle_kernel<<<1, 32>>>(in, out);
  return cudaGetLastError();
}

}  // namespace selftest
