// Small query windows (speculative verification, kAppended order) through the decode-attention
// kernel: each query token of a window becomes one decode row with its own causal length over its
// sequence's pages. This kernel writes those rows' block-table rows and lengths (into the prefill
// workspace); src/prefill.cpp then calls cuda::decode_attention on them.
#include <cuda_runtime.h>

#include <cstdint>

#include "prefill_params.hpp"

namespace turboquant::cuda::detail {
namespace {

constexpr int kWindowRowsThreads = 128;

// Block b handles query token row b: finds its sequence s (query_start[s] <= b < query_start[s + 1],
// by bisection: query_start is non-decreasing by contract, and any input ends in some s in
// [0, num_seqs)), writes its length seq_len - (n_s - 1 - t) (>= 0; seq_len clamped to the
// capacity as the prefill kernel does) and copies s's block-table row.
__global__ void __launch_bounds__(kWindowRowsThreads) window_rows_kernel(const __grid_constant__ WindowRowsParams p) {
  const int32_t row = static_cast<int32_t>(blockIdx.x);
  int32_t lo = 0, hi = p.num_seqs;  // invariant: the answer is in [lo, hi)
  while (hi - lo > 1) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (__ldg(p.query_start + mid) <= row) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int32_t s = lo;
  if (threadIdx.x == 0) {
    const int32_t start = __ldg(p.query_start + s), end = __ldg(p.query_start + s + 1);
    const int32_t seq_len = min(max(__ldg(p.seq_lens + s), 0), p.capacity);
    const int32_t after = end - 1 - row;  // window tokens after this one
    p.row_lens[row] = row >= start && row < end ? max(seq_len - after, 0) : 0;
  }
  const int32_t* from = p.block_table + static_cast<int64_t>(s) * p.max_pages_per_seq;
  int32_t* to = p.row_block_table + static_cast<int64_t>(row) * p.max_pages_per_seq;
  for (int32_t i = static_cast<int32_t>(threadIdx.x); i < p.max_pages_per_seq; i += kWindowRowsThreads) to[i] = __ldg(from + i);
}

}  // namespace

cudaError_t launch_window_rows(const WindowRowsParams& params, cudaStream_t stream) noexcept {
  if (params.total_tokens <= 0) return cudaSuccess;
  window_rows_kernel<<<params.total_tokens, kWindowRowsThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace turboquant::cuda::detail
