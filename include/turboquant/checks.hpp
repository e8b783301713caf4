// Argument checks shared by the CPU path and the CUDA host API. Each returns a Status whose
// message names the argument and its value. None of them touches device memory.
#pragma once

#include <cmath>
#include <cstdint>

#include "turboquant/format.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::checks {

[[nodiscard]] inline bool aligned(const void* p, int64_t alignment) noexcept {
  return (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(alignment)) == 0;
}

// A view of vectors of `head_dim` values: non-null, at least one row, contiguous last dim,
// strides that do not make rows overlap, a supported dtype, element alignment. With
// `vector_alignment` > 0 the data pointer and row strides must also allow loads of that many bytes.
template <typename Pointer>
[[nodiscard]] Status vectors(const char* name, const BasicView<Pointer>& v, int32_t head_dim,
                             int64_t vector_alignment = 0) noexcept {
  if (v.data == nullptr) return make_status(StatusCode::kInvalidArgument, name, ".data = null");
  if (v.dtype != DType::kF32 && v.dtype != DType::kF16 && v.dtype != DType::kBF16)
    return make_status(StatusCode::kUnsupportedFormat, name, ".dtype = ", static_cast<int32_t>(v.dtype));
  if (v.head_dim != head_dim)
    return make_status(StatusCode::kInvalidArgument, name, ".head_dim = ", v.head_dim,
                       " but the format's head_dim = ", head_dim);
  if (v.dim0 <= 0) return make_status(StatusCode::kInvalidArgument, name, ".dim0 = ", v.dim0, ": must be > 0");
  if (v.dim1 <= 0) return make_status(StatusCode::kInvalidArgument, name, ".dim1 = ", v.dim1, ": must be > 0");
  if (v.dim1 > 1 && v.stride1 < head_dim)
    return make_status(StatusCode::kInvalidArgument, name, ".stride1 = ", v.stride1,
                       ": heads overlap (head_dim = ", head_dim, ")");
  const int64_t span1 = (v.dim1 - 1) * v.stride1 + head_dim;
  if (v.dim0 > 1 && v.stride0 < span1)
    return make_status(StatusCode::kInvalidArgument, name, ".stride0 = ", v.stride0,
                       ": rows overlap (one row spans ", span1, " elements)");
  const int64_t esize = dtype_bytes(v.dtype);
  if (!aligned(v.data, esize))
    return make_status(StatusCode::kMisaligned, name, ".data = ", static_cast<const void*>(v.data),
                       ": not aligned to its ", esize, "-byte elements");
  if (vector_alignment > 0) {
    if (!aligned(v.data, vector_alignment))
      return make_status(StatusCode::kMisaligned, name, ".data = ", static_cast<const void*>(v.data),
                         ": must be ", vector_alignment, "-byte aligned for vector loads");
    if ((v.stride0 * esize) % vector_alignment != 0 && v.dim0 > 1)
      return make_status(StatusCode::kMisaligned, name, ".stride0 = ", v.stride0, " elements (",
                         v.stride0 * esize, " bytes): must be a multiple of ", vector_alignment, " bytes");
    if ((v.stride1 * esize) % vector_alignment != 0 && v.dim1 > 1)
      return make_status(StatusCode::kMisaligned, name, ".stride1 = ", v.stride1, " elements (",
                         v.stride1 * esize, " bytes): must be a multiple of ", vector_alignment, " bytes");
  }
  return Status::ok();
}

template <typename Codes>
[[nodiscard]] Status dense_codes(const char* name, const Codes& c, const CodecSpec& codec) noexcept {
  if (c.codes == nullptr) return make_status(StatusCode::kInvalidArgument, name, ".codes = null");
  if (c.scales == nullptr) return make_status(StatusCode::kInvalidArgument, name, ".scales = null");
  if (!aligned(c.scales, norm_bytes(codec.norm)))
    return make_status(StatusCode::kMisaligned, name, ".scales = ", static_cast<const void*>(c.scales),
                       ": not aligned to ", norm_bytes(codec.norm), " bytes");
  return Status::ok();
}

// A page pool side (K or V) that must be coded with `codec` (bits > 0).
[[nodiscard]] inline Status pages(const char* name, const void* pages, int64_t num_pages,
                                  const layout::PageLayout& l, bool value_side,
                                  const CodecSpec& codec) noexcept {
  if (pages == nullptr) return make_status(StatusCode::kInvalidArgument, name, ".pages = null");
  if (num_pages <= 0) return make_status(StatusCode::kInvalidArgument, name, ".num_pages = ", num_pages);
  if (l.page_size <= 0) return make_status(StatusCode::kInvalidArgument, name, ".layout.page_size = ", l.page_size);
  if (l.kv_heads <= 0) return make_status(StatusCode::kInvalidArgument, name, ".layout.kv_heads = ", l.kv_heads);
  if (!aligned(pages, layout::kAlignment))
    return make_status(StatusCode::kMisaligned, name, ".pages = ", pages, ": must be 16-byte aligned");
  const int64_t row = value_side ? l.value_row_bytes : l.key_row_bytes;
  const int64_t scale = value_side ? l.value_scale_bytes : l.key_scale_bytes;
  if (row != layout::code_bytes(codec.head_dim, codec.bits) || scale != norm_bytes(codec.norm))
    return make_status(StatusCode::kInvalidArgument, name, ".layout: ", value_side ? "value" : "key",
                       " rows of ", row, " bytes with ", scale, "-byte scales do not match head_dim = ",
                       codec.head_dim, ", bits = ", codec.bits);
  if (l.head_bytes % layout::kAlignment != 0 || l.page_bytes != l.head_bytes * l.kv_heads)
    return make_status(StatusCode::kInvalidArgument, name, ".layout.page_bytes = ", l.page_bytes,
                       ": not a layout from layout::page_layout()");
  return Status::ok();
}

// Exactly one of a dense array (codes / scales) and a page pool per call; `role` names the side
// ("destination" or "source"). Sets *dense to which one was given.
[[nodiscard]] inline Status dense_or_paged(const char* role, const void* codes, const void* scales,
                                           const void* pages, bool* dense) noexcept {
  const bool has_dense = codes != nullptr || scales != nullptr;
  const bool has_paged = pages != nullptr;
  if (has_dense == has_paged)
    return make_status(StatusCode::kInvalidArgument, role, ": give exactly one of dense (codes = ",
                       codes, ") and paged (pages = ", pages, ")");
  *dense = has_dense;
  return Status::ok();
}

// The host-side checks of writing `heads` heads per token into a page pool by slot (the slot
// values themselves are not read here: on a GPU they are device memory).
[[nodiscard]] inline Status paged_slots(const char* name, const PagedSlots& p, int32_t heads,
                                        const CodecSpec& codec) noexcept {
  TQ_RETURN_IF_ERROR(pages(name, p.pages, p.num_pages, p.layout, p.value_side, codec));
  if (p.slot_mapping == nullptr)
    return make_status(StatusCode::kInvalidArgument, name, ".slot_mapping = null");
  if (heads != p.layout.kv_heads)
    return make_status(StatusCode::kInvalidArgument, "input.dim1 = ", heads, " but ", name,
                       ".layout.kv_heads = ", p.layout.kv_heads);
  return Status::ok();
}

// The host-side checks of reading a page pool through a block table into `output`
// [num_seqs * max_tokens, kv_heads, head_dim] (block_table and seq_lens are not read here).
template <typename Pointer>
[[nodiscard]] Status paged_cache(const char* name, const PagedCache& p, bool value_side,
                                 int32_t max_tokens, const BasicView<Pointer>& output,
                                 const CodecSpec& codec) noexcept {
  TQ_RETURN_IF_ERROR(pages(name, p.pages, p.num_pages, p.layout, value_side, codec));
  if (p.block_table == nullptr) return make_status(StatusCode::kInvalidArgument, name, ".block_table = null");
  if (p.seq_lens == nullptr) return make_status(StatusCode::kInvalidArgument, name, ".seq_lens = null");
  if (p.num_seqs <= 0) return make_status(StatusCode::kInvalidArgument, name, ".num_seqs = ", p.num_seqs);
  if (output.dim1 != p.layout.kv_heads)
    return make_status(StatusCode::kInvalidArgument, "output.dim1 = ", output.dim1, " but ", name,
                       ".layout.kv_heads = ", p.layout.kv_heads);
  if (max_tokens <= 0 || output.dim0 != static_cast<int64_t>(p.num_seqs) * max_tokens)
    return make_status(StatusCode::kInvalidArgument, "output.dim0 = ", output.dim0,
                       " but num_seqs * max_tokens = ", p.num_seqs, " * ", max_tokens);
  return Status::ok();
}

// A scalar argument that must be finite and >= 0 (a softmax scale, a soft cap).
[[nodiscard]] inline Status finite_non_negative(const char* name, float v) noexcept {
  if (!std::isfinite(v) || v < 0.0f)
    return make_status(StatusCode::kInvalidArgument, name, " = ", v, ": must be finite and >= 0");
  return Status::ok();
}

// The cache's layout must be the one page_layout() gives for the format; names the first field
// that differs.
[[nodiscard]] inline Status cache_layout(const Format& f, const layout::PageLayout& l) noexcept {
  const layout::PageLayout e = layout::page_layout(f, l.page_size, l.kv_heads);
  struct Field {
    const char* name;
    int64_t got, expected;
  };
  const Field fields[] = {
      {"key_row_bytes", l.key_row_bytes, e.key_row_bytes},
      {"value_row_bytes", l.value_row_bytes, e.value_row_bytes},
      {"key_scale_bytes", l.key_scale_bytes, e.key_scale_bytes},
      {"value_scale_bytes", l.value_scale_bytes, e.value_scale_bytes},
      {"key_codes_offset", l.key_codes_offset, e.key_codes_offset},
      {"key_scales_offset", l.key_scales_offset, e.key_scales_offset},
      {"value_codes_offset", l.value_codes_offset, e.value_codes_offset},
      {"value_scales_offset", l.value_scales_offset, e.value_scales_offset},
      {"head_bytes", l.head_bytes, e.head_bytes},
      {"page_bytes", l.page_bytes, e.page_bytes},
  };
  for (const Field& fd : fields)
    if (fd.got != fd.expected)
      return make_status(StatusCode::kInvalidArgument, "cache.layout.", fd.name, " = ", fd.got,
                         " but layout::page_layout(format, page_size = ", l.page_size,
                         ", kv_heads = ", l.kv_heads, ").", fd.name, " = ", fd.expected);
  return Status::ok();
}

}  // namespace turboquant::checks
