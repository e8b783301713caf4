// Bit packing of codebook indices: an LSB-first bit stream in coordinate order. Index i occupies
// bits [i * bits, i * bits + bits) of the byte array, bit 0 being the least significant bit of
// byte 0. For 4 bits, index 2j is the low nibble of byte j; for 2 bits, index 4j + k sits in bits
// 2k..2k+1 of byte j; for 3 bits, 8 indices fill 3 bytes; for 1 bit, index 8j + k is bit k of
// byte j. This is the Python library's layout (../shared/golden/README.md).
#pragma once

#include <cstdint>

#include "turboquant/numeric.hpp"

namespace turboquant {

// Packs count indices (each < 2^bits) into count * bits / 8 bytes; count * bits must be a
// multiple of 8.
TQ_HOST_DEVICE inline void pack_indices(const uint8_t* indices, int32_t count, int32_t bits,
                                        uint8_t* out) noexcept {
  const int32_t nbytes = count * bits / 8;
  for (int32_t b = 0; b < nbytes; ++b) out[b] = 0;
  for (int32_t i = 0; i < count; ++i) {
    const int32_t bit = i * bits;
    const uint32_t v = static_cast<uint32_t>(indices[i]) << (bit & 7);
    out[bit >> 3] = static_cast<uint8_t>(out[bit >> 3] | (v & 0xffu));
    if ((bit & 7) + bits > 8) out[(bit >> 3) + 1] = static_cast<uint8_t>(out[(bit >> 3) + 1] | (v >> 8));
  }
}

// Index i of a packed stream.
TQ_HOST_DEVICE inline uint32_t unpack_index(const uint8_t* packed, int32_t i, int32_t bits) noexcept {
  const int32_t bit = i * bits;
  uint32_t v = packed[bit >> 3];
  if ((bit & 7) + bits > 8) v |= static_cast<uint32_t>(packed[(bit >> 3) + 1]) << 8;
  return (v >> (bit & 7)) & ((1u << bits) - 1u);
}

TQ_HOST_DEVICE inline void unpack_indices(const uint8_t* packed, int32_t count, int32_t bits,
                                          uint8_t* indices) noexcept {
  for (int32_t i = 0; i < count; ++i) indices[i] = static_cast<uint8_t>(unpack_index(packed, i, bits));
}

}  // namespace turboquant
