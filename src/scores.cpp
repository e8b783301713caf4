// Host API of the CUDA packed-QK scores (turboquant/cuda/scores.hpp): argument checks and the
// launch through the one dispatch table of kernels/scores.cu.
#include "turboquant/cuda/scores.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "attention_internal.hpp"
#include "attention_params.hpp"
#include "cuda_checks.hpp"
#include "cuda_status.hpp"
#include "scores_params.hpp"
#include "turboquant/cuda/attention.hpp"
#include "turboquant/checks.hpp"
#include "turboquant/layout.hpp"

namespace turboquant::cuda {
namespace {

static_assert(kMaxScoresGroup == detail::kMaxScoresGroupDevice, "GQA group bound of the kernel");

Status check(const ScoresArgs& a, detail::ScoresLauncher* launch) noexcept {
  const Format& f = a.format;
  {
    const Status st = validate(f);
    if (!st.is_ok()) return make_status(st.code(), "format.", st.message());
  }
  if (f.key.bits == 0)
    return make_status(StatusCode::kUnsupportedFormat,
                       "format.key.bits = 0 (uncompressed keys): the CUDA scores read coded keys only "
                       "(the CPU reference supports raw keys)");
  const int32_t d = f.head_dim();
  *launch = detail::find_scores_launcher(d, f.key.bits);
  if (*launch == nullptr)
    return make_status(StatusCode::kUnsupportedFormat, "no scores kernel for head_dim = ", d, ", key.bits = ",
                       f.key.bits, " (built: head_dim 64, 128, 256 x key bits 2, 3, 4)");
  TQ_RETURN_IF_ERROR(checks::vectors("q", a.q, d));
  TQ_RETURN_IF_ERROR(checks::finite_non_negative("softmax_scale", a.softmax_scale));
  if (a.scores == nullptr) return make_status(StatusCode::kInvalidArgument, "scores = null");
  if (!checks::aligned(a.scores, sizeof(float)))
    return make_status(StatusCode::kMisaligned, "scores = ", static_cast<const void*>(a.scores),
                       ": not aligned to 4-byte floats");
  if (a.max_context <= 0)
    return make_status(StatusCode::kInvalidArgument, "max_context = ", a.max_context, ": must be > 0");
  TQ_RETURN_IF_ERROR(detail::check_device_cache(f, a.cache));
  const PagedCache& c = a.cache;
  if (a.q.dim0 != c.num_seqs)
    return make_status(StatusCode::kInvalidArgument, "q.dim0 = ", a.q.dim0, " but cache.num_seqs = ", c.num_seqs);
  if (a.q.dim1 % c.layout.kv_heads != 0)
    return make_status(StatusCode::kInvalidArgument, "q_heads = q.dim1 = ", a.q.dim1,
                       ": not a multiple of kv_heads = cache.layout.kv_heads = ", c.layout.kv_heads);
  if (c.layout.kv_heads > detail::kMaxGridYZ)
    return make_status(StatusCode::kInvalidArgument, "kv_heads = ", c.layout.kv_heads, ": at most ",
                       detail::kMaxGridYZ, " KV heads per call");
  const int32_t group = a.q.dim1 / c.layout.kv_heads;
  if (group > kMaxScoresGroup)
    return make_status(StatusCode::kUnsupportedFormat, "q_heads / kv_heads = ", a.q.dim1, " / ", c.layout.kv_heads,
                       " = ", group, ": GQA groups of at most ", kMaxScoresGroup, " query heads are supported");
  return Status::ok();
}

// The tensor-core path (the decode-attention split kernel's Q.K^T, kernels/scores_tc.cu): f16 /
// bf16 queries with 16-byte aligned rows, head_dim 128, key bits 2-4, 16-token-aligned pages.
using TcLauncher = cudaError_t (*)(const detail::AttentionParams&, cudaStream_t) noexcept;
TcLauncher tensor_core_launcher(const ScoresArgs& a) noexcept {
  const Format& f = a.format;
  const layout::PageLayout& l = a.cache.layout;
  if (f.head_dim() != 128 || l.page_size % kAttentionChunkTokens != 0 || l.page_bytes > INT32_MAX) return nullptr;
  constexpr int64_t kQBytes = 2;
  if (!checks::aligned(a.q.data, kVectorAlignment) || (a.q.stride0 * kQBytes) % kVectorAlignment != 0 ||
      (a.q.stride1 * kQBytes) % kVectorAlignment != 0)
    return nullptr;
  const bool bf16 = a.q.dtype == DType::kBF16;
  if (!bf16 && a.q.dtype != DType::kF16) return nullptr;
  switch (f.key.bits) {
    case 2: return bf16 ? &detail::launch_scores_tc<128, 2, DType::kBF16> : &detail::launch_scores_tc<128, 2, DType::kF16>;
    case 3: return bf16 ? &detail::launch_scores_tc<128, 3, DType::kBF16> : &detail::launch_scores_tc<128, 3, DType::kF16>;
    case 4: return bf16 ? &detail::launch_scores_tc<128, 4, DType::kBF16> : &detail::launch_scores_tc<128, 4, DType::kF16>;
    default: return nullptr;
  }
}

Status launch_tensor_core(const ScoresArgs& a, TcLauncher launch, cudaStream_t stream) noexcept {
  const Format& f = a.format;
  const layout::PageLayout& l = a.cache.layout;
  detail::AttentionParams p;
  detail::fill_cache_params(f, a.q, a.cache, &p);
  p.head_tiles = (p.group + detail::kAttentionHeadsPerCta - 1) / detail::kAttentionHeadsPerCta;
  // Splits: about two waves of CTAs, at least 8 chunks (128 tokens) each.
  const int64_t capacity = static_cast<int64_t>(a.cache.max_pages_per_seq) * l.page_size;
  const int64_t chunks = (std::min<int64_t>(a.max_context, capacity) + kAttentionChunkTokens - 1) / kAttentionChunkTokens;
  const int64_t units = int64_t{p.num_seqs} * p.kv_heads * p.head_tiles;
  const int64_t slots = int64_t{kDefaultSmCount} * detail::attention_ctas_per_sm(f.head_dim());
  int64_t splits = (2 * slots + units - 1) / units;
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, (chunks + 7) / 8));
  splits = std::min<int64_t>(std::max<int64_t>(splits, 1), kMaxAttentionSplits);
  p.num_splits = static_cast<int32_t>(splits);
  p.programmatic_launch = true;
  p.softmax_scale = a.softmax_scale == 0.0f ? 1.0f / std::sqrt(static_cast<float>(f.head_dim())) : a.softmax_scale;
  p.scores = a.scores;
  p.max_context = a.max_context;
  return detail::cuda_status(launch(p, stream), "scores: kernel launch");
}

}  // namespace

Status can_implement(const ScoresArgs& args) noexcept {
  detail::ScoresLauncher launch = nullptr;
  return check(args, &launch);
}

size_t workspace_bytes(const ScoresArgs&) noexcept { return 0; }

Status scores(const ScoresArgs& a, Workspace, cudaStream_t stream) noexcept {
  detail::ScoresLauncher launch = nullptr;
  TQ_RETURN_IF_ERROR(check(a, &launch));
  if (const TcLauncher tc = tensor_core_launcher(a); tc != nullptr) return launch_tensor_core(a, tc, stream);
  const Format& f = a.format;
  const layout::PageLayout& l = a.cache.layout;
  detail::ScoresParams p;
  p.q = a.q.data;
  p.q_dtype = a.q.dtype;
  p.q_stride0 = a.q.stride0;
  p.q_stride1 = a.q.stride1;
  detail::fill_page_pool<false>(f, a.cache, &p);
  p.key_row_bytes = l.key_row_bytes;
  p.num_seqs = a.cache.num_seqs;
  p.q_heads = a.q.dim1;
  p.kv_heads = l.kv_heads;
  p.group = a.q.dim1 / l.kv_heads;
  const int32_t d = f.head_dim();
  p.softmax_scale = a.softmax_scale == 0.0f ? 1.0f / std::sqrt(static_cast<float>(d)) : a.softmax_scale;
  p.scores = a.scores;
  p.max_context = a.max_context;
  for (int32_t i = 0; i < kMaxLevels; ++i) p.key_levels[i] = f.key.codebook.levels[i];
  p.key_signs = f.key.signs;
  return detail::cuda_status(launch(p, stream), "scores: kernel launch");
}

}  // namespace turboquant::cuda
