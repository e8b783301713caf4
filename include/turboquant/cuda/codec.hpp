// CUDA codec: encode, decode and rotate vectors on the GPU, one fused kernel per call. Same
// arguments and byte layout as the CPU reference (turboquant/cpu/codec.hpp); the outputs match it
// (see "Agreement with the CPU path" below). Plain C++: needs only <cuda_runtime_api.h>.
//
// Call convention (common.hpp): can_implement(args) checks everything the host can see;
// workspace_bytes(args) is 0 for these ops; encode / decode / rotate(args, workspace, stream)
// check again, enqueue one kernel and return. Every pointer in the Args is device memory (or
// managed memory) except where a comment says otherwise.
//
// What the host cannot check (device-side values) is handled in the kernels, never by a fault:
//   - encode, paged: slot_mapping[t] < 0 skips token t (padding); a slot >= num_pages * page_size
//     is skipped too and counted once per token in *bad_slot_count (when given);
//   - encode: a row (token, head) holding NaN or Inf (or whose squared norm overflows float) is
//     stored as a zero vector (scale 0, every code the index of 0.0) and counted in
//     *nonfinite_count (when given; rows skipped by their slot are not counted). The CPU path
//     rejects such input instead (kNonFinite);
//   - decode, paged: rows t >= min(seq_lens[s], max_tokens, max_pages_per_seq * page_size) and rows
//     whose block-table entry is outside [0, num_pages) are left untouched.
// The counters are added to (atomically), never reset: zero them before the call if needed.
//
// Agreement with the CPU path: the rotations use the same butterfly stage order and the same final
// multiply by 1/sqrt(d), so rotate() and decode() produce the CPU's values bit for bit. encode()
// transforms f16 / bf16 rows of head_dim >= 128 with tensor cores (sums of 16 exact products in
// fp32, not the CPU's butterfly order), takes 1/||y|| from rsqrtf and sums the squared norm (and the
// least-squares dot products) in another order, so a code may differ from the CPU's where a
// coordinate ties a boundary to the last bits (the tests allow 1e-5 of coordinates), and a scale
// by a few parts per million.
//
// Alignment (kMisaligned otherwise): input / output / rows views: data and row strides 16-byte
// aligned (kVectorAlignment); dense codes 4-byte aligned (kCodesAlignment); scales aligned to their
// element; page pools 16-byte aligned; counters 4-byte aligned.
#pragma once

#include <cstddef>
#include <cstdint>

#include "turboquant/cuda/common.hpp"
#include "turboquant/format.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant::cuda {

struct EncodeArgs {
  CodecSpec codec{};
  ConstView input{};                  // [tokens, heads, head_dim], f32 | f16 | bf16
  DenseCodes dense{};                 // either: codes [tokens * heads, code_bytes], scales [tokens * heads]
  PagedSlots paged{};                 // or: page pool side + slot_mapping [tokens] (device)
  int32_t* nonfinite_count = nullptr; // optional device counter [1]: rows with NaN/Inf (stored as zeros)
  int32_t* bad_slot_count = nullptr;  // optional device counter [1]: tokens whose slot is beyond the pool
};
[[nodiscard]] Status can_implement(const EncodeArgs& args) noexcept;
[[nodiscard]] size_t workspace_bytes(const EncodeArgs& args) noexcept;
[[nodiscard]] Status encode(const EncodeArgs& args, Workspace workspace, cudaStream_t stream) noexcept;

struct DecodeArgs {
  CodecSpec codec{};
  ConstDenseCodes dense{};  // either: codes [rows, code_bytes], scales [rows]; output [rows / heads, heads, d]
  PagedCache paged{};       // or: pool + block_table [num_seqs, max_pages_per_seq] + seq_lens [num_seqs]
  bool value_side = false;  // paged only: read the V planes (else K)
  int32_t max_tokens = 0;   // paged only: output rows per sequence
  View output{};            // f32 | f16 | bf16; dense: rows = dim0 * dim1; paged: [num_seqs * max_tokens, kv_heads, d]
};
[[nodiscard]] Status can_implement(const DecodeArgs& args) noexcept;
[[nodiscard]] size_t workspace_bytes(const DecodeArgs& args) noexcept;
[[nodiscard]] Status decode(const DecodeArgs& args, Workspace workspace, cudaStream_t stream) noexcept;

// Rotation of rows: forward y = R x, inverse x = R^T y (R = H diag(signs) / sqrt(d)), for
// pre-rotating queries and un-rotating attention outputs. input and output have the same shape;
// their dtypes may differ. In place is allowed: output may be the very same memory as input
// (same data pointer, dtype and strides); any other overlap is kInvalidArgument.
struct RotateArgs {
  SignBits signs{};
  ConstView input{};   // [dim0, dim1, head_dim], head_dim 64 | 128 | 256, f32 | f16 | bf16
  View output{};       // same shape, f32 | f16 | bf16
  bool inverse = false;
};
[[nodiscard]] Status can_implement(const RotateArgs& args) noexcept;
[[nodiscard]] size_t workspace_bytes(const RotateArgs& args) noexcept;
[[nodiscard]] Status rotate(const RotateArgs& args, Workspace workspace, cudaStream_t stream) noexcept;

// The (head_dim, bits) pairs with encode/decode kernels built, from the one generated dispatch
// table (kernels/CMakeLists.txt); a pair not listed is kUnsupportedFormat.
struct CodecKernelKey {
  int32_t head_dim = 0;
  int32_t bits = 0;
};
[[nodiscard]] int32_t num_codec_kernels() noexcept;
[[nodiscard]] CodecKernelKey codec_kernel(int32_t i) noexcept;  // i in [0, num_codec_kernels())
// head_dims with rotate kernels built.
[[nodiscard]] int32_t num_rotate_kernels() noexcept;
[[nodiscard]] int32_t rotate_kernel_head_dim(int32_t i) noexcept;

}  // namespace turboquant::cuda
