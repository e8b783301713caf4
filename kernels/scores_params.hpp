// Kernel parameters of the packed-QK scores (turboquant/cuda/scores.hpp) and the dispatch lookup
// (private to turboquant::cuda). Plain C++: src/scores.cpp (g++) fills the struct, the kernel
// (nvcc, kernels/scores.cu) reads it as one `const __grid_constant__` argument. Pointers are device
// memory; strides count elements.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboquant/codebook.hpp"
#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/signs.hpp"

namespace turboquant::cuda::detail {

// Warps of a scores CTA; each takes every kScoresWarps-th token of the CTA's chunk.
inline constexpr int kScoresWarps = 4;
// Tokens of the context handled by one CTA (grid.x = ceil(max_context / kScoresChunkTokens)).
inline constexpr int kScoresChunkTokens = 64;
// Largest GQA group the kernel's shared query tile holds (= turboquant::cuda::kMaxScoresGroup).
inline constexpr int kMaxScoresGroupDevice = 16;

struct ScoresParams {
  // Queries: element (s, h, j) at q[s * q_stride0 + h * q_stride1 + j], dtype q_dtype.
  const void* q = nullptr;             // [num_seqs, q_heads, head_dim] f32 | f16 | bf16, not rotated
  DType q_dtype = DType::kF16;
  int64_t q_stride0 = 0;               // elements between sequences
  int64_t q_stride1 = 0;               // elements between heads

  // The page pool (turboquant/layout.hpp): K code row r of KV head h of page p starts at
  // pages + p * page_bytes + h * head_bytes + key_codes_offset + r * key_row_bytes.
  const uint8_t* pages = nullptr;      // [num_pages, page_bytes] bytes
  int64_t num_pages = 0;               // tokens whose block-table entry is outside [0, num_pages) are skipped
  int64_t page_bytes = 0;
  int64_t head_bytes = 0;
  int64_t key_codes_offset = 0;        // bytes from a head block to its K codes [page_size][key_row_bytes]
  int64_t key_scales_offset = 0;       // bytes to its K scales [page_size] fp16 | fp32
  int64_t key_row_bytes = 0;
  int32_t page_size = 0;
  NormStorage key_norm = NormStorage::kF16;

  const int32_t* block_table = nullptr;  // [num_seqs, max_pages_per_seq]
  const int32_t* seq_lens = nullptr;     // [num_seqs]; clamped to [0, min(max_context, capacity)]
  int32_t max_pages_per_seq = 0;

  int32_t num_seqs = 0;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t group = 0;                   // q_heads / kv_heads; query head h reads KV head h / group

  float softmax_scale = 0.0f;          // resolved (never 0)
  float* scores = nullptr;             // [num_seqs, q_heads, max_context] fp32, dense
  int32_t max_context = 0;

  float key_levels[kMaxLevels] = {};   // K codebook levels (2^key_bits used)
  SignBits key_signs{};                // RHT diagonal of the keys (rotates the queries)
};

using ScoresLauncher = cudaError_t (*)(const ScoresParams&, cudaStream_t) noexcept;

// The launcher of (head_dim, key_bits) from the one table in kernels/scores.cu; null when not built.
[[nodiscard]] ScoresLauncher find_scores_launcher(int32_t head_dim, int32_t key_bits) noexcept;

}  // namespace turboquant::cuda::detail
