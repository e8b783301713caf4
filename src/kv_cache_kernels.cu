// Raw-row writes of the CUDA KV-cache backend (see kv_cache_kernels.hpp).
#include "kv_cache_kernels.hpp"
#include "turboquant/numeric.hpp"

namespace turboquant::cuda::detail {
namespace {

// One block per (row, head), one thread per element.
__global__ void write_raw_kernel(RawWriteParams p) {
  const int64_t rh = blockIdx.x;
  const int64_t t = rh / p.heads;
  const auto h = static_cast<int32_t>(rh % p.heads);
  const int32_t j = static_cast<int32_t>(threadIdx.x);
  if (j >= p.head_dim) return;
  const int64_t slot = p.slots[t];
  if (slot < 0 || slot >= p.num_pages * p.page_size) return;
  const int64_t src = t * p.stride0 + h * p.stride1 + j;
  float x = 0.0f;
  if (p.input_dtype == static_cast<int32_t>(DType::kF32))
    x = static_cast<const float*>(p.input)[src];
  else if (p.input_dtype == static_cast<int32_t>(DType::kF16))
    x = half_bits_to_float(static_cast<const uint16_t*>(p.input)[src]);
  else
    x = bf16_bits_to_float(static_cast<const uint16_t*>(p.input)[src]);
  uint8_t* row = p.pages + (slot / p.page_size) * p.page_bytes + h * p.head_bytes + p.codes_offset +
                 (slot % p.page_size) * p.row_bytes;
  reinterpret_cast<uint16_t*>(row)[j] =
      p.output_dtype == static_cast<int32_t>(DType::kF16) ? float_to_half_bits(x) : float_to_bf16_bits(x);
}

}  // namespace

cudaError_t launch_write_raw(const RawWriteParams& p, cudaStream_t stream) noexcept {
  if (p.rows <= 0 || p.heads <= 0) return cudaSuccess;
  const int64_t blocks = p.rows * p.heads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  write_raw_kernel<<<static_cast<unsigned>(blocks), static_cast<unsigned>(p.head_dim), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace turboquant::cuda::detail
