// PagedKVCache: a small owning KV cache of packed, paged blocks. The class keeps the bookkeeping
// on the host; a backend owns the pools: CpuKVCacheBackend (here, host memory; PagedKVCache::create)
// or the CUDA backend (device memory; turboquant/cuda/kv_cache.hpp, cuda::create_kv_cache).
// Header-only, C++17, no CUDA headers. Nothing here prints, throws on purpose or aborts; every
// fallible call returns a Status naming the argument and its value.
//
// Model (vLLM style):
//   - One pool of `num_pages` pages per layer, allocated once at creation. Pages are shared across
//     layers by index: a sequence has ONE block table, and page p exists in every layer's pool.
//   - Each layer has a Format chosen by the config's policy (key bits, value bits in {2, 3, 4}, or
//     0 = uncompressed, stored as config.raw_dtype: fp16 by default, or bf16). A layer with BOTH
//     sides uncompressed is stored as plain raw pages
//     (format(layer).key.bits == value.bits == 0, layout from layout::page_layout); it is not a
//     valid Format for the kernels and is attended by the class itself.
//   - K/V signs differ per layer: layer l uses seed layer_seed(seed, l) (GUIDE section 8: one sign
//     vector for every layer is a defect of the Python library).
//
// Lengths: every layer of a sequence has its own length (tokens appended to that layer).
//   append(seq, layer, K, V) writes tokens at positions [layer_length, layer_length + n) of that
//   layer, reserving pages in the shared block table when they are not there yet (usually on the
//   layer-0 append of a step). A decode step is: for each layer, append(seq, layer, k, v) then
//   attention(seq, layer, q, out) (attention reads the layer's own length, so it includes the
//   token just appended). append_batch(ids, n, layer, K, V) appends ONE token to each of n
//   sequences in one call (one encode per side): a batched decode step is, per layer,
//   append_batch then attention(ids, n, ...). length(seq) is the minimum over layers: the tokens
//   complete in every layer. truncate and fork work on whole sequences; free releases everything.
//
// Copy-on-write: fork(src, dst) shares every page of src (reference counts). An append that would
// write into a page whose reference count is > 1 first copies that page (all layers) into a free
// page; so a fork shares full pages forever and copies the last partial page only when one side
// writes into it.
//
// Failure atomicity: every argument and input value is checked and every page needed is counted
// before anything changes; out of pages is kOutOfMemory with the cache exactly as before.
// (Growth of the sequence table and block tables uses std::vector; a std::bad_alloc there is
// reported as kOutOfMemory before any page is touched.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "turboquant/cpu/attention.hpp"
#include "turboquant/cpu/codec.hpp"
#include "turboquant/format.hpp"
#include "turboquant/layout.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/status.hpp"
#include "turboquant/view.hpp"

namespace turboquant {

// Bits of one layer: 2, 3, 4, or 0 = stored uncompressed (fp16).
struct LayerPolicy {
  int32_t key_bits = 4;
  int32_t value_bits = 4;
};

// A per-layer policy: (layer, num_layers) -> bits.
using LayerPolicyFn = std::function<LayerPolicy(int32_t layer, int32_t num_layers)>;

// Ready-made policies (the Python library's presets).
namespace policies {
// K and V compressed in every layer.
[[nodiscard]] inline LayerPolicyFn compress_all(int32_t key_bits = 4, int32_t value_bits = 4) {
  return [=](int32_t, int32_t) { return LayerPolicy{key_bits, value_bits}; };
}
// Keys only: values stay fp16 in every layer.
[[nodiscard]] inline LayerPolicyFn keys_only(int32_t key_bits = 4) {
  return [=](int32_t, int32_t) { return LayerPolicy{key_bits, 0}; };
}
// Values only: keys stay fp16 in every layer.
[[nodiscard]] inline LayerPolicyFn values_only(int32_t value_bits = 4) {
  return [=](int32_t, int32_t) { return LayerPolicy{0, value_bits}; };
}
// Nothing compressed (the fp16 baseline).
[[nodiscard]] inline LayerPolicyFn uncompressed() {
  return [](int32_t, int32_t) { return LayerPolicy{0, 0}; };
}
// The first `first` and last `last` layers uncompressed (the most sensitive), the rest K/V bits.
[[nodiscard]] inline LayerPolicyFn boundary_uncompressed(int32_t key_bits = 4, int32_t value_bits = 4,
                                                         int32_t first = 2, int32_t last = 2) {
  return [=](int32_t layer, int32_t layers) {
    if (layer < first || layer >= layers - last) return LayerPolicy{0, 0};
    return LayerPolicy{key_bits, value_bits};
  };
}
// An explicit list, one entry per layer (a layer beyond the list is uncompressed).
[[nodiscard]] inline LayerPolicyFn per_layer(std::vector<LayerPolicy> list) {
  return [list = std::move(list)](int32_t layer, int32_t) {
    return layer >= 0 && static_cast<size_t>(layer) < list.size() ? list[static_cast<size_t>(layer)]
                                                                   : LayerPolicy{0, 0};
  };
}
}  // namespace policies

struct KVCacheConfig {
  int32_t layers = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 128;                           // 64 | 128 | 256
  int32_t page_size = 16;                           // tokens per page (the CUDA kernel wants a multiple of 16)
  LayerPolicyFn policy = policies::compress_all();  // bits per layer
  int64_t budget_pages = 0;                         // pages per layer pool; or
  int64_t budget_bytes = 0;                         // bytes of all pools together (used when budget_pages = 0)
  uint64_t seed = kDefaultSeed;                     // RHT signs; layer l uses layer_seed(seed, l)
  DType raw_dtype = DType::kF16;                    // storage of uncompressed sides: kF16 | kBF16
};

[[nodiscard]] constexpr uint64_t layer_seed(uint64_t seed, int32_t layer) noexcept {
  return seed + static_cast<uint64_t>(layer) * uint64_t{0x9E3779B97F4A7C15};
}

// Per-layer formats and layouts of a config, and its byte math; computed without allocating the
// pools, so the numbers for any context length can be asked for before (or instead of) creating
// a cache. PagedKVCache::create uses exactly this.
struct KVCachePlan {
  std::vector<LayerPolicy> policies;        // [layers]
  std::vector<Format> formats;              // [layers]; both sides 0 = plain fp16 pages
  std::vector<layout::PageLayout> layouts;  // [layers]
  int64_t page_bytes_all_layers = 0;        // one page index across every layer
  int64_t num_pages = 0;                    // from the budget (0 when no budget is given)

  // Bytes of one token of one layer as stored (K and V, every KV head), without page padding:
  // exactly the layout's byte math.
  [[nodiscard]] int64_t bytes_per_token(int32_t layer) const { return layouts[static_cast<size_t>(layer)].token_bytes(); }
  [[nodiscard]] int64_t bytes_per_token() const {
    int64_t b = 0;
    for (const auto& l : layouts) b += l.token_bytes();
    return b;
  }
  // The same layer in fp16, uncompressed: kv_heads * 2 (K, V) * head_dim * 2 bytes.
  [[nodiscard]] int64_t fp16_bytes_per_token(int32_t layer) const {
    const auto& l = layouts[static_cast<size_t>(layer)];
    return static_cast<int64_t>(l.kv_heads) * 2 * formats[static_cast<size_t>(layer)].head_dim() * 2;
  }
  [[nodiscard]] int64_t fp16_bytes_per_token() const {
    int64_t b = 0;
    for (size_t i = 0; i < layouts.size(); ++i) b += fp16_bytes_per_token(static_cast<int32_t>(i));
    return b;
  }
  // Bytes of the pages that hold `tokens` tokens of one sequence (whole pages, all layers).
  [[nodiscard]] int64_t bytes_for_tokens(int64_t tokens) const {
    if (layouts.empty()) return 0;
    const int64_t ps = layouts[0].page_size;
    return (tokens + ps - 1) / ps * page_bytes_all_layers;
  }
  // Tokens (whole pages) that fit in `bytes`.
  [[nodiscard]] int64_t tokens_that_fit(int64_t bytes) const {
    if (layouts.empty() || page_bytes_all_layers == 0) return 0;
    return bytes / page_bytes_all_layers * layouts[0].page_size;
  }
  // fp16 bytes / stored bytes per token, over all layers.
  [[nodiscard]] double compression_ratio() const {
    const int64_t b = bytes_per_token();
    return b == 0 ? 0.0 : static_cast<double>(fp16_bytes_per_token()) / static_cast<double>(b);
  }
};

[[nodiscard]] inline Status plan_kv_cache(const KVCacheConfig& c, KVCachePlan* plan) noexcept {
  if (plan == nullptr) return make_status(StatusCode::kInvalidArgument, "plan = null");
  if (c.layers <= 0) return make_status(StatusCode::kInvalidArgument, "config.layers = ", c.layers, ": must be > 0");
  if (c.kv_heads <= 0)
    return make_status(StatusCode::kInvalidArgument, "config.kv_heads = ", c.kv_heads, ": must be > 0");
  if (!is_supported_head_dim(c.head_dim))
    return make_status(StatusCode::kUnsupportedFormat, "config.head_dim = ", c.head_dim,
                       ": supported are 64, 128, 256");
  if (c.page_size <= 0)
    return make_status(StatusCode::kInvalidArgument, "config.page_size = ", c.page_size, ": must be > 0");
  if (!c.policy) return make_status(StatusCode::kInvalidArgument, "config.policy is empty");
  if (c.raw_dtype != DType::kF16 && c.raw_dtype != DType::kBF16)
    return make_status(StatusCode::kUnsupportedFormat, "config.raw_dtype = ", to_string(c.raw_dtype),
                       ": uncompressed sides are stored as f16 or bf16");
  if (c.budget_pages < 0 || c.budget_bytes < 0)
    return make_status(StatusCode::kInvalidArgument, "config.budget_pages = ", c.budget_pages,
                       ", config.budget_bytes = ", c.budget_bytes, ": must be >= 0");
  try {
    KVCachePlan p;
    for (int32_t l = 0; l < c.layers; ++l) {
      const LayerPolicy lp = c.policy(l, c.layers);
      const int32_t bits[2] = {lp.key_bits, lp.value_bits};
      for (int s = 0; s < 2; ++s)
        if (bits[s] != 0 && (bits[s] < 2 || bits[s] > 4))
          return make_status(StatusCode::kUnsupportedFormat, "policy(layer = ", l, ").",
                             s == 0 ? "key_bits" : "value_bits", " = ", bits[s],
                             ": supported are 2, 3, 4 and 0 (uncompressed)");
      Format f{};
      const uint64_t seed = layer_seed(c.seed, l);
      if (lp.key_bits > 0) f.key = make_codec(c.head_dim, lp.key_bits, seed, kKeyStream);
      if (lp.value_bits > 0) f.value = make_codec(c.head_dim, lp.value_bits, seed, kValueStream);
      f.key.head_dim = f.value.head_dim = c.head_dim;
      f.key.bits = lp.key_bits;
      f.value.bits = lp.value_bits;
      f.raw_dtype = c.raw_dtype;
      if (lp.key_bits > 0 || lp.value_bits > 0) {
        const Status st = validate(f);
        if (!st.is_ok()) return make_status(st.code(), "format(layer = ", l, ").", st.message());
      }
      p.policies.push_back(lp);
      p.formats.push_back(f);
      p.layouts.push_back(layout::page_layout(f, c.page_size, c.kv_heads));
      p.page_bytes_all_layers += p.layouts.back().page_bytes;
    }
    p.num_pages = c.budget_pages > 0 ? c.budget_pages : c.budget_bytes / p.page_bytes_all_layers;
    if (p.num_pages > std::numeric_limits<int32_t>::max())
      return make_status(StatusCode::kInvalidArgument, "the budget gives ", p.num_pages,
                         " pages: block tables hold int32 page numbers");
    *plan = std::move(p);
  } catch (const std::bad_alloc&) {
    return make_status(StatusCode::kOutOfMemory, "planning the cache");
  } catch (...) {
    return make_status(StatusCode::kInvalidArgument, "config.policy threw");
  }
  return Status::ok();
}

// ---- compatibility check ------------------------------------------------------------------------

struct ModelAttentionConfig {
  int32_t layers = 0;
  int32_t head_dim = 128;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t sliding_window = 0;               // window of the sliding-window layers (0 = none)
  float logit_softcap = 0.0f;               // 0 = none
  std::vector<bool> full_attention_layers;  // [layers]; empty = every layer is full attention
};

struct LayerCompatibility {
  int32_t layer = 0;
  bool compressible = false;
  std::string reason;  // why not (empty when compressible)
};

struct CompatibilityReport {
  bool compatible = false;  // at least one layer can be compressed
  std::vector<LayerCompatibility> layers;
  std::vector<std::string> notes;  // model-wide remarks (soft-cap, GQA, ...)
  [[nodiscard]] int32_t compressible_layers() const {
    int32_t n = 0;
    for (const auto& l : layers) n += l.compressible ? 1 : 0;
    return n;
  }
};

// What of a model's attention can live in this cache compressed, and why not for the rest. A
// malformed config (non-positive counts, a list of the wrong length) is a Status; a model the
// cache cannot compress is a report with compatible = false and the reasons.
[[nodiscard]] inline Status check_model_compatibility(const ModelAttentionConfig& m,
                                                      CompatibilityReport* report) noexcept {
  if (report == nullptr) return make_status(StatusCode::kInvalidArgument, "report = null");
  if (m.layers <= 0) return make_status(StatusCode::kInvalidArgument, "model.layers = ", m.layers, ": must be > 0");
  if (m.q_heads <= 0 || m.kv_heads <= 0)
    return make_status(StatusCode::kInvalidArgument, "model.q_heads = ", m.q_heads, ", model.kv_heads = ",
                       m.kv_heads, ": must be > 0");
  if (!m.full_attention_layers.empty() && static_cast<int64_t>(m.full_attention_layers.size()) != m.layers)
    return make_status(StatusCode::kInvalidArgument, "model.full_attention_layers has ",
                       m.full_attention_layers.size(), " entries but model.layers = ", m.layers);
  if (m.sliding_window < 0)
    return make_status(StatusCode::kInvalidArgument, "model.sliding_window = ", m.sliding_window, ": must be >= 0");
  if (!std::isfinite(m.logit_softcap) || m.logit_softcap < 0.0f)
    return make_status(StatusCode::kInvalidArgument, "model.logit_softcap = ", m.logit_softcap,
                       ": must be finite and >= 0");
  try {
    CompatibilityReport r;
    std::string model_wide;
    if (!is_supported_head_dim(m.head_dim))
      model_wide = "head_dim = " + std::to_string(m.head_dim) + ": supported are 64, 128, 256";
    else if (m.q_heads % m.kv_heads != 0)
      model_wide = "q_heads = " + std::to_string(m.q_heads) + " is not a multiple of kv_heads = " +
                   std::to_string(m.kv_heads);
    if (m.q_heads != m.kv_heads && model_wide.empty())
      r.notes.push_back("GQA/MQA: " + std::to_string(m.q_heads / m.kv_heads) +
                        " query heads per KV head, supported");
    if (m.logit_softcap > 0.0f)
      r.notes.push_back("logit soft-cap " + std::to_string(m.logit_softcap) +
                        ": supported (pass AttentionOptions::logit_softcap)");
    for (int32_t l = 0; l < m.layers; ++l) {
      LayerCompatibility lc;
      lc.layer = l;
      const bool full = m.full_attention_layers.empty() || m.full_attention_layers[static_cast<size_t>(l)];
      if (!model_wide.empty()) {
        lc.reason = model_wide;
      } else if (!full) {
        lc.reason = m.sliding_window > 0
                        ? "sliding-window layer (window = " + std::to_string(m.sliding_window) +
                              "): its cache is bounded by the window; keep it uncompressed"
                        : "not a full-attention layer";
      } else {
        lc.compressible = true;
      }
      r.layers.push_back(std::move(lc));
    }
    r.compatible = r.compressible_layers() > 0;
    *report = std::move(r);
  } catch (...) {
    return make_status(StatusCode::kOutOfMemory, "building the compatibility report");
  }
  return Status::ok();
}

// A policy that compresses exactly the layers a report marks compressible.
[[nodiscard]] inline LayerPolicyFn policy_from_report(const CompatibilityReport& r, int32_t key_bits = 4,
                                                      int32_t value_bits = 4) {
  std::vector<LayerPolicy> list;
  for (const auto& l : r.layers) list.push_back(l.compressible ? LayerPolicy{key_bits, value_bits} : LayerPolicy{0, 0});
  return policies::per_layer(std::move(list));
}

// ---- the cache ----------------------------------------------------------------------------------

struct AttentionOptions {
  float softmax_scale = 0.0f;  // 0 means 1 / sqrt(head_dim)
  int32_t sliding_window = 0;  // 0 = off
  float logit_softcap = 0.0f;  // 0 = off
  float* lse = nullptr;        // optional [num_seqs, q_heads]
};

class PagedKVCache;

// Where the pools of a PagedKVCache live and how pages are written, copied and attended. The class
// keeps every piece of bookkeeping (sequences, block tables, lengths, reference counts, free pages)
// on the host and calls its backend only after it has checked everything and counted the pages
// (failure atomicity stays the class's job). Two backends exist:
//   - CpuKVCacheBackend (below, header-only): host pools, cpu::encode / cpu::decode_attention;
//     PagedKVCache::create(config, &cache) uses it;
//   - the CUDA backend (turboquant/cuda/kv_cache.hpp, turboquant::cuda): device pools,
//     cuda::encode / cuda::decode_attention on a stream; cuda::create_kv_cache(...).
// A backend is owned by one cache and used from one thread at a time, like the cache itself.
class KVCacheBackend {
 public:
  KVCacheBackend() = default;
  KVCacheBackend(const KVCacheBackend&) = delete;
  KVCacheBackend& operator=(const KVCacheBackend&) = delete;
  virtual ~KVCacheBackend() = default;

  // Allocates every layer's pool once (plan.num_pages x plan.layouts[l].page_bytes, zeroed, 16-byte
  // aligned) and whatever else the backend needs for its whole life. Called once, by create.
  [[nodiscard]] virtual Status allocate(const KVCacheConfig& config, const KVCachePlan& plan) noexcept = 0;
  // Base of a layer's pool (layer checked by the caller); device memory when device_memory().
  [[nodiscard]] virtual void* layer_pages(int32_t layer) const noexcept = 0;
  [[nodiscard]] virtual bool device_memory() const noexcept = 0;
  // Backend checks of one side's rows about to be written into `layer` (the class has checked the
  // shape [n, kv_heads, head_dim]). Called before anything changes; changes nothing.
  [[nodiscard]] virtual Status check_rows(int32_t layer, bool value_side, const ConstView& rows) noexcept = 0;
  // Copies page src over page dst in every layer's pool (copy-on-write).
  [[nodiscard]] virtual Status copy_page(int32_t src, int32_t dst) noexcept = 0;
  // Writes checked rows: keys / values row i to slot slots[i] (i < keys.dim0) of `layer`. The
  // cache's bookkeeping already includes these rows; seq_ids[num_seqs] are the sequences written,
  // in row order (a hint the CUDA backend uses to stage their new lengths with the slots).
  [[nodiscard]] virtual Status write(const PagedKVCache& cache, int32_t layer, const ConstView& keys,
                                     const ConstView& values, const int64_t* slots, const int64_t* seq_ids,
                                     int32_t num_seqs) noexcept = 0;
  // Attention of a batch whose ids exist, layer in range, num_seqs > 0 (checked by the class).
  [[nodiscard]] virtual Status attention(const PagedKVCache& cache, const int64_t* seq_ids, int32_t num_seqs,
                                         int32_t layer, const ConstView& q, const View& out,
                                         const AttentionOptions& opt) noexcept = 0;
};

class PagedKVCache {
 public:
  PagedKVCache() = default;
  PagedKVCache(PagedKVCache&&) noexcept = default;
  PagedKVCache& operator=(PagedKVCache&&) noexcept = default;
  PagedKVCache(const PagedKVCache&) = delete;
  PagedKVCache& operator=(const PagedKVCache&) = delete;

  // CPU backend: plans the config and allocates every layer's pool once (16-byte aligned host
  // memory, zeroed). Defined below CpuKVCacheBackend.
  [[nodiscard]] static Status create(const KVCacheConfig& config, PagedKVCache* out) noexcept;

  // Any backend (cuda::create_kv_cache uses this): plans the config, lets the backend allocate its
  // pools, sets up the bookkeeping. On an error *out is left as it was.
  [[nodiscard]] static Status create(const KVCacheConfig& config, std::unique_ptr<KVCacheBackend> backend,
                                     PagedKVCache* out) noexcept {
    if (out == nullptr) return make_status(StatusCode::kInvalidArgument, "out = null");
    if (!backend) return make_status(StatusCode::kInvalidArgument, "backend = null");
    PagedKVCache c;
    TQ_RETURN_IF_ERROR(plan_kv_cache(config, &c.plan_));
    if (c.plan_.num_pages <= 0)
      return make_status(StatusCode::kInvalidArgument, "config.budget_pages = ", config.budget_pages,
                         ", config.budget_bytes = ", config.budget_bytes, ": no whole page fits (one page of every layer is ",
                         c.plan_.page_bytes_all_layers, " bytes)");
    try {
      c.config_ = config;
      const auto n = static_cast<size_t>(c.plan_.num_pages);
      c.ref_counts_.assign(n, 0);
      c.free_pages_.reserve(n);
      for (int64_t p = c.plan_.num_pages - 1; p >= 0; --p) c.free_pages_.push_back(static_cast<int32_t>(p));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "allocating the cache");
    }
    TQ_RETURN_IF_ERROR(backend->allocate(c.config_, c.plan_));
    c.backend_ = std::move(backend);
    *out = std::move(c);
    return Status::ok();
  }

  // ---- configuration and layouts (what an engine needs to call the kernels itself) ----
  // format(), layout() and is_compressed() take a layer in [0, num_layers()) (not checked: they
  // return references); layer_pages() returns null for a layer out of range.
  [[nodiscard]] const KVCacheConfig& config() const noexcept { return config_; }
  [[nodiscard]] const KVCachePlan& plan() const noexcept { return plan_; }
  [[nodiscard]] int32_t num_layers() const noexcept { return config_.layers; }
  [[nodiscard]] const Format& format(int32_t layer) const { return plan_.formats[static_cast<size_t>(layer)]; }
  [[nodiscard]] const layout::PageLayout& layout(int32_t layer) const {
    return plan_.layouts[static_cast<size_t>(layer)];
  }
  // False for a plain-fp16 layer (both sides uncompressed; not a kernel Format).
  [[nodiscard]] bool is_compressed(int32_t layer) const {
    const Format& f = format(layer);
    return f.key.bits > 0 || f.value.bits > 0;
  }
  // Base of a layer's pool: [num_pages, layout(layer).page_bytes], 16-byte aligned. Host memory
  // for the CPU backend, DEVICE memory when on_device() (the CUDA backend).
  [[nodiscard]] void* layer_pages(int32_t layer) const noexcept {
    return layer < 0 || layer >= config_.layers || !backend_ ? nullptr : backend_->layer_pages(layer);
  }
  [[nodiscard]] bool on_device() const noexcept { return backend_ && backend_->device_memory(); }
  // The backend (null for a cache not created); for backend-specific calls (turboquant::cuda).
  [[nodiscard]] KVCacheBackend* backend() const noexcept { return backend_.get(); }

  // Change counters: table_version() changes whenever a block table may have changed (pages
  // taken, copied or released, sequences added, forked or freed), length_version() whenever a
  // length may have changed. A backend caches device copies of batch tables keyed by them.
  [[nodiscard]] uint64_t table_version() const noexcept { return table_version_; }
  [[nodiscard]] uint64_t length_version() const noexcept { return length_version_; }

  // ---- accounting ----
  [[nodiscard]] int64_t num_pages() const noexcept { return plan_.num_pages; }
  [[nodiscard]] int64_t pages_free() const noexcept { return static_cast<int64_t>(free_pages_.size()); }
  [[nodiscard]] int64_t pages_used() const noexcept { return plan_.num_pages - pages_free(); }
  [[nodiscard]] int32_t ref_count(int32_t page) const noexcept {
    return page < 0 || page >= plan_.num_pages ? 0 : ref_counts_[static_cast<size_t>(page)];
  }
  [[nodiscard]] int64_t bytes_per_token(int32_t layer) const { return plan_.bytes_per_token(layer); }
  [[nodiscard]] int64_t bytes_per_token() const { return plan_.bytes_per_token(); }
  [[nodiscard]] int64_t pool_bytes() const noexcept { return plan_.num_pages * plan_.page_bytes_all_layers; }
  [[nodiscard]] int64_t tokens_that_fit(int64_t bytes) const { return plan_.tokens_that_fit(bytes); }
  [[nodiscard]] int64_t token_capacity() const noexcept { return plan_.num_pages * config_.page_size; }
  [[nodiscard]] double compression_ratio() const { return plan_.compression_ratio(); }
  [[nodiscard]] size_t num_sequences() const noexcept { return seqs_.size(); }

  // ---- sequences ----
  [[nodiscard]] bool contains(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }

  [[nodiscard]] Status add(int64_t seq_id) noexcept {
    if (!backend_) return not_created();
    if (contains(seq_id)) return make_status(StatusCode::kInvalidArgument, "seq_id = ", seq_id, ": already present");
    try {
      Sequence s;
      s.layer_len.assign(static_cast<size_t>(config_.layers), 0);
      seqs_.emplace(seq_id, std::move(s));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "adding seq_id = ", seq_id);
    }
    ++table_version_;
    ++length_version_;
    return Status::ok();
  }

  // Tokens complete in every layer.
  [[nodiscard]] Status length(int64_t seq_id, int32_t* len) const noexcept {
    const Sequence* s = find(seq_id);
    if (s == nullptr) return not_found(seq_id);
    if (len == nullptr) return make_status(StatusCode::kInvalidArgument, "len = null");
    *len = *std::min_element(s->layer_len.begin(), s->layer_len.end());
    return Status::ok();
  }
  [[nodiscard]] Status layer_length(int64_t seq_id, int32_t layer, int32_t* len) const noexcept {
    const Sequence* s = find(seq_id);
    if (s == nullptr) return not_found(seq_id);
    TQ_RETURN_IF_ERROR(check_layer(layer));
    if (len == nullptr) return make_status(StatusCode::kInvalidArgument, "len = null");
    *len = s->layer_len[static_cast<size_t>(layer)];
    return Status::ok();
  }
  // The sequence's block table (page of tokens [i * page_size, (i + 1) * page_size)), copied.
  [[nodiscard]] Status block_table(int64_t seq_id, std::vector<int32_t>* table) const noexcept {
    const Sequence* s = find(seq_id);
    if (s == nullptr) return not_found(seq_id);
    if (table == nullptr) return make_status(StatusCode::kInvalidArgument, "table = null");
    try {
      *table = s->pages;
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "copying the block table");
    }
    return Status::ok();
  }
  // Fills a batch's block table [num_seqs, max_pages_per_seq] (unused entries 0) and the layer's
  // lengths [num_seqs], the PagedCache inputs of the kernels.
  [[nodiscard]] Status fill_batch(const int64_t* seq_ids, int32_t num_seqs, int32_t layer,
                                  int32_t max_pages_per_seq, int32_t* block_table,
                                  int32_t* seq_lens) const noexcept {
    if (seq_ids == nullptr || block_table == nullptr || seq_lens == nullptr)
      return make_status(StatusCode::kInvalidArgument, "seq_ids, block_table or seq_lens = null");
    if (num_seqs <= 0) return make_status(StatusCode::kInvalidArgument, "num_seqs = ", num_seqs, ": must be > 0");
    TQ_RETURN_IF_ERROR(check_layer(layer));
    for (int32_t i = 0; i < num_seqs; ++i) {
      const Sequence* s = find(seq_ids[i]);
      if (s == nullptr) return not_found(seq_ids[i]);
      if (static_cast<int64_t>(s->pages.size()) > max_pages_per_seq)
        return make_status(StatusCode::kInvalidArgument, "max_pages_per_seq = ", max_pages_per_seq,
                           " but seq_id = ", seq_ids[i], " holds ", s->pages.size(), " pages");
    }
    for (int32_t i = 0; i < num_seqs; ++i) {
      const Sequence* s = find(seq_ids[i]);
      int32_t* row = block_table + static_cast<int64_t>(i) * max_pages_per_seq;
      for (int32_t j = 0; j < max_pages_per_seq; ++j)
        row[j] = static_cast<size_t>(j) < s->pages.size() ? s->pages[static_cast<size_t>(j)] : 0;
      seq_lens[i] = s->layer_len[static_cast<size_t>(layer)];
    }
    return Status::ok();
  }
  // The layer's lengths of a batch [num_seqs] (fill_batch without the table).
  [[nodiscard]] Status fill_lengths(const int64_t* seq_ids, int32_t num_seqs, int32_t layer,
                                    int32_t* seq_lens) const noexcept {
    if (seq_ids == nullptr || seq_lens == nullptr)
      return make_status(StatusCode::kInvalidArgument, "seq_ids or seq_lens = null");
    TQ_RETURN_IF_ERROR(check_layer(layer));
    for (int32_t i = 0; i < num_seqs; ++i) {
      const Sequence* s = find(seq_ids[i]);
      if (s == nullptr) return not_found(seq_ids[i]);
      seq_lens[i] = s->layer_len[static_cast<size_t>(layer)];
    }
    return Status::ok();
  }
  // The most pages any sequence of the batch holds and the longest length of the layer among them.
  [[nodiscard]] Status batch_extent(const int64_t* seq_ids, int32_t num_seqs, int32_t layer, int32_t* max_pages,
                                    int32_t* max_len) const noexcept {
    if (seq_ids == nullptr || max_pages == nullptr || max_len == nullptr)
      return make_status(StatusCode::kInvalidArgument, "seq_ids, max_pages or max_len = null");
    TQ_RETURN_IF_ERROR(check_layer(layer));
    int32_t pages = 0, len = 0;
    for (int32_t i = 0; i < num_seqs; ++i) {
      const Sequence* s = find(seq_ids[i]);
      if (s == nullptr) return not_found(seq_ids[i]);
      pages = std::max(pages, static_cast<int32_t>(s->pages.size()));
      len = std::max(len, s->layer_len[static_cast<size_t>(layer)]);
    }
    *max_pages = pages;
    *max_len = len;
    return Status::ok();
  }

  // Appends n tokens to one layer of one sequence: keys and values [n, kv_heads, head_dim]
  // (CPU backend: host f32 | f16 | bf16, finite; CUDA backend: device memory, see
  // turboquant/cuda/kv_cache.hpp), encoded on the way in. Reserves pages the tokens need (and
  // copies shared pages they write into); kOutOfMemory with nothing changed when the pool cannot
  // supply them.
  [[nodiscard]] Status append(int64_t seq_id, int32_t layer, const ConstView& keys,
                              const ConstView& values) noexcept {
    return append_rows(&seq_id, 1, layer, keys, values, false);
  }

  // One decode step of one layer for a batch: appends ONE token to each of num_seqs distinct
  // sequences; keys and values [num_seqs, kv_heads, head_dim], row i for seq_ids[i]. One encode
  // per side for the whole batch. All or nothing: every id, shape and the pages of the whole batch
  // are checked before anything changes (kOutOfMemory with nothing changed).
  [[nodiscard]] Status append_batch(const int64_t* seq_ids, int32_t num_seqs, int32_t layer, const ConstView& keys,
                                    const ConstView& values) noexcept {
    if (seq_ids == nullptr) return make_status(StatusCode::kInvalidArgument, "seq_ids = null");
    if (num_seqs <= 0) return make_status(StatusCode::kInvalidArgument, "num_seqs = ", num_seqs, ": must be > 0");
    return append_rows(seq_ids, num_seqs, layer, keys, values, true);
  }

  // dst (new id) shares every page of src; later writes into a shared page copy it first.
  [[nodiscard]] Status fork(int64_t src, int64_t dst) noexcept {
    const Sequence* s = find(src);
    if (s == nullptr) return not_found(src);
    if (contains(dst)) return make_status(StatusCode::kInvalidArgument, "dst = ", dst, ": already present");
    try {
      Sequence copy = *s;
      seqs_.emplace(dst, std::move(copy));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "forking seq_id = ", src);
    }
    for (int32_t p : find(dst)->pages) ++ref_counts_[static_cast<size_t>(p)];
    ++table_version_;
    ++length_version_;
    return Status::ok();
  }

  // Rolls every layer back to new_len <= length(seq_id); frees pages no longer used.
  [[nodiscard]] Status truncate(int64_t seq_id, int32_t new_len) noexcept {
    Sequence* s = find(seq_id);
    if (s == nullptr) return not_found(seq_id);
    const int32_t len = *std::min_element(s->layer_len.begin(), s->layer_len.end());
    if (new_len < 0 || new_len > len)
      return make_status(StatusCode::kOutOfRange, "new_len = ", new_len, ": seq_id = ", seq_id,
                         " has ", len, " tokens complete in every layer");
    for (int32_t& l : s->layer_len) l = new_len;
    const size_t keep = static_cast<size_t>((static_cast<int64_t>(new_len) + config_.page_size - 1) / config_.page_size);
    while (s->pages.size() > keep) {
      release_page(s->pages.back());
      s->pages.pop_back();
    }
    ++table_version_;
    ++length_version_;
    return Status::ok();
  }

  [[nodiscard]] Status free(int64_t seq_id) noexcept {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end()) return not_found(seq_id);
    for (int32_t p : it->second.pages) release_page(p);
    seqs_.erase(it);
    ++table_version_;
    ++length_version_;
    return Status::ok();
  }

  // One decode step of one layer for a batch: q [num_seqs, q_heads, head_dim], out likewise; each
  // sequence attends to its tokens of this layer. CPU backend: cpu::decode_attention (the class's
  // own float64 attention for a plain-fp16 layer, with the same conventions). CUDA backend:
  // cuda::decode_attention on device q / out / lse (see turboquant/cuda/kv_cache.hpp).
  [[nodiscard]] Status attention(const int64_t* seq_ids, int32_t num_seqs, int32_t layer, const ConstView& q,
                                 const View& out, const AttentionOptions& opt = {}) const noexcept {
    if (!backend_) return not_created();
    if (seq_ids == nullptr) return make_status(StatusCode::kInvalidArgument, "seq_ids = null");
    if (num_seqs <= 0) return make_status(StatusCode::kInvalidArgument, "num_seqs = ", num_seqs, ": must be > 0");
    TQ_RETURN_IF_ERROR(check_layer(layer));
    for (int32_t i = 0; i < num_seqs; ++i)
      if (find(seq_ids[i]) == nullptr) return not_found(seq_ids[i]);
    return backend_->attention(*this, seq_ids, num_seqs, layer, q, out, opt);
  }
  [[nodiscard]] Status attention(int64_t seq_id, int32_t layer, const ConstView& q, const View& out,
                                 const AttentionOptions& opt = {}) const noexcept {
    return attention(&seq_id, 1, layer, q, out, opt);
  }

 private:
  struct Sequence {
    std::vector<int32_t> pages;      // block table
    std::vector<int32_t> layer_len;  // [layers]
  };

  [[nodiscard]] const Sequence* find(int64_t id) const noexcept {
    auto it = seqs_.find(id);
    return it == seqs_.end() ? nullptr : &it->second;
  }
  [[nodiscard]] Sequence* find(int64_t id) noexcept {
    auto it = seqs_.find(id);
    return it == seqs_.end() ? nullptr : &it->second;
  }
  [[nodiscard]] static Status not_found(int64_t id) noexcept {
    return make_status(StatusCode::kNotFound, "seq_id = ", id, ": no such sequence");
  }
  [[nodiscard]] static Status not_created() noexcept {
    return make_status(StatusCode::kInvalidArgument, "the cache was not created (use PagedKVCache::create)");
  }
  [[nodiscard]] Status check_layer(int32_t layer) const noexcept {
    if (layer < 0 || layer >= config_.layers)
      return make_status(StatusCode::kOutOfRange, "layer = ", layer, ": the cache has ", config_.layers, " layers");
    return Status::ok();
  }
  [[nodiscard]] Status check_rows(const char* name, const ConstView& v) const noexcept {
    TQ_RETURN_IF_ERROR(checks::vectors(name, v, config_.head_dim));
    if (v.dim1 != config_.kv_heads)
      return make_status(StatusCode::kInvalidArgument, name, ".dim1 = ", v.dim1, " but config.kv_heads = ",
                         config_.kv_heads);
    return Status::ok();
  }

  // append (batch = false: one sequence, keys.dim0 tokens) and append_batch (one token per sequence).
  [[nodiscard]] Status append_rows(const int64_t* ids, int32_t num, int32_t layer, const ConstView& keys,
                                   const ConstView& values, bool batch) noexcept {
    if (!backend_) return not_created();
    try {
      seq_scratch_.clear();
      seq_scratch_.reserve(static_cast<size_t>(num));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "num_seqs = ", num);
    }
    for (int32_t i = 0; i < num; ++i) {
      Sequence* s = find(ids[i]);
      if (s == nullptr) return not_found(ids[i]);
      for (int32_t j = 0; j < i; ++j)
        if (ids[j] == ids[i])
          return make_status(StatusCode::kInvalidArgument, "seq_ids[", i, "] = ", ids[i], " repeats seq_ids[", j,
                             "]: a batch appends one token to distinct sequences");
      seq_scratch_.push_back(s);
    }
    TQ_RETURN_IF_ERROR(check_layer(layer));
    TQ_RETURN_IF_ERROR(check_rows("keys", keys));
    TQ_RETURN_IF_ERROR(check_rows("values", values));
    if (keys.dim0 != values.dim0)
      return make_status(StatusCode::kInvalidArgument, "keys.dim0 = ", keys.dim0, " but values.dim0 = ", values.dim0);
    if (batch && keys.dim0 != num)
      return make_status(StatusCode::kInvalidArgument, "keys.dim0 = ", keys.dim0, " but num_seqs = ", num,
                         ": append_batch takes one token per sequence");
    TQ_RETURN_IF_ERROR(backend_->check_rows(layer, false, keys));
    TQ_RETURN_IF_ERROR(backend_->check_rows(layer, true, values));
    const int64_t ps = config_.page_size;
    const int64_t per = batch ? 1 : keys.dim0;  // tokens per sequence
    const auto L = static_cast<size_t>(layer);
    int64_t fresh = 0;
    try {
      shared_scratch_.clear();
      for (const Sequence* s : seq_scratch_) {
        const int64_t first = s->layer_len[L];
        const int64_t end = first + per;
        if (end > std::numeric_limits<int32_t>::max())
          return make_status(StatusCode::kOutOfRange, "appending ", per, " tokens to length ", first);
        const int64_t have = static_cast<int64_t>(s->pages.size());
        const int64_t need = (end + ps - 1) / ps;
        fresh += std::max<int64_t>(0, need - have);
        for (int64_t i = first / ps; i < std::min(have, need); ++i)
          if (ref_counts_[static_cast<size_t>(s->pages[static_cast<size_t>(i)])] > 1)
            shared_scratch_.push_back(s->pages[static_cast<size_t>(i)]);  // copy-on-write
      }
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "counting the pages of the append");
    }
    // A shared page written by k of its r holders is copied k times when k < r, r - 1 times when
    // every holder writes (the last one then holds it alone).
    std::sort(shared_scratch_.begin(), shared_scratch_.end());
    for (size_t i = 0; i < shared_scratch_.size();) {
      size_t j = i;
      while (j < shared_scratch_.size() && shared_scratch_[j] == shared_scratch_[i]) ++j;
      const auto k = static_cast<int64_t>(j - i);
      const int64_t r = ref_counts_[static_cast<size_t>(shared_scratch_[i])];
      fresh += k < r ? k : r - 1;
      i = j;
    }
    if (fresh > pages_free()) {
      if (batch)
        return make_status(StatusCode::kOutOfMemory, "layer = ", layer, ": appending one token to each of ", num,
                           " sequences needs ", fresh, " free pages, ", pages_free(), " are free");
      return make_status(StatusCode::kOutOfMemory, "seq_id = ", ids[0], ", layer = ", layer, ": appending ",
                         keys.dim0, " tokens needs ", fresh, " free pages, ", pages_free(), " are free");
    }
    try {
      for (Sequence* s : seq_scratch_)
        s->pages.reserve(static_cast<size_t>((s->layer_len[L] + per + ps - 1) / ps));
      slots_.resize(static_cast<size_t>(keys.dim0));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "growing the block tables of the append");
    }
    // Nothing can fail from here on but the backend's own (device) calls.
    Status copy_status = Status::ok();
    bool table_changed = false;
    for (size_t i = 0; i < seq_scratch_.size(); ++i) {
      Sequence* s = seq_scratch_[i];
      const int64_t first = s->layer_len[L];
      const int64_t end = first + per;
      const int64_t have = static_cast<int64_t>(s->pages.size());
      const int64_t need = (end + ps - 1) / ps;
      for (int64_t p = first / ps; p < std::min(have, need); ++p) {
        int32_t& page = s->pages[static_cast<size_t>(p)];
        if (ref_counts_[static_cast<size_t>(page)] > 1) {
          const int32_t copy = take_page();
          const Status st = backend_->copy_page(page, copy);
          if (!st.is_ok() && copy_status.is_ok()) copy_status = st;
          --ref_counts_[static_cast<size_t>(page)];
          page = copy;
          table_changed = true;
        }
      }
      while (static_cast<int64_t>(s->pages.size()) < need) {
        s->pages.push_back(take_page());
        table_changed = true;
      }
      for (int64_t t = 0; t < per; ++t) {
        const int64_t pos = first + t;
        slots_[i * static_cast<size_t>(per) + static_cast<size_t>(t)] =
            static_cast<int64_t>(s->pages[static_cast<size_t>(pos / ps)]) * ps + pos % ps;
      }
      s->layer_len[L] = static_cast<int32_t>(end);
    }
    if (table_changed) ++table_version_;
    ++length_version_;
    const Status written = backend_->write(*this, layer, keys, values, slots_.data(), ids, num);
    return copy_status.is_ok() ? written : copy_status;
  }

  int32_t take_page() noexcept {
    const int32_t p = free_pages_.back();
    free_pages_.pop_back();
    ref_counts_[static_cast<size_t>(p)] = 1;
    return p;
  }
  void release_page(int32_t p) noexcept {
    if (--ref_counts_[static_cast<size_t>(p)] == 0) free_pages_.push_back(p);  // capacity reserved at creation
  }

  KVCacheConfig config_{};
  KVCachePlan plan_{};
  std::unique_ptr<KVCacheBackend> backend_;
  std::vector<int32_t> ref_counts_;    // [num_pages]
  std::vector<int32_t> free_pages_;    // stack; capacity num_pages
  std::unordered_map<int64_t, Sequence> seqs_;
  uint64_t table_version_ = 0;
  uint64_t length_version_ = 0;
  // Scratch of append / append_batch, kept to avoid allocating on every call.
  std::vector<Sequence*> seq_scratch_;
  std::vector<int32_t> shared_scratch_;
  std::vector<int64_t> slots_;
};

// ---- the CPU backend: host pools, cpu::encode, cpu::decode_attention -----------------------------
class CpuKVCacheBackend final : public KVCacheBackend {
 public:
  [[nodiscard]] Status allocate(const KVCacheConfig& config, const KVCachePlan& plan) noexcept override {
    try {
      const auto n = static_cast<size_t>(plan.num_pages);
      for (int32_t l = 0; l < config.layers; ++l) {
        const size_t bytes = n * static_cast<size_t>(plan.layouts[static_cast<size_t>(l)].page_bytes);
        std::unique_ptr<uint8_t[]> mem(new (std::nothrow) uint8_t[bytes + layout::kAlignment]);
        if (!mem)
          return make_status(StatusCode::kOutOfMemory, "allocating ", bytes, " bytes for layer ", l, "'s pool");
        std::memset(mem.get(), 0, bytes + layout::kAlignment);
        const auto addr = reinterpret_cast<uintptr_t>(mem.get());
        const uintptr_t a = static_cast<uintptr_t>(layout::kAlignment);
        bases_.push_back(reinterpret_cast<uint8_t*>((addr + a - 1) / a * a));
        storage_.push_back(std::move(mem));
      }
      layouts_ = plan.layouts;
      formats_ = plan.formats;
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "allocating the cache");
    }
    num_pages_ = plan.num_pages;
    config_ = config;
    return Status::ok();
  }
  [[nodiscard]] void* layer_pages(int32_t layer) const noexcept override { return bases_[static_cast<size_t>(layer)]; }
  [[nodiscard]] bool device_memory() const noexcept override { return false; }
  // Host rows: every value must be finite (kNonFinite naming the first that is not).
  [[nodiscard]] Status check_rows(int32_t, bool value_side, const ConstView& v) noexcept override {
    const char* name = value_side ? "values" : "keys";
    for (int64_t t = 0; t < v.dim0; ++t)
      for (int32_t h = 0; h < v.dim1; ++h)
        for (int32_t j = 0; j < v.head_dim; ++j) {
          const float x = load_as_float(v.data, v.offset(t, h) + j, v.dtype);
          if (!std::isfinite(x)) return make_status(StatusCode::kNonFinite, name, "[", t, "][", h, "][", j, "] = ", x);
        }
    return Status::ok();
  }
  [[nodiscard]] Status copy_page(int32_t src, int32_t dst) noexcept override {
    for (size_t l = 0; l < bases_.size(); ++l) {
      const int64_t pb = layouts_[l].page_bytes;
      std::memcpy(bases_[l] + dst * pb, bases_[l] + src * pb, static_cast<size_t>(pb));
    }
    return Status::ok();
  }
  [[nodiscard]] Status write(const PagedKVCache&, int32_t layer, const ConstView& keys, const ConstView& values,
                             const int64_t* slots, const int64_t*, int32_t) noexcept override {
    write_side(layer, false, keys, slots);
    write_side(layer, true, values, slots);
    return Status::ok();
  }
  [[nodiscard]] Status attention(const PagedKVCache& cache, const int64_t* seq_ids, int32_t num_seqs, int32_t layer,
                                 const ConstView& q, const View& out, const AttentionOptions& opt) noexcept override {
    int32_t max_pages = 0, max_len = 0;
    TQ_RETURN_IF_ERROR(cache.batch_extent(seq_ids, num_seqs, layer, &max_pages, &max_len));
    max_pages = std::max(max_pages, 1);
    std::vector<int32_t> table, lens;
    try {
      table.resize(static_cast<size_t>(num_seqs) * static_cast<size_t>(max_pages));
      lens.resize(static_cast<size_t>(num_seqs));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "building the batch block table");
    }
    TQ_RETURN_IF_ERROR(cache.fill_batch(seq_ids, num_seqs, layer, max_pages, table.data(), lens.data()));
    PagedCache c{};
    c.pages = bases_[static_cast<size_t>(layer)];
    c.num_pages = num_pages_;
    c.layout = layouts_[static_cast<size_t>(layer)];
    c.block_table = table.data();
    c.max_pages_per_seq = max_pages;
    c.seq_lens = lens.data();
    c.num_seqs = num_seqs;
    if (cache.is_compressed(layer)) {
      cpu::DecodeAttentionArgs a{};
      a.format = formats_[static_cast<size_t>(layer)];
      a.q = q;
      a.cache = c;
      a.out = out;
      a.lse = opt.lse;
      a.softmax_scale = opt.softmax_scale;
      a.sliding_window = opt.sliding_window;
      a.logit_softcap = opt.logit_softcap;
      return cpu::decode_attention(a);
    }
    return raw_attention(layer, c, q, out, opt);
  }

 private:
  // Writes one side of checked rows into their slots: cpu::encode for a coded side, raw fp16 else.
  void write_side(int32_t layer, bool value_side, const ConstView& rows, const int64_t* slots) noexcept {
    const Format& f = formats_[static_cast<size_t>(layer)];
    const CodecSpec& c = value_side ? f.value : f.key;
    const layout::PageLayout& l = layouts_[static_cast<size_t>(layer)];
    uint8_t* base = bases_[static_cast<size_t>(layer)];
    if (c.bits > 0) {
      cpu::EncodeArgs e{};
      e.codec = c;
      e.input = rows;
      e.paged.pages = base;
      e.paged.num_pages = num_pages_;
      e.paged.layout = l;
      e.paged.value_side = value_side;
      e.paged.slot_mapping = slots;
      (void)cpu::encode(e);  // every argument and value was checked above
      return;
    }
    for (int64_t t = 0; t < rows.dim0; ++t) {
      uint8_t* page = base + slots[t] / l.page_size * l.page_bytes;
      const auto row = static_cast<int32_t>(slots[t] % l.page_size);
      for (int32_t h = 0; h < rows.dim1; ++h) {
        uint8_t* dst = page + layout::codes_offset(l, value_side, h, row);
        for (int32_t j = 0; j < c.head_dim; ++j)
          store_from_float(dst, j, f.raw_dtype, load_as_float(rows.data, rows.offset(t, h) + j, rows.dtype));
      }
    }
  }
  // float64 attention over plain raw (fp16 | bf16) K and V pages, the conventions of cpu::decode_attention.
  [[nodiscard]] Status raw_attention(int32_t layer, const PagedCache& c, const ConstView& q, const View& out,
                                     const AttentionOptions& opt) const noexcept {
    const int32_t d = config_.head_dim;
    TQ_RETURN_IF_ERROR(checks::finite_non_negative("softmax_scale", opt.softmax_scale));
    TQ_RETURN_IF_ERROR(checks::finite_non_negative("logit_softcap", opt.logit_softcap));
    if (opt.sliding_window < 0)
      return make_status(StatusCode::kInvalidArgument, "sliding_window = ", opt.sliding_window, ": must be >= 0");
    TQ_RETURN_IF_ERROR(checks::vectors("q", q, d));
    TQ_RETURN_IF_ERROR(checks::vectors("out", out, d));
    if (q.dim0 != c.num_seqs || out.dim0 != c.num_seqs)
      return make_status(StatusCode::kInvalidArgument, "q.dim0 = ", q.dim0, ", out.dim0 = ", out.dim0,
                         " but num_seqs = ", c.num_seqs);
    if (q.dim1 % config_.kv_heads != 0 || out.dim1 != q.dim1)
      return make_status(StatusCode::kInvalidArgument, "q.dim1 = ", q.dim1, ", out.dim1 = ", out.dim1,
                         ": must be equal and a multiple of kv_heads = ", config_.kv_heads);
    TQ_RETURN_IF_ERROR(cpu::detail::check_query_values(q));
    const int32_t group = q.dim1 / config_.kv_heads;
    const double scale = cpu::detail::resolve_softmax_scale(opt.softmax_scale, d);
    const double cap = opt.logit_softcap;
    const layout::PageLayout& l = c.layout;
    const DType raw = formats_[static_cast<size_t>(layer)].raw_dtype;
    double x[kMaxHeadDim], acc[kMaxHeadDim];
    for (int32_t s = 0; s < c.num_seqs; ++s) {
      const int32_t len = c.seq_lens[s];
      const int32_t first = (opt.sliding_window > 0 && len > opt.sliding_window) ? len - opt.sliding_window : 0;
      for (int32_t h = 0; h < q.dim1; ++h) {
        const int32_t kv = h / group;
        const int64_t out_at = out.offset(s, h);
        float* lse_at = opt.lse == nullptr ? nullptr : opt.lse + static_cast<int64_t>(s) * q.dim1 + h;
        if (len == 0) {
          for (int32_t j = 0; j < d; ++j) store_from_float(out.data, out_at + j, out.dtype, 0.0f);
          if (lse_at != nullptr) *lse_at = -std::numeric_limits<float>::infinity();
          continue;
        }
        for (int32_t j = 0; j < d; ++j) x[j] = load_as_float(q.data, q.offset(s, h) + j, q.dtype);
        auto logit = [&](int32_t t) noexcept {
          int32_t row = 0;
          const uint8_t* page = cpu::detail::token_page(c, s, t, &row);
          const uint8_t* k = page + layout::codes_offset(l, false, kv, row);
          double dot = 0.0;
          for (int32_t j = 0; j < d; ++j) dot += x[j] * static_cast<double>(load_as_float(k, j, raw));
          double z = scale * dot;
          if (cap > 0.0) z = cap * std::tanh(z / cap);
          return z;
        };
        double m = -std::numeric_limits<double>::infinity();
        for (int32_t t = first; t < len; ++t) m = std::fmax(m, logit(t));
        double denom = 0.0;
        for (int32_t j = 0; j < d; ++j) acc[j] = 0.0;
        for (int32_t t = first; t < len; ++t) {
          const double p = std::exp(logit(t) - m);
          denom += p;
          int32_t row = 0;
          const uint8_t* page = cpu::detail::token_page(c, s, t, &row);
          const uint8_t* v = page + layout::codes_offset(l, true, kv, row);
          for (int32_t j = 0; j < d; ++j) acc[j] += p * static_cast<double>(load_as_float(v, j, raw));
        }
        for (int32_t j = 0; j < d; ++j)
          store_from_float(out.data, out_at + j, out.dtype, static_cast<float>(acc[j] / denom));
        if (lse_at != nullptr) *lse_at = static_cast<float>(m + std::log(denom));
      }
    }
    return Status::ok();
  }

  KVCacheConfig config_{};
  int64_t num_pages_ = 0;
  std::vector<Format> formats_;
  std::vector<layout::PageLayout> layouts_;
  std::vector<std::unique_ptr<uint8_t[]>> storage_;  // [layers], owned
  std::vector<uint8_t*> bases_;                      // [layers], 16-byte aligned
};

inline Status PagedKVCache::create(const KVCacheConfig& config, PagedKVCache* out) noexcept {
  std::unique_ptr<KVCacheBackend> backend(new (std::nothrow) CpuKVCacheBackend());
  if (!backend) return make_status(StatusCode::kOutOfMemory, "allocating the CPU backend");
  return create(config, std::move(backend), out);
}

}  // namespace turboquant
