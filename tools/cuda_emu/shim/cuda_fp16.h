// Stand-in for <cuda_fp16.h> on the host: __half as 16 raw bits, __half2, and the
// conversions to and from float, in software (IEEE binary16, round to nearest even), so no
// compiler support for _Float16 is needed. No arithmetic operators and no implicit
// conversions: the same as a torch extension build, which compiles with
// -D__CUDA_NO_HALF_OPERATORS__ and -D__CUDA_NO_HALF_CONVERSIONS__.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t x;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16;
  const uint32_t exponent = (h.x >> 10) & 0x1fu, mantissa = h.x & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  uint32_t bits;
  if (exponent == 0x1f) bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
  else bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline __half __float2half_rn(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  __half h;
  if (magnitude > 0x7f800000u) {  // NaN: a quiet NaN
    h.x = sign | 0x7e00u;
  } else if (magnitude >= 0x477ff000u) {  // >= 65520, halfway above the largest half: inf
    h.x = sign | 0x7c00u;
  } else if (magnitude >= 0x38800000u) {  // normal half (>= 2^-14): rebias, round 13 bits away
    uint32_t r = magnitude - ((127u - 15u) << 23);
    r += 0xfffu + ((r >> 13) & 1u);  // to nearest, ties to even; a carry bumps the exponent
    h.x = static_cast<uint16_t>(sign | (r >> 13));
  } else {  // subnormal half or zero: the multiple of 2^-24, rounded to nearest even
    float magnitude_f;
    std::memcpy(&magnitude_f, &magnitude, sizeof magnitude_f);
    const float multiple = std::nearbyint(std::ldexp(magnitude_f, 24));  // 0 .. 1024 (2^-14)
    h.x = static_cast<uint16_t>(sign | static_cast<uint16_t>(multiple));
  }
  return h;
}

inline __half __float2half(float v) { return __float2half_rn(v); }

// Two halves in 32 bits, x in the low half (the lower address).
struct alignas(4) __half2 {
  __half x, y;
};

inline __half2 __floats2half2_rn(float lo, float hi) {
  return __half2{__float2half_rn(lo), __float2half_rn(hi)};
}
