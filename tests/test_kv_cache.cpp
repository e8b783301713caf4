// Tests of PagedKVCache (kv_cache.hpp) on the CPU backend:
//   - a randomized run (fixed seed) of thousands of add / append / fork / truncate / free against
//     a plain model of the same cache (the fp32 rows each sequence holds, per layer), checking after
//     every step the decoded contents (cpu::decode of the sequence's pages against cpu::encode ->
//     cpu::decode of the model's rows, bit-exact; raw fp16 sides against fp16 rounding) and the page
//     accounting (used + free = total, reference counts = block-table references);
//   - out of pages leaves the cache exactly as before (block tables, lengths, counts, pool bytes);
//   - memory per token equals the layout's byte math; K4V4 at d = 128 is >= 3.7x smaller than fp16;
//   - append_batch equals one append per sequence; its page count is exact and checked first;
//   - attention against a float64 softmax over the decoded rows; bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "turboquant/cpu/codec.hpp"
#include "turboquant/kv_cache.hpp"

namespace {

using namespace turboquant;

// Expected decoded rows of one side: encode -> decode (dense) for a coded side, rounding to the
// raw dtype (fp16 | bf16) for an uncompressed one.
std::vector<float> expected_rows(const CodecSpec& c, const std::vector<float>& rows, int32_t kv_heads,
                                 DType raw = DType::kF16) {
  const int64_t n = static_cast<int64_t>(rows.size()) / c.head_dim;
  std::vector<float> out(rows.size());
  if (c.bits == 0) {
    for (size_t i = 0; i < rows.size(); ++i)
      out[i] = raw == DType::kF16 ? half_bits_to_float(float_to_half_bits(rows[i]))
                                  : bf16_bits_to_float(float_to_bf16_bits(rows[i]));
    return out;
  }
  std::vector<uint8_t> codes(static_cast<size_t>(n * c.code_bytes()));
  std::vector<float> scales(static_cast<size_t>(n) * 2);
  cpu::EncodeArgs e{};
  e.codec = c;
  e.input = tensor_view<const void*>(rows.data(), DType::kF32, n / kv_heads, kv_heads, c.head_dim);
  e.dense.codes = codes.data();
  e.dense.scales = scales.data();
  EXPECT_TRUE(cpu::encode(e).is_ok());
  cpu::DecodeArgs d{};
  d.codec = c;
  d.dense.codes = codes.data();
  d.dense.scales = scales.data();
  d.output = matrix_view<void*>(out.data(), DType::kF32, n, c.head_dim);
  EXPECT_TRUE(cpu::decode(d).is_ok());
  return out;
}

// The cache's rows of one side of one layer of one sequence, read back from the pages.
std::vector<float> cache_rows(const PagedKVCache& cache, int64_t id, int32_t layer, bool value_side) {
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
    const auto* base = static_cast<const uint8_t*>(cache.layer_pages(layer));
    for (int32_t t = 0; t < len; ++t)
      for (int32_t h = 0; h < kv; ++h) {
        const uint8_t* row = base + table[static_cast<size_t>(t / l.page_size)] * l.page_bytes +
                             layout::codes_offset(l, value_side, h, t % l.page_size);
        for (int32_t j = 0; j < d; ++j)
          out[(static_cast<size_t>(t) * kv + h) * d + j] = load_as_float(row, j, f.raw_dtype);
      }
    return out;
  }
  cpu::DecodeArgs a{};
  a.codec = c;
  a.paged.pages = cache.layer_pages(layer);
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

KVCacheConfig small_config(int64_t pages, DType raw = DType::kF16) {
  KVCacheConfig c;
  c.layers = 3;
  c.kv_heads = 2;
  c.head_dim = 64;
  c.page_size = 4;
  c.policy = policies::per_layer({{0, 0}, {4, 0}, {3, 2}});  // plain fp16, K only, K3V2
  c.budget_pages = pages;
  c.seed = 7;
  c.raw_dtype = raw;
  return c;
}

// The model: per sequence and layer, the fp32 rows appended (K and V) and their expected decode.
struct ModelSeq {
  std::vector<std::vector<float>> k, v, ek, ev;  // [layers][len * kv * d]
};

struct Snapshot {
  std::map<int64_t, std::vector<int32_t>> tables;
  std::map<int64_t, std::vector<int32_t>> lens;
  std::vector<int32_t> refs;
  int64_t free_pages = 0;
  std::vector<std::vector<uint8_t>> pools;
  bool operator==(const Snapshot& o) const {
    return tables == o.tables && lens == o.lens && refs == o.refs && free_pages == o.free_pages && pools == o.pools;
  }
};

Snapshot snapshot(const PagedKVCache& c, const std::map<int64_t, ModelSeq>& ids) {
  Snapshot s;
  for (const auto& [id, m] : ids) {
    (void)m;
    EXPECT_TRUE(c.block_table(id, &s.tables[id]).is_ok());
    for (int32_t l = 0; l < c.num_layers(); ++l) {
      int32_t len = 0;
      EXPECT_TRUE(c.layer_length(id, l, &len).is_ok());
      s.lens[id].push_back(len);
    }
  }
  for (int32_t p = 0; p < c.num_pages(); ++p) s.refs.push_back(c.ref_count(p));
  s.free_pages = c.pages_free();
  for (int32_t l = 0; l < c.num_layers(); ++l) {
    const auto* b = static_cast<const uint8_t*>(c.layer_pages(l));
    s.pools.emplace_back(b, b + c.num_pages() * c.layout(l).page_bytes);
  }
  return s;
}

void check_everything(const PagedKVCache& c, const std::map<int64_t, ModelSeq>& model, int step) {
  ASSERT_EQ(c.num_sequences(), model.size()) << "step " << step;
  std::vector<int32_t> refs(static_cast<size_t>(c.num_pages()), 0);
  const int32_t row = c.config().kv_heads * c.config().head_dim;
  for (const auto& [id, m] : model) {
    std::vector<int32_t> table;
    ASSERT_TRUE(c.block_table(id, &table).is_ok());
    size_t max_len = 0;
    for (int32_t l = 0; l < c.num_layers(); ++l) {
      const size_t len = m.k[static_cast<size_t>(l)].size() / static_cast<size_t>(row);
      max_len = std::max(max_len, len);
      int32_t got = -1;
      ASSERT_TRUE(c.layer_length(id, l, &got).is_ok());
      ASSERT_EQ(static_cast<size_t>(got), len) << "step " << step << " seq " << id << " layer " << l;
      ASSERT_EQ(cache_rows(c, id, l, false), m.ek[static_cast<size_t>(l)]) << "step " << step << " seq " << id << " layer " << l << " K";
      ASSERT_EQ(cache_rows(c, id, l, true), m.ev[static_cast<size_t>(l)]) << "step " << step << " seq " << id << " layer " << l << " V";
    }
    const size_t ps = static_cast<size_t>(c.config().page_size);
    ASSERT_EQ(table.size(), (max_len + ps - 1) / ps) << "step " << step;
    for (int32_t p : table) {
      ASSERT_GE(p, 0);
      ASSERT_LT(p, c.num_pages());
      ++refs[static_cast<size_t>(p)];
    }
  }
  int64_t used = 0;
  for (int32_t p = 0; p < c.num_pages(); ++p) {
    ASSERT_EQ(c.ref_count(p), refs[static_cast<size_t>(p)]) << "step " << step << " page " << p;
    used += refs[static_cast<size_t>(p)] > 0 ? 1 : 0;
  }
  ASSERT_EQ(c.pages_used(), used) << "step " << step;
  ASSERT_EQ(c.pages_used() + c.pages_free(), c.num_pages());
}

void randomized_run(DType raw, int steps) {
  const KVCacheConfig cfg = small_config(12, raw);
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(cfg, &cache).is_ok());
  std::mt19937_64 rng(20261128);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::map<int64_t, ModelSeq> model;
  const int32_t row = cfg.kv_heads * cfg.head_dim;
  int64_t next_id = 100;
  int oom = 0, cows = 0, forks = 0, truncs = 0, appends = 0, frees = 0;
  auto pick = [&]() {
    auto it = model.begin();
    std::advance(it, static_cast<long>(rng() % model.size()));
    return it->first;
  };
  for (int step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % 16);
    if (model.empty() || (op == 0 && model.size() < 8)) {
      const int64_t id = next_id++;
      ASSERT_TRUE(cache.add(id).is_ok());
      ModelSeq m;
      m.k.resize(static_cast<size_t>(cfg.layers));
      m.v = m.ek = m.ev = m.k;
      model[id] = m;
    } else if (op <= 10) {  // append n tokens to one layer (usually each layer in turn)
      const int64_t id = pick();
      const int32_t layer = static_cast<int32_t>(rng() % static_cast<uint64_t>(cfg.layers));
      const int32_t n = 1 + static_cast<int32_t>(rng() % (rng() % 4 == 0 ? 9 : 2));
      std::vector<float> k(static_cast<size_t>(n * row)), v(k.size());
      for (auto& x : k) x = normal(rng);
      for (auto& x : v) x = normal(rng);
      const Snapshot before = snapshot(cache, model);
      const Status st = cache.append(id, layer, tensor_view<const void*>(k.data(), DType::kF32, n, cfg.kv_heads, cfg.head_dim),
                                     tensor_view<const void*>(v.data(), DType::kF32, n, cfg.kv_heads, cfg.head_dim));
      if (st.code() == StatusCode::kOutOfMemory) {
        ++oom;
        ASSERT_TRUE(snapshot(cache, model) == before) << "step " << step << ": out of pages changed the cache";
      } else {
        ASSERT_TRUE(st.is_ok()) << st.to_string();
        ++appends;
        std::vector<int32_t> after;
        ASSERT_TRUE(cache.block_table(id, &after).is_ok());
        const auto& old = before.tables.at(id);
        for (size_t i = 0; i < old.size(); ++i) cows += after[i] != old[i] ? 1 : 0;  // copy-on-write
        ModelSeq& m = model[id];
        const auto L = static_cast<size_t>(layer);
        const Format& f = cache.format(layer);
        const auto ek = expected_rows(f.key, k, cfg.kv_heads, raw), ev = expected_rows(f.value, v, cfg.kv_heads, raw);
        m.k[L].insert(m.k[L].end(), k.begin(), k.end());
        m.v[L].insert(m.v[L].end(), v.begin(), v.end());
        m.ek[L].insert(m.ek[L].end(), ek.begin(), ek.end());
        m.ev[L].insert(m.ev[L].end(), ev.begin(), ev.end());
      }
    } else if (op == 11 && model.size() < 8) {
      const int64_t src = pick(), dst = next_id++;
      ASSERT_TRUE(cache.fork(src, dst).is_ok());
      ModelSeq copy = model[src];
      model[dst] = std::move(copy);
      ++forks;
    } else if (op == 12 || op == 13) {
      const int64_t id = pick();
      int32_t len = 0;
      ASSERT_TRUE(cache.length(id, &len).is_ok());
      const int32_t new_len = len - static_cast<int32_t>(rng() % static_cast<uint64_t>(std::min(len, 6) + 1));
      ASSERT_TRUE(cache.truncate(id, new_len).is_ok());
      for (auto* side : {&model[id].k, &model[id].v, &model[id].ek, &model[id].ev})
        for (auto& r : *side) r.resize(static_cast<size_t>(new_len * row));
      ++truncs;
    } else if (op == 14 || model.size() >= 8) {
      const int64_t id = pick();
      ASSERT_TRUE(cache.free(id).is_ok());
      model.erase(id);
      ++frees;
    }
    // op 15 (and an add or fork with 8 sequences present when not freeing): no change
    check_everything(cache, model, step);
    if (::testing::Test::HasFatalFailure()) return;
  }
  std::printf("appends %d (copy-on-write %d), out of pages %d, forks %d, truncates %d, frees %d\n", appends, cows, oom, forks, truncs, frees);
  // Every kind of operation happened, including running out of pages.
  EXPECT_GT(oom, 10);
  EXPECT_GT(forks, 50);
  EXPECT_GT(cows, 20);
  EXPECT_GT(truncs, 100);
  EXPECT_GT(appends, 500);
  EXPECT_GT(frees, 50);
  for (const auto& [id, m] : model) {
    (void)m;
    ASSERT_TRUE(cache.free(id).is_ok());
  }
  EXPECT_EQ(cache.pages_free(), cache.num_pages());
}

TEST(KVCache, RandomizedAgainstModel) { randomized_run(DType::kF16, 6000); }
TEST(KVCache, RandomizedAgainstModelBf16Raw) { randomized_run(DType::kBF16, 2000); }

TEST(KVCache, ForkSharesFullPagesAndCopiesPartialOnWrite) {
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(small_config(16), &cache).is_ok());
  const auto& cfg = cache.config();
  std::vector<float> k(static_cast<size_t>(6 * cfg.kv_heads * cfg.head_dim), 0.5f), v = k;
  ASSERT_TRUE(cache.add(1).is_ok());
  for (int32_t l = 0; l < cfg.layers; ++l)
    ASSERT_TRUE(cache.append(1, l, tensor_view<const void*>(k.data(), DType::kF32, 6, cfg.kv_heads, cfg.head_dim),
                             tensor_view<const void*>(v.data(), DType::kF32, 6, cfg.kv_heads, cfg.head_dim)).is_ok());
  EXPECT_EQ(cache.pages_used(), 2);
  ASSERT_TRUE(cache.fork(1, 2).is_ok());
  EXPECT_EQ(cache.pages_used(), 2);  // shared
  std::vector<int32_t> t1, t2;
  ASSERT_TRUE(cache.block_table(1, &t1).is_ok());
  EXPECT_EQ(cache.ref_count(t1[0]), 2);
  EXPECT_EQ(cache.ref_count(t1[1]), 2);
  // One token into the partial page of seq 2: that page (only) is copied.
  ASSERT_TRUE(cache.append(2, 0, tensor_view<const void*>(k.data(), DType::kF32, 1, cfg.kv_heads, cfg.head_dim),
                           tensor_view<const void*>(v.data(), DType::kF32, 1, cfg.kv_heads, cfg.head_dim)).is_ok());
  ASSERT_TRUE(cache.block_table(2, &t2).is_ok());
  EXPECT_EQ(t2[0], t1[0]);
  EXPECT_NE(t2[1], t1[1]);
  EXPECT_EQ(cache.ref_count(t1[0]), 2);
  EXPECT_EQ(cache.ref_count(t1[1]), 1);
  EXPECT_EQ(cache.pages_used(), 3);
}

TEST(KVCache, OutOfPagesLeavesCacheUnchanged) {
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(small_config(2), &cache).is_ok());
  const auto& cfg = cache.config();
  std::vector<float> k(static_cast<size_t>(9 * cfg.kv_heads * cfg.head_dim), 0.25f);
  ASSERT_TRUE(cache.add(1).is_ok());
  const Status st = cache.append(1, 0, tensor_view<const void*>(k.data(), DType::kF32, 9, cfg.kv_heads, cfg.head_dim),
                                 tensor_view<const void*>(k.data(), DType::kF32, 9, cfg.kv_heads, cfg.head_dim));
  EXPECT_EQ(st.code(), StatusCode::kOutOfMemory) << st.to_string();
  int32_t len = -1;
  ASSERT_TRUE(cache.layer_length(1, 0, &len).is_ok());
  EXPECT_EQ(len, 0);
  EXPECT_EQ(cache.pages_free(), 2);
  std::vector<int32_t> table;
  ASSERT_TRUE(cache.block_table(1, &table).is_ok());
  EXPECT_TRUE(table.empty());
}

TEST(KVCache, MemoryPerTokenIsTheLayoutMath) {
  KVCacheConfig c;
  c.layers = 4;
  c.kv_heads = 8;
  c.head_dim = 128;
  c.page_size = 16;
  c.policy = policies::compress_all(4, 4);
  c.budget_pages = 8;
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(c, &cache).is_ok());
  for (int32_t l = 0; l < c.layers; ++l) {
    const layout::PageLayout expect = layout::page_layout(make_format(128, 4, 4, layer_seed(c.seed, l)), 16, 8);
    EXPECT_EQ(cache.bytes_per_token(l), expect.token_bytes());
    EXPECT_EQ(cache.bytes_per_token(l), 8 * (64 + 2 + 64 + 2));
    EXPECT_EQ(cache.layout(l).page_bytes, expect.page_bytes);
    EXPECT_EQ(cache.plan().fp16_bytes_per_token(l), 8 * 2 * 128 * 2);
  }
  EXPECT_EQ(cache.pool_bytes(), 8 * 4 * cache.layout(0).page_bytes);
  EXPECT_GE(cache.compression_ratio(), 3.7);
  EXPECT_EQ(cache.tokens_that_fit(cache.pool_bytes()), cache.token_capacity());
  // Uncompressed layers: exactly fp16.
  c.policy = policies::uncompressed();
  KVCachePlan p;
  ASSERT_TRUE(plan_kv_cache(c, &p).is_ok());
  EXPECT_EQ(p.bytes_per_token(), p.fp16_bytes_per_token());
  EXPECT_DOUBLE_EQ(p.compression_ratio(), 1.0);
}

TEST(KVCache, Policies) {
  const auto b = policies::boundary_uncompressed(3, 2);
  for (int32_t l = 0; l < 8; ++l) {
    const LayerPolicy p = b(l, 8);
    const bool edge = l < 2 || l >= 6;
    EXPECT_EQ(p.key_bits, edge ? 0 : 3) << l;
    EXPECT_EQ(p.value_bits, edge ? 0 : 2) << l;
  }
  EXPECT_EQ(policies::keys_only(4)(3, 8).value_bits, 0);
  EXPECT_EQ(policies::values_only(2)(3, 8).key_bits, 0);
}

// Attention through the class against a float64 softmax over the decoded rows (GQA 2:1).
TEST(KVCache, AttentionMatchesDecodedRows) {
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(small_config(16), &cache).is_ok());
  const auto& cfg = cache.config();
  const int32_t d = cfg.head_dim, kv = cfg.kv_heads, qh = 4, n = 11;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(n * kv * d)), v(k.size()), q(static_cast<size_t>(qh * d)), out(q.size());
  for (auto* vec : {&k, &v, &q})
    for (auto& x : *vec) x = normal(rng);
  ASSERT_TRUE(cache.add(5).is_ok());
  for (int32_t l = 0; l < cfg.layers; ++l) {
    ASSERT_TRUE(cache.append(5, l, tensor_view<const void*>(k.data(), DType::kF32, n, kv, d),
                             tensor_view<const void*>(v.data(), DType::kF32, n, kv, d)).is_ok());
    ASSERT_TRUE(cache.attention(5, l, tensor_view<const void*>(q.data(), DType::kF32, 1, qh, d),
                                tensor_view<void*>(out.data(), DType::kF32, 1, qh, d)).is_ok());
    const auto ks = cache_rows(cache, 5, l, false), vs = cache_rows(cache, 5, l, true);
    for (int32_t h = 0; h < qh; ++h) {
      const int32_t g = h / (qh / kv);
      std::vector<double> logit(static_cast<size_t>(n));
      double m = -1e300;
      for (int32_t t = 0; t < n; ++t) {
        double dot = 0;
        for (int32_t j = 0; j < d; ++j) dot += double(q[size_t(h * d + j)]) * ks[size_t((t * kv + g) * d + j)];
        logit[size_t(t)] = dot / std::sqrt(double(d));
        m = std::max(m, logit[size_t(t)]);
      }
      double den = 0;
      std::vector<double> acc(size_t(d), 0.0);
      for (int32_t t = 0; t < n; ++t) {
        const double p = std::exp(logit[size_t(t)] - m);
        den += p;
        for (int32_t j = 0; j < d; ++j) acc[size_t(j)] += p * vs[size_t((t * kv + g) * d + j)];
      }
      for (int32_t j = 0; j < d; ++j)
        EXPECT_NEAR(out[size_t(h * d + j)], acc[size_t(j)] / den, 1e-4) << "layer " << l << " head " << h;
    }
  }
}

// A batch call equals one call per sequence (window, soft cap and lse passed through), on every
// kind of layer; sequences of different lengths, one of them empty.
TEST(KVCache, BatchAttentionEqualsPerSequence) {
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(small_config(16), &cache).is_ok());
  const auto& cfg = cache.config();
  const int32_t d = cfg.head_dim, kv = cfg.kv_heads, qh = 4;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t ids[3] = {7, 8, 9};
  const int32_t lens[3] = {9, 0, 14};
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(cache.add(ids[s]).is_ok());
    if (lens[s] == 0) continue;
    std::vector<float> k(static_cast<size_t>(lens[s] * kv * d)), v(k.size());
    for (auto* vec : {&k, &v})
      for (auto& x : *vec) x = normal(rng);
    for (int32_t l = 0; l < cfg.layers; ++l)
      ASSERT_TRUE(cache.append(ids[s], l, tensor_view<const void*>(k.data(), DType::kF32, lens[s], kv, d),
                               tensor_view<const void*>(v.data(), DType::kF32, lens[s], kv, d)).is_ok());
  }
  std::vector<float> q(static_cast<size_t>(3 * qh * d));
  for (auto& x : q) x = normal(rng);
  AttentionOptions opt;
  opt.sliding_window = 5;
  opt.logit_softcap = 3.0f;
  for (int32_t l = 0; l < cfg.layers; ++l) {
    std::vector<float> out(q.size()), lse(static_cast<size_t>(3 * qh));
    opt.lse = lse.data();
    ASSERT_TRUE(cache.attention(ids, 3, l, tensor_view<const void*>(q.data(), DType::kF32, 3, qh, d),
                                tensor_view<void*>(out.data(), DType::kF32, 3, qh, d), opt).is_ok());
    if (cache.is_compressed(l)) {  // what an engine does: its own block table, the kernel itself
      const int32_t max_pages = 4;
      std::vector<int32_t> table(3 * max_pages), seq_lens(3);
      ASSERT_TRUE(cache.fill_batch(ids, 3, l, max_pages, table.data(), seq_lens.data()).is_ok());
      cpu::DecodeAttentionArgs a{};
      a.format = cache.format(l);
      a.q = tensor_view<const void*>(q.data(), DType::kF32, 3, qh, d);
      a.cache = PagedCache{cache.layer_pages(l), cache.num_pages(), cache.layout(l), table.data(), max_pages,
                           seq_lens.data(), 3};
      std::vector<float> eng(q.size());
      a.out = tensor_view<void*>(eng.data(), DType::kF32, 3, qh, d);
      a.sliding_window = opt.sliding_window;
      a.logit_softcap = opt.logit_softcap;
      ASSERT_TRUE(cpu::decode_attention(a).is_ok());
      EXPECT_EQ(eng, out) << "layer " << l;
    }
    for (int s = 0; s < 3; ++s) {
      std::vector<float> one(static_cast<size_t>(qh * d)), one_lse(static_cast<size_t>(qh));
      AttentionOptions o1 = opt;
      o1.lse = one_lse.data();
      ASSERT_TRUE(cache.attention(ids[s], l, tensor_view<const void*>(q.data() + s * qh * d, DType::kF32, 1, qh, d),
                                  tensor_view<void*>(one.data(), DType::kF32, 1, qh, d), o1).is_ok());
      for (int32_t i = 0; i < qh * d; ++i) ASSERT_EQ(one[size_t(i)], out[size_t(s * qh * d + i)]) << l;
      for (int32_t h = 0; h < qh; ++h) {
        ASSERT_EQ(one_lse[size_t(h)], lse[size_t(s * qh + h)]);
        if (lens[s] == 0) EXPECT_TRUE(std::isinf(one_lse[size_t(h)]) && one_lse[size_t(h)] < 0);
      }
    }
  }
}

// append_batch (one token to each of several sequences, one call) leaves the cache exactly as
// the same appends one sequence at a time do: block tables, lengths, reference counts and pool
// bytes; with forked sequences in the batch (copy-on-write of shared pages).
TEST(KVCache, AppendBatchEqualsAppends) {
  PagedKVCache a, b;
  ASSERT_TRUE(PagedKVCache::create(small_config(24), &a).is_ok());
  ASSERT_TRUE(PagedKVCache::create(small_config(24), &b).is_ok());
  const auto& cfg = a.config();
  const int32_t row = cfg.kv_heads * cfg.head_dim;
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::map<int64_t, ModelSeq> ids;
  const int32_t prompt[3] = {5, 0, 8};
  for (int64_t id = 1; id <= 3; ++id) {
    ids[id] = ModelSeq{};
    for (PagedKVCache* c : {&a, &b}) ASSERT_TRUE(c->add(id).is_ok());
    const int32_t n = prompt[id - 1];
    if (n == 0) continue;
    std::vector<float> k(static_cast<size_t>(n * row));
    for (auto& x : k) x = normal(rng);
    for (int32_t l = 0; l < cfg.layers; ++l)
      for (PagedKVCache* c : {&a, &b})
        ASSERT_TRUE(c->append(id, l, tensor_view<const void*>(k.data(), DType::kF32, n, cfg.kv_heads, cfg.head_dim),
                              tensor_view<const void*>(k.data(), DType::kF32, n, cfg.kv_heads, cfg.head_dim)).is_ok());
  }
  for (PagedKVCache* c : {&a, &b}) ASSERT_TRUE(c->fork(1, 4).is_ok());
  ids[4] = ModelSeq{};
  const int64_t batch[4] = {4, 1, 2, 3};
  for (int step = 0; step < 6; ++step)
    for (int32_t l = 0; l < cfg.layers; ++l) {
      std::vector<float> k(static_cast<size_t>(4 * row)), v(k.size());
      for (auto& x : k) x = normal(rng);
      for (auto& x : v) x = normal(rng);
      ASSERT_TRUE(a.append_batch(batch, 4, l, tensor_view<const void*>(k.data(), DType::kF32, 4, cfg.kv_heads, cfg.head_dim),
                                 tensor_view<const void*>(v.data(), DType::kF32, 4, cfg.kv_heads, cfg.head_dim)).is_ok());
      for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(b.append(batch[i], l, tensor_view<const void*>(k.data() + i * row, DType::kF32, 1, cfg.kv_heads, cfg.head_dim),
                             tensor_view<const void*>(v.data() + i * row, DType::kF32, 1, cfg.kv_heads, cfg.head_dim)).is_ok());
      ASSERT_TRUE(snapshot(a, ids) == snapshot(b, ids)) << "step " << step << " layer " << l;
    }
}

// The pages of a batch are counted exactly (a shared page written by all its holders is copied
// once), checked before anything changes; bad batches change nothing.
TEST(KVCache, AppendBatchPagesAndBadInputs) {
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(small_config(3), &cache).is_ok());
  const auto& cfg = cache.config();
  const int32_t row = cfg.kv_heads * cfg.head_dim;
  std::vector<float> k(static_cast<size_t>(6 * row), 0.5f);
  const auto rows = [&](int64_t n) { return tensor_view<const void*>(k.data(), DType::kF32, n, cfg.kv_heads, cfg.head_dim); };
  ASSERT_TRUE(cache.add(1).is_ok());
  ASSERT_TRUE(cache.append(1, 0, rows(6), rows(6)).is_ok());  // pages of 4: 2 pages
  ASSERT_TRUE(cache.fork(1, 2).is_ok());
  ASSERT_EQ(cache.pages_free(), 1);
  const int64_t both[2] = {2, 1};
  ASSERT_TRUE(cache.append_batch(both, 2, 0, rows(2), rows(2)).is_ok());  // one copy of the shared page
  EXPECT_EQ(cache.pages_free(), 0);
  ASSERT_TRUE(cache.append_batch(both, 2, 0, rows(2), rows(2)).is_ok());  // position 7: own pages
  std::map<int64_t, ModelSeq> ids{{1, {}}, {2, {}}};
  const Snapshot before = snapshot(cache, ids);
  EXPECT_EQ(cache.append_batch(both, 2, 0, rows(2), rows(2)).code(), StatusCode::kOutOfMemory);  // 2 new pages
  const int64_t twice[2] = {1, 1}, unknown[2] = {1, 9};
  EXPECT_EQ(cache.append_batch(twice, 2, 1, rows(2), rows(2)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.append_batch(unknown, 2, 1, rows(2), rows(2)).code(), StatusCode::kNotFound);
  EXPECT_EQ(cache.append_batch(both, 2, 1, rows(3), rows(3)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.append_batch(both, 0, 1, rows(2), rows(2)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.append_batch(nullptr, 2, 1, rows(2), rows(2)).code(), StatusCode::kInvalidArgument);
  k[row + 3] = std::nanf("");
  EXPECT_EQ(cache.append_batch(both, 2, 1, rows(2), rows(2)).code(), StatusCode::kNonFinite);
  EXPECT_TRUE(snapshot(cache, ids) == before);
}

TEST(KVCache, BudgetInBytes) {
  KVCacheConfig c = small_config(0);
  KVCachePlan p;
  ASSERT_TRUE(plan_kv_cache(c, &p).is_ok());
  c.budget_bytes = 5 * p.page_bytes_all_layers + p.page_bytes_all_layers / 2;
  PagedKVCache cache;
  ASSERT_TRUE(PagedKVCache::create(c, &cache).is_ok());
  EXPECT_EQ(cache.num_pages(), 5);
  EXPECT_LE(cache.pool_bytes(), c.budget_bytes);
  EXPECT_EQ(cache.token_capacity(), 5 * c.page_size);
  EXPECT_EQ(cache.tokens_that_fit(c.budget_bytes), 5 * c.page_size);
}

TEST(KVCache, BadInputs) {
  KVCacheConfig bad = small_config(8);
  PagedKVCache cache;
  bad.head_dim = 96;
  EXPECT_EQ(PagedKVCache::create(bad, &cache).code(), StatusCode::kUnsupportedFormat);
  bad = small_config(8);
  bad.policy = policies::compress_all(5, 4);
  EXPECT_EQ(PagedKVCache::create(bad, &cache).code(), StatusCode::kUnsupportedFormat);
  bad = small_config(0);
  EXPECT_EQ(PagedKVCache::create(bad, &cache).code(), StatusCode::kInvalidArgument);
  bad = small_config(8);
  bad.layers = 0;
  EXPECT_EQ(PagedKVCache::create(bad, &cache).code(), StatusCode::kInvalidArgument);

  ASSERT_TRUE(PagedKVCache::create(small_config(8), &cache).is_ok());
  const auto& cfg = cache.config();
  std::vector<float> k(static_cast<size_t>(2 * 4 * 128), 1.0f);
  const auto kv = [&](int64_t n, int32_t heads, int32_t d) {
    return tensor_view<const void*>(k.data(), DType::kF32, n, heads, d);
  };
  EXPECT_EQ(cache.append(9, 0, kv(1, 2, 64), kv(1, 2, 64)).code(), StatusCode::kNotFound);
  EXPECT_EQ(cache.fork(9, 10).code(), StatusCode::kNotFound);
  EXPECT_EQ(cache.truncate(9, 0).code(), StatusCode::kNotFound);
  EXPECT_EQ(cache.free(9).code(), StatusCode::kNotFound);
  int32_t len = 0;
  EXPECT_EQ(cache.length(9, &len).code(), StatusCode::kNotFound);
  ASSERT_TRUE(cache.add(1).is_ok());
  EXPECT_EQ(cache.add(1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.append(1, 0, kv(1, 3, 64), kv(1, 3, 64)).code(), StatusCode::kInvalidArgument);   // kv_heads
  EXPECT_EQ(cache.append(1, 0, kv(1, 2, 128), kv(1, 2, 128)).code(), StatusCode::kInvalidArgument); // head_dim
  EXPECT_EQ(cache.append(1, 0, kv(2, 2, 64), kv(1, 2, 64)).code(), StatusCode::kInvalidArgument);   // n differs
  EXPECT_EQ(cache.append(1, 3, kv(1, 2, 64), kv(1, 2, 64)).code(), StatusCode::kOutOfRange);        // layer
  k[5] = std::nanf("");
  EXPECT_EQ(cache.append(1, 1, kv(1, 2, 64), kv(1, 2, 64)).code(), StatusCode::kNonFinite);
  k[5] = 1.0f;
  ASSERT_TRUE(cache.append(1, 1, kv(1, 2, 64), kv(1, 2, 64)).is_ok());
  EXPECT_EQ(cache.truncate(1, 1).code(), StatusCode::kOutOfRange);  // layer 0 has no token yet
  EXPECT_EQ(cache.fork(1, 1).code(), StatusCode::kInvalidArgument);
  std::vector<float> q(static_cast<size_t>(3 * 64)), out(q.size());
  EXPECT_EQ(cache.attention(1, 1, tensor_view<const void*>(q.data(), DType::kF32, 1, 3, 64),
                            tensor_view<void*>(out.data(), DType::kF32, 1, 3, 64)).code(),
            StatusCode::kInvalidArgument);  // q_heads not a multiple of kv_heads
  EXPECT_EQ(cache.attention(1, 0, tensor_view<const void*>(q.data(), DType::kF32, 1, 3, 64),
                            tensor_view<void*>(out.data(), DType::kF32, 1, 3, 64)).code(),
            StatusCode::kInvalidArgument);  // same on the plain fp16 layer
  (void)cfg;
}

TEST(KVCache, ModelCompatibility) {
  ModelAttentionConfig m;
  m.layers = 6;
  m.head_dim = 128;
  m.q_heads = 32;
  m.kv_heads = 8;
  m.sliding_window = 4096;
  m.logit_softcap = 50.0f;
  m.full_attention_layers = {true, false, true, false, true, false};
  CompatibilityReport r;
  ASSERT_TRUE(check_model_compatibility(m, &r).is_ok());
  EXPECT_TRUE(r.compatible);
  EXPECT_EQ(r.compressible_layers(), 3);
  EXPECT_FALSE(r.layers[1].reason.empty());
  EXPECT_EQ(policy_from_report(r)(1, 6).key_bits, 0);
  EXPECT_EQ(policy_from_report(r)(2, 6).key_bits, 4);
  m.head_dim = 96;
  ASSERT_TRUE(check_model_compatibility(m, &r).is_ok());
  EXPECT_FALSE(r.compatible);
  EXPECT_NE(r.layers[0].reason.find("head_dim = 96"), std::string::npos);
  m.full_attention_layers = {true};
  EXPECT_EQ(check_model_compatibility(m, &r).code(), StatusCode::kInvalidArgument);
}

// The README's worked example: an 8B model (36 layers, 8 KV heads, d = 128) at 128K context.
TEST(KVCache, WorkedMemoryExample) {
  KVCacheConfig c;
  c.layers = 36;
  c.kv_heads = 8;
  c.head_dim = 128;
  c.page_size = 16;
  const int64_t context = 128 * 1024;
  struct Row {
    const char* name;
    LayerPolicyFn policy;
  } rows[] = {{"fp16", policies::uncompressed()},
              {"K4V4", policies::compress_all(4, 4)},
              {"K3V3", policies::compress_all(3, 3)},
              {"K4V4, first/last 2 fp16", policies::boundary_uncompressed(4, 4)},
              {"K4 only (V fp16)", policies::keys_only(4)}};
  std::printf("%-26s %12s %14s %12s %9s %17s\n", "policy", "bytes/token", "bytes @128K", "GiB @128K", "vs fp16",
              "tokens in 16 GiB");
  for (const Row& row : rows) {
    c.policy = row.policy;
    KVCachePlan p;
    ASSERT_TRUE(plan_kv_cache(c, &p).is_ok());
    std::printf("%-26s %12lld %14lld %12.2f %8.2fx %17lld\n", row.name, static_cast<long long>(p.bytes_per_token()),
                static_cast<long long>(p.bytes_for_tokens(context)),
                static_cast<double>(p.bytes_for_tokens(context)) / double(int64_t{1} << 30), p.compression_ratio(),
                static_cast<long long>(p.tokens_that_fit(int64_t{16} << 30)));
  }
}

}  // namespace
