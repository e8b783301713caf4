// Kernel parameters of the codec ops and the launchers the dispatch table points at (private to
// turboquant::cuda). Plain C++: src/codec.cpp (g++) fills the structs, the kernels (nvcc) read them
// as one `const __grid_constant__` argument. Pointers are device memory; strides count elements.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboquant/codebook_search.hpp"
#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/signs.hpp"

namespace turboquant::cuda::detail {

// Most rows (vectors: dim0 * dim1; paged decode: dim0 rounded up to 16, times dim1) of one codec
// call: the kernels index rows with 32 bits and look two grid strides ahead. A row is at least 128
// bytes of vector (head_dim 64 in fp16), so 2^30 rows are 137 GB of input or output.
inline constexpr int64_t kMaxCodecRows = int64_t{1} << 30;

// n / divisor and n % divisor by a multiply-high, an add and a shift, for 0 <= n < 2^31
// (Granlund-Montgomery, as CUTLASS's FastDivmod); divisor >= 1.
struct FastDivisor {
  int32_t divisor = 1;
  uint32_t multiplier = 0;  // ceil(2^32 * 2^shift / divisor) - 2^32
  uint32_t shift = 0;       // ceil(log2(divisor))
};
[[nodiscard]] inline FastDivisor make_fast_divisor(int32_t divisor) noexcept {
  FastDivisor f{};
  f.divisor = divisor < 1 ? 1 : divisor;
  const auto d = static_cast<uint64_t>(f.divisor);
  while ((uint64_t{1} << f.shift) < d) ++f.shift;
  constexpr uint64_t kTwoTo32 = uint64_t{1} << 32;
  f.multiplier = static_cast<uint32_t>(kTwoTo32 * ((uint64_t{1} << f.shift) - d) / d + 1);
  return f;
}

// Where one side (K or V) of a page pool keeps codes and scales: the byte offset of row `row` of
// head `head` of page `page` is page * page_bytes + head * head_bytes + codes_offset + row * code_bytes
// (codes) and ... + scales_offset + row * scale_bytes (scales); see turboquant/layout.hpp.
struct PagePlanes {
  int64_t page_bytes = 0;     // bytes per page
  int64_t head_bytes = 0;     // bytes per head block inside a page
  int64_t codes_offset = 0;   // bytes from a head block to its codes plane [page_size][code_bytes]
  int64_t scales_offset = 0;  // bytes from a head block to its scales plane [page_size] fp16|fp32
  FastDivisor page_size{};    // tokens (rows) per page
};

struct EncodeParams {
  const void* input = nullptr;        // [tokens, heads, head_dim] of input_dtype; element (t, h, j)
                                      // at t * input_stride0 + h * input_stride1 + j (elements)
  int64_t input_stride0 = 0;          // elements between tokens
  int64_t input_stride1 = 0;          // elements between heads
  int64_t tokens = 0;
  FastDivisor heads{};                // rows per token
  bool head_major = false;            // paged (always): rows walked as row = head * tokens
                                      // + token, so that a warp writes the codes of consecutive
                                      // tokens of one head, side by side in a page (whole 32-byte
                                      // sectors, also at 3 bits); else row = token * heads + head
  FastDivisor token_count{};          // head_major: tokens
  DType input_dtype = DType::kF16;
  int32_t input_element_bytes = 0;    // dtype_bytes(input_dtype)
  uint8_t* codes = nullptr;           // dense: [tokens * heads, code_bytes] bytes, row t * heads + h
  void* scales = nullptr;             // dense: [tokens * heads] fp16 | fp32 (norm)
  uint8_t* pages = nullptr;           // paged: [num_slots / page_size, planes.page_bytes] bytes
  const int64_t* slot_mapping = nullptr;  // paged: [tokens] slot = page * page_size + row; < 0 skips
  int64_t num_slots = 0;              // paged: pages * page_size; larger slots are skipped, counted
  PagePlanes planes{};                // paged: where the side's planes are
  int32_t* nonfinite_count = nullptr; // optional [1]: rows with NaN / Inf (stored as zero vectors)
  int32_t* bad_slot_count = nullptr;  // optional [1]: tokens with slot >= num_slots
  NormStorage norm = NormStorage::kF16;
  int32_t scale_bytes = 0;            // norm_bytes(norm)
  ScaleMode scale = ScaleMode::kRawNorm;
  SignBits signs{};                   // RHT diagonal (bit j: coordinate j negated)
  CodebookCells cells{};              // bucketing grid (cells > 0), else:
  CodebookSearchTable tree{};         // bucketing tree; its node[2^bits + i] = levels[i] either way
};

struct DecodeParams {
  const uint8_t* codes = nullptr;     // dense: [rows, code_bytes] bytes, row r = t * dim1 + h
  const void* scales = nullptr;       // dense: [rows] fp16 | fp32 (norm)
  const uint8_t* pages = nullptr;     // paged: [num_pages, planes.page_bytes] bytes
  int64_t num_pages = 0;              // paged: block-table entries outside [0, num_pages) are skipped
  PagePlanes planes{};                // paged
  const int32_t* block_table = nullptr;  // paged: [num_seqs, max_pages_per_seq] page numbers
  const int32_t* seq_lens = nullptr;  // paged: [num_seqs] tokens per sequence
  int32_t max_pages_per_seq = 0;      // paged
  FastDivisor max_tokens{};           // paged: output rows per sequence (dim0 = num_seqs * max_tokens)
  void* output = nullptr;             // [dim0, dim1, head_dim] of output_dtype; element (t, h, j) at
                                      // t * output_stride0 + h * output_stride1 + j (elements)
  int64_t output_stride0 = 0;         // elements
  int64_t output_stride1 = 0;         // elements
  int64_t dim0 = 0;                   // dense: token rows; paged: num_seqs * max_tokens
  FastDivisor dim1{};                 // heads
  DType output_dtype = DType::kF16;
  int32_t output_element_bytes = 0;   // dtype_bytes(output_dtype)
  NormStorage norm = NormStorage::kF16;
  int32_t scale_bytes = 0;            // norm_bytes(norm)
  SignBits signs{};                   // RHT diagonal
  float levels[kMaxLevels] = {};      // codebook levels [2^bits]
};

struct RotateParams {
  const void* input = nullptr;        // [dim0, dim1, head_dim] of input_dtype (may equal output)
  void* output = nullptr;             // [dim0, dim1, head_dim] of output_dtype
  int64_t input_stride0 = 0;          // elements
  int64_t input_stride1 = 0;          // elements
  int64_t output_stride0 = 0;         // elements
  int64_t output_stride1 = 0;         // elements
  int64_t dim0 = 0;
  FastDivisor dim1{};
  DType input_dtype = DType::kF16;
  DType output_dtype = DType::kF16;
  int32_t input_element_bytes = 0;    // dtype_bytes(input_dtype)
  int32_t output_element_bytes = 0;   // dtype_bytes(output_dtype)
  bool inverse = false;               // x = R^T y (else y = R x)
  SignBits signs{};                   // RHT diagonal
};

// One instance per (HeadDim, Bits) of the list in kernels/CMakeLists.txt (generated
// codec_d<D>_b<B>.cu files); each enqueues one kernel and returns cudaGetLastError().
template <int HeadDim, int Bits>
cudaError_t launch_encode(const EncodeParams& params, cudaStream_t stream) noexcept;
template <int HeadDim, int Bits>
cudaError_t launch_decode(const DecodeParams& params, cudaStream_t stream) noexcept;
template <int HeadDim>
cudaError_t launch_rotate(const RotateParams& params, cudaStream_t stream) noexcept;

}  // namespace turboquant::cuda::detail
