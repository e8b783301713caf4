// Scalars, sign vectors, the RHT (against a dense Hadamard matrix), bit packing, the layout table.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "turboquant/layout.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/packing.hpp"
#include "turboquant/rht.hpp"
#include "turboquant/signs.hpp"

namespace tq = turboquant;

TEST(Half, EveryFiniteHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const float f = tq::half_bits_to_float(bits);
    if (std::isnan(f)) continue;
    EXPECT_EQ(tq::float_to_half_bits(f), bits) << "half bits " << h;
  }
}

TEST(Half, RoundsToNearestEvenAndSaturatesToInf) {
  EXPECT_EQ(tq::float_to_half_bits(1.0f), 0x3c00);
  EXPECT_EQ(tq::float_to_half_bits(65504.0f), 0x7bff);
  EXPECT_EQ(tq::float_to_half_bits(65519.0f), 0x7bff);
  EXPECT_EQ(tq::float_to_half_bits(65520.0f), 0x7c00);
  EXPECT_EQ(tq::float_to_half_bits(1.0f + 1.0f / 2048), 0x3c00);          // tie -> even
  EXPECT_EQ(tq::float_to_half_bits(1.0f + 3.0f / 2048), 0x3c02);          // tie -> even (up)
  EXPECT_EQ(tq::float_to_half_bits(std::ldexp(1.0f, -24)), 0x0001);       // smallest subnormal
  EXPECT_EQ(tq::float_to_half_bits(std::ldexp(1.0f, -25)), 0x0000);       // tie -> even (zero)
  EXPECT_EQ(tq::float_to_half_bits(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(tq::float_to_half_bits(-2.0f), 0xc000);
  // Random floats: the result is the nearest half (checked against neighbours).
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-70000.0f, 70000.0f);
  for (int i = 0; i < 100000; ++i) {
    const float f = u(rng) * (i % 3 == 0 ? 1e-5f : 1.0f);
    const uint16_t h = tq::float_to_half_bits(f);
    const float back = tq::half_bits_to_float(h);
    if (std::isinf(back)) {
      EXPECT_GE(std::fabs(f), 65520.0f);
      continue;
    }
    const float up = tq::half_bits_to_float(static_cast<uint16_t>(h + 1));
    const float down = tq::half_bits_to_float(static_cast<uint16_t>(h - 1));
    EXPECT_LE(std::fabs(back - f), std::fabs(up - f)) << f;
    if ((h & 0x7fff) != 0) EXPECT_LE(std::fabs(back - f), std::fabs(down - f)) << f;
  }
}

TEST(BFloat16, RoundTripAndRounding) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = tq::bf16_bits_to_float(static_cast<uint16_t>(h));
    if (!std::isnan(f)) EXPECT_EQ(tq::float_to_bf16_bits(f), h);
  }
  EXPECT_EQ(tq::float_to_bf16_bits(1.0f + 1.0f / 256), 0x3f80);  // tie -> even
  EXPECT_EQ(tq::float_to_bf16_bits(1.0f + 3.0f / 256), 0x3f82);
}

TEST(Signs, PortableStreamIsLockedAndSeparatesKAndV) {
  // The documented SplitMix64 recipe, locked: these words must never change.
  const tq::SignBits k = tq::signs_from_seed(42, 256, tq::kKeyStream);
  const tq::SignBits v = tq::signs_from_seed(42, 256, tq::kValueStream);
  uint64_t state = 42ull ^ 0xD1B54A32D192ED03ull;
  for (int w = 0; w < 4; ++w) EXPECT_EQ(k.words[w], tq::splitmix64_next(state));
  EXPECT_NE(k.words[0], v.words[0]);
  // SplitMix64 of state 0x9E3779B97F4A7C15 (seed 0 first output) is the published 0xE220A8397B1DCDAF.
  uint64_t zero = 0;
  EXPECT_EQ(tq::splitmix64_next(zero), 0xE220A8397B1DCDAFull);
  // Bits beyond head_dim are clear, about half of the signs are negative.
  const tq::SignBits s64 = tq::signs_from_seed(42, 64);
  EXPECT_EQ(s64.words[1], 0u);
  int neg = 0;
  for (int j = 0; j < 256; ++j) neg += k.negative(j);
  EXPECT_GT(neg, 96);
  EXPECT_LT(neg, 160);
  const float values[4] = {-1.f, 1.f, 1.f, -1.f};
  const tq::SignBits from = tq::signs_from_values(values, 4);
  EXPECT_EQ(from.words[0], 0b1001u);
}

namespace {
// Dense Sylvester Hadamard matrix H_d (entries +-1), built by the recursion, as the oracle.
std::vector<double> dense_hadamard(int d) {
  std::vector<double> h(1, 1.0);
  for (int n = 1; n < d; n *= 2) {
    std::vector<double> next(4 * n * n);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        const double v = h[i * n + j];
        next[i * 2 * n + j] = v;
        next[i * 2 * n + j + n] = v;
        next[(i + n) * 2 * n + j] = v;
        next[(i + n) * 2 * n + j + n] = -v;
      }
    h.swap(next);
  }
  return h;
}
}  // namespace

class RhtTest : public ::testing::TestWithParam<int> {};

TEST_P(RhtTest, MatchesDenseHadamardAndInverts) {
  const int d = GetParam();
  const std::vector<double> H = dense_hadamard(d);
  const tq::SignBits s = tq::signs_from_seed(1234 + d, d);
  std::mt19937 rng(d);
  std::normal_distribution<double> nd;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> x(d), y(d), expect(d);
    for (auto& v : x) v = nd(rng) * (trial % 2 ? 100.0 : 0.01);
    for (int i = 0; i < d; ++i) {
      double acc = 0;
      for (int j = 0; j < d; ++j) acc += H[i * d + j] * s.sign(j) * x[j];
      expect[i] = acc / std::sqrt(double(d));
    }
    y = x;
    tq::rht_forward(y.data(), d, s);
    double err = 0, ref = 0;
    for (int i = 0; i < d; ++i) {
      err += (y[i] - expect[i]) * (y[i] - expect[i]);
      ref += expect[i] * expect[i];
    }
    EXPECT_LT(std::sqrt(err / ref), 1e-14);
    std::vector<float> yf(x.begin(), x.end());
    tq::rht_forward(yf.data(), d, s);
    for (int i = 0; i < d; ++i) EXPECT_NEAR(yf[i], expect[i], 1e-5 * std::sqrt(ref / d) * 10);
    tq::rht_inverse(y.data(), d, s);
    for (int i = 0; i < d; ++i) EXPECT_NEAR(y[i], x[i], 1e-12 * std::sqrt(ref / d) * 10);
  }
}
INSTANTIATE_TEST_SUITE_P(HeadDims, RhtTest, ::testing::Values(64, 128, 256));

TEST(Packing, RoundTripsEveryWidthAndHeadDim) {
  std::mt19937 rng(3);
  for (int d : {64, 128, 256})
    for (int bits = 1; bits <= 4; ++bits) {
      std::vector<uint8_t> idx(d), back(d), packed(d * bits / 8 + 1, 0xEE);
      for (auto& v : idx) v = static_cast<uint8_t>(rng() % (1u << bits));
      tq::pack_indices(idx.data(), d, bits, packed.data());
      EXPECT_EQ(packed.back(), 0xEE) << "wrote past code_bytes";
      tq::unpack_indices(packed.data(), d, bits, back.data());
      EXPECT_EQ(idx, back) << "d=" << d << " bits=" << bits;
    }
}

TEST(Packing, LsbFirstLayout) {
  uint8_t idx[8] = {1, 2, 3, 4, 5, 6, 7, 0};
  uint8_t out[4];
  tq::pack_indices(idx, 8, 4, out);  // index 2j in the low nibble of byte j
  EXPECT_EQ(out[0], 0x21);
  EXPECT_EQ(out[3], 0x07);
  uint8_t idx2[4] = {1, 2, 3, 0};
  tq::pack_indices(idx2, 4, 2, out);  // index 4j + k in bits 2k..2k+1
  EXPECT_EQ(out[0], 1 | (2 << 2) | (3 << 4));
  uint8_t idx3[8] = {7, 0, 5, 1, 2, 3, 4, 6};
  tq::pack_indices(idx3, 8, 3, out);  // index i in bits 3i..3i+2 of the byte stream
  uint32_t stream = out[0] | (out[1] << 8) | (out[2] << 16);
  for (int i = 0; i < 8; ++i) EXPECT_EQ((stream >> (3 * i)) & 7u, idx3[i]);
  uint8_t idx1[8] = {1, 0, 0, 1, 1, 0, 0, 0};
  tq::pack_indices(idx1, 8, 1, out);
  EXPECT_EQ(out[0], 0b00011001);
}

TEST(Layout, PrintsTheTableAndMatchesTheByteMath) {
  fmt::print("{:>8} {:>4} {:>10} {:>12} {:>12} {:>14} {:>12}\n", "head_dim", "bits", "code_B",
             "record_f16", "record_f32", "page16x8_B", "vs_fp16");
  for (int d : {64, 128, 256})
    for (int bits = 1; bits <= 4; ++bits) {
      const tq::Format f = tq::make_format(d, bits, bits);
      const tq::layout::PageLayout p = tq::layout::page_layout(f, 16, 8);
      const int64_t cb = tq::layout::code_bytes(d, bits);
      EXPECT_EQ(cb * 8, d * bits);
      EXPECT_EQ(tq::layout::record_bytes(d, bits, tq::NormStorage::kF16), cb + 2);
      EXPECT_EQ(p.key_row_bytes, cb);
      EXPECT_EQ(p.head_bytes, tq::layout::align_up(16 * cb) * 2 + 2 * tq::layout::align_up(32));
      EXPECT_EQ(p.page_bytes % 16, 0);
      EXPECT_EQ(p.key_scales_offset % 16, 0);
      EXPECT_EQ(p.value_codes_offset % 16, 0);
      EXPECT_EQ(p.value_scales_offset % 16, 0);
      const double ratio = 2.0 * d / static_cast<double>(cb + 2);
      fmt::print("{:>8} {:>4} {:>10} {:>12} {:>12} {:>14} {:>11.2f}x\n", d, bits, cb, cb + 2, cb + 4,
                 p.page_bytes, ratio);
    }
  // Uncompressed values (K-only layers) are raw fp16 rows without scales.
  const tq::Format konly = tq::make_format(128, 4, 0);
  const tq::layout::PageLayout p = tq::layout::page_layout(konly, 16, 1);
  EXPECT_EQ(p.value_row_bytes, 256);
  EXPECT_EQ(p.value_scale_bytes, 0);
  EXPECT_EQ(p.head_bytes, 1024 + 32 + 4096);
}
