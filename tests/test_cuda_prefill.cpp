// CUDA chunked-prefill attention and state merge (turboquant/cuda/prefill.hpp) against the float64
// CPU reference (turboquant/cpu/prefill.hpp). Caches are filled on the host with cpu::encode into
// pages in a shuffled order; page pools start as random bytes; outputs are poisoned with 0xFF
// before every run. Tolerance per output row: ||out - ref|| / ||ref|| <= 3e-3 (f16), 1e-2 (bf16);
// lse within 2e-3 (relative to max(1, |lse|)). Skips without a device; TQ_SANITIZER
// (compute-sanitizer runs) shrinks the sizes. The CPU reference runs one thread per sequence.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "cuda_test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <future>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "turboquant/cpu/codec.hpp"
#include "turboquant/cpu/prefill.hpp"
#include "turboquant/cuda/prefill.hpp"

namespace {

using turboquant::DType;
using turboquant::Format;
using turboquant::PrefillOrder;
using turboquant::Status;
using turboquant::StatusCode;
using turboquant::testing::DeviceBuffer;
using turboquant::testing::to_device;
using turboquant::testing::under_sanitizer;
namespace cpu = turboquant::cpu;
namespace layout = turboquant::layout;
namespace tqcuda = turboquant::cuda;

constexpr uint8_t kPoisonByte = 0xFF;
constexpr double kTolF16 = 3e-3;
constexpr double kTolBF16 = 1e-2;
constexpr double kTolLse = 2e-3;

#define CUDA_OK(expr) ASSERT_EQ(cudaSuccess, (expr)) << #expr

// Sizes of the sweeps, smaller under compute-sanitizer.
int32_t long_prefix() { return under_sanitizer() ? 300 : 4096; }
int32_t long_chunk() { return under_sanitizer() ? 90 : 1000; }

struct Seq {
  int32_t prefix = 0;
  int32_t n = 0;
};

struct Spec {
  int32_t head_dim = 128;
  int32_t key_bits = 4;
  int32_t value_bits = 4;
  DType dtype = DType::kF16;
  int32_t kv_heads = 1;
  int32_t group = 4;
  int32_t page_size = 16;
  PrefillOrder order = PrefillOrder::kAppended;
  int32_t window = 0;
  float softcap = 0.0f;
  int32_t num_splits = 0;
  bool with_lse = true;
  bool windows_as_decode = true;  // PrefillAttentionArgs::small_windows_as_decode
  std::vector<Seq> seqs;
  uint64_t seed = 1;
};

std::string describe(const Spec& s) {
  std::string seqs;
  for (const Seq& q : s.seqs) seqs += "(" + std::to_string(q.prefix) + "," + std::to_string(q.n) + ")";
  return "d=" + std::to_string(s.head_dim) + " K" + std::to_string(s.key_bits) + "V" + std::to_string(s.value_bits) +
         " " + turboquant::to_string(s.dtype) + " kv=" + std::to_string(s.kv_heads) + " group=" +
         std::to_string(s.group) + " page=" + std::to_string(s.page_size) + " order=" + turboquant::to_string(s.order) +
         " window=" + std::to_string(s.window) + " softcap=" + std::to_string(s.softcap) + " splits=" +
         std::to_string(s.num_splits) + (s.windows_as_decode ? "" : " prefill-kernel") + " seqs=" + seqs;
}

uint16_t to_bits(float v, DType t) {
  return t == DType::kF16 ? turboquant::float_to_half_bits(v) : turboquant::float_to_bf16_bits(v);
}

struct HostCase {
  Spec spec;
  Format format;
  layout::PageLayout layout;
  int32_t num_seqs = 0, q_heads = 0, max_pages = 0, total = 0, max_n = 1, max_len = 0;
  int64_t num_pages = 0;
  std::vector<uint8_t> pool;
  std::vector<int32_t> block_table, seq_lens, query_start;
  std::vector<uint16_t> q, chunk_k, chunk_v;  // dtype bits, dense
};

HostCase make_case(const Spec& s) {
  HostCase c;
  c.spec = s;
  c.format = turboquant::make_format(s.head_dim, s.key_bits, s.value_bits, 0x4321 + s.seed);
  c.num_seqs = static_cast<int32_t>(s.seqs.size());
  c.q_heads = s.kv_heads * s.group;
  c.layout = layout::page_layout(c.format, s.page_size, s.kv_heads);
  const bool appended = s.order == PrefillOrder::kAppended;
  c.query_start.push_back(0);
  for (const Seq& q : s.seqs) {
    c.max_len = std::max(c.max_len, q.prefix + (appended ? q.n : 0));
    c.query_start.push_back(c.query_start.back() + q.n);
    c.max_n = std::max(c.max_n, q.n);
  }
  c.total = c.query_start.back();
  c.max_pages = std::max(1, (c.max_len + s.page_size - 1) / s.page_size) + 1;
  c.num_pages = static_cast<int64_t>(c.num_seqs) * c.max_pages + 2;
  std::mt19937_64 rng(s.seed);
  c.pool.resize(static_cast<size_t>(c.num_pages * c.layout.page_bytes));
  for (auto& b : c.pool) b = static_cast<uint8_t>(rng());
  std::vector<int32_t> perm(static_cast<size_t>(c.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  c.block_table.assign(perm.begin(), perm.begin() + static_cast<int64_t>(c.num_seqs) * c.max_pages);
  std::normal_distribution<float> normal;
  const size_t row = static_cast<size_t>(s.kv_heads) * s.head_dim;
  std::vector<float> ck(static_cast<size_t>(c.total) * row), cv(ck.size());
  for (auto& x : ck) x = normal(rng);
  for (auto& x : cv) x = normal(rng);
  c.chunk_k.resize(ck.size());
  c.chunk_v.resize(cv.size());
  for (size_t i = 0; i < ck.size(); ++i) {
    c.chunk_k[i] = to_bits(ck[i], s.dtype);
    c.chunk_v[i] = to_bits(cv[i], s.dtype);
  }
  c.q.resize(static_cast<size_t>(c.total) * c.q_heads * s.head_dim);
  for (auto& x : c.q) x = to_bits(normal(rng), s.dtype);
  for (int32_t seq = 0; seq < c.num_seqs; ++seq) {
    const Seq& q = s.seqs[seq];
    const int32_t len = q.prefix + (appended ? q.n : 0);
    c.seq_lens.push_back(len);
    if (len == 0) continue;
    std::vector<float> k(static_cast<size_t>(len) * row), v(k.size());
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    if (appended) {
      const size_t at = static_cast<size_t>(c.query_start[seq]) * row;
      std::copy(ck.begin() + at, ck.begin() + at + q.n * row, k.begin() + q.prefix * row);
      std::copy(cv.begin() + at, cv.begin() + at + q.n * row, v.begin() + q.prefix * row);
    }
    std::vector<int64_t> slots(static_cast<size_t>(len));
    for (int32_t t = 0; t < len; ++t)
      slots[t] = static_cast<int64_t>(c.block_table[static_cast<size_t>(seq) * c.max_pages + t / s.page_size]) *
                     s.page_size + t % s.page_size;
    for (int side = 0; side < 2; ++side) {
      cpu::EncodeArgs e;
      e.codec = side ? c.format.value : c.format.key;
      e.input = turboquant::tensor_view<const void*>(side ? v.data() : k.data(), DType::kF32, len, s.kv_heads,
                                                     s.head_dim);
      e.paged.pages = c.pool.data();
      e.paged.num_pages = c.num_pages;
      e.paged.layout = c.layout;
      e.paged.value_side = side == 1;
      e.paged.slot_mapping = slots.data();
      const Status st = cpu::encode(e);
      EXPECT_TRUE(st.is_ok()) << st.to_string();
    }
  }
  return c;
}

struct Reference {
  std::vector<float> out;  // [total, q_heads, d]
  std::vector<float> lse;
};

// One CPU call per sequence, in parallel.
Reference reference(const HostCase& c) {
  const Spec& s = c.spec;
  const int32_t d = s.head_dim;
  Reference r;
  r.out.assign(static_cast<size_t>(c.total) * c.q_heads * d, 0.0f);
  r.lse.assign(static_cast<size_t>(c.total) * c.q_heads, 0.0f);
  std::vector<std::future<Status>> jobs;
  for (int32_t seq = 0; seq < c.num_seqs; ++seq) {
    const int32_t q0 = c.query_start[seq], n = c.query_start[seq + 1] - q0;
    if (n == 0) continue;
    jobs.push_back(std::async(std::launch::async, [&c, &r, &s, seq, q0, n, d]() {
      const int32_t local_start[2] = {0, n};
      cpu::PrefillAttentionArgs a;
      a.format = c.format;
      a.order = s.order;
      a.q = turboquant::tensor_view<const void*>(c.q.data() + static_cast<size_t>(q0) * c.q_heads * d, s.dtype, n,
                                                 c.q_heads, d);
      a.query_start = local_start;
      a.max_query_len = n;
      a.cache.pages = c.pool.data();
      a.cache.num_pages = c.num_pages;
      a.cache.layout = c.layout;
      a.cache.block_table = c.block_table.data() + static_cast<size_t>(seq) * c.max_pages;
      a.cache.max_pages_per_seq = c.max_pages;
      a.cache.seq_lens = c.seq_lens.data() + seq;
      a.cache.num_seqs = 1;
      if (s.order == PrefillOrder::kFresh) {
        a.chunk_keys = turboquant::tensor_view<const void*>(
            c.chunk_k.data() + static_cast<size_t>(q0) * s.kv_heads * d, s.dtype, n, s.kv_heads, d);
        a.chunk_values = turboquant::tensor_view<const void*>(
            c.chunk_v.data() + static_cast<size_t>(q0) * s.kv_heads * d, s.dtype, n, s.kv_heads, d);
      }
      a.out = turboquant::tensor_view<void*>(r.out.data() + static_cast<size_t>(q0) * c.q_heads * d, DType::kF32, n,
                                             c.q_heads, d);
      a.lse = r.lse.data() + static_cast<size_t>(q0) * c.q_heads;
      a.sliding_window = s.window;
      a.logit_softcap = s.softcap;
      return cpu::prefill_attention(a);
    }));
  }
  for (auto& j : jobs) {
    const Status st = j.get();
    EXPECT_TRUE(st.is_ok()) << st.to_string();
  }
  return r;
}

struct DeviceCase {
  DeviceBuffer pool, block_table, seq_lens, query_start, q, chunk_k, chunk_v, out, lse, workspace;
  tqcuda::PrefillAttentionArgs args;
};

DeviceCase upload(const HostCase& c) {
  const Spec& s = c.spec;
  const int32_t d = s.head_dim;
  DeviceCase dc;
  dc.pool = to_device(c.pool);
  dc.block_table = to_device(c.block_table);
  dc.seq_lens = to_device(c.seq_lens);
  dc.query_start = to_device(c.query_start);
  dc.q = to_device(c.q);
  dc.chunk_k = to_device(c.chunk_k);
  dc.chunk_v = to_device(c.chunk_v);
  dc.out = DeviceBuffer(static_cast<size_t>(c.total) * c.q_heads * d * sizeof(uint16_t));
  dc.lse = DeviceBuffer(static_cast<size_t>(c.total) * c.q_heads * sizeof(float));
  tqcuda::PrefillAttentionArgs& a = dc.args;
  a.format = c.format;
  a.order = s.order;
  a.q = turboquant::tensor_view<const void*>(dc.q.get(), s.dtype, c.total, c.q_heads, d);
  a.query_start = dc.query_start.as<int32_t>();
  a.max_query_len = c.max_n;
  a.cache.pages = dc.pool.get();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = dc.block_table.as<int32_t>();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = dc.seq_lens.as<int32_t>();
  a.cache.num_seqs = c.num_seqs;
  if (s.order == PrefillOrder::kFresh) {
    a.chunk_keys = turboquant::tensor_view<const void*>(dc.chunk_k.get(), s.dtype, c.total, s.kv_heads, d);
    a.chunk_values = turboquant::tensor_view<const void*>(dc.chunk_v.get(), s.dtype, c.total, s.kv_heads, d);
  }
  a.out = turboquant::tensor_view<void*>(dc.out.get(), s.dtype, c.total, c.q_heads, d);
  a.lse = s.with_lse ? dc.lse.as<float>() : nullptr;
  a.sliding_window = s.window;
  a.logit_softcap = s.softcap;
  a.max_seq_len = c.max_len;
  a.num_splits = s.num_splits;
  a.small_windows_as_decode = s.windows_as_decode;
  dc.workspace = DeviceBuffer(std::max<size_t>(tqcuda::workspace_bytes(a), 16));
  return dc;
}

void poison(const DeviceCase& dc) {
  ASSERT_EQ(cudaSuccess, cudaMemset(dc.out.get(), kPoisonByte, dc.out.bytes()));
  ASSERT_EQ(cudaSuccess, cudaMemset(dc.lse.get(), kPoisonByte, dc.lse.bytes()));
  ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
}

Status run(const DeviceCase& dc, cudaStream_t stream = nullptr) {
  return tqcuda::prefill_attention(dc.args, tqcuda::Workspace{dc.workspace.get(), dc.workspace.bytes()}, stream);
}

struct Result {
  std::vector<uint16_t> raw;
  std::vector<float> out, lse;
};
Result download(const HostCase& c, const DeviceCase& dc) {
  Result r;
  r.raw.resize(dc.out.bytes() / sizeof(uint16_t));
  EXPECT_EQ(cudaSuccess, cudaMemcpy(r.raw.data(), dc.out.get(), dc.out.bytes(), cudaMemcpyDeviceToHost));
  r.lse.resize(dc.lse.bytes() / sizeof(float));
  EXPECT_EQ(cudaSuccess, cudaMemcpy(r.lse.data(), dc.lse.get(), dc.lse.bytes(), cudaMemcpyDeviceToHost));
  r.out.resize(r.raw.size());
  for (size_t i = 0; i < r.raw.size(); ++i) r.out[i] = turboquant::load_as_float(r.raw.data(), static_cast<int64_t>(i), c.spec.dtype);
  return r;
}

double compare(const HostCase& c, const Result& got, const Reference& ref) {
  const int32_t d = c.spec.head_dim;
  const double tol = c.spec.dtype == DType::kF16 ? kTolF16 : kTolBF16;
  double worst = 0.0;
  int failures = 0;
  for (size_t row = 0; row < ref.lse.size() && failures < 10; ++row) {
    double num = 0.0, den = 0.0;
    for (int32_t j = 0; j < d; ++j) {
      const double a = got.out[row * d + j], b = ref.out[row * d + j];
      num += (a - b) * (a - b);
      den += b * b;
    }
    if (den == 0.0) {
      if (num != 0.0) ++failures;
      EXPECT_EQ(num, 0.0) << "row " << row << ": expected an all-zero row";
    } else {
      const double rel = std::sqrt(num / den);
      if (!(rel <= tol)) ++failures;
      EXPECT_TRUE(rel <= tol) << "row " << row << " (token " << row / c.q_heads << ", head " << row % c.q_heads
                              << "): relative error " << rel << " > " << tol;
      if (!(rel <= worst)) worst = rel;
    }
    if (!c.spec.with_lse) continue;
    const float gl = got.lse[row], rl = ref.lse[row];
    if (std::isinf(rl)) {
      EXPECT_TRUE(std::isinf(gl) && gl < 0) << "row " << row << ": lse " << gl << ", expected -inf";
    } else {
      const bool ok = std::fabs(static_cast<double>(gl) - rl) <= kTolLse * std::max(1.0, std::fabs(static_cast<double>(rl)));
      if (!ok) ++failures;
      EXPECT_TRUE(ok) << "row " << row << ": lse " << gl << " vs " << rl;
    }
  }
  return worst;
}

double check_case(const Spec& s) {
  SCOPED_TRACE(describe(s));
  const HostCase c = make_case(s);
  DeviceCase dc = upload(c);
  const Status ci = tqcuda::can_implement(dc.args);
  EXPECT_TRUE(ci.is_ok()) << ci.to_string();
  poison(dc);
  const Status st = run(dc);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
  const Result got = download(c, dc);
  const double worst = compare(c, got, reference(c));
  std::printf("  %-110s worst %.2e\n", describe(s).substr(0, 110).c_str(), worst);
  return worst;
}

std::vector<Seq> sweep_seqs() {
  std::vector<Seq> seqs;
  for (int32_t prefix : {0, 1, long_prefix()})
    for (int32_t n : {2, 5, 64, long_chunk()}) seqs.push_back({prefix, n});
  return seqs;
}

// ---- correctness -------------------------------------------------------------------------------------

// Query lengths {2, 5, 64, 1000} x prefixes {0, 1, 4096} in one batch, GQA 1 and 4, both orders.
TEST(CudaPrefill, Sweep) {
  TQ_REQUIRE_DEVICE();
  for (PrefillOrder order : {PrefillOrder::kAppended, PrefillOrder::kFresh})
    for (int32_t group : {1, 4}) {
      Spec s;
      s.order = order;
      s.group = group;
      s.seqs = sweep_seqs();
      check_case(s);
    }
}

// Sliding window and soft cap, alone and together.
TEST(CudaPrefill, WindowAndSoftcap) {
  TQ_REQUIRE_DEVICE();
  for (PrefillOrder order : {PrefillOrder::kAppended, PrefillOrder::kFresh})
    for (int32_t window : {0, 33, 700})
      for (float softcap : {0.0f, 30.0f}) {
        if (window == 0 && softcap == 0.0f) continue;
        Spec s;
        s.order = order;
        s.kv_heads = 2;
        s.group = 2;
        s.window = window;
        s.softcap = softcap;
        s.seqs = {{0, 70}, {1, 5}, {long_prefix(), 64}, {200, 2}};
        check_case(s);
      }
}

// Decode rows (n = 1) next to verify windows (n = 8) and an empty sequence, page sizes 16 / 8 / 48.
TEST(CudaPrefill, MixedBatch) {
  TQ_REQUIRE_DEVICE();
  for (int32_t page : {16, 8, 48})
    for (PrefillOrder order : {PrefillOrder::kAppended, PrefillOrder::kFresh}) {
      Spec s;
      s.order = order;
      s.page_size = page;
      s.kv_heads = 2;
      s.group = 4;
      s.seqs = {{300, 1}, {long_prefix(), 8}, {17, 0}, {0, 1}, {1000, 8}, {33, 1}, {5, 8}};
      check_case(s);
    }
}

// Verify windows (at most kMaxDecodeWindow tokens, kAppended) on the decode kernel (window mode)
// and on the prefill kernel: both against the reference, over GQA 1 / 4 / 8, page sizes 16 / 64 (decode kernel) and 8
// (the decode kernel cannot: the prefill kernel runs either way), window and soft cap, windows of
// 1 to 16 tokens over prefixes 0 to 4096.
TEST(CudaPrefill, SmallWindowsAsDecodeRows) {
  TQ_REQUIRE_DEVICE();
  for (bool as_decode : {true, false})
    for (int32_t group : {1, 4, 8})
      for (int32_t page : {16, 64, 8}) {
        Spec s;
        s.windows_as_decode = as_decode;
        s.group = group;
        s.kv_heads = 2;
        s.page_size = page;
        s.window = group == 4 ? 100 : 0;
        s.softcap = group == 8 ? 30.0f : 0.0f;
        s.seqs = {{long_prefix(), 8}, {0, 2}, {1, 5}, {17, 16}, {300, 1}, {5, 0}, {1000, 3}};
        s.seed = 7 + group + page;
        check_case(s);
      }
  // The decode kernel is the one taken where it supports the call: its workspace (its partials)
  // differs from the prefill kernel's.
  Spec s;
  s.seqs = {{long_prefix(), 8}, {0, 2}};
  const HostCase c = make_case(s);
  DeviceCase dc = upload(c);
  const size_t as_rows = tqcuda::workspace_bytes(dc.args);
  dc.args.small_windows_as_decode = false;
  EXPECT_NE(as_rows, tqcuda::workspace_bytes(dc.args));
  dc.args.max_query_len = tqcuda::kMaxDecodeWindow + 1;  // too long a window: the prefill kernel
  const size_t prefill = tqcuda::workspace_bytes(dc.args);
  dc.args.small_windows_as_decode = true;
  EXPECT_EQ(prefill, tqcuda::workspace_bytes(dc.args));
}

// Every kernel of the dispatch table (GQA 3 and 16, bf16 included), and the same combination as
// verify windows on the decode kernel (window mode: 21 or 112 (token, head) slots per KV head, so
// 16-slot CTAs up to head_dim 128).
TEST(CudaPrefill, EveryBuiltKernel) {
  TQ_REQUIRE_DEVICE();
  for (int32_t i = 0; i < tqcuda::num_prefill_kernels(); ++i) {
    const tqcuda::AttentionKernelKey k = tqcuda::prefill_kernel(i);
    for (int32_t variant = 0; variant < 3; ++variant) {
      Spec s;
      s.head_dim = k.head_dim;
      s.key_bits = k.key_bits;
      s.value_bits = k.value_bits;
      s.dtype = k.q_dtype;
      s.order = variant == 1 ? PrefillOrder::kFresh : PrefillOrder::kAppended;
      s.kv_heads = 2;
      s.group = i % 2 ? 16 : 3;
      s.seqs = {{100, 7}, {0, 40}, {257, 1}};
      if (variant == 2) s.seqs = {{300, 7}, {0, 2}, {33, 5}, {1, 1}};  // every window <= kMaxDecodeWindow
      s.seed = 100 + 3 * i + variant;
      check_case(s);
    }
  }
}

// Explicit split counts agree with each other and the reference; lse is optional.
TEST(CudaPrefill, Splits) {
  TQ_REQUIRE_DEVICE();
  for (int32_t splits : {1, 3, 16}) {
    Spec s;
    s.num_splits = splits;
    s.with_lse = splits != 3;
    s.seqs = {{long_prefix(), 8}, {100, 30}, {0, 3}};
    check_case(s);
  }
}

// A captured graph replays to the eager result, bit for bit.
TEST(CudaPrefill, GraphCaptureEqualsEager) {
  TQ_REQUIRE_DEVICE();
  for (PrefillOrder order : {PrefillOrder::kAppended, PrefillOrder::kFresh})
    for (int32_t last : {33, 3}) {  // 3: every window <= kMaxDecodeWindow (kAppended: decode kernel)
      Spec s;
      s.order = order;
      s.seqs = {{500, 8}, {1, 1}, {64, last}};
      const HostCase c = make_case(s);
      DeviceCase dc = upload(c);
      cudaStream_t stream = nullptr;
      CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      poison(dc);
      ASSERT_TRUE(run(dc, stream).is_ok());
      CUDA_OK(cudaStreamSynchronize(stream));
      const Result eager = download(c, dc);
      poison(dc);
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      const Status st = run(dc, stream);
      CUDA_OK(cudaStreamEndCapture(stream, &graph));
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
      for (int rep = 0; rep < 2; ++rep) CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
      const Result replay = download(c, dc);
      EXPECT_EQ(0, std::memcmp(eager.raw.data(), replay.raw.data(), eager.raw.size() * sizeof(uint16_t)));
      EXPECT_EQ(0, std::memcmp(eager.lse.data(), replay.lse.data(), eager.lse.size() * sizeof(float)));
      compare(c, replay, reference(c));
      CUDA_OK(cudaGraphExecDestroy(exec));
      CUDA_OK(cudaGraphDestroy(graph));
      CUDA_OK(cudaStreamDestroy(stream));
    }
}

// ---- merge -------------------------------------------------------------------------------------------

TEST(CudaPrefill, MergeStates) {
  TQ_REQUIRE_DEVICE();
  constexpr int32_t kRows = 37, kHeads = 5, kDim = 128;
  const size_t n = static_cast<size_t>(kRows) * kHeads * kDim;
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  std::vector<float> a(n), b(n), la(kRows * kHeads), lb(la.size());
  for (auto& x : a) x = normal(rng);
  for (auto& x : b) x = normal(rng);
  for (auto& x : la) x = 4.0f * normal(rng);
  for (auto& x : lb) x = 4.0f * normal(rng);
  la[3] = -std::numeric_limits<float>::infinity();
  lb[4] = -std::numeric_limits<float>::infinity();
  la[5] = lb[5] = -std::numeric_limits<float>::infinity();
  for (DType out_type : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(turboquant::to_string(out_type));
    // a in f32, b in out_type, out in out_type; then in place into b.
    std::vector<uint16_t> bh(n);
    std::vector<float> b_in(b);
    if (out_type != DType::kF32)
      for (size_t i = 0; i < n; ++i) {
        bh[i] = to_bits(b[i], out_type);
        b_in[i] = turboquant::load_as_float(bh.data(), static_cast<int64_t>(i), out_type);
      }
    std::vector<float> ref(n), ref_lse(la.size());
    cpu::MergeAttentionStatesArgs m;
    m.out_a = turboquant::tensor_view<const void*>(a.data(), DType::kF32, kRows, kHeads, kDim);
    m.lse_a = la.data();
    m.out_b = turboquant::tensor_view<const void*>(b_in.data(), DType::kF32, kRows, kHeads, kDim);
    m.lse_b = lb.data();
    m.out = turboquant::tensor_view<void*>(ref.data(), DType::kF32, kRows, kHeads, kDim);
    m.lse = ref_lse.data();
    ASSERT_TRUE(cpu::merge_attention_states(m).is_ok());
    DeviceBuffer da = to_device(a), dla = to_device(la), dlb = to_device(lb);
    DeviceBuffer db = out_type == DType::kF32 ? to_device(b) : to_device(bh);
    const size_t esize = out_type == DType::kF32 ? 4 : 2;
    DeviceBuffer dout(n * esize), dlse(la.size() * sizeof(float));
    CUDA_OK(cudaMemset(dout.get(), kPoisonByte, dout.bytes()));
    CUDA_OK(cudaMemset(dlse.get(), kPoisonByte, dlse.bytes()));
    tqcuda::MergeAttentionStatesArgs g;
    g.out_a = turboquant::tensor_view<const void*>(da.get(), DType::kF32, kRows, kHeads, kDim);
    g.lse_a = dla.as<float>();
    g.out_b = turboquant::tensor_view<const void*>(db.get(), out_type, kRows, kHeads, kDim);
    g.lse_b = dlb.as<float>();
    for (int in_place = 0; in_place < 2; ++in_place) {
      g.out = turboquant::tensor_view<void*>(in_place ? db.get() : dout.get(), out_type, kRows, kHeads, kDim);
      g.lse = in_place ? dlb.as<float>() : dlse.as<float>();
      ASSERT_TRUE(tqcuda::can_implement(g).is_ok());
      ASSERT_TRUE(tqcuda::merge_attention_states(g, nullptr).is_ok());
      CUDA_OK(cudaDeviceSynchronize());
      std::vector<uint8_t> raw(n * esize);
      std::vector<float> lse(la.size());
      CUDA_OK(cudaMemcpy(raw.data(), in_place ? db.get() : dout.get(), raw.size(), cudaMemcpyDeviceToHost));
      CUDA_OK(cudaMemcpy(lse.data(), g.lse, lse.size() * sizeof(float), cudaMemcpyDeviceToHost));
      const double tol = out_type == DType::kF32 ? 1e-5 : (out_type == DType::kF16 ? 1e-3 : 8e-3);
      for (size_t i = 0; i < n; ++i) {
        const float got = turboquant::load_as_float(raw.data(), static_cast<int64_t>(i), out_type);
        ASSERT_NEAR(got, ref[i], tol * std::max(1.0f, std::fabs(ref[i]))) << i << " in_place " << in_place;
      }
      for (size_t i = 0; i < lse.size(); ++i) {
        if (std::isinf(ref_lse[i])) {
          EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << i;
        } else {
          EXPECT_NEAR(lse[i], ref_lse[i], 1e-5 * std::max(1.0f, std::fabs(ref_lse[i]))) << i;
        }
      }
    }
  }
}

// ---- bad input ---------------------------------------------------------------------------------------

TEST(CudaPrefill, BadInput) {
  Spec s;
  s.order = PrefillOrder::kFresh;
  s.kv_heads = 2;
  s.seqs = {{40, 5}, {0, 3}};
  const HostCase c = make_case(s);
  // Host-only checks work without a device: fake (aligned) device pointers are never dereferenced.
  tqcuda::PrefillAttentionArgs a;
  alignas(16) static uint8_t fake[256];
  a.format = c.format;
  a.order = s.order;
  a.q = turboquant::tensor_view<const void*>(fake, s.dtype, c.total, c.q_heads, s.head_dim);
  a.query_start = reinterpret_cast<const int32_t*>(fake);
  a.max_query_len = c.max_n;
  a.cache.pages = fake;
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = reinterpret_cast<const int32_t*>(fake);
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = reinterpret_cast<const int32_t*>(fake);
  a.cache.num_seqs = c.num_seqs;
  a.chunk_keys = turboquant::tensor_view<const void*>(fake, s.dtype, c.total, s.kv_heads, s.head_dim);
  a.chunk_values = a.chunk_keys;
  a.out = turboquant::tensor_view<void*>(fake, s.dtype, c.total, c.q_heads, s.head_dim);
  a.max_seq_len = c.max_len;
  ASSERT_TRUE(tqcuda::can_implement(a).is_ok()) << tqcuda::can_implement(a).to_string();
  EXPECT_GT(tqcuda::workspace_bytes(a), 0u);
  auto expect_error = [](const tqcuda::PrefillAttentionArgs& x, StatusCode code, const std::string& needle) {
    const Status st = tqcuda::can_implement(x);
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.to_string() << " (expected '" << needle << "')";
  };
  {
    auto x = a;
    x.q.data = nullptr;
    expect_error(x, StatusCode::kInvalidArgument, "q.data = null");
  }
  {
    auto x = a;
    x.query_start = nullptr;
    expect_error(x, StatusCode::kInvalidArgument, "query_start = null");
  }
  {
    auto x = a;
    x.query_start = reinterpret_cast<const int32_t*>(fake + 2);
    expect_error(x, StatusCode::kMisaligned, "query_start");
  }
  {
    auto x = a;
    x.q.dim1 = 3;
    x.q.stride0 = 3 * s.head_dim;
    x.out.dim1 = 3;
    x.out.stride0 = x.q.stride0;
    expect_error(x, StatusCode::kInvalidArgument, "not a multiple of kv_heads");
  }
  {
    auto x = a;
    x.format = turboquant::make_format(128, 1, 1);
    x.cache.layout = layout::page_layout(x.format, s.page_size, s.kv_heads);
    expect_error(x, StatusCode::kUnsupportedFormat, "no prefill-attention kernel");
  }
  {
    auto x = a;
    x.q.dim1 = 34;  // 17 per KV head
    x.q.stride0 = 34 * s.head_dim;
    x.out.dim1 = 34;
    x.out.stride0 = x.q.stride0;
    expect_error(x, StatusCode::kUnsupportedFormat, "GQA groups of at most 16");
  }
  {
    auto x = a;
    x.q.data = fake + 2;
    expect_error(x, StatusCode::kMisaligned, "q.data");
  }
  {
    auto x = a;
    x.chunk_values.dtype = DType::kBF16;
    expect_error(x, StatusCode::kInvalidArgument, "chunk_values.dtype");
  }
  {
    auto x = a;
    x.chunk_keys.data = nullptr;
    expect_error(x, StatusCode::kInvalidArgument, "chunk_keys.data = null");
  }
  {
    auto x = a;
    x.max_query_len = 0;
    expect_error(x, StatusCode::kInvalidArgument, "max_query_len = 0");
    EXPECT_EQ(tqcuda::workspace_bytes(x), 0u);
  }
  {
    auto x = a;
    x.max_seq_len = c.max_pages * s.page_size + 1;
    expect_error(x, StatusCode::kInvalidArgument, "max_seq_len");
  }
  {
    auto x = a;
    x.order = static_cast<PrefillOrder>(3);
    expect_error(x, StatusCode::kInvalidArgument, "order = 3");
  }
  {
    auto x = a;
    x.num_splits = tqcuda::kMaxPrefillSplits + 1;
    expect_error(x, StatusCode::kInvalidArgument, "num_splits");
  }
  {
    tqcuda::MergeAttentionStatesArgs m;
    m.out_a = turboquant::tensor_view<const void*>(fake, DType::kF32, 2, 1, 4);
    m.out_b = m.out_a;
    m.out = turboquant::tensor_view<void*>(fake, DType::kF32, 2, 1, 4);
    m.lse_b = reinterpret_cast<const float*>(fake);
    const Status st = tqcuda::can_implement(m);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("lse_a = null"), std::string::npos) << st.to_string();
  }

  // A failing call enqueues nothing: the poisoned output stays poisoned.
  TQ_REQUIRE_DEVICE();
  DeviceCase dc = upload(c);
  poison(dc);
  {
    const Status st = tqcuda::prefill_attention(dc.args, tqcuda::Workspace{dc.workspace.get(), 16}, nullptr);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
    EXPECT_NE(st.message().find("workspace.bytes"), std::string::npos) << st.to_string();
  }
  {
    auto x = dc.args;
    x.softmax_scale = -1.0f;
    EXPECT_FALSE(tqcuda::prefill_attention(x, tqcuda::Workspace{dc.workspace.get(), dc.workspace.bytes()}, nullptr).is_ok());
  }
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint8_t> raw(dc.out.bytes());
  CUDA_OK(cudaMemcpy(raw.data(), dc.out.get(), raw.size(), cudaMemcpyDeviceToHost));
  for (uint8_t b : raw) ASSERT_EQ(b, kPoisonByte);
}

}  // namespace
