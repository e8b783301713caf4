// CUDA decode attention (turboquant/cuda/attention.hpp) against the float64 CPU reference
// turboquant::cpu::decode_attention. Caches are filled on the host with turboquant::cpu::encode
// through slot mappings into pages in a shuffled order, page pools start as random bytes (rows
// past a sequence's end hold garbage, NaN patterns included), outputs are poisoned with 0xFF
// bytes before every run. Tolerance per output row: ||out - ref|| / ||ref|| <= 2e-3 (f16) or 8e-3
// (bf16); lse within 2e-3. Skips without a device; TQ_SANITIZER (compute-sanitizer runs) shrinks
// the contexts.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "cuda_test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "turboquant/cpu/attention.hpp"
#include "turboquant/cpu/codec.hpp"
#include "turboquant/cuda/attention.hpp"
#include "attention_params.hpp"  // kernels/: the split search (plain C++)

namespace {

using turboquant::testing::DeviceBuffer;
using turboquant::testing::has_device;
using turboquant::testing::to_device;
using turboquant::testing::under_sanitizer;

using turboquant::DType;
using turboquant::Format;
using turboquant::NormStorage;
using turboquant::Status;
using turboquant::StatusCode;
namespace layout = turboquant::layout;
namespace tqcuda = turboquant::cuda;

constexpr uint8_t kPoisonByte = 0xFF;  // 0xFFFF is a NaN in f16 and bf16, 0xFFFFFFFF in fp32
constexpr double kTolF16 = 2e-3;
constexpr double kTolBF16 = 8e-3;
constexpr double kTolLse = 2e-3;

// The long context of the sweeps, shorter under compute-sanitizer (it slows kernels ~100x).
int32_t long_len() { return under_sanitizer() ? 700 : 4096; }

#define CUDA_OK(expr) ASSERT_EQ(cudaSuccess, (expr)) << #expr


// ---- a host problem ------------------------------------------------------------------------------

struct Spec {
  int32_t head_dim = 128;
  int32_t key_bits = 4;
  int32_t value_bits = 4;
  DType dtype = DType::kF16;
  int32_t kv_heads = 2;
  int32_t group = 4;
  int32_t page_size = 16;
  std::vector<int32_t> lens = {1, 7, 100};
  int32_t window = 0;
  float softcap = 0.0f;
  float softmax_scale = 0.0f;
  float q_scale = 1.0f;  // queries ~ N(0, q_scale^2): larger = sharper attention
  NormStorage key_norm = NormStorage::kF16;
  NormStorage value_norm = NormStorage::kF16;
  int32_t num_splits = 0;
  bool pdl = true;              // DecodeAttentionArgs::programmatic_launch
  int32_t q_row_padding = 0;    // extra elements between query heads (strided views)
  int32_t out_seq_padding = 0;  // extra elements between output sequences
  uint64_t seed = 1;
};

std::string describe(const Spec& s) {
  std::string lens;
  for (size_t i = 0; i < s.lens.size(); ++i) lens += (i ? "," : "") + std::to_string(s.lens[i]);
  return "d=" + std::to_string(s.head_dim) + " K" + std::to_string(s.key_bits) + "V" + std::to_string(s.value_bits) +
         " " + turboquant::to_string(s.dtype) + " kv=" + std::to_string(s.kv_heads) + " group=" +
         std::to_string(s.group) + " page=" + std::to_string(s.page_size) + " lens={" + lens +
         "} window=" + std::to_string(s.window) + " softcap=" + std::to_string(s.softcap) +
         " splits=" + std::to_string(s.num_splits) +
         " pdl=" + std::to_string(s.pdl);
}

struct HostCase {
  Spec spec;
  Format format;
  layout::PageLayout layout;
  int32_t num_seqs = 0;
  int32_t q_heads = 0;
  int32_t max_pages = 0;
  int64_t num_pages = 0;
  int64_t q_stride1 = 0, q_stride0 = 0;      // elements
  int64_t out_stride1 = 0, out_stride0 = 0;  // elements
  std::vector<uint8_t> pool;
  std::vector<int32_t> block_table;
  std::vector<int32_t> lens;
  std::vector<uint16_t> q;  // f16 / bf16 bits, strided
};

uint16_t to_bits(float v, DType t) {
  return t == DType::kF16 ? turboquant::float_to_half_bits(v) : turboquant::float_to_bf16_bits(v);
}

HostCase make_case(const Spec& s) {
  HostCase c;
  c.spec = s;
  c.format = turboquant::make_format(s.head_dim, s.key_bits, s.value_bits, 0x1234 + s.seed);
  c.format.key.norm = s.key_norm;
  c.format.value.norm = s.value_norm;
  c.num_seqs = static_cast<int32_t>(s.lens.size());
  c.q_heads = s.kv_heads * s.group;
  const int32_t max_len = s.lens.empty() ? 0 : *std::max_element(s.lens.begin(), s.lens.end());
  c.max_pages = std::max(1, (max_len + s.page_size - 1) / s.page_size) + 1;  // one spare entry
  c.num_pages = static_cast<int64_t>(c.num_seqs) * c.max_pages + 2;
  c.layout = layout::page_layout(c.format, s.page_size, s.kv_heads);
  std::mt19937_64 rng(s.seed);
  c.pool.resize(static_cast<size_t>(c.num_pages * c.layout.page_bytes));
  for (auto& b : c.pool) b = static_cast<uint8_t>(rng());
  std::vector<int32_t> perm(static_cast<size_t>(c.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  c.block_table.resize(static_cast<size_t>(c.num_seqs) * c.max_pages);
  for (size_t i = 0; i < c.block_table.size(); ++i) c.block_table[i] = perm[i];
  c.lens = s.lens;
  std::normal_distribution<float> normal;
  for (int32_t seq = 0; seq < c.num_seqs; ++seq) {
    const int32_t len = s.lens[seq];
    if (len == 0) continue;
    std::vector<float> k(static_cast<size_t>(len) * s.kv_heads * s.head_dim), v(k.size());
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    std::vector<int64_t> slots(static_cast<size_t>(len));
    for (int32_t t = 0; t < len; ++t)
      slots[t] = static_cast<int64_t>(c.block_table[static_cast<size_t>(seq) * c.max_pages + t / s.page_size]) *
                     s.page_size + t % s.page_size;
    for (int side = 0; side < 2; ++side) {
      const turboquant::CodecSpec& codec = side ? c.format.value : c.format.key;
      if (codec.bits == 0) {  // an uncompressed side: raw_dtype rows in the codes plane
        const std::vector<float>& src = side ? v : k;
        for (int32_t t = 0; t < len; ++t)
          for (int32_t h = 0; h < s.kv_heads; ++h) {
            uint8_t* row = c.pool.data() + slots[t] / s.page_size * c.layout.page_bytes +
                           layout::codes_offset(c.layout, side == 1, h, static_cast<int32_t>(slots[t] % s.page_size));
            for (int32_t j = 0; j < s.head_dim; ++j)
              turboquant::store_from_float(row, j, c.format.raw_dtype,
                                           src[(static_cast<size_t>(t) * s.kv_heads + h) * s.head_dim + j]);
          }
        continue;
      }
      turboquant::cpu::EncodeArgs e;
      e.codec = codec;
      e.input = turboquant::tensor_view<const void*>(side ? v.data() : k.data(), DType::kF32, len, s.kv_heads,
                                                     s.head_dim);
      e.paged.pages = c.pool.data();
      e.paged.num_pages = c.num_pages;
      e.paged.layout = c.layout;
      e.paged.value_side = side == 1;
      e.paged.slot_mapping = slots.data();
      const Status st = turboquant::cpu::encode(e);
      EXPECT_TRUE(st.is_ok()) << st.to_string();
    }
  }
  c.q_stride1 = s.head_dim + s.q_row_padding;
  c.q_stride0 = c.q_stride1 * c.q_heads;
  c.out_stride1 = s.head_dim;
  c.out_stride0 = c.out_stride1 * c.q_heads + s.out_seq_padding;
  c.q.assign(static_cast<size_t>(c.q_stride0 * c.num_seqs), to_bits(0.0f, s.dtype));
  for (int32_t seq = 0; seq < c.num_seqs; ++seq)
    for (int32_t h = 0; h < c.q_heads; ++h)
      for (int32_t j = 0; j < s.head_dim; ++j)
        c.q[static_cast<size_t>(seq * c.q_stride0 + h * c.q_stride1 + j)] = to_bits(normal(rng) * s.q_scale, s.dtype);
  return c;
}

// The reference output ([num_seqs, q_heads, head_dim] dense, as floats) and lse.
struct Reference {
  std::vector<float> out;
  std::vector<float> lse;
};
Reference reference(const HostCase& c, std::vector<int32_t> lens_override = {}) {
  const Spec& s = c.spec;
  const std::vector<int32_t>& lens = lens_override.empty() ? c.lens : lens_override;
  std::vector<uint16_t> out(static_cast<size_t>(c.num_seqs) * c.q_heads * s.head_dim);
  Reference r;
  r.lse.resize(static_cast<size_t>(c.num_seqs) * c.q_heads);
  turboquant::cpu::DecodeAttentionArgs a;
  a.format = c.format;
  a.q = turboquant::tensor_view<const void*>(c.q.data(), s.dtype, c.num_seqs, c.q_heads, s.head_dim, c.q_stride0,
                                             c.q_stride1);
  a.cache.pages = c.pool.data();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = c.block_table.data();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = lens.data();
  a.cache.num_seqs = c.num_seqs;
  a.out = turboquant::tensor_view<void*>(out.data(), s.dtype, c.num_seqs, c.q_heads, s.head_dim);
  a.lse = r.lse.data();
  a.softmax_scale = s.softmax_scale;
  a.sliding_window = s.window;
  a.logit_softcap = s.softcap;
  const Status st = turboquant::cpu::decode_attention(a);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  r.out.resize(out.size());
  for (size_t i = 0; i < out.size(); ++i) r.out[i] = turboquant::load_as_float(out.data(), static_cast<int64_t>(i), s.dtype);
  return r;
}

// Device copies and the CUDA args of a case.
struct DeviceCase {
  DeviceBuffer pool, block_table, lens, q, out, lse, workspace;
  tqcuda::DecodeAttentionArgs args;
  size_t out_bytes = 0;
};

DeviceCase upload(const HostCase& c) {
  const Spec& s = c.spec;
  DeviceCase d;
  d.pool = to_device(c.pool);
  d.block_table = to_device(c.block_table);
  d.lens = to_device(c.lens);
  d.q = to_device(c.q);
  d.out_bytes = static_cast<size_t>(c.out_stride0 * c.num_seqs) * sizeof(uint16_t);
  d.out = DeviceBuffer(d.out_bytes);
  d.lse = DeviceBuffer(static_cast<size_t>(c.num_seqs) * c.q_heads * sizeof(float));
  tqcuda::DecodeAttentionArgs& a = d.args;
  a.format = c.format;
  a.q = turboquant::tensor_view<const void*>(d.q.get(), s.dtype, c.num_seqs, c.q_heads, s.head_dim, c.q_stride0,
                                             c.q_stride1);
  a.cache.pages = d.pool.get();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = d.block_table.as<int32_t>();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = d.lens.as<int32_t>();
  a.cache.num_seqs = c.num_seqs;
  a.out = turboquant::tensor_view<void*>(d.out.get(), s.dtype, c.num_seqs, c.q_heads, s.head_dim, c.out_stride0,
                                         c.out_stride1);
  a.lse = d.lse.as<float>();
  a.softmax_scale = s.softmax_scale;
  a.sliding_window = s.window;
  a.logit_softcap = s.softcap;
  a.max_seq_len = c.lens.empty() ? 0 : *std::max_element(c.lens.begin(), c.lens.end());
  a.num_splits = s.num_splits;
  a.programmatic_launch = s.pdl;
  d.workspace = DeviceBuffer(std::max<size_t>(tqcuda::workspace_bytes(a), 16));
  return d;
}

void poison(const DeviceCase& d) {
  ASSERT_EQ(cudaSuccess, cudaMemset(d.out.get(), kPoisonByte, d.out.bytes()));
  ASSERT_EQ(cudaSuccess, cudaMemset(d.lse.get(), kPoisonByte, d.lse.bytes()));
  // Legacy-stream memsets do not order with a non-blocking stream: finish them first.
  ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
}

Status run(const DeviceCase& d, cudaStream_t stream = nullptr) {
  return tqcuda::decode_attention(d.args, tqcuda::Workspace{d.workspace.get(), d.workspace.bytes()}, stream);
}

struct Result {
  std::vector<float> out;  // dense [num_seqs, q_heads, head_dim]
  std::vector<float> lse;
  std::vector<uint16_t> raw;  // strided bits as stored
};
Result download(const HostCase& c, const DeviceCase& d) {
  Result r;
  r.raw.resize(d.out_bytes / sizeof(uint16_t));
  EXPECT_EQ(cudaSuccess, cudaMemcpy(r.raw.data(), d.out.get(), d.out_bytes, cudaMemcpyDeviceToHost));
  r.lse.resize(static_cast<size_t>(c.num_seqs) * c.q_heads);
  EXPECT_EQ(cudaSuccess, cudaMemcpy(r.lse.data(), d.lse.get(), r.lse.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const int32_t dim = c.spec.head_dim;
  r.out.resize(static_cast<size_t>(c.num_seqs) * c.q_heads * dim);
  for (int32_t s = 0; s < c.num_seqs; ++s)
    for (int32_t h = 0; h < c.q_heads; ++h)
      for (int32_t j = 0; j < dim; ++j)
        r.out[(static_cast<size_t>(s) * c.q_heads + h) * dim + j] =
            turboquant::load_as_float(r.raw.data(), s * c.out_stride0 + h * c.out_stride1 + j, c.spec.dtype);
  return r;
}

// Compares rows of sequences in `seqs` (all when empty); returns the worst relative row error.
double compare(const HostCase& c, const Result& got, const Reference& ref, const std::vector<int32_t>& seqs = {}) {
  const int32_t dim = c.spec.head_dim;
  const double tol = c.spec.dtype == DType::kF16 ? kTolF16 : kTolBF16;
  double worst = 0.0;
  for (int32_t s = 0; s < c.num_seqs; ++s) {
    if (!seqs.empty() && std::find(seqs.begin(), seqs.end(), s) == seqs.end()) continue;
    for (int32_t h = 0; h < c.q_heads; ++h) {
      const size_t row = static_cast<size_t>(s) * c.q_heads + h;
      double num = 0.0, den = 0.0;
      for (int32_t j = 0; j < dim; ++j) {
        const double a = got.out[row * dim + j], b = ref.out[row * dim + j];
        num += (a - b) * (a - b);
        den += b * b;
      }
      if (den == 0.0) {
        EXPECT_EQ(num, 0.0) << "seq " << s << " head " << h << ": expected an all-zero row";
      } else {
        const double rel = std::sqrt(num / den);
        EXPECT_TRUE(rel <= tol) << "seq " << s << " head " << h << ": relative error " << rel << " > " << tol;
        if (!(rel <= worst)) worst = rel;  // NaN propagates
      }
      const float gl = got.lse[row], rl = ref.lse[row];
      if (std::isinf(rl)) {
        EXPECT_TRUE(std::isinf(gl) && gl < 0) << "seq " << s << " head " << h << ": lse " << gl << ", expected -inf";
      } else {
        EXPECT_TRUE(std::fabs(static_cast<double>(gl) - rl) <= kTolLse * std::max(1.0, std::fabs(static_cast<double>(rl))))
            << "seq " << s << " head " << h << ": lse " << gl << " vs " << rl;
      }
    }
  }
  return worst;
}

// Builds, runs and checks one case; returns the worst row error.
double check_case(const Spec& s) {
  SCOPED_TRACE(describe(s));
  const HostCase c = make_case(s);
  const DeviceCase d = upload(c);
  EXPECT_TRUE(tqcuda::can_implement(d.args).is_ok()) << tqcuda::can_implement(d.args).to_string();
  poison(d);
  const Status st = run(d);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
  const Result got = download(c, d);
  return compare(c, got, reference(c));
}

std::vector<int32_t> mixed_lens() { return {0, 1, 7, 513, long_len(), 100, 16, 17}; }

// ---- correctness ---------------------------------------------------------------------------------

// Every kernel of the dispatch table, on a small mixed batch (GQA 4 and 5, page 16 and 32).
TEST(CudaAttention, EveryBuiltKernel) {
  TQ_REQUIRE_DEVICE();
  ASSERT_GT(tqcuda::num_attention_kernels(), 0);
  for (int32_t i = 0; i < tqcuda::num_attention_kernels(); ++i) {
    const tqcuda::AttentionKernelKey k = tqcuda::attention_kernel(i);
    Spec s;
    s.head_dim = k.head_dim;
    s.key_bits = k.key_bits;
    s.value_bits = k.value_bits;
    s.dtype = k.q_dtype;
    s.lens = {0, 1, 7, 129, 300};
    s.group = i % 2 == 0 ? 4 : 5;
    s.page_size = i % 3 == 0 ? 32 : 16;
    s.seed = 100 + static_cast<uint64_t>(i);
    check_case(s);
  }
  EXPECT_EQ(tqcuda::attention_kernel(tqcuda::num_attention_kernels()).head_dim, 0);
}

// The sweep of the issue: GQA {1, 4, 8} x page sizes {16, 64} x lengths {1, 7, 513, 4096, mixed}.
class CudaAttentionSweep : public ::testing::TestWithParam<std::tuple<int32_t, int32_t, int32_t>> {};

TEST_P(CudaAttentionSweep, MatchesReference) {
  TQ_REQUIRE_DEVICE();
  const auto [group, page, which] = GetParam();
  Spec s;
  s.group = group;
  s.page_size = page;
  s.kv_heads = 2;
  switch (which) {
    case 0: s.lens = {1}; break;
    case 1: s.lens = {7}; break;
    case 2: s.lens = {513}; break;
    case 3: s.lens = {long_len()}; break;
    default: s.lens = mixed_lens(); break;
  }
  s.seed = static_cast<uint64_t>(1000 + group * 100 + page + which);
  check_case(s);
}
INSTANTIATE_TEST_SUITE_P(GqaPageLength, CudaAttentionSweep,
                         ::testing::Combine(::testing::Values(1, 4, 8), ::testing::Values(16, 64),
                                            ::testing::Values(0, 1, 2, 3, 4)));

// Every bit pair at d = 128, f16 and bf16 queries, sliding window and soft cap on and off.
TEST(CudaAttention, BitPairsWindowSoftcap) {
  TQ_REQUIRE_DEVICE();
  const int32_t pairs[][2] = {{4, 4}, {3, 3}, {2, 2}, {4, 2}, {4, 3}};
  int variant = 0;
  for (const auto& pair : pairs)
    for (DType t : {DType::kF16, DType::kBF16}) {
      Spec s;
      s.key_bits = pair[0];
      s.value_bits = pair[1];
      s.dtype = t;
      s.group = 8;
      s.page_size = 64;
      s.lens = mixed_lens();
      s.window = (variant % 2 == 1) ? 300 : 0;
      s.softcap = (variant % 4 >= 2) ? 20.0f : 0.0f;
      s.seed = static_cast<uint64_t>(2000 + variant);
      ++variant;
      check_case(s);
    }
}

// Windows shorter than a chunk, straddling chunks and pages, longer than the context.
TEST(CudaAttention, SlidingWindowEdges) {
  TQ_REQUIRE_DEVICE();
  for (int32_t w : {1, 5, 16, 17, 100, 1000000}) {
    Spec s;
    s.window = w;
    s.lens = {0, 1, 15, 16, 33, 250, 600};
    s.seed = static_cast<uint64_t>(3000 + w % 1000);
    check_case(s);
  }
}

// Sharp attention (large logits), an explicit softmax scale and a strong soft cap.
TEST(CudaAttention, SharpAttentionScaleAndSoftcap) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.q_scale = 8.0f;
  s.lens = {long_len(), 300};
  check_case(s);
  s.q_scale = 1.0f;
  s.softmax_scale = 0.3f;
  s.seed = 2;
  check_case(s);
  s.softmax_scale = 0.0f;
  s.q_scale = 6.0f;
  s.softcap = 5.0f;
  s.seed = 3;
  check_case(s);
}

// fp32 scales on either side; GQA 16 (two head tiles), 12 and 3; one KV head with many q heads.
// A side stored uncompressed (K-only layers keep fp16 / bf16 values; V-only the keys): the
// generic kernel, for every head_dim, both raw dtypes, any page size, window and soft cap.
TEST(CudaAttention, UncompressedSidesRunTheGenericKernel) {
  TQ_REQUIRE_DEVICE();
  const int32_t bits[][2] = {{4, 0}, {0, 4}, {3, 0}, {0, 2}, {2, 0}};
  for (int32_t d : {64, 128, 256})
    for (const auto& kv : bits) {
      Spec s;
      s.head_dim = d;
      s.key_bits = kv[0];
      s.value_bits = kv[1];
      s.lens = {0, 1, 7, long_len() / 2, 300};
      s.seed = static_cast<uint64_t>(900 + d + 10 * kv[0] + kv[1]);
      check_case(s);
    }
  Spec s;
  s.key_bits = 4;
  s.value_bits = 0;
  s.page_size = 24;  // any page size for the generic kernel
  s.window = 50;
  s.softcap = 5.0f;
  s.q_scale = 4.0f;
  s.dtype = DType::kBF16;
  s.group = 3;
  s.lens = {0, 49, 51, 333};
  check_case(s);
  s.dtype = DType::kF16;
  s.key_bits = 0;
  s.value_bits = 3;
  s.value_norm = NormStorage::kF32;
  s.num_splits = 7;
  check_case(s);
}

TEST(CudaAttention, NormStorageAndGroups) {
  TQ_REQUIRE_DEVICE();
  const NormStorage norms[][2] = {{NormStorage::kF32, NormStorage::kF32},
                                  {NormStorage::kF32, NormStorage::kF16},
                                  {NormStorage::kF16, NormStorage::kF32}};
  uint64_t seed = 4000;
  for (const auto& n : norms) {
    Spec s;
    s.key_norm = n[0];
    s.value_norm = n[1];
    s.lens = {0, 33, 700};
    s.seed = seed++;
    check_case(s);
  }
  // 3-bit sides: two work units per CTA (attention_units_per_cta); 3 or 1 KV head tile rows leave
  // the last CTA's second half without a unit.
  for (int32_t bits : {4, 3})
    for (int32_t g : {16, 12, 3}) {
      Spec s;
      s.group = g;
      s.kv_heads = g == 16 ? 1 : 3;
      s.key_bits = s.value_bits = bits;
      s.lens = {77, 513};
      s.seed = seed++;
      check_case(s);
    }
}

// Explicit split counts, including more splits than chunks (empty splits).
TEST(CudaAttention, ExplicitSplits) {
  TQ_REQUIRE_DEVICE();
  for (int32_t n : {1, 2, 7, 64, tqcuda::kMaxAttentionSplits}) {
    Spec s;
    s.num_splits = n;
    s.lens = mixed_lens();
    s.seed = static_cast<uint64_t>(5000 + n);
    check_case(s);
  }
}

// Scale storage (both fp16: the kernel's fast walk; fp32 and mixed: the general one), pages of
// 16 and 64 tokens, with and without programmatic dependent launch.
TEST(CudaAttention, ScaleStorageAndLaunchModes) {
  TQ_REQUIRE_DEVICE();
  uint64_t seed = 6000;
  for (const bool pdl : {true, false})
    for (NormStorage norm : {NormStorage::kF16, NormStorage::kF32}) {
      Spec s;
      s.pdl = pdl;
      s.key_norm = s.value_norm = norm;
      s.page_size = norm == NormStorage::kF16 ? 16 : 64;
      s.num_splits = 3;
      s.lens = mixed_lens();
      s.seed = seed++;
      check_case(s);
    }
}

// Strided q and out views (padding between heads / sequences).
TEST(CudaAttention, StridedViews) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.q_row_padding = 8;
  s.out_seq_padding = 64;
  s.lens = {5, 300};
  s.dtype = DType::kBF16;
  const HostCase c = make_case(s);
  const DeviceCase d = upload(c);
  poison(d);
  ASSERT_TRUE(run(d).is_ok());
  CUDA_OK(cudaDeviceSynchronize());
  const Result got = download(c, d);
  compare(c, got, reference(c));
  // The padding between output sequences is never written.
  for (int32_t seq = 0; seq < c.num_seqs; ++seq)
    for (int64_t i = c.q_heads * c.out_stride1; i < c.out_stride0; ++i)
      EXPECT_EQ(got.raw[static_cast<size_t>(seq * c.out_stride0 + i)], 0xFFFFu);
}

// Every sequence empty: zeros and lse = -inf.
TEST(CudaAttention, AllSequencesEmpty) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.lens = {0, 0, 0};
  check_case(s);
}

// A block-table entry outside the pool (not checkable on the host) neither faults nor disturbs the
// other sequences; that sequence's chunk contributes nothing and its output stays finite.
TEST(CudaAttention, BadBlockTableEntryIsContained) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.lens = {300, 300};
  const HostCase c = make_case(s);
  HostCase broken = c;
  broken.block_table[static_cast<size_t>(c.max_pages) + 2] = static_cast<int32_t>(c.num_pages) + 1000;
  broken.block_table[static_cast<size_t>(c.max_pages) + 5] = -7;
  const DeviceCase d = upload(broken);
  poison(d);
  ASSERT_TRUE(run(d).is_ok());
  CUDA_OK(cudaDeviceSynchronize());
  const Result got = download(c, d);
  compare(c, got, reference(c, {300, 0}), {0});
  for (int32_t h = 0; h < c.q_heads; ++h)
    for (int32_t j = 0; j < s.head_dim; ++j)
      EXPECT_TRUE(std::isfinite(got.out[(static_cast<size_t>(1) * c.q_heads + h) * s.head_dim + j]));
}

// A CUDA graph captured once replays the eager result bit for bit, and stays valid when the
// sequence lengths on the device change between replays.
TEST(CudaAttention, GraphCaptureReplayEqualsEager) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.lens = mixed_lens();
  s.group = 4;
  const HostCase c = make_case(s);
  const DeviceCase d = upload(c);
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  poison(d);
  ASSERT_TRUE(run(d, stream).is_ok());
  CUDA_OK(cudaStreamSynchronize(stream));
  const Result eager = download(c, d);
  compare(c, eager, reference(c));

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const Status captured = run(d, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(captured.is_ok()) << captured.to_string();
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 2; ++replay) {
    poison(d);
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    const Result replayed = download(c, d);
    EXPECT_EQ(0, std::memcmp(replayed.raw.data(), eager.raw.data(), eager.raw.size() * sizeof(uint16_t)));
    EXPECT_EQ(0, std::memcmp(replayed.lse.data(), eager.lse.data(), eager.lse.size() * sizeof(float)));
  }
  // New lengths (each at most the captured max_seq_len), replayed: equals an eager run on them.
  std::vector<int32_t> shorter = c.lens;
  for (auto& l : shorter) l = l / 2 + (l % 3);
  CUDA_OK(cudaMemcpy(d.lens.get(), shorter.data(), shorter.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  poison(d);
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  const Result replayed = download(c, d);
  compare(c, replayed, reference(c, shorter));
  poison(d);
  ASSERT_TRUE(run(d, stream).is_ok());
  CUDA_OK(cudaStreamSynchronize(stream));
  const Result eager_shorter = download(c, d);
  EXPECT_EQ(0, std::memcmp(replayed.raw.data(), eager_shorter.raw.data(), eager_shorter.raw.size() * sizeof(uint16_t)));
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(stream));
}

// ---- bad input: a Status, and nothing written ------------------------------------------------------

struct BadCase {
  std::string what;
  StatusCode code;
  tqcuda::DecodeAttentionArgs args;
  tqcuda::Workspace workspace;
  bool workspace_only;  // can_implement does not see the workspace
};

// One mutation of valid args per rule of can_implement / decode_attention.
std::vector<BadCase> bad_cases(const tqcuda::DecodeAttentionArgs& valid, tqcuda::Workspace ws) {
  std::vector<BadCase> cases;
  auto add = [&](const char* what, StatusCode code, auto&& mutate, bool workspace_only = false) {
    BadCase b{what, code, valid, ws, workspace_only};
    mutate(b);
    cases.push_back(b);
  };
  add("q_heads not a multiple of kv_heads", StatusCode::kInvalidArgument, [](BadCase& b) {
    b.args.q.dim1 = 7;
    b.args.out.dim1 = 7;
  });
  add("unsupported combination (K4 V1)", StatusCode::kUnsupportedFormat,
      [](BadCase& b) { b.args.format = turboquant::make_format(128, 4, 1); });
  add("unsupported combination (d=128 K1 V1)", StatusCode::kUnsupportedFormat,
      [](BadCase& b) { b.args.format = turboquant::make_format(128, 1, 1); });
  add("uncompressed keys and values (not a Format)", StatusCode::kUnsupportedFormat,
      [](BadCase& b) { b.args.format = turboquant::make_format(128, 0, 0); });
  add("invalid format (head_dim 96)", StatusCode::kUnsupportedFormat, [](BadCase& b) {
    b.args.format.key.head_dim = 96;
    b.args.format.value.head_dim = 96;
  });
  add("f32 queries", StatusCode::kUnsupportedFormat, [](BadCase& b) {
    b.args.q.dtype = DType::kF32;
    b.args.out.dtype = DType::kF32;
  });
  add("out dtype differs from q", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.out.dtype = DType::kBF16; });
  add("GQA group of 32", StatusCode::kUnsupportedFormat, [](BadCase& b) {
    const int32_t heads = 32 * b.args.cache.layout.kv_heads;
    b.args.q.dim1 = heads;
    b.args.q.stride0 = static_cast<int64_t>(heads) * b.args.q.stride1;
    b.args.out.dim1 = heads;
    b.args.out.stride0 = static_cast<int64_t>(heads) * b.args.out.stride1;
  });
  add("null q", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.q.data = nullptr; });
  add("null out", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.out.data = nullptr; });
  add("null pages", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.cache.pages = nullptr; });
  add("null block_table", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.cache.block_table = nullptr; });
  add("null seq_lens", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.cache.seq_lens = nullptr; });
  add("misaligned q", StatusCode::kMisaligned,
      [](BadCase& b) { b.args.q.data = static_cast<const uint16_t*>(b.args.q.data) + 1; });
  add("misaligned out row stride", StatusCode::kMisaligned, [](BadCase& b) { b.args.out.stride0 += 1; });
  add("misaligned lse", StatusCode::kMisaligned, [](BadCase& b) {
    b.args.lse = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(b.args.lse) + 2);
  });
  add("layout not from page_layout", StatusCode::kInvalidArgument,
      [](BadCase& b) { b.args.cache.layout.page_bytes += 16; });
  add("page_size not a multiple of 16", StatusCode::kUnsupportedFormat, [](BadCase& b) {
    b.args.cache.layout = layout::page_layout(b.args.format, 8, b.args.cache.layout.kv_heads);
  });
  add("num_seqs mismatch", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.cache.num_seqs = 1; });
  add("max_seq_len beyond the block table", StatusCode::kInvalidArgument, [](BadCase& b) {
    b.args.max_seq_len = b.args.cache.max_pages_per_seq * b.args.cache.layout.page_size + 1;
  });
  add("negative window", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.sliding_window = -1; });
  add("NaN softcap", StatusCode::kInvalidArgument,
      [](BadCase& b) { b.args.logit_softcap = std::numeric_limits<float>::quiet_NaN(); });
  add("negative softmax scale", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.softmax_scale = -1.0f; });
  add("too many splits", StatusCode::kInvalidArgument,
      [](BadCase& b) { b.args.num_splits = tqcuda::kMaxAttentionSplits + 1; });
  add("sm_count 0", StatusCode::kInvalidArgument, [](BadCase& b) { b.args.sm_count = 0; });
  add("workspace too small", StatusCode::kInvalidArgument,
      [](BadCase& b) { b.workspace.bytes = tqcuda::workspace_bytes(b.args) - 1; }, true);
  add("null workspace", StatusCode::kInvalidArgument, [](BadCase& b) { b.workspace.data = nullptr; }, true);
  add("misaligned workspace", StatusCode::kMisaligned, [](BadCase& b) {
    b.workspace.data = static_cast<uint8_t*>(b.workspace.data) + 4;  // rejected before any use
  }, true);
  return cases;
}

// The status codes need no device: can_implement and the failing decode_attention make no CUDA
// call, and never read the (here host) pointers.
TEST(CudaAttentionHost, BadInputStatusWithoutDevice) {
  Spec s;
  s.lens = {5, 40};
  const HostCase c = make_case(s);
  std::vector<uint16_t> out(static_cast<size_t>(c.out_stride0 * c.num_seqs));
  std::vector<float> lse(static_cast<size_t>(c.num_seqs) * c.q_heads);
  tqcuda::DecodeAttentionArgs a;
  a.format = c.format;
  a.q = turboquant::tensor_view<const void*>(c.q.data(), s.dtype, c.num_seqs, c.q_heads, s.head_dim, c.q_stride0,
                                             c.q_stride1);
  a.cache.pages = c.pool.data();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = c.block_table.data();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = c.lens.data();
  a.cache.num_seqs = c.num_seqs;
  a.out = turboquant::tensor_view<void*>(out.data(), s.dtype, c.num_seqs, c.q_heads, s.head_dim);
  a.lse = lse.data();
  a.max_seq_len = 40;
  // Host vectors are only 8/16-byte aligned by the allocator: the views need 16.
  if (!turboquant::checks::aligned(a.q.data, 16) || !turboquant::checks::aligned(a.out.data, 16) ||
      !turboquant::checks::aligned(a.cache.pages, 16))
    GTEST_SKIP() << "host buffers not 16-byte aligned";
  const Status ok = tqcuda::can_implement(a);
  ASSERT_TRUE(ok.is_ok()) << ok.to_string();
  const size_t need = tqcuda::workspace_bytes(a);
  ASSERT_GT(need, 0u);
  std::vector<uint8_t> ws_storage(need + 16);
  auto* ws_data = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws_storage.data()) + 15) / 16 * 16);
  for (const BadCase& b : bad_cases(a, tqcuda::Workspace{ws_data, need})) {
    SCOPED_TRACE(b.what);
    if (!b.workspace_only) {
      const Status ci = tqcuda::can_implement(b.args);
      EXPECT_EQ(ci.code(), b.code) << ci.to_string();
      EXPECT_FALSE(ci.message().empty());
    }
    const Status st = tqcuda::decode_attention(b.args, b.workspace, nullptr);
    EXPECT_EQ(st.code(), b.code) << st.to_string();
  }
}

// On the device: the same statuses, and the poisoned outputs stay untouched.
TEST(CudaAttention, BadInputReturnsStatusAndWritesNothing) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.lens = {5, 40};
  const HostCase c = make_case(s);
  const DeviceCase d = upload(c);
  ASSERT_TRUE(tqcuda::can_implement(d.args).is_ok());
  for (const BadCase& b : bad_cases(d.args, tqcuda::Workspace{d.workspace.get(), d.workspace.bytes()})) {
    SCOPED_TRACE(b.what);
    poison(d);
    CUDA_OK(cudaDeviceSynchronize());
    const Status st = tqcuda::decode_attention(b.args, b.workspace, nullptr);
    EXPECT_EQ(st.code(), b.code) << st.to_string();
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<uint8_t> out(d.out.bytes()), lse(d.lse.bytes());
    CUDA_OK(cudaMemcpy(out.data(), d.out.get(), out.size(), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(lse.data(), d.lse.get(), lse.size(), cudaMemcpyDeviceToHost));
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](uint8_t v) { return v == kPoisonByte; })) << "out was written";
    EXPECT_TRUE(std::all_of(lse.begin(), lse.end(), [](uint8_t v) { return v == kPoisonByte; })) << "lse was written";
  }
}

// Host-only: the table, the heuristic and the workspace size need no device.
TEST(CudaAttentionHost, TableHeuristicWorkspace) {
  ASSERT_GE(tqcuda::num_attention_kernels(), 2);
  for (int32_t i = 0; i < tqcuda::num_attention_kernels(); ++i) {
    const tqcuda::AttentionKernelKey k = tqcuda::attention_kernel(i);
    EXPECT_TRUE(turboquant::is_supported_head_dim(k.head_dim));
    EXPECT_TRUE(k.q_dtype == DType::kF16 || k.q_dtype == DType::kBF16);
  }
  tqcuda::DecodeAttentionArgs a;
  a.format = turboquant::make_format(128, 4, 4);
  a.cache.num_seqs = 1;
  a.cache.layout = layout::page_layout(a.format, 16, 8);
  a.q = turboquant::tensor_view<const void*>(nullptr, DType::kF16, 1, 32, 128);
  a.max_seq_len = 32768;
  const int32_t batch1 = tqcuda::decode_attention_splits(a);
  EXPECT_GT(batch1, 8);  // batch 1 must spread over the SMs
  EXPECT_LE(batch1, tqcuda::kMaxAttentionSplits);
  EXPECT_EQ(tqcuda::workspace_bytes(a) >= static_cast<size_t>(32) * batch1 * (128 + 2) * sizeof(float), true);
  a.cache.num_seqs = 32;
  a.q.dim0 = 32;
  EXPECT_LE(tqcuda::decode_attention_splits(a), batch1);
  a.max_seq_len = 1;
  EXPECT_EQ(tqcuda::decode_attention_splits(a), 1);
  a.num_splits = 5;
  EXPECT_EQ(tqcuda::decode_attention_splits(a), 5);
  a.q.dim1 = 31;  // not a multiple of kv_heads: no size
  EXPECT_EQ(tqcuda::workspace_bytes(a), 0u);
  // 3-bit sides run two work units per CTA (attention_units_per_cta); the heuristic counts units,
  // so it plans the same splits as for 4 bits.
  for (const int32_t context : {4096, 32768, 131072})
    for (const int32_t seqs : {1, 32}) {
      tqcuda::DecodeAttentionArgs b;
      b.cache.num_seqs = seqs;
      b.q = turboquant::tensor_view<const void*>(nullptr, DType::kF16, seqs, 32, 128);
      b.max_seq_len = context;
      b.format = turboquant::make_format(128, 4, 4);
      b.cache.layout = layout::page_layout(b.format, 16, 8);
      const int32_t k4 = tqcuda::decode_attention_splits(b);
      b.format = turboquant::make_format(128, 3, 3);
      b.cache.layout = layout::page_layout(b.format, 16, 8);
      EXPECT_EQ(tqcuda::decode_attention_splits(b), k4) << "batch " << seqs << " x " << context;
    }
}

// The heuristic's search (attention_split_count: incremental waves, a stopping bound) against the
// exhaustive search it replaces: every split count of [1, most], ties to the fewest. Shapes from a
// single sequence to more units than slots, slots of 1 to 4 waves' worth, odd chunk counts.
TEST(CudaAttentionHost, SplitSearchMatchesExhaustive) {
  const auto exhaustive = [](int32_t chunks, int32_t most, int64_t units, int64_t slots, int32_t prologue) {
    int32_t best = 1;
    int64_t best_cost = -1;
    for (int32_t s = 1; s <= most; ++s) {
      const int64_t waves = (units * s + slots - 1) / slots;
      const int64_t cost = waves * ((int64_t{chunks} + s - 1) / s + prologue);
      if (best_cost < 0 || cost < best_cost) {
        best_cost = cost;
        best = s;
      }
    }
    return best;
  };
  int64_t cases = 0;
  for (const int32_t chunks : {1, 2, 15, 16, 17, 100, 255, 256, 1000, 1024, 2048, 4097, 8192, 16384, 65537, 1 << 20})
    for (const int64_t units : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{8}, int64_t{24}, int64_t{64},
                                int64_t{256}, int64_t{263}, int64_t{1000}, int64_t{4096}, int64_t{65535} * 8})
      for (const int64_t slots : {int64_t{1}, int64_t{66}, int64_t{132}, int64_t{264}, int64_t{396}, int64_t{1056}})
        for (const int32_t prologue : {0, 1, 8, 40}) {
          const int32_t useful = chunks <= 16 ? 1 : (chunks + 15) / 16;
          for (const int32_t most : {useful < 256 ? useful : 256, 1, 7}) {
            ASSERT_EQ(tqcuda::detail::attention_split_count(chunks, most, units, slots, prologue),
                      exhaustive(chunks, most, units, slots, prologue))
                << "chunks " << chunks << ", most " << most << ", units " << units << ", slots " << slots
                << ", prologue " << prologue;
            ++cases;
          }
        }
  EXPECT_GT(cases, 10000);
  // The bench shapes on an H200 (132 SMs, two units per SM, 8 KV heads, 8 prologue chunks).
  EXPECT_EQ(tqcuda::detail::attention_split_count(8192, 256, 8, 264, 8), 33);  // 1 x 128K
  EXPECT_EQ(tqcuda::detail::attention_split_count(2048, 128, 8, 264, 8), 33);  // 1 x 32K
  EXPECT_EQ(tqcuda::detail::attention_split_count(1024, 64, 256, 264, 8), 1);  // 32 x 16K
}

}  // namespace
