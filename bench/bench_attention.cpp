// Decode attention on the packed, paged cache (turboquant::cuda::decode_attention), one query token
// per sequence, 32 query heads, 8 KV heads, d = 128, page size 16: the shapes of GUIDE section 3.
//
// Method (../shared/device/README.md): CUDA events around each call, manual time, the caches
// rotated over several copies so the working set (> 256 MB) exceeds the L2 cache, random codes and
// scales (never zeros), warm-up first. Counters:
//   ms           mean time of one call (split kernel + merge kernel; BM_DecodeAttentionQueued: of
//                one of 32 calls queued back to back)
//   median_ms    the median over the iterations (fp16_baseline.py reports SDPA's median of 50)
//   bytes        compressed cache bytes one call must read: every token's K and V codes and scales
//                of every KV head (the floor; queries, block table and outputs are < 0.1%)
//   GB/s         bytes / time
//   pct_copy_bw  GB/s over the card's copy bandwidth, measured once as (bytes read + written) / time
//                of a 1 GiB device-to-device cudaMemcpyAsync
//   splits       context splits per sequence (the heuristic's, or the sweep's)
// Without a device every benchmark reports "no CUDA device" and the program exits 0.
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
#include "turboquant/cuda/scores.hpp"
#include "turboquant/format.hpp"
#include "turboquant/layout.hpp"
#include "turboquant/numeric.hpp"

namespace {

namespace tq = turboquant;

constexpr int32_t kQHeads = 32;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kHeadDim = 128;
constexpr int32_t kPageSize = 16;
constexpr size_t kMinWorkingSet = size_t{256} << 20;  // > 50-60 MB of L2, with a wide margin
constexpr size_t kCopyBytes = size_t{1} << 30;        // the copy-bandwidth probe
constexpr int kCopyRepeats = 10;
constexpr int kQueuedCalls = 32;                     // BM_DecodeAttentionQueued: calls between two events
constexpr double kGiga = 1e9;

bool device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// (bytes read + written) / second of a 1 GiB device-to-device copy, median of kCopyRepeats; 0 on error.
double copy_bandwidth() {
  static const double bandwidth = [] {
    void* a = nullptr;
    void* b = nullptr;
    if (cudaMalloc(&a, kCopyBytes) != cudaSuccess) return 0.0;
    if (cudaMalloc(&b, kCopyBytes) != cudaSuccess) {
      cudaFree(a);
      return 0.0;
    }
    cudaMemset(a, 1, kCopyBytes);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    cudaMemcpyAsync(b, a, kCopyBytes, cudaMemcpyDeviceToDevice, nullptr);  // warm-up
    std::vector<float> ms;
    for (int i = 0; i < kCopyRepeats; ++i) {
      cudaEventRecord(start, nullptr);
      cudaMemcpyAsync(b, a, kCopyBytes, cudaMemcpyDeviceToDevice, nullptr);
      cudaEventRecord(stop, nullptr);
      cudaEventSynchronize(stop);
      float t = 0.0f;
      cudaEventElapsedTime(&t, start, stop);
      ms.push_back(t);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaFree(a);
    cudaFree(b);
    std::sort(ms.begin(), ms.end());
    const double median_s = ms[ms.size() / 2] * 1e-3;
    return median_s > 0.0 ? 2.0 * static_cast<double>(kCopyBytes) / median_s : 0.0;
  }();
  return bandwidth;
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

// One benchmark shape's device state, kept across the calls Google Benchmark makes for it.
struct Setup {
  int64_t batch = 0, context = 0, key_bits = 0, value_bits = 0;
  tq::Format format;
  tq::layout::PageLayout layout;
  int32_t pages_per_seq = 0;
  int64_t num_pages = 0;
  std::vector<DevicePtr> pools;  // copies of the cache, rotated
  DevicePtr block_table, seq_lens, q, out, workspace;
  size_t workspace_bytes = 0;
  tq::cuda::DecodeAttentionArgs args;
  std::string error;

  [[nodiscard]] bool same(int64_t b, int64_t c, int64_t k, int64_t v) const {
    return b == batch && c == context && k == key_bits && v == value_bits;
  }
  // Cache bytes one call reads.
  [[nodiscard]] double bytes_read() const {
    return static_cast<double>(batch) * static_cast<double>(context) * static_cast<double>(layout.token_bytes());
  }
};

std::unique_ptr<Setup> make_setup(int64_t batch, int64_t context, int64_t key_bits, int64_t value_bits) {
  auto s = std::make_unique<Setup>();
  s->batch = batch;
  s->context = context;
  s->key_bits = key_bits;
  s->value_bits = value_bits;
  s->format = tq::make_format(kHeadDim, static_cast<int32_t>(key_bits), static_cast<int32_t>(value_bits));
  s->layout = tq::layout::page_layout(s->format, kPageSize, kKvHeads);
  s->pages_per_seq = static_cast<int32_t>((context + kPageSize - 1) / kPageSize);
  s->num_pages = batch * s->pages_per_seq;
  const size_t pool_bytes = static_cast<size_t>(s->num_pages * s->layout.page_bytes);
  const size_t copies = std::max<size_t>(1, (kMinWorkingSet + pool_bytes - 1) / pool_bytes);

  // Random codes; scales in [0.5, 1.5] (random bytes would make NaN / Inf scales).
  std::vector<uint8_t> host(pool_bytes);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i + 8 <= host.size(); i += 8) {
    const uint64_t r = rng();
    std::memcpy(&host[i], &r, 8);
  }
  std::uniform_real_distribution<float> scale(0.5f, 1.5f);
  const tq::layout::PageLayout& l = s->layout;
  std::normal_distribution<float> raw_value;
  for (int64_t p = 0; p < s->num_pages; ++p)
    for (int32_t h = 0; h < kKvHeads; ++h)
      for (int side = 0; side < 2; ++side)
        for (int32_t row = 0; row < kPageSize; ++row) {
          if ((side == 1 ? value_bits : key_bits) == 0) {  // an uncompressed side: fp16 N(0, 1) values
            const int64_t at = p * l.page_bytes + tq::layout::codes_offset(l, side == 1, h, row);
            for (int32_t j = 0; j < kHeadDim; ++j) {
              const uint16_t bits = tq::float_to_half_bits(raw_value(rng));
              std::memcpy(&host[static_cast<size_t>(at) + 2 * static_cast<size_t>(j)], &bits, sizeof bits);
            }
            continue;
          }
          const int64_t at = p * l.page_bytes + tq::layout::scales_offset(l, side == 1, h, row);
          const uint16_t bits = tq::float_to_half_bits(scale(rng));
          std::memcpy(&host[static_cast<size_t>(at)], &bits, sizeof bits);
        }
  for (size_t c = 0; c < copies; ++c) {
    s->pools.push_back(device_alloc(pool_bytes));
    if (!s->pools.back() ||
        cudaMemcpy(s->pools.back().get(), host.data(), pool_bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
      s->error = "could not allocate / fill " + std::to_string(copies) + " caches of " + std::to_string(pool_bytes) +
                 " bytes";
      return s;
    }
  }
  // Pages in a shuffled order (a fragmented pool), every sequence at full context.
  std::vector<int32_t> table(static_cast<size_t>(s->num_pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  const std::vector<int32_t> lens(static_cast<size_t>(batch), static_cast<int32_t>(context));
  std::vector<uint16_t> q(static_cast<size_t>(batch) * kQHeads * kHeadDim);
  std::normal_distribution<float> normal;
  for (auto& x : q) x = tq::float_to_half_bits(normal(rng));
  s->block_table = device_alloc(table.size() * sizeof(int32_t));
  s->seq_lens = device_alloc(lens.size() * sizeof(int32_t));
  s->q = device_alloc(q.size() * sizeof(uint16_t));
  s->out = device_alloc(q.size() * sizeof(uint16_t));
  if (!s->block_table || !s->seq_lens || !s->q || !s->out) {
    s->error = "could not allocate the queries / block table";
    return s;
  }
  cudaMemcpy(s->block_table.get(), table.data(), table.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(s->seq_lens.get(), lens.data(), lens.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(s->q.get(), q.data(), q.size() * sizeof(uint16_t), cudaMemcpyHostToDevice);

  tq::cuda::DecodeAttentionArgs& a = s->args;
  a.format = s->format;
  a.q = tq::tensor_view<const void*>(s->q.get(), tq::DType::kF16, batch, kQHeads, kHeadDim);
  a.cache.pages = s->pools.front().get();
  a.cache.num_pages = s->num_pages;
  a.cache.layout = s->layout;
  a.cache.block_table = static_cast<const int32_t*>(s->block_table.get());
  a.cache.max_pages_per_seq = s->pages_per_seq;
  a.cache.seq_lens = static_cast<const int32_t*>(s->seq_lens.get());
  a.cache.num_seqs = static_cast<int32_t>(batch);
  a.out = tq::tensor_view<void*>(s->out.get(), tq::DType::kF16, batch, kQHeads, kHeadDim);
  a.max_seq_len = static_cast<int32_t>(context);
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess && sms > 0)
    a.sm_count = sms;
  const tq::Status st = tq::cuda::can_implement(a);
  if (!st.is_ok()) {
    s->error = st.to_string();
    return s;
  }
  s->workspace_bytes = tq::cuda::workspace_bytes(a);
  s->workspace = device_alloc(s->workspace_bytes);
  if (!s->workspace) s->error = "could not allocate the workspace";
  return s;
}

// Times launch(pages) (returning a Status) over the rotating cache copies, after a warm-up over
// every copy, and sets the ms / bytes / GB/s / pct_copy_bw counters for `bytes` moved per call.
// `calls`: how many calls one launch(pages) makes (the time is divided by it).
// False (with the benchmark skipped) when a call fails.
template <typename Launch>
bool time_over_caches(benchmark::State& state, const std::vector<DevicePtr>& pools, double bytes, Launch launch,
                      int calls = 1) {
  for (const DevicePtr& pool : pools) {
    const tq::Status st = launch(pool.get());
    if (!st.is_ok()) {
      state.SkipWithError(st.to_string().c_str());
      return false;
    }
  }
  if (cudaDeviceSynchronize() != cudaSuccess) {
    state.SkipWithError("warm-up failed");
    return false;
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  size_t next = 0;
  double total_ms = 0.0;
  bool ok = true;
  std::vector<float> samples;  // per call, for the median (fp16_baseline.py reports medians)
  samples.reserve(static_cast<size_t>(state.max_iterations));
  for (auto _ : state) {
    const void* pages = pools[next].get();
    next = (next + 1) % pools.size();
    cudaEventRecord(start, nullptr);
    const tq::Status st = launch(pages);
    cudaEventRecord(stop, nullptr);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    ms /= static_cast<float>(calls);
    if (!st.is_ok()) {
      state.SkipWithError(st.to_string().c_str());
      ok = false;
      break;
    }
    total_ms += ms;
    samples.push_back(ms);
    state.SetIterationTime(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double iterations = static_cast<double>(state.iterations());
  if (!ok || iterations == 0.0) return false;
  const double mean_s = total_ms * 1e-3 / iterations;
  const double copy = copy_bandwidth();
  state.counters["ms"] = total_ms / iterations;
  std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
  state.counters["median_ms"] = samples[samples.size() / 2];
  state.counters["bytes"] = bytes;
  state.counters["GB/s"] = bytes / mean_s / kGiga;
  state.counters["pct_copy_bw"] = copy > 0.0 ? 100.0 * (bytes / mean_s) / copy : 0.0;
  state.counters["copy_GB/s"] = copy / kGiga;
  return true;
}

// One timed case: the shape of range(0..3), split count `splits` (0 = heuristic), programmatic
// dependent launch `pdl`; `queued` calls back to back between the events (over consecutive cache
// copies, as the layers of a decode step), or one call.
void run_case(benchmark::State& state, int32_t splits, bool pdl, int queued = 1) {
  if (!device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  static std::unique_ptr<Setup> setup;  // shared by every benchmark: the shapes run in order
  const int64_t batch = state.range(0), context = state.range(1), kb = state.range(2), vb = state.range(3);
  if (!setup || !setup->same(batch, context, kb, vb)) {
    setup.reset();  // free the previous shape first
    setup = make_setup(batch, context, kb, vb);
  }
  Setup& s = *setup;
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  tq::cuda::DecodeAttentionArgs a = s.args;
  a.num_splits = splits;
  a.programmatic_launch = pdl;
  const size_t need = tq::cuda::workspace_bytes(a);
  if (need > s.workspace_bytes) {  // more splits than the heuristic's
    s.workspace.reset();
    s.workspace = device_alloc(need);
    s.workspace_bytes = s.workspace ? need : 0;
    if (!s.workspace) {
      state.SkipWithError("could not allocate the workspace");
      return;
    }
  }
  const tq::cuda::Workspace ws{s.workspace.get(), s.workspace_bytes};
  size_t next = 0;
  const bool timed = time_over_caches(
      state, s.pools, s.bytes_read(),
      [&](const void* pages) {
        a.cache.pages = pages;
        for (int c = 1; c < queued; ++c) {  // the first queued - 1 over the following copies
          const tq::Status st = tq::cuda::decode_attention(a, ws, nullptr);
          if (!st.is_ok()) return st;
          a.cache.pages = s.pools[next++ % s.pools.size()].get();
        }
        return tq::cuda::decode_attention(a, ws, nullptr);
      },
      queued);
  if (!timed) return;
  state.counters["splits"] = tq::cuda::decode_attention_splits(a);
  state.counters["pdl"] = pdl ? 1 : 0;
  state.counters["caches"] = static_cast<double>(s.pools.size());
  state.SetLabel("K" + std::to_string(kb) + "V" + std::to_string(vb) + " batch " + std::to_string(batch) +
                 " x context " + std::to_string(context));
}

// cuda::scores on the same caches: raw scaled logits of every query head against every key.
// Bytes = the K planes read + the fp32 scores written.
void BM_Scores(benchmark::State& state) {
  if (!device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t batch = state.range(0), context = state.range(1), kb = state.range(2);
  std::unique_ptr<Setup> s = make_setup(batch, context, kb, kb);
  if (!s->error.empty()) {
    state.SkipWithError(s->error.c_str());
    return;
  }
  const size_t score_bytes = static_cast<size_t>(batch) * kQHeads * static_cast<size_t>(context) * sizeof(float);
  DevicePtr scores = device_alloc(score_bytes);
  if (!scores) {
    state.SkipWithError("could not allocate the scores");
    return;
  }
  tq::cuda::ScoresArgs a;
  a.format = s->format;
  a.q = s->args.q;
  a.cache = s->args.cache;
  a.scores = static_cast<float*>(scores.get());
  a.max_context = static_cast<int32_t>(context);
  const tq::Status st = tq::cuda::can_implement(a);
  if (!st.is_ok()) {
    state.SkipWithError(st.to_string().c_str());
    return;
  }
  const tq::layout::PageLayout& l = s->layout;
  const double bytes = static_cast<double>(batch) * static_cast<double>(context) * kKvHeads *
                           static_cast<double>(l.key_row_bytes + l.key_scale_bytes) +
                       static_cast<double>(score_bytes);
  const bool timed = time_over_caches(state, s->pools, bytes, [&](const void* pages) {
    a.cache.pages = pages;
    return tq::cuda::scores(a, {}, nullptr);
  });
  if (!timed) return;
  state.SetLabel("K" + std::to_string(kb) + " scores, batch " + std::to_string(batch) + " x context " +
                 std::to_string(context));
}

void BM_DecodeAttention(benchmark::State& state) { run_case(state, 0, true); }

// The same shapes with 32 calls queued back to back between the events (per-call time): what a
// decode step's 32 layers cost each when the host launches ahead — without the idle gap a lone
// call's events also time (the host's launch of its first kernel), and with one call's merge
// overlapping the next one's prologue. Not the goal's method (the FP16 baseline times lone calls);
// shown beside it.
void BM_DecodeAttentionQueued(benchmark::State& state) { run_case(state, 0, true, kQueuedCalls); }

// Tuning sweep (K4V4 and K3V3): args batch, context, kbits, vbits, splits (0 = heuristic), pdl
// (programmatic dependent launch, 1 = on). Filter with --benchmark_filter=Sweep.
void BM_DecodeAttentionSweep(benchmark::State& state) {
  run_case(state, static_cast<int32_t>(state.range(4)), state.range(5) != 0);
}

void sweep(benchmark::internal::Benchmark* b) {
  // {batch, context, two split counts around the heuristic's}: the heuristic with and without PDL,
  // then the other split counts.
  const int64_t cases[][4] = {{32, 16384, 2, 6}, {1, 131072, 33, 98}, {1, 32768, 17, 33}, {32, 4096, 2, 6}};
  for (const int64_t bits : {4, 3})
    for (const auto& c : cases) {
      b->Args({c[0], c[1], bits, bits, 0, 1});
      b->Args({c[0], c[1], bits, bits, 0, 0});
      b->Args({c[0], c[1], bits, bits, c[2], 1});
      b->Args({c[0], c[1], bits, bits, c[3], 1});
    }
  b->ArgNames({"batch", "context", "kbits", "vbits", "splits", "pdl"});
}

void queued_shapes(benchmark::internal::Benchmark* b) {
  const int64_t batch_context[][2] = {{32, 16384}, {1, 131072}, {1, 32768}, {32, 4096}};
  for (const int64_t bits : {4, 3})
    for (const auto& bc : batch_context) b->Args({bc[0], bc[1], bits, bits});
  b->ArgNames({"batch", "context", "kbits", "vbits"});
}

void shapes(benchmark::internal::Benchmark* b) {
  const int64_t batch_context[][2] = {{32, 16384}, {1, 131072}, {1, 32768}, {32, 4096}};
  const int64_t bits[][2] = {{4, 4}, {3, 3}, {2, 2}, {4, 0}};  // K4V0: K-only layers (the generic kernel)
  for (const auto& kv : bits)
    for (const auto& bc : batch_context) b->Args({bc[0], bc[1], kv[0], kv[1]});
  b->ArgNames({"batch", "context", "kbits", "vbits"});
}

BENCHMARK(BM_DecodeAttention)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeAttentionQueued)->Apply(queued_shapes)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Scores)
    ->Args({32, 16384, 4})
    ->Args({1, 131072, 4})
    ->Args({32, 16384, 2})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeAttentionSweep)->Apply(sweep)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
