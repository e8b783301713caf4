// Overhead of PagedKVCache on the CUDA backend over the bare kernels doing the same work.
//
// One decode step = for each of 32 layers: append one token to each of 32 sequences (one
// append_batch call) then attention for the 32 sequences (one attention call). 32 sequences at an
// 8K context (prefilled once through the class from random device data), d = 128, 8 KV heads,
// 32 query heads, K4V4, page size 16: ~9 GB of pools.
//
//   class   cache.append_batch + cache.attention per layer: host bookkeeping, pinned staging of
//           slots / lengths (one H2D copy per layer), the block table uploaded when it changed
//           (once per step here at most, on a page boundary), cuda::encode x 2, decode_attention.
//   bare    cuda::encode x 2 with precomputed device slot mappings + cuda::decode_attention with
//           fixed device block tables and lengths per step: the kernels alone, nothing staged.
// Both write into and read the same pools (the class's), with the same split heuristic.
//
// Each benchmark iteration times kSteps steps of each (CUDA events around all of them on the
// stream, so host enqueue time shows only if the GPU waits for it), growing the context from
// 8192 to 8192 + kSteps (one page boundary, at the first step), then truncates the class's
// sequences back (host bookkeeping only). Counters:
//   class_ms / bare_ms   mean time of one decode step (32 layers)
//   overhead_pct         100 * (class_ms / bare_ms - 1); the goal is < 5
//   class_host_ms        host time to enqueue one class step (bookkeeping + API calls); when it
//                        nears class_ms the class path is bound by the host, not the GPU
//   context              tokens per sequence at the start of a step
// Without a device the benchmark reports "no CUDA device" and the program exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "turboquant/cuda/attention.hpp"
#include "turboquant/cuda/codec.hpp"
#include "turboquant/cuda/kv_cache.hpp"
#include "turboquant/kv_cache.hpp"
#include "turboquant/numeric.hpp"

namespace {

namespace tq = turboquant;

constexpr int32_t kLayers = 32;
constexpr int32_t kSeqs = 32;
constexpr int32_t kContext = 8192;
constexpr int32_t kHeadDim = 128;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kQHeads = 32;
constexpr int32_t kPageSize = 16;
constexpr int32_t kSteps = 16;  // decode steps per timed run

bool device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

struct DeviceFree {
  void operator()(void* p) const noexcept { cudaFree(p); }
};
using DevicePtr = std::unique_ptr<void, DeviceFree>;
DevicePtr device_alloc(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) return DevicePtr(nullptr);
  return DevicePtr(p);
}

// Random f16 values in [-2, 2) from a cheap generator (the values do not matter for timing, only
// that they are finite and not all alike).
std::vector<uint16_t> random_half(size_t n, uint64_t seed) {
  std::vector<uint16_t> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& e : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    e = tq::float_to_half_bits(static_cast<float>(static_cast<double>(x >> 11) * 0x1.0p-53 * 4.0 - 2.0));
  }
  return v;
}

struct Setup {
  std::string error;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  tq::PagedKVCache cache;
  std::vector<int64_t> ids;
  DevicePtr prefill_k, prefill_v;  // [kContext, kv, d] f16
  DevicePtr step_k, step_v;        // [layers][seqs, kv, d] f16
  DevicePtr q, out;                // [layers][seqs, q_heads, d] f16
  // bare: device slots [kSteps][seqs], lengths [kSteps][seqs], block table [seqs, pages_per_seq]
  DevicePtr slots, lens, table, workspace;
  int32_t pages_per_seq = 0;
  size_t workspace_bytes = 0;
  int32_t sm_count = tq::cuda::kDefaultSmCount;

  ~Setup() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    cache = tq::PagedKVCache();
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
  [[nodiscard]] size_t row_elems() const { return size_t{kKvHeads} * kHeadDim; }
  [[nodiscard]] size_t q_elems() const { return size_t{kSeqs} * kQHeads * kHeadDim; }
  [[nodiscard]] const uint16_t* step_rows(const DevicePtr& p, int32_t layer) const {
    return static_cast<const uint16_t*>(p.get()) + size_t(layer) * kSeqs * row_elems();
  }

  // kSteps decode steps through the class; the sequences grow by kSteps tokens.
  [[nodiscard]] tq::Status class_steps() {
    for (int32_t s = 0; s < kSteps; ++s)
      for (int32_t l = 0; l < kLayers; ++l) {
        TQ_RETURN_IF_ERROR(cache.append_batch(
            ids.data(), kSeqs, l,
            tq::tensor_view<const void*>(step_rows(step_k, l), tq::DType::kF16, kSeqs, kKvHeads, kHeadDim),
            tq::tensor_view<const void*>(step_rows(step_v, l), tq::DType::kF16, kSeqs, kKvHeads, kHeadDim)));
        TQ_RETURN_IF_ERROR(
            cache.attention(ids.data(), kSeqs, l,
                            tq::tensor_view<const void*>(static_cast<const uint16_t*>(q.get()) + size_t(l) * q_elems(),
                                                         tq::DType::kF16, kSeqs, kQHeads, kHeadDim),
                            tq::tensor_view<void*>(static_cast<uint16_t*>(out.get()) + size_t(l) * q_elems(),
                                                   tq::DType::kF16, kSeqs, kQHeads, kHeadDim)));
      }
    return tq::Status::ok();
  }
  [[nodiscard]] tq::Status truncate_back() {
    for (int64_t id : ids) TQ_RETURN_IF_ERROR(cache.truncate(id, kContext));
    return tq::Status::ok();
  }
  // The same kSteps steps with the kernels alone.
  [[nodiscard]] tq::Status bare_steps() {
    for (int32_t s = 0; s < kSteps; ++s)
      for (int32_t l = 0; l < kLayers; ++l) {
        for (bool value_side : {false, true}) {
          tq::cuda::EncodeArgs e;
          e.codec = value_side ? cache.format(l).value : cache.format(l).key;
          e.input = tq::tensor_view<const void*>(step_rows(value_side ? step_v : step_k, l), tq::DType::kF16, kSeqs,
                                                 kKvHeads, kHeadDim);
          e.paged = {cache.layer_pages(l), cache.num_pages(), cache.layout(l), value_side,
                     static_cast<const int64_t*>(slots.get()) + size_t(s) * kSeqs};
          TQ_RETURN_IF_ERROR(tq::cuda::encode(e, {}, stream));
        }
        tq::cuda::DecodeAttentionArgs a;
        a.format = cache.format(l);
        a.q = tq::tensor_view<const void*>(static_cast<const uint16_t*>(q.get()) + size_t(l) * q_elems(),
                                           tq::DType::kF16, kSeqs, kQHeads, kHeadDim);
        a.cache = {cache.layer_pages(l),
                   cache.num_pages(),
                   cache.layout(l),
                   static_cast<const int32_t*>(table.get()),
                   pages_per_seq,
                   static_cast<const int32_t*>(lens.get()) + size_t(s) * kSeqs,
                   kSeqs};
        a.out = tq::tensor_view<void*>(static_cast<uint16_t*>(out.get()) + size_t(l) * q_elems(), tq::DType::kF16,
                                       kSeqs, kQHeads, kHeadDim);
        a.max_seq_len = kContext + s + 1;
        a.sm_count = sm_count;
        TQ_RETURN_IF_ERROR(tq::cuda::decode_attention(a, {workspace.get(), workspace_bytes}, stream));
      }
    return tq::Status::ok();
  }
  // Milliseconds of fn() on the stream (events around it).
  template <typename Fn>
  [[nodiscard]] tq::Status time(Fn fn, double* ms) {
    if (cudaEventRecord(start, stream) != cudaSuccess) return tq::make_status(tq::StatusCode::kCudaError, "record");
    TQ_RETURN_IF_ERROR(fn());
    if (cudaEventRecord(stop, stream) != cudaSuccess || cudaEventSynchronize(stop) != cudaSuccess)
      return tq::make_status(tq::StatusCode::kCudaError, "timing events");
    float t = 0.0f;
    cudaEventElapsedTime(&t, start, stop);
    *ms = t;
    return tq::Status::ok();
  }
};

std::unique_ptr<Setup> make_setup() {
  auto s = std::make_unique<Setup>();
  auto fail = [&](const std::string& what) {
    s->error = what;
    return std::move(s);
  };
  if (cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaEventCreate(&s->start) != cudaSuccess || cudaEventCreate(&s->stop) != cudaSuccess)
    return fail("could not create the stream / events");
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess && sms > 0)
    s->sm_count = sms;

  tq::KVCacheConfig cfg;
  cfg.layers = kLayers;
  cfg.kv_heads = kKvHeads;
  cfg.head_dim = kHeadDim;
  cfg.page_size = kPageSize;
  cfg.policy = tq::policies::compress_all(4, 4);
  s->pages_per_seq = (kContext + kSteps + kPageSize - 1) / kPageSize;
  cfg.budget_pages = int64_t{kSeqs} * s->pages_per_seq;
  tq::cuda::CudaKVCacheOptions opt;
  opt.stream = s->stream;
  opt.max_batch = kSeqs;
  opt.max_q_heads = kQHeads;
  opt.max_seq_len = kContext + kSteps;
  opt.max_append_rows = kContext;  // the prefill of one sequence and layer in one launch per side
  tq::Status st = tq::cuda::create_kv_cache(cfg, opt, &s->cache);
  if (!st.is_ok()) return fail(st.to_string());

  // Device data: the prompt rows (one set, reused), the step rows, queries, outputs.
  const size_t prompt_elems = size_t{kContext} * s->row_elems();
  const size_t step_elems = size_t{kLayers} * kSeqs * s->row_elems();
  const size_t q_elems = size_t{kLayers} * s->q_elems();
  s->prefill_k = device_alloc(prompt_elems * 2);
  s->prefill_v = device_alloc(prompt_elems * 2);
  s->step_k = device_alloc(step_elems * 2);
  s->step_v = device_alloc(step_elems * 2);
  s->q = device_alloc(q_elems * 2);
  s->out = device_alloc(q_elems * 2);
  if (!s->prefill_k || !s->prefill_v || !s->step_k || !s->step_v || !s->q || !s->out)
    return fail("could not allocate the inputs");
  const struct {
    void* p;
    size_t n;
    uint64_t seed;
  } fills[] = {{s->prefill_k.get(), prompt_elems, 1},
               {s->prefill_v.get(), prompt_elems, 2},
               {s->step_k.get(), step_elems, 3},
               {s->step_v.get(), step_elems, 4},
               {s->q.get(), q_elems, 5}};
  for (const auto& f : fills) {
    const std::vector<uint16_t> h = random_half(f.n, f.seed);
    if (cudaMemcpy(f.p, h.data(), f.n * 2, cudaMemcpyHostToDevice) != cudaSuccess) return fail("upload");
  }

  // The stream is non-blocking: the legacy-stream uploads above must be done before it reads them.
  if (cudaDeviceSynchronize() != cudaSuccess) return fail("upload");
  // Prefill through the class: every sequence, every layer, kContext tokens.
  for (int32_t i = 0; i < kSeqs; ++i) {
    s->ids.push_back(1000 + 7 * i);
    st = s->cache.add(s->ids.back());
    if (!st.is_ok()) return fail(st.to_string());
  }
  for (int32_t l = 0; l < kLayers; ++l)
    for (int64_t id : s->ids) {
      st = s->cache.append(
          id, l, tq::tensor_view<const void*>(s->prefill_k.get(), tq::DType::kF16, kContext, kKvHeads, kHeadDim),
          tq::tensor_view<const void*>(s->prefill_v.get(), tq::DType::kF16, kContext, kKvHeads, kHeadDim));
      if (!st.is_ok()) return fail("prefill: " + st.to_string());
    }

  // One untimed run of the class's steps (warm-up; takes the pages of the step tokens), then the
  // bare path's fixed inputs from the class's block tables: slots and lengths per step.
  st = s->class_steps();
  if (!st.is_ok()) return fail("class warm-up: " + st.to_string());
  std::vector<int32_t> table(size_t{kSeqs} * s->pages_per_seq), lens(kSeqs);
  st = s->cache.fill_batch(s->ids.data(), kSeqs, 0, s->pages_per_seq, table.data(), lens.data());
  if (!st.is_ok()) return fail(st.to_string());
  std::vector<int64_t> slots(size_t{kSteps} * kSeqs);
  std::vector<int32_t> step_lens(slots.size());
  for (int32_t t = 0; t < kSteps; ++t)
    for (int32_t i = 0; i < kSeqs; ++i) {
      const int32_t pos = kContext + t;
      slots[size_t(t) * kSeqs + i] =
          int64_t{table[size_t(i) * s->pages_per_seq + pos / kPageSize]} * kPageSize + pos % kPageSize;
      step_lens[size_t(t) * kSeqs + i] = pos + 1;
    }
  s->slots = device_alloc(slots.size() * sizeof(int64_t));
  s->lens = device_alloc(step_lens.size() * sizeof(int32_t));
  s->table = device_alloc(table.size() * sizeof(int32_t));
  if (!s->slots || !s->lens || !s->table) return fail("could not allocate the bare path's tables");
  cudaMemcpy(s->slots.get(), slots.data(), slots.size() * sizeof(int64_t), cudaMemcpyHostToDevice);
  cudaMemcpy(s->lens.get(), step_lens.data(), step_lens.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(s->table.get(), table.data(), table.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
  if (cudaDeviceSynchronize() != cudaSuccess) return fail("upload of the bare path's tables");
  st = s->truncate_back();
  if (!st.is_ok()) return fail(st.to_string());
  // The bare path's workspace: the largest of its steps.
  tq::cuda::DecodeAttentionArgs a;
  a.format = s->cache.format(0);
  a.q = tq::tensor_view<const void*>(s->q.get(), tq::DType::kF16, kSeqs, kQHeads, kHeadDim);
  a.cache.layout = s->cache.layout(0);
  a.cache.num_seqs = kSeqs;
  a.sm_count = s->sm_count;
  for (int32_t t = 0; t < kSteps; ++t) {
    a.max_seq_len = kContext + t + 1;
    s->workspace_bytes = std::max(s->workspace_bytes, tq::cuda::workspace_bytes(a));
  }
  s->workspace = device_alloc(std::max<size_t>(s->workspace_bytes, 256));
  if (!s->workspace) return fail("could not allocate the workspace");
  st = s->bare_steps();
  if (!st.is_ok()) return fail("bare warm-up: " + st.to_string());
  if (cudaStreamSynchronize(s->stream) != cudaSuccess) return fail("warm-up failed on the device");
  return s;
}

void BM_KVCacheDecodeStep(benchmark::State& state) {
  if (!device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  static std::unique_ptr<Setup> setup = make_setup();
  Setup& s = *setup;
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  double class_ms = 0.0, bare_ms = 0.0, host_ms = 0.0;
  int64_t runs = 0;
  for (auto _ : state) {
    double c = 0.0, b = 0.0;
    const auto h0 = std::chrono::steady_clock::now();
    tq::Status st = s.time(
        [&] {
          const tq::Status r = s.class_steps();
          host_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count();
          return r;
        },
        &c);
    if (st.is_ok()) st = s.truncate_back();
    if (st.is_ok()) st = s.time([&] { return s.bare_steps(); }, &b);
    if (!st.is_ok()) {
      state.SkipWithError(st.to_string().c_str());
      return;
    }
    state.SetIterationTime(c * 1e-3);
    class_ms += c;
    bare_ms += b;
    ++runs;
  }
  if (runs == 0) return;
  const double steps = static_cast<double>(runs) * kSteps;
  state.counters["class_ms"] = class_ms / steps;
  state.counters["bare_ms"] = bare_ms / steps;
  state.counters["class_host_ms"] = host_ms / steps;
  state.counters["overhead_pct"] = bare_ms > 0.0 ? 100.0 * (class_ms / bare_ms - 1.0) : 0.0;
  state.counters["context"] = kContext;
  state.counters["layers"] = kLayers;
  state.counters["seqs"] = kSeqs;
  state.counters["pool_GB"] = static_cast<double>(s.cache.pool_bytes()) * 1e-9;
}
// Manual time = the class's kSteps steps per iteration; a few iterations keep the run short.
BENCHMARK(BM_KVCacheDecodeStep)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(8);

}  // namespace

BENCHMARK_MAIN();
