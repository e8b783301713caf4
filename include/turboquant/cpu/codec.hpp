// CPU reference codec: encode and decode of vectors, dense or paged. The CUDA kernels are tested
// against these functions. Every function checks all of its arguments (and, for encode, every
// input value) before it writes anything: on error the outputs are untouched.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "turboquant/checks.hpp"
#include "turboquant/format.hpp"
#include "turboquant/layout.hpp"
#include "turboquant/packing.hpp"
#include "turboquant/quantize.hpp"
#include "turboquant/rht.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::cpu {

struct EncodeArgs {
  CodecSpec codec{};
  ConstView input{};       // [tokens, heads, head_dim], f32 | f16 | bf16
  DenseCodes dense{};      // either: codes [tokens * heads, code_bytes], scales [tokens * heads]
  PagedSlots paged{};      // or: page pool side + slot_mapping [tokens]
};

struct DecodeArgs {
  CodecSpec codec{};
  ConstDenseCodes dense{};  // either: codes [rows, code_bytes], scales [rows]; output [rows, 1, d]
  PagedCache paged{};       // or: block table; output [num_seqs * max_tokens, heads, head_dim]
  bool value_side = false;  // paged only: read the V planes (else K)
  int32_t max_tokens = 0;   // paged only: output rows per sequence (>= every seq_lens entry)
  View output{};            // rows past a sequence's length are left untouched
};

namespace detail {

// Encodes one vector x (float, head_dim values) into codes + scale.
inline void encode_vector(const CodecSpec& c, float* x, uint8_t* codes, void* scales,
                          int64_t scale_index) noexcept {
  uint8_t idx[kMaxHeadDim];
  rht_forward(x, c.head_dim, c.signs);
  const float s = quantize_rotated(c, x, idx);
  pack_indices(idx, c.head_dim, c.bits, codes);
  write_scale(c.norm, scales, scale_index, s);
}

// Decodes codes + scale into x (float, head_dim values).
inline void decode_vector(const CodecSpec& c, const uint8_t* codes, float scale, float* x) noexcept {
  for (int32_t j = 0; j < c.head_dim; ++j) x[j] = scale * c.codebook.levels[unpack_index(codes, j, c.bits)];
  rht_inverse(x, c.head_dim, c.signs);
}

inline Status check_slots(const PagedSlots& p, int64_t tokens, int32_t heads,
                          const CodecSpec& c) noexcept {
  TQ_RETURN_IF_ERROR(checks::paged_slots("paged", p, heads, c));
  const int64_t slots = p.num_pages * p.layout.page_size;
  for (int64_t t = 0; t < tokens; ++t)
    if (p.slot_mapping[t] >= slots)
      return make_status(StatusCode::kOutOfRange, "paged.slot_mapping[", t, "] = ", p.slot_mapping[t],
                         ": the pool has ", slots, " slots");
  return Status::ok();
}

}  // namespace detail

[[nodiscard]] inline Status encode(const EncodeArgs& a) noexcept {
  const CodecSpec& c = a.codec;
  TQ_RETURN_IF_ERROR(validate(c));
  TQ_RETURN_IF_ERROR(checks::vectors("input", a.input, c.head_dim));
  bool dense = false;
  TQ_RETURN_IF_ERROR(checks::dense_or_paged("destination", a.dense.codes, a.dense.scales, a.paged.pages, &dense));
  if (dense) TQ_RETURN_IF_ERROR(checks::dense_codes("dense", a.dense, c));
  if (!dense) TQ_RETURN_IF_ERROR(detail::check_slots(a.paged, a.input.dim0, a.input.dim1, c));
  // Scan every value first, so a bad row leaves every output untouched.
  for (int64_t t = 0; t < a.input.dim0; ++t)
    for (int32_t h = 0; h < a.input.dim1; ++h)
      for (int32_t j = 0; j < c.head_dim; ++j) {
        const float v = load_as_float(a.input.data, a.input.offset(t, h) + j, a.input.dtype);
        if (!std::isfinite(v))
          return make_status(StatusCode::kNonFinite, "input[", t, "][", h, "][", j, "] = ", v);
      }
  const int64_t cb = c.code_bytes();
  const layout::PageLayout& l = a.paged.layout;
  float x[kMaxHeadDim];
  for (int64_t t = 0; t < a.input.dim0; ++t) {
    for (int32_t h = 0; h < a.input.dim1; ++h) {
      for (int32_t j = 0; j < c.head_dim; ++j)
        x[j] = load_as_float(a.input.data, a.input.offset(t, h) + j, a.input.dtype);
      if (dense) {
        const int64_t r = t * a.input.dim1 + h;
        detail::encode_vector(c, x, a.dense.codes + r * cb, a.dense.scales, r);
      } else {
        const int64_t slot = a.paged.slot_mapping[t];
        if (slot < 0) continue;
        auto* page = static_cast<uint8_t*>(a.paged.pages) + (slot / l.page_size) * l.page_bytes;
        const auto row = static_cast<int32_t>(slot % l.page_size);
        detail::encode_vector(c, x, page + layout::codes_offset(l, a.paged.value_side, h, row),
                              page + layout::scales_offset(l, a.paged.value_side, h, row), 0);
      }
    }
  }
  return Status::ok();
}

[[nodiscard]] inline Status decode(const DecodeArgs& a) noexcept {
  const CodecSpec& c = a.codec;
  TQ_RETURN_IF_ERROR(validate(c));
  bool dense = false;
  TQ_RETURN_IF_ERROR(checks::dense_or_paged("source", a.dense.codes, a.dense.scales, a.paged.pages, &dense));
  TQ_RETURN_IF_ERROR(checks::vectors("output", a.output, c.head_dim));
  const int64_t cb = c.code_bytes();
  float x[kMaxHeadDim];
  if (dense) {
    TQ_RETURN_IF_ERROR(checks::dense_codes("dense", a.dense, c));
    for (int64_t t = 0; t < a.output.dim0; ++t)
      for (int32_t h = 0; h < a.output.dim1; ++h) {
        const int64_t r = t * a.output.dim1 + h;
        detail::decode_vector(c, a.dense.codes + r * cb, read_scale(c.norm, a.dense.scales, r), x);
        for (int32_t j = 0; j < c.head_dim; ++j)
          store_from_float(a.output.data, a.output.offset(t, h) + j, a.output.dtype, x[j]);
      }
    return Status::ok();
  }
  const PagedCache& p = a.paged;
  const layout::PageLayout& l = p.layout;
  TQ_RETURN_IF_ERROR(checks::paged_cache("paged", p, a.value_side, a.max_tokens, a.output, c));
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int32_t len = p.seq_lens[s];
    if (len < 0 || len > a.max_tokens ||
        static_cast<int64_t>(len) > static_cast<int64_t>(p.max_pages_per_seq) * l.page_size)
      return make_status(StatusCode::kOutOfRange, "paged.seq_lens[", s, "] = ", len,
                         ": beyond max_tokens = ", a.max_tokens, " or the ", p.max_pages_per_seq, " pages given");
    for (int32_t i = 0; i * l.page_size < len; ++i) {
      const int32_t page = p.block_table[static_cast<int64_t>(s) * p.max_pages_per_seq + i];
      if (page < 0 || page >= p.num_pages)
        return make_status(StatusCode::kOutOfRange, "paged.block_table[", s, "][", i, "] = ", page,
                           ": the pool has ", p.num_pages, " pages");
    }
  }
  for (int32_t s = 0; s < p.num_seqs; ++s)
    for (int32_t t = 0; t < p.seq_lens[s]; ++t) {
      const int32_t page = p.block_table[static_cast<int64_t>(s) * p.max_pages_per_seq + t / l.page_size];
      const auto* base = static_cast<const uint8_t*>(p.pages) + page * l.page_bytes;
      const int32_t row = t % l.page_size;
      for (int32_t h = 0; h < l.kv_heads; ++h) {
        const float scale = read_scale(c.norm, base + layout::scales_offset(l, a.value_side, h, row), 0);
        detail::decode_vector(c, base + layout::codes_offset(l, a.value_side, h, row), scale, x);
        const int64_t out_row = static_cast<int64_t>(s) * a.max_tokens + t;
        for (int32_t j = 0; j < c.head_dim; ++j)
          store_from_float(a.output.data, a.output.offset(out_row, h) + j, a.output.dtype, x[j]);
      }
    }
  return Status::ok();
}

// Rotates rows in place (forward: y = R x; inverse: x = R^T y), for pre-rotating queries and
// un-rotating attention outputs.
[[nodiscard]] inline Status rotate(const SignBits& signs, View rows, bool inverse) noexcept {
  TQ_RETURN_IF_ERROR(checks::vectors("rows", rows, rows.head_dim));
  if (!is_supported_head_dim(rows.head_dim))
    return make_status(StatusCode::kUnsupportedFormat, "rows.head_dim = ", rows.head_dim,
                       ": supported are 64, 128, 256");
  float x[kMaxHeadDim];
  for (int64_t t = 0; t < rows.dim0; ++t)
    for (int32_t h = 0; h < rows.dim1; ++h) {
      const int64_t o = rows.offset(t, h);
      for (int32_t j = 0; j < rows.head_dim; ++j) x[j] = load_as_float(rows.data, o + j, rows.dtype);
      if (inverse) rht_inverse(x, rows.head_dim, signs); else rht_forward(x, rows.head_dim, signs);
      for (int32_t j = 0; j < rows.head_dim; ++j) store_from_float(rows.data, o + j, rows.dtype, x[j]);
    }
  return Status::ok();
}

}  // namespace turboquant::cpu
