// Chunked prefill, prefix reuse and speculative verification: attention of a chunk of new query
// tokens per sequence over that sequence's compressed, paged prefix (and the chunk itself). This
// header holds what the CPU reference (turboquant/cpu/prefill.hpp) and the CUDA op
// (turboquant/cuda/prefill.hpp) share. Plain C++17, no CUDA.
//
// Semantics (both implementations):
//   - q [total_tokens, q_heads, head_dim] holds the queries of a batch of sequences back to back;
//     query_start [num_seqs + 1] (int32, like cu_seqlens) gives sequence s the rows
//     [query_start[s], query_start[s + 1]), n_s = query_start[s + 1] - query_start[s] queries
//     (0 is allowed: the sequence has no rows). query_start[0] = 0 and
//     query_start[num_seqs] = total_tokens = q.dim0.
//   - PrefillOrder says where the chunk's own keys and values are:
//       kFresh:    cache.seq_lens[s] = P_s is the prefix length (tokens cached BEFORE the chunk);
//                  the chunk's K/V are given uncompressed (chunk_keys / chunk_values
//                  [total_tokens, kv_heads, head_dim], rows aligned with q) and attended as given;
//       kAppended: the chunk was already appended to the cache: cache.seq_lens[s] includes it
//                  and P_s = seq_lens[s] - n_s.
//   - Query i (0-based) of sequence s sits at absolute position P_s + i and attends every key at
//     a position t <= P_s + i (causal); with sliding_window w > 0 only keys t > P_s + i - w (its
//     last w positions, itself included). Chunk key j sits at position P_s + j.
//   - Logits, soft cap, softmax and log-sum-exp as the decode attention (turboquant/cpu/attention.hpp):
//     logit = softmax_scale * q . k (softmax_scale 0 = 1 / sqrt(head_dim)), then c * tanh(logit / c)
//     with logit_softcap c > 0; lse is the natural-log log-sum-exp of the attended logits.
//   - A row with nothing to attend (possible only in kAppended with seq_lens[s] < n_s, or with a
//     zero-length window) gets an all-zero output and lse = -infinity.
//   - GQA / MQA: query head h reads KV head h / (q_heads / kv_heads).
//
// Merging attention states: two partial results (out_a, lse_a) and (out_b, lse_b) of the same
// queries over disjoint key sets combine into the result over the union:
//   m = max(lse_a, lse_b); w_a = exp(lse_a - m), w_b = exp(lse_b - m);
//   out = (w_a out_a + w_b out_b) / (w_a + w_b); lse = m + log(w_a + w_b);
// both -infinity (nothing attended on either side) gives zeros and -infinity.
#pragma once

#include <cstdint>

namespace turboquant {

enum class PrefillOrder : int32_t {
  kFresh = 0,     // seq_lens = prefix lengths; the chunk's K/V come uncompressed in the args
  kAppended = 1,  // seq_lens include the chunk, whose K/V are already in the cache
};

[[nodiscard]] constexpr const char* to_string(PrefillOrder o) noexcept {
  return o == PrefillOrder::kFresh ? "fresh" : o == PrefillOrder::kAppended ? "appended" : "invalid";
}

}  // namespace turboquant
