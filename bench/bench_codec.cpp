// bench_codec: the CUDA codec ops at memory speed (Google Benchmark, CUDA-event timing).
//
//   encode / decode: N vectors of d = 128, fp16 in / out, bits 2 / 3 / 4, default codec (least-
//   squares scale, fp16 scales); dense arrays, or a paged pool (page_size 16, 8 KV heads, the
//   slot mapping / block table a random permutation of the pages).
//   rotate: N vectors, fp16 -> fp16.
//
// Counters: bytes (read + written per call, counting the actual codes, scales, slots and fp16
// bytes), GB/s, pct_copy (percent of this card's device-to-device copy bandwidth, measured once at
// start with a 1 GiB cudaMemcpyAsync, bytes read + written, as ../shared/device/fp16_baseline.py)
// and floor_us (bytes at copy bandwidth); median_us and pct_copy_median take the median call
// instead of the mean (the copy bandwidth is itself a median). Each iteration is timed alone with
// CUDA events and the buffer sets rotate so that the working set (> 200 MB) does not fit in L2.
// Without a CUDA device it prints a note and exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "turboquant/cuda/codec.hpp"
#include "turboquant/layout.hpp"

namespace tq = turboquant;
namespace tqc = turboquant::cuda;

namespace {

constexpr int32_t kHeadDim = 128;
constexpr int32_t kPageSize = 16;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kSequences = 64;                  // paged decode: N / 8 tokens over this many sequences
constexpr int64_t kWorkingSetBytes = 200ll << 20;   // rotate buffer sets until they span more than this
constexpr int64_t kFillBlockBytes = 64ll << 20;     // random fp16 generated once, copied to fill inputs
constexpr int64_t kCopyBytes = 1ll << 30;           // copy-bandwidth probe
constexpr int kCopyWarmup = 5, kCopyRuns = 20;

double g_copy_gbps = 0.0;

bool check(cudaError_t e, benchmark::State* state = nullptr) {
  if (e == cudaSuccess) return true;
  if (state != nullptr) state->SkipWithError(cudaGetErrorName(e));
  return false;
}

class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, static_cast<size_t>(std::max<int64_t>(bytes, 1))) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  [[nodiscard]] void* get() const { return ptr_; }
  template <typename T>
  [[nodiscard]] T* as() const {
    return static_cast<T*>(ptr_);
  }
  [[nodiscard]] int64_t bytes() const { return bytes_; }
  [[nodiscard]] bool ok() const { return ptr_ != nullptr; }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// Fills a buffer with random fp16 values (N(0,1)), never zeros: one random block, copied over.
bool fill_random_fp16(const DeviceBuffer& b, uint32_t seed) {
  static std::vector<uint16_t> block;
  if (block.empty()) {
    block.resize(kFillBlockBytes / sizeof(uint16_t));
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    for (auto& h : block) h = tq::float_to_half_bits(nd(rng));
  }
  for (int64_t at = 0; at < b.bytes(); at += kFillBlockBytes) {
    const int64_t n = std::min(kFillBlockBytes, b.bytes() - at);
    if (cudaMemcpy(b.as<uint8_t>() + at, block.data(), static_cast<size_t>(n), cudaMemcpyHostToDevice) != cudaSuccess)
      return false;
  }
  return true;
}

template <typename T>
bool upload(const DeviceBuffer& b, const std::vector<T>& host) {
  return cudaMemcpy(b.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess;
}

// Median device-to-device copy bandwidth of 1 GiB, bytes read + written, GB/s.
double measure_copy_gbps() {
  DeviceBuffer src(kCopyBytes), dst(kCopyBytes);
  cudaEvent_t start = nullptr, stop = nullptr;
  if (!src.ok() || !dst.ok() || !check(cudaEventCreate(&start)) || !check(cudaEventCreate(&stop))) return 0.0;
  cudaMemset(src.get(), 1, kCopyBytes);
  std::vector<float> ms;
  for (int i = 0; i < kCopyWarmup + kCopyRuns; ++i) {
    cudaEventRecord(start);
    cudaMemcpyAsync(dst.get(), src.get(), kCopyBytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0.0f;
    cudaEventElapsedTime(&t, start, stop);
    if (i >= kCopyWarmup) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return 2.0 * static_cast<double>(kCopyBytes) / (static_cast<double>(ms[ms.size() / 2]) * 1e6);
}

// Times `run(set)` per iteration with CUDA events, rotating over `sets` buffer sets, and sets the
// counters from `bytes` (read + written per call).
template <typename Run>
void time_rotating(benchmark::State& state, int sets, int64_t bytes, Run run) {
  cudaEvent_t start = nullptr, stop = nullptr;
  if (!check(cudaEventCreate(&start), &state) || !check(cudaEventCreate(&stop), &state)) return;
  for (int i = 0; i < 2 * sets; ++i) {  // warm up every set
    const tq::Status s = run(i % sets);
    if (!s.is_ok()) {
      state.SkipWithError(s.to_string().c_str());
      return;
    }
  }
  if (!check(cudaDeviceSynchronize(), &state)) return;
  double total_seconds = 0.0;
  int iteration = 0;
  std::vector<float> samples;  // per call, ms, for the median
  samples.reserve(static_cast<size_t>(state.max_iterations));
  for (auto _ : state) {
    cudaEventRecord(start);
    const tq::Status s = run(iteration++ % sets);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    if (!s.is_ok()) {
      state.SkipWithError(s.to_string().c_str());
      break;
    }
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(static_cast<double>(ms) * 1e-3);
    total_seconds += static_cast<double>(ms) * 1e-3;
    samples.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (iteration == 0 || total_seconds <= 0.0) return;
  const double gbps = static_cast<double>(bytes) * iteration / total_seconds / 1e9;
  state.counters["bytes"] = static_cast<double>(bytes);
  state.counters["GB/s"] = gbps;
  state.counters["pct_copy"] = g_copy_gbps > 0.0 ? 100.0 * gbps / g_copy_gbps : 0.0;
  state.counters["floor_us"] = g_copy_gbps > 0.0 ? static_cast<double>(bytes) / (g_copy_gbps * 1e3) : 0.0;
  std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
  const double median_s = static_cast<double>(samples[samples.size() / 2]) * 1e-3;
  state.counters["median_us"] = median_s * 1e6;
  state.counters["pct_copy_median"] =
      g_copy_gbps > 0.0 && median_s > 0.0 ? 100.0 * static_cast<double>(bytes) / median_s / 1e9 / g_copy_gbps : 0.0;
}

int sets_for(int64_t set_bytes) {
  return static_cast<int>(std::max<int64_t>(2, kWorkingSetBytes / std::max<int64_t>(set_bytes, 1) + 1));
}

// A paged pool for n vectors (n / kKvHeads tokens), its slot mapping (a random permutation of the
// pages) and the block table / lengths of kSequences sequences covering the same tokens.
struct Paged {
  tq::layout::PageLayout layout{};
  int64_t tokens = 0, pages = 0;
  int32_t tokens_per_seq = 0, pages_per_seq = 0;
  std::vector<int64_t> slots;
  std::vector<int32_t> block_table, seq_lens;
};
Paged make_paged(int64_t n, int32_t bits) {
  Paged p;
  p.layout = tq::layout::page_layout(tq::make_format(kHeadDim, bits, bits), kPageSize, kKvHeads);
  p.tokens = n / kKvHeads;
  p.pages = p.tokens / kPageSize;
  std::vector<int32_t> perm(static_cast<size_t>(p.pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(static_cast<uint32_t>(n + bits)));
  p.slots.resize(static_cast<size_t>(p.tokens));
  for (int64_t t = 0; t < p.tokens; ++t) p.slots[t] = int64_t{perm[t / kPageSize]} * kPageSize + t % kPageSize;
  p.tokens_per_seq = static_cast<int32_t>(p.tokens / kSequences);
  p.pages_per_seq = p.tokens_per_seq / kPageSize;
  p.block_table.assign(perm.begin(), perm.begin() + int64_t{kSequences} * p.pages_per_seq);
  p.seq_lens.assign(kSequences, p.tokens_per_seq);
  return p;
}

void bench_encode(benchmark::State& state, bool paged, int32_t bits, int64_t n) {
  const tq::CodecSpec c = tq::make_codec(kHeadDim, bits);
  const int64_t in_bytes = n * kHeadDim * 2, code_bytes = n * c.code_bytes(), scale_bytes = n * 2;
  const Paged pg = paged ? make_paged(n, bits) : Paged{};
  const int64_t out_bytes = paged ? pg.pages * pg.layout.page_bytes : code_bytes + scale_bytes;
  const int sets = sets_for(in_bytes + out_bytes);
  std::vector<DeviceBuffer> inputs, codes, scales, pools;
  DeviceBuffer slots(paged ? pg.tokens * 8 : 0);
  for (int s = 0; s < sets; ++s) {
    inputs.emplace_back(in_bytes);
    if (!inputs.back().ok() || !fill_random_fp16(inputs.back(), 1)) return state.SkipWithError("out of memory");
    if (paged) {
      pools.emplace_back(out_bytes);
      if (!pools.back().ok()) return state.SkipWithError("out of memory");
    } else {
      codes.emplace_back(code_bytes);
      scales.emplace_back(scale_bytes);
      if (!codes.back().ok() || !scales.back().ok()) return state.SkipWithError("out of memory");
    }
  }
  if (paged && !upload(slots, pg.slots)) return state.SkipWithError("upload failed");
  const int64_t bytes = in_bytes + code_bytes + scale_bytes + (paged ? pg.tokens * 8 : 0);
  time_rotating(state, sets, bytes, [&](int s) {
    tqc::EncodeArgs a;
    a.codec = c;
    if (paged) {
      a.input = tq::tensor_view<const void*>(inputs[s].get(), tq::DType::kF16, pg.tokens, kKvHeads, kHeadDim);
      a.paged = {pools[s].get(), pg.pages, pg.layout, false, slots.as<int64_t>()};
    } else {
      a.input = tq::matrix_view<const void*>(inputs[s].get(), tq::DType::kF16, n, kHeadDim);
      a.dense = {codes[s].as<uint8_t>(), scales[s].get()};
    }
    return tqc::encode(a, {}, nullptr);
  });
}

void bench_decode(benchmark::State& state, bool paged, int32_t bits, int64_t n) {
  const tq::CodecSpec c = tq::make_codec(kHeadDim, bits);
  const int64_t out_bytes = n * kHeadDim * 2, code_bytes = n * c.code_bytes(), scale_bytes = n * 2;
  const Paged pg = paged ? make_paged(n, bits) : Paged{};
  const int64_t in_bytes = paged ? pg.pages * pg.layout.page_bytes : code_bytes + scale_bytes;
  const int sets = sets_for(in_bytes + out_bytes);
  std::vector<DeviceBuffer> outputs, codes, scales, pools;
  DeviceBuffer source(out_bytes), slots(paged ? pg.tokens * 8 : 0);
  DeviceBuffer table(static_cast<int64_t>(pg.block_table.size()) * 4), lens(static_cast<int64_t>(pg.seq_lens.size()) * 4);
  if (!source.ok() || !fill_random_fp16(source, 2)) return state.SkipWithError("out of memory");
  if (paged && (!upload(slots, pg.slots) || !upload(table, pg.block_table) || !upload(lens, pg.seq_lens)))
    return state.SkipWithError("upload failed");
  for (int s = 0; s < sets; ++s) {  // every set holds the codes of random vectors
    outputs.emplace_back(out_bytes);
    tqc::EncodeArgs e;
    e.codec = c;
    if (paged) {
      pools.emplace_back(in_bytes);
      if (!pools.back().ok()) return state.SkipWithError("out of memory");
      e.input = tq::tensor_view<const void*>(source.get(), tq::DType::kF16, pg.tokens, kKvHeads, kHeadDim);
      e.paged = {pools[s].get(), pg.pages, pg.layout, false, slots.as<int64_t>()};
    } else {
      codes.emplace_back(code_bytes);
      scales.emplace_back(scale_bytes);
      if (!codes.back().ok() || !scales.back().ok()) return state.SkipWithError("out of memory");
      e.input = tq::matrix_view<const void*>(source.get(), tq::DType::kF16, n, kHeadDim);
      e.dense = {codes[s].as<uint8_t>(), scales[s].get()};
    }
    if (!outputs.back().ok()) return state.SkipWithError("out of memory");
    const tq::Status st = tqc::encode(e, {}, nullptr);
    if (!st.is_ok()) return state.SkipWithError(st.to_string().c_str());
  }
  const int64_t table_bytes = paged ? static_cast<int64_t>(pg.block_table.size() + pg.seq_lens.size()) * 4 : 0;
  const int64_t bytes = code_bytes + scale_bytes + out_bytes + table_bytes;
  time_rotating(state, sets, bytes, [&](int s) {
    tqc::DecodeArgs a;
    a.codec = c;
    if (paged) {
      a.paged = {pools[s].get(), pg.pages, pg.layout, table.as<int32_t>(), pg.pages_per_seq, lens.as<int32_t>(),
                 kSequences};
      a.max_tokens = pg.tokens_per_seq;
      a.output = tq::tensor_view<void*>(outputs[s].get(), tq::DType::kF16, int64_t{kSequences} * pg.tokens_per_seq,
                                        kKvHeads, kHeadDim);
    } else {
      a.dense = {codes[s].as<uint8_t>(), scales[s].get()};
      a.output = tq::matrix_view<void*>(outputs[s].get(), tq::DType::kF16, n, kHeadDim);
    }
    return tqc::decode(a, {}, nullptr);
  });
}

void bench_rotate(benchmark::State& state, int64_t n) {
  const int64_t bytes_each = n * kHeadDim * 2;
  const int sets = sets_for(2 * bytes_each);
  std::vector<DeviceBuffer> inputs, outputs;
  for (int s = 0; s < sets; ++s) {
    inputs.emplace_back(bytes_each);
    outputs.emplace_back(bytes_each);
    if (!inputs.back().ok() || !outputs.back().ok() || !fill_random_fp16(inputs.back(), 3))
      return state.SkipWithError("out of memory");
  }
  const tq::SignBits signs = tq::signs_from_seed(tq::kDefaultSeed, kHeadDim);
  time_rotating(state, sets, 2 * bytes_each, [&](int s) {
    tqc::RotateArgs a;
    a.signs = signs;
    a.input = tq::matrix_view<const void*>(inputs[s].get(), tq::DType::kF16, n, kHeadDim);
    a.output = tq::matrix_view<void*>(outputs[s].get(), tq::DType::kF16, n, kHeadDim);
    return tqc::rotate(a, {}, nullptr);
  });
}

void register_benchmarks() {
  constexpr int64_t kSizes[] = {int64_t{1} << 20, int64_t{1} << 22};
  for (int64_t n : kSizes) {
    for (bool paged : {false, true})
      for (int32_t bits : {2, 3, 4}) {
        const std::string suffix =
            fmt::format("{}/d:{}/bits:{}/N:{}", paged ? "paged" : "dense", kHeadDim, bits, n);
        benchmark::RegisterBenchmark(("encode/" + suffix).c_str(),
                                     [=](benchmark::State& s) { bench_encode(s, paged, bits, n); })
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(("decode/" + suffix).c_str(),
                                     [=](benchmark::State& s) { bench_decode(s, paged, bits, n); })
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    benchmark::RegisterBenchmark(fmt::format("rotate/d:{}/N:{}", kHeadDim, n).c_str(),
                                 [=](benchmark::State& s) { bench_rotate(s, n); })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    fmt::print("bench_codec: no CUDA device, nothing to measure\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  g_copy_gbps = measure_copy_gbps();
  fmt::print("device: {} ({} SMs); copy bandwidth (1 GiB D2D, read + write): {:.0f} GB/s\n", prop.name,
             prop.multiProcessorCount, g_copy_gbps);
  benchmark::AddCustomContext("device", prop.name);
  benchmark::AddCustomContext("copy_GBps", fmt::format("{:.1f}", g_copy_gbps));
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
