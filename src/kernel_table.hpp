// The dispatch tables of the attention-family ops (private; plain C++): one entry per built
// (head_dim, key_bits, value_bits, q dtype), filled from the kernel lists
// (kernels/attention_instances.inc, kernels/prefill_instances.inc).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "turboquant/cuda/attention.hpp"

namespace turboquant::cuda::detail {

template <class Params>
struct KernelEntry {
  AttentionKernelKey key;
  cudaError_t (*launch)(const Params&, cudaStream_t) noexcept;
};

// The two entries (f16 and bf16 queries) of one kernel-list entry (HeadDim, KeyBits, ValueBits):
// `launch` is the launcher template, instantiated as launch<HeadDim, KeyBits, ValueBits, QType>.
#define TQ_KERNEL_ENTRIES(Params, launch, HeadDim, KeyBits, ValueBits)                                             \
  ::turboquant::cuda::detail::KernelEntry<Params>{                                                                  \
      ::turboquant::cuda::AttentionKernelKey{HeadDim, KeyBits, ValueBits, ::turboquant::DType::kF16},               \
      &launch<HeadDim, KeyBits, ValueBits, ::turboquant::DType::kF16>},                                             \
      ::turboquant::cuda::detail::KernelEntry<Params>{                                                              \
          ::turboquant::cuda::AttentionKernelKey{HeadDim, KeyBits, ValueBits, ::turboquant::DType::kBF16},          \
          &launch<HeadDim, KeyBits, ValueBits, ::turboquant::DType::kBF16>},

// The entry of `table` for the key, or nullptr.
template <class Params, size_t N>
[[nodiscard]] const KernelEntry<Params>* find_kernel(const KernelEntry<Params> (&table)[N], int32_t head_dim,
                                                     int32_t key_bits, int32_t value_bits, DType q_dtype) noexcept {
  for (const KernelEntry<Params>& e : table)
    if (e.key.head_dim == head_dim && e.key.key_bits == key_bits && e.key.value_bits == value_bits &&
        e.key.q_dtype == q_dtype)
      return &e;
  return nullptr;
}

// "(head_dim, key_bits, value_bits), ..." of the table (every entry is built for f16 and bf16: the
// f16 entries are listed), for error messages.
template <class Params, size_t N>
[[nodiscard]] std::string built_list(const KernelEntry<Params> (&table)[N]) {
  std::string s;
  for (const KernelEntry<Params>& e : table) {
    if (e.key.q_dtype != DType::kF16) continue;
    if (!s.empty()) s += ", ";
    s += "(" + std::to_string(e.key.head_dim) + ", " + std::to_string(e.key.key_bits) + ", " +
         std::to_string(e.key.value_bits) + ")";
  }
  return s;
}

}  // namespace turboquant::cuda::detail
