// Private entry points of the CUDA decode attention for other parts of turboquant::cuda.
#pragma once

#include "attention_params.hpp"
#include "turboquant/cuda/attention.hpp"

namespace turboquant::cuda::detail {

// cuda::decode_attention that also takes a format with BOTH sides uncompressed (key.bits =
// value.bits = 0, not a valid Format: the KV cache's plain fp16 / bf16 layers); such layers and
// K-only / V-only ones run the generic kernel (kernels/attention_generic.cu).
[[nodiscard]] Status can_implement_any_format(const DecodeAttentionArgs& args) noexcept;
[[nodiscard]] Status decode_attention_any_format(const DecodeAttentionArgs& args, Workspace workspace,
                                                 cudaStream_t stream) noexcept;

// The fields of AttentionParams that come from the format, the queries and the paged cache (page
// geometry, lengths, block table, norms, codebook levels and key level scale, signs, bits); the
// launch-specific ones (grid, splits, workspace, outputs, scales) are the caller's.
void fill_cache_params(const Format& f, const ConstView& q, const PagedCache& c, AttentionParams* p) noexcept;

}  // namespace turboquant::cuda::detail
