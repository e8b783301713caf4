// examples/02: a decode loop over a synthetic multi-layer model with PagedKVCache. Every sequence
// gets a random prompt, then every decode step appends the new token's K/V to every layer and
// attends with a random query. Prints the cache memory against fp16 (the class's accounting) and
// the attention error against an uncompressed fp32 reference computed on the host for the same
// tokens (relative error per step over all layers, sequences and heads: max and mean).
//
// GPU path (built with CUDA and a device present): the class on its CUDA backend
// (cuda::create_kv_cache: pools in device memory, one stream): per layer and step one
// append_batch (cuda::encode of the new token of every sequence) and one attention
// (cuda::decode_attention). Otherwise: the CPU backend (append + attention) with smaller sizes.
//
//   ./02_decode_loop [--cpu]          (--cpu forces the CPU backend)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "turboquant/kv_cache.hpp"

#if defined(TQ_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "turboquant/cuda/kv_cache.hpp"
#endif

namespace tq = turboquant;

namespace {

struct Model {
  int32_t layers, kv_heads, q_heads, d, num_seqs, prompt, steps, page_size;
};

// Random fp16 rows [n, heads, d] and their fp32 values (the reference sees what the cache sees).
void random_half(std::mt19937& rng, size_t n, std::vector<uint16_t>* h) {
  std::normal_distribution<float> normal;
  h->resize(n);
  for (auto& x : *h) x = tq::float_to_half_bits(normal(rng));
}

// The uncompressed reference: K/V history per (layer, seq) in fp32 [t, kv_heads, d].
struct Reference {
  Model m;
  std::vector<std::vector<float>> k, v;  // [layers * num_seqs]
  explicit Reference(const Model& model)
      : m(model), k(size_t(model.layers) * model.num_seqs), v(k.size()) {}
  void append(int32_t layer, int32_t seq, const uint16_t* kh, const uint16_t* vh, int64_t tokens) {
    auto& kk = k[size_t(layer) * m.num_seqs + seq];
    auto& vv = v[size_t(layer) * m.num_seqs + seq];
    const int64_t n = tokens * m.kv_heads * m.d;
    for (int64_t i = 0; i < n; ++i) kk.push_back(tq::half_bits_to_float(kh[i]));
    for (int64_t i = 0; i < n; ++i) vv.push_back(tq::half_bits_to_float(vh[i]));
  }
  // q [q_heads, d] fp16 -> out [q_heads, d] fp32, softmax(q k / sqrt(d)) v.
  void attend(int32_t layer, int32_t seq, const uint16_t* qh, float* out) const {
    const auto& kk = k[size_t(layer) * m.num_seqs + seq];
    const auto& vv = v[size_t(layer) * m.num_seqs + seq];
    const int64_t len = static_cast<int64_t>(kk.size()) / (int64_t(m.kv_heads) * m.d);
    const int32_t group = m.q_heads / m.kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(m.d));
    std::vector<float> q(m.d), p(static_cast<size_t>(len)), acc(m.d);
    for (int32_t h = 0; h < m.q_heads; ++h) {
      const int32_t g = h / group;
      for (int32_t j = 0; j < m.d; ++j) q[j] = tq::half_bits_to_float(qh[int64_t(h) * m.d + j]);
      float mx = -INFINITY;
      for (int64_t t = 0; t < len; ++t) {
        const float* kr = kk.data() + (t * m.kv_heads + g) * m.d;
        float s = 0;
        for (int32_t j = 0; j < m.d; ++j) s += q[j] * kr[j];
        p[t] = s * scale;
        mx = std::max(mx, p[t]);
      }
      float sum = 0;
      for (int64_t t = 0; t < len; ++t) sum += (p[t] = std::exp(p[t] - mx));
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = 0; t < len; ++t) {
        const float* vr = vv.data() + (t * m.kv_heads + g) * m.d;
        const float w = p[t] / sum;
        for (int32_t j = 0; j < m.d; ++j) acc[j] += w * vr[j];
      }
      std::copy(acc.begin(), acc.end(), out + int64_t(h) * m.d);
    }
  }
};

struct ErrorStats {
  double max = 0, sum = 0;
  int32_t steps = 0;
  void add(double e) {
    max = std::max(max, e);
    sum += e;
    ++steps;
  }
};

#define TQ_EX_CHECK(expr)                                                    \
  do {                                                                       \
    const tq::Status st_ = (expr);                                           \
    if (!st_.is_ok()) {                                                      \
      fmt::print(stderr, "{} failed: {}\n", #expr, st_.to_string());           \
      return 1;                                                              \
    }                                                                        \
  } while (0)

tq::KVCacheConfig cache_config(const Model& m) {
  tq::KVCacheConfig cfg;
  cfg.layers = m.layers;
  cfg.kv_heads = m.kv_heads;
  cfg.head_dim = m.d;
  cfg.page_size = m.page_size;
  cfg.policy = tq::policies::compress_all(4, 4);
  const int32_t pages_per_seq = (m.prompt + m.steps + m.page_size - 1) / m.page_size;
  cfg.budget_pages = int64_t{m.num_seqs} * pages_per_seq;
  return cfg;
}

int create_cache(const Model& m, tq::PagedKVCache* cache) {
  TQ_EX_CHECK(tq::PagedKVCache::create(cache_config(m), cache));
  for (int32_t s = 0; s < m.num_seqs; ++s) TQ_EX_CHECK(cache->add(s));
  return 0;
}

void print_header(const Model& m, const char* backend) {
  fmt::print("backend: {}\nmodel: {} layers, {} KV heads, {} q heads, d = {}, page_size = {}; {} sequences, "
             "{}-token prompt + {} decode steps; policy compress_all(K4, V4)\n",
             backend, m.layers, m.kv_heads, m.q_heads, m.d, m.page_size, m.num_seqs, m.prompt, m.steps);
}

void print_summary(const tq::PagedKVCache& cache, const Model& m, const ErrorStats& err, double seconds) {
  const int64_t tokens = int64_t{m.num_seqs} * (m.prompt + m.steps);
  const int64_t bpt = cache.bytes_per_token();
  const int64_t fp16_bpt = cache.plan().fp16_bytes_per_token();
  const int64_t page_bytes = cache.plan().page_bytes_all_layers;
  fmt::print("memory: {} B/token (all layers, K+V) vs fp16 {} B/token: {:.2f}x smaller\n", bpt, fp16_bpt,
             cache.compression_ratio());
  fmt::print("        {} tokens cached: {:.2f} MiB packed ({} pages used of {}, {:.2f} MiB in pages) vs "
             "{:.2f} MiB fp16\n",
             tokens, tokens * bpt / 1048576.0, cache.pages_used(), cache.num_pages(),
             cache.pages_used() * page_bytes / 1048576.0, tokens * fp16_bpt / 1048576.0);
  fmt::print("attention error vs fp32 uncompressed reference, relative L2 per step over {} steps: "
             "max {:.3e}, mean {:.3e}  ({:.2f} s)\n",
             err.steps, err.max, err.sum / std::max(1, err.steps), seconds);
}

// ---- CPU backend: cache.append + cache.attention ----
int run_cpu(const Model& m) {
  print_header(m, "CPU (PagedKVCache::append + PagedKVCache::attention)");
  const auto t0 = std::chrono::steady_clock::now();
  tq::PagedKVCache cache;
  if (create_cache(m, &cache) != 0) return 1;
  Reference ref(m);
  std::mt19937 rng(2026);
  const int64_t row = int64_t{m.kv_heads} * m.d;
  std::vector<uint16_t> k, v, q;
  // Prefill: the whole prompt of each sequence, layer by layer.
  for (int32_t l = 0; l < m.layers; ++l)
    for (int32_t s = 0; s < m.num_seqs; ++s) {
      random_half(rng, size_t(m.prompt) * row, &k);
      random_half(rng, size_t(m.prompt) * row, &v);
      TQ_EX_CHECK(cache.append(s, l, tq::tensor_view(static_cast<const void*>(k.data()), tq::DType::kF16, m.prompt, m.kv_heads, m.d),
                               tq::tensor_view(static_cast<const void*>(v.data()), tq::DType::kF16, m.prompt, m.kv_heads, m.d)));
      ref.append(l, s, k.data(), v.data(), m.prompt);
    }
  ErrorStats err;
  std::vector<int64_t> ids(m.num_seqs);
  for (int32_t s = 0; s < m.num_seqs; ++s) ids[s] = s;
  const int64_t qn = int64_t{m.num_seqs} * m.q_heads * m.d;
  std::vector<float> out(qn), expect(qn);
  for (int32_t step = 0; step < m.steps; ++step) {
    double e2 = 0, n2 = 0;
    for (int32_t l = 0; l < m.layers; ++l) {
      random_half(rng, size_t(m.num_seqs) * row, &k);
      random_half(rng, size_t(m.num_seqs) * row, &v);
      random_half(rng, size_t(qn), &q);
      for (int32_t s = 0; s < m.num_seqs; ++s) {
        const uint16_t* ks = k.data() + s * row;
        const uint16_t* vs = v.data() + s * row;
        TQ_EX_CHECK(cache.append(s, l, tq::tensor_view(static_cast<const void*>(ks), tq::DType::kF16, 1, m.kv_heads, m.d),
                                 tq::tensor_view(static_cast<const void*>(vs), tq::DType::kF16, 1, m.kv_heads, m.d)));
        ref.append(l, s, ks, vs, 1);
      }
      TQ_EX_CHECK(cache.attention(ids.data(), m.num_seqs, l,
                                  tq::tensor_view(static_cast<const void*>(q.data()), tq::DType::kF16, m.num_seqs, m.q_heads, m.d),
                                  tq::tensor_view(static_cast<void*>(out.data()), tq::DType::kF32, m.num_seqs, m.q_heads, m.d)));
      for (int32_t s = 0; s < m.num_seqs; ++s)
        ref.attend(l, s, q.data() + int64_t{s} * m.q_heads * m.d, expect.data() + int64_t{s} * m.q_heads * m.d);
      for (int64_t i = 0; i < qn; ++i) {
        const double diff = double(out[i]) - expect[i];
        e2 += diff * diff;
        n2 += double(expect[i]) * expect[i];
      }
    }
    err.add(std::sqrt(e2 / n2));
    if (step == 0 || step == m.steps - 1 || (step + 1) % 16 == 0)
      fmt::print("step {:3d}: context {:4d}, relative error {:.3e}\n", step, m.prompt + step + 1, std::sqrt(e2 / n2));
  }
  print_summary(cache, m, err, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return err.max < 0.25 ? 0 : 1;
}

#if defined(TQ_HAVE_CUDA)
#define CHECK_CUDA(call)                                                     \
  do {                                                                       \
    const cudaError_t e_ = (call);                                           \
    if (e_ != cudaSuccess) {                                                 \
      fmt::print(stderr, "{}: {}\n", #call, cudaGetErrorString(e_));         \
      return 1;                                                              \
    }                                                                        \
  } while (0)

// ---- GPU path: the class on its CUDA backend ----
int run_gpu(const Model& m) {
  print_header(m, "GPU (PagedKVCache on the CUDA backend: append_batch + attention per layer, one stream)");
  const auto t0 = std::chrono::steady_clock::now();
  cudaStream_t stream = nullptr;
  CHECK_CUDA(cudaStreamCreate(&stream));
  const int64_t row = int64_t{m.kv_heads} * m.d;
  const int64_t qn = int64_t{m.num_seqs} * m.q_heads * m.d;
  // Device inputs / outputs, one set per layer (so a layer's uploads never overwrite what an
  // earlier layer's kernels still read).
  std::vector<void*> allocations;
  auto dev_alloc = [&](size_t bytes, void** p) {
    const cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess) allocations.push_back(*p);
    return e;
  };
  const int64_t max_rows = std::max<int64_t>(m.prompt, m.num_seqs);
  std::vector<void*> k_d(m.layers), v_d(m.layers), q_d(m.layers), out_d(m.layers);
  for (int32_t l = 0; l < m.layers; ++l) {
    CHECK_CUDA(dev_alloc(size_t(max_rows) * row * 2, &k_d[l]));
    CHECK_CUDA(dev_alloc(size_t(max_rows) * row * 2, &v_d[l]));
    CHECK_CUDA(dev_alloc(size_t(qn) * 2, &q_d[l]));
    CHECK_CUDA(dev_alloc(size_t(qn) * 2, &out_d[l]));
  }
  int rc = 0;
  {
    tq::cuda::CudaKVCacheOptions opt;
    opt.stream = stream;
    opt.max_batch = m.num_seqs;
    opt.max_q_heads = m.q_heads;
    opt.max_seq_len = m.prompt + m.steps;
    tq::PagedKVCache cache;
    TQ_EX_CHECK(tq::cuda::create_kv_cache(cache_config(m), opt, &cache));
    for (int32_t s = 0; s < m.num_seqs; ++s) TQ_EX_CHECK(cache.add(s));
    Reference ref(m);
    std::mt19937 rng(2026);
    auto rows_view = [&](void* p, int64_t n) {
      return tq::tensor_view(static_cast<const void*>(p), tq::DType::kF16, n, m.kv_heads, m.d);
    };
    // Prefill: the prompt of each sequence, layer by layer (cache.append encodes on the device).
    std::vector<uint16_t> k, v;
    for (int32_t l = 0; l < m.layers; ++l)
      for (int32_t s = 0; s < m.num_seqs; ++s) {
        random_half(rng, size_t(m.prompt) * row, &k);
        random_half(rng, size_t(m.prompt) * row, &v);
        CHECK_CUDA(cudaStreamSynchronize(stream));  // the staging rows are reused
        CHECK_CUDA(cudaMemcpy(k_d[l], k.data(), k.size() * 2, cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaMemcpy(v_d[l], v.data(), v.size() * 2, cudaMemcpyHostToDevice));
        TQ_EX_CHECK(cache.append(s, l, rows_view(k_d[l], m.prompt), rows_view(v_d[l], m.prompt)));
        ref.append(l, s, k.data(), v.data(), m.prompt);
      }
    std::vector<std::vector<uint16_t>> q_h(m.layers), kstep(m.layers), vstep(m.layers),
        out_h(m.layers, std::vector<uint16_t>(qn));
    std::vector<int64_t> ids(m.num_seqs);
    for (int32_t s = 0; s < m.num_seqs; ++s) ids[s] = s;
    std::vector<float> expect(qn);
    ErrorStats err;
    double step_seconds = 0;
    for (int32_t step = 0; step < m.steps; ++step) {
      const int32_t pos = m.prompt + step;
      for (int32_t l = 0; l < m.layers; ++l) {
        random_half(rng, size_t(m.num_seqs) * row, &kstep[l]);
        random_half(rng, size_t(m.num_seqs) * row, &vstep[l]);
        random_half(rng, size_t(qn), &q_h[l]);
        for (int32_t s = 0; s < m.num_seqs; ++s)
          ref.append(l, s, kstep[l].data() + s * row, vstep[l].data() + s * row, 1);
      }
      CHECK_CUDA(cudaStreamSynchronize(stream));
      for (int32_t l = 0; l < m.layers; ++l) {  // inputs of the step (not timed)
        CHECK_CUDA(cudaMemcpy(k_d[l], kstep[l].data(), kstep[l].size() * 2, cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaMemcpy(v_d[l], vstep[l].data(), vstep[l].size() * 2, cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaMemcpy(q_d[l], q_h[l].data(), size_t(qn) * 2, cudaMemcpyHostToDevice));
      }
      // The decode step: per layer, append the new token of every sequence, then attend.
      const auto g0 = std::chrono::steady_clock::now();
      for (int32_t l = 0; l < m.layers; ++l) {
        TQ_EX_CHECK(cache.append_batch(ids.data(), m.num_seqs, l, rows_view(k_d[l], m.num_seqs),
                                       rows_view(v_d[l], m.num_seqs)));
        TQ_EX_CHECK(cache.attention(
            ids.data(), m.num_seqs, l,
            tq::tensor_view(static_cast<const void*>(q_d[l]), tq::DType::kF16, m.num_seqs, m.q_heads, m.d),
            tq::tensor_view(out_d[l], tq::DType::kF16, m.num_seqs, m.q_heads, m.d)));
      }
      CHECK_CUDA(cudaStreamSynchronize(stream));
      step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count();
      double e2 = 0, n2 = 0;
      for (int32_t l = 0; l < m.layers; ++l) {
        CHECK_CUDA(cudaMemcpy(out_h[l].data(), out_d[l], size_t(qn) * 2, cudaMemcpyDeviceToHost));
        for (int32_t s = 0; s < m.num_seqs; ++s)
          ref.attend(l, s, q_h[l].data() + int64_t{s} * m.q_heads * m.d, expect.data() + int64_t{s} * m.q_heads * m.d);
        for (int64_t i = 0; i < qn; ++i) {
          const double diff = double(tq::half_bits_to_float(out_h[l][i])) - expect[i];
          e2 += diff * diff;
          n2 += double(expect[i]) * expect[i];
        }
      }
      err.add(std::sqrt(e2 / n2));
      if (step == 0 || step == m.steps - 1 || (step + 1) % 16 == 0)
        fmt::print("step {:3d}: context {:4d}, relative error {:.3e}\n", step, pos + 1, std::sqrt(e2 / n2));
    }
    fmt::print("decode step on the GPU (append_batch + attention, {} layers, host bookkeeping included): "
               "{:.3f} ms/step\n",
               m.layers, 1e3 * step_seconds / m.steps);
    print_summary(cache, m, err, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    rc = err.max < 0.25 ? 0 : 1;
  }  // the cache (its pools and staging) is released here, before the stream
  for (void* p : allocations) cudaFree(p);
  cudaStreamDestroy(stream);
  return rc;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  const bool force_cpu = argc > 1 && std::string(argv[1]) == "--cpu";
#if defined(TQ_HAVE_CUDA)
  int devices = 0;
  if (!force_cpu && cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0)
    return run_gpu(Model{4, 8, 32, 128, 4, 512, 64, 16});
  fmt::print("{}: falling back to the CPU backend with smaller sizes\n",
             force_cpu ? "--cpu given" : "no CUDA device");
#else
  (void)force_cpu;
  fmt::print("built without CUDA: using the CPU backend with smaller sizes\n");
#endif
  return run_cpu(Model{4, 8, 32, 128, 4, 256, 32, 16});
}
