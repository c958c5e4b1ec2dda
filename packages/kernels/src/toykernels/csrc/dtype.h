// The element dtype every launcher takes (layernorm.h, attention.h): host code, no torch and no
// CUDA headers, so the launchers' headers stay includable by nvcc, the bindings and the CUDA
// emulator alike.
#pragma once

namespace toykernels {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

}  // namespace toykernels
