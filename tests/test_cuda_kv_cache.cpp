// Tests of PagedKVCache on the CUDA backend (turboquant/cuda/kv_cache.hpp), against the CPU
// backend driven by exactly the same operations:
//   - a randomized run (fixed seed) of add / append / append_batch / fork / truncate / free with
//     out-of-pages cases: after every step the bookkeeping of both caches is identical (block
//     tables, lengths, reference counts, free pages) and consistent; periodically and at the end
//     the device pages, decoded (on the host from a copy of the pool, and once with cuda::decode),
//     match the CPU backend's decoded rows (raw sides bit for bit, coded sides up to rare
//     boundary ties of the encode); attention on the GPU vs the CPU (relative L2 error <= 2e-3);
//   - a batched decode loop (forked prompt: copy-on-write of the shared partial page), every step
//     against the CPU backend;
//   - many steps enqueued with no host sync (staging rings of 2 slices wrapping all the time,
//     chunked prefill, a page boundary mid-run), every output checked at the end;
//   - out of pages leaves the cache exactly as before (device pools included);
//   - bad inputs give the Status the header promises; non-finite rows are stored as zeros and
//     counted.
// Device outputs are poisoned (0xFF) before every run. Skipped without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "cuda_test_util.hpp"
#include "turboquant/cpu/codec.hpp"
#include "turboquant/cuda/codec.hpp"
#include "turboquant/cuda/kv_cache.hpp"
#include "turboquant/kv_cache.hpp"

namespace {

using namespace turboquant;
namespace tqt = turboquant::testing;

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

KVCacheConfig gpu_config(int64_t pages) {
  KVCacheConfig c;
  c.layers = 4;
  c.kv_heads = 2;
  c.head_dim = 64;
  c.page_size = 16;
  c.policy = policies::per_layer({{4, 4}, {0, 0}, {4, 0}, {4, 2}});  // K4V4, plain fp16, K only, K4V2
  c.budget_pages = pages;
  c.seed = 7;
  return c;
}
// Plain layers (both sides fp16 / bf16) are not a kernel Format: cpu::decode_attention cannot
// read them, the CPU backend's own attention does.
bool is_plain(const PagedKVCache& c, int32_t layer) {
  return c.format(layer).key.bits == 0 && c.format(layer).value.bits == 0;
}

// A CPU-backend cache and a CUDA-backend cache driven by the same operations, plus device
// staging for the inputs (f32 K/V rows, f16 queries, f16 outputs).
struct Pair {
  PagedKVCache cpu, gpu;
  cudaStream_t stream = nullptr;
  tqt::DeviceBuffer k, v, q, out;
  int32_t max_rows = 0, q_heads = 0, max_batch = 0;
  ~Pair() {
    gpu = PagedKVCache();  // drains and frees the device cache before the stream goes
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

void make_pair(Pair* p, int64_t pages, cuda::CudaKVCacheOptions opt, int32_t max_rows, int32_t q_heads) {
  CUDA_OK(cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking));
  opt.stream = p->stream;
  const KVCacheConfig cfg = gpu_config(pages);
  ASSERT_TRUE(PagedKVCache::create(cfg, &p->cpu).is_ok());
  const Status st = cuda::create_kv_cache(cfg, opt, &p->gpu);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  ASSERT_TRUE(cuda::is_cuda_kv_cache(p->gpu));
  ASSERT_FALSE(cuda::is_cuda_kv_cache(p->cpu));
  ASSERT_TRUE(p->gpu.on_device());
  p->max_rows = max_rows;
  p->q_heads = q_heads;
  p->max_batch = opt.max_batch;
  const size_t row = static_cast<size_t>(cfg.kv_heads) * cfg.head_dim;
  p->k = tqt::DeviceBuffer(static_cast<size_t>(max_rows) * row * sizeof(float));
  p->v = tqt::DeviceBuffer(p->k.bytes());
  p->q = tqt::DeviceBuffer(static_cast<size_t>(opt.max_batch) * q_heads * cfg.head_dim * 2);
  p->out = tqt::DeviceBuffer(p->q.bytes());
  ASSERT_NE(p->k.get(), nullptr);
  ASSERT_NE(p->v.get(), nullptr);
  ASSERT_NE(p->q.get(), nullptr);
  ASSERT_NE(p->out.get(), nullptr);
}

// Uploads K/V rows (after the previous use of the device inputs finished).
void upload_rows(Pair& p, const std::vector<float>& k, const std::vector<float>& v) {
  CUDA_OK(cudaStreamSynchronize(p.stream));
  // On the cache's stream: it is non-blocking, so copies on the legacy stream would not be ordered
  // before its kernels (a pageable cudaMemcpy may return before its DMA finished).
  CUDA_OK(cudaMemcpyAsync(p.k.get(), k.data(), k.size() * sizeof(float), cudaMemcpyHostToDevice, p.stream));
  CUDA_OK(cudaMemcpyAsync(p.v.get(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice, p.stream));
  CUDA_OK(cudaStreamSynchronize(p.stream));
}

// Both backends: append n rows to one sequence. Returns the two Statuses' codes (must agree).
void both_append(Pair& p, int64_t id, int32_t layer, const std::vector<float>& k, const std::vector<float>& v,
                 int32_t n, StatusCode* code) {
  const auto& c = p.cpu.config();
  upload_rows(p, k, v);
  const Status a = p.cpu.append(id, layer, tensor_view<const void*>(k.data(), DType::kF32, n, c.kv_heads, c.head_dim),
                                tensor_view<const void*>(v.data(), DType::kF32, n, c.kv_heads, c.head_dim));
  const Status b = p.gpu.append(id, layer, tensor_view<const void*>(p.k.get(), DType::kF32, n, c.kv_heads, c.head_dim),
                                tensor_view<const void*>(p.v.get(), DType::kF32, n, c.kv_heads, c.head_dim));
  ASSERT_EQ(a.code(), b.code()) << "cpu: " << a.to_string() << " gpu: " << b.to_string();
  *code = a.code();
}
void both_append_batch(Pair& p, const std::vector<int64_t>& ids, int32_t layer, const std::vector<float>& k,
                       const std::vector<float>& v, StatusCode* code) {
  const auto& c = p.cpu.config();
  const auto n = static_cast<int32_t>(ids.size());
  upload_rows(p, k, v);
  const Status a = p.cpu.append_batch(ids.data(), n, layer,
                                      tensor_view<const void*>(k.data(), DType::kF32, n, c.kv_heads, c.head_dim),
                                      tensor_view<const void*>(v.data(), DType::kF32, n, c.kv_heads, c.head_dim));
  const Status b = p.gpu.append_batch(ids.data(), n, layer,
                                      tensor_view<const void*>(p.k.get(), DType::kF32, n, c.kv_heads, c.head_dim),
                                      tensor_view<const void*>(p.v.get(), DType::kF32, n, c.kv_heads, c.head_dim));
  ASSERT_EQ(a.code(), b.code()) << "cpu: " << a.to_string() << " gpu: " << b.to_string();
  *code = a.code();
}

std::vector<uint8_t> pool_bytes(const PagedKVCache& c, int32_t layer, cudaStream_t stream) {
  const size_t bytes = static_cast<size_t>(c.num_pages() * c.layout(layer).page_bytes);
  std::vector<uint8_t> out(bytes);
  if (c.on_device()) {
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(out.data(), c.layer_pages(layer), bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  } else {
    std::memcpy(out.data(), c.layer_pages(layer), bytes);
  }
  return out;
}

// Rows of one side of one layer of one sequence, decoded on the host from a copy of the pool.
std::vector<float> rows_of(const PagedKVCache& cache, const uint8_t* pool, int64_t id, int32_t layer, bool value_side) {
  int32_t len = 0;
  EXPECT_TRUE(cache.layer_length(id, layer, &len).is_ok());
  std::vector<int32_t> table;
  EXPECT_TRUE(cache.block_table(id, &table).is_ok());
  const int32_t d = cache.config().head_dim, kv = cache.config().kv_heads;
  std::vector<float> out(static_cast<size_t>(len) * kv * d);
  if (len == 0) return out;
  const Format& f = cache.format(layer);
  const CodecSpec& c = value_side ? f.value : f.key;
  const layout::PageLayout& l = cache.layout(layer);
  if (c.bits == 0) {
    for (int32_t t = 0; t < len; ++t)
      for (int32_t h = 0; h < kv; ++h) {
        const uint8_t* row = pool + table[static_cast<size_t>(t / l.page_size)] * l.page_bytes +
                             layout::codes_offset(l, value_side, h, t % l.page_size);
        for (int32_t j = 0; j < d; ++j)
          out[(static_cast<size_t>(t) * kv + h) * d + j] = load_as_float(row, j, f.raw_dtype);
      }
    return out;
  }
  cpu::DecodeArgs a{};
  a.codec = c;
  a.paged.pages = pool;
  a.paged.num_pages = cache.num_pages();
  a.paged.layout = l;
  a.paged.block_table = table.data();
  a.paged.max_pages_per_seq = static_cast<int32_t>(table.size());
  a.paged.seq_lens = &len;
  a.paged.num_seqs = 1;
  a.value_side = value_side;
  a.max_tokens = len;
  a.output = tensor_view<void*>(out.data(), DType::kF32, len, kv, d);
  const Status st = cpu::decode(a);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  return out;
}

// Same bookkeeping on both backends, consistent with itself.
void check_accounting(const Pair& p, const std::vector<int64_t>& ids, int step) {
  ASSERT_EQ(p.cpu.num_sequences(), ids.size()) << "step " << step;
  ASSERT_EQ(p.gpu.num_sequences(), ids.size()) << "step " << step;
  std::vector<int32_t> refs(static_cast<size_t>(p.gpu.num_pages()), 0);
  for (int64_t id : ids) {
    std::vector<int32_t> a, b;
    ASSERT_TRUE(p.cpu.block_table(id, &a).is_ok());
    ASSERT_TRUE(p.gpu.block_table(id, &b).is_ok());
    ASSERT_EQ(a, b) << "step " << step << " seq " << id;
    int32_t max_len = 0;
    for (int32_t l = 0; l < p.gpu.num_layers(); ++l) {
      int32_t la = -1, lb = -2;
      ASSERT_TRUE(p.cpu.layer_length(id, l, &la).is_ok());
      ASSERT_TRUE(p.gpu.layer_length(id, l, &lb).is_ok());
      ASSERT_EQ(la, lb) << "step " << step << " seq " << id << " layer " << l;
      max_len = std::max(max_len, lb);
    }
    const int32_t ps = p.gpu.config().page_size;
    ASSERT_EQ(static_cast<int32_t>(b.size()), (max_len + ps - 1) / ps) << "step " << step;
    for (int32_t page : b) {
      ASSERT_GE(page, 0);
      ASSERT_LT(page, p.gpu.num_pages());
      ++refs[static_cast<size_t>(page)];
    }
  }
  int64_t used = 0;
  for (int32_t page = 0; page < p.gpu.num_pages(); ++page) {
    ASSERT_EQ(p.gpu.ref_count(page), refs[static_cast<size_t>(page)]) << "step " << step << " page " << page;
    ASSERT_EQ(p.cpu.ref_count(page), refs[static_cast<size_t>(page)]) << "step " << step << " page " << page;
    used += refs[static_cast<size_t>(page)] > 0 ? 1 : 0;
  }
  ASSERT_EQ(p.gpu.pages_used(), used) << "step " << step;
  ASSERT_EQ(p.cpu.pages_free(), p.gpu.pages_free()) << "step " << step;
}

// Rows (vectors of head_dim) of one side of one layer where the GPU-encoded pages decode
// differently from the CPU-encoded ones. Expected: every row within 1e-3 relative (fp16 scales may
// differ by one ulp, 4.9e-4, where the float sums of the two encoders round differently), except
// rare rows where a coordinate tied a code boundary to the last bits and got the neighbouring code
// (cuda/codec.hpp): such a row is off by one level of one rotated coordinate, well under 0.5
// relative; anything beyond (a wrong page, garbage) fails at once.
struct RowDiff {
  int64_t rows = 0, ties = 0;
};
RowDiff compare_rows(const std::vector<float>& a, const std::vector<float>& b, int32_t d, const char* where) {
  RowDiff r;
  EXPECT_EQ(a.size(), b.size()) << where;
  for (size_t at = 0; at + static_cast<size_t>(d) <= std::min(a.size(), b.size()); at += static_cast<size_t>(d)) {
    double e2 = 0, n2 = 0;
    for (size_t j = at; j < at + static_cast<size_t>(d); ++j) {
      EXPECT_TRUE(std::isfinite(b[j])) << where << " element " << j;
      e2 += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
      n2 += double(a[j]) * a[j];
    }
    const double rel = std::sqrt(e2 / std::max(n2, 1e-30));
    ++r.rows;
    if (e2 == 0 || rel <= 1e-3) continue;
    ++r.ties;
    EXPECT_LE(rel, 0.5) << where << " row " << at / static_cast<size_t>(d) << ": not a boundary tie";
  }
  return r;
}

// Decoded device pages vs the CPU backend's: raw sides bit for bit, coded sides row by row
// (compare_rows), at most 1 + 1% of a sequence's rows off by a tie. Returns the tie rows found.
int64_t check_contents(const Pair& p, const std::vector<int64_t>& ids, int step, int64_t* ties = nullptr,
                       int32_t only_layer = -1) {
  int64_t found = 0;
  for (int32_t l = 0; l < p.gpu.num_layers(); ++l) {
    if (only_layer >= 0 && l != only_layer) continue;
    const std::vector<uint8_t> gpool = pool_bytes(p.gpu, l, p.stream);
    const auto* cpool = static_cast<const uint8_t*>(p.cpu.layer_pages(l));
    for (int64_t id : ids)
      for (bool side : {false, true}) {
        const std::vector<float> a = rows_of(p.cpu, cpool, id, l, side);
        const std::vector<float> b = rows_of(p.gpu, gpool.data(), id, l, side);
        const std::string where = "step " + std::to_string(step) + " seq " + std::to_string(id) + " layer " +
                                  std::to_string(l) + (side ? " V" : " K");
        const bool raw = (side ? p.gpu.format(l).value.bits : p.gpu.format(l).key.bits) == 0;
        if (raw) {
          EXPECT_EQ(a, b) << where;
          continue;
        }
        const RowDiff r = compare_rows(a, b, p.gpu.config().head_dim, where.c_str());
        found += r.ties;
        EXPECT_LE(r.ties, 1 + r.rows / 100) << where << ": " << r.ties << " of " << r.rows << " rows off";
      }
  }
  if (ties != nullptr) *ties += found;
  return found;
}

double rel_l2(const std::vector<uint16_t>& got_f16, const std::vector<float>& expect) {
  double e2 = 0, n2 = 0;
  for (size_t i = 0; i < expect.size(); ++i) {
    const double g = half_bits_to_float(got_f16[i]);
    e2 += (g - expect[i]) * (g - expect[i]);
    n2 += double(expect[i]) * expect[i];
  }
  return n2 == 0 ? (e2 == 0 ? 0.0 : 1.0) : std::sqrt(e2 / n2);
}

// GPU attention (f16 q / out) on every layer,
// relative L2 error <= 2e-3 against
//   (1) cpu::decode_attention over a copy of the GPU's own pages, block tables and lengths (the
//       kernel and the staging of tables and lengths, independent of the encode), and
//   (2) the CPU backend's attention over its own pages (same f16 q), where the two backends'
//       pages of these sequences decode alike (no boundary tie in this layer; see compare_rows).
void check_attention(Pair& p, const std::vector<int64_t>& ids, std::mt19937_64& rng, int step,
                     int32_t only_layer = -1) {
  if (ids.empty()) return;
  const auto& c = p.cpu.config();
  const auto n = static_cast<int32_t>(std::min<size_t>(ids.size(), static_cast<size_t>(p.max_batch)));
  const std::vector<int64_t> batch(ids.begin(), ids.begin() + n);
  const int32_t d = c.head_dim, qh = p.q_heads;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> q(static_cast<size_t>(n) * qh * d), got(q.size());
  for (auto& x : q) x = float_to_half_bits(normal(rng));
  std::vector<float> own(q.size()), cpu(q.size());
  CUDA_OK(cudaStreamSynchronize(p.stream));
  CUDA_OK(cudaMemcpyAsync(p.q.get(), q.data(), q.size() * 2, cudaMemcpyHostToDevice, p.stream));
  CUDA_OK(cudaStreamSynchronize(p.stream));
  for (int32_t l = 0; l < c.layers; ++l) {
    if (only_layer >= 0 && l != only_layer) continue;
    CUDA_OK(cudaMemsetAsync(p.out.get(), 0xFF, q.size() * 2, p.stream));
    const Status sg = p.gpu.attention(batch.data(), n, l, tensor_view<const void*>(p.q.get(), DType::kF16, n, qh, d),
                                      tensor_view<void*>(p.out.get(), DType::kF16, n, qh, d));
    ASSERT_TRUE(sg.is_ok()) << "step " << step << " layer " << l << ": " << sg.to_string();
    CUDA_OK(cudaStreamSynchronize(p.stream));
    CUDA_OK(cudaMemcpy(got.data(), p.out.get(), got.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_TRUE(std::isfinite(half_bits_to_float(got[i]))) << "step " << step << " layer " << l << " element " << i;
    // (1) the GPU's own pages (coded, K-only and V-only layers; plain layers: (2) only)
    if (!is_plain(p.gpu, l)) {
      const std::vector<uint8_t> pool = pool_bytes(p.gpu, l, p.stream);
      int32_t max_pages = 0, max_len = 0;
      ASSERT_TRUE(p.gpu.batch_extent(batch.data(), n, l, &max_pages, &max_len).is_ok());
      max_pages = std::max(max_pages, 1);
      std::vector<int32_t> table(static_cast<size_t>(n) * max_pages), lens(static_cast<size_t>(n));
      ASSERT_TRUE(p.gpu.fill_batch(batch.data(), n, l, max_pages, table.data(), lens.data()).is_ok());
      cpu::DecodeAttentionArgs a{};
      a.format = p.gpu.format(l);
      a.q = tensor_view<const void*>(q.data(), DType::kF16, n, qh, d);
      a.cache = PagedCache{pool.data(), p.gpu.num_pages(), p.gpu.layout(l), table.data(), max_pages, lens.data(), n};
      a.out = tensor_view<void*>(own.data(), DType::kF32, n, qh, d);
      const Status so = cpu::decode_attention(a);
      ASSERT_TRUE(so.is_ok()) << so.to_string();
      EXPECT_LE(rel_l2(got, own), 2e-3) << "step " << step << " layer " << l << ": vs the GPU's own pages";
    }
    // (2) the CPU backend
    const Status sc = p.cpu.attention(batch.data(), n, l, tensor_view<const void*>(q.data(), DType::kF16, n, qh, d),
                                      tensor_view<void*>(cpu.data(), DType::kF32, n, qh, d));
    ASSERT_TRUE(sc.is_ok()) << sc.to_string();
    if (check_contents(p, batch, step, nullptr, l) == 0) {
      EXPECT_LE(rel_l2(got, cpu), 2e-3) << "step " << step << " layer " << l << ": vs the CPU backend";
    }
  }
}

// cuda::decode of the device pages of one coded layer for every sequence at once, against the
// host decode of a copy of the same pages (the codec promises bit-exact decode).
void check_cuda_decode(const Pair& p, const std::vector<int64_t>& ids, int32_t layer) {
  if (ids.empty()) return;
  const auto& c = p.gpu.config();
  const auto n = static_cast<int32_t>(ids.size());
  int32_t max_pages = 0, max_len = 0;
  ASSERT_TRUE(p.gpu.batch_extent(ids.data(), n, layer, &max_pages, &max_len).is_ok());
  if (max_len == 0) return;
  max_pages = std::max(max_pages, 1);
  std::vector<int32_t> table(static_cast<size_t>(n) * max_pages), lens(static_cast<size_t>(n));
  ASSERT_TRUE(p.gpu.fill_batch(ids.data(), n, layer, max_pages, table.data(), lens.data()).is_ok());
  tqt::DeviceBuffer dt = tqt::to_device(table), dl = tqt::to_device(lens);
  CUDA_OK(cudaDeviceSynchronize());  // legacy-stream uploads done before the cache's stream reads them
  const size_t rows = static_cast<size_t>(n) * max_len * c.kv_heads;
  tqt::DeviceBuffer out(rows * c.head_dim * sizeof(float));
  const std::vector<uint8_t> pool = pool_bytes(p.gpu, layer, p.stream);
  for (bool side : {false, true}) {
    CUDA_OK(cudaMemsetAsync(out.get(), 0xFF, out.bytes(), p.stream));
    cuda::DecodeArgs a{};
    a.codec = side ? p.gpu.format(layer).value : p.gpu.format(layer).key;
    a.paged = PagedCache{p.gpu.layer_pages(layer),
                         p.gpu.num_pages(),
                         p.gpu.layout(layer),
                         dt.as<int32_t>(),
                         max_pages,
                         dl.as<int32_t>(),
                         n};
    a.value_side = side;
    a.max_tokens = max_len;
    a.output = tensor_view<void*>(out.get(), DType::kF32, int64_t{n} * max_len, c.kv_heads, c.head_dim);
    const Status st = cuda::decode(a, {}, p.stream);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    std::vector<float> got(rows * c.head_dim);
    CUDA_OK(cudaStreamSynchronize(p.stream));
    CUDA_OK(cudaMemcpy(got.data(), out.get(), got.size() * sizeof(float), cudaMemcpyDeviceToHost));
    const size_t row = static_cast<size_t>(c.kv_heads) * c.head_dim;
    for (int32_t s = 0; s < n; ++s) {
      const std::vector<float> host = rows_of(p.gpu, pool.data(), ids[static_cast<size_t>(s)], layer, side);
      for (size_t i = 0; i < host.size(); ++i)
        ASSERT_EQ(host[i], got[static_cast<size_t>(s) * max_len * row + i]) << "seq " << ids[size_t(s)] << " i " << i;
    }
  }
}

std::vector<int64_t> keys_of(const std::map<int64_t, int>& m) {
  std::vector<int64_t> v;
  for (const auto& kv : m) v.push_back(kv.first);
  return v;
}

TEST(CudaKVCache, RandomizedAgainstCpuBackend) {
  TQ_REQUIRE_DEVICE();
  const int steps = tqt::under_sanitizer() ? 120 : 800;
  cuda::CudaKVCacheOptions opt;
  opt.max_batch = 8;
  opt.max_q_heads = 4;
  opt.max_append_rows = 8;  // appends of up to 20 tokens go in up to three chunks
  opt.staging_slices = 3;   // the rings wrap all the time
  opt.table_slices = 2;
  Pair p;
  make_pair(&p, 5, opt, 24, 4);  // 5 pages of 16 tokens: out of pages now and then
  if (::testing::Test::HasFatalFailure()) return;
  const auto& cfg = p.cpu.config();
  const int32_t row = cfg.kv_heads * cfg.head_dim;
  std::mt19937_64 rng(20261128);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::map<int64_t, int> live;  // the ids present
  int64_t next_id = 100;
  int oom = 0, cows = 0, forks = 0, truncs = 0, appends = 0, batches = 0, frees = 0;
  int64_t ties = 0;
  auto pick = [&]() {
    auto it = live.begin();
    std::advance(it, static_cast<long>(rng() % live.size()));
    return it->first;
  };
  auto random_rows = [&](int32_t n, std::vector<float>* k, std::vector<float>* v) {
    k->resize(static_cast<size_t>(n) * row);
    v->resize(k->size());
    for (auto& x : *k) x = normal(rng);
    for (auto& x : *v) x = normal(rng);
  };
  for (int step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % 16);
    std::vector<float> k, v;
    if (live.empty() || (op == 0 && live.size() < 6)) {
      const int64_t id = next_id++;
      ASSERT_TRUE(p.cpu.add(id).is_ok());
      ASSERT_TRUE(p.gpu.add(id).is_ok());
      live[id] = 1;
    } else if (op <= 10) {
      const bool batch = op >= 7;
      const int32_t layer = static_cast<int32_t>(rng() % static_cast<uint64_t>(cfg.layers));
      std::vector<int64_t> ids;
      if (batch) {  // a random subset, random order
        ids = keys_of(live);
        std::shuffle(ids.begin(), ids.end(), rng);
        ids.resize(1 + rng() % ids.size());
      } else {
        ids.push_back(pick());
      }
      const int32_t n =
          batch ? static_cast<int32_t>(ids.size()) : 1 + static_cast<int32_t>(rng() % (rng() % 4 == 0 ? 20 : 3));
      random_rows(n, &k, &v);
      std::vector<std::vector<int32_t>> before_tables;
      for (int64_t id : ids) {
        before_tables.emplace_back();
        ASSERT_TRUE(p.gpu.block_table(id, &before_tables.back()).is_ok());
      }
      const int64_t free_before = p.gpu.pages_free();
      std::vector<std::vector<uint8_t>> pools_before;
      for (int32_t l = 0; l < cfg.layers; ++l) pools_before.push_back(pool_bytes(p.gpu, l, p.stream));
      StatusCode code = StatusCode::kOk;
      if (batch)
        both_append_batch(p, ids, layer, k, v, &code);
      else
        both_append(p, ids[0], layer, k, v, n, &code);
      if (::testing::Test::HasFatalFailure()) return;
      if (code == StatusCode::kOutOfMemory) {
        ++oom;
        ASSERT_EQ(p.gpu.pages_free(), free_before) << "step " << step;
        for (size_t i = 0; i < ids.size(); ++i) {
          std::vector<int32_t> t;
          ASSERT_TRUE(p.gpu.block_table(ids[i], &t).is_ok());
          ASSERT_EQ(t, before_tables[i]) << "step " << step << ": out of pages changed a block table";
        }
        for (int32_t l = 0; l < cfg.layers; ++l)
          ASSERT_TRUE(pool_bytes(p.gpu, l, p.stream) == pools_before[static_cast<size_t>(l)])
              << "step " << step << ": out of pages changed the device pool of layer " << l;
      } else {
        ASSERT_EQ(code, StatusCode::kOk) << "step " << step;
        ++(batch ? batches : appends);
        for (size_t i = 0; i < ids.size(); ++i) {
          std::vector<int32_t> t;
          ASSERT_TRUE(p.gpu.block_table(ids[i], &t).is_ok());
          for (size_t j = 0; j < before_tables[i].size(); ++j) cows += t[j] != before_tables[i][j] ? 1 : 0;
        }
        // Attention right away: of the same batch (the lengths staged by the append), or of every
        // sequence (often the batch of an earlier check: the cached block table must follow
        // every page taken, copied or released since).
        if (rng() % 2 == 0)
          check_attention(p, batch ? ids : keys_of(live), rng, step, layer);
      }
    } else if (op == 11 && live.size() < 6) {
      const int64_t src = pick(), dst = next_id++;
      ASSERT_TRUE(p.cpu.fork(src, dst).is_ok());
      ASSERT_TRUE(p.gpu.fork(src, dst).is_ok());
      live[dst] = 1;
      ++forks;
    } else if (op == 12 || op == 13) {
      const int64_t id = pick();
      int32_t len = 0;
      ASSERT_TRUE(p.gpu.length(id, &len).is_ok());
      const int32_t new_len = len - static_cast<int32_t>(rng() % static_cast<uint64_t>(std::min(len, 20) + 1));
      ASSERT_TRUE(p.cpu.truncate(id, new_len).is_ok());
      ASSERT_TRUE(p.gpu.truncate(id, new_len).is_ok());
      ++truncs;
    } else if (op == 14 || live.size() >= 6) {
      const int64_t id = pick();
      ASSERT_TRUE(p.cpu.free(id).is_ok());
      ASSERT_TRUE(p.gpu.free(id).is_ok());
      live.erase(id);
      ++frees;
    }
    const std::vector<int64_t> ids = keys_of(live);
    check_accounting(p, ids, step);
    if (::testing::Test::HasFatalFailure()) return;
    if (step % 25 == 24 || step == steps - 1) {
      (void)check_contents(p, ids, step, &ties);
      if (::testing::Test::HasFatalFailure()) return;
      check_attention(p, ids, rng, step);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  const std::vector<int64_t> ids = keys_of(live);
  check_cuda_decode(p, ids, 0);
  check_cuda_decode(p, ids, 3);
  std::printf(
      "appends %d, batch appends %d (copy-on-write %d), out of pages %d, forks %d, truncates %d, frees %d; "
      "coded rows off by a boundary tie (summed over the checks): %lld\n",
      appends, batches, cows, oom, forks, truncs, frees, static_cast<long long>(ties));
  if (!tqt::under_sanitizer()) {
    EXPECT_GT(oom, 5);
    EXPECT_GT(forks, 10);
    EXPECT_GT(cows, 5);
    EXPECT_GT(batches, 50);
    EXPECT_GT(appends, 50);
  }
  for (int64_t id : ids) {
    ASSERT_TRUE(p.cpu.free(id).is_ok());
    ASSERT_TRUE(p.gpu.free(id).is_ok());
  }
  EXPECT_EQ(p.gpu.pages_free(), p.gpu.num_pages());
  int64_t nonfinite = -1;
  ASSERT_TRUE(cuda::kv_cache_nonfinite_rows(p.gpu, &nonfinite).is_ok());
  EXPECT_EQ(nonfinite, 0);
}

// What an engine does: prefill a prompt, fork it into a batch (shared pages, the partial one
// copied on the first write), then per step and layer append_batch + attention, every step checked.
TEST(CudaKVCache, BatchedDecodeLoopMatchesCpuBackend) {
  TQ_REQUIRE_DEVICE();
  cuda::CudaKVCacheOptions opt;
  opt.max_batch = 6;
  opt.max_q_heads = 8;
  Pair p;
  make_pair(&p, 64, opt, 64, 8);
  if (::testing::Test::HasFatalFailure()) return;
  const auto& cfg = p.cpu.config();
  const int32_t row = cfg.kv_heads * cfg.head_dim, prompt = 37;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(prompt) * row), v(k.size());
  ASSERT_TRUE(p.cpu.add(0).is_ok());
  ASSERT_TRUE(p.gpu.add(0).is_ok());
  for (int32_t l = 0; l < cfg.layers; ++l) {
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    StatusCode code = StatusCode::kOk;
    both_append(p, 0, l, k, v, prompt, &code);
    ASSERT_EQ(code, StatusCode::kOk);
  }
  std::vector<int64_t> ids = {0};
  for (int64_t id = 1; id < 6; ++id) {
    ASSERT_TRUE(p.cpu.fork(0, id).is_ok());
    ASSERT_TRUE(p.gpu.fork(0, id).is_ok());
    ids.push_back(id);
  }
  std::reverse(ids.begin(), ids.end());  // any order
  const int steps = tqt::under_sanitizer() ? 4 : 40;
  for (int step = 0; step < steps; ++step) {
    for (int32_t l = 0; l < cfg.layers; ++l) {
      k.resize(ids.size() * row);
      v.resize(k.size());
      for (auto& x : k) x = normal(rng);
      for (auto& x : v) x = normal(rng);
      StatusCode code = StatusCode::kOk;
      both_append_batch(p, ids, l, k, v, &code);
      ASSERT_EQ(code, StatusCode::kOk) << "step " << step;
      check_attention(p, ids, rng, step, l);
      if (::testing::Test::HasFatalFailure()) return;
    }
    check_accounting(p, std::vector<int64_t>{0, 1, 2, 3, 4, 5}, step);
    if (::testing::Test::HasFatalFailure()) return;
    if (step % 10 == 9 || step == steps - 1) (void)check_contents(p, ids, step);
    if (::testing::Test::HasFatalFailure()) return;
  }
  check_cuda_decode(p, ids, 0);
}

// Many steps enqueued with no host sync in between (tiny staging rings that wrap all the time, a
// prefill in chunks, a page boundary mid-run): every staged slot mapping, length and block table
// must still reach the device intact. Outputs of every (step, layer) checked at the end.
TEST(CudaKVCache, PipelinedStepsWithoutHostSync) {
  TQ_REQUIRE_DEVICE();
  cuda::CudaKVCacheOptions opt;
  opt.max_batch = 4;
  opt.max_q_heads = 4;
  opt.max_append_rows = 4;
  opt.staging_slices = 2;
  opt.table_slices = 2;
  Pair p;
  make_pair(&p, 64, opt, 40, 4);
  if (::testing::Test::HasFatalFailure()) return;
  const auto& cfg = p.cpu.config();
  const int32_t row = cfg.kv_heads * cfg.head_dim, d = cfg.head_dim, qh = 4, steps = 6;
  std::mt19937_64 rng(77);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<int64_t> ids = {0, 1, 2, 3};
  const int32_t prompt[4] = {13, 17, 0, 33};  // sequence 0 crosses a page boundary at step 3
  std::vector<float> k, v;
  for (int64_t id : ids) {
    ASSERT_TRUE(p.cpu.add(id).is_ok());
    ASSERT_TRUE(p.gpu.add(id).is_ok());
    if (prompt[id] == 0) continue;
    for (int32_t l = 0; l < cfg.layers; ++l) {
      k.resize(static_cast<size_t>(prompt[id]) * row);
      v.resize(k.size());
      for (auto& x : k) x = normal(rng);
      for (auto& x : v) x = normal(rng);
      StatusCode code = StatusCode::kOk;
      both_append(p, id, l, k, v, prompt[id], &code);
      ASSERT_EQ(code, StatusCode::kOk);
    }
  }
  // Every input of the run on the device up front; one output buffer per (step, layer).
  const size_t runs = static_cast<size_t>(steps) * cfg.layers, kv_elems = 4 * static_cast<size_t>(row),
               q_elems = 4 * static_cast<size_t>(qh) * d;
  std::vector<float> hk(runs * kv_elems), hv(hk.size());
  std::vector<uint16_t> hq(runs * q_elems), got(hq.size());
  for (auto& x : hk) x = normal(rng);
  for (auto& x : hv) x = normal(rng);
  for (auto& x : hq) x = float_to_half_bits(normal(rng));
  tqt::DeviceBuffer dk = tqt::to_device(hk), dv = tqt::to_device(hv), dq = tqt::to_device(hq);
  tqt::DeviceBuffer dout(hq.size() * 2);
  ASSERT_NE(dout.get(), nullptr);
  CUDA_OK(cudaMemsetAsync(dout.get(), 0xFF, dout.bytes(), p.stream));
  CUDA_OK(cudaDeviceSynchronize());  // legacy-stream uploads done before the cache's stream reads them
  std::vector<float> expect(hq.size());
  for (int32_t s = 0; s < steps; ++s)
    for (int32_t l = 0; l < cfg.layers; ++l) {
      const size_t r = static_cast<size_t>(s) * cfg.layers + l;
      const Status ga = p.gpu.append_batch(
          ids.data(), 4, l, tensor_view<const void*>(dk.as<float>() + r * kv_elems, DType::kF32, 4, cfg.kv_heads, d),
          tensor_view<const void*>(dv.as<float>() + r * kv_elems, DType::kF32, 4, cfg.kv_heads, d));
      ASSERT_TRUE(ga.is_ok()) << ga.to_string();
      ASSERT_TRUE(p.cpu
                      .append_batch(ids.data(), 4, l,
                                    tensor_view<const void*>(hk.data() + r * kv_elems, DType::kF32, 4, cfg.kv_heads, d),
                                    tensor_view<const void*>(hv.data() + r * kv_elems, DType::kF32, 4, cfg.kv_heads, d))
                      .is_ok());
      const Status gt = p.gpu.attention(
          ids.data(), 4, l, tensor_view<const void*>(dq.as<uint16_t>() + r * q_elems, DType::kF16, 4, qh, d),
          tensor_view<void*>(dout.as<uint16_t>() + r * q_elems, DType::kF16, 4, qh, d));
      ASSERT_TRUE(gt.is_ok()) << gt.to_string();
      ASSERT_TRUE(p.cpu
                      .attention(ids.data(), 4, l,
                                 tensor_view<const void*>(hq.data() + r * q_elems, DType::kF16, 4, qh, d),
                                 tensor_view<void*>(expect.data() + r * q_elems, DType::kF32, 4, qh, d))
                      .is_ok());
    }
  CUDA_OK(cudaStreamSynchronize(p.stream));
  CUDA_OK(cudaMemcpy(got.data(), dout.get(), got.size() * 2, cudaMemcpyDeviceToHost));
  for (int32_t s = 0; s < steps; ++s)
    for (int32_t l = 0; l < cfg.layers; ++l) {
      const size_t r = static_cast<size_t>(s) * cfg.layers + l;
      double e2 = 0, n2 = 0;
      for (size_t i = r * q_elems; i < (r + 1) * q_elems; ++i) {
        const double g = half_bits_to_float(got[i]);
        e2 += (g - expect[i]) * (g - expect[i]);
        n2 += double(expect[i]) * expect[i];
      }
      EXPECT_LE(std::sqrt(e2 / n2), 2e-3) << "step " << s << " layer " << l;
    }
  check_accounting(p, ids, steps);
  (void)check_contents(p, ids, steps);
}

TEST(CudaKVCache, OutOfPagesLeavesCacheUnchanged) {
  TQ_REQUIRE_DEVICE();
  cuda::CudaKVCacheOptions opt;
  opt.max_batch = 4;
  opt.max_q_heads = 2;
  Pair p;
  make_pair(&p, 4, opt, 64, 2);
  if (::testing::Test::HasFatalFailure()) return;
  const auto& cfg = p.cpu.config();
  const int32_t row = cfg.kv_heads * cfg.head_dim;
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto rows = [&](int32_t n, std::vector<float>* x) {
    x->resize(static_cast<size_t>(n) * row);
    for (auto& e : *x) e = normal(rng);
  };
  std::vector<float> k, v;
  for (int64_t id : {1, 2}) {
    ASSERT_TRUE(p.cpu.add(id).is_ok());
    ASSERT_TRUE(p.gpu.add(id).is_ok());
  }
  StatusCode code = StatusCode::kOk;
  rows(64, &k);
  rows(64, &v);
  both_append(p, 1, 0, k, v, 64, &code);
  ASSERT_EQ(code, StatusCode::kOk);  // 4 pages: the whole pool
  ASSERT_EQ(p.gpu.pages_free(), 0);
  std::vector<std::vector<uint8_t>> before;
  for (int32_t l = 0; l < cfg.layers; ++l) before.push_back(pool_bytes(p.gpu, l, p.stream));
  rows(1, &k);
  rows(1, &v);
  both_append(p, 1, 0, k, v, 1, &code);
  EXPECT_EQ(code, StatusCode::kOutOfMemory);
  rows(2, &k);
  rows(2, &v);
  both_append_batch(p, {1, 2}, 0, k, v, &code);
  EXPECT_EQ(code, StatusCode::kOutOfMemory);
  for (int32_t l = 0; l < cfg.layers; ++l)
    EXPECT_TRUE(pool_bytes(p.gpu, l, p.stream) == before[static_cast<size_t>(l)]) << "layer " << l;
  int32_t len = -1;
  ASSERT_TRUE(p.gpu.layer_length(1, 0, &len).is_ok());
  EXPECT_EQ(len, 64);
  ASSERT_TRUE(p.gpu.layer_length(2, 0, &len).is_ok());
  EXPECT_EQ(len, 0);
  std::vector<int32_t> t;
  ASSERT_TRUE(p.gpu.block_table(2, &t).is_ok());
  EXPECT_TRUE(t.empty());
  check_accounting(p, {1, 2}, 0);
  (void)check_contents(p, {1, 2}, 0);

  // The page count of a batch is exact: a shared partial page written by every holder is copied
  // once (the last writer keeps the original), so 40 tokens (3 pages) + a fork fit in 4 pages.
  for (int64_t id : {1, 2}) {
    ASSERT_TRUE(p.cpu.free(id).is_ok());
    ASSERT_TRUE(p.gpu.free(id).is_ok());
  }
  ASSERT_TRUE(p.cpu.add(1).is_ok());
  ASSERT_TRUE(p.gpu.add(1).is_ok());
  rows(40, &k);
  rows(40, &v);
  both_append(p, 1, 0, k, v, 40, &code);
  ASSERT_EQ(code, StatusCode::kOk);
  ASSERT_TRUE(p.cpu.fork(1, 3).is_ok());
  ASSERT_TRUE(p.gpu.fork(1, 3).is_ok());
  ASSERT_EQ(p.gpu.pages_free(), 1);
  rows(2, &k);
  rows(2, &v);
  both_append_batch(p, {3, 1}, 0, k, v, &code);
  EXPECT_EQ(code, StatusCode::kOk);
  EXPECT_EQ(p.gpu.pages_free(), 0);
  check_accounting(p, {1, 3}, 1);
  (void)check_contents(p, {1, 3}, 1);
}

TEST(CudaKVCache, BadInputs) {
  TQ_REQUIRE_DEVICE();
  cuda::CudaKVCacheOptions opt;
  opt.max_batch = 2;
  opt.max_q_heads = 4;
  Pair p;
  make_pair(&p, 8, opt, 8, 4);
  if (::testing::Test::HasFatalFailure()) return;
  PagedKVCache& c = p.gpu;
  const auto& cfg = c.config();
  const auto kv = [&](const void* data, int64_t n, int32_t heads, int32_t d, DType t = DType::kF32) {
    return tensor_view<const void*>(data, t, n, heads, d);
  };
  const void* k = p.k.get();
  EXPECT_EQ(c.append(9, 0, kv(k, 1, 2, 64), kv(k, 1, 2, 64)).code(), StatusCode::kNotFound);
  const int64_t unknown[2] = {9, 10};
  EXPECT_EQ(c.append_batch(unknown, 2, 0, kv(k, 2, 2, 64), kv(k, 2, 2, 64)).code(), StatusCode::kNotFound);
  ASSERT_TRUE(c.add(1).is_ok());
  ASSERT_TRUE(c.add(2).is_ok());
  const int64_t ids[2] = {1, 2}, twice[2] = {1, 1};
  EXPECT_EQ(c.append(1, 0, kv(k, 1, 3, 64), kv(k, 1, 3, 64)).code(), StatusCode::kInvalidArgument);    // kv_heads
  EXPECT_EQ(c.append(1, 0, kv(k, 1, 2, 128), kv(k, 1, 2, 128)).code(), StatusCode::kInvalidArgument);  // head_dim
  EXPECT_EQ(c.append(1, 4, kv(k, 1, 2, 64), kv(k, 1, 2, 64)).code(), StatusCode::kOutOfRange);         // layer
  Status st = c.append_batch(ids, 2, 0, kv(k, 3, 2, 64), kv(k, 3, 2, 64));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("num_seqs = 2"), std::string::npos) << st.to_string();
  st = c.append_batch(twice, 2, 0, kv(k, 2, 2, 64), kv(k, 2, 2, 64));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("seq_ids[1] = 1"), std::string::npos) << st.to_string();
  EXPECT_EQ(c.append_batch(ids, 0, 0, kv(k, 2, 2, 64), kv(k, 2, 2, 64)).code(), StatusCode::kInvalidArgument);
  // Device rows must be 16-byte aligned for the encode's vector loads (coded layer 0).
  const void* odd = static_cast<const uint8_t*>(k) + 4;
  st = c.append(1, 0, kv(odd, 1, 2, 64), kv(k, 1, 2, 64));
  EXPECT_EQ(st.code(), StatusCode::kMisaligned) << st.to_string();
  EXPECT_EQ(c.pages_free(), c.num_pages());  // nothing above took a page
  int32_t len = -1;
  ASSERT_TRUE(c.layer_length(1, 0, &len).is_ok());
  EXPECT_EQ(len, 0);
  // Attention on every layer (plain and K-only ones by the generic kernel); batch and heads bounded
  // by the options.
  std::vector<float> rows(static_cast<size_t>(2) * cfg.kv_heads * cfg.head_dim, 0.5f);
  upload_rows(p, rows, rows);
  for (int32_t l = 0; l < cfg.layers; ++l)
    ASSERT_TRUE(c.append_batch(ids, 2, l, kv(p.k.get(), 2, 2, 64), kv(p.v.get(), 2, 2, 64)).is_ok()) << l;
  const auto q = [&](int64_t n, int32_t heads, DType t = DType::kF16) {
    return tensor_view<const void*>(p.q.get(), t, n, heads, 64);
  };
  const auto o = [&](int64_t n, int32_t heads, DType t = DType::kF16) {
    return tensor_view<void*>(p.out.get(), t, n, heads, 64);
  };
  CUDA_OK(cudaMemsetAsync(p.q.get(), 0, p.q.bytes(), p.stream));  // zero queries (initcheck)
  EXPECT_TRUE(c.attention(ids, 2, 0, q(2, 4), o(2, 4)).is_ok());
  EXPECT_TRUE(c.attention(ids, 2, 1, q(2, 4), o(2, 4)).is_ok());  // plain fp16
  EXPECT_TRUE(c.attention(ids, 2, 2, q(2, 4), o(2, 4)).is_ok());  // raw values
  const int64_t three[3] = {1, 2, 1};
  EXPECT_EQ(c.attention(three, 3, 0, q(3, 4), o(3, 4)).code(), StatusCode::kInvalidArgument);  // > max_batch
  EXPECT_EQ(c.attention(ids, 2, 0, q(2, 6), o(2, 6)).code(), StatusCode::kInvalidArgument);    // > max_q_heads
  EXPECT_EQ(c.attention(ids, 2, 0, q(2, 3), o(2, 3)).code(), StatusCode::kInvalidArgument);    // not a multiple
  EXPECT_EQ(c.attention(unknown, 2, 0, q(2, 4), o(2, 4)).code(), StatusCode::kNotFound);
  EXPECT_EQ(c.attention(ids, 2, 0, q(2, 4, DType::kF32), o(2, 4, DType::kF32)).code(),
            StatusCode::kUnsupportedFormat);  // the kernel takes f16 | bf16 queries
  CUDA_OK(cudaStreamSynchronize(p.stream));
  int64_t nonfinite = -1;
  EXPECT_EQ(cuda::kv_cache_nonfinite_rows(p.cpu, &nonfinite).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda::kv_cache_stream(p.gpu), p.stream);
}

// A NaN in a device row: stored as a zero vector and counted (the CPU backend rejects it instead).
TEST(CudaKVCache, NonFiniteRowsAreZerosAndCounted) {
  TQ_REQUIRE_DEVICE();
  cuda::CudaKVCacheOptions opt;
  opt.max_batch = 2;
  opt.max_q_heads = 2;
  Pair p;
  make_pair(&p, 4, opt, 4, 2);
  if (::testing::Test::HasFatalFailure()) return;
  const auto& cfg = p.gpu.config();
  std::vector<float> k(static_cast<size_t>(cfg.kv_heads) * cfg.head_dim, 1.0f), v = k;
  k[3] = std::nanf("");  // head 0 of the key
  upload_rows(p, k, v);
  ASSERT_TRUE(p.gpu.add(1).is_ok());
  ASSERT_TRUE(p.gpu
                  .append(1, 0, tensor_view<const void*>(p.k.get(), DType::kF32, 1, cfg.kv_heads, cfg.head_dim),
                          tensor_view<const void*>(p.v.get(), DType::kF32, 1, cfg.kv_heads, cfg.head_dim))
                  .is_ok());
  int64_t n = -1;
  ASSERT_TRUE(cuda::kv_cache_nonfinite_rows(p.gpu, &n).is_ok());
  EXPECT_EQ(n, 1);
  const std::vector<uint8_t> pool = pool_bytes(p.gpu, 0, p.stream);
  const std::vector<float> rows = rows_of(p.gpu, pool.data(), 1, 0, false);
  for (int32_t j = 0; j < cfg.head_dim; ++j) EXPECT_EQ(rows[static_cast<size_t>(j)], 0.0f) << j;
  EXPECT_NE(rows[static_cast<size_t>(cfg.head_dim)], 0.0f);  // head 1 is stored
}

}  // namespace
