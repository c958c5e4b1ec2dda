// Stand-in for <cuda_runtime.h> on the host: the types and calls that CUDA launchers use,
// answered by the emulator (emu.cpp). Only what the emulated sources need is here.
#pragma once

#include <cstddef>
#include <cstdint>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};

typedef struct CUstream_st* cudaStream_t;

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

namespace emu {
cudaError_t take_last_error();  // the launch error of the last launch, then cudaSuccess
cudaError_t peek_last_error();
int occupancy();  // blocks per SM that the occupancy query answers (emu::set_occupancy)
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes): at most
// 227 KB (sm_90), else cudaErrorInvalidValue
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
}  // namespace emu

inline cudaError_t cudaGetLastError() { return emu::take_last_error(); }
inline cudaError_t cudaPeekAtLastError() { return emu::peek_last_error(); }

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}

// There is no real occupancy without a GPU: the answer is a setting (emu::set_occupancy).
template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int /*block_size*/,
                                                          size_t /*dynamic_shared_bytes*/) {
  *blocks = emu::occupancy();
  return cudaSuccess;
}

// Only the dynamic shared memory limit is modelled; other attributes are refused.
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
