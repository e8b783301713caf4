// CUDA chunked-prefill attention straight from the packed, paged K/V cache, and the
// attention-state merge. Semantics: turboquant/prefill.hpp (a chunk of query tokens per sequence,
// packed with query_start like cu_seqlens, over its compressed prefix; PrefillOrder kFresh or
// kAppended; causal, sliding window, soft cap, optional lse, GQA). Same arguments and results as
// the float64 CPU reference turboquant::cpu::prefill_attention / merge_attention_states
// (turboquant/cpu/prefill.hpp). Plain C++: needs only <cuda_runtime_api.h>.
//
// Call convention (common.hpp): can_implement(args) checks everything the host can see, with no
// CUDA call; workspace_bytes(args) sizes the partials from the shapes alone;
// prefill_attention(args, workspace, stream) checks again, enqueues two kernels and returns. It
// never allocates, synchronises or reads device memory on the host, so it can be captured in a
// CUDA graph (num_splits, or the heuristic's inputs, are then fixed in the graph; query_start and
// seq_lens are read on the device at each replay).
//
// How it runs: the query rows of a sequence and KV head are (token, head-in-group) pairs, 64 per
// CTA, so one pass over the prefix serves the whole GQA group. The CTA rotates its queries with
// the keys' RHT, walks the prefix in 32-token tiles (codes dequantised through a shared-memory
// level table into fp16 tiles), computes S = Q K^T and O += P V with mma.m16n8k16 (fp32
// accumulation) and an online softmax, and writes an unnormalised partial (in the values' rotated
// domain) per KV split. (Small kAppended windows, every n_s <= kMaxDecodeWindow, run instead on the
// decode-attention kernel in window mode: the (token, head-in-group) pairs of a sequence's window
// share its CTAs' head tiles, each token with its causal length: small_windows_as_decode.) With kFresh, extra CTAs attend the chunk's own uncompressed K/V causally
// the same way (unrotated). A second kernel merges the partials by log-sum-exp, applies the
// inverse value RHT to the prefix part, adds the chunk part and writes out (q's dtype) and lse.
//
// Every pointer in the Args is device memory. What the host cannot check is handled on the device,
// never by a fault: a seq_lens entry above max_pages_per_seq * page_size is clamped to it (a
// negative one is 0); in kAppended a sequence with seq_lens[s] < n_s has P_s < 0 and its first rows
// attend fewer (or no) keys (no key: zeros and lse = -infinity); a block-table entry outside
// [0, num_pages) contributes nothing; query_start must be consistent (query_start[0] = 0,
// non-decreasing, query_start[num_seqs] = q.dim0, every n_s <= max_query_len): rows of a
// sequence beyond max_query_len are not computed (their out / lse rows are unspecified).
//
// Supported (kUnsupportedFormat otherwise): the (head_dim, key_bits, value_bits) combinations of
// the dispatch table (kernels/prefill_instances.inc; prefill_kernel(i) lists them), q dtype f16 or
// bf16, out, chunk_keys and chunk_values of q's dtype; q_heads / kv_heads in 1..kMaxPrefillGroup;
// any page_size (tiles are gathered token by token through the block table).
// bf16 chunk K/V are converted to fp16 for the tensor cores: values must lie within the fp16 range
// (|x| < 65504). Alignment (kMisaligned otherwise): q, out, chunk_keys, chunk_values data and row
// strides 16-byte aligned; pages 16-byte aligned; query_start, block_table, seq_lens, lse 4-byte
// aligned; workspace 16-byte aligned.
//
// Numerics: queries are rotated in fp32, normalised by their largest coordinate and rounded to
// fp16 once; key levels are fp16, the key scale multiplies the fp32 logit; values are dequantised
// as fp16(level * scale) and the probabilities rounded to fp16 for the P.V mma; accumulation is
// fp32. A float64 simulation of exactly these roundings against the exact result (d = 128, random
// N(0, 1) keys / values, K4V4, K3V3, K2V2, prefixes up to 32K) gave relative row errors <= 6.5e-4
// for N(0, 1) queries and <= 1.7e-3 for 3x sharper ones, inside the 3e-3 bound without the hi + lo
// splits the decode kernel uses (see the README section "Chunked prefill").
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "turboquant/cuda/attention.hpp"
#include "turboquant/cuda/common.hpp"
#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/prefill.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::cuda {

// Largest GQA group (q_heads / kv_heads).
inline constexpr int32_t kMaxPrefillGroup = 16;
// Query rows ((token, head-in-group) pairs) per CTA and KV tokens per tile of the prefill kernel.
inline constexpr int32_t kPrefillRowsPerCta = 128;
inline constexpr int32_t kPrefillTileTokens = 32;
// Largest KV split count (explicit or from the heuristic).
inline constexpr int32_t kMaxPrefillSplits = 128;
// Windows of at most this many query tokens per sequence (speculative verification) in kAppended
// order run through the decode-attention kernel (PrefillAttentionArgs::small_windows_as_decode).
inline constexpr int32_t kMaxDecodeWindow = 16;

struct PrefillAttentionArgs {
  Format format{};
  PrefillOrder order = PrefillOrder::kAppended;
  ConstView q{};                          // [total_tokens, q_heads, head_dim] f16 | bf16, not rotated
  const int32_t* query_start = nullptr;   // [cache.num_seqs + 1] device int32 (cu_seqlens)
  int32_t max_query_len = 0;              // host: > 0 and >= every n_s (sizes the grid)
  PagedCache cache{};                     // layout = layout::page_layout(format, page_size, kv_heads)
  ConstView chunk_keys{};                 // kFresh only: [total_tokens, kv_heads, head_dim], q's dtype
  ConstView chunk_values{};               // kFresh only: same
  View out{};                             // [total_tokens, q_heads, head_dim], q's dtype
  float* lse = nullptr;                   // optional [total_tokens, q_heads] fp32 dense, natural log
  float softmax_scale = 0.0f;             // 0 means 1 / sqrt(head_dim)
  int32_t sliding_window = 0;             // 0 = off; w > 0: query at pos attends keys t > pos - w
  float logit_softcap = 0.0f;             // 0 = off; c > 0: logit = c * tanh(logit / c) after scaling
  int32_t max_seq_len = 0;                // host upper bound of seq_lens (<= max_pages_per_seq * page_size);
                                          // sizes the split count only: longer sequences stay exact
  int32_t num_splits = 0;                 // KV splits of the prefix per row tile; 0 = heuristic
  int32_t sm_count = kDefaultSmCount;     // SMs of the device, input of the heuristic only
  bool small_windows_as_decode = true;    // tuning: with kAppended and max_query_len <= kMaxDecodeWindow,
                                          // run on the decode-attention kernel (window mode: a window's
                                          // (token, head) pairs share the head tiles of its sequence's
                                          // CTAs) when it supports the call; false = always the prefill
                                          // kernel. Results agree within the accuracy bounds of both.
};

[[nodiscard]] Status can_implement(const PrefillAttentionArgs& args) noexcept;
// Bytes of the partials: total_tokens * q_heads * parts * (head_dim + 2) floats (parts = splits,
// plus one with kFresh), padded; on the decode kernel (small windows) its partials for total_tokens
// rows; 0 when the shapes are invalid (can_implement says why).
[[nodiscard]] size_t workspace_bytes(const PrefillAttentionArgs& args) noexcept;
[[nodiscard]] Status prefill_attention(const PrefillAttentionArgs& args, Workspace workspace,
                                       cudaStream_t stream) noexcept;
// The KV split count a call with these args uses; 0 when the shapes are invalid.
[[nodiscard]] int32_t prefill_attention_splits(const PrefillAttentionArgs& args) noexcept;

// The combinations with prefill kernels built, from the one dispatch table.
[[nodiscard]] int32_t num_prefill_kernels() noexcept;
[[nodiscard]] AttentionKernelKey prefill_kernel(int32_t i) noexcept;  // i in [0, num_prefill_kernels())

// Merge of two attention states (turboquant/prefill.hpp): out = (w_a out_a + w_b out_b) / (w_a + w_b)
// with w = exp(lse - max(lse_a, lse_b)); lse = max + log(w_a + w_b); both -infinity -> zeros and
// -infinity. Views [rows, heads, head_dim] of f16, bf16 or f32 (each its own dtype), any head_dim;
// lse arrays dense [rows, heads] fp32. In place (out = out_a or out_b, lse = lse_a or lse_b) is
// allowed. No workspace. A NaN or +infinity lse gives NaN rows (the CPU reference rejects it).
struct MergeAttentionStatesArgs {
  ConstView out_a{};
  const float* lse_a = nullptr;
  ConstView out_b{};
  const float* lse_b = nullptr;
  View out{};
  float* lse = nullptr;  // optional
};

[[nodiscard]] Status can_implement(const MergeAttentionStatesArgs& args) noexcept;
[[nodiscard]] Status merge_attention_states(const MergeAttentionStatesArgs& args, cudaStream_t stream) noexcept;

}  // namespace turboquant::cuda
