// Host checks shared by the ops of turboquant::cuda (private). Plain C++.
#pragma once

#include <cstdint>

#include "turboquant/checks.hpp"
#include "turboquant/cuda/common.hpp"
#include "turboquant/format.hpp"
#include "turboquant/layout.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::cuda::detail {

// Largest grid y / z dimension.
inline constexpr int32_t kMaxGridYZ = 65535;

// The device paged cache as far as the host can see it (no device memory is read): pool, layout,
// block table and sequence lengths pointers and their alignment, counts.
[[nodiscard]] inline Status check_device_cache(const Format& f, const PagedCache& c) noexcept {
  const layout::PageLayout& l = c.layout;
  if (c.pages == nullptr) return make_status(StatusCode::kInvalidArgument, "cache.pages = null");
  if (c.num_pages <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.num_pages = ", c.num_pages, ": must be > 0");
  if (l.page_size <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.layout.page_size = ", l.page_size, ": must be > 0");
  if (l.kv_heads <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.layout.kv_heads = ", l.kv_heads, ": must be > 0");
  if (!checks::aligned(c.pages, layout::kAlignment))
    return make_status(StatusCode::kMisaligned, "cache.pages = ", c.pages, ": must be ", layout::kAlignment,
                       "-byte aligned");
  TQ_RETURN_IF_ERROR(checks::cache_layout(f, l));
  if (c.block_table == nullptr) return make_status(StatusCode::kInvalidArgument, "cache.block_table = null");
  if (c.seq_lens == nullptr) return make_status(StatusCode::kInvalidArgument, "cache.seq_lens = null");
  if (!checks::aligned(c.block_table, sizeof(int32_t)))
    return make_status(StatusCode::kMisaligned, "cache.block_table = ", c.block_table, ": not 4-byte aligned");
  if (!checks::aligned(c.seq_lens, sizeof(int32_t)))
    return make_status(StatusCode::kMisaligned, "cache.seq_lens = ", c.seq_lens, ": not 4-byte aligned");
  if (c.num_seqs <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.num_seqs = ", c.num_seqs, ": must be > 0");
  if (c.max_pages_per_seq <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.max_pages_per_seq = ", c.max_pages_per_seq,
                       ": must be > 0");
  if (c.num_seqs > kMaxGridYZ)
    return make_status(StatusCode::kInvalidArgument, "cache.num_seqs = ", c.num_seqs, ": at most ", kMaxGridYZ,
                       " sequences per call");
  return Status::ok();
}

// The options decode attention and prefill attention share: the optional lse pointer, the softmax
// scale and soft cap, the sliding window, max_seq_len against the cache's capacity, the split count
// (at most max_splits; 0 = heuristic) and the heuristic's SM count.
struct AttentionOptions {
  const float* lse;
  float softmax_scale;
  float logit_softcap;
  int32_t sliding_window;
  int32_t max_seq_len;
  int32_t num_splits;
  int32_t max_splits;
  int32_t sm_count;
};

[[nodiscard]] inline Status check_attention_options(const AttentionOptions& o, const PagedCache& c) noexcept {
  if (o.lse != nullptr && !checks::aligned(o.lse, sizeof(float)))
    return make_status(StatusCode::kMisaligned, "lse = ", static_cast<const void*>(o.lse),
                       ": not aligned to 4-byte floats");
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("softmax_scale", o.softmax_scale));
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("logit_softcap", o.logit_softcap));
  if (o.sliding_window < 0)
    return make_status(StatusCode::kInvalidArgument, "sliding_window = ", o.sliding_window, ": must be >= 0 (0 = off)");
  const int64_t capacity = static_cast<int64_t>(c.max_pages_per_seq) * c.layout.page_size;
  if (o.max_seq_len < 0 || o.max_seq_len > capacity)
    return make_status(StatusCode::kInvalidArgument, "max_seq_len = ", o.max_seq_len,
                       ": must be in [0, max_pages_per_seq * page_size = ", c.max_pages_per_seq, " * ",
                       c.layout.page_size, " = ", capacity, "]");
  if (o.num_splits < 0 || o.num_splits > o.max_splits)
    return make_status(StatusCode::kInvalidArgument, "num_splits = ", o.num_splits, ": must be in [0, ", o.max_splits,
                       "] (0 = heuristic)");
  if (o.sm_count <= 0) return make_status(StatusCode::kInvalidArgument, "sm_count = ", o.sm_count, ": must be > 0");
  return Status::ok();
}

// A caller-supplied workspace for an op that needs `needed` bytes: large enough, present, aligned
// for vector access.
[[nodiscard]] inline Status check_workspace(const Workspace& w, size_t needed) noexcept {
  if (w.bytes < needed)
    return make_status(StatusCode::kInvalidArgument, "workspace.bytes = ", w.bytes, " but workspace_bytes(args) = ",
                       needed);
  if (w.data == nullptr) return make_status(StatusCode::kInvalidArgument, "workspace.data = null");
  if (!checks::aligned(w.data, kVectorAlignment))
    return make_status(StatusCode::kMisaligned, "workspace.data = ", w.data, ": must be ", kVectorAlignment,
                       "-byte aligned");
  return Status::ok();
}

}  // namespace turboquant::cuda::detail
