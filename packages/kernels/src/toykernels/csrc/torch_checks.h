// What both torch bindings (layernorm_bindings.cpp, attention_bindings.cpp) check the same way:
// a failed argument check as one message naming the op and the argument (flash-attention's
// CHECK macros in flash_api.cpp do the same), the kernels' dtype enum of a tensor, and a
// launcher's CUDA error. Torch headers are fine here: only the bindings include this file, never
// a .cu file (those stay torch-free).

#pragma once

#include <torch/extension.h>

#include <cuda_runtime_api.h>

// "toykernels <op>: <name> <message...>" unless cond holds.
#define TOYKERNELS_CHECK_ARG(op, cond, name, ...) \
  TORCH_CHECK(cond, "toykernels ", op, ": ", name, " ", __VA_ARGS__)

namespace toykernels {

// The kernels' dtype of t: KernelDType is an op's enum (DType, AttnDType), each with Float32,
// Float16 and BFloat16.
template <typename KernelDType>
KernelDType kernel_dtype_of(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return KernelDType::Float32;
    case at::kHalf: return KernelDType::Float16;
    case at::kBFloat16: return KernelDType::BFloat16;
    default:
      TOYKERNELS_CHECK_ARG(op, false, name, "has dtype ", t.scalar_type(),
                           "; expected float32, float16 or bfloat16");
  }
  return KernelDType::Float32;  // unreachable
}

// A launcher's return value: cudaSuccess, or an error naming the op and the launch.
inline void check_launch(cudaError_t err, const char* op, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "toykernels ", op, ": ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace toykernels
