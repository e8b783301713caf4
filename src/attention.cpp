// Host API of the CUDA decode attention (turboquant/cuda/attention.hpp): argument checks, the split
// heuristic, the workspace layout, and the one dispatch table built from the one list
// kernels/attention_instances.inc.
#include "turboquant/cuda/attention.hpp"

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "attention_internal.hpp"
#include "attention_params.hpp"
#include "cuda_checks.hpp"
#include "cuda_status.hpp"
#include "kernel_table.hpp"
#include "turboquant/checks.hpp"
#include "turboquant/layout.hpp"

namespace turboquant::cuda {
namespace {

using detail::AttentionParams;
using detail::kAttentionHeadsPerCta;
using detail::kAttentionWarps;
using Entry = detail::KernelEntry<AttentionParams>;

// ---- the dispatch table: every entry of the list, for f16 and bf16 queries ---------------------------
#define TQ_ATTENTION_INSTANCE(HeadDim, KeyBits, ValueBits) \
  TQ_KERNEL_ENTRIES(AttentionParams, detail::launch_decode_attention, HeadDim, KeyBits, ValueBits)
const Entry kKernels[] = {
#include "attention_instances.inc"
};
#undef TQ_ATTENTION_INSTANCE
constexpr int32_t kNumKernels = static_cast<int32_t>(sizeof(kKernels) / sizeof(kKernels[0]));

// The generic kernel (a side stored uncompressed), one entry per head_dim and q dtype; key_bits /
// value_bits of its key are 0 ("any": bits are read at run time).
#define TQ_GENERIC_INSTANCE(HeadDim)                                                                    \
  Entry{AttentionKernelKey{HeadDim, 0, 0, DType::kF16}, &detail::launch_generic_attention<HeadDim, DType::kF16>}, \
      Entry{AttentionKernelKey{HeadDim, 0, 0, DType::kBF16}, &detail::launch_generic_attention<HeadDim, DType::kBF16>},
const Entry kGenericKernels[] = {TQ_GENERIC_INSTANCE(64) TQ_GENERIC_INSTANCE(128) TQ_GENERIC_INSTANCE(256)};
#undef TQ_GENERIC_INSTANCE

const Entry* find_generic_kernel(int32_t head_dim, DType q_dtype) noexcept {
  for (const Entry& e : kGenericKernels)
    if (e.key.head_dim == head_dim && e.key.q_dtype == q_dtype) return &e;
  return nullptr;
}


// ---- split heuristic ----------------------------------------------------------------------------------
// Per-CTA fixed cost (pair tables, query rotation, warp merge, partial store) in chunks of one
// CTA's walk: a split should give each CTA clearly more chunks than this.
constexpr int32_t kPrologueChunks = 8;
constexpr int32_t kMinChunksPerWarp = 2;
constexpr int32_t kMinChunksPerSplit = kMinChunksPerWarp * kAttentionWarps;

int32_t ceil_div(int64_t a, int64_t b) noexcept { return static_cast<int32_t>((a + b - 1) / b); }

struct Shape {
  int32_t num_seqs = 0;
  int32_t query_rows = 0;  // rows of q / out: num_seqs, or the windows' tokens
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t group = 0;
  int32_t head_tiles = 0;
  int32_t slots_per_tile = kAttentionHeadsPerCta;  // query slots of a split CTA
  int32_t head_dim = 0;
};

// Shapes only (no pointers): enough for the split count and the workspace size.
bool basic_shape(const DecodeAttentionArgs& a, Shape* sh, const detail::DecodeWindows* w = nullptr) noexcept {
  const int32_t kv = a.cache.layout.kv_heads;
  if (a.cache.num_seqs <= 0 || a.q.dim1 <= 0 || kv <= 0 || a.q.dim1 % kv != 0) return false;
  if (!is_supported_head_dim(a.format.head_dim())) return false;
  if (a.num_splits < 0 || a.num_splits > kMaxAttentionSplits || a.sm_count <= 0 || a.max_seq_len < 0) return false;
  if (w != nullptr && (w->window < 1 || w->window > detail::kMaxAttentionWindow || w->query_rows < 0)) return false;
  sh->num_seqs = a.cache.num_seqs;
  sh->query_rows = w != nullptr ? w->query_rows : a.cache.num_seqs;
  sh->q_heads = a.q.dim1;
  sh->kv_heads = kv;
  sh->group = a.q.dim1 / kv;
  sh->head_dim = a.format.head_dim();
  const int64_t slots = int64_t{sh->group} * (w != nullptr ? w->window : 1);
  sh->slots_per_tile = w != nullptr ? detail::attention_slots_per_tile(sh->head_dim, slots) : kAttentionHeadsPerCta;
  sh->head_tiles = ceil_div(slots, sh->slots_per_tile);
  return true;
}

int32_t resolve_splits(const DecodeAttentionArgs& a, const Shape& sh) noexcept {
  if (a.num_splits > 0) return a.num_splits;
  int64_t attended = a.max_seq_len;
  // A window may start mid-chunk: one more chunk than the window covers.
  if (a.sliding_window > 0 && a.sliding_window < attended) attended = int64_t{a.sliding_window} + kAttentionChunkTokens;
  const int32_t chunks = ceil_div(attended, kAttentionChunkTokens);
  const int32_t useful = chunks <= kMinChunksPerSplit ? 1 : ceil_div(chunks, kMinChunksPerSplit);
  // Whole waves: a warp's speed is bound by its latency, not by what else runs on its SM (measured:
  // time flat in bytes), so a call costs (waves) x (chunks of one CTA + its fixed cost). Pick the
  // split count minimising that over the resident CTA slots of the card; ties go to fewer splits.
  // (d 128, 8 KV heads, 132 SMs: batch 32 x 16K 1 split, 256 units on 264 slots; batch 1 x 128K 33.)
  const int64_t ctas_per_split = int64_t{sh.num_seqs} * sh.kv_heads * sh.head_tiles;
  const int64_t slots = int64_t{a.sm_count} * detail::attention_ctas_per_sm(sh.head_dim, sh.slots_per_tile);
  const int32_t most = useful < kMaxAttentionSplits ? useful : kMaxAttentionSplits;
  return detail::attention_split_count(chunks, most, ctas_per_split, slots, kPrologueChunks);
}

// ---- workspace layout ---------------------------------------------------------------------------------
constexpr size_t kWorkspaceAlignment = 256;
size_t align_up(size_t bytes) noexcept { return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment; }

struct WorkspaceLayout {
  size_t out_bytes = 0;      // partial_out
  size_t max_sum_bytes = 0;  // partial_max_sum
  [[nodiscard]] size_t total() const noexcept { return out_bytes + max_sum_bytes; }
};
WorkspaceLayout workspace_layout(const Shape& sh, int32_t splits) noexcept {
  const size_t rows = static_cast<size_t>(sh.query_rows) * static_cast<size_t>(sh.q_heads) * static_cast<size_t>(splits);
  WorkspaceLayout w;
  w.out_bytes = align_up(rows * static_cast<size_t>(sh.head_dim) * sizeof(float));
  w.max_sum_bytes = align_up(rows * 2 * sizeof(float));
  return w;
}

// ---- checks -------------------------------------------------------------------------------------------
// Everything the host can see; on success *sh and *entry describe the call.
// A format with both sides uncompressed is not a valid Format (nothing compressed); the KV cache's
// plain layers are attended through decode_attention_any_format, which allows it (allow_plain).
Status check(const DecodeAttentionArgs& a, Shape* sh, const Entry** entry, bool allow_plain = false,
             const detail::DecodeWindows* w = nullptr) noexcept {
  const Format& f = a.format;
  const bool plain = allow_plain && f.key.bits == 0 && f.value.bits == 0;
  if (plain) {
    if (f.key.head_dim != f.value.head_dim || !is_supported_head_dim(f.key.head_dim))
      return make_status(StatusCode::kUnsupportedFormat, "format.key.head_dim = ", f.key.head_dim,
                         ", format.value.head_dim = ", f.value.head_dim, ": must be equal, 64, 128 or 256");
    if (f.raw_dtype != DType::kF16 && f.raw_dtype != DType::kBF16)
      return make_status(StatusCode::kUnsupportedFormat, "format.raw_dtype = ", to_string(f.raw_dtype),
                         ": uncompressed sides are stored as f16 or bf16");
  } else {
    const Status st = validate(f);
    if (!st.is_ok()) return make_status(st.code(), "format.", st.message());
  }
  const int32_t d = f.head_dim();
  if (a.q.dtype != DType::kF16 && a.q.dtype != DType::kBF16)
    return make_status(StatusCode::kUnsupportedFormat, "q.dtype = ", to_string(a.q.dtype),
                       ": the CUDA decode attention takes f16 or bf16 queries");
  // A side stored uncompressed (K-only layers, plain layers): the generic kernel.
  const bool generic = f.key.bits == 0 || f.value.bits == 0;
  if (generic && (f.key.bits == 1 || f.value.bits == 1))
    return make_status(StatusCode::kUnsupportedFormat, "format.key.bits = ", f.key.bits, ", format.value.bits = ",
                       f.value.bits, ": with one side uncompressed the other takes 2, 3 or 4 bits");
  if (generic && w != nullptr)
    return make_status(StatusCode::kUnsupportedFormat, "format.key.bits = ", f.key.bits, ", format.value.bits = ",
                       f.value.bits, ": query windows need both sides coded");
  *entry = generic ? find_generic_kernel(d, a.q.dtype) : detail::find_kernel(kKernels, d, f.key.bits, f.value.bits, a.q.dtype);
  if (*entry == nullptr)
    return make_status(StatusCode::kUnsupportedFormat, "no decode-attention kernel for head_dim = ", d,
                       ", key.bits = ", f.key.bits, ", value.bits = ", f.value.bits, " (built (head_dim, key_bits, "
                       "value_bits): ", detail::built_list(kKernels), ", and a generic kernel for a side stored uncompressed)");

  TQ_RETURN_IF_ERROR(checks::vectors("q", a.q, d, kVectorAlignment));
  TQ_RETURN_IF_ERROR(checks::vectors("out", a.out, d, kVectorAlignment));
  if (a.out.dtype != a.q.dtype)
    return make_status(StatusCode::kInvalidArgument, "out.dtype = ", to_string(a.out.dtype),
                       " but q.dtype = ", to_string(a.q.dtype), ": out takes q's dtype");

  const PagedCache& c = a.cache;
  const layout::PageLayout& l = c.layout;
  TQ_RETURN_IF_ERROR(detail::check_device_cache(f, c));
  if (!generic && l.page_size % kAttentionChunkTokens != 0)
    return make_status(StatusCode::kUnsupportedFormat, "cache.layout.page_size = ", l.page_size,
                       ": the CUDA decode attention reads ", kAttentionChunkTokens,
                       "-token chunks, page_size must be a multiple of ", kAttentionChunkTokens);
  constexpr int32_t kMaxGridYZ = detail::kMaxGridYZ;

  if (w != nullptr) {
    if (w->query_start == nullptr || !checks::aligned(w->query_start, sizeof(int32_t)))
      return make_status(StatusCode::kInvalidArgument, "query_start = ", static_cast<const void*>(w->query_start),
                         ": must be a 4-byte aligned device array");
    if (w->window < 1 || w->window > detail::kMaxAttentionWindow)
      return make_status(StatusCode::kInvalidArgument, "window = ", w->window, ": must be in [1, ", detail::kMaxAttentionWindow, "]");
  }
  const int64_t rows = w != nullptr ? w->query_rows : c.num_seqs;
  const char* rows_name = w != nullptr ? "the query tokens" : "cache.num_seqs";
  if (a.q.dim0 != rows)
    return make_status(StatusCode::kInvalidArgument, "q.dim0 = ", a.q.dim0, " but ", rows_name, " = ", rows);
  if (a.q.dim1 % l.kv_heads != 0)
    return make_status(StatusCode::kInvalidArgument, "q_heads = q.dim1 = ", a.q.dim1,
                       ": not a multiple of kv_heads = cache.layout.kv_heads = ", l.kv_heads);
  const int32_t group = a.q.dim1 / l.kv_heads;
  if (group > kMaxAttentionGroup)
    return make_status(StatusCode::kUnsupportedFormat, "q_heads / kv_heads = ", a.q.dim1, " / ", l.kv_heads, " = ",
                       group, ": GQA groups of at most ", kMaxAttentionGroup, " query heads are supported");
  if (a.out.dim0 != rows)
    return make_status(StatusCode::kInvalidArgument, "out.dim0 = ", a.out.dim0, " but ", rows_name, " = ", rows);
  if (a.out.dim1 != a.q.dim1)
    return make_status(StatusCode::kInvalidArgument, "out.dim1 = ", a.out.dim1, " but q.dim1 (q_heads) = ", a.q.dim1);
  TQ_RETURN_IF_ERROR(detail::check_attention_options({a.lse, a.softmax_scale, a.logit_softcap, a.sliding_window,
                                                      a.max_seq_len, a.num_splits, kMaxAttentionSplits, a.sm_count},
                                                     c));
  if (l.page_bytes > INT32_MAX)
    return make_status(StatusCode::kUnsupportedFormat, "cache.layout.page_bytes = ", l.page_bytes,
                       ": pages of at most 2^31 - 1 bytes are supported (32-bit offsets inside a page)");

  if (!basic_shape(a, sh, w)) return make_status(StatusCode::kInvalidArgument, "inconsistent shapes");
  if (int64_t{sh->kv_heads} * sh->head_tiles > kMaxGridYZ)
    return make_status(StatusCode::kInvalidArgument, "kv_heads = ", sh->kv_heads, ": at most ", kMaxGridYZ,
                       " KV heads (times head tiles) per call");
  return Status::ok();
}

}  // namespace

namespace detail {

float fp16_level_scale(const float* levels, int32_t count) noexcept {
  struct Cached {
    float levels[kMaxLevels];
    int32_t count;
    float scale;
  };
  constexpr int kCached = 4;
  thread_local Cached cache[kCached] = {};
  thread_local int next = 0;
  for (const Cached& c : cache)
    if (c.count == count && std::memcmp(c.levels, levels, sizeof(float) * static_cast<size_t>(count)) == 0)
      return c.scale;
  auto worst = [&](float a) noexcept {
    double e = 0.0;
    for (int32_t i = 0; i < count; ++i) {
      const float x = a * levels[i];
      if (x == 0.0f) continue;
      const float h = half_bits_to_float(float_to_half_bits(x));
      e = std::fmax(e, std::fabs(static_cast<double>(h) / static_cast<double>(x) - 1.0));
    }
    return e;
  };
  constexpr int kSteps = 2048;
  float best = 1.0f;
  double best_error = worst(1.0f);
  for (int i = 1; i < kSteps; ++i) {
    const float a = 1.0f + static_cast<float>(i) / kSteps;
    const double e = worst(a);
    if (e < best_error) {
      best_error = e;
      best = a;
    }
  }
  Cached& c = cache[next];
  next = (next + 1) % kCached;
  std::memcpy(c.levels, levels, sizeof(float) * static_cast<size_t>(count));
  c.count = count;
  c.scale = best;
  return best;
}

}  // namespace detail

Status can_implement(const DecodeAttentionArgs& args) noexcept {
  Shape sh;
  const Entry* entry = nullptr;
  return check(args, &sh, &entry);
}

int32_t decode_attention_splits(const DecodeAttentionArgs& args) noexcept {
  Shape sh;
  if (!basic_shape(args, &sh)) return 0;
  return resolve_splits(args, sh);
}

size_t workspace_bytes(const DecodeAttentionArgs& args) noexcept {
  Shape sh;
  if (!basic_shape(args, &sh)) return 0;
  return workspace_layout(sh, resolve_splits(args, sh)).total();
}

namespace {

Status run_decode_attention(const DecodeAttentionArgs& a, Workspace workspace, cudaStream_t stream,
                            bool allow_plain, const detail::DecodeWindows* w = nullptr) noexcept {
  Shape sh;
  const Entry* entry = nullptr;
  TQ_RETURN_IF_ERROR(check(a, &sh, &entry, allow_plain, w));
  const int32_t splits = resolve_splits(a, sh);
  const WorkspaceLayout wl = workspace_layout(sh, splits);
  TQ_RETURN_IF_ERROR(detail::check_workspace(workspace, wl.total()));

  const Format& f = a.format;
  AttentionParams p;
  detail::fill_cache_params(f, a.q, a.cache, &p);
  p.head_tiles = sh.head_tiles;
  p.slots_per_tile = sh.slots_per_tile;
  if (w != nullptr) {
    p.query_rows = w->query_rows;
    p.query_start = w->query_start;
    p.window = w->window;
  }
  p.num_splits = splits;
  p.programmatic_launch = a.programmatic_launch;
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

  return detail::cuda_status(entry->launch(p, stream), "decode_attention: kernel launch");
}

}  // namespace

Status decode_attention(const DecodeAttentionArgs& a, Workspace workspace, cudaStream_t stream) noexcept {
  return run_decode_attention(a, workspace, stream, false);
}

namespace detail {

void fill_cache_params(const Format& f, const ConstView& q, const PagedCache& c, AttentionParams* p) noexcept {
  const layout::PageLayout& l = c.layout;
  p->q = q.data;
  p->q_stride0 = q.stride0;
  p->q_stride1 = q.stride1;
  fill_page_pool<true>(f, c, p);
  p->page_chunks_log2 = page_chunks_log2(l.page_size);
  p->num_seqs = c.num_seqs;
  p->query_rows = c.num_seqs;
  p->q_heads = q.dim1;
  p->kv_heads = l.kv_heads;
  p->group = q.dim1 / l.kv_heads;
  for (int32_t i = 0; i < kMaxLevels; ++i) {
    p->key_levels[i] = f.key.codebook.levels[i];
    p->value_levels[i] = f.value.codebook.levels[i];
  }
  p->key_level_scale = f.key.bits > 0 ? fp16_level_scale(p->key_levels, int32_t{1} << f.key.bits) : 1.0f;
  p->key_signs = f.key.signs;
  p->value_signs = f.value.bits > 0 ? f.value.signs : SignBits{};  // raw values: nothing to un-rotate
  p->key_bits = f.key.bits;
  p->value_bits = f.value.bits;
  p->raw_dtype = f.raw_dtype;
  p->value_raw = f.value.bits == 0;
}

Status can_implement_any_format(const DecodeAttentionArgs& args) noexcept {
  Shape sh;
  const Entry* entry = nullptr;
  return check(args, &sh, &entry, true);
}

Status decode_attention_any_format(const DecodeAttentionArgs& args, Workspace workspace, cudaStream_t stream) noexcept {
  return run_decode_attention(args, workspace, stream, true);
}

Status can_implement_windows(const DecodeAttentionArgs& args, const DecodeWindows& w) noexcept {
  Shape sh;
  const Entry* entry = nullptr;
  return check(args, &sh, &entry, false, &w);
}

size_t workspace_bytes_windows(const DecodeAttentionArgs& args, const DecodeWindows& w) noexcept {
  Shape sh;
  if (!basic_shape(args, &sh, &w)) return 0;
  return workspace_layout(sh, resolve_splits(args, sh)).total();
}

int32_t decode_attention_windows_splits(const DecodeAttentionArgs& args, const DecodeWindows& w) noexcept {
  Shape sh;
  if (!basic_shape(args, &sh, &w)) return 0;
  return resolve_splits(args, sh);
}

Status decode_attention_windows(const DecodeAttentionArgs& args, const DecodeWindows& w, Workspace workspace,
                                cudaStream_t stream) noexcept {
  return run_decode_attention(args, workspace, stream, false, &w);
}

}  // namespace detail

int32_t num_attention_kernels() noexcept { return kNumKernels; }

AttentionKernelKey attention_kernel(int32_t i) noexcept {
  if (i < 0 || i >= kNumKernels) return {};
  return kKernels[i].key;
}

}  // namespace turboquant::cuda
