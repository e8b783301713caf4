// CUDA packed-QK scores (turboquant/cuda/scores.hpp) against the float64 CPU reference
// turboquant::cpu::scores on the same host-built cache: caches are filled on the host with
// turboquant::cpu::encode through slot mappings into pages in a shuffled order (a non-contiguous
// block table), page pools start as random bytes, the scores buffer is poisoned with a NaN pattern
// before every run and entries t >= seq_len must stay poisoned. Tolerance per (sequence, head) row:
// ||got - ref|| / ||ref|| <= 1e-4 with fp32 queries, 2e-3 with f16 / bf16. Skips without a device;
// TQ_SANITIZER (compute-sanitizer runs) shrinks the contexts.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "cuda_test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "turboquant/cpu/attention.hpp"
#include "turboquant/cpu/codec.hpp"
#include "turboquant/cuda/scores.hpp"

namespace {

using turboquant::testing::DeviceBuffer;
using turboquant::testing::has_device;
using turboquant::testing::to_device;
using turboquant::testing::under_sanitizer;

using turboquant::DType;
using turboquant::Format;
using turboquant::Status;
using turboquant::StatusCode;
namespace layout = turboquant::layout;
namespace tqcuda = turboquant::cuda;

constexpr uint8_t kPoisonByte = 0xFF;  // 0xFFFFFFFF is a NaN in fp32

int32_t long_len() { return under_sanitizer() ? 150 : 1000; }


struct Spec {
  int32_t head_dim = 128;
  int32_t key_bits = 4;
  DType dtype = DType::kF32;
  int32_t kv_heads = 2;
  int32_t group = 4;
  int32_t page_size = 16;
  std::vector<int32_t> lens = {1, 0, 37, 100};
  int32_t extra_context = 5;  // max_context = max(lens) + extra_context
  float softmax_scale = 0.0f;
  uint64_t seed = 1;
};

std::string describe(const Spec& s) {
  std::string lens;
  for (size_t i = 0; i < s.lens.size(); ++i) lens += (i ? "," : "") + std::to_string(s.lens[i]);
  return "d=" + std::to_string(s.head_dim) + " K" + std::to_string(s.key_bits) + " " + turboquant::to_string(s.dtype) +
         " kv=" + std::to_string(s.kv_heads) + " group=" + std::to_string(s.group) + " page=" +
         std::to_string(s.page_size) + " lens={" + lens + "}";
}

struct HostCase {
  Spec spec;
  Format format;
  layout::PageLayout layout;
  int32_t num_seqs = 0, q_heads = 0, max_pages = 0, max_context = 0;
  int64_t num_pages = 0;
  std::vector<uint8_t> pool;
  std::vector<int32_t> block_table, lens;
  std::vector<uint8_t> q;  // dense [num_seqs, q_heads, head_dim] in spec.dtype
};

HostCase make_case(const Spec& s) {
  HostCase c;
  c.spec = s;
  c.format = turboquant::make_format(s.head_dim, s.key_bits, s.key_bits, 0x1234 + s.seed);
  c.num_seqs = static_cast<int32_t>(s.lens.size());
  c.q_heads = s.kv_heads * s.group;
  const int32_t max_len = *std::max_element(s.lens.begin(), s.lens.end());
  c.max_context = max_len + s.extra_context;
  c.max_pages = std::max(1, (max_len + s.page_size - 1) / s.page_size) + 1;
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
    std::vector<float> k(static_cast<size_t>(len) * s.kv_heads * s.head_dim);
    for (auto& x : k) x = normal(rng);
    std::vector<int64_t> slots(static_cast<size_t>(len));
    for (int32_t t = 0; t < len; ++t)
      slots[t] = static_cast<int64_t>(c.block_table[static_cast<size_t>(seq) * c.max_pages + t / s.page_size]) *
                     s.page_size + t % s.page_size;
    turboquant::cpu::EncodeArgs e;
    e.codec = c.format.key;
    e.input = turboquant::tensor_view<const void*>(k.data(), DType::kF32, len, s.kv_heads, s.head_dim);
    e.paged.pages = c.pool.data();
    e.paged.num_pages = c.num_pages;
    e.paged.layout = c.layout;
    e.paged.value_side = false;
    e.paged.slot_mapping = slots.data();
    const Status st = turboquant::cpu::encode(e);
    EXPECT_TRUE(st.is_ok()) << st.to_string();
  }
  const size_t n = static_cast<size_t>(c.num_seqs) * c.q_heads * s.head_dim;
  const size_t eb = s.dtype == DType::kF32 ? 4 : 2;
  c.q.resize(n * eb);
  for (size_t i = 0; i < n; ++i) {
    const float v = normal(rng);
    if (s.dtype == DType::kF32) {
      std::memcpy(c.q.data() + i * 4, &v, 4);
    } else {
      const uint16_t b = s.dtype == DType::kF16 ? turboquant::float_to_half_bits(v) : turboquant::float_to_bf16_bits(v);
      std::memcpy(c.q.data() + i * 2, &b, 2);
    }
  }
  return c;
}

std::vector<float> reference(const HostCase& c) {
  std::vector<float> out(static_cast<size_t>(c.num_seqs) * c.q_heads * c.max_context, 0.0f);
  turboquant::cpu::ScoresArgs a;
  a.format = c.format;
  a.q = turboquant::tensor_view<const void*>(c.q.data(), c.spec.dtype, c.num_seqs, c.q_heads, c.spec.head_dim);
  a.cache.pages = c.pool.data();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = c.block_table.data();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = c.lens.data();
  a.cache.num_seqs = c.num_seqs;
  a.scores = out.data();
  a.max_context = c.max_context;
  a.softmax_scale = c.spec.softmax_scale;
  const Status st = turboquant::cpu::scores(a);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  return out;
}

struct DeviceCase {
  DeviceBuffer pool, block_table, lens, q, scores;
  tqcuda::ScoresArgs args;
};

DeviceCase upload(const HostCase& c) {
  DeviceCase d;
  d.pool = to_device(c.pool);
  d.block_table = to_device(c.block_table);
  d.lens = to_device(c.lens);
  d.q = to_device(c.q);
  d.scores = DeviceBuffer(static_cast<size_t>(c.num_seqs) * c.q_heads * c.max_context * sizeof(float));
  tqcuda::ScoresArgs& a = d.args;
  a.format = c.format;
  a.q = turboquant::tensor_view<const void*>(d.q.get(), c.spec.dtype, c.num_seqs, c.q_heads, c.spec.head_dim);
  a.cache.pages = d.pool.get();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = d.block_table.as<int32_t>();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = d.lens.as<int32_t>();
  a.cache.num_seqs = c.num_seqs;
  a.scores = d.scores.as<float>();
  a.max_context = c.max_context;
  a.softmax_scale = c.spec.softmax_scale;
  return d;
}

void poison(const DeviceCase& d) {
  ASSERT_EQ(cudaSuccess, cudaMemset(d.scores.get(), kPoisonByte, d.scores.bytes()));
  ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
}

std::vector<float> download(const DeviceCase& d) {
  std::vector<float> v(d.scores.bytes() / sizeof(float));
  EXPECT_EQ(cudaSuccess, cudaMemcpy(v.data(), d.scores.get(), d.scores.bytes(), cudaMemcpyDeviceToHost));
  return v;
}

bool is_poison(float v) {
  uint32_t b = 0;
  std::memcpy(&b, &v, 4);
  return b == 0xFFFFFFFFu;
}

// Rows within tolerance; entries t >= len poisoned. `skip_token(s, t)`: tokens expected untouched.
// The error of a row is measured against its norm, or against the case's typical score magnitude
// (rms over every written score) when that is larger: f16 / bf16 queries take the tensor-core path
// (fp16 levels and a two-term fp16 query), whose error per score is ~1e-4 of scale |q| |k| whatever
// the cancellation, so a row of one or two near-zero scores is judged at the typical scale.
template <typename Skip>
void check(const HostCase& c, const std::vector<float>& got, const std::vector<float>& ref, Skip skip_token) {
  const double tol = c.spec.dtype == DType::kF32 ? 1e-4 : 2e-3;
  double all_sq = 0.0;
  int64_t all_n = 0;
  for (int32_t s = 0; s < c.num_seqs; ++s)
    for (int32_t h = 0; h < c.q_heads; ++h)
      for (int32_t t = 0; t < c.lens[s] && t < c.max_context; ++t) {
        if (skip_token(s, t)) continue;
        const double r = ref[(static_cast<size_t>(s) * c.q_heads + h) * c.max_context + t];
        all_sq += r * r;
        ++all_n;
      }
  const double typical_sq = all_n > 0 ? all_sq / static_cast<double>(all_n) : 0.0;
  for (int32_t s = 0; s < c.num_seqs; ++s)
    for (int32_t h = 0; h < c.q_heads; ++h) {
      const size_t row = (static_cast<size_t>(s) * c.q_heads + h) * c.max_context;
      double num = 0.0, den = 0.0;
      int64_t n = 0;
      for (int32_t t = 0; t < c.max_context; ++t) {
        const float g = got[row + t];
        if (t >= c.lens[s] || skip_token(s, t)) {
          EXPECT_TRUE(is_poison(g)) << "seq " << s << " head " << h << " t " << t << ": written (" << g << ")";
          continue;
        }
        ASSERT_TRUE(std::isfinite(g)) << "seq " << s << " head " << h << " t " << t;
        num += (g - ref[row + t]) * (g - static_cast<double>(ref[row + t]));
        den += static_cast<double>(ref[row + t]) * ref[row + t];
        ++n;
      }
      den = std::max(den, static_cast<double>(n) * typical_sq);
      if (den > 0.0) {
        const double rel = std::sqrt(num / den);
        EXPECT_LE(rel, tol) << "seq " << s << " head " << h;
      }
    }
}

void run_case(const Spec& s) {
  SCOPED_TRACE(describe(s));
  const HostCase c = make_case(s);
  const std::vector<float> ref = reference(c);
  DeviceCase d = upload(c);
  ASSERT_TRUE(tqcuda::can_implement(d.args).is_ok()) << tqcuda::can_implement(d.args).to_string();
  EXPECT_EQ(tqcuda::workspace_bytes(d.args), 0u);
  poison(d);
  const Status st = tqcuda::scores(d.args, tqcuda::Workspace{}, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
  check(c, download(d), ref, [](int32_t, int32_t) { return false; });
}

TEST(CudaScores, Sweep) {
  TQ_REQUIRE_DEVICE();
  for (int32_t d : {64, 128, 256})
    for (int32_t bits : {2, 3, 4})
      for (int32_t group : {1, 4})
        for (int32_t page : {16, 64}) {
          Spec s;
          s.head_dim = d;
          s.key_bits = bits;
          s.group = group;
          s.page_size = page;
          s.lens = {0, 1, 37, long_len(), 64};
          s.dtype = (bits + group) % 2 == 0 ? DType::kF32 : DType::kF16;
          s.seed = static_cast<uint64_t>(d * 100 + bits * 10 + group + page);
          run_case(s);
          s.dtype = s.dtype == DType::kF32 ? DType::kF16 : DType::kF32;
          s.softmax_scale = 0.3f;
          run_case(s);
        }
}

TEST(CudaScores, Bf16Queries) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.dtype = DType::kBF16;
  s.lens = {5, 129, 0};
  run_case(s);
}

TEST(CudaScores, BadBlockTableEntriesLeaveScoresUntouched) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.lens = {40, 20};
  s.page_size = 16;
  HostCase c = make_case(s);
  const std::vector<float> ref = reference(c);
  // Page 1 of sequence 0 (tokens 16..31) and page 0 of sequence 1 (tokens 0..15) out of range.
  c.block_table[1] = -3;
  c.block_table[static_cast<size_t>(c.max_pages)] = static_cast<int32_t>(c.num_pages) + 7;
  DeviceCase d = upload(c);
  poison(d);
  ASSERT_TRUE(tqcuda::scores(d.args, tqcuda::Workspace{}, nullptr).is_ok());
  ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
  check(c, download(d), ref, [](int32_t seq, int32_t t) { return (seq == 0 && t >= 16 && t < 32) || (seq == 1 && t < 16); });
}

TEST(CudaScores, BadInputReturnsStatusAndWritesNothing) {
  TQ_REQUIRE_DEVICE();
  Spec s;
  s.lens = {10, 3};
  const HostCase c = make_case(s);
  DeviceCase d = upload(c);
  poison(d);
  const auto expect_error = [&](tqcuda::ScoresArgs a, StatusCode code, const char* what) {
    const Status st = tqcuda::scores(a, tqcuda::Workspace{}, nullptr);
    EXPECT_EQ(st.code(), code) << what << ": " << st.to_string();
    EXPECT_EQ(tqcuda::can_implement(a).code(), code) << what;
  };
  tqcuda::ScoresArgs a = d.args;
  a.scores = nullptr;
  expect_error(a, StatusCode::kInvalidArgument, "null scores");
  a = d.args;
  a.max_context = 0;
  expect_error(a, StatusCode::kInvalidArgument, "max_context 0");
  a = d.args;
  a.softmax_scale = -1.0f;
  expect_error(a, StatusCode::kInvalidArgument, "negative scale");
  a = d.args;
  a.cache.block_table = nullptr;
  expect_error(a, StatusCode::kInvalidArgument, "null block table");
  a = d.args;
  a.q.dim0 = 3;
  expect_error(a, StatusCode::kInvalidArgument, "q.dim0 mismatch");
  a = d.args;
  a.scores = reinterpret_cast<float*>(reinterpret_cast<uintptr_t>(d.args.scores) + 2);
  expect_error(a, StatusCode::kMisaligned, "misaligned scores");
  {
    // Raw keys: unsupported, naming them.
    a = d.args;
    a.format = turboquant::make_format(s.head_dim, 0, 4, 7);
    a.cache.layout = layout::page_layout(a.format, s.page_size, s.kv_heads);
    const Status st = tqcuda::scores(a, tqcuda::Workspace{}, nullptr);
    EXPECT_EQ(st.code(), StatusCode::kUnsupportedFormat) << st.to_string();
    EXPECT_NE(st.to_string().find("key.bits"), std::string::npos) << st.to_string();
  }
  a = d.args;
  a.q = turboquant::tensor_view<const void*>(d.q.get(), DType::kF32, c.num_seqs, 17 * s.kv_heads, s.head_dim);
  expect_error(a, StatusCode::kUnsupportedFormat, "group 17");
  ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
  for (float v : download(d)) ASSERT_TRUE(is_poison(v)) << "an error call wrote scores";
}

}  // namespace
