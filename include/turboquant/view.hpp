// Non-owning views: pointer + shape + strides + dtype. Only the cache class and test helpers own
// memory. A view is three-dimensional, [dim0, dim1, head_dim], with the last dimension
// contiguous: [tokens, heads, head_dim] for K/V rows, [sequences, q_heads, head_dim] for queries,
// [rows, 1, head_dim] for a plain matrix of vectors. Strides count elements, not bytes.
#pragma once

#include <cstdint>

#include "turboquant/layout.hpp"
#include "turboquant/numeric.hpp"

namespace turboquant {

template <typename Pointer>
struct BasicView {
  Pointer data = nullptr;
  DType dtype = DType::kF16;
  int64_t dim0 = 0;      // tokens / sequences / rows
  int32_t dim1 = 1;      // heads (1 for a plain matrix)
  int32_t head_dim = 0;  // contiguous
  int64_t stride0 = 0;   // elements between consecutive dim0 entries
  int64_t stride1 = 0;   // elements between consecutive dim1 entries

  [[nodiscard]] constexpr int64_t rows() const noexcept { return dim0 * dim1; }
  [[nodiscard]] constexpr int64_t offset(int64_t i0, int32_t i1) const noexcept {
    return i0 * stride0 + static_cast<int64_t>(i1) * stride1;
  }
};
using View = BasicView<void*>;
using ConstView = BasicView<const void*>;

// [rows, head_dim] with a row stride (elements); head_dim when row_stride is 0.
template <typename Pointer>
[[nodiscard]] constexpr BasicView<Pointer> matrix_view(Pointer data, DType dtype, int64_t rows,
                                                       int32_t head_dim, int64_t row_stride = 0) noexcept {
  const int64_t s = row_stride == 0 ? head_dim : row_stride;
  return BasicView<Pointer>{data, dtype, rows, 1, head_dim, s, s};
}
// [dim0, dim1, head_dim], densely packed unless strides are given.
template <typename Pointer>
[[nodiscard]] constexpr BasicView<Pointer> tensor_view(Pointer data, DType dtype, int64_t dim0,
                                                       int32_t dim1, int32_t head_dim,
                                                       int64_t stride0 = 0, int64_t stride1 = 0) noexcept {
  return BasicView<Pointer>{data, dtype, dim0, dim1, head_dim,
                            stride0 == 0 ? static_cast<int64_t>(dim1) * head_dim : stride0,
                            stride1 == 0 ? head_dim : stride1};
}
[[nodiscard]] constexpr ConstView as_const(const View& v) noexcept {
  return ConstView{v.data, v.dtype, v.dim0, v.dim1, v.head_dim, v.stride0, v.stride1};
}

// Dense packed vectors: codes [rows, code_bytes] and scales [rows] (fp16 or fp32 per the codec).
struct DenseCodes {
  uint8_t* codes = nullptr;
  void* scales = nullptr;
};
struct ConstDenseCodes {
  const uint8_t* codes = nullptr;
  const void* scales = nullptr;
};

// One side (K or V) of a layer's page pool, for writing tokens by slot:
// token i of the input goes to slot_mapping[i] = page * page_size + row; a negative slot is
// skipped (padding tokens).
struct PagedSlots {
  void* pages = nullptr;                   // [num_pages, layout.page_bytes]
  int64_t num_pages = 0;
  layout::PageLayout layout{};
  bool value_side = false;                 // V planes (else K)
  const int64_t* slot_mapping = nullptr;   // [tokens]
};

// A layer's page pool read through a block table: token t of sequence s is row t % page_size of
// page block_table[s * max_pages_per_seq + t / page_size].
struct PagedCache {
  const void* pages = nullptr;             // [num_pages, layout.page_bytes]
  int64_t num_pages = 0;
  layout::PageLayout layout{};
  const int32_t* block_table = nullptr;    // [num_seqs, max_pages_per_seq]
  int32_t max_pages_per_seq = 0;
  const int32_t* seq_lens = nullptr;       // [num_seqs], tokens in each sequence
  int32_t num_seqs = 0;
};

}  // namespace turboquant
