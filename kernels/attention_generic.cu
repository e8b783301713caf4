// The generic decode-attention split kernel: layers with a side stored uncompressed (K-only
// compression keeps fp16 / bf16 values; the class's plain layers keep both). Bits, raw dtype and
// norm storage are read at run time, so one instance per (HeadDim, QType) covers every mix; the
// math runs on CUDA cores (no tables, no mma): a correct, general path, not the fast one
// (attention_kernel.cuh is). Partials go to the same workspace as the main kernel's and the same
// merge kernel combines them (p.value_raw skips its inverse RHT).
//
// Grid (num_splits, q_heads, num_seqs), kGenericWarps warps. device::VectorLayout<HeadDim>: a token
// is held by kLanes = HeadDim / 32 consecutive lanes, 32 coordinates each (chunks l + kLanes u),
// so a warp scores kSlots = 32 / kLanes tokens at once; each lane group keeps its own online
// softmax (max, sum, 32 accumulators); at the end the groups of a warp meet by shuffles and the
// warps through shared memory, giving one partial per (sequence, query head, split).
#include "attention_kernel.cuh"

namespace turboquant::cuda::detail {
namespace attention_generic {

using attention_kernel::fast_exp2;
using attention_kernel::kLog2e;
using attention_kernel::kNegInf;
using attention_kernel::kQElementBytes;
using attention_kernel::allow_dependent_grids;
using attention_kernel::wait_for_prior_grids;
using device::kChunk;
using device::kFullWarpMask;
using device::kWarpSize;

inline constexpr int kGenericWarps = 4;
inline constexpr int kGenericThreads = kGenericWarps * kWarpSize;

// The 8 values of chunk `chunk` of one side's row: raw (16 bytes of f16 / bf16 at row + 16 chunk,
// 16-byte aligned: raw rows are head_dim * 2 bytes in 16-byte aligned planes) or codes (Bits bytes
// at row + bits * chunk, LSB-first) -> levels.
__device__ __forceinline__ void load_side_chunk(const uint8_t* row, int bits, DType raw, const float* levels,
                                                int chunk, float (&v)[kChunk]) {
  if (bits == 0) {
    const uint4 w = __ldg(reinterpret_cast<const uint4*>(row + chunk * kChunk * kQElementBytes));
    const uint32_t pair[device::kPairsPerChunk] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < device::kPairsPerChunk; ++i) {
      if (raw == DType::kBF16) {
        v[2 * i] = device::low_half_to_float<DType::kBF16>(pair[i]);
        v[2 * i + 1] = device::high_half_to_float<DType::kBF16>(pair[i]);
      } else {
        v[2 * i] = device::low_half_to_float<DType::kF16>(pair[i]);
        v[2 * i + 1] = device::high_half_to_float<DType::kF16>(pair[i]);
      }
    }
    return;
  }
  const uint8_t* at = row + bits * chunk;
  uint32_t word = 0;
  for (int i = 0; i < bits; ++i) word |= static_cast<uint32_t>(__ldg(at + i)) << (8 * i);
  const uint32_t mask = (1u << bits) - 1u;
#pragma unroll
  for (int k = 0; k < kChunk; ++k) v[k] = levels[(word >> (bits * k)) & mask];
}

__device__ __forceinline__ float load_scale(const uint8_t* p, NormStorage norm) {
  return norm == NormStorage::kF32 ? __ldg(reinterpret_cast<const float*>(p))
                                   : __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

template <int HeadDim, DType QType>
__global__ void __launch_bounds__(kGenericThreads) generic_split_kernel(const __grid_constant__ AttentionParams p) {
  using Layout = device::VectorLayout<HeadDim>;
  constexpr int kLanes = Layout::kLanes, kChunks = Layout::kChunks;
  constexpr int kSlots = kWarpSize / kLanes;  // tokens a warp scores at once
  __shared__ float levels[2][kMaxLevels];
  __shared__ float warp_acc[kGenericWarps][HeadDim];
  __shared__ float2 warp_max_sum[kGenericWarps];
  allow_dependent_grids();
  if (threadIdx.x < kMaxLevels) {
    levels[0][threadIdx.x] = p.key_levels[threadIdx.x];
    levels[1][threadIdx.x] = p.value_levels[threadIdx.x];
  }
  __syncthreads();
  wait_for_prior_grids();

  const int split = blockIdx.x, head = blockIdx.y, seq = blockIdx.z;
  const int kv = head / p.group;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int l = lane % kLanes, slot = lane / kLanes;
  const int64_t capacity = static_cast<int64_t>(p.max_pages_per_seq) * p.page_size;
  const int64_t raw_len = __ldg(p.seq_lens + seq);
  const int len = static_cast<int>(raw_len < 0 ? 0 : (raw_len > capacity ? capacity : raw_len));
  const int first = (p.sliding_window > 0 && len > p.sliding_window) ? len - p.sliding_window : 0;
  const int per_split = (len - first + p.num_splits - 1) / p.num_splits;
  const int begin = first + split * per_split;
  const int end = min(len, begin + per_split);
  const int64_t row = static_cast<int64_t>(seq) * p.q_heads + head;
  auto* partial_max_sum = reinterpret_cast<float2*>(p.partial_max_sum);
  if (begin >= end) {
    if (threadIdx.x == 0) partial_max_sum[row * p.num_splits + split] = make_float2(kNegInf, 0.0f);
    return;
  }

  // The query in the keys' domain: R_k q for coded keys (the CPU's transform), q for raw keys.
  float x[kChunks][kChunk];
  {
    const SignBits none{};
    const auto* q_row = static_cast<const uint8_t*>(p.q) +
                        (static_cast<int64_t>(seq) * p.q_stride0 + static_cast<int64_t>(head) * p.q_stride1) *
                            kQElementBytes;
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      const int c = Layout::chunk_index(l, u);
      attention_kernel::load_row_chunk<QType>(q_row + c * kChunk * kQElementBytes, p.key_bits > 0 ? p.key_signs : none,
                                              c, x[u]);
    }
    if (p.key_bits > 0) {  // uniform
      device::walsh_hadamard<HeadDim>(x, lane);
      const float s = rht_scale<float>(HeadDim);
#pragma unroll
      for (int u = 0; u < kChunks; ++u)
#pragma unroll
        for (int k = 0; k < kChunk; ++k) x[u][k] *= s;
    }
  }
  const int key_scale_bytes = p.key_norm == NormStorage::kF32 ? 4 : 2;
  const int value_scale_bytes = p.value_norm == NormStorage::kF32 ? 4 : 2;
  const int key_row_bytes = p.key_bits == 0 ? HeadDim * kQElementBytes : HeadDim * p.key_bits / 8;
  const int value_row_bytes = p.value_bits == 0 ? HeadDim * kQElementBytes : HeadDim * p.value_bits / 8;

  float m = kNegInf, sum = 0.0f;
  float acc[kChunks][kChunk];
#pragma unroll
  for (int u = 0; u < kChunks; ++u)
#pragma unroll
    for (int k = 0; k < kChunk; ++k) acc[u][k] = 0.0f;

  for (int t0 = begin + warp * kSlots; t0 < end; t0 += kGenericWarps * kSlots) {  // warp-uniform
    const int t = t0 + slot;
    int page = -1, r = 0;
    if (t < end) {
      page = __ldg(p.block_table + static_cast<int64_t>(seq) * p.max_pages_per_seq + t / p.page_size);
      r = t % p.page_size;
      if (page < 0 || page >= p.num_pages) page = -1;
    }
    const uint8_t* base = page >= 0 ? p.pages + static_cast<int64_t>(page) * p.page_bytes + kv * p.head_bytes : nullptr;
    float dot = 0.0f;
    if (base != nullptr) {
      const uint8_t* key_row = base + p.key_codes_offset + static_cast<int64_t>(r) * key_row_bytes;
#pragma unroll
      for (int u = 0; u < kChunks; ++u) {
        float kc[kChunk];
        load_side_chunk(key_row, p.key_bits, p.raw_dtype, levels[0], Layout::chunk_index(l, u), kc);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) dot = fmaf(x[u][k], kc[k], dot);
      }
      if (p.key_bits > 0) dot *= load_scale(base + p.key_scales_offset + static_cast<int64_t>(r) * key_scale_bytes, p.key_norm);
    }
    dot = device::vector_sum<kLanes>(dot);  // every lane takes part
    float z = dot * p.softmax_scale;
    if (p.logit_softcap > 0.0f) z = p.logit_softcap * tanhf(z / p.logit_softcap);
    z = base != nullptr ? z * kLog2e : kNegInf;
    const float m_new = fmaxf(m, z);
    if (m_new != kNegInf) {  // the same for the kLanes lanes of a token
      const float alpha = fast_exp2(m - m_new);  // 0 when m = -inf
      const float prob = fast_exp2(z - m_new);   // 0 for a masked token
      sum = sum * alpha + prob;
      float vs = 0.0f;
      const uint8_t* value_row = nullptr;
      if (base != nullptr) {
        value_row = base + p.value_codes_offset + static_cast<int64_t>(r) * value_row_bytes;
        vs = prob * (p.value_bits > 0
                         ? load_scale(base + p.value_scales_offset + static_cast<int64_t>(r) * value_scale_bytes,
                                      p.value_norm)
                         : 1.0f);
      }
#pragma unroll
      for (int u = 0; u < kChunks; ++u) {
        float vc[kChunk] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (value_row != nullptr)
          load_side_chunk(value_row, p.value_bits, p.raw_dtype, levels[1], Layout::chunk_index(l, u), vc);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) acc[u][k] = fmaf(vs, vc[k], acc[u][k] * alpha);
      }
      m = m_new;
    }
  }

  // The lane groups of a warp meet (shuffles over the lane bits above kLanes).
#pragma unroll
  for (int d = kLanes; d < kWarpSize; d <<= 1) {
    const float m_o = __shfl_xor_sync(kFullWarpMask, m, d);
    const float s_o = __shfl_xor_sync(kFullWarpMask, sum, d);
    const float m_n = fmaxf(m, m_o);
    const float a = m_n == kNegInf ? 0.0f : fast_exp2(m - m_n);
    const float b = m_n == kNegInf ? 0.0f : fast_exp2(m_o - m_n);
    sum = sum * a + s_o * b;
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const float o = __shfl_xor_sync(kFullWarpMask, acc[u][k], d);
        acc[u][k] = acc[u][k] * a + o * b;
      }
    m = m_n;
  }
  if (slot == 0) {
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int k = 0; k < kChunk; ++k) warp_acc[warp][Layout::chunk_index(l, u) * kChunk + k] = acc[u][k];
    if (l == 0) warp_max_sum[warp] = make_float2(m, sum);
  }
  __syncthreads();
  // The warps meet: one partial (rotated domain for coded values) per (sequence, head, split).
  float mx = kNegInf;
#pragma unroll
  for (int w = 0; w < kGenericWarps; ++w) mx = fmaxf(mx, warp_max_sum[w].x);
  const int64_t partial = row * p.num_splits + split;
  for (int j = threadIdx.x; j < HeadDim; j += kGenericThreads) {
    float o = 0.0f, s = 0.0f;
#pragma unroll
    for (int w = 0; w < kGenericWarps; ++w) {
      const float2 ms = warp_max_sum[w];
      const float weight = ms.x == kNegInf ? 0.0f : fast_exp2(ms.x - mx);
      o += weight * warp_acc[w][j];
      s += weight * ms.y;
    }
    p.partial_out[partial * HeadDim + j] = o;
    if (j == 0) partial_max_sum[partial] = mx == kNegInf ? make_float2(kNegInf, 0.0f) : make_float2(mx, s);
  }
}

}  // namespace attention_generic

template <int HeadDim, DType QType>
cudaError_t launch_generic_attention(const AttentionParams& params, cudaStream_t stream) noexcept {
  namespace ag = attention_generic;
  const dim3 grid(static_cast<unsigned>(params.num_splits), static_cast<unsigned>(params.q_heads),
                  static_cast<unsigned>(params.num_seqs));
  const cudaError_t e = attention_kernel::launch_programmatic(&ag::generic_split_kernel<HeadDim, QType>, grid,
                                                              dim3(ag::kGenericThreads), 0, params, stream);
  if (e != cudaSuccess) return e;
  return launch_decode_attention_merge<HeadDim, QType>(params, stream);
}

#define TQ_INSTANTIATE_GENERIC_ATTENTION(HeadDim)                                                               \
  template cudaError_t launch_generic_attention<HeadDim, DType::kF16>(const AttentionParams&, cudaStream_t) noexcept; \
  template cudaError_t launch_generic_attention<HeadDim, DType::kBF16>(const AttentionParams&, cudaStream_t) noexcept;
TQ_INSTANTIATE_GENERIC_ATTENTION(64)
TQ_INSTANTIATE_GENERIC_ATTENTION(128)
TQ_INSTANTIATE_GENERIC_ATTENTION(256)
#undef TQ_INSTANTIATE_GENERIC_ATTENTION

}  // namespace turboquant::cuda::detail
