// Codebook lookups and code packing for one chunk (8 coordinates) on the GPU, with the tables of
// turboquant/codebook_search.hpp in shared memory:
//   the grid (fast path): cell c = (boundary, 4 * (below + 1)), c from the bits of
//   fmaf(u, scale, offset) (turboquant/codebook_search.hpp);
//   the tree (general path): node[1 .. 2^B) boundaries in Eytzinger order, node[2^B + i] = levels[i].
// Consecutive cells / nodes sit in consecutive shared-memory banks and the cells of a warp's
// coordinates mostly lie within 32 consecutive ones, so the lookups rarely conflict.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "turboquant/codebook_search.hpp"
#include "turboquant/device/common.cuh"

namespace turboquant::device {

inline constexpr uint32_t kLevelBytes = sizeof(float);
inline constexpr int kLevelBytesLog2 = 2;

// One grid cell as the encode kernel keeps it in shared memory: the boundary inside the cell
// (+inf if none) and 4 * (below + 1), the byte offset of the level just above that boundary, so
// that one 8-byte read serves a coordinate.
struct GridCell {
  float boundary;
  uint32_t above4;
};

// The grid lookup: 4 * index_of(u), the byte offset of u's level in the level table. `cells` is
// the GridCell table, `cell_mask8` = (cells - 1) << kCellFractionBits: the masked bits of the FMA
// are the byte offset of u's cell (turboquant/codebook_search.hpp). set.le gives an all-ones mask
// when u <= boundary, so the offset is above4 + (mask << 2): above4 - 4 there, above4 else
// (ptxas emits FSETP + SEL + LEA for it).
__device__ inline uint32_t cell_level_offset(float u, const GridCell* cells, float scale, float offset,
                                             uint32_t cell_mask8) {
  const uint32_t c8 = __float_as_uint(__fmaf_rn(u, scale, offset)) & cell_mask8;
  const GridCell cell = *reinterpret_cast<const GridCell*>(reinterpret_cast<const char*>(cells) + c8);
  uint32_t at_or_below = 0;
  asm("set.le.u32.f32 %0, %1, %2;" : "=r"(at_or_below) : "f"(u), "f"(cell.boundary));
  return cell.above4 + (at_or_below << kLevelBytesLog2);
}

// The tree lookup: 4 * index_of(u). root = node[1], left = node[2], right = node[3] (uniform
// values, passed in registers).
template <int Bits>
__device__ inline uint32_t tree_level_offset(float u, const float* node, float root, float left, float right) {
  const bool above_root = u > root;
  uint32_t n = above_root ? 3u : 2u;
  if constexpr (Bits >= 2) n = 2u * n + ((u > (above_root ? right : left)) ? 1u : 0u);
#pragma unroll
  for (int step = 2; step < Bits; ++step) n = 2u * n + ((u > node[n]) ? 1u : 0u);
  return (n - (1u << Bits)) * kLevelBytes;
}

// The level at byte offset `offset4` of the level table `levels`.
__device__ inline float level_at(const float* levels, uint32_t offset4) {
  return *reinterpret_cast<const float*>(reinterpret_cast<const char*>(levels) + offset4);
}

// index << (Bits k), from offset4 = 4 * index: coordinate k's bits in the packed word of its chunk.
template <int Bits>
__device__ inline uint32_t packed_from_offset(uint32_t offset4, int k) {
  const int shift = Bits * k - kLevelBytesLog2;
  return shift >= 0 ? offset4 << shift : offset4 >> -shift;
}

inline constexpr uint32_t kByteMask = 0xffu;

// Stores the packed word of chunk `chunk` (Bits bytes, LSB-first as turboquant/packing.hpp) into
// the codes of a vector; `codes` is 4-byte aligned.
template <int Bits>
__device__ inline void store_chunk_codes(uint8_t* codes, int chunk, uint32_t word) {
  uint8_t* p = codes + Bits * chunk;
  if constexpr (Bits == 4) {
    *reinterpret_cast<uint32_t*>(p) = word;
  } else if constexpr (Bits == 2) {
    *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(word);
  } else if constexpr (Bits == 1) {
    *p = static_cast<uint8_t>(word);
  } else {
    static_assert(Bits == 3, "bits must be 1..4");
    // 3 bytes at 3 chunk: a 2-byte word at the even address among the first two, one byte beside.
    const int odd = chunk & 1;
    *reinterpret_cast<uint16_t*>(p + odd) = static_cast<uint16_t>(odd ? (word >> kBitsPerByte) : word);
    p[odd ? 0 : 2] = static_cast<uint8_t>(odd ? word : (word >> (2 * kBitsPerByte)));
  }
}

// The code word of chunk `chunk` (Bits bytes at Bits * chunk) in two steps: load_chunk_codes issues
// the loads, chunk_code_word joins them where the word is used. (3 bits: a 2-byte load at the even
// address among the first two bytes and a 1-byte load beside it; joined right after the loads,
// the join would wait for them, which a load meant to run ahead must not.)
struct ChunkCodeLoads {
  uint32_t first = 0u;   // the word (1, 2, 4 bits), or the 2-byte part (3 bits)
  uint32_t second = 0u;  // the 1-byte part (3 bits)
};
template <int Bits>
__device__ inline ChunkCodeLoads load_chunk_codes(const uint8_t* codes, int chunk) {
  const uint8_t* p = codes + Bits * chunk;
  ChunkCodeLoads l;
  if constexpr (Bits == 4) {
    l.first = __ldg(reinterpret_cast<const unsigned int*>(p));
  } else if constexpr (Bits == 2) {
    l.first = __ldg(reinterpret_cast<const unsigned short*>(p));
  } else if constexpr (Bits == 1) {
    l.first = __ldg(p);
  } else {
    static_assert(Bits == 3, "bits must be 1..4");
    const int odd = chunk & 1;
    l.first = __ldg(reinterpret_cast<const unsigned short*>(p + odd));
    l.second = __ldg(p + (odd ? 0 : 2));
  }
  return l;
}
template <int Bits>
__device__ inline uint32_t chunk_code_word(const ChunkCodeLoads& l, int chunk) {
  if constexpr (Bits != 3) {
    return l.first;
  } else {
    return (chunk & 1) != 0 ? (l.second | (l.first << kBitsPerByte)) : (l.first | (l.second << (2 * kBitsPerByte)));
  }
}

// Decode reads two levels at once from a table of level pairs: entry i = (levels[i & (2^Bits - 1)],
// levels[i >> Bits]), i = the 2 Bits bits of coordinates 2j (low) and 2j + 1 (high) of a chunk word
// (LSB-first packing). The table is replicated once per lane of a half-warp, entry i of copy l at
// byte 8 (16 i + l), so the 16 lanes of a half-warp (one LDS.64 wavefront) always hit 16 different
// bank pairs, whatever their codes: conflict-free, 2^(2 Bits) x 128 B = 512 B .. 32 KiB.
inline constexpr int kPairCopies = 16;  // lanes per LDS.64 wavefront (16 x 8 B = 128 B, all banks)
inline constexpr int kPairBytesLog2 = 3;  // one float2
inline constexpr int kPairEntryBytesLog2 = kPairBytesLog2 + 4;  // kPairCopies float2 per entry
static_assert((1 << (kPairEntryBytesLog2 - kPairBytesLog2)) == kPairCopies, "entry = kPairCopies pairs");

template <int Bits>
inline constexpr int kPairTableSize = kPairCopies << (2 * Bits);  // float2 elements

// Byte offset in the pair table of a lane's copy: bits [3, 7) of every offset.
__device__ inline uint32_t pair_copy_offset(int lane) {
  return static_cast<uint32_t>(lane % kPairCopies) << kPairBytesLog2;
}

// Byte offset of the pair of coordinates (2j, 2j + 1) of a packed chunk word in the pair table,
// in the copy whose offset is `copy8` (pair_copy_offset): one shift and one LOP3 ((a & m) | c).
template <int Bits>
__device__ inline uint32_t unpacked_pair_offset(uint32_t word, int j, uint32_t copy8) {
  const int shift = 2 * Bits * j - kPairEntryBytesLog2;
  const uint32_t mask = ((1u << (2 * Bits)) - 1u) << kPairEntryBytesLog2;
  return ((shift >= 0 ? word >> shift : word << -shift) & mask) | copy8;
}

// The level pair at byte offset `offset` of the pair table.
__device__ inline float2 pair_at(const float2* pairs, uint32_t offset) {
  return *reinterpret_cast<const float2*>(reinterpret_cast<const char*>(pairs) + offset);
}

// 4 * index of coordinate k of a packed chunk word: the byte offset of its level.
template <int Bits>
__device__ inline uint32_t unpacked_offset(uint32_t word, int k) {
  const int shift = Bits * k - kLevelBytesLog2;
  const uint32_t mask = ((1u << Bits) - 1u) << kLevelBytesLog2;
  return (shift >= 0 ? word >> shift : word << -shift) & mask;
}

}  // namespace turboquant::device
