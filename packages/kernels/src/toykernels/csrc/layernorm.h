// The LayerNorm launchers: a plain C++ API over raw device pointers, no torch headers,
// so layernorm.cu compiles with nvcc alone (about a second per arch) and the torch binding
// (layernorm_bindings.cpp) only checks tensors and calls these.
//
// All tensors are row-major (rows, C) and contiguous; weight/bias are fp32 (the binding
// converts them); mean/rstd are fp32 (rows,). Any C from 1 to 65536 and any rows >= 0.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "dtype.h"

namespace toykernels {

constexpr int kLayerNormMaxWidth = 65536;

// y = LayerNorm(x) (or of s = x + residual when residual is not null; s is then written to
// s_out). weight/bias may be null. Writes per-row mean and rstd for the backward.
cudaError_t layer_norm_forward(DType dtype, const void* x, const void* residual, void* s_out,
                               const float* weight, const float* bias, void* y, float* mean,
                               float* rstd, int64_t rows, int C, float eps, cudaStream_t stream);

// Floats of scratch space layer_norm_backward needs (the per-block partial sums of dweight
// and dbias) for this problem on a device with num_sms multiprocessors.
int64_t layer_norm_backward_workspace(int64_t rows, int C, int num_sms);

// dx per row; dweight = sum over rows of dy * xhat and dbias = sum over rows of dy, in fp32,
// reduced deterministically (fixed partitions, fixed order, no atomics). dweight/dbias may be
// null when not wanted. weight may be null (then it counts as all ones).
cudaError_t layer_norm_backward(DType dtype, const void* dy, const void* x, const float* weight,
                                const float* mean, const float* rstd, void* dx, float* dweight,
                                float* dbias, float* workspace, int64_t rows, int C, int num_sms,
                                cudaStream_t stream);

}  // namespace toykernels
