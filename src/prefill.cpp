// Host API of the CUDA chunked-prefill attention and the state merge (turboquant/cuda/prefill.hpp):
// argument checks, the split heuristic, the workspace layout, and the one dispatch table built from
// the one list kernels/prefill_instances.inc.
#include "turboquant/cuda/prefill.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "attention_internal.hpp"
#include "cuda_checks.hpp"
#include "cuda_status.hpp"
#include "kernel_table.hpp"
#include "prefill_params.hpp"
#include "turboquant/checks.hpp"
#include "turboquant/layout.hpp"

namespace turboquant::cuda {
namespace {

using detail::PrefillParams;
using Entry = detail::KernelEntry<PrefillParams>;

#define TQ_PREFILL_INSTANCE(HeadDim, KeyBits, ValueBits) \
  TQ_KERNEL_ENTRIES(PrefillParams, detail::launch_prefill_attention, HeadDim, KeyBits, ValueBits)
const Entry kKernels[] = {
#include "prefill_instances.inc"
};
#undef TQ_PREFILL_INSTANCE
constexpr int32_t kNumKernels = static_cast<int32_t>(sizeof(kKernels) / sizeof(kKernels[0]));


int64_t ceil_div(int64_t a, int64_t b) noexcept { return (a + b - 1) / b; }

struct Shape {
  int32_t num_seqs = 0;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t group = 0;
  int32_t head_dim = 0;
  int32_t row_tiles = 0;
  int64_t total_tokens = 0;
  bool fresh = false;
};

// Shapes only (no pointers): enough for the split count and the workspace size.
bool basic_shape(const PrefillAttentionArgs& a, Shape* sh) noexcept {
  const int32_t kv = a.cache.layout.kv_heads;
  if (a.cache.num_seqs <= 0 || a.q.dim0 <= 0 || a.q.dim1 <= 0 || kv <= 0 || a.q.dim1 % kv != 0) return false;
  if (!is_supported_head_dim(a.format.head_dim())) return false;
  if (a.max_query_len <= 0 || a.max_seq_len < 0 || a.sm_count <= 0) return false;
  if (a.num_splits < 0 || a.num_splits > kMaxPrefillSplits) return false;
  if (a.order != PrefillOrder::kFresh && a.order != PrefillOrder::kAppended) return false;
  sh->num_seqs = a.cache.num_seqs;
  sh->q_heads = a.q.dim1;
  sh->kv_heads = kv;
  sh->group = a.q.dim1 / kv;
  sh->head_dim = a.format.head_dim();
  const int64_t tiles = ceil_div(int64_t{a.max_query_len} * sh->group, kPrefillRowsPerCta);
  if (tiles > 0x7fffffff) return false;
  sh->row_tiles = static_cast<int32_t>(tiles);
  sh->total_tokens = a.q.dim0;
  sh->fresh = a.order == PrefillOrder::kFresh;
  return true;
}

// Splits of the prefix: enough CTAs for about one wave, each split at least kMinTilesPerSplit tiles
// of the longest attended range. The CTA count is estimated from the rows actually present
// (total_tokens), not the padded grid. Measured on an H200 (bench_prefill BM_VerifySplits, verify 8
// over 32K, 8 KV heads, 128-row CTAs of 8 warps, 2 per SM, 2026-11-28): 8 / 16 / 32 / 64 / 128
// splits 0.309 / 0.172 / 0.141 / 0.168 / 0.245 ms: 32 (256 CTAs on 264 slots) is the best, the
// heuristic gives 33. (The 64-row CTAs of 4 warps before: 32 splits, 256 CTAs on 396 slots.)
int32_t resolve_splits(const PrefillAttentionArgs& a, const Shape& sh) noexcept {
  if (a.num_splits > 0) return a.num_splits;
  constexpr int64_t kMinTilesPerSplit = 4;
  int64_t attended = int64_t{a.max_seq_len};
  if (a.sliding_window > 0 && a.sliding_window < attended)
    attended = int64_t{a.sliding_window} + a.max_query_len + kPrefillTileTokens;
  const int64_t tiles = ceil_div(attended, kPrefillTileTokens);
  const int64_t useful = tiles <= kMinTilesPerSplit ? 1 : ceil_div(tiles, kMinTilesPerSplit);
  const int64_t row_ctas =
      (ceil_div(sh.total_tokens * sh.group, kPrefillRowsPerCta) + (sh.num_seqs - 1)) * sh.kv_heads;
  const int64_t slots = int64_t{a.sm_count} * detail::prefill_ctas_per_sm(sh.head_dim);
  int64_t splits = ceil_div(slots, row_ctas);
  if (splits > useful) splits = useful;
  if (splits > kMaxPrefillSplits) splits = kMaxPrefillSplits;
  if (splits < 1) splits = 1;
  return static_cast<int32_t>(splits);
}

constexpr size_t kWorkspaceAlignment = 256;
size_t align_up(size_t bytes) noexcept {
  return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

struct WorkspaceLayout {
  size_t out_bytes = 0;
  size_t max_sum_bytes = 0;
  [[nodiscard]] size_t total() const noexcept { return out_bytes + max_sum_bytes; }
};
WorkspaceLayout workspace_layout(const Shape& sh, int32_t parts) noexcept {
  const size_t rows = static_cast<size_t>(sh.total_tokens) * static_cast<size_t>(sh.q_heads) * static_cast<size_t>(parts);
  WorkspaceLayout w;
  w.out_bytes = align_up(rows * static_cast<size_t>(sh.head_dim) * sizeof(float));
  w.max_sum_bytes = align_up(rows * 2 * sizeof(float));
  return w;
}

int32_t parts_of(const Shape& sh, int32_t splits) noexcept { return splits + (sh.fresh ? 1 : 0); }

// ---- small kAppended windows on the decode kernel (PrefillAttentionArgs::small_windows_as_decode) --
// The decode kernel in window mode (src/attention_internal.hpp): the (token, head) pairs of a
// sequence's window share its CTAs' head tiles, each token with its causal length. Taken when that
// kernel supports the call (both sides coded, page size a multiple of 16, a built decode kernel,
// ...), else the prefill kernel runs.
static_assert(kMaxDecodeWindow == detail::kMaxAttentionWindow, "one window limit");

DecodeAttentionArgs window_decode_args(const PrefillAttentionArgs& a) noexcept {
  DecodeAttentionArgs d;
  d.format = a.format;
  d.q = a.q;
  d.cache = a.cache;
  d.out = a.out;
  d.lse = a.lse;
  d.softmax_scale = a.softmax_scale;
  d.sliding_window = a.sliding_window;
  d.logit_softcap = a.logit_softcap;
  d.max_seq_len = a.max_seq_len;
  d.num_splits = a.num_splits;
  d.sm_count = a.sm_count;
  return d;
}

detail::DecodeWindows decode_windows(const PrefillAttentionArgs& a, const Shape& sh) noexcept {
  detail::DecodeWindows w;
  w.query_start = a.query_start;
  w.window = a.max_query_len;
  w.query_rows = static_cast<int32_t>(sh.total_tokens);
  return w;
}

bool use_decode_windows(const PrefillAttentionArgs& a, const Shape& sh) noexcept {
  if (!a.small_windows_as_decode || sh.fresh || a.max_query_len > kMaxDecodeWindow) return false;
  if (sh.total_tokens > 0x7fffffff) return false;
  return detail::can_implement_windows(window_decode_args(a), decode_windows(a, sh)).is_ok();
}

Status check_qtype_view(const char* name, const ConstView& v, DType q_dtype, int32_t d) noexcept {
  TQ_RETURN_IF_ERROR(checks::vectors(name, v, d, kVectorAlignment));
  if (v.dtype != q_dtype)
    return make_status(StatusCode::kInvalidArgument, name, ".dtype = ", to_string(v.dtype), " but q.dtype = ",
                       to_string(q_dtype), ": it takes q's dtype");
  return Status::ok();
}

Status check(const PrefillAttentionArgs& a, Shape* sh, const Entry** entry) noexcept {
  const Format& f = a.format;
  {
    const Status st = validate(f);
    if (!st.is_ok()) return make_status(st.code(), "format.", st.message());
  }
  if (a.order != PrefillOrder::kFresh && a.order != PrefillOrder::kAppended)
    return make_status(StatusCode::kInvalidArgument, "order = ", static_cast<int32_t>(a.order),
                       ": must be kFresh (0) or kAppended (1)");
  if (f.key.bits == 0 || f.value.bits == 0)
    return make_status(StatusCode::kUnsupportedFormat, "format.key.bits = ", f.key.bits, ", format.value.bits = ",
                       f.value.bits, ": the CUDA prefill attention reads coded keys and values only");
  const int32_t d = f.head_dim();
  if (a.q.dtype != DType::kF16 && a.q.dtype != DType::kBF16)
    return make_status(StatusCode::kUnsupportedFormat, "q.dtype = ", to_string(a.q.dtype),
                       ": the CUDA prefill attention takes f16 or bf16 queries");
  *entry = detail::find_kernel(kKernels, d, f.key.bits, f.value.bits, a.q.dtype);
  if (*entry == nullptr)
    return make_status(StatusCode::kUnsupportedFormat, "no prefill-attention kernel for head_dim = ", d,
                       ", key.bits = ", f.key.bits, ", value.bits = ", f.value.bits,
                       " (built (head_dim, key_bits, value_bits): ", detail::built_list(kKernels), ")");
  TQ_RETURN_IF_ERROR(checks::vectors("q", a.q, d, kVectorAlignment));
  TQ_RETURN_IF_ERROR(checks::vectors("out", a.out, d, kVectorAlignment));
  if (a.out.dtype != a.q.dtype)
    return make_status(StatusCode::kInvalidArgument, "out.dtype = ", to_string(a.out.dtype), " but q.dtype = ",
                       to_string(a.q.dtype), ": out takes q's dtype");
  if (a.out.dim0 != a.q.dim0)
    return make_status(StatusCode::kInvalidArgument, "out.dim0 = ", a.out.dim0, " but q.dim0 = ", a.q.dim0);
  if (a.out.dim1 != a.q.dim1)
    return make_status(StatusCode::kInvalidArgument, "out.dim1 = ", a.out.dim1, " but q.dim1 = ", a.q.dim1);

  const PagedCache& c = a.cache;
  const layout::PageLayout& l = c.layout;
  TQ_RETURN_IF_ERROR(detail::check_device_cache(f, c));
  if (a.q.dim1 % l.kv_heads != 0)
    return make_status(StatusCode::kInvalidArgument, "q_heads = q.dim1 = ", a.q.dim1,
                       ": not a multiple of kv_heads = cache.layout.kv_heads = ", l.kv_heads);
  const int32_t group = a.q.dim1 / l.kv_heads;
  if (group > kMaxPrefillGroup)
    return make_status(StatusCode::kUnsupportedFormat, "q_heads / kv_heads = ", a.q.dim1, " / ", l.kv_heads, " = ",
                       group, ": GQA groups of at most ", kMaxPrefillGroup, " query heads are supported");
  if (a.query_start == nullptr) return make_status(StatusCode::kInvalidArgument, "query_start = null");
  if (!checks::aligned(a.query_start, sizeof(int32_t)))
    return make_status(StatusCode::kMisaligned, "query_start = ", static_cast<const void*>(a.query_start),
                       ": not 4-byte aligned");
  if (a.max_query_len <= 0)
    return make_status(StatusCode::kInvalidArgument, "max_query_len = ", a.max_query_len, ": must be > 0");
  if (a.max_query_len > a.q.dim0)
    return make_status(StatusCode::kInvalidArgument, "max_query_len = ", a.max_query_len,
                       ": beyond q.dim0 (total_tokens) = ", a.q.dim0);
  if (a.order == PrefillOrder::kFresh) {
    TQ_RETURN_IF_ERROR(check_qtype_view("chunk_keys", a.chunk_keys, a.q.dtype, d));
    TQ_RETURN_IF_ERROR(check_qtype_view("chunk_values", a.chunk_values, a.q.dtype, d));
    const char* names[2] = {"chunk_keys", "chunk_values"};
    const ConstView* views[2] = {&a.chunk_keys, &a.chunk_values};
    for (int i = 0; i < 2; ++i) {
      if (views[i]->dim0 != a.q.dim0)
        return make_status(StatusCode::kInvalidArgument, names[i], ".dim0 = ", views[i]->dim0,
                           " but q.dim0 (total_tokens) = ", a.q.dim0);
      if (views[i]->dim1 != l.kv_heads)
        return make_status(StatusCode::kInvalidArgument, names[i], ".dim1 = ", views[i]->dim1,
                           " but cache.layout.kv_heads = ", l.kv_heads);
    }
  }
  TQ_RETURN_IF_ERROR(detail::check_attention_options({a.lse, a.softmax_scale, a.logit_softcap, a.sliding_window,
                                                      a.max_seq_len, a.num_splits, kMaxPrefillSplits, a.sm_count},
                                                     c));
  if (!basic_shape(a, sh)) return make_status(StatusCode::kInvalidArgument, "inconsistent shapes");
  const int64_t grid_y = int64_t{sh->kv_heads} * parts_of(*sh, resolve_splits(a, *sh));
  if (grid_y > detail::kMaxGridYZ)
    return make_status(StatusCode::kInvalidArgument, "kv_heads * parts = ", grid_y, ": at most ", detail::kMaxGridYZ);
  return Status::ok();
}

}  // namespace

Status can_implement(const PrefillAttentionArgs& args) noexcept {
  Shape sh;
  const Entry* entry = nullptr;
  return check(args, &sh, &entry);
}

int32_t prefill_attention_splits(const PrefillAttentionArgs& args) noexcept {
  Shape sh;
  if (!basic_shape(args, &sh)) return 0;
  if (use_decode_windows(args, sh)) return detail::decode_attention_windows_splits(window_decode_args(args), decode_windows(args, sh));
  return resolve_splits(args, sh);
}

size_t workspace_bytes(const PrefillAttentionArgs& args) noexcept {
  Shape sh;
  if (!basic_shape(args, &sh)) return 0;
  if (use_decode_windows(args, sh)) return detail::workspace_bytes_windows(window_decode_args(args), decode_windows(args, sh));
  return workspace_layout(sh, parts_of(sh, resolve_splits(args, sh))).total();
}

Status prefill_attention(const PrefillAttentionArgs& a, Workspace workspace, cudaStream_t stream) noexcept {
  Shape sh;
  const Entry* entry = nullptr;
  TQ_RETURN_IF_ERROR(check(a, &sh, &entry));
  if (use_decode_windows(a, sh))
    return detail::decode_attention_windows(window_decode_args(a), decode_windows(a, sh), workspace, stream);
  const int32_t splits = resolve_splits(a, sh);
  const int32_t parts = parts_of(sh, splits);
  const WorkspaceLayout wl = workspace_layout(sh, parts);
  TQ_RETURN_IF_ERROR(detail::check_workspace(workspace, wl.total()));

  const Format& f = a.format;
  PrefillParams p;
  p.q = a.q.data;
  p.q_stride0 = a.q.stride0;
  p.q_stride1 = a.q.stride1;
  p.query_start = a.query_start;
  p.max_query_len = a.max_query_len;
  p.total_tokens = sh.total_tokens;
  p.fresh = sh.fresh;
  if (sh.fresh) {
    p.chunk_keys = a.chunk_keys.data;
    p.chunk_keys_stride0 = a.chunk_keys.stride0;
    p.chunk_keys_stride1 = a.chunk_keys.stride1;
    p.chunk_values = a.chunk_values.data;
    p.chunk_values_stride0 = a.chunk_values.stride0;
    p.chunk_values_stride1 = a.chunk_values.stride1;
  }
  detail::fill_page_pool<true>(f, a.cache, &p);
  p.page_size_log2 = detail::exact_log2(p.page_size);
  p.num_seqs = sh.num_seqs;
  p.q_heads = sh.q_heads;
  p.kv_heads = sh.kv_heads;
  p.group = sh.group;
  p.row_tiles = sh.row_tiles;
  p.num_splits = splits;
  p.parts = parts;
  p.softmax_scale = a.softmax_scale == 0.0f ? 1.0f / std::sqrt(static_cast<float>(sh.head_dim)) : a.softmax_scale;
  p.logit_softcap = a.logit_softcap;
  p.sliding_window = a.sliding_window;
  auto* base = static_cast<uint8_t*>(workspace.data);
  p.partial_out = reinterpret_cast<float*>(base);
  p.partial_max_sum = reinterpret_cast<float*>(base + wl.out_bytes);
  p.out = a.out.data;
  p.out_stride0 = a.out.stride0;
  p.out_stride1 = a.out.stride1;
  p.lse = a.lse;
  for (int32_t i = 0; i < kMaxLevels; ++i) {
    p.key_levels[i] = f.key.codebook.levels[i];
    p.value_levels[i] = f.value.codebook.levels[i];
  }
  p.key_signs = f.key.signs;
  p.value_signs = f.value.signs;
  return detail::cuda_status(entry->launch(p, stream), "prefill_attention: kernel launch");
}

int32_t num_prefill_kernels() noexcept { return kNumKernels; }

AttentionKernelKey prefill_kernel(int32_t i) noexcept {
  if (i < 0 || i >= kNumKernels) return {};
  return kKernels[i].key;
}

// ---- merge_attention_states ------------------------------------------------------------------------

namespace {

template <typename P, typename Q>
Status same_dims(const char* name, const BasicView<P>& v, const char* like_name, const BasicView<Q>& like) noexcept {
  if (v.dim0 != like.dim0 || v.dim1 != like.dim1)
    return make_status(StatusCode::kInvalidArgument, name, " is [", v.dim0, ", ", v.dim1, "] but ", like_name,
                       " is [", like.dim0, ", ", like.dim1, "]");
  return Status::ok();
}

Status check_merge(const MergeAttentionStatesArgs& a) noexcept {
  const int32_t d = a.out_a.head_dim;
  if (d <= 0) return make_status(StatusCode::kInvalidArgument, "out_a.head_dim = ", d, ": must be > 0");
  TQ_RETURN_IF_ERROR(checks::vectors("out_a", a.out_a, d));
  TQ_RETURN_IF_ERROR(checks::vectors("out_b", a.out_b, d));
  TQ_RETURN_IF_ERROR(checks::vectors("out", a.out, d));
  TQ_RETURN_IF_ERROR(same_dims("out_b", a.out_b, "out_a", a.out_a));
  TQ_RETURN_IF_ERROR(same_dims("out", a.out, "out_a", a.out_a));
  if (a.lse_a == nullptr) return make_status(StatusCode::kInvalidArgument, "lse_a = null");
  if (a.lse_b == nullptr) return make_status(StatusCode::kInvalidArgument, "lse_b = null");
  const float* lses[3] = {a.lse_a, a.lse_b, a.lse};
  const char* names[3] = {"lse_a", "lse_b", "lse"};
  for (int i = 0; i < 3; ++i)
    if (lses[i] != nullptr && !checks::aligned(lses[i], sizeof(float)))
      return make_status(StatusCode::kMisaligned, names[i], " = ", static_cast<const void*>(lses[i]),
                         ": not aligned to 4-byte floats");
  if (a.out_a.dim0 * a.out_a.dim1 > (int64_t{1} << 40))
    return make_status(StatusCode::kInvalidArgument, "out_a has too many rows: ", a.out_a.dim0 * a.out_a.dim1);
  return Status::ok();
}

}  // namespace

Status can_implement(const MergeAttentionStatesArgs& args) noexcept { return check_merge(args); }

Status merge_attention_states(const MergeAttentionStatesArgs& a, cudaStream_t stream) noexcept {
  TQ_RETURN_IF_ERROR(check_merge(a));
  detail::MergeStatesParams p;
  p.a = a.out_a.data;
  p.a_dtype = a.out_a.dtype;
  p.a_stride0 = a.out_a.stride0;
  p.a_stride1 = a.out_a.stride1;
  p.lse_a = a.lse_a;
  p.b = a.out_b.data;
  p.b_dtype = a.out_b.dtype;
  p.b_stride0 = a.out_b.stride0;
  p.b_stride1 = a.out_b.stride1;
  p.lse_b = a.lse_b;
  p.out = a.out.data;
  p.out_dtype = a.out.dtype;
  p.out_stride0 = a.out.stride0;
  p.out_stride1 = a.out.stride1;
  p.lse = a.lse;
  p.rows = a.out_a.dim0;
  p.heads = a.out_a.dim1;
  p.head_dim = a.out_a.head_dim;
  return detail::cuda_status(detail::launch_merge_states(p, stream), "merge_attention_states: kernel launch");
}

}  // namespace turboquant::cuda
