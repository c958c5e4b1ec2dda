// Stand-in for <cuda_bf16.h> on the host: __nv_bfloat16 as 16 raw bits (the top half of a
// float), __nv_bfloat162, and the conversions to and from float (round to nearest even). No
// arithmetic operators and no implicit conversions, as in a torch extension build
// (-D__CUDA_NO_BFLOAT16_CONVERSIONS__).
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t bits = static_cast<uint32_t>(h.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  __nv_bfloat16 h;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: a quiet NaN
    h.x = static_cast<uint16_t>(((bits >> 16) & 0x8000u) | 0x7fc0u);
    return h;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);  // to nearest, ties to even (inf stays inf)
  h.x = static_cast<uint16_t>(bits >> 16);
  return h;
}

inline __nv_bfloat16 __float2bfloat16(float v) { return __float2bfloat16_rn(v); }

// Two bfloat16 in 32 bits, x in the low half (the lower address).
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
