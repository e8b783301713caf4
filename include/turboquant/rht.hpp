// The randomized Hadamard transform R = H diag(s) / sqrt(d): y = R x = H (s * x) / sqrt(d),
// x = R^T y = s * (H y) / sqrt(d). H is the natural-order (Sylvester) Walsh-Hadamard matrix,
// H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]; d is a power of two (64, 128, 256).
//
// The butterflies run in the fixed stage order h = 1, 2, 4, ..., d/2 and the 1/sqrt(d) factor is
// one multiply at the end, so the CPU path and the kernels round identically.
#pragma once

#include <cmath>
#include <cstdint>

#include "turboquant/numeric.hpp"
#include "turboquant/signs.hpp"

namespace turboquant {

// 1/sqrt(d) as a float for d in {64, 128, 256} (any power of two).
TQ_HOST_DEVICE constexpr float inv_sqrt_pow2(int32_t d) noexcept {
  // d = 2^k: 2^(-k/2); odd k multiplies by 1/sqrt(2).
  int32_t k = 0;
  while ((1 << k) < d) ++k;
  float v = 1.0f;
  for (int32_t i = 0; i < k / 2; ++i) v *= 0.5f;
  return (k & 1) ? v * 0.70710678118654752440f : v;
}

// The 1/sqrt(d) factor in T's precision (float: the exact float of inv_sqrt_pow2).
template <typename T>
TQ_HOST_DEVICE T rht_scale(int32_t d) noexcept {
  if constexpr (sizeof(T) > sizeof(float)) return T(1) / std::sqrt(static_cast<T>(d));
  return static_cast<T>(inv_sqrt_pow2(d));
}

// In-place unnormalised Walsh-Hadamard transform of n = 2^k values (natural order).
template <typename T>
TQ_HOST_DEVICE void walsh_hadamard(T* x, int32_t n) noexcept {
  for (int32_t h = 1; h < n; h <<= 1)
    for (int32_t i = 0; i < n; i += 2 * h)
      for (int32_t j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

// y = H (s * x) / sqrt(d), in place.
template <typename T>
TQ_HOST_DEVICE void rht_forward(T* x, int32_t d, const SignBits& signs) noexcept {
  for (int32_t j = 0; j < d; ++j)
    if (signs.negative(j)) x[j] = -x[j];
  walsh_hadamard(x, d);
  const T scale = rht_scale<T>(d);
  for (int32_t j = 0; j < d; ++j) x[j] *= scale;
}

// x = s * (H y) / sqrt(d), in place.
template <typename T>
TQ_HOST_DEVICE void rht_inverse(T* y, int32_t d, const SignBits& signs) noexcept {
  walsh_hadamard(y, d);
  const T scale = rht_scale<T>(d);
  for (int32_t j = 0; j < d; ++j) {
    y[j] *= scale;
    if (signs.negative(j)) y[j] = -y[j];
  }
}

}  // namespace turboquant
