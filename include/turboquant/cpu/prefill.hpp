// CPU float64 reference of the chunked-prefill attention and of the attention-state merge
// (semantics: turboquant/prefill.hpp). Header-only, C++17, no CUDA. The CUDA op
// (turboquant/cuda/prefill.hpp) is tested against these functions.
//
//   prefill_attention(PrefillAttentionArgs)         a chunk of queries per sequence over its
//                                                    cached prefix (+ the chunk, kFresh)
//   merge_attention_states(MergeAttentionStatesArgs) (out_a, lse_a) + (out_b, lse_b) -> (out, lse)
//
// Math of prefill_attention (as cpu::decode_attention, turboquant/cpu/attention.hpp): coded cached
// keys score scale_t * (R_k q) . levels in float64; raw (bits = 0) cached keys and the chunk's own
// keys (kFresh) score the plain q . k; coded cached values are summed in the rotated domain and
// un-rotated once (R_v^T), raw cached values and the chunk's values are summed as given; the sum
// is divided by the softmax denominator and rounded once (float64 -> float -> out.dtype).
//
// Validation: every argument, query_start entry, sequence length, block-table entry a sequence
// uses and every query (and chunk K/V) value is checked before anything is written; on error the
// outputs are untouched and the Status names the argument and its value. Nothing here throws,
// prints or aborts. The CPU reference also rejects what the CUDA op cannot see on the host:
// kAppended with seq_lens[s] < n_s (kOutOfRange).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "turboquant/checks.hpp"
#include "turboquant/cpu/attention.hpp"
#include "turboquant/format.hpp"
#include "turboquant/layout.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/prefill.hpp"
#include "turboquant/rht.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::cpu {

struct PrefillAttentionArgs {
  Format format{};
  PrefillOrder order = PrefillOrder::kAppended;
  ConstView q{};                          // [total_tokens, q_heads, head_dim] f32 | f16 | bf16, not rotated
  const int32_t* query_start = nullptr;   // [cache.num_seqs + 1]: 0, ..., total_tokens = q.dim0, non-decreasing
  int32_t max_query_len = 0;              // >= every n_s = query_start[s + 1] - query_start[s], > 0
  PagedCache cache{};                     // layout = layout::page_layout(format, page_size, kv_heads)
  ConstView chunk_keys{};                 // kFresh only: [total_tokens, kv_heads, head_dim] f32 | f16 | bf16
  ConstView chunk_values{};               // kFresh only: same shape (ignored in kAppended)
  View out{};                             // [total_tokens, q_heads, head_dim] f32 | f16 | bf16
  float* lse = nullptr;                   // optional [total_tokens, q_heads] dense, natural log
  float softmax_scale = 0.0f;             // 0 means 1 / sqrt(head_dim)
  int32_t sliding_window = 0;             // 0 = off; w > 0: query at pos attends keys t > pos - w
  float logit_softcap = 0.0f;             // 0 = off; c > 0: logit = c * tanh(logit / c) after scaling
};

struct MergeAttentionStatesArgs {
  ConstView out_a{};           // [rows, heads, head_dim] f32 | f16 | bf16
  const float* lse_a = nullptr;  // [rows, heads] dense, natural log; -infinity = empty
  ConstView out_b{};           // same shape as out_a (any of the three dtypes)
  const float* lse_b = nullptr;
  View out{};                  // same shape; may be out_a or out_b (in place)
  float* lse = nullptr;        // optional [rows, heads]; may be lse_a or lse_b
};

namespace detail {

// The query layout: query_start against q and the cache; *max_n receives the largest n_s.
[[nodiscard]] inline Status check_query_start(const int32_t* query_start, int32_t num_seqs, int64_t total_tokens,
                                              int32_t max_query_len) noexcept {
  if (query_start == nullptr) return make_status(StatusCode::kInvalidArgument, "query_start = null");
  if (max_query_len <= 0)
    return make_status(StatusCode::kInvalidArgument, "max_query_len = ", max_query_len, ": must be > 0");
  if (query_start[0] != 0)
    return make_status(StatusCode::kInvalidArgument, "query_start[0] = ", query_start[0], ": must be 0");
  for (int32_t s = 0; s < num_seqs; ++s) {
    const int64_t n = static_cast<int64_t>(query_start[s + 1]) - query_start[s];
    if (n < 0)
      return make_status(StatusCode::kInvalidArgument, "query_start[", s + 1, "] = ", query_start[s + 1],
                         " < query_start[", s, "] = ", query_start[s]);
    if (n > max_query_len)
      return make_status(StatusCode::kInvalidArgument, "query_start[", s + 1, "] - query_start[", s, "] = ", n,
                         ": beyond max_query_len = ", max_query_len);
  }
  if (query_start[num_seqs] != total_tokens)
    return make_status(StatusCode::kInvalidArgument, "query_start[", num_seqs, "] = ", query_start[num_seqs],
                       " but q.dim0 (total_tokens) = ", total_tokens);
  return Status::ok();
}

// Every value of a [dim0, dim1, head_dim] view must be finite.
[[nodiscard]] inline Status check_view_values(const char* name, const ConstView& v) noexcept {
  for (int64_t s = 0; s < v.dim0; ++s)
    for (int32_t h = 0; h < v.dim1; ++h)
      for (int32_t j = 0; j < v.head_dim; ++j) {
        const float x = load_as_float(v.data, v.offset(s, h) + j, v.dtype);
        if (!std::isfinite(x)) return make_status(StatusCode::kNonFinite, name, "[", s, "][", h, "][", j, "] = ", x);
      }
  return Status::ok();
}

// A view with the same dims as `like` (names both).
template <typename P, typename Q>
[[nodiscard]] Status check_same_dims(const char* name, const BasicView<P>& v, const char* like_name,
                                     const BasicView<Q>& like) noexcept {
  if (v.dim0 != like.dim0)
    return make_status(StatusCode::kInvalidArgument, name, ".dim0 = ", v.dim0, " but ", like_name, ".dim0 = ",
                       like.dim0);
  if (v.dim1 != like.dim1)
    return make_status(StatusCode::kInvalidArgument, name, ".dim1 = ", v.dim1, " but ", like_name, ".dim1 = ",
                       like.dim1);
  return Status::ok();
}

}  // namespace detail

// out[r][h] for every query row r (see turboquant/prefill.hpp); lse optional.
[[nodiscard]] inline Status prefill_attention(const PrefillAttentionArgs& a) noexcept {
  TQ_RETURN_IF_ERROR(detail::check_format(a.format));
  if (a.order != PrefillOrder::kFresh && a.order != PrefillOrder::kAppended)
    return make_status(StatusCode::kInvalidArgument, "order = ", static_cast<int32_t>(a.order),
                       ": must be kFresh (0) or kAppended (1)");
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("softmax_scale", a.softmax_scale));
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("logit_softcap", a.logit_softcap));
  if (a.sliding_window < 0)
    return make_status(StatusCode::kInvalidArgument, "sliding_window = ", a.sliding_window,
                       ": must be >= 0 (0 = off)");
  if (a.lse != nullptr && !checks::aligned(a.lse, sizeof(float)))
    return make_status(StatusCode::kMisaligned, "lse = ", static_cast<const void*>(a.lse),
                       ": not aligned to 4-byte floats");
  TQ_RETURN_IF_ERROR(detail::check_cache(a.format, a.cache, 0));
  const int32_t d = a.format.head_dim();
  const PagedCache& c = a.cache;
  TQ_RETURN_IF_ERROR(checks::vectors("q", a.q, d));
  if (a.q.dim1 % c.layout.kv_heads != 0)
    return make_status(StatusCode::kInvalidArgument, "q_heads = q.dim1 = ", a.q.dim1,
                       ": not a multiple of kv_heads = cache.layout.kv_heads = ", c.layout.kv_heads);
  TQ_RETURN_IF_ERROR(detail::check_query_start(a.query_start, c.num_seqs, a.q.dim0, a.max_query_len));
  TQ_RETURN_IF_ERROR(checks::vectors("out", a.out, d));
  TQ_RETURN_IF_ERROR(detail::check_same_dims("out", a.out, "q", a.q));
  const bool fresh = a.order == PrefillOrder::kFresh;
  if (fresh) {
    TQ_RETURN_IF_ERROR(checks::vectors("chunk_keys", a.chunk_keys, d));
    TQ_RETURN_IF_ERROR(checks::vectors("chunk_values", a.chunk_values, d));
    const char* names[2] = {"chunk_keys", "chunk_values"};
    const ConstView* views[2] = {&a.chunk_keys, &a.chunk_values};
    for (int i = 0; i < 2; ++i) {
      if (views[i]->dim0 != a.q.dim0)
        return make_status(StatusCode::kInvalidArgument, names[i], ".dim0 = ", views[i]->dim0,
                           " but q.dim0 (total_tokens) = ", a.q.dim0);
      if (views[i]->dim1 != c.layout.kv_heads)
        return make_status(StatusCode::kInvalidArgument, names[i], ".dim1 = ", views[i]->dim1,
                           " but cache.layout.kv_heads = ", c.layout.kv_heads);
    }
  } else {
    for (int32_t s = 0; s < c.num_seqs; ++s) {
      const int32_t n = a.query_start[s + 1] - a.query_start[s];
      if (c.seq_lens[s] < n)
        return make_status(StatusCode::kOutOfRange, "cache.seq_lens[", s, "] = ", c.seq_lens[s],
                           ": kAppended needs the chunk of n = ", n, " tokens in the cache");
    }
  }
  TQ_RETURN_IF_ERROR(detail::check_query_values(a.q));
  if (fresh) {
    TQ_RETURN_IF_ERROR(detail::check_view_values("chunk_keys", a.chunk_keys));
    TQ_RETURN_IF_ERROR(detail::check_view_values("chunk_values", a.chunk_values));
  }

  const Format& f = a.format;
  const layout::PageLayout& l = c.layout;
  const int32_t q_heads = a.q.dim1;
  const int32_t group = q_heads / l.kv_heads;
  const double scale = detail::resolve_softmax_scale(a.softmax_scale, d);
  const double cap = static_cast<double>(a.logit_softcap);
  const int64_t w = a.sliding_window;
  double x[kMaxHeadDim];      // the query in the cached keys' domain
  double plain[kMaxHeadDim];  // the query as given (for the chunk's keys)
  double acc_cache[kMaxHeadDim];
  double acc_chunk[kMaxHeadDim];
  for (int32_t s = 0; s < c.num_seqs; ++s) {
    const int32_t q0 = a.query_start[s];
    const int32_t n = a.query_start[s + 1] - q0;
    const int32_t len = c.seq_lens[s];
    const int64_t prefix = fresh ? len : static_cast<int64_t>(len) - n;
    for (int32_t i = 0; i < n; ++i) {
      const int64_t row = static_cast<int64_t>(q0) + i;
      const int64_t pos = prefix + i;
      const int64_t lo = w > 0 ? std::max<int64_t>(0, pos - w + 1) : 0;
      const int64_t cache_end = std::min<int64_t>(len, pos + 1);  // cached keys [lo, cache_end)
      const int64_t chunk_lo = fresh ? std::max<int64_t>(0, lo - prefix) : 0;
      const int64_t chunk_end = fresh ? i + 1 : 0;  // chunk keys [chunk_lo, chunk_end)
      for (int32_t h = 0; h < q_heads; ++h) {
        const int32_t kv = h / group;
        const int64_t out_at = a.out.offset(row, h);
        float* lse_at = a.lse == nullptr ? nullptr : a.lse + row * q_heads + h;
        detail::load_query(f, a.q, row, h, false, x);
        for (int32_t j = 0; j < d; ++j)
          plain[j] = static_cast<double>(load_as_float(a.q.data, a.q.offset(row, h) + j, a.q.dtype));
        auto capped = [&](double dot) noexcept {
          double z = scale * dot;
          if (cap > 0.0) z = cap * std::tanh(z / cap);
          return z;
        };
        auto cache_logit = [&](int64_t t) noexcept {
          int32_t r = 0;
          const uint8_t* page = detail::token_page(c, s, static_cast<int32_t>(t), &r);
          return capped(detail::key_dot(f, l, page, r, kv, x));
        };
        auto chunk_logit = [&](int64_t j) noexcept {
          double dot = 0.0;
          const int64_t at = a.chunk_keys.offset(q0 + j, kv);
          for (int32_t e = 0; e < d; ++e)
            dot += plain[e] * static_cast<double>(load_as_float(a.chunk_keys.data, at + e, a.chunk_keys.dtype));
          return capped(dot);
        };
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t t = lo; t < cache_end; ++t) m = std::fmax(m, cache_logit(t));
        for (int64_t j = chunk_lo; j < chunk_end; ++j) m = std::fmax(m, chunk_logit(j));
        if (m == -std::numeric_limits<double>::infinity()) {  // nothing attended
          for (int32_t j = 0; j < d; ++j) store_from_float(a.out.data, out_at + j, a.out.dtype, 0.0f);
          if (lse_at != nullptr) *lse_at = -std::numeric_limits<float>::infinity();
          continue;
        }
        double denom = 0.0;
        for (int32_t j = 0; j < d; ++j) acc_cache[j] = acc_chunk[j] = 0.0;
        for (int64_t t = lo; t < cache_end; ++t) {
          const double p = std::exp(cache_logit(t) - m);
          denom += p;
          int32_t r = 0;
          const uint8_t* page = detail::token_page(c, s, static_cast<int32_t>(t), &r);
          detail::accumulate_value(f, l, page, r, kv, p, acc_cache);
        }
        for (int64_t j = chunk_lo; j < chunk_end; ++j) {
          const double p = std::exp(chunk_logit(j) - m);
          denom += p;
          const int64_t at = a.chunk_values.offset(q0 + j, kv);
          for (int32_t e = 0; e < d; ++e)
            acc_chunk[e] += p * static_cast<double>(load_as_float(a.chunk_values.data, at + e, a.chunk_values.dtype));
        }
        if (f.value.bits > 0) rht_inverse(acc_cache, d, f.value.signs);
        for (int32_t j = 0; j < d; ++j)
          store_from_float(a.out.data, out_at + j, a.out.dtype,
                           static_cast<float>((acc_cache[j] + acc_chunk[j]) / denom));
        if (lse_at != nullptr) *lse_at = static_cast<float>(m + std::log(denom));
      }
    }
  }
  return Status::ok();
}

// out = the merge of (out_a, lse_a) and (out_b, lse_b) (turboquant/prefill.hpp), float64, rounded
// once. In place (out = out_a or out_b, lse = lse_a or lse_b) is allowed.
[[nodiscard]] inline Status merge_attention_states(const MergeAttentionStatesArgs& a) noexcept {
  const int32_t d = a.out_a.head_dim;
  if (d <= 0) return make_status(StatusCode::kInvalidArgument, "out_a.head_dim = ", d, ": must be > 0");
  TQ_RETURN_IF_ERROR(checks::vectors("out_a", a.out_a, d));
  TQ_RETURN_IF_ERROR(checks::vectors("out_b", a.out_b, d));
  TQ_RETURN_IF_ERROR(checks::vectors("out", a.out, d));
  TQ_RETURN_IF_ERROR(detail::check_same_dims("out_b", a.out_b, "out_a", a.out_a));
  TQ_RETURN_IF_ERROR(detail::check_same_dims("out", a.out, "out_a", a.out_a));
  const float* lses[3] = {a.lse_a, a.lse_b, a.lse};
  const char* names[3] = {"lse_a", "lse_b", "lse"};
  for (int i = 0; i < 3; ++i) {
    if (lses[i] == nullptr) {
      if (i < 2) return make_status(StatusCode::kInvalidArgument, names[i], " = null");
      continue;
    }
    if (!checks::aligned(lses[i], sizeof(float)))
      return make_status(StatusCode::kMisaligned, names[i], " = ", static_cast<const void*>(lses[i]),
                         ": not aligned to 4-byte floats");
  }
  const int64_t rows = a.out_a.dim0 * a.out_a.dim1;
  for (int i = 0; i < 2; ++i)
    for (int64_t r = 0; r < rows; ++r)
      if (std::isnan(lses[i][r]) || lses[i][r] == std::numeric_limits<float>::infinity())
        return make_status(StatusCode::kNonFinite, names[i], "[", r, "] = ", lses[i][r],
                           ": must be finite or -infinity");
  const int32_t heads = a.out_a.dim1;
  for (int64_t r = 0; r < a.out_a.dim0; ++r)
    for (int32_t h = 0; h < heads; ++h) {
      const int64_t at = r * heads + h;
      const double la = a.lse_a[at], lb = a.lse_b[at];
      const double m = std::fmax(la, lb);
      const int64_t oa = a.out_a.offset(r, h), ob = a.out_b.offset(r, h), o = a.out.offset(r, h);
      if (m == -std::numeric_limits<double>::infinity()) {
        for (int32_t j = 0; j < d; ++j) store_from_float(a.out.data, o + j, a.out.dtype, 0.0f);
        if (a.lse != nullptr) a.lse[at] = -std::numeric_limits<float>::infinity();
        continue;
      }
      const double wa = std::exp(la - m), wb = std::exp(lb - m), sum = wa + wb;
      for (int32_t j = 0; j < d; ++j) {
        const double va = wa == 0.0 ? 0.0 : wa * load_as_float(a.out_a.data, oa + j, a.out_a.dtype);
        const double vb = wb == 0.0 ? 0.0 : wb * load_as_float(a.out_b.data, ob + j, a.out_b.dtype);
        store_from_float(a.out.data, o + j, a.out.dtype, static_cast<float>((va + vb) / sum));
      }
      if (a.lse != nullptr) a.lse[at] = static_cast<float>(m + std::log(sum));
    }
  return Status::ok();
}

}  // namespace turboquant::cpu
