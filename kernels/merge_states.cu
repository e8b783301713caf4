// The attention-state merge (turboquant/cuda/prefill.hpp, merge_attention_states): one warp per
// (row, head) vector. Every lane reads both lse entries before lane 0 writes the merged one, and
// each output element is written by the lane that read its inputs, so out / lse may alias the a or
// b side (in place).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "prefill_params.hpp"

namespace turboquant::cuda::detail {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMergeThreads = 256;
constexpr int kVectorsPerBlock = kMergeThreads / kWarpSize;
constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ float load_element(const void* base, int64_t i, DType t) {
  if (t == DType::kF32) return static_cast<const float*>(base)[i];
  const unsigned short bits = static_cast<const unsigned short*>(base)[i];
  if (t == DType::kF16) return __half2float(__ushort_as_half(bits));
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ void store_element(void* base, int64_t i, DType t, float v) {
  if (t == DType::kF32) {
    static_cast<float*>(base)[i] = v;
  } else if (t == DType::kF16) {
    static_cast<__half*>(base)[i] = __float2half_rn(v);
  } else {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  }
}

__global__ void __launch_bounds__(kMergeThreads) merge_states_kernel(const __grid_constant__ MergeStatesParams p) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t v = static_cast<int64_t>(blockIdx.x) * kVectorsPerBlock + threadIdx.x / kWarpSize;
  if (v >= p.rows * p.heads) return;  // warp-uniform
  const int64_t r = v / p.heads;
  const auto h = static_cast<int32_t>(v - r * p.heads);
  const float la = p.lse_a[v], lb = p.lse_b[v];
  const float m = fmaxf(la, lb);
  const bool empty = m == kNegInf;
  const float wa = empty ? 0.0f : expf(la - m), wb = empty ? 0.0f : expf(lb - m);
  const float sum = wa + wb;
  const float inverse = empty ? 0.0f : 1.0f / sum;
  const int64_t oa = r * p.a_stride0 + static_cast<int64_t>(h) * p.a_stride1;
  const int64_t ob = r * p.b_stride0 + static_cast<int64_t>(h) * p.b_stride1;
  const int64_t o = r * p.out_stride0 + static_cast<int64_t>(h) * p.out_stride1;
  for (int j = lane; j < p.head_dim; j += kWarpSize) {
    // A zero weight never touches its side (an empty side's output may be anything, NaN included).
    const float a = wa == 0.0f ? 0.0f : wa * load_element(p.a, oa + j, p.a_dtype);
    const float b = wb == 0.0f ? 0.0f : wb * load_element(p.b, ob + j, p.b_dtype);
    store_element(p.out, o + j, p.out_dtype, (a + b) * inverse);
  }
  __syncwarp();
  if (lane == 0 && p.lse != nullptr) p.lse[v] = empty ? kNegInf : m + logf(sum);
}

}  // namespace

cudaError_t launch_merge_states(const MergeStatesParams& params, cudaStream_t stream) noexcept {
  const int64_t vectors = params.rows * params.heads;
  if (vectors == 0) return cudaSuccess;
  const int64_t blocks = (vectors + kVectorsPerBlock - 1) / kVectorsPerBlock;
  merge_states_kernel<<<static_cast<unsigned>(blocks), kMergeThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace turboquant::cuda::detail
