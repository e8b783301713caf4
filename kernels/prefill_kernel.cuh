// Chunked-prefill attention on the packed, paged cache (turboquant/cuda/prefill.hpp): the attention
// kernel (tensor cores on fp16 tiles dequantised into shared memory) and the combine kernel
// (log-sum-exp merge of the parts, inverse value RHT of the prefix part, output). Private to
// turboquant::cuda; instantiated by kernels/prefill_d<HeadDim>.cu from kernels/prefill_instances.inc.
//
// Attention kernel, grid (row_tiles, kv_heads * parts, num_seqs), kWarps = 8 warps:
//   - a CTA owns 128 query rows of one (sequence s, KV head kv): row r of row tile x is the pair
//     (token i, head-in-group hg) with i * group + hg = 128 x + r, so one pass over the keys serves
//     the whole GQA group; warp w owns rows [16 w, 16 w + 16);
//   - part p < num_splits: the cached keys of split p (the rows' attended range of the cache, in
//     32-token tiles, divided evenly over the splits), queries rotated with the keys' RHT, values
//     accumulated in their rotated domain; part p == num_splits (kFresh only): the chunk's own K/V
//     (f16 | bf16 rows), queries and values as given;
//   - prologue: the code tables (CodeTable: a byte or six bits of codes -> fp16 level pairs), the
//     (rotated) queries of the 128 rows, normalised by their largest coordinate (factor = largest *
//     softmax_scale), fp16 in shared memory (a 128-row tile);
//   - per 32-token tile, from one of two buffers (one barrier per tile):
//       S = Q K^T   issued; while it runs, each thread dequantises one 32-code segment of K or V of
//                   the NEXT tile, loaded into registers one tile ahead, through the code table
//                   into the other buffer's fp16 tiles K [32][HeadDim] and V [32][HeadDim] (levels
//                   only) and the token's key / value scale (fp32); then
//                   logit = S * key_scale * factor (fp32), soft cap, causal / window mask only on
//                   the tiles that need it, online softmax (log2, the accumulators rescaled only
//                   when a row's max grows);
//       O += P' V   P' = p * value_scale from the S accumulators as fp16;
//     then the barrier that publishes the next tile, and the loads of the one after it.
//   - the products (qk_issue / qk_wait, pv_tile) run on one of two paths, chosen at compile time:
//       wgmma (sm_90a builds, TQ_HAS_WGMMA): per warpgroup of 4 warps (64 rows), S by
//         wgmma.m64n32k16 with A = Q and B = K read from shared memory through descriptors, O by
//         wgmma.m64n64k16 per 64 coordinates with A = P' from registers and B = V (MN-major); the
//         tiles are stored in the 128-byte swizzled layout (turboquant/device/swizzle.hpp);
//       mma.sync (every other target): mma.m16n8k16 per warp, A / B fragments by ldmatrix from
//         rows of HeadDim + 8 halves (16 bytes past a multiple of 128: the 8 row addresses of one
//         ldmatrix phase fall on distinct bank groups).
//     Both keep the same register fragments (a warp's 16 rows, mma.m16n8k16 layouts), so the
//     softmax code is shared;
//   - epilogue: the unnormalised O, max and sum of each row go to the partials.
//
// Combine kernel: one row (token, query head) per VectorLayout<HeadDim>::kLanes lanes: merges the
// prefix parts by log-sum-exp, applies x = s * H y / sqrt(d) (value signs, device::walsh_hadamard),
// adds the chunk part (kFresh), divides by the sum and writes out and lse.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "prefill_fragments.hpp"
#include "prefill_params.hpp"
#include "turboquant/cuda/prefill.hpp"
#include "turboquant/device/async_copy.cuh"
#include "turboquant/device/chunk.cuh"
#include "turboquant/device/common.cuh"
#include "turboquant/device/mma.cuh"
#include "turboquant/device/rht.cuh"
#include "turboquant/device/wgmma.cuh"
#include "turboquant/numeric.hpp"
#include "turboquant/rht.hpp"
#include "turboquant/signs.hpp"

namespace turboquant::cuda::detail {
namespace prefill_kernel {

using device::half2_bits;
using device::kFullWarpMask;
using device::kWarpSize;

// ---- mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 and ldmatrix ------------------------------
// Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16"); lane = 4 g + q (g = group, q = quad):
//   A 16x16 (row-major): a0 = A[g][2q + {0,1}], a1 = A[g + 8][2q + {0,1}],
//                        a2 = A[g][8 + 2q + {0,1}], a3 = A[g + 8][8 + 2q + {0,1}];
//   B 16x8 (k x n):      b0 = B[2q + {0,1}][g], b1 = B[8 + 2q + {0,1}][g];
//   C 16x8:              c0, c1 = C[g][2q + {0,1}], c2, c3 = C[g + 8][2q + {0,1}].
// ldmatrix.m8n8.x4.b16: lane t gives the address of row t % 8 of matrix t / 8 (8 contiguous 16-bit
// elements, 16-byte aligned); register i of lane 4 g + q receives matrix i's elements
// (row g, columns 2q, 2q + 1); with .trans, (rows 2q, 2q + 1, column g).
// Hence, with row-major shared tiles:
//   Q (rows x coords):  A of k-step kk <- matrices (rows 0-7 | 8-15) x (coords 16 kk + 0-7 | 8-15):
//                       matrix i = rows 8 (i & 1) + [0, 8), coords 16 kk + 8 (i >> 1) + [0, 8);
//   K (tokens x coords): B of S (k = coord, n = token) is K[token = g][coord = 2q + e]: a
//                       non-transposed load; for n-tiles 2np, 2np + 1 of k-step kk, matrix i =
//                       tokens 8 (2np + (i >> 1)) + [0, 8), coords 16 kk + 8 (i & 1) + [0, 8) ->
//                       registers {b0, b1} of n-tile 2np, then of 2np + 1;
//   V (tokens x coords): B of P.V (k = token, n = coord) is V[token = 2q + e][coord = g]: a
//                       transposed load; for k-step j and n-tiles 2np, 2np + 1, matrix i =
//                       tokens 16 j + 8 (i & 1) + [0, 8), coords 8 (2np + (i >> 1)) + [0, 8);
//   P: the S accumulators of n-tiles 2j, 2j + 1 are exactly the A fragment of P.V k-step j:
//      a0 = (c0, c1) of 2j, a1 = (c2, c3) of 2j, a2 = (c0, c1) of 2j + 1, a3 = (c2, c3) of 2j + 1.
inline constexpr int kMmaM = 16;
inline constexpr int kMmaN = 8;
inline constexpr int kMmaK = 16;
inline constexpr int kQuads = 4;
inline constexpr int kMatrixRows = 8;  // of one ldmatrix matrix

inline constexpr int kRows = kPrefillRowsPerCta;
inline constexpr int kTile = kPrefillTileTokens;
inline constexpr int kSTiles = kTile / kMmaN;   // n-tiles of S per tile: 4
inline constexpr int kPVSteps = kTile / kMmaK;  // k-steps of P.V per tile: 2
static_assert(kSTiles % 2 == 0, "K rows are loaded for two n-tiles at once");

inline constexpr float kLog2e = 1.44269504088896340736f;
inline constexpr float kLn2 = 0.69314718055994530942f;
inline constexpr float kNegInf = -__builtin_huge_valf();
inline constexpr int kElementBytes = 2;         // f16 / bf16
inline constexpr int kElementsPerVector = 8;    // one 16-byte access of f16 / bf16
inline constexpr int kSegmentCoords = 32;       // codes a loader job dequantises: Bits words
inline constexpr int kMaxSegmentWords = 4;      // 32 codes of 4 bits
inline constexpr int kCombineThreads = 128;

// ---- code tables: a unit of codes -> its fp16 levels ---------------------------------------------
// A unit is one byte of codes at 4 bits (two codes -> one half2) and at 2 bits (four codes -> two
// half2), six bits at 3 bits (two codes -> one half2); consecutive units of a 32-code segment are
// consecutive coordinate pairs. Entry e of a side's table sits at byte e * kEntryStride and holds
// kEntryStride / (4 kPairs) copies of its half2 levels (the copy of thread t: t % kCopies), so the
// lanes of a warp spread over the banks (at most ~2-way conflicts for random codes). A lookup is
// a shift, a LOP3 (mask | copy offset) and one 32- or 64-bit shared load.
inline constexpr int kEntryStrideLog2 = 5;
inline constexpr int kEntryStride = 1 << kEntryStrideLog2;
inline constexpr int kTableBytes = 256 * kEntryStride;  // the largest table (byte units)

template <int Bits>
struct CodeTable {
  static_assert(Bits >= 2 && Bits <= 4, "coded sides of the prefill kernel: 2, 3 or 4 bits");
  static constexpr int kUnitBits = Bits == 3 ? 6 : 8;
  static constexpr int kEntries = 1 << kUnitBits;
  static constexpr int kPairs = kUnitBits / (2 * Bits);      // half2 per entry: 1 or 2
  static constexpr int kCopyBytes = 4 * kPairs;
  static constexpr int kCopies = kEntryStride / kCopyBytes;  // 8 or 4
  static constexpr int kUnits = kSegmentCoords * Bits / kUnitBits;  // units per 32-code segment
  static_assert(kEntries * kEntryStride <= kTableBytes, "fits the table region");
};

[[nodiscard]] TQ_HOST_DEVICE constexpr int lowest_bit(int x) { return x & -x; }
[[nodiscard]] TQ_HOST_DEVICE constexpr int min_int(int a, int b) { return a < b ? a : b; }

template <int HeadDim>
struct Geometry {
  static_assert(HeadDim % kSegmentCoords == 0 && HeadDim % kMmaK == 0, "head_dim must be a multiple of 32");
  static constexpr int kStride = HeadDim + kElementsPerVector;  // halves per shared row
  static constexpr int kKSteps = HeadDim / kMmaK;                // S mmas per n-tile
  static constexpr int kDTiles = HeadDim / kMmaN;                // O n-tiles
  static_assert(kDTiles % 2 == 0, "V rows are loaded for two n-tiles at once");
  // Warp w owns rows [16 w, 16 w + 16) (one m-tile): 8 warps read every dequantised tile. (Two
  // m-tiles per warp, 4 warps, would halve the shared-memory reads per mma but take 128 accumulator
  // registers and ~255 in all: 8 warps per SM, measured 16-34% slower.)
  static constexpr int kWarps = kRows / kMmaM;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kSegmentsPerRow = HeadDim / kSegmentCoords;
  static constexpr int kTileSegments = kTile * kSegmentsPerRow;   // per side
  static constexpr int kJobs = (2 * kTileSegments + kThreads - 1) / kThreads;  // coded loader jobs per thread
  static_assert(kTileSegments % kWarpSize == 0, "a side's jobs are whole warps");
  static_assert(kSegmentsPerRow % prefill_fragments::kJobSegments == 0 && kTile % prefill_fragments::kJobTokens == 0,
                "segment_of: whole job groups");
  static constexpr int kVectorsPerRow = HeadDim / kElementsPerVector;
  static constexpr int kDenseVectors = kTile * kVectorsPerRow / kThreads;  // per side and thread
  static_assert(kTile * kVectorsPerRow % kThreads == 0 && kDenseVectors > 0, "whole dense vectors per thread");

  // Shared memory (bytes, in this order): the key and value code tables (CodeTable, kTableBytes
  // each); Q [kRows][kStride] fp16; two buffers (tile parity) of K [kTile][kStride] and V
  // [kTile][kStride] fp16; two buffers of the tile's key scales, value scales (fp32) and token
  // flags (int) [kTile]; the row factors [kRows] fp32.
  // Each tile starts 1024-byte aligned (the swizzle period of the wgmma layout).
  static constexpr size_t kQBytes = sizeof(__half) * kRows * kStride;
  static constexpr size_t kTileBytes =
      (sizeof(__half) * kTile * kStride + device::kSwizzleGroupBytes - 1) / device::kSwizzleGroupBytes *
      device::kSwizzleGroupBytes;
  static constexpr size_t kQOffset = 2 * kTableBytes;
  static constexpr size_t kKOffset = kQOffset + kQBytes;
  static constexpr size_t kVOffset = kKOffset + 2 * kTileBytes;
  static constexpr size_t kKeyScaleOffset = kVOffset + 2 * kTileBytes;
  static constexpr size_t kValueScaleOffset = kKeyScaleOffset + 2 * sizeof(float) * kTile;
  static constexpr size_t kTokenOkOffset = kValueScaleOffset + 2 * sizeof(float) * kTile;
  static constexpr size_t kFactorOffset = kTokenOkOffset + 2 * sizeof(int) * kTile;
  static constexpr size_t kSmemBytes = kFactorOffset + sizeof(float) * kRows;
  static_assert(kQOffset % device::kSwizzleGroupBytes == 0 && kKOffset % device::kSwizzleGroupBytes == 0 &&
                    kVOffset % device::kSwizzleGroupBytes == 0 && kTileBytes % device::kSwizzleGroupBytes == 0 &&
                    kKeyScaleOffset % 16 == 0,
                "tiles 1024-byte aligned (swizzle period), 16-byte stores and ldmatrix rows");
  static_assert(kQBytes >= sizeof(__half) * kRows * HeadDim && kTileBytes >= sizeof(__half) * kTile * HeadDim,
                "the swizzled (unpadded) tiles fit the padded regions");
};

// One buffer of dequantised tiles (shared memory) and the code tables.
struct Tiles {
  __half* k;           // [kTile][kStride]
  __half* v;           // [kTile][kStride]
  float* key_scale;    // [kTile]: the token's key scale (0: token not valid)
  float* value_scale;  // [kTile]: its value scale (0: not valid), applied to P
  int* token_ok;       // [kTile]
  const uint8_t* key_table;
  const uint8_t* value_table;
};

template <int HeadDim>
__device__ __forceinline__ Tiles tiles_of(uint8_t* smem, int buffer) {
  using G = Geometry<HeadDim>;
  Tiles t;
  t.k = reinterpret_cast<__half*>(smem + G::kKOffset + buffer * G::kTileBytes);
  t.v = reinterpret_cast<__half*>(smem + G::kVOffset + buffer * G::kTileBytes);
  t.key_scale = reinterpret_cast<float*>(smem + G::kKeyScaleOffset) + buffer * kTile;
  t.value_scale = reinterpret_cast<float*>(smem + G::kValueScaleOffset) + buffer * kTile;
  t.token_ok = reinterpret_cast<int*>(smem + G::kTokenOkOffset) + buffer * kTile;
  t.key_table = smem;
  t.value_table = smem + kTableBytes;
  return t;
}

// Where 16-byte chunk `chunk` (halves [8 chunk, 8 chunk + 8)) of row `row` of a shared tile of
// `rows` rows (Q, K or V) sits, in bytes: the wgmma path (TQ_HAS_WGMMA: sm_90a builds) reads the
// tiles as 128-byte swizzled operands (turboquant/device/wgmma.cuh), the mma.sync path by ldmatrix
// from rows of kStride halves.
template <int HeadDim>
__device__ __forceinline__ uint4* tile_chunk(void* tile, int rows, int row, int chunk) {
#if TQ_HAS_WGMMA
  const int offset = device::swizzled_chunk_offset(rows, row, chunk);
#else
  const int offset = row * Geometry<HeadDim>::kStride * kElementBytes + chunk * device::kVectorBytes;
#endif
  return reinterpret_cast<uint4*>(static_cast<uint8_t*>(tile) + offset);
}

// After a thread's shared stores of operand tiles, before the barrier that publishes them: the
// wgmma path reads them through the async proxy.
__device__ __forceinline__ void publish_tiles() {
#if TQ_HAS_WGMMA
  device::fence_proxy_async_shared();
#endif
}

// ---- small device helpers ----------------------------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  const uint32_t address = device::shared_address(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half* p) {
  const uint32_t address = device::shared_address(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// Sign of coordinate i: bit i of the RHT diagonal.
__device__ __forceinline__ bool negated(const SignBits& s, int i) { return (s.words[i / 64] >> (i % 64)) & 1u; }

// Bytes [p, p + 4 Words) of read-only global memory as words; Align (>= 4) is what the caller
// guarantees for p.
template <int Words, int Align>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t (&w)[kMaxSegmentWords]) {
  constexpr int kBytes = Words * 4;
  if constexpr (Align >= 16 && kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  } else if constexpr (Align >= 8 && kBytes % 8 == 0) {
#pragma unroll
    for (int i = 0; i < kBytes / 8; ++i) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + i);
      w[2 * i] = v.x;
      w[2 * i + 1] = v.y;
    }
  } else {
    static_assert(Align >= 4, "code segments are at least 4-byte aligned");
#pragma unroll
    for (int i = 0; i < Words; ++i) w[i] = __ldg(reinterpret_cast<const unsigned int*>(p) + i);
  }
}

// Fills a side's code table (CodeTable<Bits>) from its levels (parameter space); all threads.
template <int Bits, int kThreads>
__device__ __forceinline__ void build_code_table(uint8_t* table, const float* levels) {
  using T = CodeTable<Bits>;
  constexpr uint32_t kMask = (1u << Bits) - 1u;
  constexpr int kStores = kEntryStride / static_cast<int>(sizeof(uint4));  // 16-byte stores per entry
  for (int i = threadIdx.x; i < T::kEntries * kStores; i += kThreads) {
    const auto e = static_cast<uint32_t>(i / kStores);
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < T::kPairs; ++j)
      w[j] = half2_bits(levels[(e >> (2 * j * Bits)) & kMask], levels[(e >> ((2 * j + 1) * Bits)) & kMask]);
    reinterpret_cast<uint4*>(table)[i] = T::kPairs == 1 ? make_uint4(w[0], w[0], w[0], w[0]) : make_uint4(w[0], w[1], w[0], w[1]);
  }
}

// Byte offset in a CodeTable<Bits> of unit u of a segment's code words, this thread's copy
// (`copy_offset`): the unit's bits moved to bits kEntryStrideLog2.. by one shift (or funnel shift
// for a six-bit unit across two words), masked and or-ed with the copy offset by one LOP3.
template <int Bits>
__device__ __forceinline__ uint32_t unit_offset(const uint32_t (&w)[kMaxSegmentWords], int u, uint32_t copy_offset) {
  using T = CodeTable<Bits>;
  constexpr uint32_t kMask = (static_cast<uint32_t>(T::kEntries) - 1u) << kEntryStrideLog2;
  const int bit = u * T::kUnitBits, word = bit / 32, offset = bit % 32;
  uint32_t v;
  if (offset + T::kUnitBits <= 32) {
    v = offset >= kEntryStrideLog2 ? w[word] >> (offset - kEntryStrideLog2) : w[word] << (kEntryStrideLog2 - offset);
  } else {
    v = __funnelshift_r(w[word], w[word + 1], offset - kEntryStrideLog2);
  }
  return (v & kMask) | copy_offset;
}

// The 16 half2 (coordinate pairs) of a 32-code segment through a side's code table.
template <int Bits>
__device__ __forceinline__ void segment_levels(const uint8_t* table, const uint32_t (&w)[kMaxSegmentWords],
                                               uint32_t (&h)[kSegmentCoords / 2]) {
  using T = CodeTable<Bits>;
  const uint32_t copy_offset = static_cast<uint32_t>(threadIdx.x % T::kCopies) * T::kCopyBytes;
#pragma unroll
  for (int u = 0; u < T::kUnits; ++u) {
    const uint32_t at = unit_offset<Bits>(w, u, copy_offset);
    if constexpr (T::kPairs == 2) {
      const uint2 v = *reinterpret_cast<const uint2*>(table + at);
      h[2 * u] = v.x;
      h[2 * u + 1] = v.y;
    } else {
      h[u] = *reinterpret_cast<const uint32_t*>(table + at);
    }
  }
}

__device__ __forceinline__ float load_scale(const uint8_t* plane, int row, NormStorage norm) {
  if (norm == NormStorage::kF32) return __ldg(reinterpret_cast<const float*>(plane) + row);
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(plane) + row)));
}

// ---- the CTA's view of its work ----------------------------------------------------------------------

struct Work {
  int seq, kv, part, tile;
  int q0;          // query_start[seq]
  int n;           // queries of the sequence
  int prefix;      // P_s (may be negative in kAppended with a short seq_lens entry)
  int kv_len;      // keys of the source: cached tokens (prefix parts) or n (chunk part)
  int key_base;    // position of source key 0: 0 (cache) or P (chunk)
  int rows;        // valid rows of the tile (<= kRows)
  int pos_min, pos_max;  // positions of the tile's first and last valid rows
  bool chunk;      // the chunk part (kFresh)
};

// Source of K/V tiles: the coded cache of one (sequence, KV head).
template <int HeadDim, int KeyBits, int ValueBits>
struct CodedSource {
  using G = Geometry<HeadDim>;
  static constexpr int kKeyRowBytes = HeadDim * KeyBits / 8;
  static constexpr int kValueRowBytes = HeadDim * ValueBits / 8;
  static constexpr int kKeySegAlign = min_int(min_int(lowest_bit(kKeyRowBytes), lowest_bit(4 * KeyBits)), 16);
  static constexpr int kValueSegAlign = min_int(min_int(lowest_bit(kValueRowBytes), lowest_bit(4 * ValueBits)), 16);

  uint32_t words[G::kJobs][kMaxSegmentWords];
  float scale[G::kJobs];
  bool ok[G::kJobs];

  // Job jj of this thread: job = threadIdx.x + jj * G::kThreads; K segment `job` or V segment
  // `job - kTileSegments`; segment s = token `token` of the tile, coordinates [32 c, 32 c + 32)
  // (prefill_fragments::segment_of). False past the last job (head_dim 64: more threads than jobs;
  // warp-uniform).
  struct Job {
    bool value;
    int token, c;
  };
  __device__ static __forceinline__ bool job_of(int jj, Job& j) {
    const int job = threadIdx.x + jj * G::kThreads;
    if (job >= 2 * G::kTileSegments) return false;
    j.value = job >= G::kTileSegments;
    prefill_fragments::segment_of(j.value ? job - G::kTileSegments : job, kTile, &j.token, &j.c);
    return true;
  }

  // Issues the code and scale loads of the tile starting at source token tile_t0 (each after its
  // block-table entry).
  __device__ __forceinline__ void load(const PrefillParams& p, const Work& w, int tile_t0) {
#pragma unroll
    for (int jj = 0; jj < G::kJobs; ++jj) {
      Job j;
      if (!job_of(jj, j)) {
        ok[jj] = false;
        break;
      }
      const int token = tile_t0 + j.token;
      const int slot = p.page_size_log2 >= 0 ? token >> p.page_size_log2 : token / p.page_size;
      int page = -1;
      if (token < w.kv_len && slot < p.max_pages_per_seq)
        page = __ldg(p.block_table + static_cast<int64_t>(w.seq) * p.max_pages_per_seq + slot);
      ok[jj] = page >= 0 && page < p.num_pages;
#pragma unroll
      for (int i = 0; i < kMaxSegmentWords; ++i) words[jj][i] = 0u;
      scale[jj] = 0.0f;
      if (!ok[jj]) continue;
      const int row = token - slot * p.page_size;
      const uint8_t* head = p.pages + page * p.page_bytes + w.kv * p.head_bytes;
      if (j.value) {
        load_words<ValueBits, kValueSegAlign>(
            head + p.value_codes_offset + static_cast<int64_t>(row) * kValueRowBytes + j.c * 4 * ValueBits, words[jj]);
        scale[jj] = load_scale(head + p.value_scales_offset, row, p.value_norm);
      } else {
        load_words<KeyBits, kKeySegAlign>(
            head + p.key_codes_offset + static_cast<int64_t>(row) * kKeyRowBytes + j.c * 4 * KeyBits, words[jj]);
        scale[jj] = load_scale(head + p.key_scales_offset, row, p.key_norm);
      }
    }
  }

  // Dequantises the loaded segments into the shared tiles through the code tables (the levels
  // only: the key scale multiplies the logit, the value scale the probability); returns whether every
  // token this thread saw is valid. An invalid token's codes are zero (finite levels) and its scales
  // 0.
  __device__ __forceinline__ bool store(const Tiles& t) const {
    bool all_ok = true;
#pragma unroll
    for (int jj = 0; jj < G::kJobs; ++jj) {
      Job j;
      if (!job_of(jj, j)) break;
      const bool value = j.value;
      const int token = j.token, c = j.c;
      all_ok = all_ok && ok[jj];
      uint32_t h[kSegmentCoords / 2];
      if (value) {
        segment_levels<ValueBits>(t.value_table, words[jj], h);
      } else {
        segment_levels<KeyBits>(t.key_table, words[jj], h);
      }
      if (c == 0) {
        (value ? t.value_scale : t.key_scale)[token] = ok[jj] ? scale[jj] : 0.0f;
        if (!value) t.token_ok[token] = ok[jj] ? 1 : 0;
      }
      constexpr int kChunks = kSegmentCoords / kElementsPerVector;
#pragma unroll
      for (int i = 0; i < kChunks; ++i)
        *tile_chunk<HeadDim>(value ? t.v : t.k, kTile, token, c * kChunks + i) =
            make_uint4(h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]);
    }
    return all_ok;
  }
};

// Source of K/V tiles: the chunk's own rows (f16 | bf16) of one (sequence, KV head).
template <int HeadDim, DType QType>
struct ChunkSource {
  using G = Geometry<HeadDim>;
  uint4 key[G::kDenseVectors];
  uint4 value[G::kDenseVectors];
  bool ok[G::kDenseVectors];

  // Vector jj of this thread: v = threadIdx.x + jj * G::kThreads, token v / kVectorsPerRow of the
  // tile, elements [8 c, 8 c + 8), c = v % kVectorsPerRow (both sides).
  __device__ __forceinline__ void load(const PrefillParams& p, const Work& w, int tile_t0) {
#pragma unroll
    for (int jj = 0; jj < G::kDenseVectors; ++jj) {
      const int v = threadIdx.x + jj * G::kThreads;
      const int token = tile_t0 + v / G::kVectorsPerRow, c = v % G::kVectorsPerRow;
      ok[jj] = token < w.kv_len;
      key[jj] = value[jj] = make_uint4(0u, 0u, 0u, 0u);
      if (!ok[jj]) continue;
      const int64_t row = static_cast<int64_t>(w.q0) + token;
      const auto* k = static_cast<const uint8_t*>(p.chunk_keys) +
                      (row * p.chunk_keys_stride0 + static_cast<int64_t>(w.kv) * p.chunk_keys_stride1) * kElementBytes;
      const auto* vv = static_cast<const uint8_t*>(p.chunk_values) +
                       (row * p.chunk_values_stride0 + static_cast<int64_t>(w.kv) * p.chunk_values_stride1) * kElementBytes;
      key[jj] = __ldg(reinterpret_cast<const uint4*>(k) + c);
      value[jj] = __ldg(reinterpret_cast<const uint4*>(vv) + c);
    }
  }

  __device__ static __forceinline__ uint4 to_half(uint4 x) {
    if constexpr (QType == DType::kF16) {
      return x;
    } else {
      uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
        w[i] = half2_bits(device::low_half_to_float<QType>(w[i]), device::high_half_to_float<QType>(w[i]));
      return make_uint4(w[0], w[1], w[2], w[3]);
    }
  }

  __device__ __forceinline__ bool store(const Tiles& t) const {
    bool all_ok = true;
#pragma unroll
    for (int jj = 0; jj < G::kDenseVectors; ++jj) {
      const int v = threadIdx.x + jj * G::kThreads;
      const int token = v / G::kVectorsPerRow, c = v % G::kVectorsPerRow;
      all_ok = all_ok && ok[jj];
      *tile_chunk<HeadDim>(t.k, kTile, token, c) = to_half(key[jj]);
      *tile_chunk<HeadDim>(t.v, kTile, token, c) = to_half(value[jj]);
      if (c == 0) {
        t.key_scale[token] = t.value_scale[token] = ok[jj] ? 1.0f : 0.0f;
        t.token_ok[token] = ok[jj] ? 1 : 0;
      }
    }
    return all_ok;
  }
};

// Stores the kRows query rows of the CTA into q_s (fp16, normalised by each row's largest coordinate;
// rotated with the key signs when `rotate`) and factor[r] = largest * softmax_scale * log2(e), the
// logit factor in log2 units (0 for rows past the sequence).
template <int HeadDim, DType QType>
__device__ __forceinline__ void load_queries(const PrefillParams& p, const Work& w, bool rotate, __half* q_s,
                                             float* factor) {
  using G = Geometry<HeadDim>;
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int kRowsPerPass = G::kThreads / Layout::kLanes;
  static_assert(kRows % kRowsPerPass == 0, "whole passes");
  const int lane = threadIdx.x % kWarpSize;
  const int l = lane % Layout::kLanes;
#pragma unroll 1
  for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
    const int r = pass * kRowsPerPass + threadIdx.x / Layout::kLanes;
    const bool valid = r < w.rows;
    float x[Layout::kChunks][device::kChunk];
    if (valid) {
      const int flat = w.tile * kRows + r;
      const int i = flat / p.group, hg = flat - (flat / p.group) * p.group;
      const auto* row = static_cast<const uint8_t*>(p.q) +
                        ((static_cast<int64_t>(w.q0) + i) * p.q_stride0 +
                         static_cast<int64_t>(w.kv * p.group + hg) * p.q_stride1) * kElementBytes;
#pragma unroll
      for (int u = 0; u < Layout::kChunks; ++u) {
        const int c = Layout::chunk_index(l, u);
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(row) + c);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < device::kChunk; ++k) {
          const float e = k % 2 ? device::high_half_to_float<QType>(words[k / 2]) : device::low_half_to_float<QType>(words[k / 2]);
          x[u][k] = rotate && negated(p.key_signs, c * device::kChunk + k) ? -e : e;
        }
      }
    } else {
#pragma unroll
      for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
        for (int k = 0; k < device::kChunk; ++k) x[u][k] = 0.0f;
    }
    if (rotate) {  // CTA-uniform: every lane of the warp shuffles
      device::walsh_hadamard<HeadDim>(x, lane);
      const float scale = rht_scale<float>(HeadDim);
#pragma unroll
      for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
        for (int k = 0; k < device::kChunk; ++k) x[u][k] *= scale;
    }
    float largest = 0.0f;
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
      for (int k = 0; k < device::kChunk; ++k) largest = fmaxf(largest, fabsf(x[u][k]));
#pragma unroll
    for (int d = 1; d < Layout::kLanes; d <<= 1) largest = fmaxf(largest, __shfl_xor_sync(kFullWarpMask, largest, d));
    const float inverse = largest > 0.0f ? 1.0f / largest : 0.0f;
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u) {
      const int c = Layout::chunk_index(l, u);
      uint32_t h[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = half2_bits(x[u][2 * i] * inverse, x[u][2 * i + 1] * inverse);
      *tile_chunk<HeadDim>(q_s, kRows, r, c) = make_uint4(h[0], h[1], h[2], h[3]);
    }
    if (l == 0) factor[r] = valid ? largest * p.softmax_scale * kLog2e : 0.0f;  // logits in log2 units
  }
}

// 2^x with the hardware approximation (flush-to-zero; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The wgmma descriptors of one tile's operands (sm_90a builds): Q of the warp's warpgroup, K and V of
// the tile's buffer. Built once per CTA (operands_of) and advanced by constants inside the products,
// warp-uniform, so they live in uniform registers (building them per k-step from addresses was
// ~17% of the kernel's instructions).
struct Operands {
  uint64_t q = 0, k = 0, v = 0;
};

// S = Q K^T for the warp's 16 rows and the tile's 32 tokens: s[nt][e] = row g + 8 (e / 2), token
// 8 nt + 2 q + e % 2. qk_issue starts the product, qk_wait makes s readable; code between them
// must not touch s (on the wgmma path it is being written). wgmma: one m64n32k16 per k-step for the
// warp's warpgroup (64 rows), A = Q and B = K from the swizzled tiles, the first k-step write-only
// (no zero-initialisation); mma.sync: ldmatrix fragments of the padded tiles, computed at once.
template <int HeadDim>
__device__ __forceinline__ void qk_issue(float (&s)[kSTiles][4], const Operands& o, const __half* q_s, const __half* k,
                                         int warp, int lane) {
  using G = Geometry<HeadDim>;
#if TQ_HAS_WGMMA
  (void)q_s, (void)k, (void)warp, (void)lane;
  constexpr int kStepsPerAtom = device::kSwizzleAtomElements / kMmaK;
  constexpr int kStepBytes = kMmaK * kElementBytes;
  device::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < G::kKSteps; ++kk) {
    const uint32_t step = (kk % kStepsPerAtom) * kStepBytes;
    const uint32_t atom = kk / kStepsPerAtom;
    const uint64_t a = device::descriptor_plus(o.q, atom * kRows * device::kSwizzleBytes + step);
    const uint64_t b = device::descriptor_plus(o.k, atom * kTile * device::kSwizzleBytes + step);
    if (kk == 0) {
      device::wgmma_m64n32k16_ss_first(s, a, b);
    } else {
      device::wgmma_m64n32k16_ss(s, a, b, true);
    }
  }
  device::wgmma_commit();
#else
#pragma unroll
  for (int nt = 0; nt < kSTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < G::kKSteps; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, q_s + prefill_fragments::q_offset(lane, warp, kk, G::kStride));
#pragma unroll
    for (int np = 0; np < kSTiles / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, k + prefill_fragments::k_offset(lane, np, kk, G::kStride));
      device::mma_f16_m16n8k16(s[2 * np], a, b[0], b[1]);
      device::mma_f16_m16n8k16(s[2 * np + 1], a, b[2], b[3]);
    }
  }
#endif
}

__device__ __forceinline__ void qk_wait(float (&s)[kSTiles][4]) {
#if TQ_HAS_WGMMA
  device::wgmma_wait_all();
  device::wgmma_pin(s);
#else
  (void)s;
#endif
}

// O += P' V: acc[nd][e] = row g + 8 (e / 2), coordinate 8 nd + 2 q + e % 2; pa[j] = the A fragment
// of tokens [16 j, 16 j + 16). wgmma: one m64n64k16 per k-step and 64 coordinates, B = V from the
// swizzled tile (MN-major), waited for at once (left in flight while the next tile is dequantised,
// the accumulators pinned across that code made ptxas spill ~80 bytes: 6.20 against 5.60 ms,
// kernels/ATTENTION_NOTES.md section 16); mma.sync: ldmatrix.trans fragments of the padded tile.
template <int HeadDim>
__device__ __forceinline__ void pv_tile(float (&acc)[Geometry<HeadDim>::kDTiles][4], const uint32_t (&pa)[kPVSteps][4],
                                        const Operands& o, const __half* v, int lane) {
  using G = Geometry<HeadDim>;
#if TQ_HAS_WGMMA
  (void)v, (void)lane;
  constexpr int kBlocks = HeadDim / device::kSwizzleAtomElements;  // 64-coordinate blocks
  constexpr int kTilesPerBlock = device::kSwizzleAtomElements / kMmaN;
  device::wgmma_fence();
#pragma unroll
  for (int j = 0; j < kPVSteps; ++j)
#pragma unroll
    for (int b = 0; b < kBlocks; ++b)
      device::wgmma_m64n64k16_rs_mn(*reinterpret_cast<float(*)[kTilesPerBlock][4]>(&acc[b * kTilesPerBlock]), pa[j],
                                    device::descriptor_plus(o.v, (b * kTile + j * kMmaK) * device::kSwizzleBytes), true);
  device::wgmma_commit();
  device::wgmma_wait_all();
  device::wgmma_pin(acc);
#else
#pragma unroll
  for (int j = 0; j < kPVSteps; ++j)
#pragma unroll
    for (int np = 0; np < G::kDTiles / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v + prefill_fragments::v_offset(lane, j, np, G::kStride));
      device::mma_f16_m16n8k16(acc[2 * np], pa[j], b[0], b[1]);
      device::mma_f16_m16n8k16(acc[2 * np + 1], pa[j], b[2], b[3]);
    }
#endif
}

// The attention of one CTA over the tiles [tile_begin, tile_end) of `Source`. The K / V tiles are
// double-buffered: while the warps compute tile i from buffer i % 2, its successor's codes are in
// flight in registers (issued one tile ahead) and are dequantised into the other buffer while S of
// tile i runs; one barrier per tile.
template <int HeadDim, class Source>
__device__ __forceinline__ void attend(const PrefillParams& p, const Work& w, Source& src, int tile_begin,
                                       int tile_end, uint8_t* smem) {
  using G = Geometry<HeadDim>;
  const auto* q_s = reinterpret_cast<const __half*>(smem + G::kQOffset);
  const auto* factor_s = reinterpret_cast<const float*>(smem + G::kFactorOffset);

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / kQuads, q = lane % kQuads;
  const int window = p.sliding_window;
  // The soft cap c * tanh(z / c) in log2 units: the same map with c * log2(e).
  const bool softcap = p.logit_softcap > 0.0f;
  const float cap = p.logit_softcap * kLog2e;
  const float inverse_cap = softcap ? 1.0f / cap : 0.0f;
  // This thread's rows: rr = 0 -> warp row g, rr = 1 -> g + 8 (CTA row row_of(rr)). Their attended
  // key positions are worked out only for the tiles that need a mask, and their logit factors read
  // from shared memory per tile (registers are the limit).
  const auto row_of = [&](int rr) { return warp * kMmaM + rr * kMatrixRows + g; };

  float acc[G::kDTiles][4];
#pragma unroll
  for (int nd = 0; nd < G::kDTiles; ++nd) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.0f;
  float m_run[2] = {kNegInf, kNegInf}, l_run[2] = {0.0f, 0.0f};

  // The operand descriptors of buffer 0 (wgmma); buffer 1 is G::kTileBytes further. The warpgroup
  // index comes through a shuffle from lane 0, so the compiler knows it (and the descriptors) to be
  // warp-uniform.
  Operands base;
#if TQ_HAS_WGMMA
  {
    const int warpgroup = __shfl_sync(kFullWarpMask, warp / 4, 0);
    const Tiles t0 = tiles_of<HeadDim>(smem, 0);
    base.q = device::k_major_descriptor(device::shared_address(q_s) + warpgroup * 4 * kMmaM * device::kSwizzleBytes);
    base.k = device::k_major_descriptor(device::shared_address(t0.k));
    base.v = device::mn_major_descriptor(device::shared_address(t0.v));
  }
#endif
  const auto operands_of = [&](int buffer) {
    Operands o = base;
#if TQ_HAS_WGMMA
    o.k = device::descriptor_plus(base.k, static_cast<uint32_t>(buffer * G::kTileBytes));
    o.v = device::descriptor_plus(base.v, static_cast<uint32_t>(buffer * G::kTileBytes));
#else
    (void)buffer;
#endif
    return o;
  };

  src.load(p, w, tile_begin * kTile);
  const bool first_ok = src.store(tiles_of<HeadDim>(smem, 0));
  publish_tiles();
  bool all_ok = __syncthreads_and(first_ok) != 0;
  if (tile_begin + 1 < tile_end) src.load(p, w, (tile_begin + 1) * kTile);
#pragma unroll 1
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int buffer = (tile - tile_begin) & 1;
    const Tiles t = tiles_of<HeadDim>(smem, buffer);
    const Operands o = operands_of(buffer);
    // Masking is needed unless every token is valid and inside every row's [lo, hi].
    const int first_pos = w.key_base + tile * kTile;
    const bool full = prefill_fragments::tile_unmasked(all_ok, first_pos, kTile, w.pos_min, w.pos_max, window);

    // S = Q K^T, in flight (wgmma) while this thread dequantises its share of the next tile into the
    // other buffer (its last readers, the products of the previous tile, passed the last barrier).
    float s[kSTiles][4];
    qk_issue<HeadDim>(s, o, q_s, t.k, warp, lane);
    bool next_ok = true;
    if (tile + 1 < tile_end) next_ok = src.store(tiles_of<HeadDim>(smem, (tile + 1 - tile_begin) & 1));
    qk_wait(s);

    // Logits in log2 units (the row factor carries log2(e)); element e of n-tile nt: row rr = e / 2,
    // token 8 nt + 2 q + e % 2 of the tile.
    {
      const float factor[2] = {factor_s[row_of(0)], factor_s[row_of(1)]};
#pragma unroll
      for (int nt = 0; nt < kSTiles; ++nt) {
        const float2 key_scale = *reinterpret_cast<const float2*>(t.key_scale + nt * kMmaN + 2 * q);
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = s[nt][e] * (e % 2 ? key_scale.y : key_scale.x) * factor[e / 2];
      }
      if (softcap) {  // one CTA-uniform branch per tile, not one per element
#pragma unroll
        for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[nt][e] = cap * tanhf(s[nt][e] * inverse_cap);
      }
    }
    if (!full) {
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int r = row_of(rr);
        int lo, hi;
        prefill_fragments::row_bounds(static_cast<long long>(w.prefix) + (w.tile * kRows + r) / p.group, window,
                                      r < w.rows, &lo, &hi);
#pragma unroll
        for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
          for (int e = 2 * rr; e < 2 * rr + 2; ++e) {
            const int token = nt * kMmaN + 2 * q + e % 2, kp = first_pos + token;
            if (!(t.token_ok[token] && kp >= lo && kp <= hi)) s[nt][e] = kNegInf;
          }
      }
    }
    // Online softmax: a row's running max changes only when a logit exceeds it (every tile at
    // first, rarely later); only then are its sum and accumulators rescaled (warp-uniform test).
    float tile_max[2];
    bool grew = false;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      tile_max[rr] = kNegInf;
#pragma unroll
      for (int nt = 0; nt < kSTiles; ++nt) tile_max[rr] = fmaxf(tile_max[rr], fmaxf(s[nt][2 * rr], s[nt][2 * rr + 1]));
      tile_max[rr] = fmaxf(tile_max[rr], __shfl_xor_sync(kFullWarpMask, tile_max[rr], 1));
      tile_max[rr] = fmaxf(tile_max[rr], __shfl_xor_sync(kFullWarpMask, tile_max[rr], 2));
      grew = grew || tile_max[rr] > m_run[rr];
    }
    if (__any_sync(kFullWarpMask, grew)) {
      float alpha[2];
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const float m_new = fmaxf(m_run[rr], tile_max[rr]);
        alpha[rr] = m_run[rr] == kNegInf ? 0.0f : fast_exp2(m_run[rr] - m_new);  // nothing attended yet: sums are 0
        m_run[rr] = m_new;
        l_run[rr] *= alpha[rr];
      }
#pragma unroll
      for (int nd = 0; nd < G::kDTiles; ++nd) {
        acc[nd][0] *= alpha[0];
        acc[nd][1] *= alpha[0];
        acc[nd][2] *= alpha[1];
        acc[nd][3] *= alpha[1];
      }
    }
    // P' = p * value_scale as the fp16 A fragments of P'.V (a masked token's p and scale are 0):
    // k-step j = n-tiles 2 j and 2 j + 1 of S.
    const float m_use[2] = {m_run[0] == kNegInf ? 0.0f : m_run[0], m_run[1] == kNegInf ? 0.0f : m_run[1]};
    uint32_t pa[kPVSteps][4];
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) {
      const float2 value_scale = *reinterpret_cast<const float2*>(t.value_scale + nt * kMmaN + 2 * q);
      float pr[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pr[e] = fast_exp2(s[nt][e] - m_use[e / 2]);
        l_run[e / 2] += pr[e];
      }
      pa[nt / 2][2 * (nt % 2)] = half2_bits(pr[0] * value_scale.x, pr[1] * value_scale.y);
      pa[nt / 2][2 * (nt % 2) + 1] = half2_bits(pr[2] * value_scale.x, pr[3] * value_scale.y);
    }

    // O += P' V.
    pv_tile<HeadDim>(acc, pa, o, t.v, lane);

    // The next tile is published (and this one's buffer free) after the barrier; then the loads of
    // the tile after it go in flight.
    publish_tiles();
    all_ok = __syncthreads_and(next_ok) != 0;
    if (tile + 2 < tile_end) src.load(p, w, (tile + 2) * kTile);
  }

  // Partials: row (token q0 + i, head kv * group + hg), coordinates 8 nd + 2 q + {0, 1}.
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    l_run[rr] += __shfl_xor_sync(kFullWarpMask, l_run[rr], 1);
    l_run[rr] += __shfl_xor_sync(kFullWarpMask, l_run[rr], 2);
    const int r = row_of(rr);
    if (r >= w.rows) continue;
    const int flat = w.tile * kRows + r;
    const int i = flat / p.group, hg = flat - i * p.group;
    const int64_t v = (static_cast<int64_t>(w.q0) + i) * p.q_heads + w.kv * p.group + hg;
    const int64_t at = v * p.parts + w.part;
    float* out = p.partial_out + at * HeadDim;
#pragma unroll
    for (int nd = 0; nd < G::kDTiles; ++nd)
      *reinterpret_cast<float2*>(out + nd * kMmaN + 2 * q) = make_float2(acc[nd][2 * rr], acc[nd][2 * rr + 1]);
    if (q == 0) reinterpret_cast<float2*>(p.partial_max_sum)[at] = make_float2(m_run[rr], l_run[rr]);
  }
}

template <int HeadDim>
inline constexpr int kMinCtasPerSm = prefill_ctas_per_sm(HeadDim);

template <int HeadDim, int KeyBits, int ValueBits, DType QType>
__global__ void __launch_bounds__(Geometry<HeadDim>::kThreads, kMinCtasPerSm<HeadDim>)
    prefill_attention_kernel(const __grid_constant__ PrefillParams p) {
  using G = Geometry<HeadDim>;
  extern __shared__ __align__(1024) uint8_t smem[];  // tiles: 1024-byte aligned (Geometry)
  auto* factor_s = reinterpret_cast<float*>(smem + G::kFactorOffset);

  Work w;
  w.tile = blockIdx.x;
  w.kv = blockIdx.y / p.parts;
  w.part = blockIdx.y - w.kv * p.parts;
  w.seq = blockIdx.z;
  w.chunk = p.fresh && w.part == p.num_splits;
  w.q0 = __ldg(p.query_start + w.seq);
  int n = __ldg(p.query_start + w.seq + 1) - w.q0;
  n = n < 0 ? 0 : (n > p.max_query_len ? p.max_query_len : n);
  w.n = n;
  const int total_rows = n * p.group;
  if (w.tile * kRows >= total_rows) return;  // CTA-uniform
  w.rows = min(kRows, total_rows - w.tile * kRows);

  const int64_t capacity = static_cast<int64_t>(p.max_pages_per_seq) * p.page_size;
  const int64_t raw_len = __ldg(p.seq_lens + w.seq);
  const int len = static_cast<int>(raw_len < 0 ? 0 : (raw_len > capacity ? capacity : raw_len));
  w.prefix = p.fresh ? len : len - n;
  w.kv_len = w.chunk ? n : len;
  w.key_base = w.chunk ? w.prefix : 0;
  const int i_min = (w.tile * kRows) / p.group, i_max = (w.tile * kRows + w.rows - 1) / p.group;
  w.pos_min = w.prefix + i_min;
  w.pos_max = w.prefix + i_max;

  // The key range of the tile's rows, in tiles of the source, this part's share.
  const prefill_fragments::TileRange range = prefill_fragments::tile_range(
      w.pos_min, w.pos_max, p.sliding_window, w.key_base, w.kv_len, kTile, w.part, p.num_splits, !w.chunk);
  const int tile_begin = range.begin, tile_end = range.end;
  if (tile_begin >= tile_end) {  // nothing in this part: the combine skips it
    for (int r = threadIdx.x; r < w.rows; r += G::kThreads) {
      const int flat = w.tile * kRows + r;
      const int i = flat / p.group, hg = flat - i * p.group;
      const int64_t v = (static_cast<int64_t>(w.q0) + i) * p.q_heads + w.kv * p.group + hg;
      reinterpret_cast<float2*>(p.partial_max_sum)[v * p.parts + w.part] = make_float2(kNegInf, 0.0f);
    }
    return;
  }

  if (!w.chunk) {
    build_code_table<KeyBits, G::kThreads>(smem, p.key_levels);
    build_code_table<ValueBits, G::kThreads>(smem + kTableBytes, p.value_levels);
  }
  load_queries<HeadDim, QType>(p, w, !w.chunk, reinterpret_cast<__half*>(smem + G::kQOffset), factor_s);
  publish_tiles();
  __syncthreads();
  if (w.chunk) {
    ChunkSource<HeadDim, QType> src;
    attend<HeadDim>(p, w, src, tile_begin, tile_end, smem);
  } else {
    CodedSource<HeadDim, KeyBits, ValueBits> src;
    attend<HeadDim>(p, w, src, tile_begin, tile_end, smem);
  }
}

// One row v = token * q_heads + head per Layout::kLanes lanes.
template <int HeadDim, DType QType>
__global__ void __launch_bounds__(kCombineThreads) prefill_combine_kernel(const __grid_constant__ PrefillParams p) {
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int kRowsPerBlock = kCombineThreads / Layout::kLanes;
  const int lane = threadIdx.x % kWarpSize;
  const int l = lane % Layout::kLanes;
  const int64_t v = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / Layout::kLanes;
  const bool active = v < p.total_tokens * p.q_heads;  // inactive lanes still join the shuffles
  const auto* max_sum = reinterpret_cast<const float2*>(p.partial_max_sum) + (active ? v : 0) * p.parts;
  const float* partial = p.partial_out + (active ? v : 0) * p.parts * HeadDim;

  float m = kNegInf;
  if (active)
    for (int s = 0; s < p.parts; ++s) m = fmaxf(m, max_sum[s].x);
  float x[Layout::kChunks][device::kChunk];
#pragma unroll
  for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
    for (int k = 0; k < device::kChunk; ++k) x[u][k] = 0.0f;
  float sum = 0.0f;
  auto add_part = [&](int s) {
    const float2 ms = max_sum[s];
    if (ms.x == kNegInf) return;  // empty part: its partial_out may be unwritten
    const float weight = exp2f(ms.x - m);
    sum += weight * ms.y;
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u) {
      device::add_scaled_chunk(x[u], partial + static_cast<int64_t>(s) * HeadDim + Layout::chunk_index(l, u) * device::kChunk,
                               weight);
    }
  };
  if (active && m != kNegInf)
    for (int s = 0; s < p.num_splits; ++s) add_part(s);
  // Prefix parts live in the values' rotated domain: x = s * H y / sqrt(d).
  device::walsh_hadamard<HeadDim>(x, lane);
  const float scale = rht_scale<float>(HeadDim);
#pragma unroll
  for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
    for (int k = 0; k < device::kChunk; ++k) {
      const float y = x[u][k] * scale;
      x[u][k] = negated(p.value_signs, Layout::chunk_index(l, u) * device::kChunk + k) ? -y : y;
    }
  if (!active) return;
  if (p.fresh && m != kNegInf) add_part(p.num_splits);
  const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
  const int64_t token = v / p.q_heads;
  const auto head = static_cast<int32_t>(v - token * p.q_heads);
  auto* row = static_cast<uint8_t*>(p.out) + (token * p.out_stride0 + static_cast<int64_t>(head) * p.out_stride1) * kElementBytes;
#pragma unroll
  for (int u = 0; u < Layout::kChunks; ++u) {
    const int c = Layout::chunk_index(l, u);
    uint32_t h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = device::pack_pair<QType>(x[u][2 * i] * inverse, x[u][2 * i + 1] * inverse);
    *reinterpret_cast<uint4*>(row + c * device::kChunk * kElementBytes) = make_uint4(h[0], h[1], h[2], h[3]);
  }
  if (l == 0 && p.lse != nullptr) p.lse[v] = sum > 0.0f ? (m + log2f(sum)) * kLn2 : kNegInf;
}

}  // namespace prefill_kernel

template <int HeadDim, int KeyBits, int ValueBits, DType QType>
cudaError_t launch_prefill_attention(const PrefillParams& params, cudaStream_t stream) noexcept {
  namespace pk = prefill_kernel;
  using G = pk::Geometry<HeadDim>;
  static std::atomic<uint64_t> configured{0};
  const auto kernel = &pk::prefill_attention_kernel<HeadDim, KeyBits, ValueBits, QType>;
  constexpr size_t kDefaultLimit = 48 * 1024;
  if (G::kSmemBytes > kDefaultLimit) {
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e != cudaSuccess) return e;
    const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0u;
    if (bit == 0u || (configured.load(std::memory_order_relaxed) & bit) == 0u) {
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(G::kSmemBytes));
      if (e != cudaSuccess) return e;
      if (bit != 0u) configured.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  const dim3 grid(static_cast<unsigned>(params.row_tiles), static_cast<unsigned>(params.kv_heads * params.parts),
                  static_cast<unsigned>(params.num_seqs));
  kernel<<<grid, G::kThreads, G::kSmemBytes, stream>>>(params);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int64_t kRowsPerBlock = pk::kCombineThreads / Layout::kLanes;
  const int64_t rows = params.total_tokens * params.q_heads;
  pk::prefill_combine_kernel<HeadDim, QType>
      <<<static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock), pk::kCombineThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace turboquant::cuda::detail

// Explicit instances of one list entry (kernels/prefill_instances.inc) for f16 and bf16 queries.
#define TQ_INSTANTIATE_PREFILL_ATTENTION(HeadDim, KeyBits, ValueBits)                                       \
  template cudaError_t turboquant::cuda::detail::launch_prefill_attention<HeadDim, KeyBits, ValueBits,      \
                                                                          turboquant::DType::kF16>(         \
      const turboquant::cuda::detail::PrefillParams&, cudaStream_t) noexcept;                               \
  template cudaError_t turboquant::cuda::detail::launch_prefill_attention<HeadDim, KeyBits, ValueBits,      \
                                                                          turboquant::DType::kBF16>(        \
      const turboquant::cuda::detail::PrefillParams&, cudaStream_t) noexcept;
