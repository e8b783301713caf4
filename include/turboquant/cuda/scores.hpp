// CUDA packed-QK scores: the raw scaled logits of each query against every cached key, read
// straight from the packed, paged cache. Same arguments and semantics as the float64 CPU reference
// turboquant::cpu::scores (turboquant/cpu/attention.hpp), without pre_rotated (queries are never
// rotated by the caller). Plain C++: needs only <cuda_runtime_api.h>.
//
// Call convention (common.hpp): can_implement(args) checks everything the host can see, with no
// CUDA call; workspace_bytes(args) is 0 (no scratch); scores(args, workspace, stream) checks again,
// enqueues one kernel and returns (graph-capturable).
//
// Every pointer in the Args is device memory. What the host cannot check is handled on the device,
// never by a fault: a seq_lens entry is clamped to [0, min(max_context, max_pages_per_seq *
// page_size)], and the scores of tokens whose block-table entry lies outside [0, num_pages) are left
// untouched.
//
// Supported (kUnsupportedFormat otherwise): coded keys (key.bits 2, 3 or 4; raw keys key.bits = 0
// are not built), head_dim 64, 128 or 256, q dtype f32, f16 or bf16, GQA group q_heads / kv_heads
// in 1..kMaxScoresGroup. Alignment (kMisaligned otherwise): pages 16-byte aligned, block_table,
// seq_lens and scores 4-byte aligned, q rows aligned to their element size.
//
// Two paths, chosen per call. f16 / bf16 queries with 16-byte aligned rows, head_dim 128, key bits
// 2-4 and page_size a multiple of 16: the decode-attention kernel's tensor-core Q.K^T (the query
// rotated in fp32 and fed as a two-term fp16 split, levels as fp16(a * level) with the host-chosen
// a of the attention kernel, fp32 accumulation; error per score ~1e-4 of scale |q| |k_hat|).
// Anything else (f32 queries, head_dim 64 / 256, other pages): a CUDA-core kernel with the query
// rotated in fp32, fp32 levels and fp32 accumulation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "turboquant/cuda/common.hpp"
#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::cuda {

// Largest GQA group (q_heads / kv_heads) of the scores kernel.
inline constexpr int32_t kMaxScoresGroup = 16;

struct ScoresArgs {
  Format format{};
  ConstView q{};               // [num_seqs, q_heads, head_dim] f16 | bf16 | f32, not rotated
  PagedCache cache{};          // layout = layout::page_layout(format, page_size, kv_heads); device
  float* scores = nullptr;     // [num_seqs, q_heads, max_context] fp32, dense; entries with
                               // t >= seq_lens[s] are left untouched
  int32_t max_context = 0;     // > 0; lengths beyond it are clamped on the device
  float softmax_scale = 0.0f;  // 0 means 1 / sqrt(head_dim); scores are scale * q . k_hat
};

[[nodiscard]] Status can_implement(const ScoresArgs& args) noexcept;
// Always 0: the scores kernel needs no workspace.
[[nodiscard]] size_t workspace_bytes(const ScoresArgs& args) noexcept;
[[nodiscard]] Status scores(const ScoresArgs& args, Workspace workspace, cudaStream_t stream) noexcept;

}  // namespace turboquant::cuda
