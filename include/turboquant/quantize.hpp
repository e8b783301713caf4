// Quantization of one rotated vector and its inverse, shared by the CPU path and the kernels'
// tests. The arithmetic order here (float sums, one reciprocal, then multiplies) is the order the
// kernels use, so codes agree except where a value ties a boundary to the last bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"

namespace turboquant {

// The stored scale of a vector: s from the codec's ScaleMode, given ||y||^2, <y, c> and ||c||^2
// (c = the chosen levels, unit-vector scale). A zero vector gets 0.
TQ_HOST_DEVICE inline float choose_scale(ScaleMode mode, float norm, float dot_uc,
                                         float levels_sq) noexcept {
  if (!(norm > 0.0f) || !(levels_sq > 0.0f)) return 0.0f;
  switch (mode) {
    case ScaleMode::kRawNorm: return norm;
    case ScaleMode::kNormPreserving: return norm / sqrtf(levels_sq);
    case ScaleMode::kLeastSquares: return norm * dot_uc / levels_sq;
  }
  return norm;
}

// Rounds a scale to its storage. fp16 saturates at +-65504 (never inf) and goes subnormal below
// 6.1e-5 (see README: pick fp32 norms for such data).
TQ_HOST_DEVICE inline float stored_scale(NormStorage storage, float s) noexcept {
  if (storage == NormStorage::kF32) return s;
  const float clamped = s > kHalfMax ? kHalfMax : (s < -kHalfMax ? -kHalfMax : s);
  return half_bits_to_float(float_to_half_bits(clamped));
}

TQ_HOST_DEVICE inline void write_scale(NormStorage storage, void* scales, int64_t i, float s) noexcept {
  if (storage == NormStorage::kF32) {
    static_cast<float*>(scales)[i] = s;
  } else {
    const float clamped = s > kHalfMax ? kHalfMax : (s < -kHalfMax ? -kHalfMax : s);
    static_cast<uint16_t*>(scales)[i] = float_to_half_bits(clamped);
  }
}
TQ_HOST_DEVICE inline float read_scale(NormStorage storage, const void* scales, int64_t i) noexcept {
  return storage == NormStorage::kF32 ? static_cast<const float*>(scales)[i]
                                      : half_bits_to_float(static_cast<const uint16_t*>(scales)[i]);
}

// Quantizes y (already rotated, head_dim floats): writes head_dim indices, returns the scale
// (before storage rounding).
TQ_HOST_DEVICE inline float quantize_rotated(const CodecSpec& c, const float* y,
                                             uint8_t* indices) noexcept {
  float sum_sq = 0.0f;
  for (int32_t j = 0; j < c.head_dim; ++j) sum_sq += y[j] * y[j];
  const float norm = sqrtf(sum_sq);
  const float inv = norm > 0.0f ? 1.0f / norm : 0.0f;
  float dot_uc = 0.0f, levels_sq = 0.0f;
  for (int32_t j = 0; j < c.head_dim; ++j) {
    const float u = y[j] * inv;
    const int32_t idx = c.codebook.index_of(u);
    indices[j] = static_cast<uint8_t>(idx);
    const float level = c.codebook.levels[idx];
    dot_uc += u * level;
    levels_sq += level * level;
  }
  return choose_scale(c.scale, norm, dot_uc, levels_sq);
}

}  // namespace turboquant
