// Decode attention on the packed, paged cache: the split kernel (flash-decoding over the context,
// tensor cores on codes dequantised through shared-memory tables) and the merge kernel (log-sum-exp
// merge of the splits, inverse RHT, output). Private to turboquant::cuda; instantiated by
// kernels/attention_d<HeadDim>.cu from the list in kernels/attention_instances.inc. Design and
// numbers: kernels/ATTENTION_NOTES.md.
//
// Split kernel, grid (num_splits, kv_heads * head_tiles / units, num_seqs); a work unit is one
// row of kv_heads * head_tiles (a head tile of a KV head) of one split, of kAttentionWarps warps
// (16-slot CTAs: 12, attention_split_warps); a CTA serves one unit, or two side by side (one per 8
// warps) where a 3-bit side's phase tables leave room for one CTA per SM (attention_units_per_cta):
//   1. the unit's range: the attended tokens [first, len) of its sequence, in 16-token chunks,
//      divided evenly over the splits; an empty range writes (max, sum) = (-inf, 0) and returns;
//   2. one shared-memory code table (CodeUnit below): a byte of codes (4 and 2 bits) or six bits
//      (3 bits, read through a byte of one of two phase tables) -> the half2 level pair(s), K side
//      and V side in each 256-byte entry, one copy per lane, so a lookup is one byte permute (the
//      address) and one conflict-free LDS; the K levels are stored as fp16(a * level) with a
//      host-chosen a in [1, 2) that keeps the roundings small (params.key_level_scale, folded back
//      into the logit factor);
//   3. the queries of the head tile (up to 8 heads of one GQA group; in window mode 8 or 16 (token,
//      head) slots, Shape's PvTiles) rotated with the keys' RHT in
//      fp32, one head per warp (device::WarpVector: the other warps wait for this at a barrier),
//      normalised by their largest coordinate and split into fp16 hi + lo, stored once as every
//      lane's B fragments (one 8-byte load per K.Q^T tile and k-step; one-tile CTAs hold theirs
//      in registers);
//   4. each warp walks every kAttentionWarps-th chunk of its unit through its own ring of kStages
//      shared-memory stages filled by cp.async (Shape, issue_chunk_copies): while it computes
//      chunk i from registers (read_chunk), chunks i + 1 .. i + kStages are in flight; per chunk it
//      runs
//        S^T = K Q^T as 1 or 2 (tiles of 4 heads) x HeadDim/16 (k-steps) mma.m16n8k16: A = key
//                   codes -> half2 levels through the code table (m = the chunk's 16 tokens),
//                   B = queries (n = 4 heads x {hi, lo} columns, so c0 + c1 is one head's score);
//        online softmax per head in log2 units, rescaled lazily (kRescaleSlack: the reference moves
//                   to max + 4 only when a logit exceeds it); chunks inside every slot's range
//                   skip the per-token masks;
//        O^T += V^T P'  as HeadDim/16 mma.m16n8k16: A = value codes -> half2 levels (m = coordinates,
//                   k = the 16 tokens; two tokens' code fields interleaved so that one lookup is
//                   one A register), B = P' = p_t * value_scale_t in fp16 (n = the 8
//                   heads; moved from the score layout by two shuffles per tile);
//      every coordinate permutation below is chosen so that a lane's codes are one contiguous
//      byte range of a row (one vector load) and a byte-pair table lookup gives a whole register;
//      stage rows sit at their page source's offset in a 128-byte line (one shared line per
//      cp.async wavefront), 64-byte value rows swizzled (Shape::kLinePhaseSlack, kValueSwizzle);
//   5. a unit's warps' (max, sum, O) merge through shared memory into one partial per (head, split).
// Both kernels may start early under programmatic dependent launch (wait_for_prior_grids) and let
// the next kernel start early (allow_dependent_grids); the split kernel builds its tables
// (parameters only) before waiting.
// Merge kernel, one CTA of four warps per (query row, head), the warps taking the splits in turn
// (all of a warp's loads in two round trips): combines the splits by log-sum-exp, divides by the
// sum, applies x = s * H y / sqrt(d) with the values' signs (device::warp_walsh_hadamard) and
// writes out (q's dtype) and lse.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "attention_params.hpp"
#include "turboquant/cuda/attention.hpp"
#include "turboquant/device/async_copy.cuh"
#include "turboquant/device/chunk.cuh"
#include "turboquant/device/common.cuh"
#include "turboquant/device/mma.cuh"
#include "turboquant/device/rht.cuh"
#include "turboquant/numeric.hpp"
#include "turboquant/rht.hpp"
#include "turboquant/signs.hpp"

namespace turboquant::cuda::detail {
namespace attention_kernel {

using device::half2_bits;
using device::kFullWarpMask;
using device::kWarpSize;

// ---- mma.m16n8k16 (fragment maps: turboquant/device/mma.cuh) ----------------------------------------
inline constexpr int kMmaM = 16;
inline constexpr int kMmaN = 8;
inline constexpr int kMmaK = 16;
inline constexpr int kQuads = 4;                    // lanes of one group
inline constexpr int kGroups = kWarpSize / kQuads;  // groups of a warp: 8

inline constexpr int kHeads = kAttentionHeadsPerCta;
inline constexpr int kChunkTokens = kAttentionChunkTokens;
static_assert(kChunkTokens == kMmaK && kChunkTokens == kMmaM,
              "a chunk is the m extent of one K.Q^T mma and the k extent of one P.V mma");
static_assert(kHeads == kMmaN && kHeads == kGroups, "the heads of a tile are the n extent of P.V");
// Two consecutive elements share a 32-bit register (k indices 2 quad + {0, 1} of a fragment, the
// two codes of a table entry, two fp16 values).
inline constexpr int kPair = 2;
// K.Q^T tiles: the n extent of one is 4 heads, each as two columns (its query's fp16 hi and lo
// parts, summed in the lane that holds both); a head tile of more than 4 heads takes two.
inline constexpr int kHeadsPerQkTile = kMmaN / kPair;
inline constexpr int kQkTilesPerPvTile = kHeads / kHeadsPerQkTile;
// Tokens of a chunk a lane scores: rows `group` and 8 + group of the K.Q^T C fragment.
inline constexpr int kTokenRows = kChunkTokens / kMmaN;
// Value rows of a chunk a lane reads (the k indices of its P.V A fragment): quad + {0, 4},
// 8 + quad + {0, 4} (Shape).
inline constexpr int kLaneValueRows = 2 * kPair;
// Rows between a lane's two value tokens of one A register (quad and quad + 4).
inline constexpr int kPairRows = kHeadsPerQkTile;
inline constexpr int kARegs = 4;    // f16x2 A registers of one m16k16 tile
inline constexpr int kAccRegs = 4;  // fp32 C registers of one m16n8 tile

inline constexpr float kLog2e = 1.44269504088896340736f;  // softmax runs in log2 units (exp2f)
inline constexpr float kLn2 = 0.69314718055994530942f;
inline constexpr float kNegInf = -__builtin_huge_valf();
// Lazy rescaling: a head's softmax reference (the running "max" of the online softmax, in log2
// units) is set to its largest logit so far plus this slack whenever a logit exceeds it, so the
// accumulators are rescaled only when a logit beats the last rescale's max by more than the slack
// (with slack 0, a verify window's 16-slot CTAs rescaled in 77% of their chunks: ncu, H200). Every
// weight 2^(logit - reference) stays <= 1, so P' = weight * value scale overflows fp16 no sooner
// than before; the largest weight is >= 2^-slack, so P' loses fp16 precision (subnormal) only for
// value scales below 2^(slack - 14) ~ 1e-3. The reference goes out as the partial's "max": the
// merges only need a common reference (lse = reference + log2 of the sum stays exact).
inline constexpr float kRescaleSlack = 4.0f;

inline constexpr int kBitsPerByte = 8;
inline constexpr int kBitsPerWord = 32;
inline constexpr int kBytesPerWord = 4;
inline constexpr int kMaxLoadBytes = 16;  // one vector load
// __byte_perm selectors: (x.low, y.low) and (x.high, y.high) halves.
inline constexpr uint32_t kPermLowHalves = 0x5410u;
inline constexpr uint32_t kPermHighHalves = 0x7632u;
// Elements of a q / out row are 2 bytes (f16 / bf16).
inline constexpr int kQElementBytes = 2;

inline constexpr int kMergeThreads = 128;

// ---- code tables -------------------------------------------------------------------------------
// One shared-memory region maps a lookup unit of codes to their levels, for both sides: entry e at
// byte e * kEntryBytes, the K side in its first kSideBytes, the V side in the rest. A unit is one
// byte of codes at 4 bits (two codes -> one half2) and at 2 bits (four codes -> two half2), six bits
// at 3 bits (two codes -> one half2). Each side's entry holds one copy per lane of a wavefront (32
// copies of 4 bytes, or 16 copies of 8 bytes: a 64-bit load is served per half-warp), so a lookup
// is conflict-free whatever the codes. Entry stride 256 bytes: the whole address, unit << 8 | lane
// offset, is ONE byte permute of a code word and the lane's offset register. The table is indexed
// by a byte for every width. Six-bit units (3 bits) are read through a byte that holds the unit in
// its low six bits (phase 0) or its high six bits (phase 1), the other two bits belonging to a
// neighbour: with a 3-bit side the table is two tables of kTableBytes, phase 0 with entry e = unit
// e % 64 and phase 1 with entry e = unit e / 4 (unit_offset).
inline constexpr int kEntryBytes = 256;
inline constexpr int kSideBytes = kEntryBytes / 2;
inline constexpr int kTableEntries = 1 << kBitsPerByte;  // indexed by a byte
inline constexpr uint32_t kPhaseTableBytes = kTableEntries * kEntryBytes;  // one phase: 64 KB

template <int Bits>
struct CodeUnit {
  static constexpr int kBits = Bits == 3 ? 6 : 8;          // code bits per unit
  static constexpr int kPairs = kBits / Bits / 2;           // half2 (two codes) per entry: 1 or 2
  static constexpr int kCopyBytes = kPairs * 4;             // one lane's copy of an entry
  static constexpr int kCopies = kSideBytes / kCopyBytes;   // 32 or 16
  static constexpr bool kByteUnits = kBits == 8;
  static_assert(Bits >= 2 && Bits <= 4, "coded sides of the attention kernel: 2, 3 or 4 bits");
};

// The byte offset of lane `lane`'s copy inside side `value_side` of an entry (< 256).
template <int Bits>
__device__ __forceinline__ uint32_t lane_copy_offset(int lane, bool value_side) {
  return (value_side ? kSideBytes : 0u) + static_cast<uint32_t>(lane % CodeUnit<Bits>::kCopies) * CodeUnit<Bits>::kCopyBytes;
}

[[nodiscard]] TQ_HOST_DEVICE constexpr int lowest_bit(int x) { return x & -x; }
[[nodiscard]] TQ_HOST_DEVICE constexpr int min_int(int a, int b) { return a < b ? a : b; }
[[nodiscard]] TQ_HOST_DEVICE constexpr size_t max_size(size_t a, size_t b) { return a > b ? a : b; }
[[nodiscard]] TQ_HOST_DEVICE constexpr int words_for(int bytes) { return (bytes + kBytesPerWord - 1) / kBytesPerWord; }
// Word `word` of a code stream of `bits`-bit fields: the bits of its even fields (fields 2 f).
[[nodiscard]] TQ_HOST_DEVICE constexpr uint32_t even_field_mask(int bits, int word) {
  uint32_t mask = 0u;
  for (int b = 0; b < kBitsPerWord; ++b)
    if ((kBitsPerWord * word + b) % (2 * bits) < bits) mask |= 1u << b;
  return mask;
}

// (ones & mask) | (zeros & ~mask) as ONE lop3; a constant mask becomes its immediate operand (for
// the C++ expression with a constant mask nvcc 13 emits an AND and an AND-OR).
__device__ __forceinline__ uint32_t select_bits(uint32_t mask, uint32_t ones, uint32_t zeros) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xE2;" : "=r"(r) : "r"(ones), "r"(mask), "r"(zeros));
  return r;
}

// ---- the per-warp stage ring ----------------------------------------------------------------------
// Copies of one 16-token region of rows of `row_bytes` (contiguous in the page and in the stage):
// row_bytes 16-byte pieces; lane l copies pieces l, l + 32, ... (the last step maybe partial).
template <int RowBytes>
struct RegionCopy {
  static constexpr int kPieces = RowBytes * kAttentionChunkTokens / device::kAsyncCopyBytes;
  static constexpr int kSteps = (kPieces + kWarpSize - 1) / kWarpSize;  // copies per lane
  static constexpr int kStep = kWarpSize * device::kAsyncCopyBytes;      // bytes between a lane's copies
  static_assert((RowBytes * kAttentionChunkTokens) % device::kAsyncCopyBytes == 0, "a region is whole pieces");
};

// Compile-time geometry of one instance.
//
// K.Q^T: lane (group, quad) holds key rows `group` and 8 + group of a chunk (its A fragment rows),
// coordinates [quad * d/4, (quad + 1) * d/4) of each: a contiguous quarter row. In k-step kk its A
// registers are the code pairs 2 kk and 2 kk + 1 of that quarter, so mma k index
// 2 quad + e <-> coordinate quad * d/4 + 4 kk + e and 8 + 2 quad + e <-> quad * d/4 + 4 kk + 2 + e;
// the query B registers follow the same map.
//
// P.V: m-tile mt, row group <-> coordinate group * d/8 + 2 mt, row group + 8 <-> the next one; the
// k indices 2 quad + e <-> token quad + 4 e, 8 + 2 quad + e <-> token 8 + quad + 4 e, so lane
// (group, quad) needs the contiguous eighth [group * d/8, (group + 1) * d/8) of value rows quad,
// quad + 4, 8 + quad, 12 + quad; code pair mt of an eighth is one table lookup giving (row group,
// row group + 8) of one token. (Rows four apart rather than two: with the rows unpadded in the
// stage, the four quads' reads meet in half as many banks; measured 3.5% faster at 32 x 16K than
// rows two apart in 80-byte padded rows, whose cp.async writes cost 2.3x the wavefronts.)
//
// Slots: a CTA serves kSlots = 8 PvTiles query slots (heads of a GQA group, or in window mode the
// (token, head) pairs of a window), PvTiles P.V n-tiles of 8 and kQkTiles K.Q^T tiles of 4. One
// n-tile (PvTiles = 1) is the decode shape; two (16 slots, window mode) dequantise each chunk once
// for twice the slots, at twice the accumulator registers (one CTA of 12 warps per SM).
template <int HeadDim, int KeyBits, int ValueBits, int PvTiles = 1>
struct Shape {
  static_assert(HeadDim % kMmaK == 0, "head_dim must be a multiple of 16");
  static_assert(PvTiles == 1 || PvTiles == 2, "8 or 16 slots per CTA");
  static constexpr int kPvTiles = PvTiles;
  static constexpr int kSlots = kHeads * PvTiles;
  static constexpr int kQkTiles = kQkTilesPerPvTile * PvTiles;
  // Warps of a work unit (attention_split_warps): each walks every kWarps-th chunk of the unit; the
  // query vectors are taken one per warp in kQueryPasses passes. A CTA serves kUnits units
  // (attention_units_per_cta: two with the 3-bit phase tables up to head_dim 128), one per group of
  // kWarps warps, which share the code table and nothing else.
  static constexpr int kWarps = attention_split_warps(kSlots);
  static constexpr int kThreads = kWarps * kWarpSize;  // of a unit
  static constexpr int kUnits = attention_units_per_cta(HeadDim, kSlots, KeyBits, ValueBits);
  static constexpr int kCtaThreads = kUnits * kThreads;
  // Resident CTAs per SM the register allocation aims at (the kernel's __launch_bounds__ minimum:
  // <= 128 registers up to head_dim 128, <= 255 at 256 with 8 warps); the kernel checks that shared
  // memory allows this many.
  static constexpr int kCtasPerSm = attention_ctas_per_sm(HeadDim, kSlots) / kUnits;
  // Threads that build the code table: a power of two of warps (8 of 12, 16 of two units of 8).
  static constexpr int kBuildThreads = (kUnits * kWarps >= 16 ? 16 : 8) * kWarpSize;
  static constexpr int kQueryPasses = (kSlots + kWarps - 1) / kWarps;
  static constexpr int kKeyBits = KeyBits;
  static constexpr int kValueBits = ValueBits;
  static constexpr int kKSteps = HeadDim / kMmaK;  // K.Q^T mmas per tile of 4 heads
  static constexpr int kMTiles = HeadDim / kMmaM;  // P.V mmas per chunk

  static constexpr int kKeyRowBytes = HeadDim * KeyBits / kBitsPerByte;
  static constexpr int kKeySegmentCoords = HeadDim / kQuads;
  static constexpr int kKeySegmentBytes = kKeyRowBytes / kQuads;
  // Rows in a stage are contiguous; a lane's segments start at multiples of their size.
  static constexpr int kKeySegmentAlign =
      min_int(min_int(lowest_bit(kKeyRowBytes), lowest_bit(kKeySegmentBytes)), kMaxLoadBytes);
  static constexpr int kKeyWords = words_for(kKeySegmentBytes);
  static constexpr int kKeyPairsPerUnit = CodeUnit<KeyBits>::kPairs;
  static constexpr int kCoordsPerKStep = 2 * kPair;  // of a lane's quarter: b0 and b1, a pair each

  static constexpr int kValueRowBytes = HeadDim * ValueBits / kBitsPerByte;
  static constexpr int kValueSegmentCoords = HeadDim / kGroups;
  static constexpr int kValueSegmentBytes = kValueRowBytes / kGroups;
  static constexpr int kValueSegmentAlign =
      min_int(min_int(lowest_bit(kValueRowBytes), lowest_bit(kValueSegmentBytes)), kMaxLoadBytes);
  static constexpr int kValueWords = words_for(kValueSegmentBytes);
  static constexpr int kValuePairsPerUnit = CodeUnit<ValueBits>::kPairs;

  static_assert(kKeyRowBytes % kQuads == 0 && kValueRowBytes % kGroups == 0,
                "a lane's segment of a row must be whole bytes");
  static_assert(kKeySegmentCoords == kCoordsPerKStep * kKSteps, "two code pairs per k-step");
  static_assert(kValueSegmentCoords == kPair * kMTiles, "one code pair per m-tile");

  // Shared memory: the code table, then per unit a head (the query B fragments, hi and lo, and the
  // per-head logit factors) and per warp its stage ring; after the main loop the warps' partials
  // (rows padded by one float to spread the banks) take the bytes from the table on (one unit: the
  // CTA is done with the table). Two units: [table][head 0][pad][rings of unit 0][rings of unit
  // 1][pad][head 1], so that a warp's ring is at a fixed stride from the CTA's first (a unit-uniform
  // base costs ptxas registers in the walk) and each unit's partials fit in its own bytes (its head,
  // pad and rings: the other unit may still read the table and its own).
  static constexpr int kPhases = attention_phase_tables(KeyBits, ValueBits) ? 2 : 1;
  static constexpr size_t kTableBytes = size_t{kPhases} * kPhaseTableBytes;
  // The query B fragments of every K.Q^T tile and k-step, one 8-byte entry per lane:
  // [kQkTiles][kKSteps][32] uint2.
  static constexpr size_t kQueryFragmentBytes = sizeof(uint2) * kQkTiles * kKSteps * kWarpSize;
  static constexpr size_t kFactorOffset = kQueryFragmentBytes;

  // The stage ring of each warp: kStages stages, each one chunk as
  // [key rows: 16 x kKeyRowBytes][value rows: 16 x kValueRowBytes][key scales][value scales], scales
  // with room for fp32. A warp reads chunk i from stage i % kStages while chunks i + 1 .. i + kStages
  // are in flight (the stage of chunk i is refilled right after its reads). The key and value rows
  // start kLinePhaseSlack bytes or less after their region's 128-byte-aligned base, at the same
  // offset in a 128-byte line as their source in the page (LaneStage: the CTA's KV head block may
  // start mid-line, e.g. 2112-byte head blocks at d = 128, 4 bits), so that every cp.async
  // wavefront fills one shared-memory line from one global line (ncu: 1.75-2.1x the ideal
  // wavefronts for the odd KV heads without it).
  static constexpr int kStages = 2;
  using KeyCopy = RegionCopy<kKeyRowBytes>;
  using ValueCopy = RegionCopy<kValueRowBytes>;
  static constexpr int kLineBytes = 128;
  // Every width takes the line phase: it shifts a segment by a multiple of 16 bytes, so a 3-bit
  // segment keeps its offset in a word, taken once per lane (segment_read). (While that offset was
  // taken per load, the line phase cost 3-bit sides more than it saved: K3V3 32 x 16K 0.208 against
  // 0.200 ms; with it taken once, 0.180 against 0.183, H200 A/B of 2026-11-29.)
  static constexpr int kLinePhaseSlack = kLineBytes - device::kAsyncCopyBytes;
  static constexpr int align_line(int bytes) { return (bytes + kLineBytes - 1) / kLineBytes * kLineBytes; }
  static constexpr int kScaleRegionBytes = kAttentionChunkTokens * static_cast<int>(sizeof(float));
  static constexpr int kStageValueOffset = align_line(kAttentionChunkTokens * kKeyRowBytes + kLinePhaseSlack);
  static constexpr int kStageKeyScalesOffset =
      kStageValueOffset + kAttentionChunkTokens * kValueRowBytes + kLinePhaseSlack;
  static constexpr int kStageValueScalesOffset = kStageKeyScalesOffset + kScaleRegionBytes;
  static constexpr int kStageBytes = align_line(kStageValueScalesOffset + kScaleRegionBytes);
  static_assert(kStageKeyScalesOffset % device::kAsyncCopyBytes == 0, "stage regions start 16-byte aligned");
  static constexpr size_t kUnitHeadBytes = align_line(static_cast<int>(kFactorOffset + sizeof(float) * kSlots));
  // Value rows of 64 bytes read as 8-byte segments (d = 128 at 4 bits): the four rows one LDS.64
  // reaches (quad = 0..3) would meet two by two in the same banks; rows with bit 1 set store their
  // 16-byte pieces with piece index bit 1 flipped (XOR 32 bytes), which makes every read one
  // wavefront per half-warp (ncu: 2x the ideal wavefronts before).
  static constexpr bool kValueSwizzle = kValueRowBytes == 64 && kValueSegmentBytes == 8;
  static constexpr size_t kRingBytes = size_t{kWarps} * kStages * kStageBytes;

  // The warps' partials: [warp][head] rows of kMergeRowStride floats, coordinate c at
  // c + c / kValueSegmentCoords (one float of padding after each lane group's eighth). A lane
  // (group, quad) stores coordinate 16 group + 2 mt + e of head 2 quad + h: with the row stride
  // = 4 (mod 16) and the padding, the 32 lanes of each store hit 32 distinct banks (8 quad + 17 group
  // mod 32 at d = 128), where rows of d + 1 floats were 4-way conflicts.
  static constexpr int kMergeRowStride = (HeadDim + kGroups + 11) / 16 * 16 + 4;
  __device__ static constexpr int merge_index(int head, int coord) {
    return head * kMergeRowStride + coord + coord / kValueSegmentCoords;
  }
  static constexpr size_t kMergeOutFloats = size_t{kWarps} * kSlots * kMergeRowStride;
  // Then the warps' (max, sum) per slot ([warp][slot] float2) and each slot's first element in
  // partial_out ([slot] int64).
  static constexpr size_t kMergeBytes =
      sizeof(float) * kMergeOutFloats + sizeof(float2) * kWarps * kSlots + sizeof(int64_t) * kSlots;
  static constexpr size_t kUnitPadBytes =
      kUnits == 1 || kUnitHeadBytes + kRingBytes >= kMergeBytes
          ? 0
          : align_line(static_cast<int>(kMergeBytes - kUnitHeadBytes - kRingBytes));
  // The CTA's first ring; warp w's (of the CTA) is w kStages kStageBytes further.
  static constexpr size_t kRingsOffset = kTableBytes + kUnitHeadBytes + kUnitPadBytes;
  __device__ static constexpr size_t unit_head_offset(int unit) {
    return unit == 0 ? kTableBytes : kRingsOffset + kUnits * kRingBytes + kUnitPadBytes;
  }
  __device__ static constexpr size_t merge_offset(int unit) {
    return kUnits == 1 ? 0 : (unit == 0 ? kTableBytes : kRingsOffset + kRingBytes);
  }
  static constexpr size_t kSmemBytes =
      max_size(kTableBytes + kUnits * (kUnitHeadBytes + kUnitPadBytes + kRingBytes), kUnits == 1 ? kMergeBytes : 0);
  static_assert(kUnits == 1 || kUnitHeadBytes + kUnitPadBytes + kRingBytes >= kMergeBytes,
                "a unit's partials fit in its bytes");
  static_assert(kMergeOutFloats % 2 == 0, "the (max, sum) pairs and partial offsets stay 8-byte aligned");
};

// ---- small device helpers -------------------------------------------------------------------------


// 2^x with the hardware approximation (flush-to-zero: results below 2^-126 are 0, as every weight
// that small is negligible next to the row maximum's 1).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}


// Bytes [p + bits / 8, ...) of a stage (shared memory) as little-endian words (bits beyond Bytes are
// unspecified). Align is what the caller guarantees for the segment; `bits` is nonzero only below
// 4-byte alignment, where p is the word-aligned address below the segment and bits its offset in
// that word (a lane constant, segment_read): the covering aligned words are loaded (at most 3
// bytes past the segment, still inside the stage: the next row, or the region after the rows) and
// funnel-shifted.
template <int Bytes, int Align>
__device__ __forceinline__ void load_segment(const uint8_t* p, uint32_t bits, uint32_t (&w)[words_for(Bytes)]) {
  constexpr int kWide = sizeof(uint4), kDouble = sizeof(uint2), kWord = sizeof(uint32_t);
  if constexpr (Align >= kWide && Bytes % kWide == 0) {
#pragma unroll
    for (int i = 0; i < Bytes / kWide; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      constexpr int kW = kWide / kWord;
      w[kW * i] = v.x;
      w[kW * i + 1] = v.y;
      w[kW * i + 2] = v.z;
      w[kW * i + 3] = v.w;
    }
  } else if constexpr (Align >= kDouble && Bytes % kDouble == 0) {
#pragma unroll
    for (int i = 0; i < Bytes / kDouble; ++i) {
      const uint2 v = reinterpret_cast<const uint2*>(p)[i];
      constexpr int kW = kDouble / kWord;
      w[kW * i] = v.x;
      w[kW * i + 1] = v.y;
    }
  } else if constexpr (Align >= kWord && Bytes % kWord == 0) {
#pragma unroll
    for (int i = 0; i < Bytes / kWord; ++i) w[i] = reinterpret_cast<const uint32_t*>(p)[i];
  } else {
    // The aligned words covering the segment: it starts at most kWord - Align bytes into a word.
    constexpr int kWords = words_for(Bytes), kCover = words_for(Bytes + kWord - Align);
    const auto* base = reinterpret_cast<const uint32_t*>(p);
    uint32_t raw[kCover];
#pragma unroll
    for (int i = 0; i < kCover; ++i) raw[i] = base[i];
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = __funnelshift_r(raw[i], i + 1 < kCover ? raw[i + 1] : 0u, bits);
  }
}

// ---- query / output rows (f16 | bf16): one chunk of 8 coordinates per 16-byte access ------------

// x = chunk c of a row (at src, 16-byte aligned, read-only) as floats, times the signs of `signs`
// (device/chunk.cuh: a flipped sign bit is an exact negation). Outputs go through
// device::store_chunk.
template <DType T>
__device__ __forceinline__ void load_row_chunk(const uint8_t* src, const SignBits& signs, int c,
                                               float (&x)[device::kChunk]) {
  const uint4 v = device::load16<true>(src);
  const uint32_t w[device::kPairsPerChunk] = {v.x, v.y, v.z, v.w};
  const device::ChunkSigns flip = device::chunk_signs(signs, c);
#pragma unroll
  for (int i = 0; i < device::kPairsPerChunk; ++i) {
    const uint32_t pair = w[i] ^ flip.pair[i];
    x[2 * i] = device::low_half_to_float<T>(pair);
    x[2 * i + 1] = device::high_half_to_float<T>(pair);
  }
}

// A token's scale (fp16 or fp32 in the stage's scale region) as a float.
__device__ __forceinline__ float load_scale(const uint8_t* at, NormStorage norm) {
  return norm == NormStorage::kF32 ? *reinterpret_cast<const float*>(at)
                                   : __half2float(*reinterpret_cast<const __half*>(at));
}

// What one lane holds of one chunk (see Shape for the maps).
template <class S>
struct ChunkRegs {
  uint32_t key[kTokenRows][S::kKeyWords];          // j: quarter `quad` of key row 8 j + group
  uint32_t value[kLaneValueRows][S::kValueWords];  // eighth `group` of value rows quad + {0, 4}, 8 + quad + {0, 4}
  float key_scale[kTokenRows];                     // of rows group, 8 + group (the scored tokens)
  float value_scale[kTokenRows];
  bool page_ok;                                    // the block-table entry is inside the pool
};

// A lane's part of every chunk's copies (page -> stage) and reads (stage -> registers), the same for
// every chunk of the CTA: byte offsets, 32-bit (a page is far below 2 GiB).
struct LaneStage {
  uint32_t key_src;          // in a page: KV head kv's K codes + this lane's first 16-byte piece (at row 0)
  uint32_t value_src;        // ... its V codes + this lane's first piece
  uint32_t key_dst;          // in a stage: this lane's first key piece (RegionCopy: piece `lane`)
  uint32_t value_dst;        // ... and value piece
  uint32_t scale_src;        // in a page: the scale piece this lane copies (at row 0), lanes 0-7 only
  uint32_t scale_dst;        // in a stage: where it goes
  uint32_t scale_row_bytes;  // 2 (fp16) or 4 (fp32) bytes per row of that plane; 0: no scale piece
  uint32_t key_read;         // in a stage: this lane's key segment of row `group` (its word, segment_read)
  uint32_t value_read;       // ... its value segment of row `quad`
  uint32_t key_read_bits;    // the segments' bit offsets in those words (0 unless 3-bit segments)
  uint32_t value_read_bits;
  uint32_t key_scale_read;   // ... its key scale of row `group`
  uint32_t value_scale_read;
};

// A lane's segment at byte `offset` of a stage as (its word-aligned offset, its bit offset in that
// word) for segments below 4-byte alignment (3-bit sides): stages start on 128-byte lines and rows
// are whole words apart, so the offset in the word is the same for every row and chunk and is taken
// once here rather than per load.
template <int Align, int RowBytes>
__device__ __forceinline__ void segment_read(uint32_t offset, uint32_t& read, uint32_t& bits) {
  if constexpr (Align >= kBytesPerWord) {
    read = offset;
    bits = 0u;
  } else {
    static_assert(RowBytes % kBytesPerWord == 0, "rows a whole number of words apart");
    read = offset & ~static_cast<uint32_t>(kBytesPerWord - 1);
    bits = (offset % kBytesPerWord) * kBitsPerByte;
  }
}

// `ring` is the shared address of the warp's stage ring (stages are whole 128-byte lines apart).
template <class S, bool kValues>
__device__ __forceinline__ LaneStage lane_stage(const AttentionParams& p, int kv, int lane, NormStorage key_norm,
                                                NormStorage value_norm, uint32_t ring) {
  constexpr int kScaleLanes = 2 * S::kScaleRegionBytes / device::kAsyncCopyBytes;  // 4 pieces per scale region
  constexpr int kPiecesPerScaleRegion = kScaleLanes / 2;
  const int group = lane / kQuads, quad = lane % kQuads;
  const auto head = static_cast<uint32_t>(kv * p.head_bytes);
  const bool f32_keys = key_norm == NormStorage::kF32, f32_values = value_norm == NormStorage::kF32;
  LaneStage o;
  const uint32_t piece0 = head + static_cast<uint32_t>(lane * device::kAsyncCopyBytes);
  o.key_src = piece0 + static_cast<uint32_t>(p.key_codes_offset);
  o.value_src = piece0 + static_cast<uint32_t>(p.value_codes_offset);
  // The rows' offset in a 128-byte line, as in the page (exact when the pool and its pages are
  // 128-byte aligned, the usual case; any offset is correct, only the wavefront count differs).
  const auto page_line = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p.pages));
  constexpr uint32_t kLineMask = S::kLineBytes - 1;
  const uint32_t key_shift = (page_line + head + static_cast<uint32_t>(p.key_codes_offset) - ring) & kLineMask;
  const uint32_t value_shift =
      (page_line + head + static_cast<uint32_t>(p.value_codes_offset) - ring - S::kStageValueOffset) & kLineMask;
  uint32_t value_piece = static_cast<uint32_t>(lane * device::kAsyncCopyBytes);
  uint32_t value_segment = quad * S::kValueRowBytes + group * S::kValueSegmentBytes;
  if constexpr (S::kValueSwizzle) {
    // Piece `lane` is row lane / 4 (and 8 + lane / 4), piece lane % 4 of it; a lane reads rows
    // quad + 4 i, whose bit 1 is quad's.
    constexpr uint32_t kFlip = 2 * device::kAsyncCopyBytes;
    value_piece ^= ((lane / 4) & 2) != 0 ? kFlip : 0u;
    value_segment ^= (quad & 2) != 0 ? kFlip : 0u;
  }
  o.key_dst = key_shift + static_cast<uint32_t>(lane * device::kAsyncCopyBytes);
  o.value_dst = S::kStageValueOffset + value_shift + value_piece;
  // Lanes 0-3 copy the key scales' pieces, lanes 4-7 the value scales' (fp16 rows: 2 pieces, fp32: 4).
  const bool value_scales = lane >= kPiecesPerScaleRegion;
  const int piece = lane % kPiecesPerScaleRegion;
  const uint32_t row_bytes = (value_scales ? f32_values : f32_keys) ? sizeof(float) : sizeof(uint16_t);
  const bool copies = lane < kScaleLanes && (kValues || !value_scales) &&
                      piece * device::kAsyncCopyBytes < static_cast<int>(kChunkTokens * row_bytes);
  o.scale_row_bytes = copies ? row_bytes : 0u;
  o.scale_src = head + static_cast<uint32_t>(value_scales ? p.value_scales_offset : p.key_scales_offset) +
                static_cast<uint32_t>(piece * device::kAsyncCopyBytes);
  o.scale_dst = (value_scales ? S::kStageValueScalesOffset : S::kStageKeyScalesOffset) + piece * device::kAsyncCopyBytes;
  segment_read<S::kKeySegmentAlign, S::kKeyRowBytes>(key_shift + group * S::kKeyRowBytes + quad * S::kKeySegmentBytes,
                                                    o.key_read, o.key_read_bits);
  segment_read<S::kValueSegmentAlign, S::kValueRowBytes>(S::kStageValueOffset + value_shift + value_segment,
                                                        o.value_read, o.value_read_bits);
  o.key_scale_read = S::kStageKeyScalesOffset + group * (f32_keys ? sizeof(float) : sizeof(uint16_t));
  o.value_scale_read = S::kStageValueScalesOffset + group * (f32_values ? sizeof(float) : sizeof(uint16_t));
  return o;
}

// The block-table entry of chunk `chunk` of a sequence (raw: page_inside_pool tells whether it may be
// read, at the time of use, so that the load's latency stays off the issuing path) and the chunk's
// first row in its page (a multiple of 16: a chunk stays in its page). Shifts when a page holds a
// power of two of chunks (every usual page size).
__device__ __forceinline__ int chunk_page(const AttentionParams& p, const int32_t* block_row, int chunk) {
  const int slot = p.page_chunks_log2 >= 0 ? chunk >> p.page_chunks_log2 : chunk / (p.page_size / kChunkTokens);
  return __ldg(block_row + slot);
}

__device__ __forceinline__ bool page_inside_pool(const AttentionParams& p, int page) {
  return page >= 0 && page < p.num_pages;
}

__device__ __forceinline__ int chunk_row0(const AttentionParams& p, int chunk) {
  const int chunks_per_page = p.page_size / kChunkTokens;
  const int in_page = p.page_chunks_log2 >= 0 ? chunk & (chunks_per_page - 1) : chunk % chunks_per_page;
  return in_page * kChunkTokens;
}

// Issues this lane's cp.async copies of chunk rows [row0, row0 + 16) of page `page` (K codes, K
// scales, and with kValues V codes and V scales) into the stage at shared address `stage`. A page
// outside the pool (`skip`) fills the stage with zeros instead (nothing is read; its tokens are
// masked).
template <class S, bool kValues>
__device__ __forceinline__ void issue_chunk_copies(const AttentionParams& p, const LaneStage& o, int page, bool skip,
                                                   int row0, uint32_t stage, int lane) {
  // One 32 x 32 -> 64-bit multiply: page >= 0 here (or skipped), page_bytes <= INT32_MAX (host check).
  const uint8_t* base = p.pages + static_cast<uint64_t>(static_cast<uint32_t>(skip ? 0 : page)) *
                                      static_cast<uint32_t>(p.page_bytes);
  const uint8_t* keys = base + (o.key_src + static_cast<uint32_t>(row0 * S::kKeyRowBytes));
#pragma unroll
  for (int j = 0; j < S::KeyCopy::kSteps; ++j)
    if (S::KeyCopy::kPieces % kWarpSize == 0 || lane + j * kWarpSize < S::KeyCopy::kPieces)
      device::async_copy_16(stage + o.key_dst + j * S::KeyCopy::kStep, keys + j * S::KeyCopy::kStep, skip);
  if constexpr (kValues) {
    const uint8_t* values =
        base + (o.value_src + static_cast<uint32_t>(row0 * S::kValueRowBytes));
#pragma unroll
    for (int j = 0; j < S::ValueCopy::kSteps; ++j)
      if (S::ValueCopy::kPieces % kWarpSize == 0 || lane + j * kWarpSize < S::ValueCopy::kPieces)
        device::async_copy_16(stage + o.value_dst + j * S::ValueCopy::kStep, values + j * S::ValueCopy::kStep, skip);
  }
  if (o.scale_row_bytes != 0u)
    device::async_copy_16(stage + o.scale_dst, base + (o.scale_src + static_cast<uint32_t>(row0) * o.scale_row_bytes), skip);
}

// This lane's registers of the chunk in `stage` (shared memory), landed (async_copy_wait + __syncwarp).
template <class S, bool kValues>
__device__ __forceinline__ void read_chunk(const uint8_t* stage, const LaneStage& o, NormStorage key_norm,
                                           NormStorage value_norm, ChunkRegs<S>& r) {
  const int key_scale_bytes = key_norm == NormStorage::kF32 ? sizeof(float) : sizeof(uint16_t);
  const int value_scale_bytes = value_norm == NormStorage::kF32 ? sizeof(float) : sizeof(uint16_t);
#pragma unroll
  for (int j = 0; j < kTokenRows; ++j) {
    load_segment<S::kKeySegmentBytes, S::kKeySegmentAlign>(stage + o.key_read + j * kMmaN * S::kKeyRowBytes,
                                                           o.key_read_bits, r.key[j]);
    r.key_scale[j] = load_scale(stage + o.key_scale_read + j * kMmaN * key_scale_bytes, key_norm);
  }
  if constexpr (kValues) {
#pragma unroll
    for (int i = 0; i < kLaneValueRows; ++i) {
      const int row = (i / kPair) * kMmaN + (i % kPair) * kPairRows;  // after the lane's first token
      load_segment<S::kValueSegmentBytes, S::kValueSegmentAlign>(stage + o.value_read + row * S::kValueRowBytes,
                                                                 o.value_read_bits, r.value[i]);
    }
#pragma unroll
    for (int j = 0; j < kTokenRows; ++j)
      r.value_scale[j] = load_scale(stage + o.value_scale_read + j * kMmaN * value_scale_bytes, value_norm);
  }
}

// Fills side `value_side` of every entry of the code table (see CodeUnit): entry e's codes (LSB
// first, Bits each; 3 bits: of phase 0 from bit 0, of phase 1 from bit 2) -> the half2 of
// scale * level of consecutive codes, one copy per lane (16-byte stores of 128 bytes per entry side).
// Threads: the CTA's threads that build (a power of two of warps).
template <int Bits, int Threads>
__device__ __forceinline__ void build_code_table(uint8_t* table, bool value_side, const float* levels, float scale) {
  using U = CodeUnit<Bits>;
  constexpr uint32_t kMask = (1u << Bits) - 1u;
  constexpr int kStoresPerSide = kSideBytes / static_cast<int>(sizeof(uint4));
  // Thread t stores part t % 8 of entries t / 8 + (Threads / 8) k: consecutive lanes fill
  // consecutive 16 bytes (conflict-free), and the entry's low bits are the same in every pass, so
  // the levels they select are loaded once (fewer instructions in a prologue that every CTA runs).
  constexpr int kEntriesPerPass = Threads / kStoresPerSide;
  static_assert(kTableEntries % kEntriesPerPass == 0 && (kEntriesPerPass & (kEntriesPerPass - 1)) == 0,
                "whole passes, and a pass number that does not touch the entry's low bits");
  if (threadIdx.x >= Threads) return;  // warp-uniform
  const auto first = static_cast<uint32_t>(threadIdx.x) / kStoresPerSide;
  constexpr int kPhases = U::kByteUnits ? 1 : 2;
#pragma unroll
  for (int phase = 0; phase < kPhases; ++phase) {
    const int from = phase * (kBitsPerByte - U::kBits);  // the unit's first bit in the byte
    auto* dst = reinterpret_cast<uint4*>(table + phase * kPhaseTableBytes + first * kEntryBytes +
                                         (value_side ? kSideBytes : 0)) +
                threadIdx.x % kStoresPerSide;
#pragma unroll
    for (int k = 0; k < kTableEntries / kEntriesPerPass; ++k) {
      const uint32_t e = first | static_cast<uint32_t>(k * kEntriesPerPass);
      uint32_t w[2] = {0u, 0u};
#pragma unroll
      for (int j = 0; j < U::kPairs; ++j) {
        const uint32_t low = (e >> (from + 2 * j * Bits)) & kMask;
        const uint32_t high = (e >> (from + (2 * j + 1) * Bits)) & kMask;
        w[j] = half2_bits(scale * levels[low], scale * levels[high]);
      }
      dst[k * kEntriesPerPass * (kEntryBytes / static_cast<int>(sizeof(uint4)))] =
          U::kPairs == 1 ? make_uint4(w[0], w[0], w[0], w[0]) : make_uint4(w[0], w[1], w[0], w[1]);
    }
  }
}

// Byte offset in the code table of unit `u` (of the side and lane folded into `lane_offset`) of a
// little-endian code word stream: one byte permute (the byte holding the unit -> bits 8-15, the lane
// offset -> bits 0-7), for six-bit units after a shift and with the phase table's base added.
template <int Bits, int Words>
__device__ __forceinline__ uint32_t unit_offset(const uint32_t (&w)[Words], int u, uint32_t lane_offset) {
  if constexpr (CodeUnit<Bits>::kByteUnits) {
    const int word = u / kBytesPerWord, byte = u % kBytesPerWord;
    return __byte_perm(w[word], lane_offset, 0x7604u | (static_cast<uint32_t>(byte) << 4));
  } else {
    // Six-bit units: four per three bytes, unit 4 k + r at bit 24 k + 6 r. Units r = 0 and 3 lie in
    // the low (phase 0) and high six bits (phase 1) of bytes 3 k and 3 k + 2; in the stream shifted
    // left by 4 bits, units r = 1 and 2 lie in the high six bits of byte 3 k + 1 and the low six bits
    // of byte 3 k + 2. So one shifted copy of the words (one funnel shift each, shared by the units
    // of every group) and the two phase tables take every unit with one byte permute.
    constexpr int kUnitBits = CodeUnit<Bits>::kBits;
    constexpr int kShift = 4;
    const int r = u % 4;
    const int shift = r == 1 || r == 2 ? kShift : 0;
    const int phase = r == 1 || r == 3 ? 1 : 0;
    const int at = u * kUnitBits + shift - phase * (kBitsPerByte - kUnitBits);  // the byte, in the shifted stream
    const int word = at / kBitsPerWord, byte = (at % kBitsPerWord) / kBitsPerByte;
    const uint32_t high = word < Words ? w[word] : 0u;
    const uint32_t shifted =
        shift == 0 ? high : (word == 0 ? high << shift : __funnelshift_l(w[word - 1], high, shift));
    return __byte_perm(shifted, lane_offset, 0x7604u | (static_cast<uint32_t>(byte) << 4)) +
           static_cast<uint32_t>(phase) * kPhaseTableBytes;
  }
}

// The half2 of code pair `pair` (codes 2 pair, 2 pair + 1 of the stream) through the code table.
template <int Bits, int Words>
__device__ __forceinline__ uint32_t pair_levels(const uint8_t* table, const uint32_t (&w)[Words], int pair,
                                                uint32_t lane_offset) {
  constexpr int kPairs = CodeUnit<Bits>::kPairs;
  const uint32_t at = unit_offset<Bits>(w, pair / kPairs, lane_offset) + static_cast<uint32_t>(pair % kPairs) * 4u;
  return *reinterpret_cast<const uint32_t*>(table + at);
}

// Both half2 of a two-pair unit (2-bit codes: four codes per byte) in one 64-bit load.
template <int Bits, int Words>
__device__ __forceinline__ uint2 unit_levels(const uint8_t* table, const uint32_t (&w)[Words], int u,
                                             uint32_t lane_offset) {
  static_assert(CodeUnit<Bits>::kPairs == 2, "two-pair units only");
  return *reinterpret_cast<const uint2*>(table + unit_offset<Bits>(w, u, lane_offset));
}

// The queries: warp w takes local heads w + kWarps u of the CTA's slots, u < Shape::kQueryPasses
// (one vector per warp and pass, device::WarpVector, all heads at once: the CTA's other warps wait
// for them at a barrier, so their latency is what counts). Local head v is slot head0 + v of the
// tile: query token (head0 + v) / group of the sequence's rows from token_row0 (one token in
// decode), head kv * group + (head0 + v) % group. load_query issues the loads of one pass (head0,
// heads: counted from the pass's first slot) as early as the row is known (raw f16 / bf16 pairs,
// zero past the tile's heads);
// store_query_fragments rotates with the keys' RHT, normalises by the largest coordinate and stores
// the hi / lo fp16 parts straight into the K.Q^T B fragments `qfrag` (see the split kernel: entry
// (nt * kKSteps + kk) * 32 + 4 column + quarter holds coordinates quarter * d/4 + 4 kk .. + 3 of
// column 2 (v % 4) + part of tile nt = v / 4) and factor[v] = largest * softmax_scale /
// key_level_scale (the key table holds scaled levels).
template <int HeadDim>
struct QueryWords {
  uint32_t w[device::WarpVector<HeadDim>::kCoords / kPair];
};

template <int HeadDim>
__device__ __forceinline__ QueryWords<HeadDim> load_query(const AttentionParams& p, int token_row0, int kv, int head0,
                                                         int heads, int v) {
  using V = device::WarpVector<HeadDim>;
  static_assert(kAttentionWarps >= kHeads, "one warp per local head");
  const int lane = threadIdx.x % kWarpSize;
  QueryWords<HeadDim> q{};
  if (v >= heads) return q;  // warp-uniform
  const int slot = head0 + v, token = slot / p.group;
  const auto* src = static_cast<const uint8_t*>(p.q) +
                    (static_cast<int64_t>(token_row0 + token) * p.q_stride0 +
                     static_cast<int64_t>(kv * p.group + slot - token * p.group) * p.q_stride1 +
                     V::first(lane)) *
                        kQElementBytes;
  if constexpr (V::kCoords == 8) {
    const uint4 r = device::load16<true>(src);
    q.w[0] = r.x, q.w[1] = r.y, q.w[2] = r.z, q.w[3] = r.w;
  } else {
    static_assert(V::kCoords == 4, "4 or 8 coordinates per lane");
    const uint2 r = __ldg(reinterpret_cast<const uint2*>(src));
    q.w[0] = r.x, q.w[1] = r.y;
  }
  return q;
}

template <class S, int HeadDim, DType QType>
__device__ __forceinline__ void store_query_fragments(const AttentionParams& p, const QueryWords<HeadDim>& q, int v,
                                                      uint2* qfrag, float* factor) {
  using V = device::WarpVector<HeadDim>;
  static_assert(V::kCoords % S::kCoordsPerKStep == 0 && S::kKeySegmentCoords % V::kCoords == 0,
                "a lane's coordinates are whole B-fragment entries of one quarter");
  const int lane = threadIdx.x % kWarpSize;
  if (v >= S::kSlots) return;  // warp-uniform
  const int c0 = V::first(lane);
  const uint32_t signs = V::lane_signs(p.key_signs, lane);
  float x[V::kCoords];
#pragma unroll
  for (int i = 0; i < V::kCoords / kPair; ++i) {  // a flipped sign is an exact negation (zeros stay zeros)
    const float a = device::low_half_to_float<QType>(q.w[i]), b = device::high_half_to_float<QType>(q.w[i]);
    x[2 * i] = (signs >> (2 * i)) & 1u ? -a : a;
    x[2 * i + 1] = (signs >> (2 * i + 1)) & 1u ? -b : b;
  }
  device::warp_walsh_hadamard<HeadDim>(x, lane);
  const float scale = rht_scale<float>(HeadDim);
  float largest = 0.0f;
#pragma unroll
  for (int k = 0; k < V::kCoords; ++k) {
    x[k] *= scale;
    largest = fmaxf(largest, fabsf(x[k]));
  }
#pragma unroll
  for (int d = 1; d < kWarpSize; d <<= 1) largest = fmaxf(largest, __shfl_xor_sync(kFullWarpMask, largest, d));
  // Approximate divisions (a few ulp; an IEEE division compiles to a subroutine call here): the
  // query only needs to be normalised to about 1, and the factor carries `largest` exactly.
  const float inverse = largest > 0.0f ? __fdividef(1.0f, largest) : 0.0f;
#pragma unroll
  for (int e = 0; e < V::kCoords / S::kCoordsPerKStep; ++e) {
    uint32_t hi[kPair], lo[kPair];
#pragma unroll
    for (int i = 0; i < kPair; ++i) {
      const float a = x[S::kCoordsPerKStep * e + 2 * i] * inverse, b = x[S::kCoordsPerKStep * e + 2 * i + 1] * inverse;
      const __half2 h = __floats2half2_rn(a, b);
      const float2 back = __half22float2(h);
      hi[i] = *reinterpret_cast<const uint32_t*>(&h);
      lo[i] = half2_bits(a - back.x, b - back.y);
    }
    const int c = c0 + S::kCoordsPerKStep * e;
    const int quarter = c / S::kKeySegmentCoords, kk = (c % S::kKeySegmentCoords) / S::kCoordsPerKStep;
    uint2* entry = qfrag + ((v / kHeadsPerQkTile) * S::kKSteps + kk) * kWarpSize + kQuads * kPair * (v % kHeadsPerQkTile) + quarter;
    if (lane < V::kLanes) {
      entry[0] = make_uint2(hi[0], hi[1]);        // column 2 (v % 4): hi
      entry[kQuads] = make_uint2(lo[0], lo[1]);   // column 2 (v % 4) + 1: lo
    }
  }
  if (lane == 0) factor[v] = largest * __fdividef(p.softmax_scale, p.key_level_scale);
}

// One chunk of one warp: scores, online softmax, value accumulation.
// S^T = K Q^T of one chunk for kTiles tiles of 4 heads: s[nt][j] = the (unscaled) score of token
// 8 j + group and local head 4 nt + quad. A = the key levels (m = the chunk's 16 tokens: lane (group,
// quad) holds rows group and 8 + group, code pairs 2 kk and 2 kk + 1 of its quarter row in k-step
// kk), B = the queries (n = 4 heads x {hi, lo}: column 2 h + part, one LDS.64 per tile and k-step
// from `qfrag`, see the split kernel), so c0 + c1 (c2 + c3) is the whole score of one head. Even and
// odd k-steps accumulate separately (independent mma chains), summed at the end.
// Query B fragments: read from shared memory per tile and k-step, or (one tile) held in registers.
template <int KSteps>
struct SharedQuery {
  const uint2* p;  // qfrag + lane
  __device__ __forceinline__ uint2 get(int nt, int kk) const { return p[(nt * KSteps + kk) * kWarpSize]; }
};
template <int KSteps>
struct RegisterQuery {
  uint2 q[KSteps];
  __device__ __forceinline__ uint2 get(int, int kk) const { return q[kk]; }
};

template <class S, int kTiles, class Q>
__device__ __forceinline__ void qk_chunk(const ChunkRegs<S>& r, const Q& qfrag, const uint8_t* table,
                                         uint32_t key_offset, float (&s)[S::kQkTiles][kTokenRows]) {
  constexpr int kChains = 2;
  float c[kChains][kTiles][kAccRegs];
#pragma unroll
  for (int h = 0; h < kChains; ++h)
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) c[h][nt][0] = c[h][nt][1] = c[h][nt][2] = c[h][nt][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < S::kKSteps; ++kk) {
    uint32_t a[kARegs];  // rows group / 8 + group, k 2 quad + {0,1} (pair 2 kk) and 8 + 2 quad + {0,1} (pair 2 kk + 1)
    if constexpr (S::kKeyPairsPerUnit == 2) {
      const uint2 low = unit_levels<S::kKeyBits>(table, r.key[0], kk, key_offset);
      const uint2 high = unit_levels<S::kKeyBits>(table, r.key[1], kk, key_offset);
      a[0] = low.x;
      a[1] = high.x;
      a[2] = low.y;
      a[3] = high.y;
    } else {
      a[0] = pair_levels<S::kKeyBits>(table, r.key[0], kPair * kk, key_offset);
      a[1] = pair_levels<S::kKeyBits>(table, r.key[1], kPair * kk, key_offset);
      a[2] = pair_levels<S::kKeyBits>(table, r.key[0], kPair * kk + 1, key_offset);
      a[3] = pair_levels<S::kKeyBits>(table, r.key[1], kPair * kk + 1, key_offset);
    }
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
      const uint2 q = qfrag.get(nt, kk);
      device::mma_f16_m16n8k16(c[kk % kChains][nt], a, q.x, q.y);
    }
  }
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    s[nt][0] = (c[0][nt][0] + c[0][nt][1]) + (c[1][nt][0] + c[1][nt][1]);
    s[nt][1] = (c[0][nt][2] + c[0][nt][3]) + (c[1][nt][2] + c[1][nt][3]);
  }
}

// The running (reference, sum) of local head 4 nt + quad in lane (group, quad): the reference (a
// max plus kRescaleSlack, >= every logit seen) is the same in the head's eight lanes, each lane sums
// its own tokens' 2^(logit - reference) (added up at the end).
template <int kQkTiles>
struct HeadState {
  float m[kQkTiles];
  float l[kQkTiles];
};

// kMasked: some token of the chunk may be outside a head's range [first, len) or its page outside
// the pool (masked to -inf, weight 0); without it every token is attended (the interior chunks).
template <class S, int kTiles, bool kMasked, class Q>
__device__ __forceinline__ void attend_chunk(const AttentionParams& p, const ChunkRegs<S>& r, int token0,
                                             const int (&first)[S::kQkTiles], const int (&len)[S::kQkTiles], int group,
                                             int quad, const float (&factor_log2)[S::kQkTiles], const Q& qfrag,
                                             const uint8_t* table, uint32_t key_offset, uint32_t value_offset,
                                             HeadState<S::kQkTiles>& st,
                                             float (&acc)[S::kPvTiles][S::kMTiles][kAccRegs]) {
  float s[S::kQkTiles][kTokenRows];
  qk_chunk<S, kTiles>(r, qfrag, table, key_offset, s);
  // Logits in log2 units (factor_log2 = the head's logit factor times log2(e)). The soft cap
  // c * tanh(z / c) is the same map in log2 units with c * log2(e).
  float x[kTiles][kTokenRows];
  bool valid[kTiles][kTokenRows];
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt)
#pragma unroll
    for (int j = 0; j < kTokenRows; ++j) x[nt][j] = s[nt][j] * r.key_scale[j] * factor_log2[nt];
  if (p.logit_softcap > 0.0f) {
    const float cap = p.logit_softcap * kLog2e, inverse_cap = 1.0f / cap;
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt)
#pragma unroll
      for (int j = 0; j < kTokenRows; ++j) x[nt][j] = cap * tanhf(x[nt][j] * inverse_cap);
  }
  bool grew = false;
  float lane_max[kTiles];
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int j = 0; j < kTokenRows; ++j) {
      const int token = token0 + j * kMmaN + group;
      valid[nt][j] = !kMasked || (r.page_ok && token >= first[nt] && token < len[nt]);
      if (kMasked) x[nt][j] = valid[nt][j] ? x[nt][j] : kNegInf;
    }
    lane_max[nt] = fmaxf(x[nt][0], x[nt][1]);
    grew = grew || lane_max[nt] > st.m[nt];
  }
  // A head's reference st.m (lazy rescaling, kRescaleSlack) moves only when one of its logits
  // exceeds it (every warp's first chunk, rarely later): then to the head's chunk max over its eight
  // lanes (three shuffles) plus the slack, with the rescale of the sum and of the accumulators;
  // otherwise nothing but the exponentials.
  if (__any_sync(kFullWarpMask, grew)) {
    float alpha[kTiles];
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
      float chunk_max = lane_max[nt];
#pragma unroll
      for (int d = kQuads; d < kWarpSize; d <<= 1) chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullWarpMask, chunk_max, d));
      const float m_new = chunk_max > st.m[nt] ? chunk_max + kRescaleSlack : st.m[nt];
      alpha[nt] = st.m[nt] == kNegInf ? 0.0f : fast_exp2(st.m[nt] - m_new);  // nothing attended yet: sums are 0
      st.l[nt] *= alpha[nt];
      st.m[nt] = m_new;
    }
    // Accumulator columns 2 quad and 2 quad + 1 of P.V n-tile u are local heads 8 u + 2 quad (+1);
    // head v's factor is in the lanes of quad v % 4, K.Q^T tile v / 4 (one tile: heads 4-7 do not
    // exist, their columns stay 0).
    const int even = (kPair * quad) % kHeadsPerQkTile, odd = even + 1;
#pragma unroll
    for (int u = 0; u < S::kPvTiles; ++u) {
      const int t0 = kQkTilesPerPvTile * u;  // < kTiles: the walk runs every tile of a wide CTA
      float alpha_even = __shfl_sync(kFullWarpMask, alpha[t0], even);
      float alpha_odd = __shfl_sync(kFullWarpMask, alpha[t0], odd);
      if (t0 + 1 < kTiles) {
        const float even1 = __shfl_sync(kFullWarpMask, alpha[t0 + 1], even);
        const float odd1 = __shfl_sync(kFullWarpMask, alpha[t0 + 1], odd);
        if (kPair * quad >= kHeadsPerQkTile) {
          alpha_even = even1;
          alpha_odd = odd1;
        }
      }
#pragma unroll
      for (int mt = 0; mt < S::kMTiles; ++mt) {
        acc[u][mt][0] *= alpha_even;
        acc[u][mt][1] *= alpha_odd;
        acc[u][mt][2] *= alpha_even;
        acc[u][mt][3] *= alpha_odd;
      }
    }
  }
  // P' = p_t * value_scale_t in fp16: w[nt] = (token group, token 8 + group) of head 4 nt + quad.
  uint32_t w[kTiles];
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    const float m_use = st.m[nt] == kNegInf ? 0.0f : st.m[nt];  // nothing attended yet: keep exp2 finite
    float weight[kTokenRows];
#pragma unroll
    for (int j = 0; j < kTokenRows; ++j) {
      const float prob = fast_exp2(x[nt][j] - m_use);
      st.l[nt] += prob;
      weight[j] = prob * r.value_scale[j];
      if (kMasked) weight[j] = valid[nt][j] ? weight[j] : 0.0f;  // a masked token's scale may be garbage
    }
    w[nt] = half2_bits(weight[0], weight[1]);
  }
  // The B fragment of O^T += V^T P' of n-tile u (k = tokens, see Shape; n = local head 8 u + group):
  // tokens quad + {0, 4} (b0) and 8 + quad + {0, 4} (b1) of that head come from lanes (quad,
  // group % 4) and (quad + 4, group % 4), K.Q^T tile 2 u + group / 4: two shuffles per tile and
  // two byte permutes.
  const int from = quad * kQuads + group % kHeadsPerQkTile;
  uint32_t b0[S::kPvTiles], b1[S::kPvTiles];
#pragma unroll
  for (int u = 0; u < S::kPvTiles; ++u) {
    const int t0 = kQkTilesPerPvTile * u;
    uint32_t even_token = __shfl_sync(kFullWarpMask, w[t0], from);
    uint32_t odd_token = __shfl_sync(kFullWarpMask, w[t0], from + kPairRows * kQuads);
    if (t0 + 1 < kTiles) {
      const uint32_t even1 = __shfl_sync(kFullWarpMask, w[t0 + 1], from);
      const uint32_t odd1 = __shfl_sync(kFullWarpMask, w[t0 + 1], from + kPairRows * kQuads);
      if (group >= kHeadsPerQkTile) {
        even_token = even1;
        odd_token = odd1;
      }
    } else {
      if (group >= kHeadsPerQkTile) even_token = odd_token = 0u;  // no such head in one tile
    }
    b0[u] = __byte_perm(even_token, odd_token, kPermLowHalves);
    b1[u] = __byte_perm(even_token, odd_token, kPermHighHalves);
  }
  {
    // The code fields of two tokens at the same coordinates are interleaved (a shift or funnel shift
    // and one bit-select per word), so a table entry is directly an A register: the levels of
    // tokens (quad, quad + 4) or (8 + quad, 12 + quad) at coordinate c (rows 0-7) or c + 1
    // (rows 8-15). mix[2 t + f]: token pair t, field f (f = 0: even codes of the stream, 1: odd).
    // 3-bit fields straddle words (funnel shifts); 4- and 2-bit fields do not.
    constexpr int kBits = S::kValueBits;
    constexpr bool kWordFields = kBitsPerWord % (2 * kBits) == 0;
    uint32_t mix[kLaneValueRows][S::kValueWords];
#pragma unroll
    for (int t = 0; t < kPair; ++t)
#pragma unroll
      for (int w = 0; w < S::kValueWords; ++w) {
        const uint32_t* first = r.value[kPair * t];
        const uint32_t* second = r.value[kPair * t + 1];
        const uint32_t even = even_field_mask(kBits, w);
        const uint32_t up = kWordFields || w == 0 ? second[w] << kBits : __funnelshift_l(second[w - 1], second[w], kBits);
        const uint32_t down =
            kWordFields || w + 1 == S::kValueWords ? first[w] >> kBits : __funnelshift_r(first[w], first[w + 1], kBits);
        mix[kPair * t][w] = select_bits(even, first[w], up);
        mix[kPair * t + 1][w] = select_bits(even, down, second[w]);
      }
    uint2 unit[kLaneValueRows];  // two-pair units (2 bits): m-tiles 2 j and 2 j + 1
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
      uint32_t a[kARegs];
#pragma unroll
      for (int k = 0; k < kARegs; ++k) {
        if constexpr (S::kValuePairsPerUnit == 2) {
          if (mt % 2 == 0) unit[k] = unit_levels<kBits>(table, mix[k], mt / 2, value_offset);
          a[k] = mt % 2 == 0 ? unit[k].x : unit[k].y;
        } else {
          a[k] = pair_levels<kBits>(table, mix[k], mt, value_offset);
        }
      }
#pragma unroll
      for (int u = 0; u < S::kPvTiles; ++u) device::mma_f16_m16n8k16(acc[u][mt], a[0], a[1], a[2], a[3], b0[u], b1[u]);
    }
  }
}

// Output row `row` (of q / out), q head `head`, from its merged accumulators x (this lane's
// device::WarpVector coordinates, unnormalised, in the values' rotated domain), its reference max
// `top` (log2 units) and its sum `total`: divides by the sum, un-rotates (x = s * H y / sqrt(d);
// raw values, p.value_raw, are plain and have no signs), stores q's dtype and the lse. Every lane of
// the warp calls it (the transform shuffles). A row with nothing attended (total 0) is zeros, lse
// -inf.
template <int HeadDim, DType OutType>
__device__ __forceinline__ void store_output_row(const AttentionParams& p, int32_t row, int32_t head,
                                                 float (&x)[device::WarpVector<HeadDim>::kCoords], float top,
                                                 float total, int lane) {
  using V = device::WarpVector<HeadDim>;
  const int c0 = V::first(lane);
  const float inverse = total > 0.0f ? __fdividef(1.0f, total) : 0.0f;
#pragma unroll
  for (int k = 0; k < V::kCoords; ++k) x[k] *= inverse;
  if (!p.value_raw) device::warp_walsh_hadamard<HeadDim>(x, lane);  // warp-uniform
  const float scale = p.value_raw ? 1.0f : rht_scale<float>(HeadDim);
  const uint32_t signs = V::lane_signs(p.value_signs, lane);
  uint32_t packed[V::kCoords / kPair];
#pragma unroll
  for (int i = 0; i < V::kCoords / kPair; ++i) {
    const float a = x[2 * i] * scale, b = x[2 * i + 1] * scale;
    packed[i] = device::pack_pair<OutType>((signs >> (2 * i)) & 1u ? -a : a, (signs >> (2 * i + 1)) & 1u ? -b : b);
  }
  auto* dst = static_cast<uint8_t*>(p.out) +
              (static_cast<int64_t>(row) * p.out_stride0 + static_cast<int64_t>(head) * p.out_stride1 + c0) * kQElementBytes;
  if (lane < V::kLanes) {
    if constexpr (V::kCoords == 8) {
      device::store16(dst, make_uint4(packed[0], packed[1], packed[2], packed[3]));
    } else {
      *reinterpret_cast<uint2*>(dst) = make_uint2(packed[0], packed[1]);
    }
  }
  if (lane == 0 && p.lse != nullptr)
    p.lse[static_cast<int64_t>(row) * p.q_heads + head] = total > 0.0f ? (top + log2f(total)) * kLn2 : kNegInf;
}

// Programmatic dependent launch (sm_90): both kernels may be launched before the previous kernel of
// the stream has finished; wait_for_prior_grids() returns once it has and its writes are visible.
// Nothing the previous kernel may write (queries, block table, lengths, pages, the workspace a
// previous call's merge still reads) is touched before it. Without the launch attribute it returns
// at once.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next kernel of the stream, when launched with programmatic dependent launch, start as
// soon as every CTA of this grid has passed here (its prologue then overlaps this grid's work); its
// wait_for_prior_grids() still waits for this whole grid and its writes. Called first thing.
__device__ __forceinline__ void allow_dependent_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// kScores: the packed-QK scores op (cuda::scores) instead of attention: the same walk and Q.K^T,
// then scale * q . k_hat of every attended token written to p.scores (no softmax, no values, no
// window, lengths clamped to p.max_context; one launch, no merge). PvTiles: 8 PvTiles query slots
// per CTA (Shape; p.slots_per_tile).
template <int HeadDim, int KeyBits, int ValueBits, DType QType, bool kScores = false, int PvTiles = 1>
__global__ void __launch_bounds__(Shape<HeadDim, KeyBits, ValueBits, PvTiles>::kCtaThreads,
                                  Shape<HeadDim, KeyBits, ValueBits, PvTiles>::kCtasPerSm)
    decode_attention_split_kernel(const __grid_constant__ AttentionParams p) {
  using S = Shape<HeadDim, KeyBits, ValueBits, PvTiles>;
  static_assert(!kScores || PvTiles == 1, "the scores op serves heads, 8 per CTA");
  // sm_90: 227 KB of shared memory per CTA at most, 228 KB per SM with 1 KB reserved per CTA.
  static_assert(S::kSmemBytes <= 227 * 1024 &&
                    (S::kSmemBytes + 1024) * S::kCtasPerSm <= 228 * 1024,
                "the CTAs per SM the split heuristic plans for (attention_ctas_per_sm) must fit in shared memory");
  extern __shared__ __align__(kMaxLoadBytes) uint8_t smem[];
  // This thread's unit (S::kUnits per CTA, see Shape) and its index in it.
  const int unit = S::kUnits == 1 ? 0 : static_cast<int>(threadIdx.x / S::kThreads);
  const unsigned unit_thread = S::kUnits == 1 ? threadIdx.x : threadIdx.x % S::kThreads;  // unsigned: shifts
  const int tid = static_cast<int>(unit_thread);
  uint8_t* table = smem;
  auto* qfrag = reinterpret_cast<uint2*>(smem + S::unit_head_offset(unit));
  auto* factor_s = reinterpret_cast<float*>(smem + S::unit_head_offset(unit) + S::kFactorOffset);
  auto* merge_out = reinterpret_cast<float*>(smem + S::merge_offset(unit));  // after the main loop
  auto* merge_max_sum = reinterpret_cast<float2*>(merge_out + S::kMergeOutFloats);
  auto* merge_partial = reinterpret_cast<int64_t*>(merge_max_sum + S::kWarps * S::kSlots);
  // A barrier of the unit's threads: the CTA's, or named barrier 1 + unit of kThreads (0 is
  // __syncthreads').
  const auto unit_sync = [&] {
    if constexpr (S::kUnits == 1) {
      __syncthreads();
    } else {
      asm volatile("bar.sync %0, %1;" ::"r"(1 + threadIdx.x / S::kThreads), "r"(S::kThreads) : "memory");
    }
  };

  allow_dependent_grids();
  // The code table depends on the parameters only: built while the previous kernel drains.
  build_code_table<KeyBits, S::kBuildThreads>(table, false, p.key_levels, p.key_level_scale);
  if constexpr (!kScores) build_code_table<ValueBits, S::kBuildThreads>(table, true, p.value_levels, 1.0f);
  if constexpr (S::kUnits > 1) __syncthreads();  // the units meet only here: each reads the whole table
  wait_for_prior_grids();

  const int split = blockIdx.x;
  const int row = static_cast<int>(blockIdx.y) * S::kUnits + unit;  // of the KV head tiles
  if (S::kUnits > 1 && row >= p.kv_heads * p.head_tiles) return;   // the grid's last half, unit-uniform
  const int kv = row / p.head_tiles;
  const int tile = row - kv * p.head_tiles;
  const int seq = blockIdx.z;
  const int warp = unit_thread / kWarpSize, lane = unit_thread % kWarpSize;
  const int group = lane / kQuads, quad = lane % kQuads;

  // The CTA's chunks: the attended range [first, len) in 16-token chunks, split evenly.
  const int64_t capacity = static_cast<int64_t>(p.max_pages_per_seq) * p.page_size;
  const int64_t raw_len = __ldg(p.seq_lens + seq);
  const int64_t limit = kScores && p.max_context < capacity ? p.max_context : capacity;
  const int len = static_cast<int>(raw_len < 0 ? 0 : (raw_len > limit ? limit : raw_len));
  // The sequence's query tokens: one, or a window (p.query_start) whose token t of n_tokens attends
  // up to len - (n_tokens - 1 - t); the CTA walks the range of them all.
  int token_row0 = seq, n_tokens = 1;
  if constexpr (!kScores) {
    if (p.query_start != nullptr) {
      token_row0 = __ldg(p.query_start + seq);
      n_tokens = max(0, min(__ldg(p.query_start + seq + 1) - token_row0, p.window));
    }
  }
  const auto window_first = [&](int token_len) {
    return (!kScores && p.sliding_window > 0 && token_len > p.sliding_window) ? token_len - p.sliding_window : 0;
  };
  const int first = window_first(max(0, len - (n_tokens - 1)));
  const int chunk_first = first / kChunkTokens;
  const int chunk_end = (len + kChunkTokens - 1) / kChunkTokens;
  const int per_split = (chunk_end - chunk_first + p.num_splits - 1) / p.num_splits;
  const int begin = chunk_first + split * per_split;
  const int end = min(chunk_end, begin + per_split);
  const int head0 = tile * S::kSlots;
  const int heads = min(S::kSlots, n_tokens * p.group - head0);
  if (heads <= 0) return;  // a window's tile past this sequence's tokens
  QueryWords<HeadDim> query[S::kQueryPasses];  // in flight from here
#pragma unroll
  for (int u = 0; u < S::kQueryPasses; ++u)
    query[u] = load_query<HeadDim>(p, token_row0, kv, head0 + S::kWarps * u, heads - S::kWarps * u, warp);
  const int64_t row0 = static_cast<int64_t>(seq) * p.q_heads + static_cast<int64_t>(kv) * p.group + head0;
  // The partial row (= q / out row * q_heads + head) of local head h; row0 + h in decode.
  // Local head h's query row (of q / out) and q head; its partial row is row * q_heads + head.
  const auto out_place = [&](int h) {
    const int slot = head0 + h, token = slot / p.group;
    return make_int2(token_row0 + token, kv * p.group + (slot - token * p.group));
  };
  const auto partial_row = [&](int h) {
    const int2 at = out_place(h);
    return static_cast<int64_t>(at.x) * p.q_heads + at.y;
  };
  // This lane's heads 4 nt + quad (lanes past the tile's heads take its last one, their queries are
  // zero): the keys their tokens attend.
  const int tiles = heads > kHeadsPerQkTile ? 2 : 1;  // PvTiles = 1
  int lane_first[S::kQkTiles], lane_len[S::kQkTiles];
#pragma unroll
  for (int nt = 0; nt < S::kQkTiles; ++nt) {
    const int token = (head0 + min(nt * kHeadsPerQkTile + quad, heads - 1)) / p.group;
    lane_len[nt] = max(0, len - (n_tokens - 1 - token));
    lane_first[nt] = window_first(lane_len[nt]);
  }
  // Tokens [full_begin, full_end) are attended by every query token of the sequence.
  const int full_begin = window_first(len);
  const int full_end = max(0, len - (n_tokens - 1));
  auto* partial_max_sum = reinterpret_cast<float2*>(p.partial_max_sum);

  if (begin >= end) {  // nothing to attend in this split: the merge skips it (partial_out unread)
    if (kScores) return;
    if (p.num_splits == 1) {  // no merge kernel: the rows are zeros (in any dtype), lse -inf
      for (int i = tid; i < heads * HeadDim; i += S::kThreads) {
        const int h = i / HeadDim, j = i % HeadDim;
        const int2 at = out_place(h);
        static_cast<uint16_t*>(p.out)[static_cast<int64_t>(at.x) * p.out_stride0 + static_cast<int64_t>(at.y) * p.out_stride1 + j] = 0u;
        if (j == 0 && p.lse != nullptr) p.lse[static_cast<int64_t>(at.x) * p.q_heads + at.y] = kNegInf;
      }
      return;
    }
    if (tid < heads) partial_max_sum[partial_row(tid) * p.num_splits + split] = make_float2(kNegInf, 0.0f);
    return;
  }

  const int32_t* block_row = p.block_table + static_cast<int64_t>(seq) * p.max_pages_per_seq;
  // Held, not rebuilt per chunk from the CTA index and the parameters (ptxas rematerialises it).
  asm volatile("" : "+l"(block_row));
  float acc[S::kPvTiles][S::kMTiles][kAccRegs];
#pragma unroll
  for (int u = 0; u < S::kPvTiles; ++u)
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) acc[u][mt][0] = acc[u][mt][1] = acc[u][mt][2] = acc[u][mt][3] = 0.0f;
  HeadState<S::kQkTiles> st;
#pragma unroll
  for (int nt = 0; nt < S::kQkTiles; ++nt) {
    st.m[nt] = kNegInf;
    st.l[nt] = 0.0f;
  }
  // The walk over the warp's chunks, compiled three times: both scale planes fp16 (the usual case;
  // no fp32 paths in the loop) with one or two K.Q^T tiles, and the storage read from the
  // parameters with two.
  const auto walk = [&](auto half_scales, auto qk_tiles) {
    constexpr bool kHalfScales = decltype(half_scales)::value;
    constexpr int kTiles = decltype(qk_tiles)::value;
    const NormStorage key_norm = kHalfScales ? NormStorage::kF16 : p.key_norm;
    const NormStorage value_norm = kHalfScales ? NormStorage::kF16 : p.value_norm;
    // The warp's first kStages chunks go in flight now, overlapping the query rotation (block-table
    // entries first, so that their loads overlap too).
    constexpr int kStages = S::kStages;
    constexpr int kStep = S::kWarps;  // a warp walks chunks begin + warp, + kStep, ...
    uint8_t* const ring =
        smem + S::kRingsOffset + static_cast<size_t>(threadIdx.x / kWarpSize) * kStages * S::kStageBytes;  // the CTA's warp
    const uint32_t ring_address = device::shared_address(ring);
    const LaneStage stage_offsets = lane_stage<S, !kScores>(p, kv, lane, key_norm, value_norm, ring_address);
    int chunk = begin + warp;
    uint32_t ok_bits = 0u;  // bit i: the chunk i steps ahead of `chunk` has a page inside the pool
    // Issues chunk c (block-table entry `page`) into stage `stage`; its validity goes to bit `bit`.
    const auto issue = [&](int c, int page, int stage, int bit) {
      const bool ok = page_inside_pool(p, page);
      ok_bits |= (ok ? 1u : 0u) << bit;
      issue_chunk_copies<S, !kScores>(p, stage_offsets, page, !ok, chunk_row0(p, c), ring_address + stage * S::kStageBytes,
                                      lane);
    };
    {
      int pages[kStages];
#pragma unroll
      for (int i = 0; i < kStages; ++i) pages[i] = chunk + i * kStep < end ? chunk_page(p, block_row, chunk + i * kStep) : 0;
#pragma unroll
      for (int i = 0; i < kStages; ++i) {
        if (chunk + i * kStep < end) issue(chunk + i * kStep, pages[i], i, i);
        device::async_copy_commit();  // one group per chunk, empty past the end
      }
    }
    // The block-table entry of the next chunk to issue (kStages steps ahead), loaded one step early.
    int page_ahead = chunk + kStages * kStep < end ? chunk_page(p, block_row, chunk + kStages * kStep) : 0;

#pragma unroll
    for (int u = 0; u < S::kQueryPasses; ++u)
      store_query_fragments<S, HeadDim, QType>(p, query[u], S::kWarps * u + warp, qfrag, factor_s);
    unit_sync();
    float factor[S::kQkTiles], factor_log2[S::kQkTiles];
#pragma unroll
    for (int nt = 0; nt < S::kQkTiles; ++nt) {
      factor[nt] = factor_s[nt * kHeadsPerQkTile + quad];
      factor_log2[nt] = factor[nt] * kLog2e;
    }
    // One K.Q^T tile (a GQA group of <= 4 heads): the query fragments stay in registers (K4V4 32 x
    // 16K 0.170-0.172 against 0.176-0.177 ms, H200 A/B). For 3-bit keys they did not pay while a
    // 3-bit segment's offset was taken per load (0.209 against 0.200 ms, then 0.187-0.188 against
    // 0.188); since segment_read, 0.178-0.179 against 0.180 (H200 A/B, 2026-11-29).
    const auto query = [&] {
      if constexpr (kTiles == 1 && S::kPvTiles == 1) {
        RegisterQuery<S::kKSteps> r;
#pragma unroll
        for (int kk = 0; kk < S::kKSteps; ++kk) r.q[kk] = qfrag[kk * kWarpSize + lane];
        return r;
      } else {
        return SharedQuery<S::kKSteps>{qfrag + lane};
      }
    }();
    const uint32_t key_offset = lane_copy_offset<KeyBits>(lane, false);
    const uint32_t value_offset = lane_copy_offset<ValueBits>(lane, true);

    for (int i = 0; chunk < end; chunk += kStep, ++i) {
      // Chunk i of the warp: wait for its stage (the newer kStages - 1 groups may still fly), take it
      // into registers, refill the stage with the chunk kStages steps ahead, then compute.
      const int stage = i % kStages;
      device::async_copy_wait<kStages - 1>();
      __syncwarp();  // every lane's copies of the stage have landed
      ChunkRegs<S> cur;
      read_chunk<S, !kScores>(ring + stage * S::kStageBytes, stage_offsets, key_norm, value_norm, cur);
      cur.page_ok = (ok_bits & 1u) != 0u;
      __syncwarp();  // every lane has read the stage before it is refilled
      const int ahead = chunk + kStages * kStep;
      if (ahead < end) {
        issue(ahead, page_ahead, stage, kStages);
        page_ahead = ahead + kStep < end ? chunk_page(p, block_row, ahead + kStep) : 0;
      }
      device::async_copy_commit();
      ok_bits >>= 1;

      if constexpr (kScores) {
        // Scores of local heads 4 nt + quad (when inside the tile) for tokens 8 j + group.
        float s[S::kQkTiles][kTokenRows];
        qk_chunk<S, kTiles>(cur, SharedQuery<S::kKSteps>{qfrag + lane}, table, key_offset, s);
#pragma unroll
        for (int nt = 0; nt < kTiles; ++nt) {
          const int v = nt * kHeadsPerQkTile + quad;
          float* const score_row = p.scores + (row0 + v) * p.max_context;
#pragma unroll
          for (int j = 0; j < kTokenRows; ++j) {
            const int token = chunk * kChunkTokens + j * kMmaN + group;
            if (v < heads && cur.page_ok && token < len) score_row[token] = s[nt][j] * cur.key_scale[j] * factor[nt];
          }
        }
      } else {
        // Interior chunks (every token attended by every slot of the CTA, the page inside the pool)
        // skip the per-token masks.
        const int token0 = chunk * kChunkTokens;
        if (cur.page_ok && token0 >= full_begin && token0 + kChunkTokens <= full_end) {
          attend_chunk<S, kTiles, false>(p, cur, token0, lane_first, lane_len, group, quad, factor_log2, query,
                                         table, key_offset, value_offset, st, acc);
        } else {
          attend_chunk<S, kTiles, true>(p, cur, token0, lane_first, lane_len, group, quad, factor_log2, query,
                                        table, key_offset, value_offset, st, acc);
        }
      }
    }
  };
  using OneTile = std::integral_constant<int, 1>;
  using TwoTiles = std::integral_constant<int, 2>;
  using AllTiles = std::integral_constant<int, S::kQkTiles>;
  const bool half_scales = p.key_norm == NormStorage::kF16 && p.value_norm == NormStorage::kF16;
  if constexpr (S::kPvTiles > 1) {  // a wide CTA runs all its tiles
    if (half_scales) {
      walk(std::true_type{}, AllTiles{});
    } else {
      walk(std::false_type{}, AllTiles{});
    }
  } else if (half_scales) {
    if (tiles == 1) {
      walk(std::true_type{}, OneTile{});
    } else {
      walk(std::true_type{}, TwoTiles{});
    }
  } else {
    walk(std::false_type{}, TwoTiles{});
  }
  device::async_copy_wait<0>();  // nothing in flight (the last groups are empty) before smem is reused
  if constexpr (!kScores) {
  // Each lane summed its own tokens; a head's eight lanes (one quad of each group) add them up.
#pragma unroll
  for (int nt = 0; nt < S::kQkTiles; ++nt)
#pragma unroll
    for (int d = kQuads; d < kWarpSize; d <<= 1) st.l[nt] += __shfl_xor_sync(kFullWarpMask, st.l[nt], d);

  // Merge the warps: O^T column 2 quad (+1) = head, row = coordinate group * d/8 + 2 mt (+1).
  unit_sync();  // the queries (one unit: and the tables) are dead from here
  float* mine = merge_out + static_cast<size_t>(warp) * S::kSlots * S::kMergeRowStride;
#pragma unroll
  for (int u = 0; u < S::kPvTiles; ++u)
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
      const int coord = group * S::kValueSegmentCoords + kPair * mt, head = kHeads * u + kPair * quad;
      mine[S::merge_index(head, coord)] = acc[u][mt][0];
      mine[S::merge_index(head + 1, coord)] = acc[u][mt][1];
      mine[S::merge_index(head, coord + 1)] = acc[u][mt][2];
      mine[S::merge_index(head + 1, coord + 1)] = acc[u][mt][3];
    }
  if (group == 0) {
#pragma unroll
    for (int nt = 0; nt < S::kQkTiles; ++nt)
      merge_max_sum[warp * S::kSlots + nt * kHeadsPerQkTile + quad] = make_float2(st.m[nt], st.l[nt]);
  }
  unit_sync();
  // Per slot (one thread each): the merged (max, sum), written out, and each warp's weight
  // 2^(max_w - max) in place of its max, so that the element loop below is loads and FMAs only.
  // One split (num_splits 1): the CTA holds whole rows, so it does the merge kernel's part too (no
  // merge launch, no partials): the (max, sum) stay in shared memory, in merge_partial's bytes.
  const bool whole_rows = p.num_splits == 1;
  auto* slot_max_sum = reinterpret_cast<float2*>(merge_partial);
  if (tid < heads) {
    const int h = tid;
    float m = kNegInf;
#pragma unroll
    for (int w = 0; w < S::kWarps; ++w) m = fmaxf(m, merge_max_sum[w * S::kSlots + h].x);
    float l = 0.0f;
#pragma unroll
    for (int w = 0; w < S::kWarps; ++w) {
      const float2 ms = merge_max_sum[w * S::kSlots + h];
      const float weight = ms.x == kNegInf ? 0.0f : exp2f(ms.x - m);
      l += weight * ms.y;
      merge_max_sum[w * S::kSlots + h].x = weight;
    }
    if (whole_rows) {
      slot_max_sum[h] = make_float2(m, l);
    } else {
      const int64_t partial = partial_row(h) * p.num_splits + split;
      partial_max_sum[partial] = make_float2(m, l);
      merge_partial[h] = partial * HeadDim;
    }
  }
  unit_sync();
  // Each element merged over the warps by one thread: into the partial, or with one split into warp
  // 0's row of merge_out (read and written by that thread only), whose rows are then normalised,
  // un-rotated and stored, one per warp.
  for (int i = tid; i < heads * HeadDim; i += S::kThreads) {
    const int h = i / HeadDim, j = i % HeadDim;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < S::kWarps; ++w)
      o += merge_max_sum[w * S::kSlots + h].x *
           merge_out[static_cast<size_t>(w) * S::kSlots * S::kMergeRowStride + S::merge_index(h, j)];
    if (whole_rows) {
      merge_out[S::merge_index(h, j)] = o;
    } else {
      p.partial_out[merge_partial[h] + j] = o;
    }
  }
  if (!whole_rows) return;
  unit_sync();
  using V = device::WarpVector<HeadDim>;
  for (int h = warp; h < heads; h += S::kWarps) {  // warp-uniform
    float x[V::kCoords];
#pragma unroll
    for (int k = 0; k < V::kCoords; ++k) x[k] = merge_out[S::merge_index(h, V::first(lane) + k)];
    const float2 ml = slot_max_sum[h];
    const int2 at = out_place(h);
    store_output_row<HeadDim, QType>(p, at.x, at.y, x, ml.x, ml.y, lane);
  }
  }  // !kScores
}

// One CTA of kMergeWarps warps per output row v = (query row, head): warp w merges splits w,
// w + kMergeWarps, ...: first their (max, sum) pairs, all at once (lane i holds split
// w + kMergeWarps (i + 32 j)), then their partial rows kMergeBatch at a time, every load of a batch
// in flight together (lane l holds coordinates [kCoords l, kCoords l + kCoords),
// device::WarpVector), so a row costs two round trips to L2 rather than one per few splits. An empty
// split (max -inf: its partial row was never written) is not read. The warps meet in shared
// memory; warp 0 divides by the sum, un-rotates the values (they were accumulated in their rotated
// domain: x = s * H y / sqrt(d); raw values, p.value_raw, are plain and have no signs) and stores.
inline constexpr int kMergeWarps = kMergeThreads / kWarpSize;
inline constexpr int kMergeBatch = 8;
inline constexpr int kMergeSlots = (kMaxAttentionSplits / kMergeWarps + kWarpSize - 1) / kWarpSize;

template <int HeadDim, DType OutType>
__global__ void __launch_bounds__(kMergeThreads)
    decode_attention_merge_kernel(const __grid_constant__ AttentionParams p) {
  using V = device::WarpVector<HeadDim>;
  constexpr int kVectors = V::kCoords / 4;  // float4 per lane and row
  __shared__ __align__(16) float merged[kMergeWarps][HeadDim];
  __shared__ float2 merged_max_sum[kMergeWarps];
  allow_dependent_grids();  // the next call's split kernel may build its tables meanwhile
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int c0 = V::first(lane);
  const int64_t v = blockIdx.x;
  const int splits = p.num_splits;
  const int mine = splits > warp ? (splits - warp + kMergeWarps - 1) / kMergeWarps : 0;  // this warp's splits
  wait_for_prior_grids();  // the partials of the split kernel

  const auto* max_sum = reinterpret_cast<const float2*>(p.partial_max_sum) + v * splits;
  float2 ms[kMergeSlots];
  float m = kNegInf;
#pragma unroll
  for (int j = 0; j < kMergeSlots; ++j) {
    const int i = lane + kWarpSize * j;
    ms[j] = i < mine ? max_sum[warp + kMergeWarps * i] : make_float2(kNegInf, 0.0f);
    m = fmaxf(m, ms[j].x);
  }
#pragma unroll
  for (int d = 1; d < kWarpSize; d <<= 1) m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, d));
  float weight[kMergeSlots], sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kMergeSlots; ++j) {
    weight[j] = ms[j].x == kNegInf ? 0.0f : fast_exp2(ms[j].x - m);
    sum += weight[j] * ms[j].y;
  }
#pragma unroll
  for (int d = 1; d < kWarpSize; d <<= 1) sum += __shfl_xor_sync(kFullWarpMask, sum, d);

  float x[V::kCoords] = {};
  const float* partial = p.partial_out + v * splits * HeadDim + c0;
  for (int i0 = 0; i0 < mine; i0 += kMergeBatch) {
    float w[kMergeBatch];
    float4 part[kMergeBatch][kVectors];
#pragma unroll
    for (int b = 0; b < kMergeBatch; ++b) {
      const int i = i0 + b;  // the same in every lane: the weight comes from lane i % 32
      float own = weight[0];
#pragma unroll
      for (int j = 1; j < kMergeSlots; ++j) own = i >= kWarpSize * j ? weight[j] : own;
      w[b] = __shfl_sync(kFullWarpMask, own, i % kWarpSize);
      const auto* row = reinterpret_cast<const float4*>(partial + static_cast<int64_t>(warp + kMergeWarps * i) * HeadDim);
#pragma unroll
      for (int k = 0; k < kVectors; ++k) part[b][k] = (i < mine && w[b] != 0.0f) ? row[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int b = 0; b < kMergeBatch; ++b)
#pragma unroll
      for (int k = 0; k < kVectors; ++k) {
        x[4 * k] = fmaf(w[b], part[b][k].x, x[4 * k]);
        x[4 * k + 1] = fmaf(w[b], part[b][k].y, x[4 * k + 1]);
        x[4 * k + 2] = fmaf(w[b], part[b][k].z, x[4 * k + 2]);
        x[4 * k + 3] = fmaf(w[b], part[b][k].w, x[4 * k + 3]);
      }
  }
  if (lane < V::kLanes) {
#pragma unroll
    for (int k = 0; k < kVectors; ++k)
      reinterpret_cast<float4*>(&merged[warp][c0])[k] = make_float4(x[4 * k], x[4 * k + 1], x[4 * k + 2], x[4 * k + 3]);
  }
  if (lane == 0) merged_max_sum[warp] = make_float2(m, sum);
  __syncthreads();
  if (warp != 0) return;

  float top = kNegInf;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) top = fmaxf(top, merged_max_sum[w].x);
  float total = 0.0f;
#pragma unroll
  for (int k = 0; k < V::kCoords; ++k) x[k] = 0.0f;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) {
    const float2 ms_w = merged_max_sum[w];
    const float scale = ms_w.x == kNegInf ? 0.0f : fast_exp2(ms_w.x - top);
    total += scale * ms_w.y;
#pragma unroll
    for (int k = 0; k < V::kCoords; ++k) x[k] = fmaf(scale, merged[w][c0 + k], x[k]);
  }
  const auto seq = static_cast<int32_t>(v / p.q_heads);
  store_output_row<HeadDim, OutType>(p, seq, static_cast<int32_t>(v - static_cast<int64_t>(seq) * p.q_heads), x, top,
                                     total, lane);
}

// Lets `kernel` use `bytes` of dynamic shared memory on the current device, once per device.
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, size_t bytes, std::atomic<uint64_t>& devices_done) noexcept {
  constexpr size_t kDefaultLimit = 48 * 1024;  // dynamic shared memory allowed without opting in
  if (bytes <= kDefaultLimit) return cudaSuccess;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  constexpr int kTrackedDevices = 64;
  const uint64_t bit = device < kTrackedDevices ? (uint64_t{1} << device) : 0u;
  if (bit != 0u && (devices_done.load(std::memory_order_relaxed) & bit) != 0u) return cudaSuccess;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e == cudaSuccess && bit != 0u) devices_done.fetch_or(bit, std::memory_order_relaxed);
  return e;
}

// Launches kernel(params) on (grid, block, dynamic shared memory) in `stream`, with programmatic
// dependent launch when params.programmatic_launch.
template <typename Kernel>
cudaError_t launch_programmatic(Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes, const AttentionParams& params,
                                cudaStream_t stream) noexcept {
  cudaLaunchAttribute programmatic{};
  programmatic.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  programmatic.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &programmatic;
  config.numAttrs = params.programmatic_launch ? 1u : 0u;
  return cudaLaunchKernelEx(&config, kernel, params);
}

// The split kernel (attention, or the scores op when kScores) on grid (num_splits,
// kv_heads * head_tiles, num_seqs).
template <int HeadDim, int KeyBits, int ValueBits, DType QType, bool kScores, int PvTiles = 1>
cudaError_t launch_split(const AttentionParams& params, cudaStream_t stream) noexcept {
  using S = Shape<HeadDim, KeyBits, ValueBits, PvTiles>;
  static std::atomic<uint64_t> shared_memory_configured{0};
  const auto kernel = &decode_attention_split_kernel<HeadDim, KeyBits, ValueBits, QType, kScores, PvTiles>;
  const cudaError_t e = allow_shared_memory(kernel, S::kSmemBytes, shared_memory_configured);
  if (e != cudaSuccess) return e;
  const int rows = params.kv_heads * params.head_tiles;
  const dim3 grid(static_cast<unsigned>(params.num_splits), static_cast<unsigned>((rows + S::kUnits - 1) / S::kUnits),
                  static_cast<unsigned>(params.num_seqs));
  return launch_programmatic(kernel, grid, dim3(S::kCtaThreads), S::kSmemBytes, params, stream);
}

}  // namespace attention_kernel

// The merge kernel over the split partials of params (one CTA per (query row, head)), with
// programmatic dependent launch when params.programmatic_launch.
template <int HeadDim, DType QType>
cudaError_t launch_decode_attention_merge(const AttentionParams& params, cudaStream_t stream) noexcept {
  namespace ak = attention_kernel;
  const int64_t vectors = static_cast<int64_t>(params.query_rows) * params.q_heads;
  const dim3 grid(static_cast<unsigned>(vectors));  // one CTA per output row
  return ak::launch_programmatic(&ak::decode_attention_merge_kernel<HeadDim, QType>, grid, dim3(ak::kMergeThreads), 0,
                                 params, stream);
}

// The split kernel of params.slots_per_tile query slots per CTA (16: window mode, head_dim <= 128),
// then the merge kernel.
template <int HeadDim, int KeyBits, int ValueBits, DType QType>
cudaError_t launch_decode_attention(const AttentionParams& params, cudaStream_t stream) noexcept {
  namespace ak = attention_kernel;
  cudaError_t e = cudaSuccess;
  if constexpr (HeadDim <= 128) {
    e = params.slots_per_tile == kAttentionWideSlots
            ? ak::launch_split<HeadDim, KeyBits, ValueBits, QType, false, kAttentionWideSlots / kAttentionHeadsPerCta>(params, stream)
            : ak::launch_split<HeadDim, KeyBits, ValueBits, QType, false>(params, stream);
  } else {
    e = ak::launch_split<HeadDim, KeyBits, ValueBits, QType, false>(params, stream);
  }
  if (e != cudaSuccess || params.num_splits == 1) return e;  // one split: the split kernel stored the rows
  return launch_decode_attention_merge<HeadDim, QType>(params, stream);
}

// The packed-QK scores op on the split kernel's Q.K^T (kScores): one launch, scores written
// straight to params.scores.
template <int HeadDim, int KeyBits, DType QType>
cudaError_t launch_scores_tc(const AttentionParams& params, cudaStream_t stream) noexcept {
  return attention_kernel::launch_split<HeadDim, KeyBits, KeyBits, QType, true>(params, stream);
}

}  // namespace turboquant::cuda::detail

// Explicit instances of one list entry (kernels/attention_instances.inc) for f16 and bf16 queries.
#define TQ_INSTANTIATE_DECODE_ATTENTION(HeadDim, KeyBits, ValueBits)                                        \
  template cudaError_t turboquant::cuda::detail::launch_decode_attention<HeadDim, KeyBits, ValueBits,       \
                                                                         turboquant::DType::kF16>(          \
      const turboquant::cuda::detail::AttentionParams&, cudaStream_t) noexcept;                             \
  template cudaError_t turboquant::cuda::detail::launch_decode_attention<HeadDim, KeyBits, ValueBits,       \
                                                                         turboquant::DType::kBF16>(         \
      const turboquant::cuda::detail::AttentionParams&, cudaStream_t) noexcept;
