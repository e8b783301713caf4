// Kernel parameters of the chunked-prefill attention and of the state merge, and the launchers the
// dispatch tables point at (private to turboquant::cuda). Plain C++: src/prefill.cpp (g++) fills
// the structs, the kernels (nvcc) read them as one `const __grid_constant__` argument. Pointers are
// device memory; strides count elements.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboquant/codebook.hpp"
#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/signs.hpp"

namespace turboquant::cuda::detail {

// Resident prefill CTAs per SM the kernels are built for (__launch_bounds__ minimum) and the
// split heuristic plans with.
[[nodiscard]] constexpr int prefill_ctas_per_sm(int head_dim) noexcept { return head_dim <= 128 ? 2 : 1; }

struct PrefillParams {
  // Queries [total_tokens, q_heads, head_dim], dtype = the instance's QType, not rotated.
  const void* q = nullptr;
  int64_t q_stride0 = 0;
  int64_t q_stride1 = 0;
  const int32_t* query_start = nullptr;  // [num_seqs + 1]
  int32_t max_query_len = 0;
  int64_t total_tokens = 0;

  // kFresh: the chunk's own K/V [total_tokens, kv_heads, head_dim], QType (null otherwise).
  const void* chunk_keys = nullptr;
  int64_t chunk_keys_stride0 = 0;
  int64_t chunk_keys_stride1 = 0;
  const void* chunk_values = nullptr;
  int64_t chunk_values_stride0 = 0;
  int64_t chunk_values_stride1 = 0;
  bool fresh = false;                  // order == kFresh: seq_lens are prefix lengths

  // The page pool (turboquant/layout.hpp), as AttentionParams.
  const uint8_t* pages = nullptr;
  int64_t num_pages = 0;
  int64_t page_bytes = 0;
  int64_t head_bytes = 0;
  int64_t key_codes_offset = 0;
  int64_t key_scales_offset = 0;
  int64_t value_codes_offset = 0;
  int64_t value_scales_offset = 0;
  int32_t page_size = 0;
  int32_t page_size_log2 = -1;         // exact_log2(page_size): a shift, not a division, when >= 0
  NormStorage key_norm = NormStorage::kF16;
  NormStorage value_norm = NormStorage::kF16;
  const int32_t* block_table = nullptr;  // [num_seqs, max_pages_per_seq]
  const int32_t* seq_lens = nullptr;     // [num_seqs]
  int32_t max_pages_per_seq = 0;

  int32_t num_seqs = 0;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t group = 0;                   // q_heads / kv_heads
  int32_t row_tiles = 0;               // ceil(max_query_len * group / kPrefillRowsPerCta): grid x
  int32_t num_splits = 0;              // KV splits of the prefix
  int32_t parts = 0;                   // num_splits (+ 1 with fresh: the chunk part, index num_splits)

  float softmax_scale = 0.0f;          // resolved (never 0)
  float logit_softcap = 0.0f;          // 0 = off
  int32_t sliding_window = 0;          // 0 = off

  // Partials, one per (query row v = token * q_heads + head, part):
  float* partial_out = nullptr;        // [total_tokens * q_heads, parts, head_dim] fp32, unnormalised
                                       // (prefix parts: the values' rotated domain; chunk part: plain)
  float* partial_max_sum = nullptr;    // [total_tokens * q_heads, parts, 2] fp32 (max in log2 units, sum)

  void* out = nullptr;                 // [total_tokens, q_heads, head_dim], QType
  int64_t out_stride0 = 0;
  int64_t out_stride1 = 0;
  float* lse = nullptr;                // optional [total_tokens, q_heads]

  float key_levels[kMaxLevels] = {};
  float value_levels[kMaxLevels] = {};
  SignBits key_signs{};
  SignBits value_signs{};
};

// One instance per entry of kernels/prefill_instances.inc and QType in {f16, bf16}: enqueues the
// attention kernel and the combine kernel, returns the first launch error.
template <int HeadDim, int KeyBits, int ValueBits, DType QType>
cudaError_t launch_prefill_attention(const PrefillParams& params, cudaStream_t stream) noexcept;

struct MergeStatesParams {
  const void* a = nullptr;
  DType a_dtype = DType::kF32;
  int64_t a_stride0 = 0, a_stride1 = 0;
  const float* lse_a = nullptr;
  const void* b = nullptr;
  DType b_dtype = DType::kF32;
  int64_t b_stride0 = 0, b_stride1 = 0;
  const float* lse_b = nullptr;
  void* out = nullptr;
  DType out_dtype = DType::kF32;
  int64_t out_stride0 = 0, out_stride1 = 0;
  float* lse = nullptr;
  int64_t rows = 0;     // dim0
  int32_t heads = 0;    // dim1
  int32_t head_dim = 0;
};
cudaError_t launch_merge_states(const MergeStatesParams& params, cudaStream_t stream) noexcept;

}  // namespace turboquant::cuda::detail
