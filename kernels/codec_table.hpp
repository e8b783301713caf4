// The dispatch table of the codec ops (private to turboquant::cuda): one entry per built
// (head_dim, bits) instance, generated into codec_table.cpp by kernels/CMakeLists.txt from its one
// list of supported combinations. A miss is kUnsupportedFormat; nothing else switches on
// head_dim or bits.
#pragma once

#include <cstdint>

#include "codec_params.hpp"

namespace turboquant::cuda::detail {

using EncodeLauncher = cudaError_t (*)(const EncodeParams&, cudaStream_t) noexcept;
using DecodeLauncher = cudaError_t (*)(const DecodeParams&, cudaStream_t) noexcept;
using RotateLauncher = cudaError_t (*)(const RotateParams&, cudaStream_t) noexcept;

struct CodecKernels {
  int32_t head_dim;
  int32_t bits;
  EncodeLauncher encode;
  DecodeLauncher decode;
};
struct RotateKernels {
  int32_t head_dim;
  RotateLauncher rotate;
};

// The entries, in the order of the list.
extern const CodecKernels kCodecKernels[];
extern const int32_t kNumCodecKernels;
extern const RotateKernels kRotateKernels[];
extern const int32_t kNumRotateKernels;

[[nodiscard]] inline const CodecKernels* find_codec_kernels(int32_t head_dim, int32_t bits) noexcept {
  for (int32_t i = 0; i < kNumCodecKernels; ++i)
    if (kCodecKernels[i].head_dim == head_dim && kCodecKernels[i].bits == bits) return &kCodecKernels[i];
  return nullptr;
}
[[nodiscard]] inline const RotateKernels* find_rotate_kernels(int32_t head_dim) noexcept {
  for (int32_t i = 0; i < kNumRotateKernels; ++i)
    if (kRotateKernels[i].head_dim == head_dim) return &kRotateKernels[i];
  return nullptr;
}

}  // namespace turboquant::cuda::detail
