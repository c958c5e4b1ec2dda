// Stand-in for <mma.h> on the host: nvcuda::wmma with 16x16x16 fragments of __half,
// __nv_bfloat16 (matrix_a, matrix_b) and float (accumulator), run by the emulator (emu.h).
//
// Every function is warp-synchronous, as CUDA documents them ("waits until all warp lanes have
// arrived"): a lane waits until all 32 lanes of its warp have called the same function
// (emu::warp_collective, with the same pointer, ldm and layout, else an emulator error). Then
// mma_sync computes every lane's D from all lanes' A, B and C at once, while a load or store
// moves each lane's own elements when that lane goes on: the lanes do that in any order, so a
// lane that reads what another lane stores needs a __syncwarp in between, as on a GPU.
// CUDA leaves the mapping of matrix elements to the lanes' x[]
// unspecified; here element i of lane l holds matrix element kScramble(8 l + i) (row-major
// index), a permutation chosen so that code which assumes any particular mapping goes wrong.
// mma_sync multiplies exactly (16-bit products are exact in float) and accumulates in fp32.
//
// Checked as CUDA documents: the pointer of a load or store is 256-bit (32-byte) aligned and
// ldm is a multiple of 16 bytes (8 16-bit elements or 4 floats).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 WMMA fragments are modelled");
  static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                     : (std::is_same<T, __half>::value ||
                                                        std::is_same<T, __nv_bfloat16>::value),
                "WMMA fragments modelled: __half / __nv_bfloat16 A and B, float accumulators");

 public:
  enum { num_elements = 8, num_storage_elements = 8 };
  using element_type = T;
  using storage_element_type = T;
  T x[num_elements];
};

namespace detail {

// The matrix element (row-major index in the 16x16 matrix) that x[i] of lane `lane` holds.
inline int element(int lane, int i) { return ((lane * 8 + i) * 37 + 11) & 255; }

inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> T from(float v);
template <> inline float from<float>(float v) { return v; }
template <> inline __half from<__half>(float v) { return __float2half_rn(v); }
template <> inline __nv_bfloat16 from<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> struct MemoryArgs {
  T* x;           // the lane's fragment elements
  const void* p;  // the matrix in memory
  unsigned ldm;
  int layout;       // 0: row-major, 1: column-major (of the matrix in memory)
  bool ok = false;  // set for every lane once the warp has arrived with valid arguments
};

// All lanes passed the same pointer, ldm and layout, and they are valid; else an emulator error.
template <typename T> bool same_and_valid(void* const* lanes, const char* what) {
  const auto* a = static_cast<const MemoryArgs<T>*>(lanes[0]);
  for (int l = 1; l < 32; ++l) {
    const auto* b = static_cast<const MemoryArgs<T>*>(lanes[l]);
    if (b->p != a->p || b->ldm != a->ldm || b->layout != a->layout) {
      emu::error("%s: %s with a different pointer, ldm or layout in lanes 0 and %d (%p, %u; %p, %u)",
                 emu::collective_context(), what, l, a->p, a->ldm, b->p, b->ldm);
      return false;
    }
  }
  if (reinterpret_cast<uintptr_t>(a->p) % 32 != 0 || a->ldm % (16 / sizeof(T)) != 0) {
    emu::error("%s: %s at %p with ldm %u: the pointer must be 32-byte aligned and ldm a "
               "multiple of %zu elements",
               emu::collective_context(), what, a->p, a->ldm, 16 / sizeof(T));
    return false;
  }
  return true;
}

// Offset in memory of matrix element (r, c) (row-major index e = 16 r + c).
inline size_t offset(int e, unsigned ldm, int layout) {
  const int r = e / 16, c = e % 16;
  return layout == 0 ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r;
}

// Offset in memory of the running lane's element i.
inline size_t mine(int i, unsigned ldm, int layout) {
  return offset(element(emu::lane(), i), ldm, layout);
}

template <typename T> void complete_load(void* const* lanes) {
  const bool ok = same_and_valid<T>(lanes, "wmma::load_matrix_sync");
  for (int l = 0; l < 32; ++l) static_cast<MemoryArgs<T>*>(lanes[l])->ok = ok;
}

template <typename T> void complete_store(void* const* lanes) {
  const bool ok = same_and_valid<T>(lanes, "wmma::store_matrix_sync");
  for (int l = 0; l < 32; ++l) static_cast<MemoryArgs<T>*>(lanes[l])->ok = ok;
}

template <typename T> struct FillArgs {
  T* x;
  T value;
};

template <typename T> void complete_fill(void* const* lanes) {
  const auto* first = static_cast<const FillArgs<T>*>(lanes[0]);
  for (int l = 0; l < 32; ++l) {
    const auto* a = static_cast<const FillArgs<T>*>(lanes[l]);
    if (std::memcmp(&a->value, &first->value, sizeof(T)) != 0) {
      emu::error("%s: wmma::fill_fragment with different values in lanes 0 and %d",
                 emu::collective_context(), l);
      return;
    }
  }
}

template <typename TA, typename TB> struct MmaArgs {
  float* d;
  const TA* a;
  const TB* b;
  const float* c;
};

// D = A B + C, 16x16x16: products exact in float, sums in fp32, k in order.
template <typename TA, typename TB> void complete_mma(void* const* lanes) {
  float a[256], b[256], c[256];
  for (int l = 0; l < 32; ++l) {
    const auto* m = static_cast<const MmaArgs<TA, TB>*>(lanes[l]);
    for (int i = 0; i < 8; ++i) {
      const int e = element(l, i);
      a[e] = as_float(m->a[i]);
      b[e] = as_float(m->b[i]);
      c[e] = m->c[i];
    }
  }
  float d[256];
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 16; ++n) {
      float acc = c[r * 16 + n];
      for (int k = 0; k < 16; ++k) acc += a[r * 16 + k] * b[k * 16 + n];
      d[r * 16 + n] = acc;
    }
  }
  for (int l = 0; l < 32; ++l) {  // after every lane's c has been read: d may be c
    float* out = static_cast<const MmaArgs<TA, TB>*>(lanes[l])->d;
    for (int i = 0; i < 8; ++i) out[i] = d[element(l, i)];
  }
}

template <typename Layout> constexpr int layout_of() {
  static_assert(std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value,
                "matrix_a / matrix_b fragments need row_major or col_major");
  return std::is_same<Layout, row_major>::value ? 0 : 1;
}

}  // namespace detail

template <typename Use, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const V& value) {
  detail::FillArgs<T> args{f.x, static_cast<T>(value)};
  emu::warp_collective(emu::WarpOp::WmmaFill, nullptr, &args, &detail::complete_fill<T>);
  for (int i = 0; i < 8; ++i) f.x[i] = args.value;
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load needs a layout_t");
  detail::MemoryArgs<T> args{f.x, p, ldm, detail::layout_of<Layout>()};
  emu::warp_collective(emu::WarpOp::WmmaLoad, nullptr, &args, &detail::complete_load<T>);
  if (!args.ok) return;
  for (int i = 0; i < 8; ++i) f.x[i] = p[detail::mine(i, ldm, args.layout)];
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  detail::MemoryArgs<float> args{f.x, p, ldm, layout == mem_row_major ? 0 : 1};
  emu::warp_collective(emu::WarpOp::WmmaLoad, nullptr, &args, &detail::complete_load<float>);
  if (!args.ok) return;
  for (int i = 0; i < 8; ++i) f.x[i] = p[detail::mine(i, ldm, args.layout)];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::MemoryArgs<float> args{const_cast<float*>(f.x), p, ldm, layout == mem_row_major ? 0 : 1};
  emu::warp_collective(emu::WarpOp::WmmaStore, nullptr, &args, &detail::complete_store<float>);
  if (!args.ok) return;
  for (int i = 0; i < 8; ++i) p[detail::mine(i, ldm, args.layout)] = f.x[i];
}

template <typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  static_assert(std::is_same<TA, TB>::value, "A and B of one element type");
  detail::MmaArgs<TA, TB> args{d.x, a.x, b.x, c.x};
  emu::warp_collective(emu::WarpOp::WmmaMma, nullptr, &args, &detail::complete_mma<TA, TB>);
}

}  // namespace wmma
}  // namespace nvcuda
