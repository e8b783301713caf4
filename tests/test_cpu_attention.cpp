// Tests of the CPU attention reference (cpu/attention.hpp) against independent oracles:
//   - brute force: every K and V decoded with cpu::decode (dense form) into float vectors, then
//     plain softmax attention in long double (same math, different order: ~1e-6 relative);
//   - uncompressed attention on the original fp32 inputs (error bounds, ordered by bits);
//   - GQA against MHA on KV heads repeated; scores() against log-sum-exp; every bad input path.
#include <gtest/gtest.h>

#include <algorithm>
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

namespace {

using namespace turboquant;

struct alignas(16) Block16 {
  uint8_t bytes[16];
};

using LD = long double;

// One layer's cache and a batch of decode queries, with the original fp32 inputs kept.
struct Problem {
  Format format{};
  int32_t d = 0, q_heads = 0, kv_heads = 0, page_size = 0, max_pages = 0;
  int32_t num_seqs = 0;
  int64_t num_pages = 0;
  std::vector<int32_t> lens;
  std::vector<std::vector<float>> k, v;  // per sequence [len, kv_heads, d]
  std::vector<float> q;                  // [num_seqs, q_heads, d]
  std::vector<Block16> pool;
  layout::PageLayout layout{};
  std::vector<int32_t> block_table;      // [num_seqs, max_pages]; unused entries are -1

  [[nodiscard]] uint8_t* pages() { return reinterpret_cast<uint8_t*>(pool.data()); }
  [[nodiscard]] PagedCache cache() const {
    PagedCache c{};
    c.pages = pool.data();
    c.num_pages = num_pages;
    c.layout = layout;
    c.block_table = block_table.data();
    c.max_pages_per_seq = max_pages;
    c.seq_lens = lens.data();
    c.num_seqs = num_seqs;
    return c;
  }
  [[nodiscard]] ConstView qview() const {
    return tensor_view<const void*>(q.data(), DType::kF32, num_seqs, q_heads, d);
  }
  [[nodiscard]] int32_t page_of(int32_t s, int32_t t) const {
    return block_table[static_cast<size_t>(s) * max_pages + t / page_size];
  }
};

std::vector<float> normal_vector(std::mt19937_64& rng, size_t n, float sigma = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

// Writes one side (K or V) of sequence s into the pool: cpu::encode through a slot mapping for a
// coded side, raw format.raw_dtype rows for an uncompressed one.
void write_side(Problem& p, int32_t s, bool value_side) {
  const int32_t len = p.lens[s];
  if (len == 0) return;
  const CodecSpec& codec = value_side ? p.format.value : p.format.key;
  const std::vector<float>& x = value_side ? p.v[s] : p.k[s];
  std::vector<int64_t> slots(len);
  for (int32_t t = 0; t < len; ++t)
    slots[t] = static_cast<int64_t>(p.page_of(s, t)) * p.page_size + t % p.page_size;
  if (codec.bits > 0) {
    cpu::EncodeArgs e{};
    e.codec = codec;
    e.input = tensor_view<const void*>(x.data(), DType::kF32, len, p.kv_heads, p.d);
    e.paged.pages = p.pages();
    e.paged.num_pages = p.num_pages;
    e.paged.layout = p.layout;
    e.paged.value_side = value_side;
    e.paged.slot_mapping = slots.data();
    const Status st = cpu::encode(e);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    return;
  }
  for (int32_t t = 0; t < len; ++t)
    for (int32_t h = 0; h < p.kv_heads; ++h) {
      uint8_t* row = p.pages() + static_cast<int64_t>(slots[t] / p.page_size) * p.layout.page_bytes +
                     layout::codes_offset(p.layout, value_side, h, t % p.page_size);
      for (int32_t j = 0; j < p.d; ++j)
        store_from_float(row, j, p.format.raw_dtype, x[(static_cast<size_t>(t) * p.kv_heads + h) * p.d + j]);
    }
}

// A problem with random normal inputs (fixed seed) and a shuffled, non-contiguous block table.
// The inputs depend on (seed, lens, heads, d) only, not on the format or the paging.
Problem make_problem(const Format& f, std::vector<int32_t> lens, int32_t q_heads, int32_t kv_heads,
                     int32_t page_size, uint64_t seed) {
  Problem p;
  p.format = f;
  p.d = f.head_dim();
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.page_size = page_size;
  p.lens = std::move(lens);
  p.num_seqs = static_cast<int32_t>(p.lens.size());
  std::mt19937_64 rng(seed);
  p.q = normal_vector(rng, static_cast<size_t>(p.num_seqs) * q_heads * p.d);
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    p.k.push_back(normal_vector(rng, static_cast<size_t>(p.lens[s]) * kv_heads * p.d));
    p.v.push_back(normal_vector(rng, static_cast<size_t>(p.lens[s]) * kv_heads * p.d));
  }
  // Paging: each sequence gets ceil(len / page_size) pages of a shuffled pool with spare pages,
  // and one spare block-table column (set to -1: never read).
  std::mt19937_64 page_rng(seed ^ 0x9a9e5ull);
  int32_t needed = 0;
  for (int32_t len : p.lens) {
    const int32_t n = (len + page_size - 1) / page_size;
    needed += n;
    p.max_pages = std::max(p.max_pages, n + 1);
  }
  p.num_pages = needed + 3;
  std::vector<int32_t> perm(static_cast<size_t>(p.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), page_rng);
  p.block_table.assign(static_cast<size_t>(p.num_seqs) * p.max_pages, -1);
  size_t next = 0;
  for (int32_t s = 0; s < p.num_seqs; ++s)
    for (int32_t i = 0; i * page_size < p.lens[s]; ++i)
      p.block_table[static_cast<size_t>(s) * p.max_pages + i] = perm[next++];
  p.layout = layout::page_layout(f, page_size, kv_heads);
  // Poison the pool: rows that are never written hold random bytes (NaN scales included).
  p.pool.resize(static_cast<size_t>(p.num_pages * p.layout.page_bytes / 16));
  std::uniform_int_distribution<int> byte(0, 255);
  for (Block16& b : p.pool)
    for (uint8_t& x : b.bytes) x = static_cast<uint8_t>(byte(page_rng));
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    write_side(p, s, false);
    write_side(p, s, true);
  }
  return p;
}

// The cached vectors decoded independently: codes and scales copied out of the pages into dense
// arrays and decoded by cpu::decode (dense form); raw sides read as stored. Per sequence
// [len, kv_heads, d] floats.
std::vector<std::vector<float>> decoded_side(const Problem& p, bool value_side) {
  const CodecSpec& codec = value_side ? p.format.value : p.format.key;
  std::vector<std::vector<float>> out(p.num_seqs);
  const auto* base = reinterpret_cast<const uint8_t*>(p.pool.data());
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int32_t len = p.lens[s];
    out[s].assign(static_cast<size_t>(len) * p.kv_heads * p.d, 0.0f);
    if (len == 0) continue;
    const int64_t rows = static_cast<int64_t>(len) * p.kv_heads;
    if (codec.bits == 0) {
      for (int32_t t = 0; t < len; ++t)
        for (int32_t h = 0; h < p.kv_heads; ++h) {
          const uint8_t* row = base + static_cast<int64_t>(p.page_of(s, t)) * p.layout.page_bytes +
                               layout::codes_offset(p.layout, value_side, h, t % p.page_size);
          for (int32_t j = 0; j < p.d; ++j)
            out[s][(static_cast<size_t>(t) * p.kv_heads + h) * p.d + j] = load_as_float(row, j, p.format.raw_dtype);
        }
      continue;
    }
    const int64_t cb = codec.code_bytes();
    const int32_t sb = norm_bytes(codec.norm);
    std::vector<uint8_t> codes(static_cast<size_t>(rows * cb));
    std::vector<float> scales32(static_cast<size_t>(rows));  // 4-byte aligned storage for either width
    auto* scale_bytes = reinterpret_cast<uint8_t*>(scales32.data());
    for (int32_t t = 0; t < len; ++t)
      for (int32_t h = 0; h < p.kv_heads; ++h) {
        const int64_t r = static_cast<int64_t>(t) * p.kv_heads + h;
        const uint8_t* page = base + static_cast<int64_t>(p.page_of(s, t)) * p.layout.page_bytes;
        std::memcpy(codes.data() + r * cb, page + layout::codes_offset(p.layout, value_side, h, t % p.page_size), cb);
        std::memcpy(scale_bytes + r * sb, page + layout::scales_offset(p.layout, value_side, h, t % p.page_size), sb);
      }
    cpu::DecodeArgs dec{};
    dec.codec = codec;
    dec.dense.codes = codes.data();
    dec.dense.scales = scales32.data();
    dec.output = matrix_view<void*>(out[s].data(), DType::kF32, rows, p.d);
    const Status st = cpu::decode(dec);
    EXPECT_TRUE(st.is_ok()) << st.to_string();
  }
  return out;
}

struct Options {
  double softmax_scale = 0.0;
  int32_t window = 0;
  double softcap = 0.0;
};

// Plain softmax attention in long double over given K / V vectors (per sequence [len, kv, d]).
void attention_brute_force(const Problem& p, const std::vector<float>& q,
                           const std::vector<std::vector<float>>& k,
                           const std::vector<std::vector<float>>& v, const Options& o,
                           std::vector<double>* out, std::vector<double>* lse) {
  const int32_t d = p.d, group = p.q_heads / p.kv_heads;
  const LD scale = o.softmax_scale == 0.0 ? 1.0L / std::sqrt(static_cast<LD>(d)) : static_cast<LD>(o.softmax_scale);
  out->assign(static_cast<size_t>(p.num_seqs) * p.q_heads * d, 0.0);
  lse->assign(static_cast<size_t>(p.num_seqs) * p.q_heads, -std::numeric_limits<double>::infinity());
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int32_t len = p.lens[s];
    const int32_t first = o.window > 0 ? std::max(0, len - o.window) : 0;
    for (int32_t h = 0; h < p.q_heads; ++h) {
      if (len == 0) continue;
      const int32_t kv = h / group;
      const float* qr = q.data() + (static_cast<size_t>(s) * p.q_heads + h) * d;
      std::vector<LD> logits;
      for (int32_t t = first; t < len; ++t) {
        const float* kr = k[s].data() + (static_cast<size_t>(t) * p.kv_heads + kv) * d;
        LD dot = 0;
        for (int32_t j = 0; j < d; ++j) dot += static_cast<LD>(qr[j]) * kr[j];
        LD z = scale * dot;
        if (o.softcap > 0) z = o.softcap * std::tanh(z / static_cast<LD>(o.softcap));
        logits.push_back(z);
      }
      const LD m = *std::max_element(logits.begin(), logits.end());
      LD denom = 0;
      std::vector<LD> acc(d, 0);
      for (int32_t t = first; t < len; ++t) {
        const LD w = std::exp(logits[t - first] - m);
        denom += w;
        const float* vr = v[s].data() + (static_cast<size_t>(t) * p.kv_heads + kv) * d;
        for (int32_t j = 0; j < d; ++j) acc[j] += w * vr[j];
      }
      for (int32_t j = 0; j < d; ++j)
        (*out)[(static_cast<size_t>(s) * p.q_heads + h) * d + j] = static_cast<double>(acc[j] / denom);
      (*lse)[static_cast<size_t>(s) * p.q_heads + h] = static_cast<double>(m + std::log(denom));
    }
  }
}

struct Result {
  std::vector<float> out;  // [num_seqs, q_heads, d]
  std::vector<float> lse;  // [num_seqs, q_heads]
  Status status;
};

Result run_attention(const Problem& p, const Options& o, ConstView q, bool pre_rotated = false) {
  Result r;
  r.out.assign(static_cast<size_t>(p.num_seqs) * p.q_heads * p.d, std::nanf(""));
  r.lse.assign(static_cast<size_t>(p.num_seqs) * p.q_heads, std::nanf(""));
  cpu::DecodeAttentionArgs a{};
  a.format = p.format;
  a.q = q;
  a.cache = p.cache();
  a.out = tensor_view<void*>(r.out.data(), DType::kF32, p.num_seqs, p.q_heads, p.d);
  a.lse = r.lse.data();
  a.softmax_scale = static_cast<float>(o.softmax_scale);
  a.sliding_window = o.window;
  a.logit_softcap = static_cast<float>(o.softcap);
  a.pre_rotated = pre_rotated;
  r.status = cpu::decode_attention(a);
  return r;
}
Result run_attention(const Problem& p, const Options& o = {}) { return run_attention(p, o, p.qview()); }

// Per row: ||got - want|| <= rel * ||want|| + abs_floor; lse within rel (absolute, lse is O(1..10)).
void expect_matches(const Problem& p, const Result& r, const std::vector<double>& want,
                    const std::vector<double>& want_lse, double rel, const char* what) {
  ASSERT_TRUE(r.status.is_ok()) << what << ": " << r.status.to_string();
  for (int32_t s = 0; s < p.num_seqs; ++s)
    for (int32_t h = 0; h < p.q_heads; ++h) {
      const size_t row = static_cast<size_t>(s) * p.q_heads + h;
      double diff = 0, norm = 0;
      for (int32_t j = 0; j < p.d; ++j) {
        const double e = r.out[row * p.d + j] - want[row * p.d + j];
        diff += e * e;
        norm += want[row * p.d + j] * want[row * p.d + j];
      }
      if (p.lens[s] == 0) {
        for (int32_t j = 0; j < p.d; ++j) EXPECT_EQ(r.out[row * p.d + j], 0.0f) << what;
        EXPECT_TRUE(std::isinf(r.lse[row]) && r.lse[row] < 0) << what << " lse = " << r.lse[row];
        continue;
      }
      EXPECT_LE(std::sqrt(diff), rel * std::sqrt(norm) + 1e-12)
          << what << ": seq " << s << " (len " << p.lens[s] << ") head " << h;
      EXPECT_NEAR(r.lse[row], want_lse[row], rel * std::max(1.0, std::fabs(want_lse[row])))
          << what << ": seq " << s << " head " << h;
    }
}

// The brute-force oracle over the decoded cache.
void check_against_brute_force(const Problem& p, const Options& o, const char* what, double rel = 2e-6) {
  const auto kd = decoded_side(p, false);
  const auto vd = decoded_side(p, true);
  std::vector<double> want, want_lse;
  attention_brute_force(p, p.q, kd, vd, o, &want, &want_lse);
  expect_matches(p, run_attention(p, o), want, want_lse, rel, what);
}

// ||out - exact|| / ||exact|| over the whole batch, exact = attention on the original inputs.
double error_vs_uncompressed(const Problem& p) {
  std::vector<double> exact, exact_lse;
  attention_brute_force(p, p.q, p.k, p.v, {}, &exact, &exact_lse);
  const Result r = run_attention(p);
  EXPECT_TRUE(r.status.is_ok()) << r.status.to_string();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < exact.size(); ++i) {
    diff += (r.out[i] - exact[i]) * (r.out[i] - exact[i]);
    norm += exact[i] * exact[i];
  }
  return std::sqrt(diff / norm);
}

Format format_with(int32_t d, int32_t kb, int32_t vb, ScaleMode scale = kDefaultScale,
                   NormStorage norm = kDefaultNorm, DType raw = DType::kF16) {
  Format f = make_format(d, kb, vb);
  f.key.scale = f.value.scale = scale;
  f.key.norm = f.value.norm = norm;
  f.raw_dtype = raw;
  return f;
}

// ---- (a) brute force over the decoded cache --------------------------------------------------

TEST(CpuAttention, MatchesBruteForceAcrossFormats) {
  const int32_t dims[] = {64, 128, 256};
  const int32_t bits[][2] = {{4, 4}, {3, 3}, {2, 2}, {1, 1}, {4, 2}, {2, 4}};
  uint64_t seed = 100;
  for (int32_t d : dims)
    for (const auto& b : bits) {
      const Format f = format_with(d, b[0], b[1]);
      const Problem p = make_problem(f, {5, 40, 17}, 4, 2, 16, ++seed);
      check_against_brute_force(p, {}, ("d" + std::to_string(d) + " K" + std::to_string(b[0]) + "V" +
                                        std::to_string(b[1])).c_str());
    }
}

TEST(CpuAttention, MatchesBruteForceAcrossScaleModesAndNormStorage) {
  const ScaleMode modes[] = {ScaleMode::kRawNorm, ScaleMode::kNormPreserving, ScaleMode::kLeastSquares};
  const NormStorage norms[] = {NormStorage::kF32, NormStorage::kF16};
  uint64_t seed = 200;
  for (ScaleMode m : modes)
    for (NormStorage n : norms) {
      const Problem p = make_problem(format_with(128, 3, 4, m, n), {33, 64}, 2, 2, 16, ++seed);
      check_against_brute_force(p, {}, to_string(m));
    }
}

// ---- (b) against uncompressed attention on the original inputs ------------------------------

TEST(CpuAttention, ErrorVsUncompressedShrinksWithBits) {
  const std::vector<int32_t> lens = {64, 256, 129};
  const double e4 = error_vs_uncompressed(make_problem(format_with(128, 4, 4), lens, 4, 2, 16, 7));
  const double e3 = error_vs_uncompressed(make_problem(format_with(128, 3, 3), lens, 4, 2, 16, 7));
  const double e2 = error_vs_uncompressed(make_problem(format_with(128, 2, 2), lens, 4, 2, 16, 7));
  const double k4_raw_v = error_vs_uncompressed(make_problem(format_with(128, 4, 0), lens, 4, 2, 16, 7));
  EXPECT_LT(e4, 0.15);
  EXPECT_LT(e4, e3);
  EXPECT_LT(e3, e2);
  EXPECT_LT(k4_raw_v, e4);  // fp16 values only add the keys' error
  RecordProperty("rel_error_k4v4", std::to_string(e4));
  RecordProperty("rel_error_k3v3", std::to_string(e3));
  RecordProperty("rel_error_k2v2", std::to_string(e2));
  RecordProperty("rel_error_k4_fp16v", std::to_string(k4_raw_v));
}

// ---- (c) GQA / MQA -----------------------------------------------------------------------------

// A q_heads = 8, kv_heads = 2 cache equals an MHA cache (8 KV heads) holding each KV head repeated
// for its group: the same codes, so the same outputs bit for bit.
TEST(CpuAttention, GqaEqualsMhaOnRepeatedKvHeads) {
  const Format f = format_with(128, 4, 3);
  const std::vector<int32_t> lens = {1, 37, 100};
  const Problem gqa = make_problem(f, lens, 8, 2, 16, 31);
  Problem mha = make_problem(f, lens, 8, 8, 64, 32);
  mha.q = gqa.q;
  for (int32_t s = 0; s < mha.num_seqs; ++s)
    for (int32_t t = 0; t < lens[s]; ++t)
      for (int32_t h = 0; h < 8; ++h)
        for (int32_t j = 0; j < 128; ++j) {
          const size_t to = (static_cast<size_t>(t) * 8 + h) * 128 + j;
          const size_t from = (static_cast<size_t>(t) * 2 + h / 4) * 128 + j;
          mha.k[s][to] = gqa.k[s][from];
          mha.v[s][to] = gqa.v[s][from];
        }
  for (int32_t s = 0; s < mha.num_seqs; ++s) {
    write_side(mha, s, false);
    write_side(mha, s, true);
  }
  const Options o{0.0, 0, 0.0};
  const Result a = run_attention(gqa, o), b = run_attention(mha, o);
  ASSERT_TRUE(a.status.is_ok()) << a.status.to_string();
  ASSERT_TRUE(b.status.is_ok()) << b.status.to_string();
  EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)));
  check_against_brute_force(gqa, o, "gqa 8/2");
}

TEST(CpuAttention, MqaMatchesBruteForce) {
  const Problem p = make_problem(format_with(64, 4, 4), {3, 70}, 6, 1, 16, 41);
  check_against_brute_force(p, {}, "mqa 6/1");
}

// ---- (d) sliding window and soft cap -----------------------------------------------------------

TEST(CpuAttention, SlidingWindowAndSoftcapMatchBruteForce) {
  const Problem p = make_problem(format_with(128, 4, 4), {0, 1, 7, 513}, 4, 2, 16, 51);
  const Options cases[] = {
      {0.0, 1, 0.0}, {0.0, 5, 0.0}, {0.0, 100, 0.0}, {0.0, 1000, 0.0},   // window only
      {0.0, 0, 5.0}, {0.0, 0, 0.5}, {0.3, 0, 2.0},                       // soft cap (and scale)
      {0.0, 64, 3.0}, {0.25, 7, 0.0},                                    // both
  };
  for (const Options& o : cases)
    check_against_brute_force(p, o, ("window " + std::to_string(o.window) + " softcap " +
                                     std::to_string(o.softcap) + " scale " + std::to_string(o.softmax_scale))
                                        .c_str());
}

// A window of w keys equals attention over a cache that holds only the last w keys.
TEST(CpuAttention, SlidingWindowEqualsTruncatedContext) {
  const Problem p = make_problem(format_with(128, 3, 2), {200}, 2, 2, 16, 52);
  const Result windowed = run_attention(p, {0.0, 50, 0.0});
  Problem tail = make_problem(format_with(128, 3, 2), {50}, 2, 2, 16, 53);
  tail.q = p.q;
  for (size_t i = 0; i < tail.k[0].size(); ++i) {
    tail.k[0][i] = p.k[0][150 * 2 * 128 + i];
    tail.v[0][i] = p.v[0][150 * 2 * 128 + i];
  }
  write_side(tail, 0, false);
  write_side(tail, 0, true);
  const Result truncated = run_attention(tail);
  ASSERT_TRUE(windowed.status.is_ok() && truncated.status.is_ok());
  for (size_t i = 0; i < windowed.out.size(); ++i) EXPECT_FLOAT_EQ(windowed.out[i], truncated.out[i]);
  for (size_t i = 0; i < windowed.lse.size(); ++i) EXPECT_FLOAT_EQ(windowed.lse[i], truncated.lse[i]);
}

// ---- (e) mixed lengths, page sizes, shuffled block tables ------------------------------------

TEST(CpuAttention, MixedLengthsAndPageSizes) {
  const std::vector<int32_t> lens = {0, 1, 7, 513};
  for (int32_t page_size : {16, 64}) {
    for (const auto& kv : {std::pair<int32_t, int32_t>{4, 4}, {3, 2}}) {
      const Format f = format_with(128, kv.first, kv.second, kDefaultScale,
                                   kv.first == 3 ? NormStorage::kF32 : NormStorage::kF16);
      const Problem p = make_problem(f, lens, 4, 2, page_size, 60 + page_size);
      // The tables really are shuffled and non-contiguous.
      bool contiguous = true;
      for (int32_t i = 1; i * page_size < 513; ++i)
        contiguous = contiguous && p.block_table[3 * p.max_pages + i] == p.block_table[3 * p.max_pages + i - 1] + 1;
      EXPECT_FALSE(contiguous);
      check_against_brute_force(p, {}, ("page_size " + std::to_string(page_size)).c_str());
    }
  }
}

// ---- (f) context length 0 --------------------------------------------------------------------

TEST(CpuAttention, EmptyContextGivesZerosAndMinusInfinityLse) {
  const Problem p = make_problem(format_with(128, 4, 4), {0, 0, 3}, 4, 4, 16, 71);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<uint16_t> raw(static_cast<size_t>(3 * 4 * 128 * 2), 0xabcd);  // poison
    std::vector<float> lse(12, 7.0f);
    cpu::DecodeAttentionArgs a{};
    a.format = p.format;
    a.q = p.qview();
    a.cache = p.cache();
    a.out = tensor_view<void*>(raw.data(), dt, 3, 4, 128);
    a.lse = lse.data();
    ASSERT_TRUE(cpu::decode_attention(a).is_ok());
    for (int64_t s = 0; s < 2; ++s)
      for (int32_t h = 0; h < 4; ++h) {
        for (int32_t j = 0; j < 128; ++j) EXPECT_EQ(load_as_float(raw.data(), a.out.offset(s, h) + j, dt), 0.0f);
        EXPECT_EQ(lse[s * 4 + h], -std::numeric_limits<float>::infinity());
      }
    for (int32_t h = 0; h < 4; ++h) EXPECT_TRUE(std::isfinite(lse[8 + h]));
  }
}

// ---- (g) scores() and the log-sum-exp -----------------------------------------------------------

std::vector<float> run_scores(const Problem& p, int32_t max_context, float scale, ConstView q,
                              bool pre_rotated, Status* st) {
  std::vector<float> out(static_cast<size_t>(p.num_seqs) * p.q_heads * max_context, -12345.0f);
  cpu::ScoresArgs a{};
  a.format = p.format;
  a.q = q;
  a.cache = p.cache();
  a.scores = out.data();
  a.max_context = max_context;
  a.softmax_scale = scale;
  a.pre_rotated = pre_rotated;
  *st = cpu::scores(a);
  return out;
}

TEST(CpuAttention, ScoresMatchBruteForceDotsAndLeaveTheTailUntouched) {
  for (const auto& kb : {4, 2, 0}) {
    const Problem p = make_problem(format_with(128, kb, kb == 0 ? 4 : kb), {0, 1, 7, 100}, 4, 2, 16, 80 + kb);
    const auto kd = decoded_side(p, false);
    for (float scale : {0.0f, 0.5f}) {
      Status st;
      const int32_t max_context = 120;
      const std::vector<float> sc = run_scores(p, max_context, scale, p.qview(), false, &st);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      const LD sm = scale == 0.0f ? 1.0L / std::sqrt(128.0L) : scale;
      for (int32_t s = 0; s < p.num_seqs; ++s)
        for (int32_t h = 0; h < p.q_heads; ++h) {
          const float* row = sc.data() + (static_cast<size_t>(s) * p.q_heads + h) * max_context;
          const float* qr = p.q.data() + (static_cast<size_t>(s) * p.q_heads + h) * 128;
          for (int32_t t = 0; t < max_context; ++t) {
            if (t >= p.lens[s]) {
              EXPECT_EQ(row[t], -12345.0f);
              continue;
            }
            const float* kr = kd[s].data() + (static_cast<size_t>(t) * 2 + h / 2) * 128;
            LD dot = 0, qn = 0, kn = 0;
            for (int32_t j = 0; j < 128; ++j) {
              dot += static_cast<LD>(qr[j]) * kr[j];
              qn += static_cast<LD>(qr[j]) * qr[j];
              kn += static_cast<LD>(kr[j]) * kr[j];
            }
            EXPECT_NEAR(row[t], static_cast<double>(sm * dot),
                        static_cast<double>(1e-6L * sm * std::sqrt(qn * kn)))
                << "key bits " << kb << " seq " << s << " head " << h << " t " << t;
          }
        }
    }
  }
}

TEST(CpuAttention, LseEqualsLogSumExpOfSoftcappedScores) {
  const Problem p = make_problem(format_with(128, 4, 3), {1, 7, 300}, 8, 2, 16, 90);
  for (double cap : {0.0, 4.0}) {
    Status st;
    const std::vector<float> sc = run_scores(p, 300, 0.0f, p.qview(), false, &st);
    ASSERT_TRUE(st.is_ok());
    const Result r = run_attention(p, {0.0, 0, cap});
    ASSERT_TRUE(r.status.is_ok());
    for (int32_t s = 0; s < p.num_seqs; ++s)
      for (int32_t h = 0; h < p.q_heads; ++h) {
        const float* row = sc.data() + (static_cast<size_t>(s) * p.q_heads + h) * 300;
        std::vector<double> z(row, row + p.lens[s]);
        if (cap > 0)
          for (double& x : z) x = cap * std::tanh(x / cap);
        const double m = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double x : z) sum += std::exp(x - m);
        EXPECT_NEAR(r.lse[s * p.q_heads + h], m + std::log(sum), 1e-5) << "cap " << cap;
      }
  }
}

// ---- (h) K-only layers and raw keys -----------------------------------------------------------

TEST(CpuAttention, UncompressedSidesMatchBruteForce) {
  const struct {
    int32_t kb, vb;
    DType raw;
  } cases[] = {{4, 0, DType::kF16}, {2, 0, DType::kBF16}, {0, 4, DType::kF16}, {0, 3, DType::kBF16}};
  uint64_t seed = 300;
  for (const auto& c : cases) {
    const Problem p = make_problem(format_with(128, c.kb, c.vb, kDefaultScale, kDefaultNorm, c.raw),
                                   {0, 9, 130}, 4, 2, 16, ++seed);
    const std::string what = "K" + std::to_string(c.kb) + "V" + std::to_string(c.vb) + " raw " + to_string(c.raw);
    check_against_brute_force(p, {}, what.c_str());
    check_against_brute_force(p, {0.0, 20, 3.0}, (what + " window+cap").c_str());
  }
}

// ---- dtypes, strides, pre-rotated queries -------------------------------------------------------

TEST(CpuAttention, QueryAndOutputDtypesAndStrides) {
  const Problem p = make_problem(format_with(128, 4, 4), {5, 50}, 4, 2, 16, 400);
  for (DType qt : {DType::kF16, DType::kBF16}) {
    // Queries stored in 16 bits equal f32 queries holding the same (rounded) values.
    std::vector<uint16_t> q16(p.q.size());
    std::vector<float> rounded(p.q.size());
    for (size_t i = 0; i < p.q.size(); ++i) {
      store_from_float(q16.data(), static_cast<int64_t>(i), qt, p.q[i]);
      rounded[i] = load_as_float(q16.data(), static_cast<int64_t>(i), qt);
    }
    const Result a = run_attention(p, {}, tensor_view<const void*>(q16.data(), qt, 2, 4, 128));
    const Result b = run_attention(p, {}, tensor_view<const void*>(rounded.data(), DType::kF32, 2, 4, 128));
    ASSERT_TRUE(a.status.is_ok() && b.status.is_ok());
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
  }
  // A padded, head-strided query view gives the same result as the dense one.
  std::vector<float> padded(static_cast<size_t>(2) * 1000, 99.0f);
  for (int32_t s = 0; s < 2; ++s)
    for (int32_t h = 0; h < 4; ++h)
      for (int32_t j = 0; j < 128; ++j) padded[s * 1000 + h * 200 + j] = p.q[(s * 4 + h) * 128 + j];
  const Result dense = run_attention(p);
  const Result strided = run_attention(p, {}, tensor_view<const void*>(padded.data(), DType::kF32, 2, 4, 128, 1000, 200));
  ASSERT_TRUE(strided.status.is_ok());
  EXPECT_EQ(dense.out, strided.out);
  // Outputs in 16 bits are the f32 outputs rounded once.
  for (DType ot : {DType::kF16, DType::kBF16}) {
    std::vector<uint16_t> o16(dense.out.size());
    cpu::DecodeAttentionArgs a{};
    a.format = p.format;
    a.q = p.qview();
    a.cache = p.cache();
    a.out = tensor_view<void*>(o16.data(), ot, 2, 4, 128);
    ASSERT_TRUE(cpu::decode_attention(a).is_ok());  // lse = nullptr is allowed
    for (size_t i = 0; i < o16.size(); ++i) {
      std::vector<uint16_t> one(1);
      store_from_float(one.data(), 0, ot, dense.out[i]);
      EXPECT_EQ(o16[i], one[0]) << i;
    }
  }
}

TEST(CpuAttention, PreRotatedQueriesMatch) {
  for (int32_t kb : {4, 0}) {
    const Problem p = make_problem(format_with(128, kb, 4), {3, 77}, 4, 2, 16, 410 + kb);
    std::vector<float> rq = p.q;
    ASSERT_TRUE(cpu::rotate(p.format.key.signs, tensor_view<void*>(rq.data(), DType::kF32, 2, 4, 128), false).is_ok());
    const ConstView rv = tensor_view<const void*>(rq.data(), DType::kF32, 2, 4, 128);
    const Result a = run_attention(p);
    const Result b = run_attention(p, {}, rv, true);
    ASSERT_TRUE(a.status.is_ok() && b.status.is_ok());
    std::vector<double> want(a.out.begin(), a.out.end()), want_lse(a.lse.begin(), a.lse.end());
    expect_matches(p, b, want, want_lse, 2e-6, "pre-rotated");
    Status st1, st2;
    const auto s1 = run_scores(p, 80, 0.0f, p.qview(), false, &st1);
    const auto s2 = run_scores(p, 80, 0.0f, rv, true, &st2);
    ASSERT_TRUE(st1.is_ok() && st2.is_ok());
    for (size_t i = 0; i < s1.size(); ++i) EXPECT_NEAR(s1[i], s2[i], 1e-5);
  }
}

// ---- (i) bad inputs: each path returns its code, names the argument, writes nothing -----------

constexpr float kSentinel = -31337.0f;

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    p_ = make_problem(format_with(128, 4, 4), {3, 20, 0}, 4, 2, 16, 500);
    out_.assign(static_cast<size_t>(3) * 4 * 128, kSentinel);
    lse_.assign(12, kSentinel);
    scores_.assign(static_cast<size_t>(3) * 4 * 32, kSentinel);
    a_.format = p_.format;
    a_.q = p_.qview();
    a_.cache = p_.cache();
    a_.out = tensor_view<void*>(out_.data(), DType::kF32, 3, 4, 128);
    a_.lse = lse_.data();
    s_.format = p_.format;
    s_.q = p_.qview();
    s_.cache = p_.cache();
    s_.scores = scores_.data();
    s_.max_context = 32;
  }
  void TearDown() override {
    for (float x : out_) ASSERT_EQ(x, kSentinel) << "out was written";
    for (float x : lse_) ASSERT_EQ(x, kSentinel) << "lse was written";
    for (float x : scores_) ASSERT_EQ(x, kSentinel) << "scores were written";
  }
  // Checks decode_attention (and, when `both`, scores with the same change) fail as expected.
  void expect_attention(StatusCode code, const std::string& names) {
    const Status st = cpu::decode_attention(a_);
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(names), std::string::npos) << "message: " << st.message();
  }
  void expect_scores(StatusCode code, const std::string& names) {
    const Status st = cpu::scores(s_);
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(names), std::string::npos) << "message: " << st.message();
  }
  // Applies `change` to both argument sets and expects both to fail the same way.
  template <typename F>
  void expect_both(F change, StatusCode code, const std::string& names) {
    change(a_.format, a_.q, a_.cache);
    change(s_.format, s_.q, s_.cache);
    expect_attention(code, names);
    expect_scores(code, names);
  }

  Problem p_;
  std::vector<float> out_, lse_, scores_;
  cpu::DecodeAttentionArgs a_{};
  cpu::ScoresArgs s_{};
};

TEST_F(BadInput, ValidArgumentsPass) {
  // The fixture's arguments are valid (unused block-table entries hold -1): run on copies so the
  // sentinel check in TearDown still applies to the fixture's buffers.
  std::vector<float> out(out_.size()), lse(lse_.size()), sc(scores_.size());
  cpu::DecodeAttentionArgs a = a_;
  a.out.data = out.data();
  a.lse = lse.data();
  cpu::ScoresArgs s = s_;
  s.scores = sc.data();
  EXPECT_TRUE(cpu::decode_attention(a).is_ok());
  EXPECT_TRUE(cpu::scores(s).is_ok());
}

TEST_F(BadInput, FormatBits) {
  expect_both([](Format& f, ConstView&, PagedCache&) { f.key.bits = 5; }, StatusCode::kUnsupportedFormat,
              "format.key.bits = 5");
}
TEST_F(BadInput, FormatHeadDimMismatch) {
  expect_both([](Format& f, ConstView&, PagedCache&) { f.value.head_dim = 64; }, StatusCode::kInvalidArgument,
              "format.key.head_dim = 128");
}
TEST_F(BadInput, FormatNothingCompressed) {
  expect_both([](Format& f, ConstView&, PagedCache&) { f.key.bits = f.value.bits = 0; },
              StatusCode::kUnsupportedFormat, "format.key.bits = 0");
}
TEST_F(BadInput, QueryNull) {
  expect_both([](Format&, ConstView& q, PagedCache&) { q.data = nullptr; }, StatusCode::kInvalidArgument,
              "q.data = null");
}
TEST_F(BadInput, QueryDtype) {
  expect_both([](Format&, ConstView& q, PagedCache&) { q.dtype = static_cast<DType>(9); },
              StatusCode::kUnsupportedFormat, "q.dtype = 9");
}
TEST_F(BadInput, QueryHeadDim) {
  expect_both([](Format&, ConstView& q, PagedCache&) { q.head_dim = 64; }, StatusCode::kInvalidArgument,
              "q.head_dim = 64");
}
TEST_F(BadInput, QueryRowsOverlap) {
  expect_both([](Format&, ConstView& q, PagedCache&) { q.stride1 = 100; }, StatusCode::kInvalidArgument,
              "q.stride1 = 100");
}
TEST_F(BadInput, QueryBatchMismatch) {
  expect_both([](Format&, ConstView& q, PagedCache&) { q.dim0 = 2; }, StatusCode::kInvalidArgument,
              "q.dim0 = 2 but cache.num_seqs = 3");
}
TEST_F(BadInput, QueryHeadsNotAMultipleOfKvHeads) {
  // 3 query heads over 2 KV heads (a view of the first 3 of 4 heads).
  expect_both([](Format&, ConstView& q, PagedCache&) { q.dim1 = 3; }, StatusCode::kInvalidArgument,
              "q_heads = q.dim1 = 3: not a multiple of kv_heads = cache.layout.kv_heads = 2");
}
TEST_F(BadInput, QueryNonFinite) {
  std::vector<float> q = p_.q;
  q[(1 * 4 + 2) * 128 + 5] = std::nanf("");
  a_.q.data = q.data();
  s_.q.data = q.data();
  expect_attention(StatusCode::kNonFinite, "q[1][2][5] = nan");
  expect_scores(StatusCode::kNonFinite, "q[1][2][5] = nan");
  q[(1 * 4 + 2) * 128 + 5] = 0.0f;
  q[(2 * 4 + 3) * 128 + 127] = -std::numeric_limits<float>::infinity();
  expect_attention(StatusCode::kNonFinite, "q[2][3][127] = -inf");
  expect_scores(StatusCode::kNonFinite, "q[2][3][127] = -inf");
}
TEST_F(BadInput, OutNull) {
  a_.out.data = nullptr;
  expect_attention(StatusCode::kInvalidArgument, "out.data = null");
}
TEST_F(BadInput, OutDtype) {
  a_.out.dtype = static_cast<DType>(7);
  expect_attention(StatusCode::kUnsupportedFormat, "out.dtype = 7");
}
TEST_F(BadInput, OutBatchMismatch) {
  a_.out.dim0 = 2;
  expect_attention(StatusCode::kInvalidArgument, "out.dim0 = 2 but cache.num_seqs = 3");
}
TEST_F(BadInput, OutHeadsMismatch) {
  a_.out.dim1 = 2;
  expect_attention(StatusCode::kInvalidArgument, "out.dim1 = 2 but q.dim1 (q_heads) = 4");
}
TEST_F(BadInput, OutMisaligned) {
  a_.out.data = reinterpret_cast<uint8_t*>(out_.data()) + 1;
  expect_attention(StatusCode::kMisaligned, "out.data");
}
TEST_F(BadInput, LseMisaligned) {
  a_.lse = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(lse_.data()) + 2);
  expect_attention(StatusCode::kMisaligned, "lse = ");
}
TEST_F(BadInput, PagesNull) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.pages = nullptr; }, StatusCode::kInvalidArgument,
              "cache.pages = null");
}
TEST_F(BadInput, PagesMisaligned) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.pages = static_cast<const uint8_t*>(c.pages) + 8; },
              StatusCode::kMisaligned, "cache.pages = ");
}
TEST_F(BadInput, NumPages) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.num_pages = 0; }, StatusCode::kInvalidArgument,
              "cache.num_pages = 0");
}
TEST_F(BadInput, PageSize) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.layout.page_size = 0; }, StatusCode::kInvalidArgument,
              "cache.layout.page_size = 0");
}
TEST_F(BadInput, KvHeads) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.layout.kv_heads = -1; }, StatusCode::kInvalidArgument,
              "cache.layout.kv_heads = -1");
}
TEST_F(BadInput, LayoutOfAnotherFormat) {
  // A K3V4 layout handed with a K4V4 format.
  expect_both([](Format&, ConstView&, PagedCache& c) { c.layout = layout::page_layout(format_with(128, 3, 4), 16, 2); },
              StatusCode::kInvalidArgument,
              "cache.layout.key_row_bytes = 48 but layout::page_layout(format, page_size = 16, kv_heads = 2)"
              ".key_row_bytes = 64");
}
TEST_F(BadInput, LayoutFieldTampered) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.layout.page_bytes += 16; }, StatusCode::kInvalidArgument,
              "cache.layout.page_bytes = ");
}
TEST_F(BadInput, LayoutOfAnotherPageSize) {
  // page_size changed without recomputing the offsets.
  expect_both([](Format&, ConstView&, PagedCache& c) { c.layout.page_size = 32; }, StatusCode::kInvalidArgument,
              "cache.layout.key_scales_offset = ");
}
TEST_F(BadInput, BlockTableNull) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.block_table = nullptr; }, StatusCode::kInvalidArgument,
              "cache.block_table = null");
}
TEST_F(BadInput, SeqLensNull) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.seq_lens = nullptr; }, StatusCode::kInvalidArgument,
              "cache.seq_lens = null");
}
TEST_F(BadInput, NumSeqs) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.num_seqs = 0; }, StatusCode::kInvalidArgument,
              "cache.num_seqs = 0");
}
TEST_F(BadInput, MaxPagesPerSeq) {
  expect_both([](Format&, ConstView&, PagedCache& c) { c.max_pages_per_seq = 0; }, StatusCode::kInvalidArgument,
              "cache.max_pages_per_seq = 0");
}
TEST_F(BadInput, SeqLenNegative) {
  std::vector<int32_t> lens = p_.lens;
  lens[1] = -1;
  a_.cache.seq_lens = s_.cache.seq_lens = lens.data();
  expect_attention(StatusCode::kOutOfRange, "cache.seq_lens[1] = -1");
  expect_scores(StatusCode::kOutOfRange, "cache.seq_lens[1] = -1");
}
TEST_F(BadInput, SeqLenBeyondPages) {
  std::vector<int32_t> lens = p_.lens;
  lens[2] = p_.max_pages * 16 + 1;
  a_.cache.seq_lens = s_.cache.seq_lens = lens.data();
  const std::string msg = "cache.seq_lens[2] = " + std::to_string(lens[2]) + ": beyond max_pages_per_seq";
  expect_attention(StatusCode::kOutOfRange, msg);
  expect_scores(StatusCode::kOutOfRange, msg);
}
TEST_F(BadInput, SeqLenBeyondMaxContext) {
  s_.max_context = 19;  // sequence 1 has 20 tokens
  expect_scores(StatusCode::kOutOfRange, "cache.seq_lens[1] = 20: beyond max_context = 19");
}
TEST_F(BadInput, BlockTableEntryOutOfRange) {
  std::vector<int32_t> table = p_.block_table;
  table[1 * p_.max_pages + 1] = static_cast<int32_t>(p_.num_pages);  // second page of sequence 1
  a_.cache.block_table = s_.cache.block_table = table.data();
  const std::string msg = "cache.block_table[1][1] = " + std::to_string(p_.num_pages);
  expect_attention(StatusCode::kOutOfRange, msg);
  expect_scores(StatusCode::kOutOfRange, msg);
  table[1 * p_.max_pages + 1] = p_.block_table[1 * p_.max_pages + 1];
  table[0] = -2;
  expect_attention(StatusCode::kOutOfRange, "cache.block_table[0][0] = -2");
  expect_scores(StatusCode::kOutOfRange, "cache.block_table[0][0] = -2");
}
TEST_F(BadInput, SoftmaxScale) {
  for (float bad : {std::nanf(""), -0.5f, std::numeric_limits<float>::infinity()}) {
    a_.softmax_scale = s_.softmax_scale = bad;
    const std::string msg = "softmax_scale = " + detail::to_text(bad);
    expect_attention(StatusCode::kInvalidArgument, msg);
    expect_scores(StatusCode::kInvalidArgument, msg);
  }
}
TEST_F(BadInput, LogitSoftcap) {
  for (float bad : {std::nanf(""), -1.0f, std::numeric_limits<float>::infinity()}) {
    a_.logit_softcap = bad;
    expect_attention(StatusCode::kInvalidArgument, "logit_softcap = " + detail::to_text(bad));
  }
}
TEST_F(BadInput, SlidingWindowNegative) {
  a_.sliding_window = -3;
  expect_attention(StatusCode::kInvalidArgument, "sliding_window = -3");
}
TEST_F(BadInput, ScoresNull) {
  s_.scores = nullptr;
  expect_scores(StatusCode::kInvalidArgument, "scores = null");
}
TEST_F(BadInput, ScoresMisaligned) {
  s_.scores = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(scores_.data()) + 1);
  expect_scores(StatusCode::kMisaligned, "scores = ");
}
TEST_F(BadInput, MaxContext) {
  s_.max_context = 0;
  expect_scores(StatusCode::kInvalidArgument, "max_context = 0");
}

}  // namespace
