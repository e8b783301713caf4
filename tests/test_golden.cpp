// Golden files from the Python library (tests/data/seed, see tests/data/GOLDEN.md): configured
// with each file's signs and codebook, the CPU path reproduces its codes, norms and decoded
// vectors. Real K/V vectors of a trained model (tests/data/real) meet the distortion table.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "turboquant/cpu/codec.hpp"

namespace tq = turboquant;

namespace {

struct Golden {
  int32_t head_dim = 0, bits = 0, n = 0, levels_count = 0;
  std::vector<float> signs, boundaries, levels, input, decoded;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> norms;
};

template <typename T>
void take(const std::vector<char>& buf, size_t& at, T* out, size_t count) {
  ASSERT_LE(at + count * sizeof(T), buf.size());
  std::memcpy(out, buf.data() + at, count * sizeof(T));
  at += count * sizeof(T);
}

void load(const std::string& path, Golden* g) {
  std::ifstream f(path, std::ios::binary);
  ASSERT_TRUE(f) << "cannot open " << path;
  const std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_GE(buf.size(), 24u);
  ASSERT_EQ(std::memcmp(buf.data(), "TQGOLD1\0", 8), 0);
  size_t at = 8;
  int32_t hdr[4];
  take(buf, at, hdr, 4);
  g->head_dim = hdr[0], g->bits = hdr[1], g->n = hdr[2], g->levels_count = hdr[3];
  const size_t d = g->head_dim, n = g->n, L = g->levels_count;
  g->signs.resize(d), g->boundaries.resize(L + 1), g->levels.resize(L);
  g->input.resize(n * d), g->codes.resize(n * d * g->bits / 8), g->norms.resize(n), g->decoded.resize(n * d);
  take(buf, at, g->signs.data(), d);
  take(buf, at, g->boundaries.data(), L + 1);
  take(buf, at, g->levels.data(), L);
  take(buf, at, g->input.data(), n * d);
  take(buf, at, g->codes.data(), g->codes.size());
  take(buf, at, g->norms.data(), n);
  take(buf, at, g->decoded.data(), n * d);
  EXPECT_EQ(at, buf.size());
}

}  // namespace

class GoldenFile : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(GoldenFile, ReproducesCodesNormsAndDecodedVectors) {
  const auto [d, bits] = GetParam();
  Golden g;
  load(fmt::format("{}/seed/seed_d{}_b{}.bin", TQ_TEST_DATA_DIR, d, bits), &g);
  if (HasFatalFailure()) return;
  ASSERT_EQ(g.head_dim, d);
  ASSERT_EQ(g.bits, bits);
  tq::CodecSpec c;
  c.head_dim = d;
  c.bits = bits;
  c.norm = tq::NormStorage::kF16;
  c.scale = tq::ScaleMode::kRawNorm;  // the Python library stores the raw norm
  c.signs = tq::signs_from_values(g.signs.data(), d);
  c.codebook = tq::make_codebook(bits, g.levels.data(), g.boundaries.data() + 1);  // interior only
  ASSERT_TRUE(tq::validate(c).is_ok()) << tq::validate(c).to_string();

  const int64_t cb = c.code_bytes();
  std::vector<uint8_t> codes(g.n * cb);
  std::vector<uint16_t> norms(g.n);
  tq::cpu::EncodeArgs a;
  a.codec = c;
  a.input = tq::matrix_view(static_cast<const void*>(g.input.data()), tq::DType::kF32, g.n, d);
  a.dense = {codes.data(), norms.data()};
  ASSERT_TRUE(tq::cpu::encode(a).is_ok());

  // Codes: an index may differ only where the unit coordinate lies within 1e-6 of a boundary.
  int ties = 0;
  for (int i = 0; i < g.n; ++i) {
    std::vector<float> y(g.input.begin() + i * d, g.input.begin() + (i + 1) * d);
    tq::rht_forward(y.data(), d, c.signs);
    double n2 = 0;
    for (float v : y) n2 += double(v) * v;
    const double norm = std::sqrt(n2);
    for (int j = 0; j < d; ++j) {
      const uint32_t ours = tq::unpack_index(codes.data() + i * cb, j, bits);
      const uint32_t theirs = tq::unpack_index(g.codes.data() + i * cb, j, bits);
      if (ours == theirs) continue;
      const double u = y[j] / (norm + 1e-8);
      double nearest = 1e9;
      for (int b = 0; b + 1 < (1 << bits); ++b) nearest = std::min(nearest, std::fabs(u - c.codebook.boundaries[b]));
      EXPECT_LT(nearest, 1e-6) << "row " << i << " coord " << j << ": " << ours << " vs " << theirs;
      ++ties;
    }
  }
  fmt::print("d={} bits={}: {} boundary ties of {} indices\n", d, bits, ties, g.n * d);
  // Norms: equal to fp16 rounding (one ulp).
  for (int i = 0; i < g.n; ++i) {
    const float ours = tq::half_bits_to_float(norms[i]), theirs = tq::half_bits_to_float(g.norms[i]);
    EXPECT_LE(std::fabs(ours - theirs), std::ldexp(std::fabs(theirs), -10) + 1e-7f) << "row " << i;
  }
  // Decoded vectors: 1e-4 relative to the vector's norm.
  std::vector<float> y(g.n * d);
  tq::cpu::DecodeArgs da;
  da.codec = c;
  da.dense = {codes.data(), norms.data()};
  da.output = tq::matrix_view(static_cast<void*>(y.data()), tq::DType::kF32, g.n, d);
  ASSERT_TRUE(tq::cpu::decode(da).is_ok());
  for (int i = 0; i < g.n; ++i) {
    double e = 0, r = 0;
    for (int j = 0; j < d; ++j) {
      e += std::pow(double(y[i * d + j]) - g.decoded[i * d + j], 2);
      r += std::pow(double(g.decoded[i * d + j]), 2);
    }
    if (r == 0) {
      EXPECT_EQ(e, 0.0) << "row " << i;
      continue;
    }
    EXPECT_LT(std::sqrt(e / r), 1e-4) << "row " << i;
  }
}
INSTANTIATE_TEST_SUITE_P(All, GoldenFile,
                         ::testing::Combine(::testing::Values(64, 128, 256), ::testing::Values(2, 3, 4)));

TEST(RealVectors, SantacoderKeysAndValuesMeetTheTable) {
  const double table[4] = {0.36089, 0.11600, 0.03397, 0.00931};  // d = 128
  for (const char* which : {"k", "v"}) {
    std::ifstream f(fmt::format("{}/real/santacoder_{}_n120_d128.f32", TQ_TEST_DATA_DIR, which), std::ios::binary);
    ASSERT_TRUE(f);
    std::vector<float> x(120 * 128);
    f.read(reinterpret_cast<char*>(x.data()), static_cast<std::streamsize>(x.size() * 4));
    ASSERT_TRUE(f);
    for (int bits = 2; bits <= 4; ++bits) {
      tq::CodecSpec c = tq::make_codec(128, bits);
      c.scale = tq::ScaleMode::kRawNorm;
      std::vector<uint8_t> codes(120 * c.code_bytes());
      std::vector<uint16_t> scales(120);
      tq::cpu::EncodeArgs a;
      a.codec = c;
      a.input = tq::matrix_view(static_cast<const void*>(x.data()), tq::DType::kF32, 120, 128);
      a.dense = {codes.data(), scales.data()};
      ASSERT_TRUE(tq::cpu::encode(a).is_ok());
      std::vector<float> y(x.size());
      tq::cpu::DecodeArgs da;
      da.codec = c;
      da.dense = {codes.data(), scales.data()};
      da.output = tq::matrix_view(static_cast<void*>(y.data()), tq::DType::kF32, 120, 128);
      ASSERT_TRUE(tq::cpu::decode(da).is_ok());
      double acc = 0;
      for (int i = 0; i < 120; ++i) {
        double e = 0, r = 0;
        for (int j = 0; j < 128; ++j) {
          e += std::pow(double(x[i * 128 + j]) - y[i * 128 + j], 2);
          r += std::pow(double(x[i * 128 + j]), 2);
        }
        acc += e / r;
      }
      const double mse = acc / 120;
      fmt::print("santacoder {} bits={}: relative MSE {:.5f} (D_mse {:.5f})\n", which, bits, mse, table[bits - 1]);
      EXPECT_NEAR(mse, table[bits - 1], 0.10 * table[bits - 1]);
    }
  }
}
