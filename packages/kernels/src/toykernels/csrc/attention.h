// The causal-attention launchers: a plain C++ API over raw device pointers, no torch headers,
// so attention.cu compiles with nvcc alone and the torch binding (attention_bindings.cpp)
// only checks tensors and calls these.
//
// Layout: q, out, dout, dq are (B, H, Tq, D); k, v, dk, dv are (B, H, Tk, D), each addressed
// through its own element strides along B, H and T (AttnStrides) with unit stride along D, so
// views (q, k, v transposed out of a fused QKV projection, k and v narrowed out of a longer KV
// cache) need no copy. Every row start must be 16-byte aligned: the data pointer and, for each
// dimension of size > 1, stride * element size are multiples of 16 bytes (the binding copies a
// tensor that is not). Outputs must not overlap each other or the inputs. lse and delta are
// fp32 (B, H, Tq), contiguous. 1 <= Tq <= Tk, 1 <= B * H <= 65535. The causal mask is aligned
// to the bottom right: query i sees keys 0 .. i + (Tk - Tq).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "dtype.h"

namespace toykernels {

// NOTE: the one DType (dtype.h) under the name the CUDA emulator's harness (tools/cuda_emu) uses.
using AttnDType = DType;

// Element strides of a (B, H, T, D) tensor along B, H and T; D has stride 1. Element
// (b, h, t, d) is at data[b * batch + h * head + t * time + d].
struct AttnStrides {
  int64_t batch, head, time;
};

// Head dims with a compiled kernel (32, 64, 128); others run the torch fallback.
bool attention_head_dim_supported(int D);

// out = softmax(mask(q k^T * scale)) v, and lse = the per-row logsumexp of the scaled scores.
cudaError_t attention_forward(DType dtype, const void* q, AttnStrides q_strides, const void* k,
                              AttnStrides k_strides, const void* v, AttnStrides v_strides, void* out,
                              AttnStrides out_strides, float* lse, int64_t B, int64_t H, int Tq, int Tk,
                              int D, float scale, cudaStream_t stream);

// dq, dk, dv from dout, recomputing the probabilities from q, k and lse. delta is fp32 scratch
// of B * H * Tq floats (it receives rowsum(dout * out)).
cudaError_t attention_backward(DType dtype, const void* dout, AttnStrides dout_strides, const void* q,
                               AttnStrides q_strides, const void* k, AttnStrides k_strides, const void* v,
                               AttnStrides v_strides, const void* out, AttnStrides out_strides,
                               const float* lse, float* delta, void* dq, AttnStrides dq_strides, void* dk,
                               AttnStrides dk_strides, void* dv, AttnStrides dv_strides, int64_t B,
                               int64_t H, int Tq, int Tk, int D, float scale, cudaStream_t stream);

}  // namespace toykernels
