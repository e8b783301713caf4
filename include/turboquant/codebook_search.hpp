// Codebook lookup tables for branch-free bucketing on the GPU (kept in shared memory by the
// kernels; see turboquant/device/codebook.cuh). Both give exactly Codebook::index_of (the number of
// interior boundaries strictly less than u) for any sorted codebook, custom ones included.
//
// 1. CodebookCells, the fast path: a uniform grid over u in [-kCellRange, kCellRange] (u is a
//    coordinate of a unit vector, so |u| <= 1 up to rounding), fine enough that no cell holds two
//    boundaries. The cell of u is c = the low bits of fmaf(u, scale, offset) (offset carries
//    kCellMagic, so the FMA rounds u * scale + cells / 2 to an integer held in the low mantissa
//    bits; masking with cells - 1 also keeps any value in range). As fmaf is monotone in u, the
//    u of cell c form an interval, and
//        index_of(u) = below[c] + (u > boundary[c]),
//    below[c] = the number of boundaries whose cell is below c, boundary[c] = the one boundary in
//    cell c (+inf if none). codebook_cells() builds it with the same float FMA the kernels run and
//    checks that no two boundaries share a cell; a codebook whose boundaries are too close for
//    kMaxCells cells gets cells = 0 and the kernels use:
// 2. CodebookSearchTable, the general path: a binary search tree,
//      node[1 .. 2^B)        the 2^B - 1 interior boundaries in Eytzinger (breadth-first) order:
//                            node n has children 2n and 2n + 1, an in-order walk is ascending;
//      node[2^B .. 2^(B+1))  the levels: node[2^B + i] = levels[i].
//    The descent n <- 2 n + (u > node[n]) from n = 1 ends after B steps on n = 2^B + index_of(u).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "turboquant/codebook.hpp"
#include "turboquant/numeric.hpp"

namespace turboquant {

// ---- the binary search tree (general path) ------------------------------------------------------

inline constexpr int32_t kSearchTableSize = 2 * kMaxLevels;

struct CodebookSearchTable {
  float node[kSearchTableSize] = {};
};

namespace detail {
// In-order fill of the subtree rooted at n (n < count) with boundaries[next ...].
inline void fill_search_tree(const Codebook& cb, int32_t n, int32_t count, int32_t& next,
                             CodebookSearchTable& t) noexcept {
  if (n >= count) return;
  fill_search_tree(cb, 2 * n, count, next, t);
  t.node[n] = cb.boundaries[next++];
  fill_search_tree(cb, 2 * n + 1, count, next, t);
}
}  // namespace detail

// The tree of a valid codebook (validate(cb) is ok).
[[nodiscard]] inline CodebookSearchTable codebook_search_table(const Codebook& cb) noexcept {
  CodebookSearchTable t{};
  if (cb.bits < 1 || cb.bits > kMaxBits) return t;
  const int32_t levels = cb.num_levels();
  int32_t next = 0;
  detail::fill_search_tree(cb, 1, levels, next, t);
  for (int32_t i = 0; i < levels; ++i) t.node[levels + i] = cb.levels[i];
  return t;
}

// index_of(u) through the tree (the descent the kernels run).
[[nodiscard]] inline int32_t search_index(const CodebookSearchTable& t, int32_t bits, float u) noexcept {
  int32_t n = 1;
  for (int32_t step = 0; step < bits; ++step) n = 2 * n + ((u > t.node[n]) ? 1 : 0);
  return n - (1 << bits);
}

// ---- the uniform grid (fast path) ---------------------------------------------------------------

inline constexpr int32_t kMaxCells = 256;     // power of two; 1 KiB of boundaries in shared memory
inline constexpr int32_t kMinCells = 32;      // one shared-memory bank each: no conflicts in the bulk
inline constexpr float kCellRange = 1.0625f;  // the grid covers |u| <= 1 plus a margin for rounding
// x + kCellMagic for x in [0, 2^20) has float spacing 2^-kCellFractionBits (1.5 * 2^20 sits in
// [2^20, 2^21)): its low kCellFractionBits bits are x's eighths, the bits above its integer part.
// So the bits of fmaf(u, scale, offset) masked with (cells - 1) << 3 are 8 * cell, the byte offset
// of the cell's 8-byte entry in the kernels' table, with no shift.
inline constexpr float kCellMagic = 1572864.0f;  // 1.5 * 2^20
inline constexpr int32_t kCellFractionBits = 3;

struct CodebookCells {
  int32_t cells = 0;     // power of two in [kMinCells, kMaxCells]; 0: use the search tree
  float scale = 0.0f;    // cells per unit of u
  float offset = 0.0f;   // cells / 2 + kCellMagic
  float boundary[kMaxCells] = {};  // the boundary in each cell, +inf if none
  uint8_t below[kMaxCells] = {};   // boundaries in lower cells
};

// The cell of u, as the kernels compute it: x = u * scale + cells / 2 rounded to eighths, then
// its integer part.
[[nodiscard]] inline uint32_t cell_of(const CodebookCells& g, float u) noexcept {
  return (float_bits(std::fma(u, g.scale, g.offset)) >> kCellFractionBits) & static_cast<uint32_t>(g.cells - 1);
}

// index_of(u) through the grid (cells > 0).
[[nodiscard]] inline int32_t cell_index(const CodebookCells& g, float u) noexcept {
  const uint32_t c = cell_of(g, u);
  return g.below[c] + ((u > g.boundary[c]) ? 1 : 0);
}

// The grid of a valid codebook (validate(cb) is ok): the widest cells (fewest, so that the cells
// the coordinates of a warp fall in spread over few shared-memory banks) such that no two
// boundaries share a cell; cells = 0 when kMaxCells cells are not enough.
[[nodiscard]] inline CodebookCells codebook_cells(const Codebook& cb) noexcept {
  CodebookCells g{};
  if (cb.bits < 1 || cb.bits > kMaxBits) return g;
  const int32_t count = cb.num_levels() - 1;  // interior boundaries
  float min_gap = 2.0f * kCellRange;
  for (int32_t i = 0; i + 1 < count; ++i) min_gap = std::fmin(min_gap, cb.boundaries[i + 1] - cb.boundaries[i]);
  if (!(min_gap > 0.0f)) return g;  // equal boundaries: one cell cannot tell them apart
  constexpr float kWidthShrink = 0.875f;  // next try when rounding put two boundaries in one cell
  for (float width = min_gap; width * kMaxCells >= 2.0f * kCellRange; width *= kWidthShrink) {
    int32_t cells = kMinCells;
    while (cells < kMaxCells && static_cast<float>(cells) * width < 2.0f * kCellRange + 2.0f * width) cells *= 2;
    g.cells = cells;
    g.scale = 1.0f / width;
    g.offset = static_cast<float>(cells / 2) + kCellMagic;
    // Every u in [-kCellRange, kCellRange] must land inside the grid (no wrap-around by the mask).
    const float low = std::fma(-kCellRange, g.scale, static_cast<float>(cells / 2));
    const float high = std::fma(kCellRange, g.scale, static_cast<float>(cells / 2));
    bool ok = low >= 0.5f && high <= static_cast<float>(cells) - 1.5f;
    int64_t previous = -1;
    for (int32_t i = 0; ok && i < count; ++i) {
      const auto c = static_cast<int64_t>(cell_of(g, cb.boundaries[i]));
      ok = c > previous;
      previous = c;
    }
    if (!ok) continue;
    for (int32_t c = 0; c < kMaxCells; ++c) {
      g.boundary[c] = std::numeric_limits<float>::infinity();
      g.below[c] = 0;
    }
    for (int32_t i = 0; i < count; ++i) {
      const uint32_t c = cell_of(g, cb.boundaries[i]);
      g.boundary[c] = cb.boundaries[i];
      for (int32_t above = static_cast<int32_t>(c) + 1; above < cells; ++above) ++g.below[above];
    }
    return g;
  }
  return CodebookCells{};
}

}  // namespace turboquant
