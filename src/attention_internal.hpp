// Private entry points of the CUDA decode attention for other parts of turboquant::cuda.
#pragma once

#include "turboquant/cuda/attention.hpp"

namespace turboquant::cuda::detail {

// cuda::decode_attention that also takes a format with BOTH sides uncompressed (key.bits =
// value.bits = 0, not a valid Format: the KV cache's plain fp16 / bf16 layers); such layers and
// K-only / V-only ones run the generic kernel (kernels/attention_generic.cu).
[[nodiscard]] Status can_implement_any_format(const DecodeAttentionArgs& args) noexcept;
[[nodiscard]] Status decode_attention_any_format(const DecodeAttentionArgs& args, Workspace workspace,
                                                 cudaStream_t stream) noexcept;

}  // namespace turboquant::cuda::detail
