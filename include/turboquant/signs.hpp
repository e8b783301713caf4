// The RHT diagonal: a vector s in {+1,-1}^head_dim stored as bits (bit j set means s_j = -1).
//
// From a seed, the bits come from SplitMix64, a portable PRNG with exactly specified 64-bit
// arithmetic, so every platform derives the same signs:
//   state = seed ^ (0xD1B54A32D192ED03 * (stream + 1));
//   for w in 0..3: state += 0x9E3779B97F4A7C15; z = state;
//                  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//                  z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//                  words[w] = z ^ (z >> 31);
//   bit j of the vector is bit (j % 64) of words[j / 64]; bits at and above head_dim are zero.
// `stream` separates the keys' signs (kKeyStream) from the values' (kValueStream), so K and V of
// a layer, and different layers (different seeds), never share a rotation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "turboquant/numeric.hpp"

namespace turboquant {

inline constexpr int32_t kMaxHeadDim = 256;
inline constexpr int32_t kSignWords = kMaxHeadDim / 64;
inline constexpr uint64_t kKeyStream = 0;
inline constexpr uint64_t kValueStream = 1;

struct SignBits {
  uint64_t words[kSignWords] = {};  // bit j set: s_j = -1

  // +1.0f or -1.0f for coordinate j.
  TQ_HOST_DEVICE float sign(int32_t j) const noexcept {
    return ((words[j >> 6] >> (j & 63)) & 1u) ? -1.0f : 1.0f;
  }
  TQ_HOST_DEVICE bool negative(int32_t j) const noexcept {
    return ((words[j >> 6] >> (j & 63)) & 1u) != 0u;
  }
  // 32 sign bits of coordinates [32 * k, 32 * k + 32).
  TQ_HOST_DEVICE uint32_t word32(int32_t k) const noexcept {
    return static_cast<uint32_t>(words[k >> 1] >> ((k & 1) * 32));
  }
  friend constexpr bool operator==(const SignBits& a, const SignBits& b) noexcept {
    for (int32_t w = 0; w < kSignWords; ++w)
      if (a.words[w] != b.words[w]) return false;
    return true;
  }
};

[[nodiscard]] constexpr uint64_t splitmix64_next(uint64_t& state) noexcept {
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Sign bits of a head_dim-vector from (seed, stream), as documented above.
[[nodiscard]] constexpr SignBits signs_from_seed(uint64_t seed, int32_t head_dim,
                                                 uint64_t stream = kKeyStream) noexcept {
  SignBits s{};
  uint64_t state = seed ^ (0xD1B54A32D192ED03ull * (stream + 1));
  for (int32_t w = 0; w < kSignWords; ++w) {
    const uint64_t bits = splitmix64_next(state);
    const int32_t first = w * 64;
    if (first >= head_dim) break;
    const int32_t count = head_dim - first >= 64 ? 64 : head_dim - first;
    s.words[w] = count == 64 ? bits : (bits & ((uint64_t{1} << count) - 1));
  }
  return s;
}

// Sign bits from caller-supplied values (any negative value means -1), e.g. another library's
// diagonal. values has head_dim entries.
[[nodiscard]] inline SignBits signs_from_values(const float* values, int32_t head_dim) noexcept {
  SignBits s{};
  for (int32_t j = 0; j < head_dim && j < kMaxHeadDim; ++j)
    if (values[j] < 0.0f) s.words[j >> 6] |= uint64_t{1} << (j & 63);
  return s;
}

}  // namespace turboquant
