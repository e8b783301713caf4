// Chunked-prefill attention on the packed, paged cache (turboquant::cuda::prefill_attention):
// 32 query heads, 8 KV heads, d = 128, K4V4, page size 16, one sequence.
//
//   BM_Prefill   a chunk of 2048 new tokens over a 32K-token compressed prefix, order kAppended
//                (the chunk already in the cache) or kFresh (the chunk's K/V given in fp16)
//   BM_Verify    a speculative verify window of 8 tokens over a 32K prefix, both orders, against
//                one decode step (cuda::decode_attention) over the same cache: counter
//                verify_over_decode = verify ms / decode ms (kAppended runs on the decode kernel,
//                PrefillAttentionArgs::small_windows_as_decode; BM_VerifyPrefillKernel: the
//                same window on the prefill kernel)
//
// Method as bench_attention: CUDA events around each call, manual time, the caches rotated over
// copies so the working set (> 256 MB) exceeds the L2 cache, random codes with scales in
// [0.5, 1.5], warm-up first. Counters: ms (mean per call), TFLOPS (useful causal attention flops:
// 4 * q_heads * d * attended keys, over the mean time), splits. Without a device every benchmark
// reports "no CUDA device" and the program exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "turboquant/cuda/attention.hpp"
#include "turboquant/cuda/prefill.hpp"
#include "turboquant/format.hpp"
#include "turboquant/layout.hpp"
#include "turboquant/numeric.hpp"

namespace {

namespace tq = turboquant;

constexpr int32_t kQHeads = 32;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kHeadDim = 128;
constexpr int32_t kPageSize = 16;
constexpr int32_t kPrefix = 32768;
constexpr size_t kMinWorkingSet = size_t{256} << 20;

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
template <typename T>
DevicePtr upload(const std::vector<T>& v) {
  DevicePtr p = device_alloc(std::max<size_t>(16, v.size() * sizeof(T)));
  if (p) cudaMemcpy(p.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return p;
}

int32_t sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess && sms > 0)
    return sms;
  return tq::cuda::kDefaultSmCount;
}

// One sequence: the cache holds `cached` tokens; `chunk` queries (and fp16 chunk K/V).
struct Setup {
  int32_t cached = 0, chunk = 0;
  tq::Format format;
  tq::layout::PageLayout layout;
  int32_t pages = 0;
  std::vector<DevicePtr> pools;
  DevicePtr block_table, seq_lens, query_start, q, chunk_kv, out, lse;
  std::string error;
};

std::unique_ptr<Setup> make_setup(int32_t cached, int32_t chunk) {
  auto s = std::make_unique<Setup>();
  s->cached = cached;
  s->chunk = chunk;
  s->format = tq::make_format(kHeadDim, 4, 4);
  s->layout = tq::layout::page_layout(s->format, kPageSize, kKvHeads);
  s->pages = (cached + kPageSize - 1) / kPageSize + 1;
  const size_t pool_bytes = static_cast<size_t>(s->pages) * static_cast<size_t>(s->layout.page_bytes);
  const size_t copies = std::max<size_t>(1, (kMinWorkingSet + pool_bytes - 1) / pool_bytes);
  std::vector<uint8_t> host(pool_bytes);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i + 8 <= host.size(); i += 8) {
    const uint64_t r = rng();
    std::memcpy(&host[i], &r, 8);
  }
  std::uniform_real_distribution<float> scale(0.5f, 1.5f);
  const tq::layout::PageLayout& l = s->layout;
  for (int64_t p = 0; p < s->pages; ++p)
    for (int32_t h = 0; h < kKvHeads; ++h)
      for (int side = 0; side < 2; ++side)
        for (int32_t row = 0; row < kPageSize; ++row) {
          const int64_t at = p * l.page_bytes + tq::layout::scales_offset(l, side == 1, h, row);
          const uint16_t bits = tq::float_to_half_bits(scale(rng));
          std::memcpy(&host[static_cast<size_t>(at)], &bits, sizeof bits);
        }
  for (size_t c = 0; c < copies; ++c) {
    s->pools.push_back(upload(host));
    if (!s->pools.back()) {
      s->error = "could not allocate the caches";
      return s;
    }
  }
  std::vector<int32_t> table(static_cast<size_t>(s->pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  s->block_table = upload(table);
  s->seq_lens = upload(std::vector<int32_t>{cached});
  s->query_start = upload(std::vector<int32_t>{0, chunk});
  std::normal_distribution<float> normal;
  std::vector<uint16_t> q(static_cast<size_t>(chunk) * kQHeads * kHeadDim);
  for (auto& x : q) x = tq::float_to_half_bits(normal(rng));
  std::vector<uint16_t> kv(static_cast<size_t>(chunk) * kKvHeads * kHeadDim * 2);
  for (auto& x : kv) x = tq::float_to_half_bits(normal(rng));
  s->q = upload(q);
  s->chunk_kv = upload(kv);
  s->out = device_alloc(q.size() * sizeof(uint16_t));
  s->lse = device_alloc(static_cast<size_t>(chunk) * kQHeads * sizeof(float));
  if (!s->block_table || !s->seq_lens || !s->query_start || !s->q || !s->chunk_kv || !s->out || !s->lse)
    s->error = "could not allocate the inputs";
  return s;
}

tq::cuda::PrefillAttentionArgs prefill_args(const Setup& s, tq::PrefillOrder order) {
  tq::cuda::PrefillAttentionArgs a;
  a.format = s.format;
  a.order = order;
  a.q = tq::tensor_view<const void*>(s.q.get(), tq::DType::kF16, s.chunk, kQHeads, kHeadDim);
  a.query_start = static_cast<const int32_t*>(s.query_start.get());
  a.max_query_len = s.chunk;
  a.cache.pages = s.pools.front().get();
  a.cache.num_pages = s.pages;
  a.cache.layout = s.layout;
  a.cache.block_table = static_cast<const int32_t*>(s.block_table.get());
  a.cache.max_pages_per_seq = s.pages;
  a.cache.seq_lens = static_cast<const int32_t*>(s.seq_lens.get());
  a.cache.num_seqs = 1;
  const auto* kv = static_cast<const uint16_t*>(s.chunk_kv.get());
  a.chunk_keys = tq::tensor_view<const void*>(kv, tq::DType::kF16, s.chunk, kKvHeads, kHeadDim);
  a.chunk_values = tq::tensor_view<const void*>(kv + static_cast<size_t>(s.chunk) * kKvHeads * kHeadDim,
                                                tq::DType::kF16, s.chunk, kKvHeads, kHeadDim);
  a.out = tq::tensor_view<void*>(s.out.get(), tq::DType::kF16, s.chunk, kQHeads, kHeadDim);
  a.lse = static_cast<float*>(s.lse.get());
  a.max_seq_len = s.cached;
  a.sm_count = sm_count();
  return a;
}

// Mean ms of launch(pages) over the rotating caches (warm-up over every copy first); -1 on error.
template <typename Launch>
double time_calls(benchmark::State& state, const std::vector<DevicePtr>& pools, Launch launch, int iterations = 0) {
  for (const DevicePtr& pool : pools) {
    const tq::Status st = launch(pool.get());
    if (!st.is_ok()) {
      state.SkipWithError(st.to_string().c_str());
      return -1.0;
    }
  }
  if (cudaDeviceSynchronize() != cudaSuccess) {
    state.SkipWithError("warm-up failed");
    return -1.0;
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  size_t next = 0;
  double total = 0.0;
  int64_t n = 0;
  auto one = [&]() {
    const void* pages = pools[next].get();
    next = (next + 1) % pools.size();
    cudaEventRecord(start, nullptr);
    const tq::Status st = launch(pages);
    cudaEventRecord(stop, nullptr);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    total += ms;
    ++n;
    return st.is_ok() ? static_cast<double>(ms) : -1.0;
  };
  double result = 0.0;
  if (iterations > 0) {  // a side measurement outside the benchmark loop
    for (int i = 0; i < iterations && result >= 0.0; ++i) result = one();
  } else {
    for (auto _ : state) {
      const double ms = one();
      if (ms < 0.0) {
        result = -1.0;
        break;
      }
      state.SetIterationTime(ms * 1e-3);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (result < 0.0 || n == 0) {
    state.SkipWithError("a call failed");
    return -1.0;
  }
  return total / static_cast<double>(n);
}

// Useful flops of the causal attention: 2 mmas x 2 flops x q_heads x d per attended key.
double attention_flops(int64_t prefix, int64_t chunk) {
  const double keys = static_cast<double>(chunk) * static_cast<double>(prefix) +
                      static_cast<double>(chunk) * static_cast<double>(chunk + 1) / 2.0;
  return 4.0 * kQHeads * kHeadDim * keys;
}

void run_prefill(benchmark::State& state, int32_t chunk, int32_t splits = 0, bool windows_as_decode = true) {
  if (!device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto order = static_cast<tq::PrefillOrder>(state.range(0));
  const bool appended = order == tq::PrefillOrder::kAppended;
  static std::unique_ptr<Setup> setup;
  const int32_t cached = kPrefix + (appended ? chunk : 0);
  if (!setup || setup->cached != cached || setup->chunk != chunk) {
    setup.reset();
    setup = make_setup(cached, chunk);
  }
  Setup& s = *setup;
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  tq::cuda::PrefillAttentionArgs a = prefill_args(s, order);
  a.num_splits = splits;
  a.small_windows_as_decode = windows_as_decode;
  const tq::Status ok = tq::cuda::can_implement(a);
  if (!ok.is_ok()) {
    state.SkipWithError(ok.to_string().c_str());
    return;
  }
  const size_t ws_bytes = tq::cuda::workspace_bytes(a);
  DevicePtr ws = device_alloc(ws_bytes);
  const double ms = time_calls(state, s.pools, [&](const void* pages) {
    a.cache.pages = pages;
    return tq::cuda::prefill_attention(a, tq::cuda::Workspace{ws.get(), ws_bytes}, nullptr);
  });
  if (ms < 0.0) return;
  state.counters["ms"] = ms;
  state.counters["TFLOPS"] = attention_flops(kPrefix, chunk) / (ms * 1e-3) / 1e12;
  state.counters["splits"] = tq::cuda::prefill_attention_splits(a);
  if (chunk <= 64) {
    // One decode step over the same cache (the verify window's last position).
    tq::cuda::DecodeAttentionArgs d;
    d.format = s.format;
    d.q = tq::tensor_view<const void*>(s.q.get(), tq::DType::kF16, 1, kQHeads, kHeadDim);
    d.cache = a.cache;
    d.out = tq::tensor_view<void*>(s.out.get(), tq::DType::kF16, 1, kQHeads, kHeadDim);
    d.max_seq_len = s.cached;
    d.sm_count = a.sm_count;
    const size_t dws_bytes = tq::cuda::workspace_bytes(d);
    DevicePtr dws = device_alloc(dws_bytes);
    const double decode_ms = time_calls(
        state, s.pools,
        [&](const void* pages) {
          d.cache.pages = pages;
          return tq::cuda::decode_attention(d, tq::cuda::Workspace{dws.get(), dws_bytes}, nullptr);
        },
        200);
    if (decode_ms > 0.0) {
      state.counters["decode_ms"] = decode_ms;
      state.counters["verify_over_decode"] = ms / decode_ms;
    }
  }
  const bool as_decode = windows_as_decode && appended && chunk <= tq::cuda::kMaxDecodeWindow;
  state.SetLabel(std::string(appended ? "appended" : "fresh") + ", chunk " + std::to_string(chunk) + " over " +
                 std::to_string(kPrefix) + " K4V4" + (as_decode ? ", on the decode kernel" : ""));
}

void BM_Prefill(benchmark::State& state) { run_prefill(state, 2048); }
void BM_Verify(benchmark::State& state) { run_prefill(state, 8); }

// The verify window on the prefill kernel (small_windows_as_decode = false), for comparison.
void BM_VerifyPrefillKernel(benchmark::State& state) { run_prefill(state, 8, 0, false); }

// Tuning: the verify window on the prefill kernel with explicit KV split counts. Filter: VerifySplits.
void BM_VerifySplits(benchmark::State& state) { run_prefill(state, 8, static_cast<int32_t>(state.range(1)), false); }

BENCHMARK(BM_Prefill)->ArgName("order")->Arg(1)->Arg(0)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Verify)->ArgName("order")->Arg(1)->Arg(0)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_VerifyPrefillKernel)->ArgName("order")->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond);
// Tuning: the verify window on the decode kernel (window mode) with explicit split counts.
void BM_VerifyWindowSplits(benchmark::State& state) { run_prefill(state, 8, static_cast<int32_t>(state.range(1)), true); }
BENCHMARK(BM_VerifyWindowSplits)
    ->ArgNames({"order", "splits"})
    ->ArgsProduct({{1}, {4, 6, 7, 8, 12, 16, 24}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_VerifySplits)
    ->ArgNames({"order", "splits"})
    ->ArgsProduct({{1}, {8, 16, 32, 64, 128}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
