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

// Prefill's small kAppended windows on the decode kernel (src/prefill.cpp): sequence s of
// args.cache owns the query tokens [query_start[s], query_start[s + 1]) (at most `window`), and
// the rows of args.q, args.out and args.lse are query tokens (query_rows of them). Token t of n_s
// attends keys [0, seq_len - (n_s - 1 - t)) (causal; with sliding_window w the last w of them); the
// (token, head) pairs of a KV head share the CTAs' head tiles, so a window's K/V are dequantised
// ceil(window * group / 8) times, not once per token. The main kernel only (both sides coded).
struct DecodeWindows {
  const int32_t* query_start = nullptr;  // [num_seqs + 1] device (cu_seqlens)
  int32_t window = 1;                    // host: >= every n_s
  int32_t query_rows = 0;                // host: query_start[num_seqs] = q.dim0 = out.dim0
};
[[nodiscard]] Status can_implement_windows(const DecodeAttentionArgs& args, const DecodeWindows& w) noexcept;
[[nodiscard]] size_t workspace_bytes_windows(const DecodeAttentionArgs& args, const DecodeWindows& w) noexcept;
[[nodiscard]] int32_t decode_attention_windows_splits(const DecodeAttentionArgs& args, const DecodeWindows& w) noexcept;
[[nodiscard]] Status decode_attention_windows(const DecodeAttentionArgs& args, const DecodeWindows& w,
                                              Workspace workspace, cudaStream_t stream) noexcept;

// The page-pool fields every paged-cache kernel's parameters share by name (AttentionParams,
// PrefillParams, ScoresParams): pool, page geometry, key planes and norm storage, block table,
// lengths; with kValues the value planes too.
template <bool kValues, class Params>
void fill_page_pool(const Format& f, const PagedCache& c, Params* p) noexcept {
  const layout::PageLayout& l = c.layout;
  p->pages = static_cast<const uint8_t*>(c.pages);
  p->num_pages = c.num_pages;
  p->page_bytes = l.page_bytes;
  p->head_bytes = l.head_bytes;
  p->page_size = l.page_size;
  p->key_codes_offset = l.key_codes_offset;
  p->key_scales_offset = l.key_scales_offset;
  p->key_norm = f.key.norm;
  if constexpr (kValues) {
    p->value_codes_offset = l.value_codes_offset;
    p->value_scales_offset = l.value_scales_offset;
    p->value_norm = f.value.norm;
  }
  p->block_table = c.block_table;
  p->seq_lens = c.seq_lens;
  p->max_pages_per_seq = c.max_pages_per_seq;
}

// The fields of AttentionParams that come from the format, the queries and the paged cache (page
// geometry, lengths, block table, norms, codebook levels and key level scale, signs, bits); the
// launch-specific ones (grid, splits, workspace, outputs, scales) are the caller's.
void fill_cache_params(const Format& f, const ConstView& q, const PagedCache& c, AttentionParams* p) noexcept;

}  // namespace turboquant::cuda::detail
