// CPU reference for attention over the packed, paged K/V cache: a float64 oracle of the math in
// GUIDE section 2, against which the CUDA kernels are tested. Header-only, C++17, no CUDA.
//
//   scores(ScoresArgs)                   softmax_scale * q . k_hat_t for every cached key t
//   decode_attention(DecodeAttentionArgs) one decode step: one query per sequence attends to its
//                                        cached keys and values (GQA / MQA, sliding window, soft
//                                        cap, optional log-sum-exp)
//
// Math (d = head_dim, R_k and R_v the RHTs of format.key.signs and format.value.signs):
//   - The query is rotated once, in float64: rq = R_k q (skipped when pre_rotated: q is R_k q).
//   - A coded key (key.bits > 0) scores  dot_t = scale_t * sum_j rq_j * levels[idx_tj]  with the
//     stored scale (fp16 or fp32, as read back) and the float codebook levels widened to float64.
//     An uncompressed key (key.bits = 0, stored as format.raw_dtype) scores the plain q . k_t
//     (with pre_rotated, q = R_k^T rq is recovered first).
//   - logit_t = softmax_scale * dot_t; softmax_scale = 0 means 1 / sqrt(d).
//   - logit_softcap c > 0: logit_t = c * tanh(logit_t / c), after the scaling.
//   - sliding_window w > 0: the query sits at position len - 1 and attends to keys t with
//     t >= len - w (the last w keys); w = 0: every key.
//   - p_t = exp(logit_t - m) with m the largest attended logit; lse = m + log(sum_t p_t).
//   - Coded values (value.bits > 0) are summed in the rotated domain and un-rotated once:
//     out = R_v^T ( sum_t p_t * scale_t * levels[idx_t] / sum_t p_t ); uncompressed values give
//     the plain weighted sum. Everything is float64; outputs are rounded once at the end
//     (float64 -> float -> out.dtype, the rounding a kernel with fp32 accumulators makes).
//   - A sequence of length 0 has nothing to attend to: its output rows are all zeros and its lse
//     entries are -infinity (the log of an empty sum), which merges correctly with other
//     log-sum-exp partials.
//   - GQA / MQA: q_heads = q.dim1 is a multiple of kv_heads = cache.layout.kv_heads; query head h
//     reads KV head h / (q_heads / kv_heads).
//
// Validation: every argument, every block-table entry a sequence uses and every query value is
// checked before anything is written; on error the outputs are untouched and the Status names the
// argument and its value. Nothing here throws, prints or aborts.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "turboquant/checks.hpp"
#include "turboquant/format.hpp"
#include "turboquant/layout.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/packing.hpp"
#include "turboquant/quantize.hpp"
#include "turboquant/rht.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::cpu {

struct ScoresArgs {
  Format format{};
  ConstView q{};               // [num_seqs, q_heads, head_dim] f32 | f16 | bf16, not rotated
  PagedCache cache{};          // layout = layout::page_layout(format, page_size, kv_heads); K planes
  float* scores = nullptr;     // [num_seqs, q_heads, max_context] fp32, dense; entries with
                               // t >= seq_lens[s] are left untouched
  int32_t max_context = 0;     // > 0 and >= every seq_lens entry
  float softmax_scale = 0.0f;  // 0 means 1 / sqrt(head_dim); scores are scale * q . k_hat (no cap)
  bool pre_rotated = false;    // q already holds R_k q (rotated with format.key.signs)
};

struct DecodeAttentionArgs {
  Format format{};
  ConstView q{};               // [num_seqs, q_heads, head_dim] f32 | f16 | bf16, not rotated
  PagedCache cache{};          // layout = layout::page_layout(format, page_size, kv_heads)
  View out{};                  // [num_seqs, q_heads, head_dim] f32 | f16 | bf16
  float* lse = nullptr;        // optional [num_seqs, q_heads]: natural-log log-sum-exp of the
                               // scaled, soft-capped logits; -infinity for a length-0 sequence
  float softmax_scale = 0.0f;  // 0 means 1 / sqrt(head_dim)
  int32_t sliding_window = 0;  // 0 = off; w > 0: attend to keys t >= seq_len - w
  float logit_softcap = 0.0f;  // 0 = off; c > 0: logit = c * tanh(logit / c) after scaling
  bool pre_rotated = false;    // q already holds R_k q (rotated with format.key.signs)
};

namespace detail {

// Shapes of a validated attention call.
struct AttentionShape {
  int32_t num_seqs = 0;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t group = 0;  // q_heads / kv_heads
  int32_t head_dim = 0;
};

[[nodiscard]] inline Status check_format(const Format& f) noexcept {
  const Status st = validate(f);
  if (!st.is_ok()) return make_status(st.code(), "format.", st.message());
  return Status::ok();
}


// The page pool, block table and sequence lengths. `max_context` > 0 also bounds the lengths.
[[nodiscard]] inline Status check_cache(const Format& f, const PagedCache& c,
                                        int32_t max_context) noexcept {
  const layout::PageLayout& l = c.layout;
  if (c.pages == nullptr) return make_status(StatusCode::kInvalidArgument, "cache.pages = null");
  if (c.num_pages <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.num_pages = ", c.num_pages, ": must be > 0");
  if (l.page_size <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.layout.page_size = ", l.page_size,
                       ": must be > 0");
  if (l.kv_heads <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.layout.kv_heads = ", l.kv_heads,
                       ": must be > 0");
  if (!checks::aligned(c.pages, layout::kAlignment))
    return make_status(StatusCode::kMisaligned, "cache.pages = ", c.pages, ": must be ",
                       layout::kAlignment, "-byte aligned");
  TQ_RETURN_IF_ERROR(checks::cache_layout(f, l));
  if (c.block_table == nullptr)
    return make_status(StatusCode::kInvalidArgument, "cache.block_table = null");
  if (c.seq_lens == nullptr) return make_status(StatusCode::kInvalidArgument, "cache.seq_lens = null");
  if (c.num_seqs <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.num_seqs = ", c.num_seqs, ": must be > 0");
  if (c.max_pages_per_seq <= 0)
    return make_status(StatusCode::kInvalidArgument, "cache.max_pages_per_seq = ",
                       c.max_pages_per_seq, ": must be > 0");
  const int64_t capacity = static_cast<int64_t>(c.max_pages_per_seq) * l.page_size;
  for (int32_t s = 0; s < c.num_seqs; ++s) {
    const int32_t len = c.seq_lens[s];
    if (len < 0)
      return make_status(StatusCode::kOutOfRange, "cache.seq_lens[", s, "] = ", len, ": negative");
    if (len > capacity)
      return make_status(StatusCode::kOutOfRange, "cache.seq_lens[", s, "] = ", len,
                         ": beyond max_pages_per_seq * page_size = ", c.max_pages_per_seq, " * ",
                         l.page_size, " = ", capacity);
    if (max_context > 0 && len > max_context)
      return make_status(StatusCode::kOutOfRange, "cache.seq_lens[", s, "] = ", len,
                         ": beyond max_context = ", max_context);
    for (int32_t i = 0; static_cast<int64_t>(i) * l.page_size < len; ++i) {
      const int32_t page = c.block_table[static_cast<int64_t>(s) * c.max_pages_per_seq + i];
      if (page < 0 || page >= c.num_pages)
        return make_status(StatusCode::kOutOfRange, "cache.block_table[", s, "][", i, "] = ", page,
                           ": the pool has ", c.num_pages, " pages (cache.num_pages)");
    }
  }
  return Status::ok();
}

// The q view and its shape against the cache.
[[nodiscard]] inline Status check_queries(const Format& f, const ConstView& q, const PagedCache& c,
                                          AttentionShape* shape) noexcept {
  const int32_t d = f.head_dim();
  TQ_RETURN_IF_ERROR(checks::vectors("q", q, d));
  if (q.dim0 != c.num_seqs)
    return make_status(StatusCode::kInvalidArgument, "q.dim0 = ", q.dim0,
                       " but cache.num_seqs = ", c.num_seqs);
  if (q.dim1 % c.layout.kv_heads != 0)
    return make_status(StatusCode::kInvalidArgument, "q_heads = q.dim1 = ", q.dim1,
                       ": not a multiple of kv_heads = cache.layout.kv_heads = ", c.layout.kv_heads);
  shape->num_seqs = c.num_seqs;
  shape->q_heads = q.dim1;
  shape->kv_heads = c.layout.kv_heads;
  shape->group = q.dim1 / c.layout.kv_heads;
  shape->head_dim = d;
  return Status::ok();
}

// Every query value must be finite (checked last: shape errors are reported first).
[[nodiscard]] inline Status check_query_values(const ConstView& q) noexcept {
  for (int64_t s = 0; s < q.dim0; ++s)
    for (int32_t h = 0; h < q.dim1; ++h)
      for (int32_t j = 0; j < q.head_dim; ++j) {
        const float v = load_as_float(q.data, q.offset(s, h) + j, q.dtype);
        if (!std::isfinite(v))
          return make_status(StatusCode::kNonFinite, "q[", s, "][", h, "][", j, "] = ", v);
      }
  return Status::ok();
}

// The query of (s, h) in the key domain, float64: R_k q for coded keys, q for raw keys.
inline void load_query(const Format& f, const ConstView& q, int64_t s, int32_t h, bool pre_rotated,
                       double* x) noexcept {
  const int32_t d = f.head_dim();
  for (int32_t j = 0; j < d; ++j) x[j] = static_cast<double>(load_as_float(q.data, q.offset(s, h) + j, q.dtype));
  if (f.key.bits > 0 && !pre_rotated) rht_forward(x, d, f.key.signs);
  if (f.key.bits == 0 && pre_rotated) rht_inverse(x, d, f.key.signs);
}

// Base address of the page holding token t of sequence s, and the token's row in it.
inline const uint8_t* token_page(const PagedCache& c, int32_t s, int32_t t, int32_t* row) noexcept {
  const layout::PageLayout& l = c.layout;
  const int32_t page = c.block_table[static_cast<int64_t>(s) * c.max_pages_per_seq + t / l.page_size];
  *row = t % l.page_size;
  return static_cast<const uint8_t*>(c.pages) + static_cast<int64_t>(page) * l.page_bytes;
}

// q . k_hat of one cached key (x from load_query), float64.
inline double key_dot(const Format& f, const layout::PageLayout& l, const uint8_t* page, int32_t row,
                      int32_t kv_head, const double* x) noexcept {
  const int32_t d = f.head_dim();
  const uint8_t* codes = page + layout::codes_offset(l, false, kv_head, row);
  double dot = 0.0;
  if (f.key.bits == 0) {
    for (int32_t j = 0; j < d; ++j) dot += x[j] * static_cast<double>(load_as_float(codes, j, f.raw_dtype));
    return dot;
  }
  for (int32_t j = 0; j < d; ++j)
    dot += x[j] * static_cast<double>(f.key.codebook.levels[unpack_index(codes, j, f.key.bits)]);
  const double scale = read_scale(f.key.norm, page + layout::scales_offset(l, false, kv_head, row), 0);
  return scale * dot;
}

// acc += w * v_hat in the value domain (rotated for coded values, plain for raw ones).
inline void accumulate_value(const Format& f, const layout::PageLayout& l, const uint8_t* page,
                             int32_t row, int32_t kv_head, double w, double* acc) noexcept {
  const int32_t d = f.head_dim();
  const uint8_t* codes = page + layout::codes_offset(l, true, kv_head, row);
  if (f.value.bits == 0) {
    for (int32_t j = 0; j < d; ++j) acc[j] += w * static_cast<double>(load_as_float(codes, j, f.raw_dtype));
    return;
  }
  const double scale = read_scale(f.value.norm, page + layout::scales_offset(l, true, kv_head, row), 0);
  const double ws = w * scale;
  for (int32_t j = 0; j < d; ++j)
    acc[j] += ws * static_cast<double>(f.value.codebook.levels[unpack_index(codes, j, f.value.bits)]);
}

[[nodiscard]] inline double resolve_softmax_scale(float softmax_scale, int32_t head_dim) noexcept {
  return softmax_scale == 0.0f ? 1.0 / std::sqrt(static_cast<double>(head_dim))
                               : static_cast<double>(softmax_scale);
}

}  // namespace detail

// Scores of every query against every cached key, straight from the packed pages:
// scores[s][h][t] = softmax_scale * q[s][h] . k_hat[s][t][h / group] for t < seq_lens[s]
// (raw: no soft cap, no window, no softmax). Entries t >= seq_lens[s] are left untouched.
[[nodiscard]] inline Status scores(const ScoresArgs& a) noexcept {
  TQ_RETURN_IF_ERROR(detail::check_format(a.format));
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("softmax_scale", a.softmax_scale));
  if (a.scores == nullptr) return make_status(StatusCode::kInvalidArgument, "scores = null");
  if (!checks::aligned(a.scores, sizeof(float)))
    return make_status(StatusCode::kMisaligned, "scores = ", static_cast<const void*>(a.scores),
                       ": not aligned to 4-byte floats");
  if (a.max_context <= 0)
    return make_status(StatusCode::kInvalidArgument, "max_context = ", a.max_context, ": must be > 0");
  TQ_RETURN_IF_ERROR(detail::check_cache(a.format, a.cache, a.max_context));
  detail::AttentionShape sh;
  TQ_RETURN_IF_ERROR(detail::check_queries(a.format, a.q, a.cache, &sh));
  TQ_RETURN_IF_ERROR(detail::check_query_values(a.q));

  const double scale = detail::resolve_softmax_scale(a.softmax_scale, sh.head_dim);
  double x[kMaxHeadDim];
  for (int32_t s = 0; s < sh.num_seqs; ++s) {
    const int32_t len = a.cache.seq_lens[s];
    for (int32_t h = 0; h < sh.q_heads; ++h) {
      const int32_t kv = h / sh.group;
      detail::load_query(a.format, a.q, s, h, a.pre_rotated, x);
      float* row_out = a.scores + (static_cast<int64_t>(s) * sh.q_heads + h) * a.max_context;
      for (int32_t t = 0; t < len; ++t) {
        int32_t row = 0;
        const uint8_t* page = detail::token_page(a.cache, s, t, &row);
        row_out[t] = static_cast<float>(scale * detail::key_dot(a.format, a.cache.layout, page, row, kv, x));
      }
    }
  }
  return Status::ok();
}

// One decode step: out[s][h] = sum_t softmax(logits)_t v_hat[s][t][h / group] over the attended
// keys of sequence s (see the top of this file for the logits, window and soft cap). A
// sequence of length 0 gets an all-zero output row and lse = -infinity.
[[nodiscard]] inline Status decode_attention(const DecodeAttentionArgs& a) noexcept {
  TQ_RETURN_IF_ERROR(detail::check_format(a.format));
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("softmax_scale", a.softmax_scale));
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("logit_softcap", a.logit_softcap));
  if (a.sliding_window < 0)
    return make_status(StatusCode::kInvalidArgument, "sliding_window = ", a.sliding_window,
                       ": must be >= 0 (0 = off)");
  if (a.lse != nullptr && !checks::aligned(a.lse, sizeof(float)))
    return make_status(StatusCode::kMisaligned, "lse = ", static_cast<const void*>(a.lse),
                       ": not aligned to 4-byte floats");
  TQ_RETURN_IF_ERROR(detail::check_cache(a.format, a.cache, 0));
  detail::AttentionShape sh;
  TQ_RETURN_IF_ERROR(detail::check_queries(a.format, a.q, a.cache, &sh));
  TQ_RETURN_IF_ERROR(checks::vectors("out", a.out, a.format.head_dim()));
  if (a.out.dim0 != a.cache.num_seqs)
    return make_status(StatusCode::kInvalidArgument, "out.dim0 = ", a.out.dim0,
                       " but cache.num_seqs = ", a.cache.num_seqs);
  if (a.out.dim1 != sh.q_heads)
    return make_status(StatusCode::kInvalidArgument, "out.dim1 = ", a.out.dim1,
                       " but q.dim1 (q_heads) = ", sh.q_heads);
  TQ_RETURN_IF_ERROR(detail::check_query_values(a.q));

  const Format& f = a.format;
  const layout::PageLayout& l = a.cache.layout;
  const int32_t d = sh.head_dim;
  const double scale = detail::resolve_softmax_scale(a.softmax_scale, d);
  const double cap = static_cast<double>(a.logit_softcap);
  double x[kMaxHeadDim];
  double acc[kMaxHeadDim];
  for (int32_t s = 0; s < sh.num_seqs; ++s) {
    const int32_t len = a.cache.seq_lens[s];
    const int32_t first = (a.sliding_window > 0 && len > a.sliding_window) ? len - a.sliding_window : 0;
    for (int32_t h = 0; h < sh.q_heads; ++h) {
      const int32_t kv = h / sh.group;
      const int64_t out_at = a.out.offset(s, h);
      float* lse_at = a.lse == nullptr ? nullptr : a.lse + static_cast<int64_t>(s) * sh.q_heads + h;
      if (len == 0) {
        for (int32_t j = 0; j < d; ++j) store_from_float(a.out.data, out_at + j, a.out.dtype, 0.0f);
        if (lse_at != nullptr) *lse_at = -std::numeric_limits<float>::infinity();
        continue;
      }
      detail::load_query(f, a.q, s, h, a.pre_rotated, x);
      // Pass 1: the logits' maximum.
      double m = -std::numeric_limits<double>::infinity();
      auto logit = [&](int32_t t) noexcept {
        int32_t row = 0;
        const uint8_t* page = detail::token_page(a.cache, s, t, &row);
        double z = scale * detail::key_dot(f, l, page, row, kv, x);
        if (cap > 0.0) z = cap * std::tanh(z / cap);
        return z;
      };
      for (int32_t t = first; t < len; ++t) m = std::fmax(m, logit(t));
      // Pass 2: weights and the weighted value sum.
      double denom = 0.0;
      for (int32_t j = 0; j < d; ++j) acc[j] = 0.0;
      for (int32_t t = first; t < len; ++t) {
        const double p = std::exp(logit(t) - m);
        denom += p;
        int32_t row = 0;
        const uint8_t* page = detail::token_page(a.cache, s, t, &row);
        detail::accumulate_value(f, l, page, row, kv, p, acc);
      }
      for (int32_t j = 0; j < d; ++j) acc[j] /= denom;
      if (f.value.bits > 0) rht_inverse(acc, d, f.value.signs);
      for (int32_t j = 0; j < d; ++j)
        store_from_float(a.out.data, out_at + j, a.out.dtype, static_cast<float>(acc[j]));
      if (lse_at != nullptr) *lse_at = static_cast<float>(m + std::log(denom));
    }
  }
  return Status::ok();
}

}  // namespace turboquant::cpu
