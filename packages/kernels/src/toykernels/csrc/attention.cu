// Fused causal attention, FlashAttention-2 style (Dao, 2023). No torch headers: see attention.h.
//
// Forward, fp16/bf16 (attention_fwd_tc): one block of 4 warps per (batch*head, tile of 64
// queries); each warp owns 16 query rows and keeps them, their running max m, running sum l
// and output accumulator in registers. Tiles of 64 keys/values are staged through shared
// memory with cp.async, double buffered (tile n+1 loads while tile n computes). Both matmuls
// use tensor cores (mma.sync m16n8k16, fp32 accumulate): S = Q K^T, then the fp32 S fragment is
// re-packed in registers as the A operand of O += P V (the accumulator layout of m16n8k16 is
// the A layout of the next one, so P never touches shared memory). The softmax scale is folded
// into log2(e) so that exp2 is used. Key tiles entirely above the (bottom-right aligned)
// diagonal are never loaded; only tiles that cross it are masked.
//
// Forward, fp32 (attention_fwd_fp32): one warp per query row on CUDA cores, same online softmax.
//
// Backward: delta = rowsum(dO * O) first; then one block per key tile accumulates dK and dV over
// the query tiles that see it, and a second kernel, one block per query tile, accumulates dQ
// over its key tiles. Both recompute P = exp(S * scale - lse) from q, k and the saved
// logsumexp; no atomics, so deterministic. fp16/bf16 run the matmuls on tensor cores through
// WMMA (attention_bwd_*_tc); fp32 runs the same algorithm on CUDA cores.
//
// Every (B, H, T, D) tensor is addressed through its own B, H and T strides (AttnStrides, unit
// stride along D): the block of flattened head bh = blockIdx.y finds row t of a tensor at
// row_offset(strides, bh, H, t). All global offsets are int64.

#include "attention.h"
#include "common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstring>

namespace toykernels {
namespace {

namespace wmma = nvcuda::wmma;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------
// conversions (to_float, from_float<T>: common.cuh)

// Two floats as one 32-bit register of two 16-bit values, lo in the low half.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

// Element offset of row t of flattened head bh = b * H + h in a tensor with these strides.
__device__ __forceinline__ int64_t row_offset(const AttnStrides& s, int bh, int H, int64_t t) {
  return static_cast<int64_t>(bh / H) * s.batch + static_cast<int64_t>(bh % H) * s.head + t * s.time;
}

// ---------------------------------------------------------------------------------------------
// PTX wrappers (sm_80+)

// c += a * b for a 16x16 (row) by 16x8 (col) tile, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and lane l gets
// row l/4, columns 2(l%4) and 2(l%4)+1 of each (the fragment layout of mma.m16n8k16).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The same, transposed on the way: lane l gets rows 2(l%4), 2(l%4)+1 of column l/4
// (the B operand of P V from row-major V).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global -> shared without passing through registers; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---------------------------------------------------------------------------------------------
// forward, tensor cores (fp16 / bf16)

constexpr int kFwdWarps = 4;
constexpr int kFwdThreads = kFwdWarps * 32;
constexpr int kFwdBM = 16 * kFwdWarps;  // queries per block: 16 rows per warp
constexpr int kFwdBN = 64;              // keys per tile

// Shared-memory rows are padded by 8 elements (16 bytes): the 32-bit fragment loads of a warp
// and the 8 row addresses of an ldmatrix then fall in distinct banks.
template <int D> __host__ __device__ constexpr int padded() { return D + 8; }

template <int D> constexpr size_t fwd_tc_smem_bytes() {
  return sizeof(uint16_t) * padded<D>() * (kFwdBM + 2 * 2 * kFwdBN);  // Q + 2 stages of K and V
}

// Copy rows [0, ROWS) of a tile whose row r starts at g + r * ld into shared memory; rows >=
// valid are zeros. Every row start is 16-byte aligned (attention.h).
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_tile_async(T* smem, const T* g, int64_t ld, int valid, int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int c = tid; c < ROWS * kChunks; c += kFwdThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool ok = r < valid;
    // NOTE: the zero-fill rows still need a valid address: the tile's first row always is.
    cp_async_16(smem + r * padded<D>() + col, ok ? g + r * ld + col : g, ok ? 16 : 0);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kFwdThreads)
    attention_fwd_tc(const T* __restrict__ q, const AttnStrides qs, const T* __restrict__ k,
                     const AttnStrides ks, const T* __restrict__ v, const AttnStrides vs,
                     T* __restrict__ out, const AttnStrides os, float* __restrict__ lse, int H, int Tq,
                     int Tk, float scale_log2) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);     // (kFwdBM, D+8)
  T* sK = sQ + kFwdBM * padded<D>();           // (2, kFwdBN, D+8)
  T* sV = sK + 2 * kFwdBN * padded<D>();       // (2, kFwdBN, D+8)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates: row group, thread in group
  // Heavier (later) query tiles first: with causal masking they have the most key tiles.
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kFwdBM;
  const int bh = blockIdx.y;
  const int offset = Tk - Tq;  // query i sees keys 0 .. i + offset
  q += row_offset(qs, bh, H, m0);
  k += row_offset(ks, bh, H, 0);
  v += row_offset(vs, bh, H, 0);

  // Keys this query tile needs: its last row sees keys < m0 + kFwdBM + offset.
  const int kv_end = min(Tk, m0 + kFwdBM + offset);
  const int n_tiles = (kv_end + kFwdBN - 1) / kFwdBN;

  load_tile_async<T, D, kFwdBM>(sQ, q, qs.time, min(kFwdBM, Tq - m0), tid);
  load_tile_async<T, D, kFwdBN>(sK, k, ks.time, min(kFwdBN, Tk), tid);
  load_tile_async<T, D, kFwdBN>(sV, v, vs.time, min(kFwdBN, Tk), tid);
  cp_async_commit();

  const int row0 = m0 + warp * 16 + g;  // this thread's two query rows: row0 and row0 + 8
  const int row1 = row0 + 8;
  uint32_t qf[D / 16][4];  // Q as A fragments, loaded once
  float o[D / 8][4];       // output accumulator, C fragments (16 rows x D)
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_0 = -INFINITY, m_1 = -INFINITY;  // running max of rows row0, row1 (log2 domain)
  float l_0 = 0.f, l_1 = 0.f;              // running sums, partial over this thread's columns

  for (int n = 0; n < n_tiles; ++n) {
    const int stage = n & 1;
    if (n + 1 < n_tiles) {  // prefetch the next tile into the other stage
      const int n1 = (n + 1) * kFwdBN;
      T* sK1 = sK + (stage ^ 1) * kFwdBN * padded<D>();
      T* sV1 = sV + (stage ^ 1) * kFwdBN * padded<D>();
      load_tile_async<T, D, kFwdBN>(sK1, k + n1 * ks.time, ks.time, min(kFwdBN, Tk - n1), tid);
      load_tile_async<T, D, kFwdBN>(sV1, v + n1 * vs.time, vs.time, min(kFwdBN, Tk - n1), tid);
      cp_async_commit();
      cp_async_wait<1>();  // everything but the prefetch has landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    if (n == 0) {
      const T* qw = sQ + (warp * 16 + g) * padded<D>();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int c = kk * 16 + t * 2;
        qf[kk][0] = *reinterpret_cast<const uint32_t*>(qw + c);
        qf[kk][1] = *reinterpret_cast<const uint32_t*>(qw + 8 * padded<D>() + c);
        qf[kk][2] = *reinterpret_cast<const uint32_t*>(qw + c + 8);
        qf[kk][3] = *reinterpret_cast<const uint32_t*>(qw + 8 * padded<D>() + c + 8);
      }
    }
    const T* sKs = sK + stage * kFwdBN * padded<D>();
    const T* sVs = sV + stage * kFwdBN * padded<D>();

    // S = Q K^T for this warp's 16 rows x 64 keys. B[k=d][n=key] = K[key][d]: K's rows are the
    // B operand's columns, so a plain ldmatrix of 8 keys x 8 dims gives a B register. One x4
    // load: keys nt*8..+7 at dims kk*16 + {0, 8, 16, 24} = (b0, b1) of k-slices kk and kk+1.
    float s[kFwdBN / 8][4];
#pragma unroll
    for (int nt = 0; nt < kFwdBN / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      const T* krow = sKs + (nt * 8 + lane % 8) * padded<D>() + (lane / 8) * 8;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, krow + kk * 16);
        mma_16816<T>(s[nt], qf[kk], b[0], b[1]);
        mma_16816<T>(s[nt], qf[kk + 1], b[2], b[3]);
      }
    }

    // Scale into the log2 domain; mask only tiles that cross the diagonal or the end of k.
    const int n0 = n * kFwdBN;
    const bool need_mask = (n0 + kFwdBN - 1 > m0 + offset) || (n0 + kFwdBN > Tk);
    float mx_0 = -INFINITY, mx_1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kFwdBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n0 + nt * 8 + t * 2 + (e & 1);
        const int row = e < 2 ? row0 : row1;
        float x = s[nt][e] * scale_log2;
        if (need_mask && (col > row + offset || col >= Tk)) x = -INFINITY;
        s[nt][e] = x;
      }
      mx_0 = fmaxf(mx_0, fmaxf(s[nt][0], s[nt][1]));
      mx_1 = fmaxf(mx_1, fmaxf(s[nt][2], s[nt][3]));
    }
    // a row's 64 columns are spread over the 4 threads of a quad
    mx_0 = fmaxf(mx_0, __shfl_xor_sync(0xffffffff, mx_0, 1));
    mx_0 = fmaxf(mx_0, __shfl_xor_sync(0xffffffff, mx_0, 2));
    mx_1 = fmaxf(mx_1, __shfl_xor_sync(0xffffffff, mx_1, 1));
    mx_1 = fmaxf(mx_1, __shfl_xor_sync(0xffffffff, mx_1, 2));
    // NOTE: finite from the first tile on: it holds key 0, which every row (padding rows too) sees.
    const float mn_0 = fmaxf(m_0, mx_0), mn_1 = fmaxf(m_1, mx_1);
    const float corr_0 = exp2f(m_0 - mn_0), corr_1 = exp2f(m_1 - mn_1);  // 0 on the first tile
    m_0 = mn_0;
    m_1 = mn_1;
    float sum_0 = 0.f, sum_1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < kFwdBN / 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - mn_0);
      s[nt][1] = exp2f(s[nt][1] - mn_0);
      s[nt][2] = exp2f(s[nt][2] - mn_1);
      s[nt][3] = exp2f(s[nt][3] - mn_1);
      sum_0 += s[nt][0] + s[nt][1];
      sum_1 += s[nt][2] + s[nt][3];
    }
    l_0 = l_0 * corr_0 + sum_0;
    l_1 = l_1 * corr_1 + sum_1;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= corr_0;
      o[dt][1] *= corr_0;
      o[dt][2] *= corr_1;
      o[dt][3] *= corr_1;
    }

    // O += P V. P's C fragments for keys 16kk..16kk+15 (n-tiles 2kk, 2kk+1) are exactly the A
    // fragment of that k-slice. V (key-major rows) is the B operand transposed: ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < kFwdBN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      // lanes 0-7 / 8-15 / 16-23 / 24-31 address the rows of matrices 0..3:
      // keys +0..7 and +8..15 of d-tile dt, then the same for d-tile dt+1.
      const int mat = lane / 8;
      const T* vrow = sVs + (kk * 16 + (mat & 1) * 8 + (lane % 8)) * padded<D>() + (mat >> 1) * 8;
#pragma unroll
      for (int dt = 0; dt < D / 8; dt += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vrow + dt * 8);
        mma_16816<T>(o[dt], a, b[0], b[1]);
        mma_16816<T>(o[dt + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the prefetch of the next iteration
  }

  l_0 += __shfl_xor_sync(0xffffffff, l_0, 1);
  l_0 += __shfl_xor_sync(0xffffffff, l_0, 2);
  l_1 += __shfl_xor_sync(0xffffffff, l_1, 1);
  l_1 += __shfl_xor_sync(0xffffffff, l_1, 2);
  const float inv_0 = 1.f / l_0, inv_1 = 1.f / l_1;
  out += row_offset(os, bh, H, 0);
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int c = dt * 8 + t * 2;
    if (row0 < Tq)
      *reinterpret_cast<uint32_t*>(out + row0 * os.time + c) = pack2<T>(o[dt][0] * inv_0, o[dt][1] * inv_0);
    if (row1 < Tq)
      *reinterpret_cast<uint32_t*>(out + row1 * os.time + c) = pack2<T>(o[dt][2] * inv_1, o[dt][3] * inv_1);
  }
  if (t == 0) {  // lse in natural-log units: (m + log2 l) * ln 2; lse is contiguous (B * H, Tq)
    if (row0 < Tq) lse[static_cast<int64_t>(bh) * Tq + row0] = (m_0 + log2f(l_0)) * kLn2;
    if (row1 < Tq) lse[static_cast<int64_t>(bh) * Tq + row1] = (m_1 + log2f(l_1)) * kLn2;
  }
}

// ---------------------------------------------------------------------------------------------
// forward, fp32 on CUDA cores: one warp per query row, lane l owns head-dim entries l, l+32, ...

constexpr int kF32Warps = 8;

template <int D>
__global__ void __launch_bounds__(kF32Warps * 32)
    attention_fwd_fp32(const float* __restrict__ q, const AttnStrides qs, const float* __restrict__ k,
                       const AttnStrides ks, const float* __restrict__ v, const AttnStrides vs,
                       float* __restrict__ out, const AttnStrides os, float* __restrict__ lse, int H,
                       int Tq, int Tk, float scale_log2) {
  constexpr int kPer = D / 32;
  __shared__ float sq[kF32Warps][D];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * kF32Warps + warp;
  const int bh = blockIdx.y;
  if (row >= Tq) return;  // the whole warp leaves; no block-wide sync below
  q += row_offset(qs, bh, H, row);
  k += row_offset(ks, bh, H, 0);
  v += row_offset(vs, bh, H, 0);
  for (int d = lane; d < D; d += 32) sq[warp][d] = q[d] * scale_log2;
  __syncwarp();

  const int last = row + (Tk - Tq);  // the last key this query sees
  float acc[kPer];
#pragma unroll
  for (int c = 0; c < kPer; ++c) acc[c] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int j0 = 0; j0 <= last; j0 += 32) {
    const int j = j0 + lane;  // each lane scores one key of this chunk of 32
    float s = -INFINITY;
    if (j <= last) {
      const float* kr = k + j * ks.time;
      s = 0.f;
#pragma unroll 8
      for (int d = 0; d < D; ++d) s += sq[warp][d] * kr[d];
    }
    float mx = s;
#pragma unroll
    for (int w = 16; w > 0; w /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, w));
    const float mn = fmaxf(m, mx);  // finite: the first chunk holds key 0
    const float corr = exp2f(m - mn);
    const float p = j <= last ? exp2f(s - mn) : 0.f;
    float sum = p;
#pragma unroll
    for (int w = 16; w > 0; w /= 2) sum += __shfl_xor_sync(0xffffffff, sum, w);
    l = l * corr + sum;
    m = mn;
#pragma unroll
    for (int c = 0; c < kPer; ++c) acc[c] *= corr;
    const int n = min(32, last - j0 + 1);
    for (int jj = 0; jj < n; ++jj) {
      const float pj = __shfl_sync(0xffffffff, p, jj);
      const float* vr = v + (j0 + jj) * vs.time;
#pragma unroll
      for (int c = 0; c < kPer; ++c) acc[c] += pj * vr[lane + 32 * c];
    }
  }
  out += row_offset(os, bh, H, row);
#pragma unroll
  for (int c = 0; c < kPer; ++c) out[lane + 32 * c] = acc[c] / l;
  if (lane == 0) lse[static_cast<int64_t>(bh) * Tq + row] = (m + log2f(l)) * kLn2;
}

// ---------------------------------------------------------------------------------------------
// backward, CUDA cores, fp32 accumulation (the fp32 path; delta for all dtypes)

constexpr int kBwdThreads = 256;
constexpr int kBwdB = 32;  // queries per query tile and keys per key tile

// delta_i = sum_d dO_id * O_id: one warp per row of the B * H * Tq rows (delta is contiguous).
template <typename T>
__global__ void attention_bwd_delta(const T* __restrict__ dout, const AttnStrides dos,
                                    const T* __restrict__ out, const AttnStrides os,
                                    float* __restrict__ delta, int64_t rows, int H, int Tq, int D) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int bh = static_cast<int>(row / Tq), i = static_cast<int>(row % Tq);
  dout += row_offset(dos, bh, H, i);
  out += row_offset(os, bh, H, i);
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) acc += to_float(dout[d]) * to_float(out[d]);
#pragma unroll
  for (int w = 16; w > 0; w /= 2) acc += __shfl_xor_sync(0xffffffff, acc, w);
  if (lane == 0) delta[row] = acc;
}

// The shared-memory tiles of both backward kernels, fp32. Rows padded by one float so that a
// warp reading one column of 32 rows hits 32 banks.
template <int D> struct BwdTiles {
  float q[kBwdB][D + 1], dout[kBwdB][D + 1];  // a query tile
  float k[kBwdB][D + 1], v[kBwdB][D + 1];     // a key tile
  float p[kBwdB][kBwdB + 1], ds[kBwdB][kBwdB + 1];
  float lse[kBwdB], delta[kBwdB];
};

// Rows [0, kBwdB) of a tile whose row r starts at src + r * ld, as fp32; rows >= valid are zeros.
template <typename T, int D>
__device__ __forceinline__ void load_rows(float (*dst)[D + 1], const T* src, int64_t ld, int valid) {
  for (int e = threadIdx.x; e < kBwdB * D; e += kBwdThreads) {
    const int r = e / D, d = e % D;
    dst[r][d] = r < valid ? to_float(src[r * ld + d]) : 0.f;
  }
}

template <int D>
__device__ __forceinline__ void load_row_stats(BwdTiles<D>& s, const float* lse, const float* delta,
                                               int valid) {
  for (int r = threadIdx.x; r < kBwdB; r += kBwdThreads) {
    s.lse[r] = r < valid ? lse[r] : 0.f;
    s.delta[r] = r < valid ? delta[r] : 0.f;
  }
}

// P = exp(S * scale - lse) and dS = P * (dP - delta) for the loaded query and key tiles,
// zero where masked or out of range.
template <int D>
__device__ __forceinline__ void compute_p_ds(BwdTiles<D>& s, int i0, int n0, int Tq, int Tk,
                                             float scale) {
  const int offset = Tk - Tq;
  for (int e = threadIdx.x; e < kBwdB * kBwdB; e += kBwdThreads) {
    const int i = e / kBwdB, j = e % kBwdB;  // a warp shares i: s.q[i][d] is a broadcast
    const int gi = i0 + i, gj = n0 + j;
    float p = 0.f, ds = 0.f;
    if (gi < Tq && gj < Tk && gj <= gi + offset) {
      float dot = 0.f, dp = 0.f;
#pragma unroll 8
      for (int d = 0; d < D; ++d) {
        dot += s.q[i][d] * s.k[j][d];
        dp += s.dout[i][d] * s.v[j][d];
      }
      p = __expf(dot * scale - s.lse[i]);
      ds = p * (dp - s.delta[i]);
    }
    s.p[i][j] = p;
    s.ds[i][j] = ds;
  }
}

// One block per (key tile, batch*head): dV = sum_i P^T dO, dK = scale * sum_i dS^T Q.
template <typename T, int D>
__global__ void __launch_bounds__(kBwdThreads)
    attention_bwd_dkdv(const T* __restrict__ dout, const AttnStrides dos, const T* __restrict__ q,
                       const AttnStrides qs, const T* __restrict__ k, const AttnStrides ks,
                       const T* __restrict__ v, const AttnStrides vs, const float* __restrict__ lse,
                       const float* __restrict__ delta, T* __restrict__ dk, const AttnStrides dks,
                       T* __restrict__ dv, const AttnStrides dvs, int H, int Tq, int Tk, float scale) {
  constexpr int kPer = kBwdB * D / kBwdThreads;  // dK, dV entries per thread
  extern __shared__ __align__(128) unsigned char smem_raw[];
  BwdTiles<D>& s = *reinterpret_cast<BwdTiles<D>*>(smem_raw);
  const int bh = blockIdx.y;
  const int n0 = blockIdx.x * kBwdB;
  const int offset = Tk - Tq;
  q += row_offset(qs, bh, H, 0);
  dout += row_offset(dos, bh, H, 0);
  dk += row_offset(dks, bh, H, 0);
  dv += row_offset(dvs, bh, H, 0);
  lse += static_cast<int64_t>(bh) * Tq;
  delta += static_cast<int64_t>(bh) * Tq;
  load_rows<T, D>(s.k, k + row_offset(ks, bh, H, n0), ks.time, min(kBwdB, Tk - n0));
  load_rows<T, D>(s.v, v + row_offset(vs, bh, H, n0), vs.time, min(kBwdB, Tk - n0));

  float acc_dk[kPer], acc_dv[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) acc_dk[r] = acc_dv[r] = 0.f;
  // The first query that sees key n0 is n0 - offset (>= 0 is not guaranteed; clamp).
  const int first = max(0, n0 - offset);
  for (int i0 = (first / kBwdB) * kBwdB; i0 < Tq; i0 += kBwdB) {
    __syncthreads();  // the previous tile's q, dout, p, ds are no longer read
    const int valid = min(kBwdB, Tq - i0);
    load_rows<T, D>(s.q, q + i0 * qs.time, qs.time, valid);
    load_rows<T, D>(s.dout, dout + i0 * dos.time, dos.time, valid);
    load_row_stats<D>(s, lse + i0, delta + i0, valid);
    __syncthreads();
    compute_p_ds<D>(s, i0, n0, Tq, Tk, scale);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int e = threadIdx.x + r * kBwdThreads;
      const int j = e / D, d = e % D;
#pragma unroll 8
      for (int i = 0; i < kBwdB; ++i) {
        acc_dv[r] += s.p[i][j] * s.dout[i][d];
        acc_dk[r] += s.ds[i][j] * s.q[i][d];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int e = threadIdx.x + r * kBwdThreads;
    const int j = e / D, d = e % D;
    if (n0 + j < Tk) {
      dk[(n0 + j) * dks.time + d] = from_float<T>(acc_dk[r] * scale);
      dv[(n0 + j) * dvs.time + d] = from_float<T>(acc_dv[r]);
    }
  }
}

// One block per (query tile, batch*head): dQ = scale * sum_j dS K.
template <typename T, int D>
__global__ void __launch_bounds__(kBwdThreads)
    attention_bwd_dq(const T* __restrict__ dout, const AttnStrides dos, const T* __restrict__ q,
                     const AttnStrides qs, const T* __restrict__ k, const AttnStrides ks,
                     const T* __restrict__ v, const AttnStrides vs, const float* __restrict__ lse,
                     const float* __restrict__ delta, T* __restrict__ dq, const AttnStrides dqs, int H,
                     int Tq, int Tk, float scale) {
  constexpr int kPer = kBwdB * D / kBwdThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  BwdTiles<D>& s = *reinterpret_cast<BwdTiles<D>*>(smem_raw);
  const int bh = blockIdx.y;
  const int i0 = blockIdx.x * kBwdB;
  const int valid = min(kBwdB, Tq - i0);
  k += row_offset(ks, bh, H, 0);
  v += row_offset(vs, bh, H, 0);
  dq += row_offset(dqs, bh, H, 0);
  const int64_t stats = static_cast<int64_t>(bh) * Tq + i0;  // lse and delta are contiguous
  load_rows<T, D>(s.q, q + row_offset(qs, bh, H, i0), qs.time, valid);
  load_rows<T, D>(s.dout, dout + row_offset(dos, bh, H, i0), dos.time, valid);
  load_row_stats<D>(s, lse + stats, delta + stats, valid);

  float acc[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) acc[r] = 0.f;
  const int kv_end = min(Tk, i0 + kBwdB + (Tk - Tq));  // tiles past the diagonal are skipped
  for (int n0 = 0; n0 < kv_end; n0 += kBwdB) {
    __syncthreads();
    load_rows<T, D>(s.k, k + n0 * ks.time, ks.time, min(kBwdB, Tk - n0));
    load_rows<T, D>(s.v, v + n0 * vs.time, vs.time, min(kBwdB, Tk - n0));
    __syncthreads();
    compute_p_ds<D>(s, i0, n0, Tq, Tk, scale);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int e = threadIdx.x + r * kBwdThreads;
      const int i = e / D, d = e % D;
#pragma unroll 8
      for (int j = 0; j < kBwdB; ++j) acc[r] += s.ds[i][j] * s.k[j][d];
    }
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int e = threadIdx.x + r * kBwdThreads;
    const int i = e / D, d = e % D;
    if (i < valid) dq[(i0 + i) * dqs.time + d] = from_float<T>(acc[r] * scale);
  }
}

// ---------------------------------------------------------------------------------------------
// backward, tensor cores (fp16 / bf16), WMMA: the same two kernels as above with 64 x 64 tiles,
// 4 warps each owning 16 rows. The matmuls run on tensor cores through WMMA (fragments loaded
// from shared memory, so the transposes are just a row-/column-major choice); the pointwise
// part goes through a per-warp fp32 scratch. P and dS are rounded to 16 bits before their
// matmuls, as in FlashAttention-2.

constexpr int kTcBwdWarps = 4;
constexpr int kTcBwdThreads = kTcBwdWarps * 32;
constexpr int kTcB = 16 * kTcBwdWarps;  // rows per query tile and per key tile
constexpr int kScratchLd = kTcB + 4;    // fp32 scratch row stride (a multiple of 4 floats)
constexpr int kOperandLd = kTcB + 8;    // 16-bit P / dS row stride (a multiple of 8 elements)

// Every member's size is a multiple of 32 bytes, so each stays 256-bit aligned as WMMA needs.
template <typename T, int D> struct TcBwdTiles {
  T q[kTcB][D + 8], dout[kTcB][D + 8];  // a query tile
  T k[kTcB][D + 8], v[kTcB][D + 8];     // a key tile
  float s[kTcBwdWarps][16][kScratchLd];   // per warp: scores, then output staging
  float dp[kTcBwdWarps][16][kScratchLd];  // per warp: dP
  T p[kTcBwdWarps][16][kOperandLd], ds[kTcBwdWarps][16][kOperandLd];
  float lse[kTcB], delta[kTcB];
};

// Rows [0, kTcB) of a tile whose row r starts at src + r * ld into shared memory, 16 bytes at a
// time (row starts are 16-byte aligned, attention.h); rows >= valid are zeros.
template <typename T, int D>
__device__ __forceinline__ void tc_load_rows(T (*dst)[D + 8], const T* src, int64_t ld, int valid) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < kTcB * kChunks; c += kTcBwdThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < valid) value = *reinterpret_cast<const uint4*>(src + r * ld + col);
    *reinterpret_cast<uint4*>(&dst[r][col]) = value;
  }
}

template <typename T> using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// out (16 x kTcB, fp32, row-major, ld kScratchLd) = A (16 x D rows of `a`) times B^T, where B is
// kTcB rows of `b` (16 x D each): B read column-major is B^T. Used for S = Q K^T and dP = dO V^T.
template <typename T, int D>
__device__ __forceinline__ void tc_rows_times_rows_t(float* out, const T (*a)[D + 8], const T (*b)[D + 8]) {
#pragma unroll
  for (int nb = 0; nb < kTcB / 16; ++nb) {
    FragC c;
    wmma::fill_fragment(c, 0.f);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      FragA<T> fa;
      FragBCol<T> fb;
      wmma::load_matrix_sync(fa, &a[0][kk * 16], D + 8);
      wmma::load_matrix_sync(fb, &b[nb * 16][kk * 16], D + 8);
      wmma::mma_sync(c, fa, fb, c);
    }
    wmma::store_matrix_sync(out + nb * 16, c, kScratchLd, wmma::mem_row_major);
  }
}

// acc[dt] += A (16 x kTcB, ld kOperandLd) times B (kTcB x D rows of `b`), for each 16-wide dt.
template <typename T, int D>
__device__ __forceinline__ void tc_accumulate(FragC (&acc)[D / 16], const T* a, const T (*b)[D + 8]) {
  // NOTE: not unrolled at D = 128. The dK/dV kernel then holds 2 x 8 accumulator fragments (128
  // registers a thread); unrolling this loop too let ptxas hoist the next fragments' loads and
  // reach 255 registers with 36 bytes spilled on sm_90 (242 registers, no spill, this way).
#pragma unroll(D >= 128 ? 1 : kTcB / 16)
  for (int kk = 0; kk < kTcB / 16; ++kk) {
    FragA<T> fa;
    wmma::load_matrix_sync(fa, a + kk * 16, kOperandLd);
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) {
      FragBRow<T> fb;
      wmma::load_matrix_sync(fb, &b[kk * 16][dt * 16], D + 8);
      wmma::mma_sync(acc[dt], fa, fb, acc[dt]);
    }
  }
}

// Writes a warp's 16 x D accumulator rows to global rows row0.. (< n_rows; row r starts at
// dst + r * ld), times `factor`.
template <typename T, int D>
__device__ __forceinline__ void tc_store_rows(T* dst, int64_t ld, FragC (&acc)[D / 16], float* scratch,
                                              int row0, int n_rows, float factor) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int dt = 0; dt < D / 16; ++dt) {
    wmma::store_matrix_sync(scratch, acc[dt], kScratchLd, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 16 * 16; e += 32) {
      const int r = e / 16, c = e % 16;
      if (row0 + r < n_rows)
        dst[(row0 + r) * ld + dt * 16 + c] = from_float<T>(scratch[r * kScratchLd + c] * factor);
    }
    __syncwarp();
  }
}

// One block per (key tile, batch*head); warp w owns keys n0 + 16w ... + 15.
// S^T = K Q^T and dP^T = V dO^T, then dV += P^T dO and dK += dS^T Q.
template <typename T, int D>
__global__ void __launch_bounds__(kTcBwdThreads)
    attention_bwd_dkdv_tc(const T* __restrict__ dout, const AttnStrides dos, const T* __restrict__ q,
                          const AttnStrides qs, const T* __restrict__ k, const AttnStrides ks,
                          const T* __restrict__ v, const AttnStrides vs, const float* __restrict__ lse,
                          const float* __restrict__ delta, T* __restrict__ dk, const AttnStrides dks,
                          T* __restrict__ dv, const AttnStrides dvs, int H, int Tq, int Tk, float scale) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  TcBwdTiles<T, D>& s = *reinterpret_cast<TcBwdTiles<T, D>*>(smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int bh = blockIdx.y;
  const int n0 = blockIdx.x * kTcB;
  const int offset = Tk - Tq;
  q += row_offset(qs, bh, H, 0);
  dout += row_offset(dos, bh, H, 0);
  lse += static_cast<int64_t>(bh) * Tq;
  delta += static_cast<int64_t>(bh) * Tq;
  tc_load_rows<T, D>(s.k, k + row_offset(ks, bh, H, n0), ks.time, min(kTcB, Tk - n0));
  tc_load_rows<T, D>(s.v, v + row_offset(vs, bh, H, n0), vs.time, min(kTcB, Tk - n0));

  FragC acc_dk[D / 16], acc_dv[D / 16];
#pragma unroll
  for (int dt = 0; dt < D / 16; ++dt) {
    wmma::fill_fragment(acc_dk[dt], 0.f);
    wmma::fill_fragment(acc_dv[dt], 0.f);
  }
  const int first = max(0, n0 - offset);  // the first query that sees key n0
  for (int i0 = (first / kTcB) * kTcB; i0 < Tq; i0 += kTcB) {
    __syncthreads();  // the previous query tile is no longer read
    const int valid = min(kTcB, Tq - i0);
    tc_load_rows<T, D>(s.q, q + i0 * qs.time, qs.time, valid);
    tc_load_rows<T, D>(s.dout, dout + i0 * dos.time, dos.time, valid);
    for (int r = threadIdx.x; r < kTcB; r += kTcBwdThreads) {
      s.lse[r] = r < valid ? lse[i0 + r] : 0.f;
      s.delta[r] = r < valid ? delta[i0 + r] : 0.f;
    }
    __syncthreads();
    tc_rows_times_rows_t<T, D>(&s.s[warp][0][0], &s.k[warp * 16], s.q);     // S^T (16 keys x 64 queries)
    tc_rows_times_rows_t<T, D>(&s.dp[warp][0][0], &s.v[warp * 16], s.dout);  // dP^T
    __syncwarp();
    for (int e = lane; e < 16 * kTcB; e += 32) {
      const int jj = e / kTcB, ii = e % kTcB;  // key (local to the warp), query (local to the tile)
      const int gj = n0 + warp * 16 + jj, gi = i0 + ii;
      float p = 0.f, ds = 0.f;
      if (gi < Tq && gj < Tk && gj <= gi + offset) {
        p = __expf(s.s[warp][jj][ii] * scale - s.lse[ii]);
        ds = p * (s.dp[warp][jj][ii] - s.delta[ii]);
      }
      s.p[warp][jj][ii] = from_float<T>(p);
      s.ds[warp][jj][ii] = from_float<T>(ds);
    }
    __syncwarp();
    tc_accumulate<T, D>(acc_dv, &s.p[warp][0][0], s.dout);  // dV += P^T dO
    tc_accumulate<T, D>(acc_dk, &s.ds[warp][0][0], s.q);    // dK += dS^T Q
  }
  const int row0 = n0 + warp * 16;
  tc_store_rows<T, D>(dk + row_offset(dks, bh, H, 0), dks.time, acc_dk, &s.s[warp][0][0], row0, Tk, scale);
  tc_store_rows<T, D>(dv + row_offset(dvs, bh, H, 0), dvs.time, acc_dv, &s.s[warp][0][0], row0, Tk, 1.f);
}

// One block per (query tile, batch*head); warp w owns queries i0 + 16w ... + 15.
// S = Q K^T and dP = dO V^T, then dQ += dS K.
template <typename T, int D>
__global__ void __launch_bounds__(kTcBwdThreads)
    attention_bwd_dq_tc(const T* __restrict__ dout, const AttnStrides dos, const T* __restrict__ q,
                        const AttnStrides qs, const T* __restrict__ k, const AttnStrides ks,
                        const T* __restrict__ v, const AttnStrides vs, const float* __restrict__ lse,
                        const float* __restrict__ delta, T* __restrict__ dq, const AttnStrides dqs, int H,
                        int Tq, int Tk, float scale) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  TcBwdTiles<T, D>& s = *reinterpret_cast<TcBwdTiles<T, D>*>(smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int bh = blockIdx.y;
  const int i0 = blockIdx.x * kTcB;
  const int valid = min(kTcB, Tq - i0);
  const int offset = Tk - Tq;
  k += row_offset(ks, bh, H, 0);
  v += row_offset(vs, bh, H, 0);
  tc_load_rows<T, D>(s.q, q + row_offset(qs, bh, H, i0), qs.time, valid);
  tc_load_rows<T, D>(s.dout, dout + row_offset(dos, bh, H, i0), dos.time, valid);
  const int64_t stats = static_cast<int64_t>(bh) * Tq + i0;  // lse and delta are contiguous
  for (int r = threadIdx.x; r < kTcB; r += kTcBwdThreads) {
    s.lse[r] = r < valid ? lse[stats + r] : 0.f;
    s.delta[r] = r < valid ? delta[stats + r] : 0.f;
  }

  FragC acc[D / 16];
#pragma unroll
  for (int dt = 0; dt < D / 16; ++dt) wmma::fill_fragment(acc[dt], 0.f);
  const int kv_end = min(Tk, i0 + kTcB + offset);  // key tiles past the diagonal are skipped
  for (int n0 = 0; n0 < kv_end; n0 += kTcB) {
    __syncthreads();
    tc_load_rows<T, D>(s.k, k + n0 * ks.time, ks.time, min(kTcB, Tk - n0));
    tc_load_rows<T, D>(s.v, v + n0 * vs.time, vs.time, min(kTcB, Tk - n0));
    __syncthreads();
    tc_rows_times_rows_t<T, D>(&s.s[warp][0][0], &s.q[warp * 16], s.k);      // S (16 queries x 64 keys)
    tc_rows_times_rows_t<T, D>(&s.dp[warp][0][0], &s.dout[warp * 16], s.v);  // dP
    __syncwarp();
    for (int e = lane; e < 16 * kTcB; e += 32) {
      const int ii = e / kTcB, jj = e % kTcB;  // query (local to the warp), key (local to the tile)
      const int gi = i0 + warp * 16 + ii, gj = n0 + jj;
      float ds = 0.f;
      if (gi < Tq && gj < Tk && gj <= gi + offset) {
        const float p = __expf(s.s[warp][ii][jj] * scale - s.lse[warp * 16 + ii]);
        ds = p * (s.dp[warp][ii][jj] - s.delta[warp * 16 + ii]);
      }
      s.ds[warp][ii][jj] = from_float<T>(ds);
    }
    __syncwarp();
    tc_accumulate<T, D>(acc, &s.ds[warp][0][0], s.k);  // dQ += dS K
  }
  tc_store_rows<T, D>(dq + row_offset(dqs, bh, H, 0), dqs.time, acc, &s.s[warp][0][0], i0 + warp * 16, Tq,
                      scale);
}

// ---------------------------------------------------------------------------------------------
// launchers

constexpr int64_t kMaxGridY = 65535;

template <typename T, int D>
cudaError_t launch_forward(const void* q, AttnStrides qs, const void* k, AttnStrides ks, const void* v,
                           AttnStrides vs, void* out, AttnStrides os, float* lse, int BH, int H, int Tq,
                           int Tk, float scale, cudaStream_t stream) {
  const float scale_log2 = scale * kLog2e;
  if constexpr (sizeof(T) == 4) {
    dim3 grid((Tq + kF32Warps - 1) / kF32Warps, static_cast<unsigned>(BH));
    attention_fwd_fp32<D><<<grid, kF32Warps * 32, 0, stream>>>(
        static_cast<const float*>(q), qs, static_cast<const float*>(k), ks, static_cast<const float*>(v), vs,
        static_cast<float*>(out), os, lse, H, Tq, Tk, scale_log2);
  } else {
    constexpr size_t smem = fwd_tc_smem_bytes<D>();
    cudaError_t err = cudaFuncSetAttribute(attention_fwd_tc<T, D>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    dim3 grid((Tq + kFwdBM - 1) / kFwdBM, static_cast<unsigned>(BH));
    attention_fwd_tc<T, D><<<grid, kFwdThreads, smem, stream>>>(
        static_cast<const T*>(q), qs, static_cast<const T*>(k), ks, static_cast<const T*>(v), vs,
        static_cast<T*>(out), os, lse, H, Tq, Tk, scale_log2);
  }
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_backward(const void* dout, AttnStrides dos, const void* q, AttnStrides qs, const void* k,
                            AttnStrides ks, const void* v, AttnStrides vs, const void* out, AttnStrides os,
                            const float* lse, float* delta, void* dq, AttnStrides dqs, void* dk,
                            AttnStrides dks, void* dv, AttnStrides dvs, int BH, int H, int Tq, int Tk,
                            float scale, cudaStream_t stream) {
  const T* dout_ = static_cast<const T*>(dout);
  const T* q_ = static_cast<const T*>(q);
  const T* k_ = static_cast<const T*>(k);
  const T* v_ = static_cast<const T*>(v);
  T* dq_ = static_cast<T*>(dq);
  T* dk_ = static_cast<T*>(dk);
  T* dv_ = static_cast<T*>(dv);
  const int64_t rows = static_cast<int64_t>(BH) * Tq;
  constexpr int kWarpsPerBlock = 8;
  attention_bwd_delta<T><<<static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock),
                           kWarpsPerBlock * 32, 0, stream>>>(dout_, dos, static_cast<const T*>(out), os,
                                                             delta, rows, H, Tq, D);
  if constexpr (sizeof(T) == 2) {  // fp16 / bf16: tensor cores
    constexpr size_t smem = sizeof(TcBwdTiles<T, D>);
    cudaError_t err = cudaFuncSetAttribute(attention_bwd_dkdv_tc<T, D>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    err = cudaFuncSetAttribute(attention_bwd_dq_tc<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    dim3 grid_kv((Tk + kTcB - 1) / kTcB, static_cast<unsigned>(BH));
    attention_bwd_dkdv_tc<T, D><<<grid_kv, kTcBwdThreads, smem, stream>>>(
        dout_, dos, q_, qs, k_, ks, v_, vs, lse, delta, dk_, dks, dv_, dvs, H, Tq, Tk, scale);
    dim3 grid_q((Tq + kTcB - 1) / kTcB, static_cast<unsigned>(BH));
    attention_bwd_dq_tc<T, D><<<grid_q, kTcBwdThreads, smem, stream>>>(
        dout_, dos, q_, qs, k_, ks, v_, vs, lse, delta, dq_, dqs, H, Tq, Tk, scale);
  } else {  // fp32: CUDA cores
    constexpr size_t smem = sizeof(BwdTiles<D>);
    cudaError_t err =
        cudaFuncSetAttribute(attention_bwd_dkdv<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    err = cudaFuncSetAttribute(attention_bwd_dq<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    dim3 grid_kv((Tk + kBwdB - 1) / kBwdB, static_cast<unsigned>(BH));
    attention_bwd_dkdv<T, D><<<grid_kv, kBwdThreads, smem, stream>>>(
        dout_, dos, q_, qs, k_, ks, v_, vs, lse, delta, dk_, dks, dv_, dvs, H, Tq, Tk, scale);
    dim3 grid_q((Tq + kBwdB - 1) / kBwdB, static_cast<unsigned>(BH));
    attention_bwd_dq<T, D><<<grid_q, kBwdThreads, smem, stream>>>(
        dout_, dos, q_, qs, k_, ks, v_, vs, lse, delta, dq_, dqs, H, Tq, Tk, scale);
  }
  return cudaGetLastError();
}

// B * H goes on gridDim.y (at most 65535); each block splits its index into b = bh / H, h = bh % H.
bool valid_problem(int64_t B, int64_t H, int Tq, int Tk, int D) {
  return B >= 1 && H >= 1 && B <= kMaxGridY && H <= kMaxGridY && B * H <= kMaxGridY && Tq >= 1 && Tq <= Tk &&
         attention_head_dim_supported(D);
}

}  // namespace

bool attention_head_dim_supported(int D) { return D == 32 || D == 64 || D == 128; }

// The kernels exist for these (dtype, head dim) pairs; anything else is refused.
#define TOYKERNELS_DISPATCH(dtype, D, LAUNCH)                                        \
  switch (dtype) {                                                                  \
    case DType::Float32: {                                                          \
      using T = float;                                                              \
      if (D == 32) return LAUNCH(32);                                               \
      if (D == 64) return LAUNCH(64);                                               \
      if (D == 128) return LAUNCH(128);                                             \
      break;                                                                        \
    }                                                                               \
    case DType::Float16: {                                                          \
      using T = __half;                                                             \
      if (D == 32) return LAUNCH(32);                                               \
      if (D == 64) return LAUNCH(64);                                               \
      if (D == 128) return LAUNCH(128);                                             \
      break;                                                                        \
    }                                                                               \
    case DType::BFloat16: {                                                         \
      using T = __nv_bfloat16;                                                      \
      if (D == 32) return LAUNCH(32);                                               \
      if (D == 64) return LAUNCH(64);                                               \
      if (D == 128) return LAUNCH(128);                                             \
      break;                                                                        \
    }                                                                               \
  }                                                                                 \
  return cudaErrorInvalidValue;

cudaError_t attention_forward(DType dtype, const void* q, AttnStrides q_strides, const void* k,
                              AttnStrides k_strides, const void* v, AttnStrides v_strides, void* out,
                              AttnStrides out_strides, float* lse, int64_t B, int64_t H, int Tq, int Tk,
                              int D, float scale, cudaStream_t stream) {
  if (!valid_problem(B, H, Tq, Tk, D)) return cudaErrorInvalidValue;
  const int BH = static_cast<int>(B * H), H_ = static_cast<int>(H);
#define LAUNCH(HD)                                                                                       \
  launch_forward<T, HD>(q, q_strides, k, k_strides, v, v_strides, out, out_strides, lse, BH, H_, Tq, Tk, \
                        scale, stream)
  TOYKERNELS_DISPATCH(dtype, D, LAUNCH)
#undef LAUNCH
}

cudaError_t attention_backward(DType dtype, const void* dout, AttnStrides dout_strides, const void* q,
                               AttnStrides q_strides, const void* k, AttnStrides k_strides, const void* v,
                               AttnStrides v_strides, const void* out, AttnStrides out_strides,
                               const float* lse, float* delta, void* dq, AttnStrides dq_strides, void* dk,
                               AttnStrides dk_strides, void* dv, AttnStrides dv_strides, int64_t B,
                               int64_t H, int Tq, int Tk, int D, float scale, cudaStream_t stream) {
  if (!valid_problem(B, H, Tq, Tk, D)) return cudaErrorInvalidValue;
  const int BH = static_cast<int>(B * H), H_ = static_cast<int>(H);
#define LAUNCH(HD)                                                                                     \
  launch_backward<T, HD>(dout, dout_strides, q, q_strides, k, k_strides, v, v_strides, out, out_strides, \
                         lse, delta, dq, dq_strides, dk, dk_strides, dv, dv_strides, BH, H_, Tq, Tk, scale, \
                         stream)
  TOYKERNELS_DISPATCH(dtype, D, LAUNCH)
#undef LAUNCH
}

}  // namespace toykernels
