// The CUDA backend of PagedKVCache (turboquant/cuda/kv_cache.hpp). Plain C++: the only kernel of
// its own (raw-row writes) is in kv_cache_kernels.cu; encode and attention are the library's ops.
//
// Stream ordering: every device action of the cache (H2D staging copies, copy-on-write D2D copies,
// encode / raw-write kernels, attention kernels) is enqueued on the one stream of the options, so
// the device buffers it reuses (slots, lengths, block table, workspace, pools) need no other
// protection: a later upload into d_slots_ runs after the encode that read the previous one.
// Only the PINNED host staging needs protecting (the host writes it, a later-executing copy reads
// it): two rings of slices, each slice with an event recorded right after the copy that reads it;
// a slice is rewritten only after its event completed (cudaEventSynchronize, which returns at once
// unless the host is a whole ring ahead of the GPU).
#include "turboquant/cuda/kv_cache.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "attention_internal.hpp"
#include "cuda_status.hpp"
#include "kv_cache_kernels.hpp"
#include "turboquant/cuda/attention.hpp"
#include "turboquant/cuda/codec.hpp"

namespace turboquant::cuda {
namespace {

constexpr size_t kStagingAlignment = 256;

size_t round_up(size_t bytes, size_t a) noexcept { return (bytes + a - 1) / a * a; }

Status alloc_failure(cudaError_t e, const char* what, size_t bytes) noexcept {
  (void)cudaGetLastError();  // an allocation failure is not sticky; clear it
  return make_status(StatusCode::kOutOfMemory, what, " (", static_cast<int64_t>(bytes),
                     " bytes): ", cudaGetErrorName(e));
}

// A ring of pinned host slices, each protected by an event recorded after the copy that reads it.
class StagingRing {
 public:
  StagingRing() = default;
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;
  ~StagingRing() {
    for (cudaEvent_t e : events_)
      if (e != nullptr) (void)cudaEventDestroy(e);
    if (host_ != nullptr) (void)cudaFreeHost(host_);
  }

  [[nodiscard]] Status allocate(size_t slice_bytes, int32_t count, const char* what) noexcept {
    slice_bytes_ = round_up(std::max<size_t>(slice_bytes, 1), kStagingAlignment);
    count_ = count;
    try {
      events_.assign(static_cast<size_t>(count), nullptr);
      used_.assign(static_cast<size_t>(count), 0);
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, what, ": ", count, " slices");
    }
    void* p = nullptr;
    const size_t bytes = slice_bytes_ * static_cast<size_t>(count);
    const cudaError_t e = cudaMallocHost(&p, bytes);
    if (e != cudaSuccess) return alloc_failure(e, what, bytes);
    host_ = static_cast<uint8_t*>(p);
    for (auto& ev : events_)
      TQ_RETURN_IF_ERROR(detail::cuda_status(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), what));
    return Status::ok();
  }
  [[nodiscard]] size_t slice_bytes() const noexcept { return slice_bytes_; }

  // The next slice. Waits only when the copy that last read it has not run yet (the ring wrapped
  // before the GPU consumed it).
  [[nodiscard]] Status acquire(uint8_t** slice, int32_t* index) noexcept {
    const int32_t i = next_;
    if (used_[static_cast<size_t>(i)] != 0)
      TQ_RETURN_IF_ERROR(detail::cuda_status(cudaEventSynchronize(events_[static_cast<size_t>(i)]),
                                             "cudaEventSynchronize (staging ring wrapped)"));
    next_ = (next_ + 1) % count_;
    *slice = host_ + static_cast<size_t>(i) * slice_bytes_;
    *index = i;
    return Status::ok();
  }
  // To be called right after the copy reading slice i was enqueued on `stream`.
  [[nodiscard]] Status enqueued(int32_t i, cudaStream_t stream) noexcept {
    TQ_RETURN_IF_ERROR(
        detail::cuda_status(cudaEventRecord(events_[static_cast<size_t>(i)], stream), "cudaEventRecord"));
    used_[static_cast<size_t>(i)] = 1;
    return Status::ok();
  }

 private:
  uint8_t* host_ = nullptr;
  size_t slice_bytes_ = 0;
  int32_t count_ = 0;
  int32_t next_ = 0;
  std::vector<cudaEvent_t> events_;
  std::vector<uint8_t> used_;
};

class CudaKVCacheBackend final : public KVCacheBackend {
 public:
  explicit CudaKVCacheBackend(const CudaKVCacheOptions& o) noexcept : opt_(o) {}
  ~CudaKVCacheBackend() override {
    // Work still queued may read the pinned staging or write the pools: drain it first.
    (void)cudaStreamSynchronize(opt_.stream);
    for (void* p : pools_)
      if (p != nullptr) (void)cudaFree(p);
    for (void* p :
         {static_cast<void*>(d_meta_), static_cast<void*>(d_table_), d_workspace_, static_cast<void*>(d_nonfinite_)})
      if (p != nullptr) (void)cudaFree(p);
  }

  [[nodiscard]] cudaStream_t stream() const noexcept { return opt_.stream; }

  [[nodiscard]] Status allocate(const KVCacheConfig& config, const KVCachePlan& plan) noexcept override {
    if (opt_.max_batch <= 0)
      return make_status(StatusCode::kInvalidArgument, "options.max_batch = ", opt_.max_batch, ": must be > 0");
    if (opt_.max_append_rows <= 0)
      return make_status(StatusCode::kInvalidArgument, "options.max_append_rows = ", opt_.max_append_rows,
                         ": must be > 0");
    if (opt_.staging_slices <= 0 || opt_.table_slices <= 0)
      return make_status(StatusCode::kInvalidArgument, "options.staging_slices = ", opt_.staging_slices,
                         ", options.table_slices = ", opt_.table_slices, ": must be > 0");
    if (opt_.max_q_heads < 0 || opt_.max_seq_len < 0)
      return make_status(StatusCode::kInvalidArgument, "options.max_q_heads = ", opt_.max_q_heads,
                         ", options.max_seq_len = ", opt_.max_seq_len, ": must be >= 0");
    max_q_heads_ = opt_.max_q_heads > 0 ? opt_.max_q_heads : config.kv_heads * kMaxAttentionGroup;
    if (max_q_heads_ % config.kv_heads != 0)
      return make_status(StatusCode::kInvalidArgument, "options.max_q_heads = ", max_q_heads_,
                         ": must be a multiple of config.kv_heads = ", config.kv_heads);
    num_pages_ = plan.num_pages;
    page_size_ = config.page_size;
    const int64_t capacity = plan.num_pages * config.page_size;
    const int64_t max_len = std::min<int64_t>(opt_.max_seq_len > 0 ? opt_.max_seq_len : capacity,
                                              std::min<int64_t>(capacity, std::numeric_limits<int32_t>::max()));
    max_seq_len_ = static_cast<int32_t>(max_len);
    max_pages_per_seq_ = static_cast<int32_t>(std::max<int64_t>(1, (max_len + page_size_ - 1) / page_size_));
    try {
      formats_ = plan.formats;
      layouts_ = plan.layouts;
      pools_.assign(static_cast<size_t>(config.layers), nullptr);
      table_ids_.reserve(static_cast<size_t>(opt_.max_batch));
      lens_mirror_.reserve(static_cast<size_t>(opt_.max_batch));
      slots_mirror_.reserve(static_cast<size_t>(opt_.max_batch));
      lens_tmp_.assign(static_cast<size_t>(opt_.max_batch), 0);
    } catch (const std::bad_alloc&) {
      return make_status(StatusCode::kOutOfMemory, "allocating the CUDA backend");
    }
    int device = 0;
    TQ_RETURN_IF_ERROR(detail::cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
    TQ_RETURN_IF_ERROR(detail::cuda_status(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device),
                                           "cudaDeviceGetAttribute(multiProcessorCount)"));
    if (sm_count_ <= 0) sm_count_ = kDefaultSmCount;

    // Pools, zeroed like the CPU backend's.
    for (int32_t l = 0; l < config.layers; ++l) {
      const size_t bytes =
          static_cast<size_t>(num_pages_) * static_cast<size_t>(layouts_[static_cast<size_t>(l)].page_bytes);
      void* p = nullptr;
      const cudaError_t e = cudaMalloc(&p, bytes);
      if (e != cudaSuccess) return alloc_failure(e, "cudaMalloc of a layer's pool", bytes);
      pools_[static_cast<size_t>(l)] = static_cast<uint8_t*>(p);
      TQ_RETURN_IF_ERROR(detail::cuda_status(cudaMemsetAsync(p, 0, bytes, opt_.stream), "cudaMemsetAsync (pool)"));
    }
    // Device lengths [max_batch] (padded) followed by slots [max_append_rows]; the batch block table.
    lens_bytes_ = round_up(static_cast<size_t>(opt_.max_batch) * sizeof(int32_t), kStagingAlignment);
    const size_t meta_bytes = lens_bytes_ + static_cast<size_t>(opt_.max_append_rows) * sizeof(int64_t);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, meta_bytes);
    if (e != cudaSuccess) return alloc_failure(e, "cudaMalloc of the slot / length buffer", meta_bytes);
    d_meta_ = static_cast<uint8_t*>(p);
    TQ_RETURN_IF_ERROR(detail::cuda_status(cudaMemsetAsync(p, 0, meta_bytes, opt_.stream), "cudaMemsetAsync"));
    const size_t table_bytes =
        static_cast<size_t>(opt_.max_batch) * static_cast<size_t>(max_pages_per_seq_) * sizeof(int32_t);
    e = cudaMalloc(&p, table_bytes);
    if (e != cudaSuccess) return alloc_failure(e, "cudaMalloc of the batch block table", table_bytes);
    d_table_ = static_cast<int32_t*>(p);
    TQ_RETURN_IF_ERROR(detail::cuda_status(cudaMemsetAsync(p, 0, table_bytes, opt_.stream), "cudaMemsetAsync"));
    e = cudaMalloc(&p, sizeof(int32_t));
    if (e != cudaSuccess) return alloc_failure(e, "cudaMalloc of the non-finite counter", sizeof(int32_t));
    d_nonfinite_ = static_cast<int32_t*>(p);
    TQ_RETURN_IF_ERROR(detail::cuda_status(cudaMemsetAsync(p, 0, sizeof(int32_t), opt_.stream), "cudaMemsetAsync"));

    // Attention workspace: the most any batch size up to max_batch needs at max_q_heads and
    // max_seq_len with the split heuristic (attention falls back to fewer splits if a call needs more).
    for (int32_t l = 0; l < config.layers; ++l) {
      const Format& f = formats_[static_cast<size_t>(l)];
      DecodeAttentionArgs a{};
      a.format = f;
      a.q = tensor_view<const void*>(nullptr, DType::kF16, 1, max_q_heads_, config.head_dim);
      a.cache.layout = layouts_[static_cast<size_t>(l)];
      a.max_seq_len = max_seq_len_;
      a.sm_count = sm_count_;
      for (int32_t b = 1; b <= opt_.max_batch; ++b) {
        a.cache.num_seqs = b;
        workspace_bytes_ = std::max(workspace_bytes_, workspace_bytes(a));
      }
      break;  // the size depends on head_dim and the shapes only, the same for every layer
    }
    if (workspace_bytes_ > 0) {
      e = cudaMalloc(&d_workspace_, workspace_bytes_);
      if (e != cudaSuccess) {
        d_workspace_ = nullptr;
        return alloc_failure(e, "cudaMalloc of the attention workspace", workspace_bytes_);
      }
    }
    TQ_RETURN_IF_ERROR(small_.allocate(lens_bytes_ + static_cast<size_t>(opt_.max_append_rows) * sizeof(int64_t),
                                       opt_.staging_slices, "cudaMallocHost of the slot / length staging"));
    TQ_RETURN_IF_ERROR(tables_.allocate(table_bytes, opt_.table_slices, "cudaMallocHost of the block-table staging"));
    return detail::cuda_status(cudaStreamSynchronize(opt_.stream), "cudaStreamSynchronize (creating the cache)");
  }

  [[nodiscard]] void* layer_pages(int32_t layer) const noexcept override { return pools_[static_cast<size_t>(layer)]; }
  [[nodiscard]] bool device_memory() const noexcept override { return true; }

  // Host checks only (device data cannot be read): what cuda::can_implement of the encode sees.
  [[nodiscard]] Status check_rows(int32_t layer, bool value_side, const ConstView& rows) noexcept override {
    const CodecSpec& c =
        value_side ? formats_[static_cast<size_t>(layer)].value : formats_[static_cast<size_t>(layer)].key;
    if (c.bits == 0) return Status::ok();  // raw side: the class's checks suffice (element alignment)
    EncodeArgs e = encode_args(layer, value_side, chunk(rows, 0, std::min<int64_t>(rows.dim0, opt_.max_append_rows)));
    const Status st = can_implement(e);
    if (!st.is_ok()) return make_status(st.code(), value_side ? "values: " : "keys: ", st.message());
    return Status::ok();
  }

  [[nodiscard]] Status copy_page(int32_t src, int32_t dst) noexcept override {
    for (size_t l = 0; l < pools_.size(); ++l) {
      const auto pb = static_cast<size_t>(layouts_[l].page_bytes);
      TQ_RETURN_IF_ERROR(detail::cuda_status(
          cudaMemcpyAsync(pools_[l] + static_cast<size_t>(dst) * pb, pools_[l] + static_cast<size_t>(src) * pb, pb,
                          cudaMemcpyDeviceToDevice, opt_.stream),
          "cudaMemcpyAsync (copy-on-write page)"));
    }
    return Status::ok();
  }

  [[nodiscard]] Status write(const PagedKVCache& cache, int32_t layer, const ConstView& keys, const ConstView& values,
                             const int64_t* slots, const int64_t* seq_ids, int32_t num_seqs) noexcept override {
    const int64_t n = keys.dim0;
    for (int64_t c0 = 0; c0 < n; c0 += opt_.max_append_rows) {
      const int64_t m = std::min<int64_t>(opt_.max_append_rows, n - c0);
      // The first chunk also stages the new lengths of the sequences written (of this layer), so
      // an attention of the same batch right after needs no upload of its own. Each part goes up
      // only when it differs from what the device buffer holds (in stream order): in a decode
      // step every layer writes the same slots and lengths, so only the first layer uploads.
      bool lens_changed = false;
      if (c0 == 0 && num_seqs <= opt_.max_batch) {
        TQ_RETURN_IF_ERROR(cache.fill_lengths(seq_ids, num_seqs, layer, lens_tmp_.data()));
        lens_changed = !device_lens_are(num_seqs);
      }
      const bool slots_changed = !(slots_mirror_valid_ && static_cast<int64_t>(slots_mirror_.size()) == m &&
                                   std::equal(slots + c0, slots + c0 + m, slots_mirror_.begin()));
      if (lens_changed || slots_changed) {
        uint8_t* slice = nullptr;
        int32_t index = 0;
        TQ_RETURN_IF_ERROR(small_.acquire(&slice, &index));
        size_t from = lens_bytes_, to = lens_bytes_;
        if (lens_changed) {
          std::memcpy(slice, lens_tmp_.data(), static_cast<size_t>(num_seqs) * sizeof(int32_t));
          from = 0;
          to = static_cast<size_t>(num_seqs) * sizeof(int32_t);
        }
        if (slots_changed) {
          std::memcpy(slice + lens_bytes_, slots + c0, static_cast<size_t>(m) * sizeof(int64_t));
          to = lens_bytes_ + static_cast<size_t>(m) * sizeof(int64_t);
        }
        slots_mirror_valid_ = false;  // until the copy is enqueued
        lens_mirror_valid_ = lens_mirror_valid_ && !lens_changed;
        TQ_RETURN_IF_ERROR(detail::cuda_status(
            cudaMemcpyAsync(d_meta_ + from, slice + from, to - from, cudaMemcpyHostToDevice, opt_.stream),
            "cudaMemcpyAsync (slot mapping / lengths)"));
        TQ_RETURN_IF_ERROR(small_.enqueued(index, opt_.stream));
        if (lens_changed) {
          lens_mirror_.assign(lens_tmp_.begin(), lens_tmp_.begin() + num_seqs);  // within the reserved capacity
          lens_mirror_valid_ = true;
        }
        if (slots_changed && m <= opt_.max_batch) {
          slots_mirror_.assign(slots + c0, slots + c0 + m);  // within the reserved capacity
          slots_mirror_valid_ = true;
        } else if (!slots_changed) {
          slots_mirror_valid_ = true;  // untouched by this copy
        }
      }
      TQ_RETURN_IF_ERROR(write_side(layer, false, chunk(keys, c0, m)));
      TQ_RETURN_IF_ERROR(write_side(layer, true, chunk(values, c0, m)));
    }
    return Status::ok();
  }

  [[nodiscard]] Status attention(const PagedKVCache& cache, const int64_t* seq_ids, int32_t num_seqs, int32_t layer,
                                 const ConstView& q, const View& out, const AttentionOptions& opt) noexcept override {
    // Coded layers run the fast kernel; K-only / V-only and plain (both sides fp16 / bf16) layers
    // the generic one (detail::decode_attention_any_format).
    const Format& f = formats_[static_cast<size_t>(layer)];
    if (num_seqs > opt_.max_batch)
      return make_status(StatusCode::kInvalidArgument, "num_seqs = ", num_seqs,
                         " but CudaKVCacheOptions::max_batch = ", opt_.max_batch);
    if (q.dim1 > max_q_heads_)
      return make_status(StatusCode::kInvalidArgument, "q.dim1 = ", q.dim1,
                         " but CudaKVCacheOptions::max_q_heads = ", max_q_heads_);
    int32_t max_pages = 0, max_len = 0;
    TQ_RETURN_IF_ERROR(cache.batch_extent(seq_ids, num_seqs, layer, &max_pages, &max_len));
    if (max_pages > max_pages_per_seq_)
      return make_status(StatusCode::kInvalidArgument, "a sequence of the batch holds ", max_pages,
                         " pages but CudaKVCacheOptions::max_seq_len = ", max_seq_len_, " allows ", max_pages_per_seq_);
    const int32_t stride = std::max(max_pages, 1);
    DecodeAttentionArgs a{};
    a.format = f;
    a.q = q;
    a.cache.pages = pools_[static_cast<size_t>(layer)];
    a.cache.num_pages = num_pages_;
    a.cache.layout = layouts_[static_cast<size_t>(layer)];
    a.cache.block_table = d_table_;
    a.cache.max_pages_per_seq = stride;
    a.cache.seq_lens = reinterpret_cast<const int32_t*>(d_meta_);
    a.cache.num_seqs = num_seqs;
    a.out = out;
    a.lse = opt.lse;
    a.softmax_scale = opt.softmax_scale;
    a.sliding_window = opt.sliding_window;
    a.logit_softcap = opt.logit_softcap;
    a.max_seq_len = max_len;
    a.sm_count = sm_count_;
    TQ_RETURN_IF_ERROR(detail::can_implement_any_format(a));
    if (workspace_bytes(a) > workspace_bytes_) {  // the heuristic wants more splits than sized for
      int32_t splits = decode_attention_splits(a);
      while (splits > 1 && workspace_bytes(a) > workspace_bytes_) a.num_splits = --splits;
      if (workspace_bytes(a) > workspace_bytes_)
        return make_status(StatusCode::kInvalidArgument, "the attention of ", num_seqs, " sequences x ", q.dim1,
                           " query heads needs ", static_cast<int64_t>(workspace_bytes(a)),
                           " workspace bytes; the cache was created with ", static_cast<int64_t>(workspace_bytes_));
    }
    // Uploads, only of what changed since the last one: the block table when the batch, the
    // cache's table_version() or the row stride changed; the lengths when they differ from what
    // the device buffer holds.
    if (!(table_valid_ && table_version_ == cache.table_version() && table_stride_ == stride &&
          static_cast<size_t>(num_seqs) == table_ids_.size() &&
          std::equal(seq_ids, seq_ids + num_seqs, table_ids_.begin()))) {
      table_valid_ = false;
      uint8_t* slice = nullptr;
      int32_t index = 0;
      TQ_RETURN_IF_ERROR(tables_.acquire(&slice, &index));
      TQ_RETURN_IF_ERROR(
          cache.fill_batch(seq_ids, num_seqs, layer, stride, reinterpret_cast<int32_t*>(slice), lens_tmp_.data()));
      TQ_RETURN_IF_ERROR(detail::cuda_status(
          cudaMemcpyAsync(d_table_, slice,
                          static_cast<size_t>(num_seqs) * static_cast<size_t>(stride) * sizeof(int32_t),
                          cudaMemcpyHostToDevice, opt_.stream),
          "cudaMemcpyAsync (block table)"));
      TQ_RETURN_IF_ERROR(tables_.enqueued(index, opt_.stream));
      table_ids_.assign(seq_ids, seq_ids + num_seqs);  // num_seqs <= max_batch: within the reserved capacity
      table_valid_ = true;
      table_version_ = cache.table_version();
      table_stride_ = stride;
    }
    TQ_RETURN_IF_ERROR(cache.fill_lengths(seq_ids, num_seqs, layer, lens_tmp_.data()));
    if (!device_lens_are(num_seqs)) {
      uint8_t* slice = nullptr;
      int32_t index = 0;
      TQ_RETURN_IF_ERROR(small_.acquire(&slice, &index));
      std::memcpy(slice, lens_tmp_.data(), static_cast<size_t>(num_seqs) * sizeof(int32_t));
      lens_mirror_valid_ = false;
      TQ_RETURN_IF_ERROR(
          detail::cuda_status(cudaMemcpyAsync(d_meta_, slice, static_cast<size_t>(num_seqs) * sizeof(int32_t),
                                              cudaMemcpyHostToDevice, opt_.stream),
                              "cudaMemcpyAsync (lengths)"));
      TQ_RETURN_IF_ERROR(small_.enqueued(index, opt_.stream));
      lens_mirror_.assign(lens_tmp_.begin(), lens_tmp_.begin() + num_seqs);
      lens_mirror_valid_ = true;
    }
    return detail::decode_attention_any_format(a, Workspace{d_workspace_, workspace_bytes_}, opt_.stream);
  }

  [[nodiscard]] Status nonfinite_rows(int64_t* rows) noexcept {
    TQ_RETURN_IF_ERROR(detail::cuda_status(cudaStreamSynchronize(opt_.stream), "cudaStreamSynchronize"));
    int32_t n = 0;
    TQ_RETURN_IF_ERROR(
        detail::cuda_status(cudaMemcpy(&n, d_nonfinite_, sizeof n, cudaMemcpyDeviceToHost), "cudaMemcpy"));
    *rows = n;
    return Status::ok();
  }

 private:
  // Rows [c0, c0 + m) of a view.
  [[nodiscard]] static ConstView chunk(const ConstView& v, int64_t c0, int64_t m) noexcept {
    ConstView c = v;
    c.data = static_cast<const uint8_t*>(v.data) + c0 * v.stride0 * dtype_bytes(v.dtype);
    c.dim0 = m;
    return c;
  }
  [[nodiscard]] EncodeArgs encode_args(int32_t layer, bool value_side, const ConstView& rows) const noexcept {
    const Format& f = formats_[static_cast<size_t>(layer)];
    EncodeArgs e{};
    e.codec = value_side ? f.value : f.key;
    e.input = rows;
    e.paged.pages = pools_[static_cast<size_t>(layer)];
    e.paged.num_pages = num_pages_;
    e.paged.layout = layouts_[static_cast<size_t>(layer)];
    e.paged.value_side = value_side;
    e.paged.slot_mapping = reinterpret_cast<const int64_t*>(d_meta_ + lens_bytes_);
    e.nonfinite_count = d_nonfinite_;
    return e;
  }
  [[nodiscard]] Status write_side(int32_t layer, bool value_side, const ConstView& rows) noexcept {
    const Format& f = formats_[static_cast<size_t>(layer)];
    const CodecSpec& c = value_side ? f.value : f.key;
    if (c.bits > 0) return encode(encode_args(layer, value_side, rows), Workspace{}, opt_.stream);
    const layout::PageLayout& l = layouts_[static_cast<size_t>(layer)];
    detail::RawWriteParams p{};
    p.input = rows.data;
    p.input_dtype = static_cast<int32_t>(rows.dtype);
    p.stride0 = rows.stride0;
    p.stride1 = rows.stride1;
    p.rows = rows.dim0;
    p.heads = rows.dim1;
    p.head_dim = rows.head_dim;
    p.slots = reinterpret_cast<const int64_t*>(d_meta_ + lens_bytes_);
    p.pages = pools_[static_cast<size_t>(layer)];
    p.num_pages = num_pages_;
    p.page_size = l.page_size;
    p.page_bytes = l.page_bytes;
    p.head_bytes = l.head_bytes;
    p.codes_offset = value_side ? l.value_codes_offset : l.key_codes_offset;
    p.row_bytes = value_side ? l.value_row_bytes : l.key_row_bytes;
    p.output_dtype = static_cast<int32_t>(f.raw_dtype);
    return detail::cuda_status(detail::launch_write_raw(p, opt_.stream), "raw K/V write kernel");
  }
  // Whether the device lengths buffer holds lens_tmp_[0, n) (once the queued copies ran).
  [[nodiscard]] bool device_lens_are(int32_t n) const noexcept {
    return lens_mirror_valid_ && lens_mirror_.size() == static_cast<size_t>(n) &&
           std::equal(lens_mirror_.begin(), lens_mirror_.end(), lens_tmp_.begin());
  }

  CudaKVCacheOptions opt_{};
  int32_t max_q_heads_ = 0;
  int32_t max_seq_len_ = 0;
  int32_t max_pages_per_seq_ = 0;
  int32_t sm_count_ = kDefaultSmCount;
  int64_t num_pages_ = 0;
  int32_t page_size_ = 0;
  std::vector<Format> formats_;
  std::vector<layout::PageLayout> layouts_;
  std::vector<uint8_t*> pools_;  // [layers], device
  uint8_t* d_meta_ = nullptr;    // device: lengths [max_batch] (padded to lens_bytes_), then slots [max_append_rows]
  size_t lens_bytes_ = 0;
  int32_t* d_table_ = nullptr;   // device: batch block table [max_batch, max_pages_per_seq]
  void* d_workspace_ = nullptr;  // device: attention partials
  size_t workspace_bytes_ = 0;
  int32_t* d_nonfinite_ = nullptr;  // device counter of coded rows stored as zeros
  StagingRing small_;               // pinned: lengths + slots slices
  StagingRing tables_;              // pinned: block-table slices
  // What the device buffers hold once the queued copies ran (host mirrors, so that unchanged
  // data is not uploaded again). Capacities reserved at creation: assign() never allocates.
  std::vector<int64_t> table_ids_;  // the batch of d_table_
  bool table_valid_ = false;
  uint64_t table_version_ = 0;  // cache.table_version() it was filled at
  int32_t table_stride_ = 0;
  std::vector<int32_t> lens_mirror_;  // d_meta_ lengths [0, size)
  bool lens_mirror_valid_ = false;
  std::vector<int64_t> slots_mirror_;  // d_meta_ slots [0, size) (kept for uploads of <= max_batch slots)
  bool slots_mirror_valid_ = false;
  std::vector<int32_t> lens_tmp_;  // [max_batch] host scratch
};

CudaKVCacheBackend* cuda_backend(const PagedKVCache& cache) noexcept {
  return dynamic_cast<CudaKVCacheBackend*>(cache.backend());
}

}  // namespace

Status create_kv_cache(const KVCacheConfig& config, const CudaKVCacheOptions& options, PagedKVCache* out) noexcept {
  if (out == nullptr) return make_status(StatusCode::kInvalidArgument, "out = null");
  std::unique_ptr<KVCacheBackend> backend(new (std::nothrow) CudaKVCacheBackend(options));
  if (!backend) return make_status(StatusCode::kOutOfMemory, "allocating the CUDA backend");
  return PagedKVCache::create(config, std::move(backend), out);
}

bool is_cuda_kv_cache(const PagedKVCache& cache) noexcept { return cuda_backend(cache) != nullptr; }

cudaStream_t kv_cache_stream(const PagedKVCache& cache) noexcept {
  const CudaKVCacheBackend* b = cuda_backend(cache);
  return b == nullptr ? nullptr : b->stream();
}

Status kv_cache_nonfinite_rows(const PagedKVCache& cache, int64_t* rows) noexcept {
  if (rows == nullptr) return make_status(StatusCode::kInvalidArgument, "rows = null");
  CudaKVCacheBackend* b = cuda_backend(cache);
  if (b == nullptr) return make_status(StatusCode::kInvalidArgument, "the cache is not on the CUDA backend");
  return b->nonfinite_rows(rows);
}

}  // namespace turboquant::cuda
