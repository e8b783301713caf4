// Kernel parameters of the decode attention and the launchers the dispatch table points at
// (private to turboquant::cuda). Plain C++: src/attention.cpp (g++) fills the struct, the kernels
// (nvcc) read it as one `const __grid_constant__` argument. Pointers are device memory; strides
// count elements.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboquant/codebook.hpp"
#include "turboquant/cuda/attention.hpp"
#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/signs.hpp"

namespace turboquant::cuda::detail {

// Query heads served by one CTA (the n dimension of the P.V mma); a GQA group of more heads is
// split into ceil(group / kAttentionHeadsPerCta) head tiles, each a row of CTAs.
inline constexpr int kAttentionHeadsPerCta = 8;
// Most query tokens per sequence in window mode (AttentionParams::query_start).
inline constexpr int32_t kMaxAttentionWindow = 16;
// Warps of a split CTA; each walks every kAttentionWarps-th chunk of the CTA's token range.
inline constexpr int kAttentionWarps = 8;
// Split CTAs resident per SM that the split kernel is built for (its __launch_bounds__ minimum;
// registers and shared memory allow this many): 2 up to head_dim 128 (16 warps, <= 128 registers), 1 at 256, whose accumulators
// and query fragments take twice the registers. The split heuristic plans whole waves with it.
// A CTA of 16 query slots (window mode, attention_slots_per_tile) holds twice the accumulators: one
// per SM, of 12 warps (<= 168 registers). Counted in work units (attention_units_per_cta): a CTA
// of two units is one of them per SM.
[[nodiscard]] constexpr int attention_ctas_per_sm(int head_dim, int slots = kAttentionHeadsPerCta) noexcept {
  return slots <= kAttentionHeadsPerCta && head_dim <= 128 ? 2 : 1;
}

// Query slots per split CTA (AttentionParams::slots_per_tile): kAttentionHeadsPerCta, or in window
// mode, when a window's (token, head) pairs fill more than that and head_dim <= 128, twice as many
// (each chunk's codes are dequantised once for 16 slots instead of 8).
inline constexpr int kAttentionWideSlots = 2 * kAttentionHeadsPerCta;
// Warps of a split CTA's work unit of `slots` query slots: kAttentionWarps, 12 for 16 slots (the
// register file holds 12 warps at the 168 registers those need; measured 0.060 ms at 8 warps for a
// verify window).
[[nodiscard]] constexpr int attention_split_warps(int slots) noexcept {
  return slots > kAttentionHeadsPerCta ? 12 : kAttentionWarps;
}

// A side of 3-bit codes is read through two phase tables (attention_kernel.cuh, CodeUnit): twice
// the code table's 64 KB.
[[nodiscard]] constexpr bool attention_phase_tables(int key_bits, int value_bits) noexcept {
  return key_bits == 3 || value_bits == 3;
}
// Work units (a KV head tile of a sequence's split: one row of the grid's y extent) per split CTA:
// where two CTAs per SM would each need the phase tables (attention_ctas_per_sm), one CTA of twice
// the warps holds them once and serves two neighbouring KV head tiles, one per half; the grid's y
// extent is halved (rounded up: a half without a unit returns at once).
[[nodiscard]] constexpr int attention_units_per_cta(int head_dim, int slots, int key_bits, int value_bits) noexcept {
  return attention_phase_tables(key_bits, value_bits) && attention_ctas_per_sm(head_dim, slots) == 2 ? 2 : 1;
}
[[nodiscard]] constexpr int attention_slots_per_tile(int head_dim, int64_t window_slots) noexcept {
  return head_dim <= 128 && window_slots > kAttentionHeadsPerCta ? kAttentionWideSlots : kAttentionHeadsPerCta;
}

// The decode split heuristic's search (src/attention.cpp resolve_splits): the split count s in
// [1, most] minimising waves(s) * (ceil(chunks / s) + prologue_chunks), waves(s) =
// ceil(units * s / slots) (units: work units per split, slots: resident units of the card), the
// smallest s on ties. It runs on the host before every launch, inside the call's latency, so it is
// cheap: waves(s) is kept incrementally (no 64-bit division), and since every cost at s' > s is at
// least units * (chunks + s' * prologue_chunks) / slots, which grows with s', the walk stops once
// that bound passes the best cost (compared in double with a margin that rounding cannot cross):
// about 37 steps at batch 1 x 128K instead of 256, 6 at 32 x 16K. Equal to the exhaustive search
// (tests/test_cuda_attention.cpp, CudaAttentionHost.SplitSearchMatchesExhaustive).
[[nodiscard]] inline int32_t attention_split_count(int32_t chunks, int32_t most, int64_t units, int64_t slots,
                                                   int32_t prologue_chunks) noexcept {
  if (chunks < 1 || most < 1 || units < 1 || slots < 1) return 1;
  const int64_t whole = units / slots, rest_step = units % slots;
  const double per_slot = static_cast<double>(units) / static_cast<double>(slots);
  int64_t waves_floor = 0, rest = 0;  // units * s = waves_floor * slots + rest, 0 <= rest < slots
  int32_t best = 1;
  int64_t best_cost = -1;
  for (int32_t s = 1; s <= most; ++s) {
    waves_floor += whole;
    rest += rest_step;
    if (rest >= slots) {
      rest -= slots;
      ++waves_floor;
    }
    const int64_t waves = waves_floor + (rest > 0 ? 1 : 0);
    const auto per_split = (static_cast<uint32_t>(chunks) - 1u) / static_cast<uint32_t>(s) + 1u;  // ceil
    const int64_t cost = waves * (int64_t{per_split} + prologue_chunks);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = s;
    }
    const double bound = per_slot * (static_cast<double>(chunks) + static_cast<double>(s + 1) * prologue_chunks);
    if (bound > static_cast<double>(best_cost) * (1.0 + 1e-9) + 1.0) break;
  }
  return best;
}

// log2(n) when n is a power of two, else -1: lets a kernel shift where it would divide by n.
[[nodiscard]] constexpr int32_t exact_log2(int32_t n) noexcept {
  int32_t log2 = 0;
  while (log2 < 30 && (int32_t{1} << log2) < n) ++log2;
  return n > 0 && (int32_t{1} << log2) == n ? log2 : -1;
}
static_assert(exact_log2(1) == 0 && exact_log2(64) == 6 && exact_log2(48) == -1 && exact_log2(0) == -1);

// log2(page_size / kAttentionChunkTokens) when that is a power of two, else -1
// (AttentionParams::page_chunks_log2).
[[nodiscard]] constexpr int32_t page_chunks_log2(int32_t page_size) noexcept {
  return exact_log2(page_size / kAttentionChunkTokens);
}
static_assert(page_chunks_log2(16) == 0 && page_chunks_log2(64) == 2 && page_chunks_log2(48) == -1);

struct AttentionParams {
  // Queries: element (s, h, j) at q[s * q_stride0 + h * q_stride1 + j], dtype = the instance's QType.
  const void* q = nullptr;             // [num_seqs, q_heads, head_dim] f16 | bf16, not rotated
  int64_t q_stride0 = 0;               // elements between sequences
  int64_t q_stride1 = 0;               // elements between heads

  // The page pool (turboquant/layout.hpp): token row r of KV head h of page p starts at
  // pages + p * page_bytes + h * head_bytes + {key,value}_{codes,scales}_offset + r * row bytes.
  const uint8_t* pages = nullptr;      // [num_pages, page_bytes] bytes
  int64_t num_pages = 0;               // block-table entries outside [0, num_pages) are skipped
  int64_t page_bytes = 0;              // bytes per page
  int64_t head_bytes = 0;              // bytes per KV head block inside a page
  int64_t key_codes_offset = 0;        // bytes from a head block to its K codes [page_size][key row bytes]
  int64_t key_scales_offset = 0;       // bytes to its K scales [page_size] fp16 | fp32
  int64_t value_codes_offset = 0;      // bytes to its V codes [page_size][value row bytes]
  int64_t value_scales_offset = 0;     // bytes to its V scales [page_size] fp16 | fp32
  int32_t page_size = 0;               // tokens per page, a multiple of kAttentionChunkTokens
  int32_t page_chunks_log2 = -1;       // log2(page_size / kAttentionChunkTokens) when a power of two, else -1
  NormStorage key_norm = NormStorage::kF16;    // storage of the K scales
  NormStorage value_norm = NormStorage::kF16;  // storage of the V scales

  const int32_t* block_table = nullptr;  // [num_seqs, max_pages_per_seq] page numbers
  const int32_t* seq_lens = nullptr;     // [num_seqs] tokens per sequence
  int32_t max_pages_per_seq = 0;

  int32_t num_seqs = 0;
  // Rows of q / out / lse: num_seqs (one query token per sequence), or, with query_start (prefill's
  // small kAppended windows, src/prefill.cpp), the query tokens: sequence s owns rows
  // [query_start[s], query_start[s + 1]) (at most `window` of them), token t of its n_s attends keys
  // [first, seq_len - (n_s - 1 - t)), and the (token, head-in-group) pairs r = t * group + g of one
  // KV head share its head tiles (head_tiles = ceil(window * group / slots_per_tile)).
  int32_t query_rows = 0;
  const int32_t* query_start = nullptr;  // [num_seqs + 1] or null
  int32_t window = 1;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t group = 0;                   // q_heads / kv_heads; query head h reads KV head h / group
  int32_t head_tiles = 0;              // ceil(group * window / slots_per_tile)
  int32_t slots_per_tile = kAttentionHeadsPerCta;  // query slots of a CTA (attention_slots_per_tile)
  int32_t num_splits = 0;              // context splits per (sequence, KV head, head tile)
  bool programmatic_launch = false;    // host side only: launch with programmatic stream serialization

  float softmax_scale = 0.0f;          // resolved (never 0): multiplies q . k_hat
  float logit_softcap = 0.0f;          // 0 = off
  int32_t sliding_window = 0;          // 0 = off

  // Split partials (the workspace), one per (sequence, query head, split), row v = s * q_heads + h:
  float* partial_out = nullptr;        // [num_seqs * q_heads, num_splits, head_dim] fp32: the
                                       // rotated-domain sum of p_t * v_hat_t with p_t = 2^(logit2_t - max)
  float* partial_max_sum = nullptr;    // [num_seqs * q_heads, num_splits, 2] fp32: (max, sum of p_t),
                                       // max in log2 units (logit * log2(e)): a reference >= every
                                       // logit2_t of the split (the split kernel's lazy rescaling may
                                       // leave it above the largest); (-inf, 0) when empty

  // Outputs.
  void* out = nullptr;                 // [num_seqs, q_heads, head_dim], dtype QType
  int64_t out_stride0 = 0;             // elements between sequences
  int64_t out_stride1 = 0;             // elements between heads
  float* lse = nullptr;                // optional [num_seqs, q_heads] fp32, natural log

  // Codecs.
  float key_levels[kMaxLevels] = {};   // K codebook levels (2^key_bits used)
  float key_level_scale = 1.0f;        // the kernel's key table holds fp16(key_level_scale * level): a factor
                                       // in [1, 2) that makes the fp16 roundings of the levels small
  float value_levels[kMaxLevels] = {}; // V codebook levels (2^value_bits used)
  SignBits key_signs{};                // RHT diagonal of the keys (rotates the queries)
  SignBits value_signs{};              // RHT diagonal of the values (un-rotates the output)

  // The generic kernel (a side stored uncompressed; attention_generic.cu) reads these at run time;
  // the main kernel has them as template parameters.
  int32_t key_bits = 0;                // 0 = raw keys (raw_dtype), else 2..4
  int32_t value_bits = 0;              // 0 = raw values, else 2..4
  DType raw_dtype = DType::kF16;       // storage of an uncompressed side
  bool value_raw = false;              // merge kernel: values are not rotated (no inverse RHT)

  // The packed-QK scores op on this kernel (launch_scores_tc): scale * q . k_hat per token.
  float* scores = nullptr;             // [num_seqs, q_heads, max_context] fp32, dense
  int32_t max_context = 0;
};

// The factor a in [1, 2) (steps of 1/2048) that minimises the largest relative error of the fp16
// roundings of a * levels[i] over the nonzero levels: the key table of the kernel holds those fp16
// values (a plain fp16 rounding errs by up to 2^-12 relative; the best factor for the shipped 4-bit
// codebook by ~8.5e-5). Cached per thread for the last few codebooks (src/attention.cpp).
[[nodiscard]] float fp16_level_scale(const float* levels, int32_t count) noexcept;

// One instance per (HeadDim, KeyBits, ValueBits) of kernels/attention_instances.inc and QType in
// {f16, bf16} (kernels/attention_d<HeadDim>.cu); each enqueues the split kernel and the merge
// kernel and returns the first launch error.
template <int HeadDim, int KeyBits, int ValueBits, DType QType>
cudaError_t launch_decode_attention(const AttentionParams& params, cudaStream_t stream) noexcept;

// The generic split kernel (any side may be stored uncompressed; bits and dtypes read at run time,
// CUDA cores, one warp lane group per token) + the merge kernel. One instance per HeadDim and QType
// (kernels/attention_generic.cu). Grid (num_splits, q_heads, num_seqs).
// The packed-QK scores (cuda::scores) for f16 / bf16 queries on the split kernel's tensor-core
// Q.K^T: grid (num_splits, kv_heads * head_tiles, num_seqs), one launch (kernels/scores_tc.cu).
template <int HeadDim, int KeyBits, DType QType>
cudaError_t launch_scores_tc(const AttentionParams& params, cudaStream_t stream) noexcept;

template <int HeadDim, DType QType>
cudaError_t launch_generic_attention(const AttentionParams& params, cudaStream_t stream) noexcept;

}  // namespace turboquant::cuda::detail
