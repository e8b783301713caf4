// examples/01: a CPU round trip. Encodes random vectors with every head_dim x bits, decodes them,
// and prints the bytes per vector, the compression ratio against fp16, and the measured
// distortion E ||x - x_hat||^2 / ||x||^2 for each scale mode next to the D_mse table
// (exact Lloyd-Max of the finite-d law) and the paper's rounded values.
//
//   ./01_cpu_round_trip [vectors_per_case]     (default 2^17)
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "turboquant/cpu/codec.hpp"

namespace tq = turboquant;

namespace {

// Mean relative squared error of encode -> decode with the given codec.
double round_trip_mse(const tq::CodecSpec& codec, const std::vector<float>& x, int64_t n) {
  std::vector<uint8_t> codes(n * codec.code_bytes());
  std::vector<uint8_t> scales(n * tq::norm_bytes(codec.norm));
  std::vector<float> y(x.size());
  tq::cpu::EncodeArgs enc;
  enc.codec = codec;
  enc.input = tq::matrix_view(static_cast<const void*>(x.data()), tq::DType::kF32, n, codec.head_dim);
  enc.dense = {codes.data(), scales.data()};
  tq::throw_if_error(tq::cpu::encode(enc));
  tq::cpu::DecodeArgs dec;
  dec.codec = codec;
  dec.dense = {codes.data(), scales.data()};
  dec.output = tq::matrix_view(static_cast<void*>(y.data()), tq::DType::kF32, n, codec.head_dim);
  tq::throw_if_error(tq::cpu::decode(dec));
  double acc = 0;
  const int d = codec.head_dim;
  for (int64_t i = 0; i < n; ++i) {
    double e = 0, r = 0;
    for (int j = 0; j < d; ++j) {
      const double a = x[i * d + j], b = y[i * d + j];
      e += (a - b) * (a - b);
      r += a * a;
    }
    acc += e / r;
  }
  return acc / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : (int64_t{1} << 17);
  const double paper[4] = {0.36, 0.117, 0.03, 0.009};
  const auto start = std::chrono::steady_clock::now();

  fmt::print("TurboQuant CPU round trip: {} random normal vectors per case, fp16 scales\n\n", n);
  fmt::print("{:>4} {:>4} | {:>8} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>6}\n", "d", "bits",
             "bytes", "vs fp16", "raw_norm", "norm_pres", "lst_sq", "D_mse", "raw/D-1", "paper");
  for (int d : {64, 128, 256}) {
    std::mt19937 rng(static_cast<uint32_t>(d));
    std::normal_distribution<float> normal;
    std::vector<float> x(static_cast<size_t>(n) * d);
    for (float& v : x) v = normal(rng);
    for (int bits = 1; bits <= 4; ++bits) {
      tq::CodecSpec codec = tq::make_codec(d, bits);
      double mse[3];
      for (int mode = 0; mode < 3; ++mode) {
        codec.scale = static_cast<tq::ScaleMode>(mode);
        mse[mode] = round_trip_mse(codec, x, n);
      }
      const double d_mse = tq::solve_lloyd_max(d, bits).d_mse;
      const int64_t bytes = tq::layout::record_bytes(d, bits, codec.norm);
      fmt::print("{:>4} {:>4} | {:>8} {:>8.2f}x | {:>9.5f} {:>9.5f} {:>9.5f} {:>9.5f} | {:>+8.2f}% {:>6}\n", d,
                 bits, bytes, 2.0 * d / static_cast<double>(bytes), mse[0], mse[1], mse[2], d_mse,
                 100.0 * (mse[0] / d_mse - 1.0), paper[bits - 1]);
    }
  }
  const tq::Format k4v4 = tq::make_format(128, 4, 4);
  const auto page = tq::layout::page_layout(k4v4, 16, 8);
  fmt::print("\nPage of 16 tokens x 8 KV heads, d=128, K4V4: {} bytes ({} per token, fp16: {}) = {:.2f}x\n",
             page.page_bytes, page.token_bytes(), 8 * 2 * 2 * 128,
             8.0 * 2 * 2 * 128 / static_cast<double>(page.token_bytes()));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("done in {:.1f} s\n", secs);
  return 0;
}
