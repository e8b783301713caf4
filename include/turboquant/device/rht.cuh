// The Walsh-Hadamard transform of vectors spread over a few lanes of a warp, in registers and warp
// shuffles (never global or shared scratch), in the stage order of turboquant/rht.hpp so that the
// kernels round exactly as the CPU path does.
//
// Layout (VectorLayout<HeadDim>): a vector of HeadDim coordinates is held by kLanes consecutive
// lanes, kCoordsPerThread coordinates each, as kChunks chunks of 8:
//   chunk u of lane l (l = lane % kLanes) holds coordinates [8 c, 8 c + 8), c = l + kLanes * u.
// So coordinate i = 8 (l + kLanes u) + k: bits 0-2 of i are k (inside a chunk), the next
// log2(kLanes) bits are the lane, the top bits are u. A warp holds kVectorsPerWarp vectors.
// Stage h pairs i with i + h; the stages h = 1, 2, 4 run inside each chunk, h = 8 .. 4 kLanes
// across lanes (one shuffle per value and stage), h = 8 kLanes .. HeadDim / 2 across the chunks of
// a thread. Each load / store instruction of a warp covers, per vector, kLanes consecutive chunks.
#pragma once

#include <cstdint>

#include "turboquant/device/common.cuh"
#include "turboquant/device/mma.cuh"
#include "turboquant/signs.hpp"

namespace turboquant::device {

template <int HeadDim>
struct VectorLayout {
  // 32 coordinates per thread: few enough registers for a high occupancy, enough that two to four
  // of the log2(HeadDim) butterfly stages need shuffles (kernels/NOTES.md).
  static constexpr int kCoordsPerThread = 32;
  static constexpr int kChunks = kCoordsPerThread / kChunk;
  static constexpr int kLanes = HeadDim / kCoordsPerThread;
  static constexpr int kVectorsPerWarp = kWarpSize / kLanes;
  static_assert(HeadDim % kCoordsPerThread == 0 && kLanes <= kWarpSize && (kLanes & (kLanes - 1)) == 0,
                "HeadDim must be a power of two in [32, 1024]");

  // Index of chunk u of lane l inside the vector.
  __device__ static constexpr int chunk_index(int lane_in_vector, int u) { return lane_in_vector + kLanes * u; }
};

// One butterfly: (a, b) -> (a + b, a - b), each rounded once (no contraction into an FMA).
__device__ inline void butterfly(float& a, float& b) {
  const float sum = __fadd_rn(a, b), difference = __fsub_rn(a, b);
  a = sum;
  b = difference;
}

// The h = 8 d stages for lane distances d in [kFirst, kLanes) (see walsh_hadamard).
template <int HeadDim, int kFirst>
__device__ inline void lane_stages(float (&x)[VectorLayout<HeadDim>::kChunks][kChunk], int lane) {
  using Layout = VectorLayout<HeadDim>;
#pragma unroll
  for (int d = kFirst; d < Layout::kLanes; d <<= 1) {
    const float upper = (lane & d) ? -1.0f : 1.0f;
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
      for (int k = 0; k < kChunk; ++k)
        x[u][k] = __fmaf_rn(upper, x[u][k], __shfl_xor_sync(kFullWarpMask, x[u][k], d));
  }
}

// The h = 8 kLanes hu stages across the chunks of a thread (see walsh_hadamard).
template <int HeadDim>
__device__ inline void chunk_stages(float (&x)[VectorLayout<HeadDim>::kChunks][kChunk]) {
  using Layout = VectorLayout<HeadDim>;
#pragma unroll
  for (int hu = 1; hu < Layout::kChunks; hu <<= 1)
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u)
      if ((u & hu) == 0)
#pragma unroll
        for (int k = 0; k < kChunk; ++k) butterfly(x[u][k], x[u + hu][k]);
}

// Unnormalised Walsh-Hadamard transform of the vectors held as described above. `lane` is the
// lane index in the warp; every lane of the warp must call it (the shuffles use the full mask).
template <int HeadDim>
__device__ inline void walsh_hadamard(float (&x)[VectorLayout<HeadDim>::kChunks][kChunk], int lane) {
  using Layout = VectorLayout<HeadDim>;
  // h = 1, 2, 4: inside each chunk.
#pragma unroll
  for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
    for (int h = 1; h < kChunk; h <<= 1)
#pragma unroll
      for (int i = 0; i < kChunk; i += 2 * h)
#pragma unroll
        for (int j = i; j < i + h; ++j) butterfly(x[u][j], x[u][j + h]);
  // h = 8 d for lane distance d: the lower lane keeps a + b, the upper one a - b. The product with
  // +-1 is exact, so the FMA rounds once, exactly as the CPU's add or subtract.
  lane_stages<HeadDim, 1>(x, lane);
  // h = 8 kLanes hu: across the chunks of a thread.
  chunk_stages<HeadDim>(x);
}

// Tensor-core transform of fp16 / bf16 vectors (HeadDim >= 128, so that the 4 lanes of a quad
// hold coordinate bits 3-4 of one vector). Four of the log2(HeadDim) stages -- coordinate bits 0,
// 1, 3, 4 -- are one product with H_16 per chunk and n-tile: A row `group` of chunk u is the
// vector's coordinates with bit 2 = 0, row group + 8 those with bit 2 = 1, column j = (bit 0 of
// the coordinate) | (bits 3-4) << 1 | (bit 1) << 3, so the A fragment of a lane is its raw chunk
// word as loaded (x, z, y, w) and the C fragments land in the same layout. B = H_16 is symmetric
// in its index bits, so the same column order serves both sides. Bit 2 and the chunk bits are
// butterflies in registers, lane bits above 1 (HeadDim 256) shuffles. The products are exact (x
// times +-1) and the tensor core sums 16 of them in fp32, so the result is the CPU's up to a few
// ulps (not bit-exact: encode codes may differ at boundary ties, which the tests count).
// `raw` holds the sign-flipped 16-bit pairs of the lane's chunks; `b` comes from hadamard16_b.
template <int HeadDim, bool kBf16>
__device__ inline void walsh_hadamard_mma(const uint4 (&raw)[VectorLayout<HeadDim>::kChunks],
                                          const uint32_t (&b)[2][2],
                                          float (&x)[VectorLayout<HeadDim>::kChunks][kChunk], int lane) {
  using Layout = VectorLayout<HeadDim>;
  static_assert(Layout::kLanes >= 4, "the quad of an mma row must hold one vector");
#pragma unroll
  for (int u = 0; u < Layout::kChunks; ++u) {
#pragma unroll
    for (int n = 0; n < 2; ++n) {  // n-tile n: output coordinate bit 1 = n
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if constexpr (kBf16) {
        mma_bf16_m16n8k16(c, raw[u].x, raw[u].z, raw[u].y, raw[u].w, b[n][0], b[n][1]);
      } else {
        mma_f16_m16n8k16(c, raw[u].x, raw[u].z, raw[u].y, raw[u].w, b[n][0], b[n][1]);
      }
      x[u][2 * n] = c[0];
      x[u][2 * n + 1] = c[1];
      x[u][2 * n + 4] = c[2];
      x[u][2 * n + 5] = c[3];
    }
#pragma unroll
    for (int k = 0; k < kChunk / 2; ++k) butterfly(x[u][k], x[u][k + kChunk / 2]);
  }
  lane_stages<HeadDim, 4>(x, lane);
  chunk_stages<HeadDim>(x);
}

// The B fragments (n-tiles 0 and 1) of H_16 in fp16 (kBf16: bf16) for walsh_hadamard_mma:
// B[j][c] = (-1)^popcount(j & c).
template <bool kBf16>
__device__ inline void hadamard16_b(int lane, uint32_t (&b)[2][2]) {
  constexpr uint32_t kOne = kBf16 ? 0x3f80u : 0x3c00u;
  const int group = lane / 4, quad = lane % 4;
  const auto entry = [](int j, int c) { return (__popc(j & c) & 1) ? (kOne | kHalfSignBit) : kOne; };
#pragma unroll
  for (int n = 0; n < 2; ++n) {
    const int c = 8 * n + group;
    b[n][0] = entry(2 * quad, c) | (entry(2 * quad + 1, c) << kHalfBits);
    b[n][1] = entry(2 * quad + 8, c) | (entry(2 * quad + 9, c) << kHalfBits);
  }
}

// One vector per warp, for the few vectors of a CTA whose transform sits on a latency path (the
// queries of a decode step): lane l holds coordinates [kCoords l, kCoords l + kCoords), l < kLanes
// (at HeadDim 64 lanes 16-31 repeat lanes 0-15). log2(kCoords) stages run inside a lane and
// log2(kLanes) by shuffles: ~25 instructions per lane at HeadDim 128 instead of VectorLayout's
// ~300 for eight vectors on one warp. The stage order is not the CPU's (not bit-exact with it).
template <int HeadDim>
struct WarpVector {
  static constexpr int kCoords = HeadDim / kWarpSize >= 4 ? HeadDim / kWarpSize : 4;
  static constexpr int kLanes = HeadDim / kCoords;
  static_assert(HeadDim % kCoords == 0 && kLanes <= kWarpSize && (kLanes & (kLanes - 1)) == 0,
                "HeadDim must be a power of two in [64, 1024]");
  static constexpr int kSignWordBits = 32;  // SignBits::word32
  static_assert(kSignWordBits % kCoords == 0, "a lane's signs lie in one 32-bit sign word");

  // The first coordinate lane `lane` holds.
  __device__ static int first(int lane) { return (lane % kLanes) * kCoords; }
  // Bit k: the sign of coordinate first(lane) + k.
  __device__ static uint32_t lane_signs(const SignBits& signs, int lane) {
    const int c0 = first(lane);
    return signs.word32(c0 / kSignWordBits) >> (c0 % kSignWordBits);
  }
};

// Unnormalised Walsh-Hadamard transform of the vector held as WarpVector describes; every lane of
// the warp must call it.
template <int HeadDim>
__device__ inline void warp_walsh_hadamard(float (&x)[WarpVector<HeadDim>::kCoords], int lane) {
  using V = WarpVector<HeadDim>;
#pragma unroll
  for (int h = 1; h < V::kCoords; h <<= 1)
#pragma unroll
    for (int i = 0; i < V::kCoords; i += 2 * h)
#pragma unroll
      for (int j = i; j < i + h; ++j) butterfly(x[j], x[j + h]);
#pragma unroll
  for (int d = 1; d < V::kLanes; d <<= 1) {
    const float upper = (lane & d) ? -1.0f : 1.0f;
#pragma unroll
    for (int k = 0; k < V::kCoords; ++k) x[k] = __fmaf_rn(upper, x[k], __shfl_xor_sync(kFullWarpMask, x[k], d));
  }
}

// Sum of v over the kLanes lanes of each vector; every lane gets the total.
template <int kLanes>
__device__ inline float vector_sum(float v) {
#pragma unroll
  for (int d = 1; d < kLanes; d <<= 1) v += __shfl_xor_sync(kFullWarpMask, v, d);
  return v;
}

}  // namespace turboquant::device
