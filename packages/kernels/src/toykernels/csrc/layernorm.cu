// Fused LayerNorm forward and backward (and residual-add + LayerNorm), torch-free.
//
// Layout of the work (the row-per-warp / row-per-block scheme of Apex and llm.c):
//   - t threads share one row, t in {32, ..., 256}: one warp per row for narrow rows, up to a
//     256-thread block for wide rows; a block holds 256 threads, i.e. 256 / t rows.
//   - each thread owns the columns (k * t + tx) * VEC .. + VEC - 1 for k < ITEMS, loaded with one
//     16-byte load per k (VEC = 16 / sizeof(T)) when every row is 16-byte aligned, else one
//     element at a time (VEC = 1). The row stays in registers, so x is read from memory once.
//   - rows too wide for the register cache run an "uncached" kernel that re-reads the row
//     (it is then still in L1/L2) instead.
//   - statistics in fp32, two-pass from registers: mean first, then sum((x - mean)^2): no
//     cancellation, unlike sum(x^2) - sum(x)^2.
// Backward: dx per row from two row sums (mean of g * xhat and of g, g = dy * weight); the
// parameter gradients are summed per block in registers over a fixed set of rows, written as
// per-block partial sums, and reduced by a second kernel in a fixed order: no float atomics,
// so two runs give bitwise-equal gradients.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

#include "common.cuh"
#include "layernorm.h"

namespace toykernels {
namespace {

constexpr int kBlockThreads = 256;  // threads per block in the row kernels

// element conversions (all arithmetic is fp32): to_float, from_float<T> in common.cuh

// VEC consecutive elements moved with one load/store (16 bytes for the input dtype).
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};
template <typename T, int VEC> __device__ __forceinline__ Pack<T, VEC> load(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}
template <typename T, int VEC> __device__ __forceinline__ void store(T* p, const Pack<T, VEC>& v) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

template <int VEC> __device__ __forceinline__ Pack<float, VEC> ones(float value) {
  Pack<float, VEC> p;
#pragma unroll
  for (int j = 0; j < VEC; ++j) p.v[j] = value;
  return p;
}

__device__ __forceinline__ float warp_sum(float v) {
  // butterfly: every lane ends with the same bits (each step adds the same two partial sums)
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the blockDim.x threads of this thread's row (row = threadIdx.y); every
// thread gets the same result. Must be reached by all threads of the block.
// smem: 32 floats per row of the block.
__device__ __forceinline__ float row_sum(float v, float* smem) {
  v = warp_sum(v);
  if (blockDim.x <= 32) return v;  // one warp per row: done
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  float* s = smem + threadIdx.y * 32;
  __syncthreads();  // the previous row_sum's readers are done with s
  if (lane == 0) s[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < n_warps; ++i) total += s[i];  // fixed order: deterministic
  return total;
}

template <typename T> struct FwdArgs {
  const T* x;
  const T* residual;  // null: plain LayerNorm
  T* s;               // x + residual, written when residual is not null
  const float* weight;
  const float* bias;
  T* y;
  float* mean;
  float* rstd;
  int64_t rows;
  int C;
  float eps;
};

// Loads pack k of this row (adding the residual and writing s when fused) into v, as floats.
template <typename T, int VEC>
__device__ __forceinline__ void load_input(const FwdArgs<T>& a, int64_t offset, float* v) {
  Pack<T, VEC> px = load<T, VEC>(a.x + offset);
  if (a.residual != nullptr) {
    const Pack<T, VEC> pr = load<T, VEC>(a.residual + offset);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      // round s to T before normalizing: y is LayerNorm of the s that is returned
      px.v[j] = from_float<T>(to_float(px.v[j]) + to_float(pr.v[j]));
    }
    store<T, VEC>(a.s + offset, px);
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) v[j] = to_float(px.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_output(const FwdArgs<T>& a, int64_t offset, int c,
                                             const float* v, float mean, float rstd) {
  // weight/bias are fp32 and VEC * 4-byte aligned (checked before VEC > 1 is chosen)
  const Pack<float, VEC> w = a.weight != nullptr ? load<float, VEC>(a.weight + c) : ones<VEC>(1.f);
  const Pack<float, VEC> b = a.bias != nullptr ? load<float, VEC>(a.bias + c) : ones<VEC>(0.f);
  Pack<T, VEC> py;
#pragma unroll
  for (int j = 0; j < VEC; ++j) py.v[j] = from_float<T>((v[j] - mean) * rstd * w.v[j] + b.v[j]);
  store<T, VEC>(a.y + offset, py);
}

// Forward with the row cached in registers: ITEMS packs of VEC elements per thread.
template <typename T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kBlockThreads) layer_norm_fwd_cached(const FwdArgs<T> a) {
  __shared__ float smem[kBlockThreads / 32 * 32];
  const int t = blockDim.x, tx = threadIdx.x, C = a.C;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < a.rows;  // inactive threads still take part in row_sum's syncs
  const int64_t base = row * C;

  float v[ITEMS][VEC];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int c = (k * t + tx) * VEC;
    if (active && c < C) {
      load_input<T, VEC>(a, base + c, v[k]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += v[k][j];
    }
  }
  const float mean = row_sum(sum, smem) / C;

  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int c = (k * t + tx) * VEC;
    if (active && c < C) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sq += (v[k][j] - mean) * (v[k][j] - mean);
    }
  }
  const float rstd = rsqrtf(row_sum(sq, smem) / C + a.eps);

  if (!active) return;  // no sync below this line
  if (tx == 0) {
    a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int c = (k * t + tx) * VEC;
    if (c < C) store_output<T, VEC>(a, base + c, c, v[k], mean, rstd);
  }
}

// Forward for rows wider than the register cache: one block per row, the row read three
// times (sum, squared deviations, output); the later reads hit L1/L2.
template <typename T, int VEC>
__global__ void __launch_bounds__(kBlockThreads) layer_norm_fwd_uncached(const FwdArgs<T> a) {
  __shared__ float smem[32];
  const int t = blockDim.x, tx = threadIdx.x, C = a.C;
  const int64_t row = blockIdx.x;
  const int64_t base = row * C;
  float v[VEC];

  float sum = 0.f;
  for (int c = tx * VEC; c < C; c += t * VEC) {
    load_input<T, VEC>(a, base + c, v);  // writes s when fused; later passes re-read s
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum += v[j];
  }
  const float mean = row_sum(sum, smem) / C;

  // From here on read s (already x + residual) instead of x.
  const T* src = a.residual != nullptr ? a.s : a.x;
  float sq = 0.f;
  for (int c = tx * VEC; c < C; c += t * VEC) {
    const Pack<T, VEC> p = load<T, VEC>(src + base + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = to_float(p.v[j]) - mean;
      sq += d * d;
    }
  }
  const float rstd = rsqrtf(row_sum(sq, smem) / C + a.eps);
  if (tx == 0) {
    a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
  for (int c = tx * VEC; c < C; c += t * VEC) {
    const Pack<T, VEC> p = load<T, VEC>(src + base + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = to_float(p.v[j]);
    store_output<T, VEC>(a, base + c, c, v, mean, rstd);
  }
}

__host__ __device__ constexpr int ceil_div(int64_t a, int64_t b) {
  return static_cast<int>((a + b - 1) / b);
}
inline int next_pow2(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}
inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Threads per row: enough that each thread holds about `per_thread` packs, within [32, 256].
inline int threads_per_row(int n_packs, int per_thread) {
  return clamp_int(next_pow2(ceil_div(n_packs, per_thread)), 32, kBlockThreads);
}

template <typename T, int VEC, int ITEMS>
void launch_fwd_cached(const FwdArgs<T>& a, int t, cudaStream_t stream) {
  const dim3 block(t, kBlockThreads / t);
  const int64_t grid = (a.rows + block.y - 1) / block.y;
  layer_norm_fwd_cached<T, VEC, ITEMS><<<static_cast<unsigned>(grid), block, 0, stream>>>(a);
}

template <typename T, int VEC>
cudaError_t forward_dispatch(const FwdArgs<T>& a, cudaStream_t stream) {
  const int n_packs = a.C / VEC;  // exact: VEC > 1 only when C % VEC == 0
  const int t = threads_per_row(n_packs, 4);
  const int items = next_pow2(ceil_div(n_packs, t));
  if ((a.rows + kBlockThreads / t - 1) / (kBlockThreads / t) > INT_MAX) return cudaErrorInvalidValue;
  // Register-cache sizes that are instantiated (each one costs build time): 2, 4 or 8 packs
  // per thread for 16-byte packs, only 4 for the scalar path (widths that are not a
  // multiple of the pack); a smaller need runs the next size up, bounds-checked.
  bool cached = true;
  if constexpr (VEC > 1) {
    if (items <= 2) launch_fwd_cached<T, VEC, 2>(a, t, stream);
    else if (items <= 4) launch_fwd_cached<T, VEC, 4>(a, t, stream);
    else if (items <= 8) launch_fwd_cached<T, VEC, 8>(a, t, stream);
    else cached = false;
  } else {
    if (items <= 4) launch_fwd_cached<T, VEC, 4>(a, t, stream);
    else cached = false;
  }
  if (!cached) {
    if (a.rows > INT_MAX) return cudaErrorInvalidValue;
    layer_norm_fwd_uncached<T, VEC><<<static_cast<unsigned>(a.rows), kBlockThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

inline bool aligned(const void* p, int bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename T>
cudaError_t forward_typed(const void* x, const void* residual, void* s_out, const float* weight,
                          const float* bias, void* y, float* mean, float* rstd, int64_t rows,
                          int C, float eps, cudaStream_t stream) {
  const FwdArgs<T> a{static_cast<const T*>(x), static_cast<const T*>(residual),
                     static_cast<T*>(s_out), weight, bias, static_cast<T*>(y), mean, rstd,
                     rows, C, eps};
  constexpr int VEC = 16 / sizeof(T);
  const bool vectorize = C % VEC == 0 && aligned(x, 16) && aligned(residual, 16) &&
                         aligned(s_out, 16) && aligned(y, 16) &&
                         aligned(weight, 4 * VEC) && aligned(bias, 4 * VEC);
  return vectorize ? forward_dispatch<T, VEC>(a, stream) : forward_dispatch<T, 1>(a, stream);
}

// ------------------------------------------------------------------------------------------
// backward

template <typename T> struct BwdArgs {
  const T* dy;
  const T* x;
  const float* weight;  // null: all ones
  const float* mean;
  const float* rstd;
  T* dx;
  float* partial_dweight;  // (n_partials, C): one row of partial sums per block
  float* partial_dbias;
  int64_t rows;
  int C;
};

// Writes one row of partial sums: the accumulators of the columns each thread owns, summed
// over the block's rows in the order ty = 0, 1, ... (cross_rows: kBlockThreads * ITEMS * VEC).
// Must be reached by all threads of the block.
template <int VEC, int ITEMS>
__device__ __forceinline__ void write_partials(const float (&acc)[ITEMS][VEC], float* out,
                                               float* cross_rows, int C) {
  const int t = blockDim.x, tx = threadIdx.x, ty = threadIdx.y, rows_per_block = blockDim.y;
  constexpr int E = ITEMS * VEC;
  if (rows_per_block > 1) {
    __syncthreads();  // cross_rows is free
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) cross_rows[(ty * t + tx) * E + k * VEC + j] = acc[k][j];
    }
    __syncthreads();
  }
  if (ty != 0) return;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int c = (k * t + tx) * VEC;
    if (c < C) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        float total = acc[k][j];
        for (int r = 1; r < rows_per_block; ++r) total += cross_rows[(r * t + tx) * E + k * VEC + j];
        out[c + j] = total;
      }
    }
  }
}

// Backward with x and dy cached in registers; the block walks a fixed set of rows
// (blockIdx.x * rows_per_block + ty, then every gridDim.x * rows_per_block), accumulating the
// parameter gradients of the columns it owns, and writes one row of partial sums.
template <typename T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kBlockThreads) layer_norm_bwd_cached(const BwdArgs<T> a) {
  __shared__ float smem[kBlockThreads / 32 * 32];
  __shared__ float cross_rows[kBlockThreads * ITEMS * VEC];  // to sum accumulators over ty
  const int t = blockDim.x, tx = threadIdx.x, ty = threadIdx.y, C = a.C;
  const int rows_per_block = blockDim.y;

  float acc_dw[ITEMS][VEC], acc_db[ITEMS][VEC];
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc_dw[k][j] = acc_db[k][j] = 0.f;
  }

  // row0 is the same for the whole block, so every thread runs the same iterations (syncs)
  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_block; row0 < a.rows;
       row0 += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    const int64_t row = row0 + ty;
    const bool active = row < a.rows;
    const int64_t base = row * C;
    const float mean = active ? a.mean[row] : 0.f;
    const float rstd = active ? a.rstd[row] : 0.f;

    float xhat[ITEMS][VEC], dy[ITEMS][VEC];
    float sum_gx = 0.f, sum_g = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int c = (k * t + tx) * VEC;
      const bool valid = active && c < C;
      Pack<T, VEC> px, pdy;
      Pack<float, VEC> w = ones<VEC>(1.f);
      if (valid) {
        px = load<T, VEC>(a.x + base + c);
        pdy = load<T, VEC>(a.dy + base + c);
        if (a.weight != nullptr) w = load<float, VEC>(a.weight + c);
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xhat[k][j] = valid ? (to_float(px.v[j]) - mean) * rstd : 0.f;
        dy[k][j] = valid ? to_float(pdy.v[j]) : 0.f;
        const float g = dy[k][j] * w.v[j];
        sum_gx += g * xhat[k][j];
        sum_g += g;
        acc_dw[k][j] += dy[k][j] * xhat[k][j];
        acc_db[k][j] += dy[k][j];
      }
    }
    const float mean_gx = row_sum(sum_gx, smem) / C;
    const float mean_g = row_sum(sum_g, smem) / C;
    if (active) {
#pragma unroll
      for (int k = 0; k < ITEMS; ++k) {
        const int c = (k * t + tx) * VEC;
        if (c < C) {
          const Pack<float, VEC> w =
              a.weight != nullptr ? load<float, VEC>(a.weight + c) : ones<VEC>(1.f);
          Pack<T, VEC> pdx;
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            pdx.v[j] = from_float<T>(rstd * (dy[k][j] * w.v[j] - mean_g - xhat[k][j] * mean_gx));
          }
          store<T, VEC>(a.dx + base + c, pdx);
        }
      }
    }
  }

  // Sum the accumulators of the block's rows (ty = 0 .. rows_per_block - 1, in that order)
  // and write this block's partial sums.
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * C;
  write_partials<VEC, ITEMS>(acc_dw, a.partial_dweight + offset, cross_rows, C);
  write_partials<VEC, ITEMS>(acc_db, a.partial_dbias + offset, cross_rows, C);
}

// dx for rows wider than the register cache: one block per row, x and dy read twice.
template <typename T, int VEC>
__global__ void __launch_bounds__(kBlockThreads) layer_norm_bwd_dx_uncached(const BwdArgs<T> a) {
  __shared__ float smem[32];
  const int t = blockDim.x, tx = threadIdx.x, C = a.C;
  const int64_t row = blockIdx.x;
  const int64_t base = row * C;
  const float mean = a.mean[row], rstd = a.rstd[row];

  float sum_gx = 0.f, sum_g = 0.f;
  for (int c = tx * VEC; c < C; c += t * VEC) {
    const Pack<T, VEC> px = load<T, VEC>(a.x + base + c);
    const Pack<T, VEC> pdy = load<T, VEC>(a.dy + base + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float w = a.weight != nullptr ? a.weight[c + j] : 1.f;
      const float g = to_float(pdy.v[j]) * w;
      sum_gx += g * (to_float(px.v[j]) - mean) * rstd;
      sum_g += g;
    }
  }
  const float mean_gx = row_sum(sum_gx, smem) / C;
  const float mean_g = row_sum(sum_g, smem) / C;
  for (int c = tx * VEC; c < C; c += t * VEC) {
    const Pack<T, VEC> px = load<T, VEC>(a.x + base + c);
    const Pack<T, VEC> pdy = load<T, VEC>(a.dy + base + c);
    Pack<T, VEC> pdx;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float w = a.weight != nullptr ? a.weight[c + j] : 1.f;
      const float xhat = (to_float(px.v[j]) - mean) * rstd;
      pdx.v[j] = from_float<T>(rstd * (to_float(pdy.v[j]) * w - mean_g - xhat * mean_gx));
    }
    store<T, VEC>(a.dx + base + c, pdx);
  }
}

// Partial parameter gradients for wide rows, column-wise: block (32, 8) covers 32 columns
// and row chunk blockIdx.y; the 8 thread rows stride through the chunk, then are summed in
// order 0..7.
template <typename T>
__global__ void layer_norm_bwd_param_partials(const BwdArgs<T> a) {
  __shared__ float s_dw[8][33], s_db[8][33];  // +1: no bank conflicts on the column reads
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * 32 + tx;
  const int64_t chunk = (a.rows + gridDim.y - 1) / gridDim.y;
  const int64_t start = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = start + chunk < a.rows ? start + chunk : a.rows;
  float dw = 0.f, db = 0.f;
  if (c < a.C) {
    for (int64_t row = start + ty; row < end; row += 8) {
      const int64_t i = row * a.C + c;
      const float dy = to_float(a.dy[i]);
      dw += dy * (to_float(a.x[i]) - a.mean[row]) * a.rstd[row];
      db += dy;
    }
  }
  s_dw[ty][tx] = dw;
  s_db[ty][tx] = db;
  __syncthreads();
  if (ty == 0 && c < a.C) {
    for (int r = 1; r < 8; ++r) {
      dw += s_dw[r][tx];
      db += s_db[r][tx];
    }
    a.partial_dweight[static_cast<int64_t>(blockIdx.y) * a.C + c] = dw;
    a.partial_dbias[static_cast<int64_t>(blockIdx.y) * a.C + c] = db;
  }
}

// Second stage: dweight[c] = sum over p of partial_dweight[p][c] (same for dbias), in a
// fixed order. Block (32, 8): 32 columns; the 8 thread rows stride over p, then are summed
// in order 0..7. n_partials may be 0 (no rows): the gradients are then zeros.
__global__ void layer_norm_param_grad_reduce(const float* partial_dweight,
                                             const float* partial_dbias, int n_partials, int C,
                                             float* dweight, float* dbias) {
  __shared__ float s_dw[8][33], s_db[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * 32 + tx;
  float dw = 0.f, db = 0.f;
  if (c < C) {
    for (int p = ty; p < n_partials; p += 8) {
      dw += partial_dweight[static_cast<int64_t>(p) * C + c];
      db += partial_dbias[static_cast<int64_t>(p) * C + c];
    }
  }
  s_dw[ty][tx] = dw;
  s_db[ty][tx] = db;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int r = 1; r < 8; ++r) {
      dw += s_dw[r][tx];
      db += s_db[r][tx];
    }
    if (dweight != nullptr) dweight[c] = dw;
    if (dbias != nullptr) dbias[c] = db;
  }
}

// At most this many partial rows (blocks) per multiprocessor: 8 blocks of 256 threads fill
// one SM (2048 threads), so more would only add reduction work.
constexpr int kMaxPartialsPerSm = 8;

inline int max_partials(int64_t rows, int num_sms) {
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxPartialsPerSm;
  return static_cast<int>(rows < cap ? rows : cap);
}

// Returns the number of partial rows written, or -1 on a launch error.
template <typename T, int VEC, int ITEMS>
int launch_bwd_cached(const BwdArgs<T>& a, int t, int num_sms, cudaStream_t stream) {
  const dim3 block(t, kBlockThreads / t);
  // resident blocks per SM: a property of the compiled kernel, asked once per instantiation
  static const int blocks_per_sm = [] {
    int n = 1;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, layer_norm_bwd_cached<T, VEC, ITEMS>,
                                                  kBlockThreads, 0);
    return clamp_int(n, 1, kMaxPartialsPerSm);
  }();
  const int64_t needed = (a.rows + block.y - 1) / block.y;
  const int64_t resident = static_cast<int64_t>(num_sms) * blocks_per_sm;
  const int grid = static_cast<int>(needed < resident ? needed : resident);
  layer_norm_bwd_cached<T, VEC, ITEMS><<<grid, block, 0, stream>>>(a);
  return grid;
}

template <typename T, int VEC>
cudaError_t backward_dispatch(const BwdArgs<T>& a, float* dweight, float* dbias, int num_sms,
                              cudaStream_t stream) {
  // keep x, dy and the two accumulators within 4 * 32 floats per thread
  constexpr int kMaxBwdItems = 32 / VEC;
  const int n_packs = a.C / VEC;
  const int t = threads_per_row(n_packs, 2);
  const int items = next_pow2(ceil_div(n_packs, t));
  int n_partials = 0;
  if (a.rows > 0) {
    // instantiated sizes as in forward_dispatch; 8 packs only where 8 * VEC <= 32
    if constexpr (VEC > 1) {
      if (items <= 2) n_partials = launch_bwd_cached<T, VEC, 2>(a, t, num_sms, stream);
      else if (items <= 4) n_partials = launch_bwd_cached<T, VEC, 4>(a, t, num_sms, stream);
      if constexpr (kMaxBwdItems >= 8) {
        if (items > 4 && items <= 8) n_partials = launch_bwd_cached<T, VEC, 8>(a, t, num_sms, stream);
      }
    } else {
      if (items <= 4) n_partials = launch_bwd_cached<T, VEC, 4>(a, t, num_sms, stream);
    }
    if (n_partials == 0) {  // too wide for the register cache
      if (a.rows > INT_MAX) return cudaErrorInvalidValue;
      layer_norm_bwd_dx_uncached<T, VEC>
          <<<static_cast<unsigned>(a.rows), kBlockThreads, 0, stream>>>(a);
      // the parameter gradients column-wise, over about one row chunk per SM
      n_partials = max_partials(a.rows, num_sms) / kMaxPartialsPerSm;
      if (n_partials < 1) n_partials = 1;
      const dim3 grid(ceil_div(a.C, 32), n_partials);
      layer_norm_bwd_param_partials<T><<<grid, dim3(32, 8), 0, stream>>>(a);
    }
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  layer_norm_param_grad_reduce<<<ceil_div(a.C, 32), dim3(32, 8), 0, stream>>>(
      a.partial_dweight, a.partial_dbias, n_partials, a.C, dweight, dbias);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_typed(const void* dy, const void* x, const float* weight, const float* mean,
                           const float* rstd, void* dx, float* dweight, float* dbias,
                           float* workspace, int64_t rows, int C, int num_sms,
                           cudaStream_t stream) {
  const int64_t n_partials = max_partials(rows, num_sms);
  const BwdArgs<T> a{static_cast<const T*>(dy), static_cast<const T*>(x), weight, mean, rstd,
                     static_cast<T*>(dx), workspace, workspace + n_partials * C, rows, C};
  constexpr int VEC = 16 / sizeof(T);
  const bool vectorize = C % VEC == 0 && aligned(dy, 16) && aligned(x, 16) && aligned(dx, 16) &&
                         aligned(weight, 4 * VEC);
  return vectorize ? backward_dispatch<T, VEC>(a, dweight, dbias, num_sms, stream)
                   : backward_dispatch<T, 1>(a, dweight, dbias, num_sms, stream);
}

}  // namespace

cudaError_t layer_norm_forward(DType dtype, const void* x, const void* residual, void* s_out,
                               const float* weight, const float* bias, void* y, float* mean,
                               float* rstd, int64_t rows, int C, float eps, cudaStream_t stream) {
  if (C < 1 || C > kLayerNormMaxWidth || rows < 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  switch (dtype) {
    case DType::Float32:
      return forward_typed<float>(x, residual, s_out, weight, bias, y, mean, rstd, rows, C, eps, stream);
    case DType::Float16:
      return forward_typed<__half>(x, residual, s_out, weight, bias, y, mean, rstd, rows, C, eps, stream);
    case DType::BFloat16:
      return forward_typed<__nv_bfloat16>(x, residual, s_out, weight, bias, y, mean, rstd, rows, C,
                                          eps, stream);
  }
  return cudaErrorInvalidValue;
}

int64_t layer_norm_backward_workspace(int64_t rows, int C, int num_sms) {
  return 2 * static_cast<int64_t>(max_partials(rows, num_sms)) * C;
}

cudaError_t layer_norm_backward(DType dtype, const void* dy, const void* x, const float* weight,
                                const float* mean, const float* rstd, void* dx, float* dweight,
                                float* dbias, float* workspace, int64_t rows, int C, int num_sms,
                                cudaStream_t stream) {
  if (C < 1 || C > kLayerNormMaxWidth || rows < 0 || num_sms < 1) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::Float32:
      return backward_typed<float>(dy, x, weight, mean, rstd, dx, dweight, dbias, workspace, rows,
                                   C, num_sms, stream);
    case DType::Float16:
      return backward_typed<__half>(dy, x, weight, mean, rstd, dx, dweight, dbias, workspace,
                                    rows, C, num_sms, stream);
    case DType::BFloat16:
      return backward_typed<__nv_bfloat16>(dy, x, weight, mean, rstd, dx, dweight, dbias,
                                           workspace, rows, C, num_sms, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace toykernels
