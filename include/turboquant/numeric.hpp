// Scalar helpers shared by the CPU path and the kernels: the host/device qualifier, dtypes, and
// bit-exact fp16 / bf16 conversions (round to nearest even) that need no CUDA headers.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TQ_HOST_DEVICE __host__ __device__
#else
#define TQ_HOST_DEVICE
#endif

namespace turboquant {

// Element types of vectors going in and out of the codec and attention.
enum class DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

[[nodiscard]] constexpr int32_t dtype_bytes(DType t) noexcept { return t == DType::kF32 ? 4 : 2; }
[[nodiscard]] constexpr const char* to_string(DType t) noexcept {
  return t == DType::kF32 ? "f32" : t == DType::kF16 ? "f16" : t == DType::kBF16 ? "bf16" : "?";
}

TQ_HOST_DEVICE inline uint32_t float_bits(float f) noexcept {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
TQ_HOST_DEVICE inline float bits_float(uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE binary16 from binary32, round to nearest even; overflow gives +-inf, NaN stays NaN.
TQ_HOST_DEVICE inline uint16_t float_to_half_bits(float f) noexcept {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to zero
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14..24 for this range
    const uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half_way = 1u << (shift - 1);
    const uint32_t r = q + ((rem > half_way || (rem == half_way && (q & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t rebased = abs - (112u << 23);  // exponent bias 127 -> 15
  const uint32_t q = rebased >> 13;
  const uint32_t rem = rebased & 0x1fffu;
  const uint32_t r = q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ? 1u : 0u);
  return static_cast<uint16_t>(sign | r);
}

TQ_HOST_DEVICE inline float half_bits_to_float(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);  // mant * 2^-24
    return (sign != 0u) ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// bfloat16: the top half of binary32, round to nearest even; NaN stays NaN.
TQ_HOST_DEVICE inline uint16_t float_to_bf16_bits(float f) noexcept {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}
TQ_HOST_DEVICE inline float bf16_bits_to_float(uint16_t b) noexcept {
  return bits_float(static_cast<uint32_t>(b) << 16);
}

// The largest finite binary16 value; norms stored as fp16 saturate here (see README).
inline constexpr float kHalfMax = 65504.0f;

// Loads element i of a row of the given dtype as float (host reference path).
inline float load_as_float(const void* row, int64_t i, DType t) noexcept {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(row)[i];
    case DType::kF16: return half_bits_to_float(static_cast<const uint16_t*>(row)[i]);
    case DType::kBF16: return bf16_bits_to_float(static_cast<const uint16_t*>(row)[i]);
  }
  return 0.0f;
}
inline void store_from_float(void* row, int64_t i, DType t, float v) noexcept {
  switch (t) {
    case DType::kF32: static_cast<float*>(row)[i] = v; return;
    case DType::kF16: static_cast<uint16_t*>(row)[i] = float_to_half_bits(v); return;
    case DType::kBF16: static_cast<uint16_t*>(row)[i] = float_to_bf16_bits(v); return;
  }
}

}  // namespace turboquant
