// Decode-attention instances of head_dim 64: the entries of kernels/attention_instances.inc with
// that head_dim, for f16 and bf16 queries.
#include "attention_kernel.cuh"

#define TQ_ATTENTION_INSTANCE_IF_64(KeyBits, ValueBits) TQ_INSTANTIATE_DECODE_ATTENTION(64, KeyBits, ValueBits)
#define TQ_ATTENTION_INSTANCE_IF_128(KeyBits, ValueBits)
#define TQ_ATTENTION_INSTANCE_IF_256(KeyBits, ValueBits)
#define TQ_ATTENTION_INSTANCE(HeadDim, KeyBits, ValueBits) TQ_ATTENTION_INSTANCE_IF_##HeadDim(KeyBits, ValueBits)
#include "attention_instances.inc"
