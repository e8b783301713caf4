// The one kernel of the CUDA KV-cache backend (src/kv_cache.cpp) that is not a codec op: writing
// raw (uncompressed, fp16 | bf16) rows into their slots of a page pool side (private).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace turboquant::cuda::detail {

struct RawWriteParams {
  const void* input = nullptr;  // [rows, heads, head_dim], element strides stride0 / stride1
  int32_t input_dtype = 0;      // DType: f32 | f16 | bf16
  int64_t stride0 = 0;
  int64_t stride1 = 0;
  int64_t rows = 0;
  int32_t heads = 0;
  int32_t head_dim = 0;
  const int64_t* slots = nullptr;  // [rows]; a slot < 0 or >= num_pages * page_size is skipped
  uint8_t* pages = nullptr;        // the layer's pool
  int64_t num_pages = 0;
  int32_t page_size = 0;
  int64_t page_bytes = 0;
  int64_t head_bytes = 0;    // layout: bytes of one head's block in a page
  int64_t codes_offset = 0;  // layout: offset of the side's codes plane in a head's block
  int64_t row_bytes = 0;     // layout: bytes of one row of that plane (head_dim * 2)
  int32_t output_dtype = 0;  // DType: f16 | bf16 (config.raw_dtype)
};

// Enqueues the copy (rounding to the output dtype to nearest even, as the CPU backend does).
[[nodiscard]] cudaError_t launch_write_raw(const RawWriteParams& p, cudaStream_t stream) noexcept;

}  // namespace turboquant::cuda::detail
