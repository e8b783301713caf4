// The tensor-core packed-QK scores (cuda::scores with f16 / bf16 queries, head_dim 128, key bits
// 2 / 3 / 4): the decode-attention split kernel in its kScores mode (attention_kernel.cuh).
#include "attention_kernel.cuh"

namespace turboquant::cuda::detail {

#define TQ_INSTANTIATE_SCORES_TC(HeadDim, KeyBits)                                                          \
  template cudaError_t launch_scores_tc<HeadDim, KeyBits, DType::kF16>(const AttentionParams&, cudaStream_t) noexcept; \
  template cudaError_t launch_scores_tc<HeadDim, KeyBits, DType::kBF16>(const AttentionParams&, cudaStream_t) noexcept;
TQ_INSTANTIATE_SCORES_TC(128, 2)
TQ_INSTANTIATE_SCORES_TC(128, 3)
TQ_INSTANTIATE_SCORES_TC(128, 4)
#undef TQ_INSTANTIATE_SCORES_TC

}  // namespace turboquant::cuda::detail
