// The causal-attention launchers: a plain C++ API over raw device pointers, no torch headers,
// so attention.cu compiles with nvcc alone and the torch binding (attention_bindings.cpp)
// only checks tensors and calls these.
//
// Layout: q, out, dout, dq are (BH, Tq, D); k, v, dk, dv are (BH, Tk, D); lse and delta are
// fp32 (BH, Tq). All row-major, contiguous, 16-byte aligned. 1 <= Tq <= Tk. The causal mask is
// aligned to the bottom right: query i sees keys 0 .. i + (Tk - Tq).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace toykernels {

enum class AttnDType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Head dims with a compiled kernel (32, 64, 128); others run the torch fallback.
bool attention_head_dim_supported(int D);

// out = softmax(mask(q k^T * scale)) v, and lse = the per-row logsumexp of the scaled scores.
cudaError_t attention_forward(AttnDType dtype, const void* q, const void* k, const void* v, void* out,
                              float* lse, int64_t BH, int Tq, int Tk, int D, float scale,
                              cudaStream_t stream);

// dq, dk, dv from dout, recomputing the probabilities from q, k and lse. delta is fp32 scratch
// of BH * Tq floats (it receives rowsum(dout * out)).
cudaError_t attention_backward(AttnDType dtype, const void* dout, const void* q, const void* k,
                               const void* v, const void* out, const float* lse, float* delta,
                               void* dq, void* dk, void* dv, int64_t BH, int Tq, int Tk, int D,
                               float scale, cudaStream_t stream);

}  // namespace toykernels
