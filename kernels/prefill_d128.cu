// Chunked-prefill instances of head_dim 128: the entries of kernels/prefill_instances.inc with that
// head_dim, for f16 and bf16 queries.
#include "prefill_kernel.cuh"

#define TQ_PREFILL_INSTANCE_IF_64(KeyBits, ValueBits)
#define TQ_PREFILL_INSTANCE_IF_128(KeyBits, ValueBits) TQ_INSTANTIATE_PREFILL_ATTENTION(128, KeyBits, ValueBits)
#define TQ_PREFILL_INSTANCE_IF_256(KeyBits, ValueBits)
#define TQ_PREFILL_INSTANCE(HeadDim, KeyBits, ValueBits) TQ_PREFILL_INSTANCE_IF_##HeadDim(KeyBits, ValueBits)
#include "prefill_instances.inc"
