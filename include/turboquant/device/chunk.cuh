// Loading and storing one chunk (8 consecutive coordinates) of a vector of f32 / f16 / bf16 as
// floats, with 16-byte vector accesses, and the RHT sign flips folded into the bit patterns
// (a sign flip is exact, so flipping before a conversion equals flipping after it).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "turboquant/device/common.cuh"
#include "turboquant/numeric.hpp"
#include "turboquant/signs.hpp"

namespace turboquant::device {

// The RHT signs of one chunk as XOR masks on packed pairs: pair[i] has bit 15 set when coordinate
// 2i of the chunk is negated and bit 31 when coordinate 2i + 1 is (the sign bits of a packed
// fp16 / bf16 pair; for f32 the masks are moved to bit 31 of each float).
struct ChunkSigns {
  uint32_t pair[kPairsPerChunk];
};

inline constexpr int kChunksPerSignWord = 64 / kChunk;  // SignBits words are 64 bits
inline constexpr uint32_t kChunkSignMask = (1u << kChunk) - 1u;

__device__ inline ChunkSigns chunk_signs(const SignBits& signs, int chunk) {
  const auto bits = static_cast<uint32_t>(signs.words[chunk / kChunksPerSignWord] >>
                                          ((chunk % kChunksPerSignWord) * kChunk)) & kChunkSignMask;
  ChunkSigns s;
#pragma unroll
  for (int i = 0; i < kPairsPerChunk; ++i) {
    const uint32_t low = (bits >> (2 * i)) & 1u, high = (bits >> (2 * i + 1)) & 1u;
    s.pair[i] = (low << (kHalfBits - 1)) | (high << (2 * kHalfBits - 1));
  }
  return s;
}
__device__ inline ChunkSigns no_signs() {
  ChunkSigns s;
#pragma unroll
  for (int i = 0; i < kPairsPerChunk; ++i) s.pair[i] = 0u;
  return s;
}

// 16 bytes from global memory; kReadOnly uses the read-only (non-coherent) path, valid when
// nothing writes that memory during the kernel.
template <bool kReadOnly>
__device__ inline uint4 load16(const void* p) {
  if constexpr (kReadOnly) {
    return __ldg(static_cast<const uint4*>(p));
  } else {
    return *static_cast<const uint4*>(p);
  }
}
__device__ inline void store16(void* p, uint4 v) { *static_cast<uint4*>(p) = v; }

template <DType T>
__device__ inline float low_half_to_float(uint32_t pair) {
  if constexpr (T == DType::kF16) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(pair & 0xffffu)));
  } else {
    return __uint_as_float(pair << kHalfBits);
  }
}
template <DType T>
__device__ inline float high_half_to_float(uint32_t pair) {
  if constexpr (T == DType::kF16) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(pair >> kHalfBits)));
  } else {
    return __uint_as_float(pair & 0xffff0000u);
  }
}

template <DType T>
inline constexpr int kElementBytes = T == DType::kF32 ? sizeof(float) : sizeof(uint16_t);

// The raw 16-byte words of a thread's kChunks chunks of a vector, loaded ahead of their use (a
// row is prefetched while the previous one is computed): f32 takes two words per chunk, f16 / bf16
// one (words [0, kChunks)).
template <int kChunks>
struct RawChunks {
  static constexpr int kWordsPerF32Chunk = kChunk * sizeof(float) / kVectorBytes;
  uint4 word[kWordsPerF32Chunk * kChunks];
};

// Loads chunk chunk_of(u) (coordinates [8 chunk_of(u), + 8)) of the vector at `row` for every u.
template <int kChunks, bool kReadOnly, typename ChunkOf>
__device__ inline void load_raw_chunks(const void* row, DType t, ChunkOf chunk_of, RawChunks<kChunks>& raw) {
  const auto* bytes = static_cast<const uint8_t*>(row);
  if (t == DType::kF32) {
    constexpr int kBytes = kChunk * kElementBytes<DType::kF32>;
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      raw.word[2 * u] = load16<kReadOnly>(bytes + chunk_of(u) * kBytes);
      raw.word[2 * u + 1] = load16<kReadOnly>(bytes + chunk_of(u) * kBytes + kVectorBytes);
    }
  } else {
    constexpr int kBytes = kChunk * kElementBytes<DType::kF16>;
#pragma unroll
    for (int u = 0; u < kChunks; ++u) raw.word[u] = load16<kReadOnly>(bytes + chunk_of(u) * kBytes);
  }
}

template <int kChunks>
__device__ inline void zero_raw_chunks(RawChunks<kChunks>& raw) {
#pragma unroll
  for (auto& w : raw.word) w = make_uint4(0u, 0u, 0u, 0u);
}

// x[u][0..8) = the values of raw chunk u as float, signs flipped per flip[u].
template <int kChunks>
__device__ inline void convert_raw_chunks(const RawChunks<kChunks>& raw, DType t, const ChunkSigns (&flip)[kChunks],
                                          float (&x)[kChunks][kChunk]) {
  if (t == DType::kF32) {
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      const uint4 a = raw.word[2 * u], b = raw.word[2 * u + 1];
      const uint32_t w[kChunk] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < kPairsPerChunk; ++i) {
        x[u][2 * i] = __uint_as_float(w[2 * i] ^ (flip[u].pair[i] << kHalfBits));
        x[u][2 * i + 1] = __uint_as_float(w[2 * i + 1] ^ (flip[u].pair[i] & kFloatSignBit));
      }
    }
  } else if (t == DType::kF16) {
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      const uint32_t w[kPairsPerChunk] = {raw.word[u].x, raw.word[u].y, raw.word[u].z, raw.word[u].w};
#pragma unroll
      for (int i = 0; i < kPairsPerChunk; ++i) {
        const uint32_t pair = w[i] ^ flip[u].pair[i];
        x[u][2 * i] = low_half_to_float<DType::kF16>(pair);
        x[u][2 * i + 1] = high_half_to_float<DType::kF16>(pair);
      }
    }
  } else {
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      const uint32_t w[kPairsPerChunk] = {raw.word[u].x, raw.word[u].y, raw.word[u].z, raw.word[u].w};
#pragma unroll
      for (int i = 0; i < kPairsPerChunk; ++i) {
        const uint32_t pair = w[i] ^ flip[u].pair[i];
        x[u][2 * i] = low_half_to_float<DType::kBF16>(pair);
        x[u][2 * i + 1] = high_half_to_float<DType::kBF16>(pair);
      }
    }
  }
}

// Packs two floats into an fp16 / bf16 pair, round to nearest even (as numeric.hpp).
template <DType T>
__device__ inline uint32_t pack_pair(float low, float high) {
  if constexpr (T == DType::kF16) {
    const __half2 h = __floats2half2_rn(low, high);
    return static_cast<uint32_t>(__half_as_ushort(__low2half(h))) |
           (static_cast<uint32_t>(__half_as_ushort(__high2half(h))) << kHalfBits);
  } else {
    const __nv_bfloat162 b = __floats2bfloat162_rn(low, high);
    return static_cast<uint32_t>(__bfloat16_as_ushort(__low2bfloat16(b))) |
           (static_cast<uint32_t>(__bfloat16_as_ushort(__high2bfloat16(b))) << kHalfBits);
  }
}

// x[0..8) += weight * the 8 floats at `at` (16-byte aligned): one chunk of an fp32 partial row
// (the attention merge kernels).
__device__ inline void add_scaled_chunk(float (&x)[kChunk], const float* at, float weight) {
  const float4 a = *reinterpret_cast<const float4*>(at);
  const float4 b = *reinterpret_cast<const float4*>(at + kChunk / 2);
  x[0] += weight * a.x;
  x[1] += weight * a.y;
  x[2] += weight * a.z;
  x[3] += weight * a.w;
  x[4] += weight * b.x;
  x[5] += weight * b.y;
  x[6] += weight * b.z;
  x[7] += weight * b.w;
}

// Stores x[0..8) at `dst` (16-byte aligned) as dtype T, with signs flipped per `flip` (after the
// rounding: rounding to nearest even is symmetric, so this equals flipping before it).
template <DType T>
__device__ inline void store_chunk(uint8_t* dst, const ChunkSigns& flip, const float (&x)[kChunk]) {
  if constexpr (T == DType::kF32) {
    uint32_t w[kChunk];
#pragma unroll
    for (int i = 0; i < kPairsPerChunk; ++i) {
      w[2 * i] = __float_as_uint(x[2 * i]) ^ (flip.pair[i] << kHalfBits);
      w[2 * i + 1] = __float_as_uint(x[2 * i + 1]) ^ (flip.pair[i] & kFloatSignBit);
    }
    store16(dst, make_uint4(w[0], w[1], w[2], w[3]));
    store16(dst + kVectorBytes, make_uint4(w[4], w[5], w[6], w[7]));
  } else {
    uint32_t w[kPairsPerChunk];
#pragma unroll
    for (int i = 0; i < kPairsPerChunk; ++i) w[i] = pack_pair<T>(x[2 * i], x[2 * i + 1]) ^ flip.pair[i];
    store16(dst, make_uint4(w[0], w[1], w[2], w[3]));
  }
}

// Stores the kChunks chunks of one thread into the vector at `row` (see load_chunks).
template <int kChunks, typename ChunkOf>
__device__ inline void store_chunks(void* row, DType t, ChunkOf chunk_of, const ChunkSigns (&flip)[kChunks],
                                    const float (&x)[kChunks][kChunk]) {
  auto* bytes = static_cast<uint8_t*>(row);
  if (t == DType::kF32) {
    constexpr int kBytes = kChunk * kElementBytes<DType::kF32>;
#pragma unroll
    for (int u = 0; u < kChunks; ++u) store_chunk<DType::kF32>(bytes + chunk_of(u) * kBytes, flip[u], x[u]);
  } else if (t == DType::kF16) {
    constexpr int kBytes = kChunk * kElementBytes<DType::kF16>;
#pragma unroll
    for (int u = 0; u < kChunks; ++u) store_chunk<DType::kF16>(bytes + chunk_of(u) * kBytes, flip[u], x[u]);
  } else {
    constexpr int kBytes = kChunk * kElementBytes<DType::kBF16>;
#pragma unroll
    for (int u = 0; u < kChunks; ++u) store_chunk<DType::kBF16>(bytes + chunk_of(u) * kBytes, flip[u], x[u]);
  }
}

}  // namespace turboquant::device
