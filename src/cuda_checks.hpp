// Host checks shared by the ops of turboquant::cuda (private). Plain C++.
#pragma once

#include <cstdint>

#include "turboquant/checks.hpp"
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

}  // namespace turboquant::cuda::detail
