// Index maps of the prefill kernel (kernels/prefill_kernel.cuh), plain C++ so that host tests
// (tests/test_prefill.cpp) can check them without a GPU:
//   - shared-memory offsets of the ldmatrix row addresses and the accumulator element maps
//     (FragmentMaps replays a warp's ldmatrix / mma sequence through an emulation of the PTX
//     fragment semantics and compares with direct matrix products);
//   - the dequantiser's job map (segment_of: a bijection, conflict-free stores);
//   - the key ranges of a CTA: which tiles each split walks, which tiles skip masking, each row's
//     attended positions (KeyRanges checks that every row sees exactly its keys, once).
#pragma once

#include "turboquant/numeric.hpp"  // TQ_HOST_DEVICE

namespace turboquant::cuda::detail::prefill_fragments {

inline constexpr int kMatrixRows = 8;  // rows of one ldmatrix matrix
inline constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;

// ldmatrix.x4: lane t gives row t % 8 of matrix t / 8.
[[nodiscard]] TQ_HOST_DEVICE constexpr int matrix_of(int lane) { return lane / kMatrixRows; }
[[nodiscard]] TQ_HOST_DEVICE constexpr int row_of(int lane) { return lane % kMatrixRows; }

// Q tile [rows][stride]: the A fragment of k-step kk for the warp's rows [16 warp, 16 warp + 16):
// matrix i = rows 8 (i & 1) + [0, 8), coordinates 16 kk + 8 (i >> 1) + [0, 8).
[[nodiscard]] TQ_HOST_DEVICE constexpr int q_offset(int lane, int warp, int kk, int stride) {
  return (warp * kMmaM + (matrix_of(lane) & 1) * kMatrixRows + row_of(lane)) * stride + kk * kMmaK +
         (matrix_of(lane) >> 1) * kMatrixRows;
}
// K tile [tokens][stride]: the B fragments of n-tiles 2 np and 2 np + 1, k-step kk (non-transposed):
// matrix i = tokens 8 (2 np + (i >> 1)) + [0, 8), coordinates 16 kk + 8 (i & 1) + [0, 8).
[[nodiscard]] TQ_HOST_DEVICE constexpr int k_offset(int lane, int np, int kk, int stride) {
  return ((2 * np + (matrix_of(lane) >> 1)) * kMmaN + row_of(lane)) * stride + kk * kMmaK +
         (matrix_of(lane) & 1) * kMatrixRows;
}
// V tile [tokens][stride]: the B fragments of P.V k-step j, n-tiles 2 np and 2 np + 1 (transposed):
// matrix i = tokens 16 j + 8 (i & 1) + [0, 8), coordinates 8 (2 np + (i >> 1)) + [0, 8).
[[nodiscard]] TQ_HOST_DEVICE constexpr int v_offset(int lane, int j, int np, int stride) {
  return (j * kMmaK + (matrix_of(lane) & 1) * kMatrixRows + row_of(lane)) * stride +
         (2 * np + (matrix_of(lane) >> 1)) * kMmaN;
}
// Accumulator element e (0..3) of an m16n8 tile held by `lane`: row g + 8 (e / 2), column 2 q + e % 2.
[[nodiscard]] TQ_HOST_DEVICE constexpr int acc_row(int lane, int e) { return lane / 4 + kMatrixRows * (e / 2); }
[[nodiscard]] TQ_HOST_DEVICE constexpr int acc_col(int lane, int e) { return 2 * (lane % 4) + e % 2; }

// ---- the dequantiser's jobs ---------------------------------------------------------------------------
// Segment s (32 codes) of a tile side of `tile_tokens` tokens -> (token, c = its 32-coordinate
// segment of the row). 8 consecutive jobs (the lanes of one 16-byte store wavefront) take 4
// consecutive tokens x 2 consecutive segments: fp16 tile rows are (head_dim + 8) halves = 16 bytes
// past a multiple of 128 apart and segments 64 bytes apart, so each of their four 16-byte stores
// fills the 32 banks once; their code loads are whole 32-byte sectors. Groups of 8 walk the tile's
// tokens first, then the segment pairs (rows of at least two segments: head_dim >= 64).
inline constexpr int kJobTokens = 4, kJobSegments = 2;
TQ_HOST_DEVICE constexpr void segment_of(int s, int tile_tokens, int* token, int* c) {
  const int groups_per_pair = tile_tokens / kJobTokens;  // groups covering one segment pair of every token
  const int group = s / (kJobTokens * kJobSegments), in = s % (kJobTokens * kJobSegments);
  *token = (group % groups_per_pair) * kJobTokens + in % kJobTokens;
  *c = (group / groups_per_pair) * kJobSegments + in / kJobTokens;
}

// ---- key ranges ------------------------------------------------------------------------------------
// Positions: query row of token i sits at P + i; source key t (cache token, or chunk token) at
// key_base + t. A row attends positions [row_lo, row_hi].

struct TileRange {
  int begin = 0;  // tiles [begin, end) of kTile tokens of the source
  int end = 0;
};

// The tiles part `part` of `splits` walks for a CTA whose valid rows span positions
// [pos_min, pos_max]; split = false (the chunk part): one part takes every tile.
[[nodiscard]] TQ_HOST_DEVICE constexpr TileRange tile_range(int pos_min, int pos_max, int window, int key_base,
                                                            int kv_len, int tile_tokens, int part, int splits,
                                                            bool split) {
  TileRange r;
  const long long lo_pos = window > 0 ? static_cast<long long>(pos_min) - window + 1 : 0;
  long long lo = lo_pos - key_base;
  lo = lo < 0 ? 0 : lo;
  long long hi = static_cast<long long>(pos_max) + 1 - key_base;
  hi = hi > kv_len ? kv_len : hi;
  if (hi <= lo) return r;
  r.begin = static_cast<int>(lo / tile_tokens);
  r.end = static_cast<int>((hi + tile_tokens - 1) / tile_tokens);
  if (split) {
    const int per_split = (r.end - r.begin + splits - 1) / splits;
    r.begin += part * per_split;
    r.end = r.end < r.begin + per_split ? r.end : r.begin + per_split;
  }
  return r;
}

// Whether a tile whose first key sits at first_pos needs no mask: every token valid (all_ok) and
// inside every row's [row_lo, row_hi].
[[nodiscard]] TQ_HOST_DEVICE constexpr bool tile_unmasked(bool all_ok, int first_pos, int tile_tokens, int pos_min,
                                                          int pos_max, int window) {
  const long long window_lo = window > 0 ? static_cast<long long>(pos_max) - window + 1 : 0;
  return all_ok && first_pos + tile_tokens - 1 <= pos_min && first_pos >= window_lo;
}

// A row's attended positions [*lo, *hi] (*hi = -1 for a row past the sequence).
TQ_HOST_DEVICE constexpr void row_bounds(long long pos, int window, bool valid, int* lo, int* hi) {
  const long long l = window > 0 ? pos - window + 1 : 0;
  *hi = valid ? static_cast<int>(pos) : -1;
  *lo = static_cast<int>(l < 0 ? 0 : l);
}

}  // namespace turboquant::cuda::detail::prefill_fragments
