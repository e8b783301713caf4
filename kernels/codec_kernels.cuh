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
inline constexpr int kEncodeMinBlocksPerSm = 2;
// Decode: 3 blocks per SM (80 registers) where that does not spill (2 and 4 bits: measured +10%
// at 4 bits on an H200); 1- and 3-bit decode spill 32-48 bytes at 80 registers and were measured
// slower (3 bits: 157 us against 134 us at 2 blocks), so they keep 2.
template <int Bits>
inline constexpr int kDecodeMinBlocksPerSm = (Bits == 2 || Bits == 4) ? 3 : 2;
inline constexpr int kRotateMinBlocksPerSm = 2;
inline constexpr int32_t kInt32Max = 0x7fffffff;

// q = n / d and r = n % d for n >= 0: a multiply-high when n < 2^31 (the usual case), else a
// 64-bit division.
__device__ inline void divmod(int64_t n, const FastDivisor& d, int64_t& q, int32_t& r) {
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
// +-65504, round to nearest even).
__device__ inline float read_scale(const void* p, NormStorage storage) {
  return storage == NormStorage::kF32
             ? __ldg(static_cast<const float*>(p))
             : __half2float(__ushort_as_half(__ldg(static_cast<const unsigned short*>(p))));
}
__device__ inline void write_scale(void* p, NormStorage storage, float s) {
  if (storage == NormStorage::kF32) {
    *static_cast<float*>(p) = s;
  } else {
    const float clamped = fminf(fmaxf(s, -kHalfMax), kHalfMax);
    *static_cast<unsigned short*>(p) = __half_as_ushort(__float2half_rn(clamped));
  }
}

// The bucketing tables of an encode kernel in shared memory (turboquant/device/codebook.cuh).
struct EncodeTables {
  float boundary[kMaxCells];
  uint32_t below4[kMaxCells];
  float node[kSearchTableSize];  // tree boundaries, levels at node[2^bits + i]
};

// Copies the tables into shared memory (call before __syncthreads()).
__device__ inline void load_tables(EncodeTables& s, const EncodeParams& p) {
  for (int i = static_cast<int>(threadIdx.x); i < p.cells.cells; i += kThreadsPerBlock) {
    s.boundary[i] = p.cells.boundary[i];
    s.below4[i] = static_cast<uint32_t>(p.cells.below[i]) * device::kLevelBytes;
  }
  if (threadIdx.x < kSearchTableSize) s.node[threadIdx.x] = p.tree.node[threadIdx.x];
}

// Which lookup, and whether the levels are needed (for the scale).
enum class Lookup { kGrid, kGridLevels, kTreeLevels };

// Unit coordinates u = z * inv of a thread's chunks -> packed code words; with the levels, also the
// sums of u * c and c * c over the thread's coordinates (c = the chosen level).
template <int Bits, int kChunks, Lookup kLookup>
__device__ inline void quantize_chunks(const float (&z)[kChunks][device::kChunk], float inv, const EncodeTables& s,
                                       const EncodeParams& p, uint32_t (&words)[kChunks], float& dot,
                                       float& levels_sq) {
  const float* levels = s.node + (1 << Bits);
  const auto cell_mask = static_cast<uint32_t>(p.cells.cells - 1);
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
        offset4 = device::cell_level_offset(unit, s.boundary, s.below4, p.cells.scale, p.cells.offset, cell_mask);
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
template <int kVectorsPerWarp>
struct RowWalk {
  int64_t row;
  int64_t stride;
  __device__ explicit RowWalk(int lane_vector) {
    const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / device::kWarpSize;
    row = warp * kVectorsPerWarp + lane_vector;
    stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock * kVectorsPerWarp;
  }
  // Whether the warp still has rows (the same answer for every lane of the warp).
  __device__ bool warp_continues(int64_t rows, int lane_vector) const { return row - lane_vector < rows; }
};

// Where one row of encode goes.
struct RowPlace {
  bool active = false;  // row < rows
  int64_t index = 0;    // row = token * heads + head
  int64_t token = 0;
  int32_t head = 0;
  int64_t slot = 0;     // paged: slot_mapping[token]
};

// One row of encode, loaded ahead: its place and its raw input.
template <int kChunks>
struct EncodeRow : RowPlace {
  device::RawChunks<kChunks> raw;
};

template <int kChunks, typename ChunkOf>
__device__ inline void load_encode_row(const EncodeParams& p, int64_t row, int64_t rows, ChunkOf chunk_of,
                                       EncodeRow<kChunks>& r) {
  r.active = row < rows;
  r.index = row;
  if (!r.active) {
    device::zero_raw_chunks(r.raw);
    return;
  }
  divmod(row, p.heads, r.token, r.head);
  const auto* src = static_cast<const uint8_t*>(p.input) +
                    (r.token * p.input_stride0 + r.head * p.input_stride1) * p.input_element_bytes;
  device::load_raw_chunks<kChunks, true>(src, p.input_dtype, chunk_of, r.raw);
  if (p.pages != nullptr) r.slot = __ldg(p.slot_mapping + r.token);
}

template <int HeadDim, int Bits>
__global__ void __launch_bounds__(kThreadsPerBlock, kEncodeMinBlocksPerSm)
    encode_kernel(const __grid_constant__ EncodeParams p) {
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int kChunks = Layout::kChunks;
  constexpr int kLanes = Layout::kLanes;
  constexpr int kCodeBytes = HeadDim * Bits / device::kBitsPerByte;
  // ||y||^2 = ||z||^2 / HeadDim for y = z / sqrt(HeadDim); 1 / HeadDim is a power of two (exact).
  constexpr float kInvHeadDim = 1.0f / HeadDim;
  constexpr int kAccumulators = 4;  // independent partial sums of ||z||^2 per thread

  __shared__ EncodeTables tables;
  load_tables(tables, p);
  __syncthreads();

  const int lane = static_cast<int>(threadIdx.x) % device::kWarpSize;
  const int lane_in_vector = lane % kLanes;
  const int lane_vector = lane / kLanes;
  const auto chunk_of = [lane_in_vector](int u) { return Layout::chunk_index(lane_in_vector, u); };
  device::ChunkSigns flip[kChunks];
#pragma unroll
  for (int u = 0; u < kChunks; ++u) flip[u] = device::chunk_signs(p.signs, chunk_of(u));
  // The raw norm needs the levels only when a level is 0 (then ||c|| may be 0: scale 0, as the CPU).
  bool zero_level = false;
#pragma unroll
  for (int i = 0; i < (1 << Bits); ++i) zero_level |= p.tree.node[(1 << Bits) + i] == 0.0f;
  const Lookup lookup = p.cells.cells == 0 ? Lookup::kTreeLevels
                        : (p.scale != ScaleMode::kRawNorm || zero_level) ? Lookup::kGridLevels
                                                                          : Lookup::kGrid;
  const int64_t rows = p.tokens * p.heads.divisor;

  RowWalk<Layout::kVectorsPerWarp> walk(lane_vector);
  EncodeRow<kChunks> next;
  load_encode_row(p, walk.row, rows, chunk_of, next);
  for (; walk.warp_continues(rows, lane_vector); walk.row += walk.stride) {
    // Take this row out of the prefetch registers, then refill them with the next row.
    float z[kChunks][device::kChunk];
    device::convert_raw_chunks(next.raw, p.input_dtype, flip, z);
    const RowPlace row{next.active, next.index, next.token, next.head, next.slot};
    load_encode_row(p, walk.row + walk.stride, rows, chunk_of, next);  // in flight during this row

    device::walsh_hadamard<HeadDim>(z, lane);

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
    // u = y / ||y|| = z / ||z||.
    const float inv = sum_sq > 0.0f ? 1.0f / sqrtf(sum_sq) : 0.0f;
    const float norm = sqrtf(sum_sq * kInvHeadDim);

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
      divmod(row.slot, p.planes.page_size, page, r);
      uint8_t* head = p.pages + page * p.planes.page_bytes + row.head * p.planes.head_bytes;
      codes = head + p.planes.codes_offset + static_cast<int64_t>(r) * kCodeBytes;
      scale = head + p.planes.scales_offset + static_cast<int64_t>(r) * p.scale_bytes;
    } else {
      codes = p.codes + row.index * kCodeBytes;
      scale = static_cast<uint8_t*>(p.scales) + row.index * p.scale_bytes;
    }
#pragma unroll
    for (int u = 0; u < kChunks; ++u) device::store_chunk_codes<Bits>(codes, chunk_of(u), words[u]);
    if (lane_in_vector == 0) {
      write_scale(scale, p.norm, choose_scale(p.scale, norm, dot, levels_sq));
      if (!finite && p.nonfinite_count != nullptr) atomicAdd(p.nonfinite_count, 1);
    }
  }
}

// One row of decode, loaded ahead: where it goes and its code words and scale.
template <int kChunks>
struct DecodeRow {
  bool active = false;  // row < rows and the row is to be written
  int64_t token = 0;    // output row (dim0 index)
  int32_t head = 0;
  float scale = 0.0f;
  uint32_t words[kChunks];
};

template <int HeadDim, int Bits, int kChunks, typename ChunkOf>
__device__ inline void load_decode_row(const DecodeParams& p, int64_t row, int64_t rows, ChunkOf chunk_of,
                                       DecodeRow<kChunks>& r) {
  constexpr int kCodeBytes = HeadDim * Bits / device::kBitsPerByte;
  r.active = row < rows;
  const uint8_t* codes = nullptr;
  const uint8_t* scale = nullptr;
  if (r.active) {
    divmod(row, p.dim1, r.token, r.head);
    if (p.pages != nullptr) {
      int64_t seq = 0;
      int32_t token = 0;
      divmod(r.token, p.max_tokens, seq, token);
      // Rows past the sequence (or past the pages given) and bad block-table entries: untouched.
      // The sequence length and the block-table entry are loaded side by side (the entry exists
      // whenever token < page_capacity, whatever the length), so a row waits for two dependent
      // loads (entry, then codes), not three.
      const int64_t page_capacity = static_cast<int64_t>(p.max_pages_per_seq) * p.planes.page_size.divisor;
      int64_t page_index = 0;
      int32_t in_page = 0;
      int32_t seq_len = 0, page = -1;
      if (token < page_capacity) {  // token < max_tokens already
        divmod(token, p.planes.page_size, page_index, in_page);
        seq_len = __ldg(p.seq_lens + seq);
        page = __ldg(p.block_table + seq * p.max_pages_per_seq + page_index);
      }
      r.active = token < seq_len && page >= 0 && page < p.num_pages;
      if (r.active) {
        const uint8_t* head =
            p.pages + static_cast<int64_t>(page) * p.planes.page_bytes + r.head * p.planes.head_bytes;
        codes = head + p.planes.codes_offset + static_cast<int64_t>(in_page) * kCodeBytes;
        scale = head + p.planes.scales_offset + static_cast<int64_t>(in_page) * p.scale_bytes;
      }
    } else {
      codes = p.codes + row * kCodeBytes;
      scale = static_cast<const uint8_t*>(p.scales) + row * p.scale_bytes;
    }
  }
  r.scale = r.active ? read_scale(scale, p.norm) : 0.0f;
#pragma unroll
  for (int u = 0; u < kChunks; ++u) r.words[u] = r.active ? device::load_chunk_codes<Bits>(codes, chunk_of(u)) : 0u;
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
  for (int i = static_cast<int>(threadIdx.x); i < kPairTableSize; i += kThreadsPerBlock) {
    const int entry = i / device::kPairCopies;
    pair_levels[i] = make_float2(p.levels[entry & kLevelMask], p.levels[entry >> Bits]);
  }
  __syncthreads();

  const int lane = static_cast<int>(threadIdx.x) % device::kWarpSize;
  const int lane_in_vector = lane % Layout::kLanes;
  const int lane_vector = lane / Layout::kLanes;
  const auto chunk_of = [lane_in_vector](int u) { return Layout::chunk_index(lane_in_vector, u); };
  device::ChunkSigns flip[kChunks];
#pragma unroll
  for (int u = 0; u < kChunks; ++u) flip[u] = device::chunk_signs(p.signs, chunk_of(u));
  const uint32_t pair_copy = device::pair_copy_offset(lane);
  const int64_t rows = p.dim0 * p.dim1.divisor;

  RowWalk<Layout::kVectorsPerWarp> walk(lane_vector);
  DecodeRow<kChunks> next;
  load_decode_row<HeadDim, Bits>(p, walk.row, rows, chunk_of, next);
  for (; walk.warp_continues(rows, lane_vector); walk.row += walk.stride) {
    // Take this row out of the prefetch registers, then refill them with the next row.
    float x[kChunks][device::kChunk];
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int j = 0; j < device::kPairsPerChunk; ++j) {
        const float2 pair =
            device::pair_at(pair_levels, device::unpacked_pair_offset<Bits>(next.words[u], j, pair_copy));
        x[u][2 * j] = __fmul_rn(next.scale, pair.x);
        x[u][2 * j + 1] = __fmul_rn(next.scale, pair.y);
      }
    const bool active = next.active;
    const int64_t token = next.token;
    const int32_t head = next.head;
    load_decode_row<HeadDim, Bits>(p, walk.row + walk.stride, rows, chunk_of, next);  // in flight during this row

    device::walsh_hadamard<HeadDim>(x, lane);

    if (!active) continue;
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int k = 0; k < device::kChunk; ++k) x[u][k] = __fmul_rn(x[u][k], kRhtScale);
    auto* dst = static_cast<uint8_t*>(p.output) +
                (token * p.output_stride0 + head * p.output_stride1) * p.output_element_bytes;
    device::store_chunks<kChunks>(dst, p.output_dtype, chunk_of, flip, x);
  }
}

// One row of rotate, loaded ahead.
template <int kChunks>
struct RotateRow {
  bool active = false;
  int64_t token = 0;
  int32_t head = 0;
  device::RawChunks<kChunks> raw;
};

template <int kChunks, typename ChunkOf>
__device__ inline void load_rotate_row(const RotateParams& p, int64_t row, int64_t rows, ChunkOf chunk_of,
                                       RotateRow<kChunks>& r) {
  r.active = row < rows;
  if (!r.active) {
    device::zero_raw_chunks(r.raw);
    return;
  }
  divmod(row, p.dim1, r.token, r.head);
  const auto* src = static_cast<const uint8_t*>(p.input) +
                    (r.token * p.input_stride0 + r.head * p.input_stride1) * p.input_element_bytes;
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
  const int64_t rows = p.dim0 * p.dim1.divisor;

  RowWalk<Layout::kVectorsPerWarp> walk(lane_vector);
  RotateRow<kChunks> next;
  load_rotate_row(p, walk.row, rows, chunk_of, next);
  for (; walk.warp_continues(rows, lane_vector); walk.row += walk.stride) {
    // Take this row out of the prefetch registers, then refill them with the next row.
    float x[kChunks][device::kChunk];
    device::convert_raw_chunks(next.raw, p.input_dtype, load_flip, x);
    const bool active = next.active;
    const int64_t token = next.token;
    const int32_t head = next.head;
    load_rotate_row(p, walk.row + walk.stride, rows, chunk_of, next);  // in flight during this row

    device::walsh_hadamard<HeadDim>(x, lane);

    if (!active) continue;
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int k = 0; k < device::kChunk; ++k) x[u][k] = __fmul_rn(x[u][k], kRhtScale);
    auto* dst = static_cast<uint8_t*>(p.output) +
                (token * p.output_stride0 + head * p.output_stride1) * p.output_element_bytes;
    device::store_chunks<kChunks>(dst, p.output_dtype, chunk_of, store_flip, x);
  }
}

// Blocks for `vectors` rows: enough for every row, at most what the device keeps resident (the
// per-SM occupancy is cached per kernel in *blocks_per_sm). Host calls only; no synchronisation.
template <typename Params>
cudaError_t grid_blocks(void (*kernel)(Params), std::atomic<int>& blocks_per_sm, int64_t vectors,
                        int64_t vectors_per_block, int* blocks) noexcept {
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  int per_sm = blocks_per_sm.load(std::memory_order_relaxed);
  if (per_sm == 0) {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreadsPerBlock, 0);
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
  static std::atomic<int> blocks_per_sm{0};
  int blocks = 0;
  const cudaError_t e = grid_blocks(encode_kernel<HeadDim, Bits>, blocks_per_sm, params.tokens * params.heads.divisor,
                                    int64_t{kWarpsPerBlock} * device::VectorLayout<HeadDim>::kVectorsPerWarp, &blocks);
  if (e != cudaSuccess) return e;
  encode_kernel<HeadDim, Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(params);
  return cudaGetLastError();
}

template <int HeadDim, int Bits>
cudaError_t launch_decode(const DecodeParams& params, cudaStream_t stream) noexcept {
  static std::atomic<int> blocks_per_sm{0};
  int blocks = 0;
  const cudaError_t e = grid_blocks(decode_kernel<HeadDim, Bits>, blocks_per_sm, params.dim0 * params.dim1.divisor,
                                    int64_t{kWarpsPerBlock} * device::VectorLayout<HeadDim>::kVectorsPerWarp, &blocks);
  if (e != cudaSuccess) return e;
  decode_kernel<HeadDim, Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(params);
  return cudaGetLastError();
}

template <int HeadDim>
cudaError_t launch_rotate(const RotateParams& params, cudaStream_t stream) noexcept {
  static std::atomic<int> blocks_per_sm{0};
  int blocks = 0;
  const cudaError_t e = grid_blocks(rotate_kernel<HeadDim>, blocks_per_sm, params.dim0 * params.dim1.divisor,
                                    int64_t{kWarpsPerBlock} * device::VectorLayout<HeadDim>::kVectorsPerWarp, &blocks);
  if (e != cudaSuccess) return e;
  rotate_kernel<HeadDim><<<blocks, kThreadsPerBlock, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace turboquant::cuda::detail
