// CPU reference of the chunked-prefill attention and the state merge (turboquant/cpu/prefill.hpp)
// against a brute-force dense float64 computation: the cache is decoded with cpu::decode, the
// attention is computed causally over the decoded keys / values (plus the chunk's own, kFresh).
// Also: n = 1 rows equal cpu::decode_attention, the merge op against its formula (in place
// included), and the Status of bad inputs (nothing written on error).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "turboquant/cpu/attention.hpp"
#include "turboquant/cpu/codec.hpp"
#include "turboquant/cpu/prefill.hpp"
#include "prefill_fragments.hpp"  // kernels/: the CUDA kernel's index maps (plain C++)
#include "turboquant/device/swizzle.hpp"

namespace {

using turboquant::DType;
using turboquant::Format;
using turboquant::PrefillOrder;
using turboquant::Status;
using turboquant::StatusCode;
namespace cpu = turboquant::cpu;
namespace layout = turboquant::layout;

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Seq {
  int32_t prefix = 0;  // P_s
  int32_t n = 0;       // queries
};

struct Spec {
  int32_t head_dim = 64;
  int32_t key_bits = 4;
  int32_t value_bits = 4;
  int32_t kv_heads = 2;
  int32_t group = 4;
  int32_t page_size = 16;
  PrefillOrder order = PrefillOrder::kAppended;
  int32_t window = 0;
  float softcap = 0.0f;
  float softmax_scale = 0.0f;
  std::vector<Seq> seqs;
  uint64_t seed = 1;
};

std::string describe(const Spec& s) {
  return "d=" + std::to_string(s.head_dim) + " K" + std::to_string(s.key_bits) + "V" + std::to_string(s.value_bits) +
         " kv=" + std::to_string(s.kv_heads) + " group=" + std::to_string(s.group) + " order=" +
         turboquant::to_string(s.order) + " window=" + std::to_string(s.window) + " softcap=" +
         std::to_string(s.softcap);
}

// A batch: the cache (prefix, plus the chunk in kAppended), queries, chunk K/V, all f32.
struct Case {
  Spec spec;
  Format format;
  layout::PageLayout layout;
  int32_t num_seqs = 0, q_heads = 0, max_pages = 0, total = 0, max_n = 0;
  int64_t num_pages = 0;
  std::vector<uint8_t> pool;
  std::vector<int32_t> block_table, seq_lens, query_start;
  std::vector<float> q, chunk_k, chunk_v;  // [total, heads, d]
};

Case make_case(const Spec& s) {
  Case c;
  c.spec = s;
  c.format = turboquant::make_format(s.head_dim, s.key_bits, s.value_bits, 0x77 + s.seed);
  c.num_seqs = static_cast<int32_t>(s.seqs.size());
  c.q_heads = s.kv_heads * s.group;
  c.layout = layout::page_layout(c.format, s.page_size, s.kv_heads);
  const bool appended = s.order == PrefillOrder::kAppended;
  int32_t max_len = 1;
  c.query_start.push_back(0);
  for (const Seq& q : s.seqs) {
    max_len = std::max(max_len, q.prefix + (appended ? q.n : 0));
    c.query_start.push_back(c.query_start.back() + q.n);
    c.max_n = std::max(c.max_n, q.n);
  }
  c.total = c.query_start.back();
  c.max_pages = (max_len + s.page_size - 1) / s.page_size + 1;
  c.num_pages = static_cast<int64_t>(c.num_seqs) * c.max_pages + 1;
  std::mt19937_64 rng(s.seed);
  c.pool.resize(static_cast<size_t>(c.num_pages * c.layout.page_bytes));
  for (auto& b : c.pool) b = static_cast<uint8_t>(rng());
  std::vector<int32_t> perm(static_cast<size_t>(c.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  c.block_table.assign(perm.begin(), perm.begin() + static_cast<int64_t>(c.num_seqs) * c.max_pages);
  std::normal_distribution<float> normal;
  const size_t row = static_cast<size_t>(s.kv_heads) * s.head_dim;
  c.chunk_k.resize(static_cast<size_t>(c.total) * row);
  c.chunk_v.resize(c.chunk_k.size());
  for (auto& x : c.chunk_k) x = normal(rng);
  for (auto& x : c.chunk_v) x = normal(rng);
  c.q.resize(static_cast<size_t>(c.total) * c.q_heads * s.head_dim);
  for (auto& x : c.q) x = normal(rng);
  for (int32_t seq = 0; seq < c.num_seqs; ++seq) {
    const Seq& q = s.seqs[seq];
    const int32_t len = q.prefix + (appended ? q.n : 0);
    c.seq_lens.push_back(len);
    if (len == 0) continue;
    // Tokens [0, prefix) random; [prefix, prefix + n) the chunk's K/V (kAppended).
    std::vector<float> k(static_cast<size_t>(len) * row), v(k.size());
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    if (appended) {
      const size_t at = static_cast<size_t>(c.query_start[seq]) * row;
      std::copy(c.chunk_k.begin() + at, c.chunk_k.begin() + at + q.n * row, k.begin() + q.prefix * row);
      std::copy(c.chunk_v.begin() + at, c.chunk_v.begin() + at + q.n * row, v.begin() + q.prefix * row);
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

cpu::PrefillAttentionArgs args_of(const Case& c, std::vector<float>& out, std::vector<float>& lse) {
  const Spec& s = c.spec;
  out.assign(static_cast<size_t>(c.total) * c.q_heads * s.head_dim, std::nanf(""));
  lse.assign(static_cast<size_t>(c.total) * c.q_heads, std::nanf(""));
  cpu::PrefillAttentionArgs a;
  a.format = c.format;
  a.order = s.order;
  a.q = turboquant::tensor_view<const void*>(c.q.data(), DType::kF32, c.total, c.q_heads, s.head_dim);
  a.query_start = c.query_start.data();
  a.max_query_len = std::max(1, c.max_n);
  a.cache.pages = c.pool.data();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = c.block_table.data();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = c.seq_lens.data();
  a.cache.num_seqs = c.num_seqs;
  if (s.order == PrefillOrder::kFresh) {
    a.chunk_keys = turboquant::tensor_view<const void*>(c.chunk_k.data(), DType::kF32, c.total, s.kv_heads, s.head_dim);
    a.chunk_values = turboquant::tensor_view<const void*>(c.chunk_v.data(), DType::kF32, c.total, s.kv_heads, s.head_dim);
  }
  a.out = turboquant::tensor_view<void*>(out.data(), DType::kF32, c.total, c.q_heads, s.head_dim);
  a.lse = lse.data();
  a.softmax_scale = s.softmax_scale;
  a.sliding_window = s.window;
  a.logit_softcap = s.softcap;
  return a;
}

// Brute force: decoded K / V, plain float64 attention over explicit positions.
void brute_force(const Case& c, std::vector<double>& out, std::vector<double>& lse) {
  const Spec& s = c.spec;
  const int32_t d = s.head_dim;
  int32_t max_tokens = 1;
  for (int32_t len : c.seq_lens) max_tokens = std::max(max_tokens, len);
  std::vector<float> dk(static_cast<size_t>(c.num_seqs) * max_tokens * s.kv_heads * d), dv(dk.size());
  for (int side = 0; side < 2; ++side) {
    cpu::DecodeArgs da;
    da.codec = side ? c.format.value : c.format.key;
    da.paged.pages = c.pool.data();
    da.paged.num_pages = c.num_pages;
    da.paged.layout = c.layout;
    da.paged.block_table = c.block_table.data();
    da.paged.max_pages_per_seq = c.max_pages;
    da.paged.seq_lens = c.seq_lens.data();
    da.paged.num_seqs = c.num_seqs;
    da.value_side = side == 1;
    da.max_tokens = max_tokens;
    da.output = turboquant::tensor_view<void*>(side ? dv.data() : dk.data(), DType::kF32,
                                               static_cast<int64_t>(c.num_seqs) * max_tokens, s.kv_heads, d);
    const Status st = cpu::decode(da);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  const double scale = s.softmax_scale == 0.0f ? 1.0 / std::sqrt(static_cast<double>(d)) : s.softmax_scale;
  out.assign(static_cast<size_t>(c.total) * c.q_heads * d, 0.0);
  lse.assign(static_cast<size_t>(c.total) * c.q_heads, -std::numeric_limits<double>::infinity());
  const bool fresh = s.order == PrefillOrder::kFresh;
  for (int32_t seq = 0; seq < c.num_seqs; ++seq) {
    const int32_t q0 = c.query_start[seq], n = c.query_start[seq + 1] - q0;
    const int32_t prefix = fresh ? c.seq_lens[seq] : c.seq_lens[seq] - n;
    for (int32_t i = 0; i < n; ++i)
      for (int32_t h = 0; h < c.q_heads; ++h) {
        const int32_t kv = h / s.group;
        const float* qv = c.q.data() + (static_cast<size_t>(q0 + i) * c.q_heads + h) * d;
        const int64_t pos = prefix + i;
        // (position, key, value) of every key this row may see.
        std::vector<std::pair<const float*, const float*>> keys;
        std::vector<int64_t> positions;
        for (int32_t t = 0; t < c.seq_lens[seq]; ++t) {
          const size_t at = ((static_cast<size_t>(seq) * max_tokens + t) * s.kv_heads + kv) * d;
          keys.emplace_back(dk.data() + at, dv.data() + at);
          positions.push_back(t);
        }
        if (fresh)
          for (int32_t j = 0; j < n; ++j) {
            const size_t at = (static_cast<size_t>(q0 + j) * s.kv_heads + kv) * d;
            keys.emplace_back(c.chunk_k.data() + at, c.chunk_v.data() + at);
            positions.push_back(prefix + j);
          }
        std::vector<double> logits;
        std::vector<size_t> used;
        for (size_t k = 0; k < keys.size(); ++k) {
          const int64_t t = positions[k];
          if (t > pos || (s.window > 0 && t <= pos - s.window)) continue;
          double dot = 0.0;
          for (int32_t e = 0; e < d; ++e) dot += static_cast<double>(qv[e]) * keys[k].first[e];
          double z = scale * dot;
          if (s.softcap > 0.0f) z = s.softcap * std::tanh(z / s.softcap);
          logits.push_back(z);
          used.push_back(k);
        }
        const size_t row = static_cast<size_t>(q0 + i) * c.q_heads + h;
        if (used.empty()) continue;
        const double m = *std::max_element(logits.begin(), logits.end());
        double sum = 0.0;
        std::vector<double> acc(d, 0.0);
        for (size_t u = 0; u < used.size(); ++u) {
          const double p = std::exp(logits[u] - m);
          sum += p;
          for (int32_t e = 0; e < d; ++e) acc[e] += p * keys[used[u]].second[e];
        }
        for (int32_t e = 0; e < d; ++e) out[row * d + e] = acc[e] / sum;
        lse[row] = m + std::log(sum);
      }
  }
}

void check_against_brute_force(const Spec& s) {
  SCOPED_TRACE(describe(s));
  const Case c = make_case(s);
  std::vector<float> out, lse;
  const cpu::PrefillAttentionArgs a = args_of(c, out, lse);
  const Status st = cpu::prefill_attention(a);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  std::vector<double> ref_out, ref_lse;
  brute_force(c, ref_out, ref_lse);
  const int32_t d = s.head_dim;
  double worst = 0.0;
  for (size_t row = 0; row < ref_lse.size(); ++row) {
    double num = 0.0, den = 0.0;
    for (int32_t e = 0; e < d; ++e) {
      const double diff = out[row * d + e] - ref_out[row * d + e];
      num += diff * diff;
      den += ref_out[row * d + e] * ref_out[row * d + e];
    }
    const double rel = std::sqrt(num / std::max(den, 1e-300));
    worst = std::max(worst, rel);
    ASSERT_LE(rel, 2e-5) << "row " << row;
    if (std::isinf(ref_lse[row])) {
      EXPECT_TRUE(std::isinf(lse[row]) && lse[row] < 0) << "row " << row;
    } else {
      EXPECT_NEAR(lse[row], ref_lse[row], 1e-5 * std::max(1.0, std::fabs(ref_lse[row]))) << "row " << row;
    }
  }
  EXPECT_LE(worst, 2e-5);
}

std::vector<Seq> sweep_seqs() {
  std::vector<Seq> seqs;
  for (int32_t prefix : {0, 1, 100})
    for (int32_t n : {1, 2, 5, 64}) seqs.push_back({prefix, n});
  seqs.push_back({7, 0});  // a sequence without queries between the others
  seqs.push_back({3, 2});
  return seqs;
}

TEST(CpuPrefill, MatchesBruteForce) {
  for (PrefillOrder order : {PrefillOrder::kAppended, PrefillOrder::kFresh})
    for (int32_t group : {1, 4})
      for (int32_t window : {0, 7})
        for (float softcap : {0.0f, 5.0f}) {
          Spec s;
          s.order = order;
          s.group = group;
          s.window = window;
          s.softcap = softcap;
          s.seqs = sweep_seqs();
          s.seed = 11 + group + window;
          check_against_brute_force(s);
        }
}

TEST(CpuPrefill, OtherFormatsAndScale) {
  Spec s;
  s.head_dim = 128;
  s.key_bits = 3;
  s.value_bits = 2;
  s.kv_heads = 1;
  s.group = 3;
  s.page_size = 5;  // pages of any size
  s.softmax_scale = 0.05f;
  s.seqs = {{40, 9}, {0, 3}, {13, 1}};
  for (PrefillOrder order : {PrefillOrder::kAppended, PrefillOrder::kFresh}) {
    s.order = order;
    check_against_brute_force(s);
  }
  s.window = 1;  // only itself
  check_against_brute_force(s);
}

// One query per sequence in kAppended is one decode step.
TEST(CpuPrefill, SingleQueryEqualsDecode) {
  Spec s;
  s.seqs = {{0, 1}, {30, 1}, {100, 1}};
  s.window = 20;
  s.softcap = 8.0f;
  const Case c = make_case(s);
  std::vector<float> out, lse;
  ASSERT_TRUE(cpu::prefill_attention(args_of(c, out, lse)).is_ok());
  std::vector<float> dout(out.size()), dlse(lse.size());
  cpu::DecodeAttentionArgs a;
  a.format = c.format;
  a.q = turboquant::tensor_view<const void*>(c.q.data(), DType::kF32, c.num_seqs, c.q_heads, s.head_dim);
  a.cache.pages = c.pool.data();
  a.cache.num_pages = c.num_pages;
  a.cache.layout = c.layout;
  a.cache.block_table = c.block_table.data();
  a.cache.max_pages_per_seq = c.max_pages;
  a.cache.seq_lens = c.seq_lens.data();
  a.cache.num_seqs = c.num_seqs;
  a.out = turboquant::tensor_view<void*>(dout.data(), DType::kF32, c.num_seqs, c.q_heads, s.head_dim);
  a.lse = dlse.data();
  a.sliding_window = s.window;
  a.logit_softcap = s.softcap;
  ASSERT_TRUE(cpu::decode_attention(a).is_ok());
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], dout[i], 1e-6) << i;
  for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], dlse[i], 1e-6) << i;
}

// ---- merge -----------------------------------------------------------------------------------------

TEST(CpuPrefill, MergeStates) {
  constexpr int32_t kRows = 5, kHeads = 3, kDim = 16;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> a(kRows * kHeads * kDim), b(a.size()), la(kRows * kHeads), lb(la.size());
  for (auto& x : a) x = normal(rng);
  for (auto& x : b) x = normal(rng);
  for (auto& x : la) x = 3.0f * normal(rng);
  for (auto& x : lb) x = 3.0f * normal(rng);
  la[1] = -kInf;                // only b
  lb[2] = -kInf;                // only a
  la[4] = lb[4] = -kInf;        // neither
  for (int j = 0; j < kDim; ++j) a[1 * kDim + j] = std::nanf("");  // an empty side is never read
  std::vector<float> out(a.size()), lse(la.size());
  cpu::MergeAttentionStatesArgs m;
  m.out_a = turboquant::tensor_view<const void*>(a.data(), DType::kF32, kRows, kHeads, kDim);
  m.lse_a = la.data();
  m.out_b = turboquant::tensor_view<const void*>(b.data(), DType::kF32, kRows, kHeads, kDim);
  m.lse_b = lb.data();
  m.out = turboquant::tensor_view<void*>(out.data(), DType::kF32, kRows, kHeads, kDim);
  m.lse = lse.data();
  ASSERT_TRUE(cpu::merge_attention_states(m).is_ok());
  for (int r = 0; r < kRows * kHeads; ++r) {
    const double mx = std::max<double>(la[r], lb[r]);
    if (std::isinf(mx)) {
      EXPECT_TRUE(std::isinf(lse[r]) && lse[r] < 0);
      for (int j = 0; j < kDim; ++j) EXPECT_EQ(out[r * kDim + j], 0.0f);
      continue;
    }
    const double wa = std::exp(la[r] - mx), wb = std::exp(lb[r] - mx);
    EXPECT_NEAR(lse[r], mx + std::log(wa + wb), 1e-5);
    for (int j = 0; j < kDim; ++j) {
      const double va = wa == 0.0 ? 0.0 : wa * a[r * kDim + j];
      EXPECT_NEAR(out[r * kDim + j], (va + wb * b[r * kDim + j]) / (wa + wb), 1e-5) << r << " " << j;
    }
  }
  // In place into a, half-precision b: same as out-of-place with b rounded.
  std::vector<uint16_t> bh(b.size());
  for (size_t i = 0; i < b.size(); ++i) bh[i] = turboquant::float_to_half_bits(b[i]);
  std::vector<float> b_round(b.size());
  for (size_t i = 0; i < b.size(); ++i) b_round[i] = turboquant::half_bits_to_float(bh[i]);
  std::vector<float> expected(a.size()), expected_lse(la.size());
  m.out_b = turboquant::tensor_view<const void*>(b_round.data(), DType::kF32, kRows, kHeads, kDim);
  m.out = turboquant::tensor_view<void*>(expected.data(), DType::kF32, kRows, kHeads, kDim);
  m.lse = expected_lse.data();
  ASSERT_TRUE(cpu::merge_attention_states(m).is_ok());
  m.out_b = turboquant::tensor_view<const void*>(bh.data(), DType::kF16, kRows, kHeads, kDim);
  m.out = turboquant::tensor_view<void*>(a.data(), DType::kF32, kRows, kHeads, kDim);
  m.lse = la.data();
  ASSERT_TRUE(cpu::merge_attention_states(m).is_ok());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], expected[i]) << i;
  for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], expected_lse[i]) << i;
}

// The kFresh result is the merge of the prefix-only and chunk-only results (what an engine does
// with two calls and merge_attention_states).
TEST(CpuPrefill, FreshIsMergeOfPrefixAndChunk) {
  Spec s;
  s.order = PrefillOrder::kFresh;
  s.seqs = {{50, 6}, {20, 3}};
  const Case c = make_case(s);
  std::vector<float> full_out, full_lse;
  ASSERT_TRUE(cpu::prefill_attention(args_of(c, full_out, full_lse)).is_ok());
  // Chunk only: a prefix of 0 (a sequence with an empty cache) gives the chunk's causal part.
  Case chunk_only = c;
  std::fill(chunk_only.seq_lens.begin(), chunk_only.seq_lens.end(), 0);
  std::vector<float> chunk_out, chunk_lse;
  ASSERT_TRUE(cpu::prefill_attention(args_of(chunk_only, chunk_out, chunk_lse)).is_ok());
  // Prefix only: kAppended over a cache holding the prefix with every query at the prefix end is
  // not expressible; instead use brute-force rows over the prefix via the decode reference
  // (one query per row at position P, which sees exactly the prefix).
  const int32_t d = s.head_dim;
  std::vector<float> prefix_out(full_out.size()), prefix_lse(full_lse.size());
  for (int32_t seq = 0; seq < c.num_seqs; ++seq) {
    const int32_t q0 = c.query_start[seq], n = c.query_start[seq + 1] - q0;
    for (int32_t i = 0; i < n; ++i) {
      cpu::DecodeAttentionArgs a;
      a.format = c.format;
      a.q = turboquant::tensor_view<const void*>(c.q.data() + static_cast<size_t>(q0 + i) * c.q_heads * d, DType::kF32,
                                                 1, c.q_heads, d);
      a.cache.pages = c.pool.data();
      a.cache.num_pages = c.num_pages;
      a.cache.layout = c.layout;
      a.cache.block_table = c.block_table.data() + static_cast<size_t>(seq) * c.max_pages;
      a.cache.max_pages_per_seq = c.max_pages;
      a.cache.seq_lens = c.seq_lens.data() + seq;
      a.cache.num_seqs = 1;
      a.out = turboquant::tensor_view<void*>(prefix_out.data() + static_cast<size_t>(q0 + i) * c.q_heads * d,
                                             DType::kF32, 1, c.q_heads, d);
      a.lse = prefix_lse.data() + static_cast<size_t>(q0 + i) * c.q_heads;
      ASSERT_TRUE(cpu::decode_attention(a).is_ok());
    }
  }
  std::vector<float> merged(full_out.size()), merged_lse(full_lse.size());
  cpu::MergeAttentionStatesArgs m;
  m.out_a = turboquant::tensor_view<const void*>(prefix_out.data(), DType::kF32, c.total, c.q_heads, d);
  m.lse_a = prefix_lse.data();
  m.out_b = turboquant::tensor_view<const void*>(chunk_out.data(), DType::kF32, c.total, c.q_heads, d);
  m.lse_b = chunk_lse.data();
  m.out = turboquant::tensor_view<void*>(merged.data(), DType::kF32, c.total, c.q_heads, d);
  m.lse = merged_lse.data();
  ASSERT_TRUE(cpu::merge_attention_states(m).is_ok());
  for (size_t i = 0; i < merged.size(); ++i) ASSERT_NEAR(merged[i], full_out[i], 2e-6) << i;
  for (size_t i = 0; i < merged_lse.size(); ++i) ASSERT_NEAR(merged_lse[i], full_lse[i], 2e-6) << i;
}

// ---- bad inputs ----------------------------------------------------------------------------------

struct BadCase {
  Case c;
  std::vector<float> out, lse;
  cpu::PrefillAttentionArgs args;
};

BadCase bad_base(PrefillOrder order) {
  Spec s;
  s.order = order;
  s.seqs = {{10, 3}, {0, 2}};
  BadCase b;
  b.c = make_case(s);
  b.args = args_of(b.c, b.out, b.lse);
  std::fill(b.out.begin(), b.out.end(), 42.0f);
  std::fill(b.lse.begin(), b.lse.end(), 42.0f);
  return b;
}

void expect_error(const BadCase& b, const cpu::PrefillAttentionArgs& a, StatusCode code, const std::string& needle) {
  const Status st = cpu::prefill_attention(a);
  EXPECT_EQ(st.code(), code) << st.to_string();
  EXPECT_NE(st.message().find(needle), std::string::npos) << st.to_string() << " (expected '" << needle << "')";
  for (float x : b.out) ASSERT_EQ(x, 42.0f) << "output written on error";
  for (float x : b.lse) ASSERT_EQ(x, 42.0f) << "lse written on error";
}

TEST(CpuPrefill, BadInputs) {
  for (PrefillOrder order : {PrefillOrder::kAppended, PrefillOrder::kFresh}) {
    SCOPED_TRACE(turboquant::to_string(order));
    BadCase b = bad_base(order);
    ASSERT_TRUE(cpu::prefill_attention(b.args).is_ok());
    std::fill(b.out.begin(), b.out.end(), 42.0f);
    std::fill(b.lse.begin(), b.lse.end(), 42.0f);
    {
      auto a = b.args;
      a.q.data = nullptr;
      expect_error(b, a, StatusCode::kInvalidArgument, "q.data = null");
    }
    {
      auto a = b.args;
      a.query_start = nullptr;
      expect_error(b, a, StatusCode::kInvalidArgument, "query_start = null");
    }
    {
      auto a = b.args;
      a.out.data = nullptr;
      expect_error(b, a, StatusCode::kInvalidArgument, "out.data = null");
    }
    {
      auto a = b.args;
      a.cache.pages = nullptr;
      expect_error(b, a, StatusCode::kInvalidArgument, "cache.pages = null");
    }
    {
      auto a = b.args;
      a.q.dim1 = 7;  // 7 heads over 2 KV heads
      a.q.stride0 = 7 * a.q.head_dim;
      expect_error(b, a, StatusCode::kInvalidArgument, "not a multiple of kv_heads");
    }
    {
      auto a = b.args;
      a.format.key.bits = 5;
      expect_error(b, a, StatusCode::kUnsupportedFormat, "key.bits = 5");
    }
    {
      auto a = b.args;
      a.order = static_cast<PrefillOrder>(7);
      expect_error(b, a, StatusCode::kInvalidArgument, "order = 7");
    }
    {
      auto a = b.args;
      a.max_query_len = 2;  // sequence 0 has 3 queries
      expect_error(b, a, StatusCode::kInvalidArgument, "beyond max_query_len = 2");
    }
    {
      auto a = b.args;
      a.max_query_len = 0;
      expect_error(b, a, StatusCode::kInvalidArgument, "max_query_len = 0");
    }
    {
      auto a = b.args;
      std::vector<int32_t> qs = {1, 3, 5};
      a.query_start = qs.data();
      expect_error(b, a, StatusCode::kInvalidArgument, "query_start[0] = 1");
    }
    {
      auto a = b.args;
      std::vector<int32_t> qs = {0, 3, 2};
      a.query_start = qs.data();
      expect_error(b, a, StatusCode::kInvalidArgument, "query_start[2] = 2 < query_start[1] = 3");
    }
    {
      auto a = b.args;
      std::vector<int32_t> qs = {0, 2, 4};  // total 4, q has 5 rows
      a.query_start = qs.data();
      expect_error(b, a, StatusCode::kInvalidArgument, "query_start[2] = 4 but q.dim0 (total_tokens) = 5");
    }
    {
      auto a = b.args;
      a.out.dim0 = 4;
      expect_error(b, a, StatusCode::kInvalidArgument, "out.dim0 = 4");
    }
    {
      auto a = b.args;
      a.sliding_window = -1;
      expect_error(b, a, StatusCode::kInvalidArgument, "sliding_window = -1");
    }
    {
      auto a = b.args;
      a.logit_softcap = -2.0f;
      expect_error(b, a, StatusCode::kInvalidArgument, "logit_softcap");
    }
    {
      auto a = b.args;
      std::vector<float> q(b.c.q);
      q[17] = std::nanf("");
      a.q.data = q.data();
      expect_error(b, a, StatusCode::kNonFinite, "q[0][0][17]");
    }
    {
      auto a = b.args;
      std::vector<int32_t> bt(b.c.block_table);
      bt[0] = 1000;
      a.cache.block_table = bt.data();
      expect_error(b, a, StatusCode::kOutOfRange, "cache.block_table[0][0] = 1000");
    }
    if (order == PrefillOrder::kAppended) {
      auto a = b.args;
      std::vector<int32_t> lens(b.c.seq_lens);
      lens[1] = 1;  // sequence 1 has 2 queries
      a.cache.seq_lens = lens.data();
      expect_error(b, a, StatusCode::kOutOfRange, "cache.seq_lens[1] = 1");
    } else {
      {
        auto a = b.args;
        a.chunk_keys.data = nullptr;
        expect_error(b, a, StatusCode::kInvalidArgument, "chunk_keys.data = null");
      }
      {
        auto a = b.args;
        a.chunk_values.dim1 = 1;
        expect_error(b, a, StatusCode::kInvalidArgument, "chunk_values.dim1 = 1");
      }
      {
        auto a = b.args;
        std::vector<float> v(b.c.chunk_v);
        v[3] = kInf;
        a.chunk_values.data = v.data();
        expect_error(b, a, StatusCode::kNonFinite, "chunk_values[0][0][3]");
      }
    }
  }
}

TEST(CpuPrefill, MergeBadInputs) {
  std::vector<float> a(8, 1.0f), b(8, 2.0f), out(8, 42.0f), la(2, 0.0f), lb(2, 0.0f), lse(2, 42.0f);
  cpu::MergeAttentionStatesArgs m;
  m.out_a = turboquant::tensor_view<const void*>(a.data(), DType::kF32, 2, 1, 4);
  m.lse_a = la.data();
  m.out_b = turboquant::tensor_view<const void*>(b.data(), DType::kF32, 2, 1, 4);
  m.lse_b = lb.data();
  m.out = turboquant::tensor_view<void*>(out.data(), DType::kF32, 2, 1, 4);
  m.lse = lse.data();
  auto expect_error = [&](const cpu::MergeAttentionStatesArgs& x, StatusCode code, const std::string& needle) {
    const Status st = cpu::merge_attention_states(x);
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.to_string();
    for (float v : out) ASSERT_EQ(v, 42.0f);
    for (float v : lse) ASSERT_EQ(v, 42.0f);
  };
  {
    auto x = m;
    x.lse_a = nullptr;
    expect_error(x, StatusCode::kInvalidArgument, "lse_a = null");
  }
  {
    auto x = m;
    x.out_b.dim0 = 1;
    expect_error(x, StatusCode::kInvalidArgument, "out_b.dim0 = 1");
  }
  {
    auto x = m;
    x.out.data = nullptr;
    expect_error(x, StatusCode::kInvalidArgument, "out.data = null");
  }
  {
    auto x = m;
    std::vector<float> bad = {0.0f, std::nanf("")};
    x.lse_b = bad.data();
    expect_error(x, StatusCode::kNonFinite, "lse_b[1]");
  }
  {
    auto x = m;
    std::vector<float> bad = {kInf, 0.0f};
    x.lse_a = bad.data();
    expect_error(x, StatusCode::kNonFinite, "lse_a[0]");
  }
}

// ---- the CUDA kernel's fragment maps, replayed on the host -------------------------------------------
// An emulation of ldmatrix.x4 (.trans) and mma.m16n8k16 per the PTX fragment layouts, driven by the
// kernel's own offset functions (kernels/prefill_fragments.hpp): one warp's S = Q K^T over a 32-token
// tile and O = P V must equal the direct products. Small integers keep everything exact.

namespace frag = turboquant::cuda::detail::prefill_fragments;
using Regs = std::vector<std::array<std::array<double, 2>, 4>>;  // [lane][register][half]

Regs ldmatrix_x4(const std::vector<double>& tile, const int (&offsets)[32], bool trans) {
  Regs out(32);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i)
      for (int e = 0; e < 2; ++e) {
        const int g = lane / 4, q = lane % 4;
        const int row = trans ? 2 * q + e : g, col = trans ? g : 2 * q + e;
        out[lane][i][e] = tile[static_cast<size_t>(offsets[8 * i + row] + col)];
      }
  return out;
}

// c[lane][4] += A B with A from a[lane][0..3], B from (b0, b1) = b[lane][r0], b[lane][r1].
void mma(std::vector<std::array<double, 4>>& c, const Regs& a, const Regs& b, int r0, int r1) {
  double A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, q = lane % 4;
    for (int e = 0; e < 2; ++e) {
      A[g][2 * q + e] = a[lane][0][e];
      A[g + 8][2 * q + e] = a[lane][1][e];
      A[g][8 + 2 * q + e] = a[lane][2][e];
      A[g + 8][8 + 2 * q + e] = a[lane][3][e];
      B[2 * q + e][g] = b[lane][r0][e];
      B[8 + 2 * q + e][g] = b[lane][r1][e];
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) {
      const int row = frag::acc_row(lane, e), col = frag::acc_col(lane, e);
      double sum = 0.0;
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
      c[lane][e] += sum;
    }
}

TEST(CpuPrefill, FragmentMaps) {
  for (int d : {64, 128, 256}) {
    SCOPED_TRACE(d);
    const int stride = d + 8, rows = 64, tokens = 32, warp = 2;
    std::mt19937 rng(d);
    std::uniform_int_distribution<int> small(-3, 3);
    std::vector<double> q(static_cast<size_t>(rows) * stride), k(static_cast<size_t>(tokens) * stride), v(k.size());
    for (auto& x : q) x = small(rng);
    for (auto& x : k) x = small(rng);
    for (auto& x : v) x = small(rng);
    // S = Q K^T: 4 n-tiles of 8 tokens.
    std::vector<std::vector<std::array<double, 4>>> s(4, std::vector<std::array<double, 4>>(32, {0, 0, 0, 0}));
    for (int kk = 0; kk < d / 16; ++kk) {
      int qo[32];
      for (int lane = 0; lane < 32; ++lane) qo[lane] = frag::q_offset(lane, warp, kk, stride);
      const Regs a = ldmatrix_x4(q, qo, false);
      for (int np = 0; np < 2; ++np) {
        int ko[32];
        for (int lane = 0; lane < 32; ++lane) ko[lane] = frag::k_offset(lane, np, kk, stride);
        const Regs b = ldmatrix_x4(k, ko, false);
        mma(s[2 * np], a, b, 0, 1);
        mma(s[2 * np + 1], a, b, 2, 3);
      }
    }
    std::vector<std::vector<double>> S(16, std::vector<double>(tokens, 0.0));
    for (int r = 0; r < 16; ++r)
      for (int t = 0; t < tokens; ++t)
        for (int c = 0; c < d; ++c)
          S[r][t] += q[static_cast<size_t>(warp * 16 + r) * stride + c] * k[static_cast<size_t>(t) * stride + c];
    for (int nt = 0; nt < 4; ++nt)
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 4; ++e)
          ASSERT_EQ(s[nt][lane][e], S[frag::acc_row(lane, e)][nt * 8 + frag::acc_col(lane, e)]) << nt << " " << lane;
    // O = P V with P = S (the A fragments of k-step j from n-tiles 2j, 2j + 1).
    std::vector<std::vector<std::array<double, 4>>> o(d / 8, std::vector<std::array<double, 4>>(32, {0, 0, 0, 0}));
    for (int j = 0; j < 2; ++j) {
      Regs a(32);
      for (int lane = 0; lane < 32; ++lane) {
        a[lane][0] = {s[2 * j][lane][0], s[2 * j][lane][1]};
        a[lane][1] = {s[2 * j][lane][2], s[2 * j][lane][3]};
        a[lane][2] = {s[2 * j + 1][lane][0], s[2 * j + 1][lane][1]};
        a[lane][3] = {s[2 * j + 1][lane][2], s[2 * j + 1][lane][3]};
      }
      for (int np = 0; np < d / 16; ++np) {
        int vo[32];
        for (int lane = 0; lane < 32; ++lane) vo[lane] = frag::v_offset(lane, j, np, stride);
        const Regs b = ldmatrix_x4(v, vo, true);
        mma(o[2 * np], a, b, 0, 1);
        mma(o[2 * np + 1], a, b, 2, 3);
      }
    }
    for (int nd = 0; nd < d / 8; ++nd)
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 4; ++e) {
          const int r = frag::acc_row(lane, e), c = nd * 8 + frag::acc_col(lane, e);
          double want = 0.0;
          for (int t = 0; t < tokens; ++t) want += S[r][t] * v[static_cast<size_t>(t) * stride + c];
          ASSERT_EQ(o[nd][lane][e], want) << nd << " " << lane << " " << e;
        }
  }
}

// The CUDA kernel's key ranges, replayed on the host: for random batches, every CTA (row tile) and
// part (prefix splits, the chunk part of kFresh) walks tile_range()'s tiles, skips the mask where
// tile_unmasked() says so, else masks with row_bounds(); every row must see each attended key
// exactly once and nothing else.
TEST(CpuPrefill, KeyRanges) {
  constexpr int kTile = 32;  // cuda::kPrefillTileTokens
  std::mt19937 rng(5);
  for (int trial = 0; trial < 800; ++trial) {
    const int kRows = trial % 2 == 0 ? 128 : 64;  // cuda::kPrefillRowsPerCta (128), and the round-1 CTAs
    const bool fresh = trial % 4 < 2;
    const int n = 1 + static_cast<int>(rng() % 150);
    const int group = 1 + static_cast<int>(rng() % 5);
    const int prefix = static_cast<int>(rng() % 400) * (trial % 7 == 0 ? 0 : 1);
    const int window = trial % 3 == 0 ? 0 : 1 + static_cast<int>(rng() % 90);
    const int splits = 1 + static_cast<int>(rng() % 9);
    const int len = fresh ? prefix : prefix + n;  // cached tokens
    SCOPED_TRACE("rows=" + std::to_string(kRows) + " fresh=" + std::to_string(fresh) + " n=" + std::to_string(n) +
                 " group=" + std::to_string(group) +
                 " prefix=" + std::to_string(prefix) + " window=" + std::to_string(window) +
                 " splits=" + std::to_string(splits));
    const int total_rows = n * group;
    // seen[row][source][t]: 0 = cache token t, 1 = chunk token t.
    std::vector<std::array<std::vector<int>, 2>> seen(static_cast<size_t>(total_rows));
    for (auto& r : seen) {
      r[0].assign(static_cast<size_t>(len), 0);
      r[1].assign(static_cast<size_t>(fresh ? n : 0), 0);  // kAppended: the chunk is in the cache
    }
    for (int tile = 0; tile * kRows < total_rows; ++tile) {
      const int rows = std::min(kRows, total_rows - tile * kRows);
      const int pos_min = prefix + (tile * kRows) / group, pos_max = prefix + (tile * kRows + rows - 1) / group;
      const int parts = splits + (fresh ? 1 : 0);
      for (int part = 0; part < parts; ++part) {
        const bool chunk = fresh && part == splits;
        const int key_base = chunk ? prefix : 0, kv_len = chunk ? n : len;
        const frag::TileRange range =
            frag::tile_range(pos_min, pos_max, window, key_base, kv_len, kTile, part, splits, !chunk);
        for (int t_tile = range.begin; t_tile < range.end; ++t_tile) {
          const int t0 = t_tile * kTile;
          const bool all_ok = t0 + kTile <= kv_len;
          const bool full = frag::tile_unmasked(all_ok, key_base + t0, kTile, pos_min, pos_max, window);
          for (int r = 0; r < rows; ++r) {
            const int flat = tile * kRows + r;
            int lo = 0, hi = 0;
            frag::row_bounds(static_cast<long long>(prefix) + flat / group, window, true, &lo, &hi);
            for (int t = t0; t < t0 + kTile; ++t) {
              const int kp = key_base + t;
              const bool inside = t < kv_len && kp >= lo && kp <= hi;
              if (full) ASSERT_TRUE(inside) << "unmasked tile holds a key row " << flat << " must not see";
              if (inside) ++seen[static_cast<size_t>(flat)][chunk ? 1 : 0][static_cast<size_t>(t)];
            }
          }
        }
      }
    }
    for (int flat = 0; flat < total_rows; ++flat) {
      const long long pos = prefix + flat / group;
      const long long lo = window > 0 ? std::max<long long>(0, pos - window + 1) : 0;
      for (int src = 0; src < 2; ++src)
        for (size_t t = 0; t < seen[static_cast<size_t>(flat)][src].size(); ++t) {
          const long long kp = (src == 1 ? prefix : 0) + static_cast<long long>(t);
          const int want = kp >= lo && kp <= pos ? 1 : 0;
          ASSERT_EQ(seen[static_cast<size_t>(flat)][src][t], want) << "row " << flat << " source " << src << " key " << t;
        }
    }
  }
}

}  // namespace

// The dequantiser's job map: every (token, segment) of a tile side exactly once, and the 8 lanes of
// each 16-byte store wavefront on 8 distinct 16-byte bank slots for each of a job's four stores
// (rows of head_dim + 8 halves, segments of 32 halves), at every head_dim.
TEST(CpuPrefill, SegmentMap) {
  constexpr int kTile = 32, kSegmentCoords = 32, kLanesPerWavefront = 8, kStoreBytes = 16, kBankBytes = 128;
  for (int head_dim : {64, 128, 256}) {
    SCOPED_TRACE("head_dim " + std::to_string(head_dim));
    const int segments = head_dim / kSegmentCoords, jobs = kTile * segments;
    const int row_bytes = (head_dim + 8) * 2, segment_bytes = kSegmentCoords * 2;
    std::vector<int> hits(static_cast<size_t>(jobs), 0);
    for (int s = 0; s < jobs; ++s) {
      int token = -1, c = -1;
      frag::segment_of(s, kTile, &token, &c);
      ASSERT_TRUE(token >= 0 && token < kTile && c >= 0 && c < segments) << s;
      ++hits[static_cast<size_t>(token * segments + c)];
    }
    for (int h : hits) ASSERT_EQ(h, 1);
    for (int first = 0; first < jobs; first += kLanesPerWavefront)
      for (int store = 0; store < segment_bytes / kStoreBytes; ++store) {
        std::vector<int> slots;
        for (int s = first; s < first + kLanesPerWavefront; ++s) {
          int token = 0, c = 0;
          frag::segment_of(s, kTile, &token, &c);
          slots.push_back((token * row_bytes + c * segment_bytes + store * kStoreBytes) % kBankBytes / kStoreBytes);
        }
        std::sort(slots.begin(), slots.end());
        EXPECT_TRUE(std::adjacent_find(slots.begin(), slots.end()) == slots.end())
            << "jobs " << first << ".." << first + kLanesPerWavefront - 1 << ", store " << store << ": bank conflict";
      }
  }
}

// The 128-byte swizzled tiles of the wgmma path (turboquant/device/swizzle.hpp): a bijection of
// (row, chunk) onto the tile's 16-byte slots; each 1024-byte group holds 8 whole rows of one atom
// with chunk c of row r at slot c ^ (r % 8) (what the hardware's 128B swizzle expects of a
// 1024-byte aligned tile); and the dequantiser's store wavefronts (segment_of) and the query rows'
// stores conflict-free on it, as on the padded rows.
TEST(CpuPrefill, SwizzledTiles) {
  constexpr int kSegmentCoords = 32, kChunkBytes = 16, kLanesPerWavefront = 8, kBankBytes = 128;
  for (int head_dim : {64, 128, 256}) {
    for (int rows : {32, 128}) {
      SCOPED_TRACE("head_dim " + std::to_string(head_dim) + ", rows " + std::to_string(rows));
      const int chunks = head_dim / 8, slots = rows * chunks;
      std::vector<int> hits(static_cast<size_t>(slots), 0);
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < chunks; ++c) {
          const int offset = turboquant::device::swizzled_chunk_offset(rows, r, c);
          ASSERT_EQ(offset % kChunkBytes, 0);
          ASSERT_TRUE(offset >= 0 && offset < slots * kChunkBytes) << r << " " << c;
          ++hits[static_cast<size_t>(offset / kChunkBytes)];
          // Address bits 7-9 are the row within its group of 8, bits 4-6 the swizzled chunk.
          EXPECT_EQ(offset / 128 % 8, r % 8);
          EXPECT_EQ(offset / 16 % 8, (c % 8) ^ (r % 8));
          EXPECT_EQ(offset / (rows * 128), c / 8);
        }
      for (int h : hits) ASSERT_EQ(h, 1);
    }
    // Dequantiser stores into a 32-token tile: 8 lanes of a wavefront on distinct bank slots.
    constexpr int kTile = 32;
    const int segments = head_dim / kSegmentCoords, jobs = kTile * segments;
    for (int first = 0; first < jobs; first += kLanesPerWavefront)
      for (int store = 0; store < kSegmentCoords / 8; ++store) {
        std::vector<int> banks;
        for (int s = first; s < first + kLanesPerWavefront; ++s) {
          int token = 0, c = 0;
          frag::segment_of(s, kTile, &token, &c);
          banks.push_back(turboquant::device::swizzled_chunk_offset(kTile, token, c * 4 + store) % kBankBytes /
                          kChunkBytes);
        }
        std::sort(banks.begin(), banks.end());
        EXPECT_TRUE(std::adjacent_find(banks.begin(), banks.end()) == banks.end())
            << "head_dim " << head_dim << ", jobs " << first << ": bank conflict";
      }
  }
}
