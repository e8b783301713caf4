// The byte layout contract, shared by the CPU path and the kernels. Every size and offset of a
// compressed vector, a dense array of them, and a cache page comes from the constexpr functions
// here; the static_asserts at the bottom and test_layout lock them.
//
// A coded vector (CodecSpec c) is two parts:
//   codes: c.head_dim * c.bits / 8 bytes, the indices as an LSB-first bit stream (packing.hpp);
//   scale: one fp16 or fp32 (c.norm), the scale chosen by c.scale (format.hpp).
// Dense arrays keep them in two planes: codes [N, code_bytes] and scales [N].
//
// A page holds page_size tokens of every KV head of one layer. Per KV head, four planes, each
// starting on a 16-byte boundary so that 16-byte vector loads stay aligned:
//
//   page p, head h:  base + p * page_bytes + h * head_bytes
//     + key_codes_offset    [page_size][key_row_bytes]     K codes (or raw K when key.bits = 0)
//     + key_scales_offset   [page_size] fp16|fp32          K scales (absent when key.bits = 0)
//     + value_codes_offset  [page_size][value_row_bytes]   V codes (or raw V when value.bits = 0)
//     + value_scales_offset [page_size] fp16|fp32          V scales (absent when value.bits = 0)
//
// Token t of a sequence lives in page block_table[t / page_size], row t % page_size; an engine's
// slot number is page * page_size + row.
#pragma once

#include <cstdint>

#include "turboquant/format.hpp"

namespace turboquant::layout {

inline constexpr int64_t kAlignment = 16;  // bytes; one 16-byte vector load

[[nodiscard]] constexpr int64_t align_up(int64_t bytes, int64_t alignment = kAlignment) noexcept {
  return (bytes + alignment - 1) / alignment * alignment;
}

// Bytes of the packed indices of one vector.
[[nodiscard]] constexpr int64_t code_bytes(int32_t head_dim, int32_t bits) noexcept {
  return static_cast<int64_t>(head_dim) * bits / 8;
}
// Bytes of one coded vector (codes + scale), as a dense record would hold it.
[[nodiscard]] constexpr int64_t record_bytes(int32_t head_dim, int32_t bits, NormStorage norm) noexcept {
  return code_bytes(head_dim, bits) + norm_bytes(norm);
}
// Bytes one side (K or V) of one token of one head takes in a page row: codes, or raw values.
[[nodiscard]] constexpr int64_t row_bytes(const CodecSpec& c, DType raw_dtype) noexcept {
  return c.bits == 0 ? static_cast<int64_t>(c.head_dim) * dtype_bytes(raw_dtype)
                     : code_bytes(c.head_dim, c.bits);
}
[[nodiscard]] constexpr int64_t scale_bytes(const CodecSpec& c) noexcept {
  return c.bits == 0 ? 0 : norm_bytes(c.norm);
}

struct PageLayout {
  int32_t page_size = 0;            // tokens per page
  int32_t kv_heads = 0;             // heads per page
  int64_t key_row_bytes = 0;        // bytes of one token's K in one head
  int64_t value_row_bytes = 0;
  int64_t key_scale_bytes = 0;      // 0, 2 or 4
  int64_t value_scale_bytes = 0;
  int64_t key_codes_offset = 0;     // offsets inside one head's block
  int64_t key_scales_offset = 0;
  int64_t value_codes_offset = 0;
  int64_t value_scales_offset = 0;
  int64_t head_bytes = 0;           // one head's block
  int64_t page_bytes = 0;           // kv_heads * head_bytes

  // Bytes of one token (all heads, K and V) as stored, without page padding.
  [[nodiscard]] constexpr int64_t token_bytes() const noexcept {
    return kv_heads * (key_row_bytes + value_row_bytes + key_scale_bytes + value_scale_bytes);
  }
};

[[nodiscard]] constexpr PageLayout page_layout(const Format& f, int32_t page_size,
                                               int32_t kv_heads) noexcept {
  PageLayout p{};
  p.page_size = page_size;
  p.kv_heads = kv_heads;
  p.key_row_bytes = row_bytes(f.key, f.raw_dtype);
  p.value_row_bytes = row_bytes(f.value, f.raw_dtype);
  p.key_scale_bytes = scale_bytes(f.key);
  p.value_scale_bytes = scale_bytes(f.value);
  int64_t at = 0;
  p.key_codes_offset = at;
  at = align_up(at + page_size * p.key_row_bytes);
  p.key_scales_offset = at;
  at = align_up(at + page_size * p.key_scale_bytes);
  p.value_codes_offset = at;
  at = align_up(at + page_size * p.value_row_bytes);
  p.value_scales_offset = at;
  at = align_up(at + page_size * p.value_scale_bytes);
  p.head_bytes = at;
  p.page_bytes = at * kv_heads;
  return p;
}

// Offset of K or V codes (or raw values) of row `row` of head `head` inside a page.
[[nodiscard]] constexpr int64_t codes_offset(const PageLayout& p, bool value_side, int32_t head,
                                             int32_t row) noexcept {
  return head * p.head_bytes + (value_side ? p.value_codes_offset + row * p.value_row_bytes
                                           : p.key_codes_offset + row * p.key_row_bytes);
}
[[nodiscard]] constexpr int64_t scales_offset(const PageLayout& p, bool value_side, int32_t head,
                                              int32_t row) noexcept {
  return head * p.head_bytes + (value_side ? p.value_scales_offset + row * p.value_scale_bytes
                                           : p.key_scales_offset + row * p.key_scale_bytes);
}

// ---- the contract, locked --------------------------------------------------------------------
static_assert(code_bytes(128, 4) == 64 && code_bytes(128, 3) == 48 && code_bytes(128, 2) == 32);
static_assert(code_bytes(64, 3) == 24 && code_bytes(256, 3) == 96 && code_bytes(64, 1) == 8);
static_assert(record_bytes(128, 4, NormStorage::kF16) == 66);
static_assert(record_bytes(128, 4, NormStorage::kF32) == 68);
static_assert(align_up(0) == 0 && align_up(1) == 16 && align_up(16) == 16 && align_up(17) == 32);
namespace detail {
constexpr Format k4v4_d128() noexcept {
  Format f{};
  f.key.head_dim = f.value.head_dim = 128;
  f.key.bits = f.value.bits = 4;
  f.key.norm = f.value.norm = NormStorage::kF16;
  return f;
}
constexpr Format k3_raw_d64() noexcept {
  Format f{};
  f.key.head_dim = f.value.head_dim = 64;
  f.key.bits = 3;
  f.value.bits = 0;
  f.key.norm = NormStorage::kF32;
  return f;
}
}  // namespace detail
// d = 128, K4V4, fp16 scales, 16 tokens: 1024 + 32 + 1024 + 32 bytes per head.
static_assert(page_layout(detail::k4v4_d128(), 16, 8).head_bytes == 2112);
static_assert(page_layout(detail::k4v4_d128(), 16, 8).value_codes_offset == 1056);
static_assert(page_layout(detail::k4v4_d128(), 16, 8).page_bytes == 8 * 2112);
static_assert(page_layout(detail::k4v4_d128(), 16, 8).token_bytes() == 8 * 132);
// d = 64, K3 fp32 scales, raw fp16 V, 5 tokens: 120 -> 128, 20 -> 32, 640, 0.
static_assert(page_layout(detail::k3_raw_d64(), 5, 1).key_scales_offset == 128);
static_assert(page_layout(detail::k3_raw_d64(), 5, 1).value_codes_offset == 160);
static_assert(page_layout(detail::k3_raw_d64(), 5, 1).head_bytes == 800);

}  // namespace turboquant::layout
