// The CUDA backend of PagedKVCache (turboquant/kv_cache.hpp): the same class, the same bookkeeping
// on the host, with every layer's pool in DEVICE memory and the work enqueued on one stream.
// Plain C++: needs only <cuda_runtime_api.h>.
//
//   tq::PagedKVCache cache;
//   tq::cuda::CudaKVCacheOptions opt;
//   opt.stream = stream;
//   opt.max_batch = 32;      // most sequences of one append_batch / attention call
//   opt.max_q_heads = 32;    // sizes the attention workspace
//   TQ_RETURN_IF_ERROR(tq::cuda::create_kv_cache(config, opt, &cache));
//   // per decode step, per layer (k, v, q, out are device pointers):
//   cache.append_batch(ids, n, layer, k_view, v_view);  // cuda::encode, one launch per side
//   cache.attention(ids, n, layer, q_view, out_view);   // cuda::decode_attention
//
// What runs where:
//   - create: cudaMalloc of each layer's pool (zeroed), of the attention workspace (sized for
//     max_batch x max_q_heads at max_seq_len), of the device slot / length / block-table buffers,
//     and cudaMallocHost of the pinned staging rings; all once. No device or pinned memory is
//     allocated later (the class's host scratch vectors grow to the largest call, then are reused).
//   - append / append_batch: host bookkeeping, then the slot mapping and, for the sequences
//     written, their new lengths of that layer go host -> device with ONE cudaMemcpyAsync from a
//     pinned staging slice (skipped when both equal what the device buffers already hold: in a
//     decode step every layer writes the same slots and lengths, so only the first layer copies),
//     then cuda::encode per coded side (one launch each) or a strided copy kernel per raw side.
//     Appends longer than max_append_rows are enqueued in chunks.
//   - copy-on-write: cudaMemcpyAsync device-to-device of the page in every layer, on the stream.
//   - attention: cuda::decode_attention on the stream with the workspace allocated at creation.
//     The batch block table is uploaded only when the batch ids, the row stride (most pages of a
//     sequence in the batch) or the cache's table_version() changed since the last upload; the
//     lengths only when they differ from the device copy (an append_batch of the same batch has
//     already staged them). So a decode step of a fixed batch uploads one small slice (slots and
//     lengths, on layer 0) plus the block table when a page was taken (every page_size steps).
//   - fork / truncate / free / add: host bookkeeping only.
// No call after create synchronises with the device, except when a staging ring wraps: each
// pinned slice is protected by a cudaEvent recorded after its copy; taking a slice whose event has
// not completed yet (the host is more than `staging_slices` uploads ahead of the GPU) waits for
// that event (cudaEventSynchronize). A decode step of a fixed batch takes one slot/length slice
// (plus a block-table slice every page_size steps), so with the defaults (128 and 4 slices) the
// host can run well over page_size steps ahead before it could block.
//
// Inputs and outputs: keys / values / q / out / AttentionOptions::lse are DEVICE pointers (or
// managed memory). keys / values: f32 | f16 | bf16, 16-byte aligned rows (kMisaligned otherwise,
// from cuda::can_implement, before anything changes). q / out: f16 | bf16 (the kernel's).
//
// Differences from the CPU backend:
//   - K / V values are not checked for NaN / Inf on the host (they are device data): a coded row
//     holding one is stored as a zero vector and counted (kv_cache_nonfinite_rows); a raw side stores
//     it as is. The CPU backend returns kNonFinite instead.
//   - attention runs the fast decode-attention kernel on layers with both sides coded (their
//     (head_dim, key bits, value bits) must be in its dispatch table and page_size a multiple of
//     16) and the generic CUDA-core kernel on K-only, V-only and plain fp16 / bf16 layers
//     (kernels/attention_generic.cu: correct for any mix, not tuned for speed).
//   - attention batches are at most max_batch sequences and max_q_heads query heads; a sequence's
//     pages at most ceil(max_seq_len / page_size) (kInvalidArgument naming the option otherwise).
//   - a device error (kCudaError) from a copy or kernel launch is returned after the bookkeeping
//     changed: the pool contents are then undefined (CUDA errors are sticky anyway).
// Not for CUDA-graph capture: the staged uploads are written by the host at call time (an engine
// that captures graphs calls cuda::encode / cuda::decode_attention itself, with fill_batch()).
// Everything runs on the device that was current at create; call with it current. The cache's
// destructor synchronises its stream before freeing; do not destroy the stream before the cache.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboquant/kv_cache.hpp"
#include "turboquant/status.hpp"

namespace turboquant::cuda {

struct CudaKVCacheOptions {
  cudaStream_t stream = nullptr;   // every copy and kernel of the cache runs on this stream
  int32_t max_batch = 64;          // most sequences of one append_batch / attention call
  int32_t max_q_heads = 0;         // most query heads of attention; 0 = config.kv_heads * 16 (the largest GQA group)
  int32_t max_seq_len = 0;         // most tokens of one sequence attention sees; 0 = the pool's token capacity
                                   // (sizes the block-table staging and the workspace)
  int32_t max_append_rows = 4096;  // tokens per encode launch; a longer append is enqueued in chunks
  int32_t staging_slices = 128;    // ring of pinned slices for slot mappings and lengths
  int32_t table_slices = 4;        // ring of pinned slices for batch block tables
};

// Plans `config`, allocates the device pools and staging once, and sets *out to a PagedKVCache on
// the CUDA backend. kOutOfMemory when a cudaMalloc / cudaMallocHost fails (nothing is kept).
[[nodiscard]] Status create_kv_cache(const KVCacheConfig& config, const CudaKVCacheOptions& options,
                                     PagedKVCache* out) noexcept;

// True for a cache created by create_kv_cache.
[[nodiscard]] bool is_cuda_kv_cache(const PagedKVCache& cache) noexcept;

// The stream of a CUDA cache (null for another cache).
[[nodiscard]] cudaStream_t kv_cache_stream(const PagedKVCache& cache) noexcept;

// Coded rows written as zeros because they held NaN / Inf (or overflowed), since creation.
// Synchronises the cache's stream: not for the run path.
[[nodiscard]] Status kv_cache_nonfinite_rows(const PagedKVCache& cache, int64_t* rows) noexcept;

}  // namespace turboquant::cuda
