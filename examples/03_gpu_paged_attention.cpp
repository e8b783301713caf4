// examples/03: the GPU path of one decode step. Appends the K and V of a batch of sequences into
// a paged, packed cache with cuda::encode (slot mapping), runs cuda::decode_attention on it, and
// compares the output with the float64 CPU reference on the very same pages. Without a CUDA
// device it says so and exits 0.
//
//   ./03_gpu_paged_attention [context]          (default 4096 tokens per sequence)
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "turboquant/cpu/attention.hpp"
#include "turboquant/cuda/attention.hpp"
#include "turboquant/cuda/codec.hpp"

namespace tq = turboquant;

#define CHECK_CUDA(call)                                                              \
  do {                                                                                \
    const cudaError_t e_ = (call);                                                    \
    if (e_ != cudaSuccess) {                                                          \
      fmt::print(stderr, "{}: {}\n", #call, cudaGetErrorString(e_));                  \
      return 1;                                                                       \
    }                                                                                 \
  } while (0)

template <typename T>
T* device_copy(const std::vector<T>& host) {
  void* p = nullptr;
  if (cudaMalloc(&p, host.size() * sizeof(T)) != cudaSuccess) return nullptr;
  cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    fmt::print("no CUDA device: nothing to run (the CPU path is examples/01)\n");
    return 0;
  }
  const int32_t context = argc > 1 ? std::atoi(argv[1]) : 4096;
  const int32_t num_seqs = 4, q_heads = 32, kv_heads = 8, d = 128, page_size = 16;
  const int32_t pages_per_seq = (context + page_size - 1) / page_size;
  const int64_t num_pages = int64_t{num_seqs} * pages_per_seq;

  // The cache format: 4-bit keys and values, signs from a per-layer seed.
  const tq::Format format = tq::make_format(d, 4, 4, /*seed=*/1234);
  const tq::layout::PageLayout layout = tq::layout::page_layout(format, page_size, kv_heads);

  // Random K/V for every token ([tokens, kv_heads, d] fp16) and the engine's slot mapping:
  // sequence s owns pages [s * pages_per_seq, (s + 1) * pages_per_seq).
  const int64_t tokens = int64_t{num_seqs} * context;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> k(tokens * kv_heads * d), v(k.size()), q(int64_t{num_seqs} * q_heads * d);
  for (auto& x : k) x = tq::float_to_half_bits(normal(rng));
  for (auto& x : v) x = tq::float_to_half_bits(normal(rng));
  for (auto& x : q) x = tq::float_to_half_bits(normal(rng));
  std::vector<int64_t> slots(tokens);
  std::vector<int32_t> block_table(int64_t{num_seqs} * pages_per_seq), seq_lens(num_seqs, context);
  for (int32_t s = 0; s < num_seqs; ++s)
    for (int32_t t = 0; t < context; ++t) slots[int64_t{s} * context + t] = int64_t{s} * pages_per_seq * page_size + t;
  for (size_t i = 0; i < block_table.size(); ++i) block_table[i] = static_cast<int32_t>(i);

  uint16_t* k_dev = device_copy(k);
  uint16_t* v_dev = device_copy(v);
  uint16_t* q_dev = device_copy(q);
  int64_t* slots_dev = device_copy(slots);
  int32_t* table_dev = device_copy(block_table);
  int32_t* lens_dev = device_copy(seq_lens);
  void* pages = nullptr;
  void* out_dev = nullptr;
  CHECK_CUDA(cudaMalloc(&pages, num_pages * layout.page_bytes));
  CHECK_CUDA(cudaMalloc(&out_dev, q.size() * sizeof(uint16_t)));
  cudaStream_t stream = nullptr;
  CHECK_CUDA(cudaStreamCreate(&stream));

  // Append: encode K and V of every token into its slot (one fused kernel per side).
  for (bool value_side : {false, true}) {
    tq::cuda::EncodeArgs enc;
    enc.codec = value_side ? format.value : format.key;
    enc.input = tq::tensor_view(static_cast<const void*>(value_side ? v_dev : k_dev), tq::DType::kF16,
                                tokens, kv_heads, d);
    enc.paged = {pages, num_pages, layout, value_side, slots_dev};
    tq::throw_if_error(tq::cuda::encode(enc, {}, stream));
  }

  // Attend: one decode step for every sequence, straight from the packed pages.
  tq::cuda::DecodeAttentionArgs att;
  att.format = format;
  att.q = tq::tensor_view(static_cast<const void*>(q_dev), tq::DType::kF16, num_seqs, q_heads, d);
  att.cache = {pages, num_pages, layout, table_dev, pages_per_seq, lens_dev, num_seqs};
  att.out = tq::tensor_view(out_dev, tq::DType::kF16, num_seqs, q_heads, d);
  att.max_seq_len = context;
  tq::throw_if_error(tq::cuda::can_implement(att));
  void* workspace = nullptr;
  const size_t workspace_bytes = tq::cuda::workspace_bytes(att);
  CHECK_CUDA(cudaMalloc(&workspace, workspace_bytes));
  tq::throw_if_error(tq::cuda::decode_attention(att, {workspace, workspace_bytes}, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));

  // The float64 reference on the same pages.
  std::vector<uint8_t> host_pages(num_pages * layout.page_bytes);
  std::vector<uint16_t> out(q.size());
  CHECK_CUDA(cudaMemcpy(host_pages.data(), pages, host_pages.size(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(out.data(), out_dev, out.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  std::vector<float> ref(q.size());
  tq::cpu::DecodeAttentionArgs cpu;
  cpu.format = format;
  cpu.q = tq::tensor_view(static_cast<const void*>(q.data()), tq::DType::kF16, num_seqs, q_heads, d);
  cpu.cache = {host_pages.data(), num_pages, layout, block_table.data(), pages_per_seq, seq_lens.data(), num_seqs};
  cpu.out = tq::tensor_view(static_cast<void*>(ref.data()), tq::DType::kF32, num_seqs, q_heads, d);
  tq::throw_if_error(tq::cpu::decode_attention(cpu));
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double diff = tq::half_bits_to_float(out[i]) - ref[i];
    err += diff * diff;
    norm += double(ref[i]) * ref[i];
  }
  fmt::print("{} sequences x {} tokens, {} q heads / {} KV heads, d = {}, K4V4: {} bytes of cache "
             "({:.2f}x smaller than fp16), {} splits; GPU vs float64 CPU: relative error {:.2e}\n",
             num_seqs, context, q_heads, kv_heads, d, num_pages * layout.page_bytes,
             2.0 * 2 * d * kv_heads * tokens / static_cast<double>(num_pages * layout.page_bytes),
             tq::cuda::decode_attention_splits(att), std::sqrt(err / norm));
  for (void* p : {static_cast<void*>(k_dev), static_cast<void*>(v_dev), static_cast<void*>(q_dev),
                  static_cast<void*>(slots_dev), static_cast<void*>(table_dev), static_cast<void*>(lens_dev),
                  pages, out_dev, workspace})
    cudaFree(p);
  cudaStreamDestroy(stream);
  return std::sqrt(err / norm) < 2e-3 ? 0 : 1;
}
