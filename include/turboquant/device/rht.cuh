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
#pragma unroll
  for (int d = 1; d < Layout::kLanes; d <<= 1) {
    const float upper = (lane & d) ? -1.0f : 1.0f;
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u)
#pragma unroll
      for (int k = 0; k < kChunk; ++k)
        x[u][k] = __fmaf_rn(upper, x[u][k], __shfl_xor_sync(kFullWarpMask, x[u][k], d));
  }
  // h = 8 kLanes hu: across the chunks of a thread.
#pragma unroll
  for (int hu = 1; hu < Layout::kChunks; hu <<= 1)
#pragma unroll
    for (int u = 0; u < Layout::kChunks; ++u)
      if ((u & hu) == 0)
#pragma unroll
        for (int k = 0; k < kChunk; ++k) butterfly(x[u][k], x[u + hu][k]);
}

// Sum of v over the kLanes lanes of each vector; every lane gets the total.
template <int kLanes>
__device__ inline float vector_sum(float v) {
#pragma unroll
  for (int d = 1; d < kLanes; d <<= 1) v += __shfl_xor_sync(kFullWarpMask, v, d);
  return v;
}

}  // namespace turboquant::device
