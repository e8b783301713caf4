// Packed-QK scores kernel (turboquant/cuda/scores.hpp) and its dispatch table.
//
// Grid (ceil(max_context / kScoresChunkTokens), kv_heads, num_seqs), kScoresWarps warps per CTA.
// A CTA rotates the queries of its GQA group (RHT with the key signs, fp32) into shared memory,
// then each warp takes every kScoresWarps-th token of the CTA's chunk: lane l unpacks the
// HeadDim / 32 key codes [l * C, l * C + C) of the token (the row's bytes are read contiguously
// across the warp), looks the levels up in a shared-memory codebook, dots them with each rotated
// query of the group in fp32, the warp reduces, and lane 0 writes scale * softmax_scale * dot.
#include <cuda_runtime.h>

#include <cstdint>

#include "scores_params.hpp"
#include "turboquant/packing.hpp"
#include "turboquant/quantize.hpp"

namespace turboquant::cuda::detail {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = kScoresWarps * 32;

__device__ inline float load_q(const void* q, int64_t i, DType t) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(q)[i];
    case DType::kBF16: return bf16_bits_to_float(static_cast<const uint16_t*>(q)[i]);
    default: return half_bits_to_float(static_cast<const uint16_t*>(q)[i]);
  }
}

template <int HeadDim, int KeyBits>
__global__ void __launch_bounds__(kThreads) scores_kernel(const __grid_constant__ ScoresParams p) {
  constexpr int kPerLane = HeadDim / 32;  // coordinates per lane
  __shared__ float s_q[kMaxScoresGroupDevice][HeadDim];
  __shared__ float s_levels[1 << KeyBits];

  const int s = blockIdx.z;
  const int kv = blockIdx.y;
  const int64_t capacity = static_cast<int64_t>(p.max_pages_per_seq) * p.page_size;
  int64_t len = p.seq_lens[s];
  if (len < 0) len = 0;
  if (len > p.max_context) len = p.max_context;
  if (len > capacity) len = capacity;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kScoresChunkTokens;
  if (t0 >= len) return;  // uniform over the CTA
  const int64_t t_end = t0 + kScoresChunkTokens < len ? t0 + kScoresChunkTokens : len;

  const int tid = threadIdx.x;
  const int group = p.group;
  if (tid < (1 << KeyBits)) s_levels[tid] = p.key_levels[tid];
  // Signed queries of the group into shared memory.
  for (int i = tid; i < group * HeadDim; i += kThreads) {
    const int g = i / HeadDim, j = i % HeadDim;
    const int h = kv * group + g;
    const float v = load_q(p.q, static_cast<int64_t>(s) * p.q_stride0 + static_cast<int64_t>(h) * p.q_stride1 + j, p.q_dtype);
    s_q[g][j] = p.key_signs.negative(j) ? -v : v;
  }
  __syncthreads();
  // Walsh-Hadamard butterflies in shared memory, one stage at a time.
  for (int hstep = 1; hstep < HeadDim; hstep <<= 1) {
    for (int i = tid; i < group * (HeadDim / 2); i += kThreads) {
      const int g = i / (HeadDim / 2), k = i % (HeadDim / 2);
      const int a = (k / hstep) * 2 * hstep + k % hstep, b = a + hstep;
      const float x = s_q[g][a], y = s_q[g][b];
      s_q[g][a] = __fadd_rn(x, y);
      s_q[g][b] = __fsub_rn(x, y);
    }
    __syncthreads();
  }
  const float rscale = rsqrtf(static_cast<float>(HeadDim));
  for (int i = tid; i < group * HeadDim; i += kThreads) s_q[i / HeadDim][i % HeadDim] *= rscale;
  __syncthreads();

  const int warp = tid / 32, lane = tid % 32;
  const int32_t* table = p.block_table + static_cast<int64_t>(s) * p.max_pages_per_seq;
  for (int64_t t = t0 + warp; t < t_end; t += kScoresWarps) {
    const int32_t page = table[t / p.page_size];
    if (page < 0 || page >= p.num_pages) continue;  // uniform over the warp: scores untouched
    const int32_t row = static_cast<int32_t>(t % p.page_size);
    const uint8_t* head = p.pages + static_cast<int64_t>(page) * p.page_bytes + static_cast<int64_t>(kv) * p.head_bytes;
    const uint8_t* codes = head + p.key_codes_offset + static_cast<int64_t>(row) * p.key_row_bytes;
    float lv[kPerLane];
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) lv[c] = s_levels[unpack_index(codes, lane * kPerLane + c, KeyBits)];
    const float scale = read_scale(p.key_norm, head + p.key_scales_offset, row) * p.softmax_scale;
    for (int g = 0; g < group; ++g) {
      float acc = 0.0f;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc = fmaf(s_q[g][lane * kPerLane + c], lv[c], acc);
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) acc += __shfl_xor_sync(kFullMask, acc, d);
      if (lane == 0) {
        const int64_t h = static_cast<int64_t>(kv) * group + g;
        p.scores[(static_cast<int64_t>(s) * p.q_heads + h) * p.max_context + t] = acc * scale;
      }
    }
  }
}

template <int HeadDim, int KeyBits>
cudaError_t launch_scores(const ScoresParams& p, cudaStream_t stream) noexcept {
  const dim3 grid((p.max_context + kScoresChunkTokens - 1) / kScoresChunkTokens, p.kv_heads, p.num_seqs);
  scores_kernel<HeadDim, KeyBits><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

struct Entry {
  int32_t head_dim;
  int32_t key_bits;
  ScoresLauncher launch;
};

// The ONE table of scores kernels built.
#define TQ_SCORES_ENTRY(D, B) Entry{D, B, &launch_scores<D, B>}
constexpr Entry kScoresKernels[] = {
    TQ_SCORES_ENTRY(64, 2),  TQ_SCORES_ENTRY(64, 3),  TQ_SCORES_ENTRY(64, 4),
    TQ_SCORES_ENTRY(128, 2), TQ_SCORES_ENTRY(128, 3), TQ_SCORES_ENTRY(128, 4),
    TQ_SCORES_ENTRY(256, 2), TQ_SCORES_ENTRY(256, 3), TQ_SCORES_ENTRY(256, 4),
};
#undef TQ_SCORES_ENTRY

}  // namespace

ScoresLauncher find_scores_launcher(int32_t head_dim, int32_t key_bits) noexcept {
  for (const Entry& e : kScoresKernels)
    if (e.head_dim == head_dim && e.key_bits == key_bits) return e.launch;
  return nullptr;
}

}  // namespace turboquant::cuda::detail
