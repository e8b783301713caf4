// PagedKVCache: a small owning KV cache of packed, paged blocks (CPU backend, host memory).
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
//   token just appended). length(seq) is the minimum over layers: the tokens complete in every
//   layer. truncate and fork work on whole sequences; free releases everything.
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

class PagedKVCache {
 public:
  PagedKVCache() = default;
  PagedKVCache(PagedKVCache&&) noexcept = default;
  PagedKVCache& operator=(PagedKVCache&&) noexcept = default;
  PagedKVCache(const PagedKVCache&) = delete;
  PagedKVCache& operator=(const PagedKVCache&) = delete;

  // Plans the config and allocates every layer's pool once (16-byte aligned host memory, zeroed).
  [[nodiscard]] static Status create(const KVCacheConfig& config, PagedKVCache* out) noexcept {
    if (out == nullptr) return make_status(StatusCode::kInvalidArgument, "out = null");
    PagedKVCache c;
    TQ_RETURN_IF_ERROR(plan_kv_cache(config, &c.plan_));
    if (c.plan_.num_pages <= 0)
      return make_status(StatusCode::kInvalidArgument, "config.budget_pages = ", config.budget_pages,
                         ", config.budget_bytes = ", config.budget_bytes, ": no whole page fits (one page of every layer is ",
                         c.plan_.page_bytes_all_layers, " bytes)");
    try {
      c.config_ = config;
      const auto n = static_cast<size_t>(c.plan_.num_pages);
      for (int32_t l = 0; l < config.layers; ++l) {
        const size_t bytes = n * static_cast<size_t>(c.plan_.layouts[static_cast<size_t>(l)].page_bytes);
        std::unique_ptr<uint8_t[]> mem(new (std::nothrow) uint8_t[bytes + layout::kAlignment]);
        if (!mem)
          return make_status(StatusCode::kOutOfMemory, "allocating ", bytes, " bytes for layer ", l, "'s pool");
        std::memset(mem.get(), 0, bytes + layout::kAlignment);
        const auto addr = reinterpret_cast<uintptr_t>(mem.get());
        const uintptr_t a = static_cast<uintptr_t>(layout::kAlignment);
        c.bases_.push_back(reinterpret_cast<uint8_t*>((addr + a - 1) / a * a));
        c.storage_.push_back(std::move(mem));
      }
      c.ref_counts_.assign(n, 0);
      c.free_pages_.reserve(n);
      for (int64_t p = c.plan_.num_pages - 1; p >= 0; --p) c.free_pages_.push_back(static_cast<int32_t>(p));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "allocating the cache");
    }
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
  // Base of a layer's pool: [num_pages, layout(layer).page_bytes], 16-byte aligned.
  [[nodiscard]] void* layer_pages(int32_t layer) const noexcept {
    return layer < 0 || layer >= config_.layers ? nullptr : bases_[static_cast<size_t>(layer)];
  }

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
    if (contains(seq_id)) return make_status(StatusCode::kInvalidArgument, "seq_id = ", seq_id, ": already present");
    try {
      Sequence s;
      s.layer_len.assign(static_cast<size_t>(config_.layers), 0);
      seqs_.emplace(seq_id, std::move(s));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "adding seq_id = ", seq_id);
    }
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

  // Appends n tokens to one layer: keys and values [n, kv_heads, head_dim] (f32 | f16 | bf16,
  // finite), encoded on the way in. Reserves pages the tokens need (and copies shared pages they
  // write into); kOutOfMemory with nothing changed when the pool cannot supply them.
  [[nodiscard]] Status append(int64_t seq_id, int32_t layer, const ConstView& keys,
                              const ConstView& values) noexcept {
    Sequence* s = find(seq_id);
    if (s == nullptr) return not_found(seq_id);
    TQ_RETURN_IF_ERROR(check_layer(layer));
    TQ_RETURN_IF_ERROR(check_rows("keys", keys));
    TQ_RETURN_IF_ERROR(check_rows("values", values));
    if (keys.dim0 != values.dim0)
      return make_status(StatusCode::kInvalidArgument, "keys.dim0 = ", keys.dim0, " but values.dim0 = ", values.dim0);
    TQ_RETURN_IF_ERROR(check_finite("keys", keys));
    TQ_RETURN_IF_ERROR(check_finite("values", values));
    const int64_t ps = config_.page_size;
    const int64_t first = s->layer_len[static_cast<size_t>(layer)];
    const int64_t end = first + keys.dim0;
    if (end > std::numeric_limits<int32_t>::max())
      return make_status(StatusCode::kOutOfRange, "appending ", keys.dim0, " tokens to length ", first);
    const int64_t have = static_cast<int64_t>(s->pages.size());
    const int64_t need_pages = (end + ps - 1) / ps;
    int64_t fresh = std::max<int64_t>(0, need_pages - have);
    for (int64_t i = first / ps; i < std::min(have, need_pages); ++i)
      if (ref_counts_[static_cast<size_t>(s->pages[static_cast<size_t>(i)])] > 1) ++fresh;  // copy-on-write
    if (fresh > pages_free())
      return make_status(StatusCode::kOutOfMemory, "seq_id = ", seq_id, ", layer = ", layer, ": appending ",
                         keys.dim0, " tokens needs ", fresh, " free pages, ", pages_free(), " are free");
    std::vector<int64_t> slots;
    try {
      s->pages.reserve(static_cast<size_t>(need_pages));
      slots.resize(static_cast<size_t>(keys.dim0));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "growing the block table of seq_id = ", seq_id);
    }
    // Nothing can fail from here on.
    for (int64_t i = first / ps; i < std::min(have, need_pages); ++i) {
      int32_t& page = s->pages[static_cast<size_t>(i)];
      if (ref_counts_[static_cast<size_t>(page)] > 1) {
        const int32_t copy = take_page();
        for (int32_t l = 0; l < config_.layers; ++l) {
          const int64_t pb = plan_.layouts[static_cast<size_t>(l)].page_bytes;
          std::memcpy(bases_[static_cast<size_t>(l)] + copy * pb, bases_[static_cast<size_t>(l)] + page * pb,
                      static_cast<size_t>(pb));
        }
        --ref_counts_[static_cast<size_t>(page)];
        page = copy;
      }
    }
    while (static_cast<int64_t>(s->pages.size()) < need_pages) s->pages.push_back(take_page());
    for (int64_t t = 0; t < keys.dim0; ++t) {
      const int64_t pos = first + t;
      slots[static_cast<size_t>(t)] = static_cast<int64_t>(s->pages[static_cast<size_t>(pos / ps)]) * ps + pos % ps;
    }
    write_side(layer, false, keys, slots.data());
    write_side(layer, true, values, slots.data());
    s->layer_len[static_cast<size_t>(layer)] = static_cast<int32_t>(end);
    return Status::ok();
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
    return Status::ok();
  }

  [[nodiscard]] Status free(int64_t seq_id) noexcept {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end()) return not_found(seq_id);
    for (int32_t p : it->second.pages) release_page(p);
    seqs_.erase(it);
    return Status::ok();
  }

  // One decode step of one layer for a batch: q [num_seqs, q_heads, head_dim], out likewise; each
  // sequence attends to its tokens of this layer (cpu::decode_attention; the class's own float64
  // attention for a plain-fp16 layer, with the same conventions).
  [[nodiscard]] Status attention(const int64_t* seq_ids, int32_t num_seqs, int32_t layer, const ConstView& q,
                                 const View& out, const AttentionOptions& opt = {}) const noexcept {
    if (seq_ids == nullptr) return make_status(StatusCode::kInvalidArgument, "seq_ids = null");
    if (num_seqs <= 0) return make_status(StatusCode::kInvalidArgument, "num_seqs = ", num_seqs, ": must be > 0");
    TQ_RETURN_IF_ERROR(check_layer(layer));
    int32_t max_pages = 1;
    for (int32_t i = 0; i < num_seqs; ++i) {
      const Sequence* s = find(seq_ids[i]);
      if (s == nullptr) return not_found(seq_ids[i]);
      max_pages = std::max(max_pages, static_cast<int32_t>(s->pages.size()));
    }
    std::vector<int32_t> table, lens;
    try {
      table.resize(static_cast<size_t>(num_seqs) * static_cast<size_t>(max_pages));
      lens.resize(static_cast<size_t>(num_seqs));
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "building the batch block table");
    }
    TQ_RETURN_IF_ERROR(fill_batch(seq_ids, num_seqs, layer, max_pages, table.data(), lens.data()));
    PagedCache cache{};
    cache.pages = bases_[static_cast<size_t>(layer)];
    cache.num_pages = plan_.num_pages;
    cache.layout = layout(layer);
    cache.block_table = table.data();
    cache.max_pages_per_seq = max_pages;
    cache.seq_lens = lens.data();
    cache.num_seqs = num_seqs;
    if (is_compressed(layer)) {
      cpu::DecodeAttentionArgs a{};
      a.format = format(layer);
      a.q = q;
      a.cache = cache;
      a.out = out;
      a.lse = opt.lse;
      a.softmax_scale = opt.softmax_scale;
      a.sliding_window = opt.sliding_window;
      a.logit_softcap = opt.logit_softcap;
      return cpu::decode_attention(a);
    }
    return raw_attention(layer, cache, q, out, opt);
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
  [[nodiscard]] static Status check_finite(const char* name, const ConstView& v) noexcept {
    for (int64_t t = 0; t < v.dim0; ++t)
      for (int32_t h = 0; h < v.dim1; ++h)
        for (int32_t j = 0; j < v.head_dim; ++j) {
          const float x = load_as_float(v.data, v.offset(t, h) + j, v.dtype);
          if (!std::isfinite(x)) return make_status(StatusCode::kNonFinite, name, "[", t, "][", h, "][", j, "] = ", x);
        }
    return Status::ok();
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
  // Writes one side of checked rows into their slots: cpu::encode for a coded side, raw fp16 else.
  void write_side(int32_t layer, bool value_side, const ConstView& rows, const int64_t* slots) noexcept {
    const Format& f = format(layer);
    const CodecSpec& c = value_side ? f.value : f.key;
    const layout::PageLayout& l = layout(layer);
    uint8_t* base = bases_[static_cast<size_t>(layer)];
    if (c.bits > 0) {
      cpu::EncodeArgs e{};
      e.codec = c;
      e.input = rows;
      e.paged.pages = base;
      e.paged.num_pages = plan_.num_pages;
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
    const DType raw = format(layer).raw_dtype;
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
  KVCachePlan plan_{};
  std::vector<std::unique_ptr<uint8_t[]>> storage_;  // [layers], owned
  std::vector<uint8_t*> bases_;                      // [layers], 16-byte aligned
  std::vector<int32_t> ref_counts_;                  // [num_pages]
  std::vector<int32_t> free_pages_;                  // stack; capacity num_pages
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace turboquant
