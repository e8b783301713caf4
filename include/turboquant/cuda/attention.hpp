// CUDA decode attention straight from the packed, paged K/V cache: one query token per sequence
// attends to every cached key and value of its sequence without decoding the cache. Same
// arguments and semantics as the float64 CPU reference turboquant::cpu::decode_attention
// (turboquant/cpu/attention.hpp): GQA / MQA, sliding window, logit soft cap, optional
// log-sum-exp, a length-0 sequence gives zeros and lse = -infinity. Plain C++: needs only
// <cuda_runtime_api.h>.
//
// Call convention (common.hpp): can_implement(args) checks everything the host can see, with no
// CUDA call; workspace_bytes(args) sizes the split partials from the shapes alone;
// decode_attention(args, workspace, stream) checks again, enqueues two kernels (the split pass and
// the merge) and returns. It never allocates, synchronises or reads device memory on the host,
// so it can be captured in a CUDA graph (num_splits, or the heuristic's inputs max_seq_len and
// sm_count, are then fixed in the graph; sequence lengths are read on the device at each replay).
//
// Every pointer in the Args is device memory. What the host cannot check is handled on the device,
// never by a fault: a seq_lens entry above max_pages_per_seq * page_size is clamped to it (a
// negative one is 0), and a 16-token chunk whose block-table entry lies outside [0, num_pages)
// contributes nothing.
//
// Supported (kUnsupportedFormat otherwise, naming what is missing):
//   - both sides coded: the (head_dim, key_bits, value_bits) combinations of the dispatch table
//     (kernels/attention_instances.inc; attention_kernel(i) lists them) with page_size a multiple
//     of 16 (the kernel reads 16-token chunks that never straddle a page) — the fast tensor-core
//     kernel;
//   - one side stored uncompressed (value.bits = 0: K-only layers, or key.bits = 0), any head_dim
//     64 / 128 / 256, bits 2-4 on the other side, raw f16 / bf16, any page size — a generic
//     CUDA-core kernel (kernels/attention_generic.cu): correct, not tuned (about 20x slower);
//   - q dtype f16 or bf16, out of q's dtype; q_heads / kv_heads (the GQA group) in 1..16.
// Alignment (kMisaligned otherwise): q and out data and row strides 16-byte aligned
// (kVectorAlignment); pages 16-byte aligned; block_table, seq_lens and lse 4-byte aligned;
// workspace 16-byte aligned.
//
// Numerics (the fast kernel): the query is rotated in fp32 and fed to fp16 tensor cores as a
// two-term fp16 split (about 22 significant bits); key levels are fp16(a * level) with a factor a in
// [1, 2) chosen on the host to make their rounding small (1 / a folded into the logit scale); value
// levels and the probability-times-value-scale weights are fp16; accumulation is fp32. The generic
// kernel computes in fp32 throughout. Value scales above 65504 (possible only with fp32 norm
// storage) overflow the fp16 weights; the online softmax rescales lazily (its reference runs up to
// 2^4 above the running max, so the largest weight of a split is >= 1/16), which leaves the fp16
// weights subnormal, and less precise, only for value scales below ~1e-3. Measured agreement with
// the CPU reference: see tests/test_cuda_attention.cpp and kernels/ATTENTION_NOTES.md.
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

// SM count of an H100 / H200 SXM, the default input of the split heuristic.
inline constexpr int32_t kDefaultSmCount = 132;
// Largest split count (explicit or from the heuristic).
inline constexpr int32_t kMaxAttentionSplits = 256;
// Largest GQA group (q_heads / kv_heads).
inline constexpr int32_t kMaxAttentionGroup = 16;
// The kernel walks the context in chunks of this many tokens; page_size must be a multiple.
inline constexpr int32_t kAttentionChunkTokens = 16;

struct DecodeAttentionArgs {
  Format format{};
  ConstView q{};               // [num_seqs, q_heads, head_dim] f16 | bf16, not rotated
  PagedCache cache{};          // layout = layout::page_layout(format, page_size, kv_heads);
                               // pages, block_table [num_seqs, max_pages_per_seq], seq_lens [num_seqs]
  View out{};                  // [num_seqs, q_heads, head_dim], q's dtype
  float* lse = nullptr;        // optional [num_seqs, q_heads] fp32, dense: natural-log log-sum-exp
                               // of the scaled, soft-capped logits; -infinity for a length-0 sequence
  float softmax_scale = 0.0f;  // 0 means 1 / sqrt(head_dim)
  int32_t sliding_window = 0;  // 0 = off; w > 0: attend to keys t >= seq_len - w
  float logit_softcap = 0.0f;  // 0 = off; c > 0: logit = c * tanh(logit / c) after scaling
  int32_t max_seq_len = 0;     // host-known upper bound of seq_lens (<= max_pages_per_seq * page_size);
                               // sizes the split grid only: longer sequences are still exact
  int32_t num_splits = 0;      // context splits per sequence (flash-decoding); 0 = heuristic from
                               // max_seq_len, sliding_window, the grid and sm_count
  int32_t sm_count = kDefaultSmCount;  // SMs of the device, input of the heuristic only
  bool programmatic_launch = true;  // tuning: launch both kernels with programmatic dependent
                                   // launch (Hopper PDL: a kernel's CTAs start as the previous
                                   // kernel of the stream drains and wait before reading its
                                   // results); false = plain stream order. Never changes results.
};

[[nodiscard]] Status can_implement(const DecodeAttentionArgs& args) noexcept;
// Bytes of the split partials: num_seqs * q_heads * splits * (head_dim + 2) floats, padded; 0 when
// the shapes are invalid (can_implement says why).
[[nodiscard]] size_t workspace_bytes(const DecodeAttentionArgs& args) noexcept;
[[nodiscard]] Status decode_attention(const DecodeAttentionArgs& args, Workspace workspace,
                                      cudaStream_t stream) noexcept;

// The split count a call with these args uses (num_splits, or the heuristic's choice); 0 when
// the shapes are invalid.
[[nodiscard]] int32_t decode_attention_splits(const DecodeAttentionArgs& args) noexcept;

// The combinations with decode-attention kernels built, from the one dispatch table.
struct AttentionKernelKey {
  int32_t head_dim = 0;
  int32_t key_bits = 0;
  int32_t value_bits = 0;
  DType q_dtype = DType::kF16;
};
[[nodiscard]] int32_t num_attention_kernels() noexcept;
[[nodiscard]] AttentionKernelKey attention_kernel(int32_t i) noexcept;  // i in [0, num_attention_kernels())

}  // namespace turboquant::cuda
