// Constants and small helpers shared by the device building blocks (needs nvcc).
#pragma once

#include <cstdint>

namespace turboquant::device {

inline constexpr int kWarpSize = 32;
inline constexpr unsigned kFullWarpMask = 0xffffffffu;  // every lane of a warp takes part

// A chunk: 8 consecutive coordinates, the unit of every load and store of vectors (one 16-byte
// load of fp16 / bf16, two of fp32) and of the packed codes (8 indices of `bits` bits fill exactly
// `bits` bytes).
inline constexpr int kChunk = 8;
inline constexpr int kChunkLog2 = 3;
inline constexpr int kPairsPerChunk = kChunk / 2;  // 32-bit words of a chunk of fp16 / bf16
inline constexpr int kBitsPerByte = 8;

inline constexpr int kVectorBytes = 16;  // one vector load / store (uint4)

// Sign bit of a float, and the two sign bits of a packed pair of fp16 / bf16 values.
inline constexpr uint32_t kFloatSignBit = 0x80000000u;
inline constexpr int kHalfBits = 16;  // bits of one fp16 / bf16; the high value of a pair sits above
inline constexpr uint32_t kHalfSignBit = 1u << (kHalfBits - 1);

}  // namespace turboquant::device
