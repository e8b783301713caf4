// The 128-byte swizzled layout of 16-bit tiles in shared memory (PTX ISA, "Shared Memory Matrix
// Layout", 128B swizzling mode): what wgmma reads (turboquant/device/wgmma.cuh) and the prefill
// kernel writes. Plain C++ so that host tests can check it.
//
// A tile of `rows` rows, elements contiguous along a row, is stored as atoms of 64 elements (128
// bytes) per row: the atom index (element / 64) is the slowest dimension, then the row (128 bytes
// apart), and inside a row the 16-byte chunk c sits at position c ^ (row % 8). The pattern repeats
// every 8 rows (1024 bytes), so a tile starts 1024-byte aligned.
#pragma once

#include "turboquant/numeric.hpp"  // TQ_HOST_DEVICE

namespace turboquant::device {

inline constexpr int kSwizzleBytes = 128;                                // one atom row
inline constexpr int kSwizzleAtomElements = 64;                          // 16-bit elements per atom row
inline constexpr int kSwizzleRows = 8;                                   // rows per swizzle period
inline constexpr int kSwizzleGroupBytes = kSwizzleBytes * kSwizzleRows;  // 1024: the 8-row stride

// Byte offset of 16-byte chunk `chunk` (elements [8 chunk, 8 chunk + 8)) of row `row` in a swizzled
// tile of `rows` rows.
[[nodiscard]] TQ_HOST_DEVICE constexpr int swizzled_chunk_offset(int rows, int row, int chunk) {
  return (chunk / kSwizzleRows) * rows * kSwizzleBytes + row * kSwizzleBytes +
         ((chunk ^ row) % kSwizzleRows) * (kSwizzleBytes / kSwizzleRows);
}

}  // namespace turboquant::device
