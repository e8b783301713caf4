// Host side of the CUDA codec ops (turboquant/cuda/codec.hpp): argument checks, kernel parameters,
// dispatch through the generated table. Plain C++; no call here synchronises, allocates or reads
// device memory.
#include "turboquant/cuda/codec.hpp"

#include <cstdint>

#include "codec_params.hpp"
#include "codec_table.hpp"
#include "cuda_status.hpp"
#include "turboquant/checks.hpp"
#include "turboquant/codebook_search.hpp"
#include "turboquant/layout.hpp"

namespace turboquant::cuda {
namespace {

constexpr int64_t kCounterAlignment = alignof(int32_t);
constexpr int64_t kSlotAlignment = alignof(int64_t);
constexpr int64_t kTableAlignment = alignof(int32_t);

Status check_alignment(const char* name, const void* p, int64_t alignment) noexcept {
  if (p != nullptr && !checks::aligned(p, alignment))
    return make_status(StatusCode::kMisaligned, name, " = ", p, ": must be ", alignment, "-byte aligned");
  return Status::ok();
}

Status find_codec(const CodecSpec& c, const detail::CodecKernels** kernels) noexcept {
  TQ_RETURN_IF_ERROR(validate(c));
  *kernels = detail::find_codec_kernels(c.head_dim, c.bits);
  if (*kernels == nullptr)
    return make_status(StatusCode::kUnsupportedFormat, "no CUDA kernel built for head_dim = ", c.head_dim,
                       ", bits = ", c.bits);
  return Status::ok();
}

// The rows of view `name` ([dim0, dim1], dim0 rounded up to a multiple of `round`) in one call: at
// most detail::kMaxCodecRows (checked without overflow; dims are >= 1 here).
Status check_rows(const char* name, int64_t dim0, int64_t dim1, int64_t round = 1) noexcept {
  const int64_t most_dim0 = detail::kMaxCodecRows / dim1 / round * round;
  if (dim0 > most_dim0)
    return make_status(StatusCode::kInvalidArgument, name, " is [", dim0, ", ", dim1, "]: more than ",
                       detail::kMaxCodecRows, " (2^30) rows in one call (32-bit row indices); split the call");
  return Status::ok();
}

Status check_encode(const EncodeArgs& a, const detail::CodecKernels** kernels, bool* dense) noexcept {
  TQ_RETURN_IF_ERROR(find_codec(a.codec, kernels));
  TQ_RETURN_IF_ERROR(checks::vectors("input", a.input, a.codec.head_dim, kVectorAlignment));
  TQ_RETURN_IF_ERROR(check_rows("input", a.input.dim0, a.input.dim1));
  TQ_RETURN_IF_ERROR(checks::dense_or_paged("destination", a.dense.codes, a.dense.scales, a.paged.pages, dense));
  if (*dense) {
    TQ_RETURN_IF_ERROR(checks::dense_codes("dense", a.dense, a.codec));
    TQ_RETURN_IF_ERROR(check_alignment("dense.codes", a.dense.codes, kCodesAlignment));
  } else {
    TQ_RETURN_IF_ERROR(checks::paged_slots("paged", a.paged, a.input.dim1, a.codec));
    TQ_RETURN_IF_ERROR(check_alignment("paged.slot_mapping", a.paged.slot_mapping, kSlotAlignment));
  }
  TQ_RETURN_IF_ERROR(check_alignment("nonfinite_count", a.nonfinite_count, kCounterAlignment));
  TQ_RETURN_IF_ERROR(check_alignment("bad_slot_count", a.bad_slot_count, kCounterAlignment));
  return Status::ok();
}

Status check_decode(const DecodeArgs& a, const detail::CodecKernels** kernels, bool* dense) noexcept {
  TQ_RETURN_IF_ERROR(find_codec(a.codec, kernels));
  TQ_RETURN_IF_ERROR(checks::dense_or_paged("source", a.dense.codes, a.dense.scales, a.paged.pages, dense));
  TQ_RETURN_IF_ERROR(checks::vectors("output", a.output, a.codec.head_dim, kVectorAlignment));
  // A paged walk covers dim0 rounded up to a warp's vectors (at most 16).
  TQ_RETURN_IF_ERROR(check_rows("output", a.output.dim0, a.output.dim1, *dense ? 1 : 16));
  if (*dense) {
    TQ_RETURN_IF_ERROR(checks::dense_codes("dense", a.dense, a.codec));
    TQ_RETURN_IF_ERROR(check_alignment("dense.codes", a.dense.codes, kCodesAlignment));
  } else {
    TQ_RETURN_IF_ERROR(checks::paged_cache("paged", a.paged, a.value_side, a.max_tokens, a.output, a.codec));
    TQ_RETURN_IF_ERROR(check_alignment("paged.block_table", a.paged.block_table, kTableAlignment));
    TQ_RETURN_IF_ERROR(check_alignment("paged.seq_lens", a.paged.seq_lens, kTableAlignment));
  }
  return Status::ok();
}

// Bytes spanned by a view, from its data pointer to the end of its last row.
template <typename Pointer>
int64_t span_bytes(const BasicView<Pointer>& v) noexcept {
  return ((v.dim0 - 1) * v.stride0 + static_cast<int64_t>(v.dim1 - 1) * v.stride1 + v.head_dim) *
         dtype_bytes(v.dtype);
}

Status check_rotate(const RotateArgs& a, const detail::RotateKernels** kernels) noexcept {
  const int32_t d = a.input.head_dim;
  if (!is_supported_head_dim(d))
    return make_status(StatusCode::kUnsupportedFormat, "input.head_dim = ", d, ": supported are 64, 128, 256");
  *kernels = detail::find_rotate_kernels(d);
  if (*kernels == nullptr)
    return make_status(StatusCode::kUnsupportedFormat, "no CUDA rotate kernel built for head_dim = ", d);
  TQ_RETURN_IF_ERROR(checks::vectors("input", a.input, d, kVectorAlignment));
  TQ_RETURN_IF_ERROR(checks::vectors("output", a.output, d, kVectorAlignment));
  TQ_RETURN_IF_ERROR(check_rows("input", a.input.dim0, a.input.dim1));
  if (a.output.dim0 != a.input.dim0 || a.output.dim1 != a.input.dim1)
    return make_status(StatusCode::kInvalidArgument, "output is [", a.output.dim0, ", ", a.output.dim1,
                       "] rows but input is [", a.input.dim0, ", ", a.input.dim1, "]");
  const auto in = reinterpret_cast<uintptr_t>(a.input.data);
  const auto out = reinterpret_cast<uintptr_t>(a.output.data);
  const bool overlap = in < out + static_cast<uintptr_t>(span_bytes(a.output)) &&
                       out < in + static_cast<uintptr_t>(span_bytes(a.input));
  const bool same = in == out && a.input.dtype == a.output.dtype && a.input.stride0 == a.output.stride0 &&
                    a.input.stride1 == a.output.stride1;
  if (overlap && !same)
    return make_status(StatusCode::kInvalidArgument, "output (", a.output.data, ") overlaps input (", a.input.data,
                       ") without being the same rows: in place needs equal data, dtype and strides");
  return Status::ok();
}

detail::PagePlanes planes(const layout::PageLayout& l, bool value_side) noexcept {
  detail::PagePlanes p{};
  p.page_bytes = l.page_bytes;
  p.head_bytes = l.head_bytes;
  p.codes_offset = value_side ? l.value_codes_offset : l.key_codes_offset;
  p.scales_offset = value_side ? l.value_scales_offset : l.key_scales_offset;
  p.page_size = detail::make_fast_divisor(l.page_size);
  return p;
}

}  // namespace

// ---- encode -------------------------------------------------------------------------------------

Status can_implement(const EncodeArgs& args) noexcept {
  const detail::CodecKernels* kernels = nullptr;
  bool dense = false;
  return check_encode(args, &kernels, &dense);
}

size_t workspace_bytes(const EncodeArgs& /*args*/) noexcept { return 0; }

Status encode(const EncodeArgs& a, Workspace /*workspace*/, cudaStream_t stream) noexcept {
  const detail::CodecKernels* kernels = nullptr;
  bool dense = false;
  TQ_RETURN_IF_ERROR(check_encode(a, &kernels, &dense));
  detail::EncodeParams p{};
  p.input = a.input.data;
  p.input_stride0 = a.input.stride0;
  p.input_stride1 = a.input.stride1;
  p.tokens = a.input.dim0;
  p.heads = detail::make_fast_divisor(a.input.dim1);
  p.input_dtype = a.input.dtype;
  p.input_element_bytes = dtype_bytes(a.input.dtype);
  if (dense) {
    p.codes = a.dense.codes;
    p.scales = a.dense.scales;
  } else {
    p.pages = static_cast<uint8_t*>(a.paged.pages);
    p.slot_mapping = a.paged.slot_mapping;
    p.num_slots = a.paged.num_pages * a.paged.layout.page_size;
    p.planes = planes(a.paged.layout, a.paged.value_side);
    p.head_major = true;  // dim0 <= kMaxCodecRows (check_encode)
    p.token_count = detail::make_fast_divisor(static_cast<int32_t>(a.input.dim0));
  }
  p.nonfinite_count = a.nonfinite_count;
  p.bad_slot_count = a.bad_slot_count;
  p.norm = a.codec.norm;
  p.scale_bytes = norm_bytes(a.codec.norm);
  p.scale = a.codec.scale;
  p.signs = a.codec.signs;
  p.cells = codebook_cells(a.codec.codebook);
  p.tree = codebook_search_table(a.codec.codebook);
  return detail::cuda_status(kernels->encode(p, stream), "encode kernel launch");
}

// ---- decode -------------------------------------------------------------------------------------

Status can_implement(const DecodeArgs& args) noexcept {
  const detail::CodecKernels* kernels = nullptr;
  bool dense = false;
  return check_decode(args, &kernels, &dense);
}

size_t workspace_bytes(const DecodeArgs& /*args*/) noexcept { return 0; }

Status decode(const DecodeArgs& a, Workspace /*workspace*/, cudaStream_t stream) noexcept {
  const detail::CodecKernels* kernels = nullptr;
  bool dense = false;
  TQ_RETURN_IF_ERROR(check_decode(a, &kernels, &dense));
  detail::DecodeParams p{};
  if (dense) {
    p.codes = a.dense.codes;
    p.scales = a.dense.scales;
  } else {
    p.pages = static_cast<const uint8_t*>(a.paged.pages);
    p.num_pages = a.paged.num_pages;
    p.planes = planes(a.paged.layout, a.value_side);
    p.block_table = a.paged.block_table;
    p.seq_lens = a.paged.seq_lens;
    p.max_pages_per_seq = a.paged.max_pages_per_seq;
    p.max_tokens = detail::make_fast_divisor(a.max_tokens);
  }
  p.output = a.output.data;
  p.output_stride0 = a.output.stride0;
  p.output_stride1 = a.output.stride1;
  p.dim0 = a.output.dim0;
  p.dim1 = detail::make_fast_divisor(a.output.dim1);
  p.output_dtype = a.output.dtype;
  p.output_element_bytes = dtype_bytes(a.output.dtype);
  p.norm = a.codec.norm;
  p.scale_bytes = norm_bytes(a.codec.norm);
  p.signs = a.codec.signs;
  for (int32_t i = 0; i < kMaxLevels; ++i) p.levels[i] = a.codec.codebook.levels[i];
  return detail::cuda_status(kernels->decode(p, stream), "decode kernel launch");
}

// ---- rotate -------------------------------------------------------------------------------------

Status can_implement(const RotateArgs& args) noexcept {
  const detail::RotateKernels* kernels = nullptr;
  return check_rotate(args, &kernels);
}

size_t workspace_bytes(const RotateArgs& /*args*/) noexcept { return 0; }

Status rotate(const RotateArgs& a, Workspace /*workspace*/, cudaStream_t stream) noexcept {
  const detail::RotateKernels* kernels = nullptr;
  TQ_RETURN_IF_ERROR(check_rotate(a, &kernels));
  detail::RotateParams p{};
  p.input = a.input.data;
  p.output = a.output.data;
  p.input_stride0 = a.input.stride0;
  p.input_stride1 = a.input.stride1;
  p.output_stride0 = a.output.stride0;
  p.output_stride1 = a.output.stride1;
  p.dim0 = a.input.dim0;
  p.dim1 = detail::make_fast_divisor(a.input.dim1);
  p.input_dtype = a.input.dtype;
  p.output_dtype = a.output.dtype;
  p.input_element_bytes = dtype_bytes(a.input.dtype);
  p.output_element_bytes = dtype_bytes(a.output.dtype);
  p.inverse = a.inverse;
  p.signs = a.signs;
  return detail::cuda_status(kernels->rotate(p, stream), "rotate kernel launch");
}

// ---- the table ----------------------------------------------------------------------------------

int32_t num_codec_kernels() noexcept { return detail::kNumCodecKernels; }
CodecKernelKey codec_kernel(int32_t i) noexcept {
  if (i < 0 || i >= detail::kNumCodecKernels) return {};
  return {detail::kCodecKernels[i].head_dim, detail::kCodecKernels[i].bits};
}
int32_t num_rotate_kernels() noexcept { return detail::kNumRotateKernels; }
int32_t rotate_kernel_head_dim(int32_t i) noexcept {
  return i < 0 || i >= detail::kNumRotateKernels ? 0 : detail::kRotateKernels[i].head_dim;
}

}  // namespace turboquant::cuda
