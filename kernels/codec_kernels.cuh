// The fused encode, decode and rotate kernels and their launchers (private to turboquant::cuda).
// Explicit instances live in the generated files listed in kernels/CMakeLists.txt; design notes
// and measurements in kernels/NOTES.md.
//
// Work mapping (turboquant/device/rht.cuh): kLanes = HeadDim / 32 consecutive lanes hold one
// vector, 32 coordinates (4 chunks of 8) per thread, so a warp handles 16, 8 or 4 vectors at
// d = 64, 128, 256. Warps walk the rows with a grid stride; the grid is sized to the resident
// blocks of the device (every SM busy, setup amortised), and each thread prefetches its next row
// while it computes the current one. Every lane of a warp runs every iteration (the shuffles need
// the full warp): a row past the end, past a sequence's length or behind a bad block-table entry
// is computed on zeros and stored nowhere; an encode row whose slot is skipped is computed (its
// slot arrives with its data) and not stored.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "codec_params.hpp"
#include "turboquant/device/async_copy.cuh"
#include "turboquant/device/chunk.cuh"
#include "turboquant/device/codebook.cuh"
#include "turboquant/device/common.cuh"
#include "turboquant/device/rht.cuh"
#include "turboquant/quantize.hpp"
#include "turboquant/rht.hpp"

namespace turboquant::cuda::detail {

inline constexpr int kThreadsPerBlock = 256;
inline constexpr int kWarpsPerBlock = kThreadsPerBlock / device::kWarpSize;
// __launch_bounds__ minimum blocks per SM: 2 caps a thread at 128 registers (16 warps per SM), 3 at
// 80 (24 warps), 4 at 64. Encode and rotate spill below 128 (80 registers: 100-350 bytes); decode
// fits 80 without spills (64 spills 64-160 bytes), and its few bytes per row in flight need the
// extra warps. kernels/NOTES.md has the register report.
// Encode at 3 (80 registers) spills 22-34 bytes and was measured slower (kernels/NOTES.md round 3).
inline constexpr int kEncodeMinBlocksPerSm = 2;
// Decode: 3 blocks per SM (80 registers) where that does not spill (2 and 4 bits: measured +10%
// at 4 bits on an H200); 1- and 3-bit decode spill 32-48 bytes at 80 registers and were measured
// slower (3 bits: 157 us against 134 us at 2 blocks), so they keep 2.
template <int Bits>
inline constexpr int kDecodeMinBlocksPerSm = (Bits == 2 || Bits == 4) ? 3 : 2;
inline constexpr int kRotateMinBlocksPerSm = 2;
inline constexpr int32_t kInt32Max = 0x7fffffff;

// q = n / d and r = n % d for 0 <= n < 2^31: one multiply-high. Row indices of every codec kernel
// are below kMaxCodecRows (the host checks), so the walks use this one.
__device__ inline void divmod(int32_t n, const FastDivisor& d, int32_t& q, int32_t& r) {
  const auto un = static_cast<uint32_t>(n);
  const uint32_t uq = (__umulhi(un, d.multiplier) + un) >> d.shift;
  q = static_cast<int32_t>(uq);
  r = static_cast<int32_t>(un - uq * static_cast<uint32_t>(d.divisor));
}
// The same for any n >= 0 (a paged encode's slot: page * page_size + row may pass 2^31): the
// multiply-high when n < 2^31, else a 64-bit division.
__device__ inline void divmod_wide(int64_t n, const FastDivisor& d, int64_t& q, int32_t& r) {
  if (n <= kInt32Max) {
    const auto un = static_cast<uint32_t>(n);
    const uint32_t uq = (__umulhi(un, d.multiplier) + un) >> d.shift;
    q = uq;
    r = static_cast<int32_t>(un - uq * static_cast<uint32_t>(d.divisor));
  } else {
    q = n / d.divisor;
    r = static_cast<int32_t>(n - q * d.divisor);
  }
}

// Reads / writes one scale with the storage rules of turboquant/quantize.hpp (fp16 saturates at
// +-65504, round to nearest even). A read is two steps, the load of the stored bits and their
// conversion where the scale is used: converted right after the load, decode's prefetch of the
// next row waited there for memory (ncu, H200: 90% of its long-scoreboard stalls, 29% of all
// stall samples, on that one conversion).
__device__ inline uint32_t load_scale_bits(const void* p, NormStorage storage) {
  return storage == NormStorage::kF32 ? __ldg(static_cast<const unsigned int*>(p))
                                      : __ldg(static_cast<const unsigned short*>(p));
}
__device__ inline float scale_from_bits(uint32_t bits, NormStorage storage) {
  return storage == NormStorage::kF32 ? __uint_as_float(bits)
                                      : __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}
__device__ inline void write_scale(void* p, NormStorage storage, float s) {
  if (storage == NormStorage::kF32) {
    *static_cast<float*>(p) = s;
  } else {
    const float clamped = fminf(fmaxf(s, -kHalfMax), kHalfMax);
    *static_cast<unsigned short*>(p) = __half_as_ushort(__float2half_rn(clamped));
  }
}

// The tables of an encode kernel in shared memory: the bucketing grid and tree
// (turboquant/device/codebook.cuh) and the RHT sign masks of every chunk of a vector.
template <int HeadDim>
struct EncodeTables {
  device::GridCell cell[kMaxCells];
  float node[kSearchTableSize];  // tree boundaries, levels at node[2^bits + i]
  device::ChunkSigns sign[HeadDim / device::kChunk];
};

// Fills the tables (call before __syncthreads()).
template <int HeadDim>
__device__ inline void load_tables(EncodeTables<HeadDim>& s, const EncodeParams& p) {
  for (int i = static_cast<int>(threadIdx.x); i < p.cells.cells; i += kThreadsPerBlock)
    s.cell[i] = {p.cells.boundary[i], (static_cast<uint32_t>(p.cells.below[i]) + 1u) * device::kLevelBytes};
  if (threadIdx.x < kSearchTableSize) s.node[threadIdx.x] = p.tree.node[threadIdx.x];
  if (threadIdx.x < HeadDim / device::kChunk) s.sign[threadIdx.x] = device::chunk_signs(p.signs, threadIdx.x);
}

// Which lookup, and whether the levels are needed (for the scale).
enum class Lookup { kGrid, kGridLevels, kTreeLevels };

// Unit coordinates u = z * inv of a thread's chunks -> packed code words; with the levels, also the
// sums of u * c and c * c over the thread's coordinates (c = the chosen level).
template <int Bits, int kChunks, Lookup kLookup, int HeadDim>
__device__ inline void quantize_chunks(const float (&z)[kChunks][device::kChunk], float inv, const EncodeTables<HeadDim>& s,
                                       const EncodeParams& p, uint32_t (&words)[kChunks], float& dot,
                                       float& levels_sq) {
  const float* levels = s.node + (1 << Bits);
  const auto cell_mask8 = static_cast<uint32_t>(p.cells.cells - 1) << kCellFractionBits;
#pragma unroll
  for (int u = 0; u < kChunks; ++u) {
    uint32_t word = 0;
#pragma unroll
    for (int k = 0; k < device::kChunk; ++k) {
      const float unit = __fmul_rn(z[u][k], inv);
      uint32_t offset4;
      if constexpr (kLookup == Lookup::kTreeLevels) {
        offset4 = device::tree_level_offset<Bits>(unit, s.node, p.tree.node[1], p.tree.node[2], p.tree.node[3]);
      } else {
        offset4 = device::cell_level_offset(unit, s.cell, p.cells.scale, p.cells.offset, cell_mask8);
      }
      word += device::packed_from_offset<Bits>(offset4, k);
      if constexpr (kLookup != Lookup::kGrid) {
        const float level = device::level_at(levels, offset4);
        dot = fmaf(unit, level, dot);
        levels_sq = fmaf(level, level, levels_sq);
      }
    }
    words[u] = word;
  }
}

// The rows of a warp-stride walk: warp w of the grid takes rows [first, first + kVectorsPerWarp)
// for first = w * kVectorsPerWarp, then steps by the whole grid. Every lane of a warp runs the
// same iterations (the shuffles need the full warp); `row` may be past the end (inactive).
// 32-bit: rows < kMaxCodecRows = 2^30 and the grid is at most the resident blocks, so row + 2 stride
// (the furthest look-ahead) stays below 2^31.
template <int kVectorsPerWarp>
struct RowWalk {
  int32_t row;
  int32_t stride;
  __device__ explicit RowWalk(int lane_vector) {
    const auto warp = static_cast<int32_t>(blockIdx.x * kWarpsPerBlock + threadIdx.x / device::kWarpSize);
    row = warp * kVectorsPerWarp + lane_vector;
    stride = static_cast<int32_t>(gridDim.x) * kWarpsPerBlock * kVectorsPerWarp;
  }
  // Whether the warp still has rows (the same answer for every lane of the warp).
  __device__ bool warp_continues(int32_t rows, int lane_vector) const { return row - lane_vector < rows; }
};

// Where one row of encode goes.
struct RowPlace {
  bool active = false;  // row < rows
  int32_t index = 0;    // row = token * heads + head
  int32_t token = 0;
  int32_t head = 0;
  int64_t slot = 0;     // paged: slot_mapping[token]
};

// Encode stages its input rows through a ring of kEncodeStages slots per warp in shared memory,
// filled by cp.async (turboquant/device/async_copy.cuh): while a warp computes one row, the next
// is in flight, and no registers hold it. A slot holds, for each lane, the 16-byte words of its
// chunks (1 per chunk for fp16 / bf16, 2 for fp32), word w of lane l at [w][l] (conflict-free
// 16-byte accesses); each lane copies and later reads only its own words, so its own wait is
// all the synchronisation needed.
inline constexpr int kEncodeStages = 2;

// 16-byte words per lane in one slot, and the dynamic shared memory of a block.
template <int HeadDim>
__host__ __device__ constexpr int encode_words(DType input) {
  return device::VectorLayout<HeadDim>::kChunks * (input == DType::kF32 ? 2 : 1);
}
template <int HeadDim>
__host__ __device__ constexpr size_t encode_ring_bytes(DType input) {
  return static_cast<size_t>(kEncodeStages) * kWarpsPerBlock * encode_words<HeadDim>(input) * device::kWarpSize *
         device::kVectorBytes;
}

// Starts copying row `row` into the ring slot at shared address `slot` (this lane's word 0),
// zero-filled past the end, and returns where the row goes (the slot of a paged row is loaded
// now and read in the next iteration).
template <int HeadDim>
__device__ inline RowPlace issue_encode_row(const EncodeParams& p, int32_t row, int32_t rows, int lane_in_vector,
                                            uint32_t slot) {
  using Layout = device::VectorLayout<HeadDim>;
  constexpr uint32_t kWordStride = device::kWarpSize * device::kVectorBytes;  // bytes between words
  RowPlace r;
  r.active = row < rows;
  r.index = row;
  const auto* src = static_cast<const uint8_t*>(p.input);
  if (r.active) {
    if (p.head_major) {
      divmod(row, p.token_count, r.head, r.token);
    } else {
      divmod(row, p.heads, r.token, r.head);
    }
    src += (static_cast<int64_t>(r.token) * p.input_stride0 + static_cast<int64_t>(r.head) * p.input_stride1) *
           p.input_element_bytes;
    if (p.pages != nullptr) r.slot = __ldg(p.slot_mapping + r.token);
  }
  if (p.input_dtype == DType::kF32) {
    constexpr int kBytes = device::kChunk * sizeof(float);
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        device::async_copy_16(slot + (2 * u + h) * kWordStride,
                              src + Layout::chunk_index(lane_in_vector, u) * kBytes + h * device::kVectorBytes,
                              !r.active);
  } else {
    constexpr int kBytes = device::kChunk * sizeof(uint16_t);
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u)
      device::async_copy_16(slot + u * kWordStride, src + Layout::chunk_index(lane_in_vector, u) * kBytes, !r.active);
  }
  device::async_copy_commit();
  return r;
}

// Whether encode transforms fp16 / bf16 rows with tensor cores (device::walsh_hadamard_mma).
template <int HeadDim>
inline constexpr bool kEncodeMma = device::VectorLayout<HeadDim>::kLanes >= 4;

template <int HeadDim, int Bits>
__global__ void __launch_bounds__(kThreadsPerBlock, kEncodeMinBlocksPerSm)
    encode_kernel(const __grid_constant__ EncodeParams p) {
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int kChunks = Layout::kChunks;
  constexpr int kLanes = Layout::kLanes;
  constexpr int kCodeBytes = HeadDim * Bits / device::kBitsPerByte;
  constexpr float kInvSqrtHeadDim = inv_sqrt_pow2(HeadDim);
  constexpr int kAccumulators = 4;  // independent partial sums of ||z||^2 per thread
  constexpr uint32_t kWordStride = device::kWarpSize * device::kVectorBytes;

  __shared__ EncodeTables<HeadDim> tables;
  extern __shared__ uint4 ring[];  // [warp][stage][word][lane], encode_ring_bytes
  load_tables(tables, p);
  __syncthreads();

  const int lane = static_cast<int>(threadIdx.x) % device::kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / device::kWarpSize;
  const int lane_in_vector = lane % kLanes;
  const int lane_vector = lane / kLanes;
  const auto chunk_of = [lane_in_vector](int u) { return Layout::chunk_index(lane_in_vector, u); };
  const int words = encode_words<HeadDim>(p.input_dtype);
  const uint4* my_ring = ring + warp * kEncodeStages * words * device::kWarpSize + lane;
  const uint32_t my_ring_address = device::shared_address(my_ring);
  const uint32_t slot_bytes = words * kWordStride;
  const bool mma = kEncodeMma<HeadDim> && p.input_dtype != DType::kF32;
  uint32_t hadamard_b[2][2];
  if (p.input_dtype == DType::kBF16) {
    device::hadamard16_b<true>(lane, hadamard_b);
  } else {
    device::hadamard16_b<false>(lane, hadamard_b);
  }
  // The raw norm needs the levels only when a level is 0 (then ||c|| may be 0: scale 0, as the CPU).
  bool zero_level = false;
#pragma unroll
  for (int i = 0; i < (1 << Bits); ++i) zero_level |= p.tree.node[(1 << Bits) + i] == 0.0f;
  const Lookup lookup = p.cells.cells == 0 ? Lookup::kTreeLevels
                        : (p.scale != ScaleMode::kRawNorm || zero_level) ? Lookup::kGridLevels
                                                                          : Lookup::kGrid;
  const auto rows = static_cast<int32_t>(p.tokens * p.heads.divisor);

  RowWalk<Layout::kVectorsPerWarp> walk(lane_vector);
  RowPlace next = issue_encode_row<HeadDim>(p, walk.row, rows, lane_in_vector, my_ring_address);
  for (uint32_t stage = 0; walk.warp_continues(rows, lane_vector); walk.row += walk.stride, stage ^= 1u) {
    // Start the next row into the other slot, then take this one out of its slot.
    const RowPlace row = next;
    next = issue_encode_row<HeadDim>(p, walk.row + walk.stride, rows, lane_in_vector,
                                     my_ring_address + (stage ^ 1u) * slot_bytes);
    device::async_copy_wait<1>();
    const uint4* slot = my_ring + stage * words * device::kWarpSize;

    float z[kChunks][device::kChunk];
    if constexpr (kEncodeMma<HeadDim>) {
      if (mma) {
        uint4 raw[kChunks];
#pragma unroll
        for (int u = 0; u < kChunks; ++u) {
          const uint4 w = slot[u * device::kWarpSize];
          const device::ChunkSigns& f = tables.sign[chunk_of(u)];
          raw[u] = make_uint4(w.x ^ f.pair[0], w.y ^ f.pair[1], w.z ^ f.pair[2], w.w ^ f.pair[3]);
        }
        if (p.input_dtype == DType::kBF16) {
          device::walsh_hadamard_mma<HeadDim, true>(raw, hadamard_b, z, lane);
        } else {
          device::walsh_hadamard_mma<HeadDim, false>(raw, hadamard_b, z, lane);
        }
      }
    }
    if (!mma) {
      device::RawChunks<kChunks> raw;
      if (p.input_dtype == DType::kF32) {
#pragma unroll
        for (int w = 0; w < 2 * kChunks; ++w) raw.word[w] = slot[w * device::kWarpSize];
      } else {
#pragma unroll
        for (int w = 0; w < kChunks; ++w) raw.word[w] = slot[w * device::kWarpSize];
      }
      device::ChunkSigns flip[kChunks];
#pragma unroll
      for (int u = 0; u < kChunks; ++u) flip[u] = tables.sign[chunk_of(u)];
      device::convert_raw_chunks(raw, p.input_dtype, flip, z);
      device::walsh_hadamard<HeadDim>(z, lane);
    }

    float partial[kAccumulators] = {};
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int k = 0; k < device::kChunk; ++k)
        partial[k % kAccumulators] = fmaf(z[u][k], z[u][k], partial[k % kAccumulators]);
    float sum_sq = device::vector_sum<kLanes>((partial[0] + partial[1]) + (partial[2] + partial[3]));
    const bool finite = isfinite(sum_sq);
    if (!finite) {  // NaN / Inf in the row (or an overflowing norm): store a zero vector
#pragma unroll
      for (int u = 0; u < kChunks; ++u)
#pragma unroll
        for (int k = 0; k < device::kChunk; ++k) z[u][k] = 0.0f;
      sum_sq = 0.0f;
    }
    // u = y / ||y|| = z / ||z||, ||y|| = ||z|| / sqrt(HeadDim); rsqrtf is within 2 ulp, so u and
    // the norm are within a few ulp of the CPU's (codes may differ at ties, scales by ~3e-7).
    const float inv = sum_sq > 0.0f ? rsqrtf(sum_sq) : 0.0f;
    const float norm = sum_sq * inv * kInvSqrtHeadDim;

    uint32_t words[kChunks];
    float dot = 0.0f, levels_sq = 0.0f;
    if (lookup == Lookup::kGrid) {
      quantize_chunks<Bits, kChunks, Lookup::kGrid>(z, inv, tables, p, words, dot, levels_sq);
      levels_sq = 1.0f;  // > 0: the raw norm does not use it
    } else {
      if (lookup == Lookup::kGridLevels) {
        quantize_chunks<Bits, kChunks, Lookup::kGridLevels>(z, inv, tables, p, words, dot, levels_sq);
      } else {
        quantize_chunks<Bits, kChunks, Lookup::kTreeLevels>(z, inv, tables, p, words, dot, levels_sq);
      }
      dot = device::vector_sum<kLanes>(dot);
      levels_sq = device::vector_sum<kLanes>(levels_sq);
    }

    if (!row.active) continue;
    uint8_t* codes = nullptr;
    uint8_t* scale = nullptr;
    if (p.pages != nullptr) {
      if (row.slot < 0) continue;  // padding token
      if (row.slot >= p.num_slots) {
        if (row.head == 0 && lane_in_vector == 0 && p.bad_slot_count != nullptr) atomicAdd(p.bad_slot_count, 1);
        continue;
      }
      int64_t page = 0;
      int32_t r = 0;
      divmod_wide(row.slot, p.planes.page_size, page, r);
      uint8_t* head = p.pages + page * p.planes.page_bytes + row.head * p.planes.head_bytes;
      codes = head + p.planes.codes_offset + static_cast<int64_t>(r) * kCodeBytes;
      scale = head + p.planes.scales_offset + static_cast<int64_t>(r) * p.scale_bytes;
    } else {
      codes = p.codes + static_cast<int64_t>(row.index) * kCodeBytes;
      scale = static_cast<uint8_t*>(p.scales) + static_cast<int64_t>(row.index) * p.scale_bytes;
    }
#pragma unroll
    for (int u = 0; u < kChunks; ++u) device::store_chunk_codes<Bits>(codes, chunk_of(u), words[u]);
    if (lane_in_vector == 0) {
      write_scale(scale, p.norm, choose_scale(p.scale, norm, dot, levels_sq));
      if (!finite && p.nonfinite_count != nullptr) atomicAdd(p.nonfinite_count, 1);
    }
  }
}

// One row of decode, loaded ahead: where it goes (nullptr: nowhere) and its code words and scale
// as loaded (joined and converted when the row is decoded, one iteration later).
template <int kChunks>
struct DecodeRow {
  uint8_t* dst = nullptr;  // the output row; nullptr past the end, past a sequence, behind a bad entry
  uint32_t scale_bits = 0u;
  device::ChunkCodeLoads codes[kChunks];
};

// The block-table side of a paged decode row, loaded one iteration before its codes, so that a
// row's codes never wait for its block-table entry: the sequence length and the page of the row's
// token (side by side: the entry exists whenever the token is inside max_pages_per_seq pages,
// whatever the length; page -1 past them). Two registers; the row's place in its sequence is
// recomputed when its codes are loaded. Dense rows need none.
struct PageLookup {
  int32_t seq_len = 0;
  int32_t page = -1;
};

// A paged row's sequence, token in the sequence, and page index / row of that token (the token is
// inside the pages given when page_index < max_pages_per_seq).
struct PagedPlace {
  int32_t seq = 0;
  int32_t token = 0;
  int32_t page_index = 0;
  int32_t in_page = 0;
};
__device__ inline PagedPlace paged_place(const DecodeParams& p, int32_t token_row) {
  PagedPlace q;
  divmod(token_row, p.max_tokens, q.seq, q.token);
  divmod(q.token, p.planes.page_size, q.page_index, q.in_page);
  return q;
}

// The (token row, head) of walk row `row`. Dense: row = token * heads + head. Paged: groups of
// kVectors consecutive tokens of one head, row = ((g * heads) + head) * kVectors + t for token
// g * kVectors + t, so that a warp's vectors are consecutive tokens of one KV head, contiguous in
// their page (rather than kVectors heads of one token, a head block apart). `token` may reach
// dim0 rounded up to kVectors (inactive). decode_rows gives the walk's row count.
template <int kVectors>
__device__ inline void decode_row_place(const DecodeParams& p, int32_t row, int32_t& token, int32_t& head) {
  if (p.pages == nullptr) {
    divmod(row, p.dim1, token, head);
    return;
  }
  static_assert((kVectors & (kVectors - 1)) == 0, "a power of two");
  int32_t group = 0;
  divmod(row / kVectors, p.dim1, group, head);
  token = group * kVectors + (row & (kVectors - 1));
}
template <int kVectors>
__device__ inline int32_t decode_rows(const DecodeParams& p) {
  return static_cast<int32_t>(p.pages == nullptr ? p.dim0 * p.dim1.divisor
                                                 : (p.dim0 + kVectors - 1) / kVectors * kVectors * p.dim1.divisor);
}

template <int kVectors>
__device__ inline PageLookup lookup_page(const DecodeParams& p, int32_t row, int32_t rows) {
  PageLookup l;
  if (p.pages == nullptr || row >= rows) return l;
  int32_t token_row = 0;
  int32_t head = 0;
  decode_row_place<kVectors>(p, row, token_row, head);
  if (token_row >= p.dim0) return l;
  const PagedPlace q = paged_place(p, token_row);
  if (q.page_index < p.max_pages_per_seq) {
    l.seq_len = __ldg(p.seq_lens + q.seq);
    l.page = __ldg(p.block_table + static_cast<int64_t>(q.seq) * p.max_pages_per_seq + q.page_index);
  }
  return l;
}

// Issues the loads of row `row` (paged: its block-table side from lookup_page, loaded before).
template <int HeadDim, int Bits, int kVectors, int kChunks, typename ChunkOf>
__device__ inline void load_decode_row(const DecodeParams& p, int32_t row, int32_t rows, const PageLookup& l,
                                       ChunkOf chunk_of, DecodeRow<kChunks>& r) {
  constexpr int kCodeBytes = HeadDim * Bits / device::kBitsPerByte;
  bool active = row < rows;
  const uint8_t* codes = nullptr;
  const uint8_t* scale = nullptr;
  int32_t token = 0;
  int32_t head = 0;
  if (active) {
    decode_row_place<kVectors>(p, row, token, head);
    if (p.pages != nullptr) {
      // Rows past the sequence (or past the pages given) and bad block-table entries: untouched.
      const PagedPlace q = paged_place(p, token);
      active = token < p.dim0 && q.token < l.seq_len && l.page >= 0 && l.page < p.num_pages;
      if (active) {
        const uint8_t* at =
            p.pages + static_cast<int64_t>(l.page) * p.planes.page_bytes + static_cast<int64_t>(head) * p.planes.head_bytes;
        codes = at + p.planes.codes_offset + static_cast<int64_t>(q.in_page) * kCodeBytes;
        scale = at + p.planes.scales_offset + static_cast<int64_t>(q.in_page) * p.scale_bytes;
      }
    } else {
      codes = p.codes + static_cast<int64_t>(row) * kCodeBytes;
      scale = static_cast<const uint8_t*>(p.scales) + static_cast<int64_t>(row) * p.scale_bytes;
    }
  }
  r.dst = active ? static_cast<uint8_t*>(p.output) +
                       (static_cast<int64_t>(token) * p.output_stride0 + static_cast<int64_t>(head) * p.output_stride1) *
                           p.output_element_bytes
                 : nullptr;
  r.scale_bits = active ? load_scale_bits(scale, p.norm) : 0u;
#pragma unroll
  for (int u = 0; u < kChunks; ++u)
    r.codes[u] = active ? device::load_chunk_codes<Bits>(codes, chunk_of(u)) : device::ChunkCodeLoads{};
}

template <int HeadDim, int Bits>
__global__ void __launch_bounds__(kThreadsPerBlock, kDecodeMinBlocksPerSm<Bits>)
    decode_kernel(const __grid_constant__ DecodeParams p) {
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int kChunks = Layout::kChunks;
  constexpr float kRhtScale = inv_sqrt_pow2(HeadDim);  // == rht_scale<float>(HeadDim)

  // Level pairs (turboquant/device/codebook.cuh): one conflict-free 8-byte shared-memory read gives
  // the levels of two coordinates, from the 2 Bits bits that hold both (one shift, one LOP3, one
  // LDS.64 per pair instead of two shifts, two masks and two LDS.32).
  constexpr int kLevelMask = (1 << Bits) - 1;
  constexpr int kPairTableSize = device::kPairTableSize<Bits>;
  __shared__ float2 pair_levels[kPairTableSize];
  // The RHT sign masks of every chunk, read back per row: kept in registers they are rebuilt from
  // the sign bits each row under the 80-register cap (~60 instructions per row).
  __shared__ device::ChunkSigns sign_table[HeadDim / device::kChunk];
  for (int i = static_cast<int>(threadIdx.x); i < kPairTableSize; i += kThreadsPerBlock) {
    const int entry = i / device::kPairCopies;
    pair_levels[i] = make_float2(p.levels[entry & kLevelMask], p.levels[entry >> Bits]);
  }
  if (threadIdx.x < HeadDim / device::kChunk) sign_table[threadIdx.x] = device::chunk_signs(p.signs, threadIdx.x);
  __syncthreads();

  const int lane = static_cast<int>(threadIdx.x) % device::kWarpSize;
  const int lane_in_vector = lane % Layout::kLanes;
  const int lane_vector = lane / Layout::kLanes;
  const auto chunk_of = [lane_in_vector](int u) { return Layout::chunk_index(lane_in_vector, u); };
  const uint32_t pair_copy = device::pair_copy_offset(lane);
  constexpr int kVectors = Layout::kVectorsPerWarp;
  const int32_t rows = decode_rows<kVectors>(p);

  RowWalk<kVectors> walk(lane_vector);
  DecodeRow<kChunks> next;
  load_decode_row<HeadDim, Bits, kVectors>(p, walk.row, rows, lookup_page<kVectors>(p, walk.row, rows), chunk_of, next);
  PageLookup ahead = lookup_page<kVectors>(p, walk.row + walk.stride, rows);  // the row after `next`
  for (; walk.warp_continues(rows, lane_vector); walk.row += walk.stride) {
    // Take this row out of the prefetch registers, then refill them with the next row.
    float x[kChunks][device::kChunk];
    const float scale = scale_from_bits(next.scale_bits, p.norm);
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      const uint32_t word = device::chunk_code_word<Bits>(next.codes[u], chunk_of(u));
#pragma unroll
      for (int j = 0; j < device::kPairsPerChunk; ++j) {
        const float2 pair = device::pair_at(pair_levels, device::unpacked_pair_offset<Bits>(word, j, pair_copy));
        x[u][2 * j] = __fmul_rn(scale, pair.x);
        x[u][2 * j + 1] = __fmul_rn(scale, pair.y);
      }
    }
    uint8_t* const dst = next.dst;
    // In flight during this row: the codes of the next row, the block-table side of the one after.
    const PageLookup next_lookup = ahead;
    ahead = lookup_page<kVectors>(p, walk.row + 2 * walk.stride, rows);
    load_decode_row<HeadDim, Bits, kVectors>(p, walk.row + walk.stride, rows, next_lookup, chunk_of, next);

    device::walsh_hadamard<HeadDim>(x, lane);

    if (dst == nullptr) continue;
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int k = 0; k < device::kChunk; ++k) x[u][k] = __fmul_rn(x[u][k], kRhtScale);
    device::ChunkSigns flip[kChunks];
#pragma unroll
    for (int u = 0; u < kChunks; ++u) flip[u] = sign_table[chunk_of(u)];
    device::store_chunks<kChunks>(dst, p.output_dtype, chunk_of, flip, x);
  }
}

// One row of rotate, loaded ahead.
template <int kChunks>
struct RotateRow {
  bool active = false;
  int32_t token = 0;
  int32_t head = 0;
  device::RawChunks<kChunks> raw;
};

template <int kChunks, typename ChunkOf>
__device__ inline void load_rotate_row(const RotateParams& p, int32_t row, int32_t rows, ChunkOf chunk_of,
                                       RotateRow<kChunks>& r) {
  r.active = row < rows;
  if (!r.active) {
    device::zero_raw_chunks(r.raw);
    return;
  }
  divmod(row, p.dim1, r.token, r.head);
  const auto* src = static_cast<const uint8_t*>(p.input) +
                    (static_cast<int64_t>(r.token) * p.input_stride0 + static_cast<int64_t>(r.head) * p.input_stride1) *
                        p.input_element_bytes;
  // Plain (coherent) loads: the output may be the same memory (in place). A row is read (one
  // iteration ahead) before it is written, and only by the lanes that write it.
  device::load_raw_chunks<kChunks, false>(src, p.input_dtype, chunk_of, r.raw);
}

template <int HeadDim>
__global__ void __launch_bounds__(kThreadsPerBlock, kRotateMinBlocksPerSm)
    rotate_kernel(const __grid_constant__ RotateParams p) {
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int kChunks = Layout::kChunks;
  constexpr float kRhtScale = inv_sqrt_pow2(HeadDim);  // == rht_scale<float>(HeadDim)

  const int lane = static_cast<int>(threadIdx.x) % device::kWarpSize;
  const int lane_in_vector = lane % Layout::kLanes;
  const int lane_vector = lane / Layout::kLanes;
  const auto chunk_of = [lane_in_vector](int u) { return Layout::chunk_index(lane_in_vector, u); };
  // Forward: signs flipped on the way in; inverse: on the way out.
  const uint32_t load_mask = p.inverse ? 0u : ~0u, store_mask = ~load_mask;
  device::ChunkSigns load_flip[kChunks], store_flip[kChunks];
#pragma unroll
  for (int u = 0; u < kChunks; ++u) {
    const device::ChunkSigns s = device::chunk_signs(p.signs, chunk_of(u));
#pragma unroll
    for (int i = 0; i < device::kPairsPerChunk; ++i) {
      load_flip[u].pair[i] = s.pair[i] & load_mask;
      store_flip[u].pair[i] = s.pair[i] & store_mask;
    }
  }
  const auto rows = static_cast<int32_t>(p.dim0 * p.dim1.divisor);

  RowWalk<Layout::kVectorsPerWarp> walk(lane_vector);
  RotateRow<kChunks> next;
  load_rotate_row(p, walk.row, rows, chunk_of, next);
  for (; walk.warp_continues(rows, lane_vector); walk.row += walk.stride) {
    // Take this row out of the prefetch registers, then refill them with the next row.
    float x[kChunks][device::kChunk];
    device::convert_raw_chunks(next.raw, p.input_dtype, load_flip, x);
    const bool active = next.active;
    const int32_t token = next.token;
    const int32_t head = next.head;
    load_rotate_row(p, walk.row + walk.stride, rows, chunk_of, next);  // in flight during this row

    device::walsh_hadamard<HeadDim>(x, lane);

    if (!active) continue;
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int k = 0; k < device::kChunk; ++k) x[u][k] = __fmul_rn(x[u][k], kRhtScale);
    auto* dst = static_cast<uint8_t*>(p.output) +
                (static_cast<int64_t>(token) * p.output_stride0 + static_cast<int64_t>(head) * p.output_stride1) *
                    p.output_element_bytes;
    device::store_chunks<kChunks>(dst, p.output_dtype, chunk_of, store_flip, x);
  }
}

// Blocks for `vectors` rows: enough for every row, at most what the device keeps resident (the
// per-SM occupancy is cached per kernel in *blocks_per_sm). Host calls only; no synchronisation.
// Blocks for `vectors` rows: enough for every row, at most what the device keeps resident with
// `shared_bytes` of dynamic shared memory per block (the per-SM occupancy is cached per kernel in
// *blocks_per_sm; callers pass the same shared_bytes every time). Host calls only; no
// synchronisation.
template <typename Params>
cudaError_t grid_blocks(void (*kernel)(Params), std::atomic<int>& blocks_per_sm, int64_t vectors,
                        int64_t vectors_per_block, size_t shared_bytes, int* blocks) noexcept {
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  int per_sm = blocks_per_sm.load(std::memory_order_relaxed);
  if (per_sm == 0) {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreadsPerBlock, shared_bytes);
    if (e != cudaSuccess) return e;
    per_sm = std::max(per_sm, 1);
    blocks_per_sm.store(per_sm, std::memory_order_relaxed);
  }
  const int64_t needed = (vectors + vectors_per_block - 1) / vectors_per_block;
  *blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, static_cast<int64_t>(sms) * per_sm)));
  return cudaSuccess;
}

template <int HeadDim, int Bits>
cudaError_t launch_encode(const EncodeParams& params, cudaStream_t stream) noexcept {
  // The ring is sized for the input dtype; the occupancy (and the opt-in above 48 KiB) for the
  // largest, fp32, so that one cached grid size fits every call.
  static std::atomic<int> blocks_per_sm{0};
  constexpr size_t kMaxRingBytes = encode_ring_bytes<HeadDim>(DType::kF32);
  static const cudaError_t opt_in = cudaFuncSetAttribute(
      encode_kernel<HeadDim, Bits>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kMaxRingBytes));
  if (opt_in != cudaSuccess) return opt_in;
  int blocks = 0;
  const cudaError_t e = grid_blocks(encode_kernel<HeadDim, Bits>, blocks_per_sm, params.tokens * params.heads.divisor,
                                    int64_t{kWarpsPerBlock} * device::VectorLayout<HeadDim>::kVectorsPerWarp,
                                    kMaxRingBytes, &blocks);
  if (e != cudaSuccess) return e;
  encode_kernel<HeadDim, Bits>
      <<<blocks, kThreadsPerBlock, encode_ring_bytes<HeadDim>(params.input_dtype), stream>>>(params);
  return cudaGetLastError();
}

template <int HeadDim, int Bits>
cudaError_t launch_decode(const DecodeParams& params, cudaStream_t stream) noexcept {
  static std::atomic<int> blocks_per_sm{0};
  int blocks = 0;
  const cudaError_t e = grid_blocks(decode_kernel<HeadDim, Bits>, blocks_per_sm, params.dim0 * params.dim1.divisor,
                                    int64_t{kWarpsPerBlock} * device::VectorLayout<HeadDim>::kVectorsPerWarp, 0, &blocks);
  if (e != cudaSuccess) return e;
  decode_kernel<HeadDim, Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(params);
  return cudaGetLastError();
}

template <int HeadDim>
cudaError_t launch_rotate(const RotateParams& params, cudaStream_t stream) noexcept {
  static std::atomic<int> blocks_per_sm{0};
  int blocks = 0;
  const cudaError_t e = grid_blocks(rotate_kernel<HeadDim>, blocks_per_sm, params.dim0 * params.dim1.divisor,
                                    int64_t{kWarpsPerBlock} * device::VectorLayout<HeadDim>::kVectorsPerWarp, 0, &blocks);
  if (e != cudaSuccess) return e;
  rotate_kernel<HeadDim><<<blocks, kThreadsPerBlock, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace turboquant::cuda::detail
