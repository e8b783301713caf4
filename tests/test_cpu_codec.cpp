// The CPU reference codec: distortion against the D_mse table, scale modes, norm storage, dtypes,
// strides, paged scatter / gather, rotation, and every bad-input path.
#include <gtest/gtest.h>

#include "oracles.hpp"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "turboquant/cpu/codec.hpp"

namespace tq = turboquant;
using turboquant::testing::guide_d_mse;
using turboquant::testing::relative_mse;

namespace {


// LLM-like rows: log-normal norms, a few outlier channels scaled by 20.
std::vector<float> llm_like(int64_t n, int d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (int64_t i = 0; i < n; ++i) {
    const float scale = std::exp(nd(rng));
    for (int j = 0; j < d; ++j) x[i * d + j] = nd(rng) * scale * ((j % 37 == 5) ? 20.0f : 1.0f);
  }
  return x;
}


struct Coded {
  std::vector<uint8_t> codes;
  std::vector<uint8_t> scales;
};

Coded encode_dense(const tq::CodecSpec& c, const std::vector<float>& x) {
  const int64_t n = static_cast<int64_t>(x.size()) / c.head_dim;
  Coded out{std::vector<uint8_t>(n * c.code_bytes()), std::vector<uint8_t>(n * tq::norm_bytes(c.norm))};
  tq::cpu::EncodeArgs a;
  a.codec = c;
  a.input = tq::matrix_view(static_cast<const void*>(x.data()), tq::DType::kF32, n, c.head_dim);
  a.dense = {out.codes.data(), out.scales.data()};
  EXPECT_TRUE(tq::cpu::encode(a).is_ok());
  return out;
}

std::vector<float> decode_dense(const tq::CodecSpec& c, const Coded& in) {
  const int64_t n = static_cast<int64_t>(in.codes.size()) / c.code_bytes();
  std::vector<float> y(n * c.head_dim);
  tq::cpu::DecodeArgs a;
  a.codec = c;
  a.dense = {in.codes.data(), in.scales.data()};
  a.output = tq::matrix_view(static_cast<void*>(y.data()), tq::DType::kF32, n, c.head_dim);
  EXPECT_TRUE(tq::cpu::decode(a).is_ok());
  return y;
}

}  // namespace

class Distortion : public ::testing::TestWithParam<std::tuple<int, int>> {};

// 2^17 random vectors per case: raw-norm distortion within 1.5% of D_mse; least squares never worse.
TEST_P(Distortion, MatchesDmseTable) {
  const auto [d, bits] = GetParam();
  const int64_t n = int64_t{1} << 17;
  std::mt19937 rng(d * 10 + bits);
  std::normal_distribution<float> nd;
  std::vector<float> x(n * d);
  for (auto& v : x) v = nd(rng);
  tq::CodecSpec c = tq::make_codec(d, bits, 99);
  c.norm = tq::NormStorage::kF32;
  c.scale = tq::ScaleMode::kRawNorm;
  const double raw = relative_mse(x, decode_dense(c, encode_dense(c, x)), d);
  EXPECT_NEAR(raw, guide_d_mse(d, bits), 0.015 * guide_d_mse(d, bits)) << "d=" << d << " bits=" << bits;
  c.scale = tq::ScaleMode::kLeastSquares;
  const double ls = relative_mse(x, decode_dense(c, encode_dense(c, x)), d);
  EXPECT_LE(ls, raw);
  c.norm = tq::NormStorage::kF16;  // the default storage costs (almost) nothing
  const double ls16 = relative_mse(x, decode_dense(c, encode_dense(c, x)), d);
  EXPECT_NEAR(ls16, ls, 1e-3 * ls);
}
INSTANTIATE_TEST_SUITE_P(All, Distortion,
                         ::testing::Combine(::testing::Values(64, 128, 256), ::testing::Values(1, 2, 3, 4)));

TEST(Codec, LeastSquaresNeverWorsePerVector) {
  const int d = 128;
  const auto x = llm_like(512, d, 5);
  for (int bits = 1; bits <= 4; ++bits) {
    tq::CodecSpec c = tq::make_codec(d, bits);
    c.norm = tq::NormStorage::kF32;
    c.scale = tq::ScaleMode::kRawNorm;
    const auto raw = decode_dense(c, encode_dense(c, x));
    c.scale = tq::ScaleMode::kLeastSquares;
    const auto ls = decode_dense(c, encode_dense(c, x));
    c.scale = tq::ScaleMode::kNormPreserving;
    const auto np = decode_dense(c, encode_dense(c, x));
    for (int i = 0; i < 512; ++i) {
      double er = 0, el = 0, nx = 0, nn = 0;
      for (int j = 0; j < d; ++j) {
        const double v = x[i * d + j];
        er += (v - raw[i * d + j]) * (v - raw[i * d + j]);
        el += (v - ls[i * d + j]) * (v - ls[i * d + j]);
        nx += v * v;
        nn += double(np[i * d + j]) * np[i * d + j];
      }
      EXPECT_LE(el, er * (1 + 1e-5) + 1e-12) << "row " << i;
      EXPECT_NEAR(std::sqrt(nn), std::sqrt(nx), 1e-4 * std::sqrt(nx)) << "norm-preserving row " << i;
    }
  }
}

TEST(Codec, NormsFarFromOne) {
  // The error is scale-free: vectors scaled by 1e-6 .. 1e6 give the unit vectors' relative error
  // with fp32 scales; fp16 scales saturate at 65504 (documented), never inf.
  const int d = 128, n = 256;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> unit(n * d);
  for (int i = 0; i < n; ++i) {
    double s = 0;
    for (int j = 0; j < d; ++j) s += double(unit[i * d + j] = nd(rng)) * unit[i * d + j];
    for (int j = 0; j < d; ++j) unit[i * d + j] = static_cast<float>(unit[i * d + j] / std::sqrt(s));
  }
  tq::CodecSpec c = tq::make_codec(d, 4);
  c.norm = tq::NormStorage::kF32;
  const double base = relative_mse(unit, decode_dense(c, encode_dense(c, unit)), d);
  for (double target : {1e-6, 1e-3, 1e3, 1e6}) {
    std::vector<float> x(unit);
    for (auto& v : x) v = static_cast<float>(v * target);
    c.norm = tq::NormStorage::kF32;
    EXPECT_NEAR(relative_mse(x, decode_dense(c, encode_dense(c, x)), d), base, 1e-3 * base)
        << "fp32 scales at norm " << target;
    c.norm = tq::NormStorage::kF16;
    const Coded coded = encode_dense(c, x);
    const auto y = decode_dense(c, coded);
    for (int i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, coded.scales.data() + 2 * i, 2);
      const float s = tq::half_bits_to_float(h);
      ASSERT_TRUE(std::isfinite(s)) << "never an inf in the cache";
      if (target >= 1e5) {
        ASSERT_EQ(s, tq::kHalfMax) << "documented saturation";
      }
    }
    for (float v : y) ASSERT_TRUE(std::isfinite(v));
    if (target >= 1e-3 && target <= 1e3) {
      EXPECT_NEAR(relative_mse(x, y, d), base, 0.01 * base) << "fp16 scales at norm " << target;
    }
  }
}

TEST(Codec, DtypesAndStridesAgree) {
  const int d = 64, n = 33, stride = 80;  // padded rows
  const auto x = llm_like(n, d, 9);
  tq::CodecSpec c = tq::make_codec(d, 3);
  const Coded ref = encode_dense(c, [&] {  // f32 inputs rounded to bf16, as the bf16 run sees them
    std::vector<float> r(x);
    for (auto& v : r) v = tq::bf16_bits_to_float(tq::float_to_bf16_bits(v));
    return r;
  }());
  std::vector<uint16_t> padded(n * stride, 0x7fff);  // NaN padding must never be read
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) padded[i * stride + j] = tq::float_to_bf16_bits(x[i * d + j]);
  Coded got{std::vector<uint8_t>(ref.codes.size()), std::vector<uint8_t>(ref.scales.size())};
  tq::cpu::EncodeArgs a;
  a.codec = c;
  a.input = tq::matrix_view(static_cast<const void*>(padded.data()), tq::DType::kBF16, n, d, stride);
  a.dense = {got.codes.data(), got.scales.data()};
  ASSERT_TRUE(tq::cpu::encode(a).is_ok());
  EXPECT_EQ(got.codes, ref.codes);
  EXPECT_EQ(got.scales, ref.scales);
  // Decode into fp16 with a row stride: equals the f32 decode rounded to fp16; padding untouched.
  const auto y32 = decode_dense(c, ref);
  std::vector<uint16_t> out(n * stride, 0xABCD);
  tq::cpu::DecodeArgs da;
  da.codec = c;
  da.dense = {ref.codes.data(), ref.scales.data()};
  da.output = tq::matrix_view(static_cast<void*>(out.data()), tq::DType::kF16, n, d, stride);
  ASSERT_TRUE(tq::cpu::decode(da).is_ok());
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) EXPECT_EQ(out[i * stride + j], tq::float_to_half_bits(y32[i * d + j]));
    for (int j = d; j < stride; ++j) EXPECT_EQ(out[i * stride + j], 0xABCD);
  }
}

TEST(Codec, PagedScatterAndGatherMatchDense) {
  const int d = 128, heads = 2, tokens = 40, page_size = 16;
  const tq::Format f = tq::make_format(d, 4, 3);
  const tq::layout::PageLayout l = tq::layout::page_layout(f, page_size, heads);
  const int64_t num_pages = 6;
  std::vector<uint8_t> pool(num_pages * l.page_bytes, 0x5A);
  const auto x = llm_like(tokens * heads, d, 21);  // [tokens, heads, d]
  // Sequence of 40 tokens on pages 4, 1, 3 (page 0, 2, 5 unused); token 7 is padding (slot -1).
  const int32_t block_table[3] = {4, 1, 3};
  std::vector<int64_t> slots(tokens);
  for (int t = 0; t < tokens; ++t) slots[t] = block_table[t / page_size] * page_size + t % page_size;
  slots[7] = -1;
  for (bool value_side : {false, true}) {
    const tq::CodecSpec& c = value_side ? f.value : f.key;
    tq::cpu::EncodeArgs a;
    a.codec = c;
    a.input = tq::tensor_view(static_cast<const void*>(x.data()), tq::DType::kF32, tokens, heads, d);
    a.paged = {pool.data(), num_pages, l, value_side, slots.data()};
    ASSERT_TRUE(tq::cpu::encode(a).is_ok());
  }
  // Unused pages untouched.
  for (int64_t p : {0, 2, 5})
    for (int64_t b = 0; b < l.page_bytes; ++b) ASSERT_EQ(pool[p * l.page_bytes + b], 0x5A);
  for (bool value_side : {false, true}) {
    const tq::CodecSpec& c = value_side ? f.value : f.key;
    const auto ref = decode_dense(c, encode_dense(c, x));
    const int32_t max_tokens = 48, seq_len = tokens;
    std::vector<float> out(max_tokens * heads * d, -7.0f);
    tq::cpu::DecodeArgs da;
    da.codec = c;
    da.paged = {pool.data(), num_pages, l, block_table, 3, &seq_len, 1};
    da.value_side = value_side;
    da.max_tokens = max_tokens;
    da.output = tq::tensor_view(static_cast<void*>(out.data()), tq::DType::kF32, max_tokens, heads, d);
    ASSERT_TRUE(tq::cpu::decode(da).is_ok());
    for (int t = 0; t < max_tokens; ++t)
      for (int h = 0; h < heads; ++h)
        for (int j = 0; j < d; ++j) {
          const float got = out[(t * heads + h) * d + j];
          if (t >= tokens) {
            ASSERT_EQ(got, -7.0f);  // beyond the length: untouched
          } else if (t != 7) {
            ASSERT_EQ(got, ref[(t * heads + h) * d + j]);
          }
        }
  }
}

TEST(Codec, RotateRoundTrip) {
  const int d = 256;
  auto x = llm_like(8, d, 2);
  const auto orig = x;
  const tq::SignBits s = tq::signs_from_seed(3, d);
  const tq::View v = tq::matrix_view(static_cast<void*>(x.data()), tq::DType::kF32, 8, d);
  ASSERT_TRUE(tq::cpu::rotate(s, v, false).is_ok());
  EXPECT_NE(x, orig);
  ASSERT_TRUE(tq::cpu::rotate(s, v, true).is_ok());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], orig[i], 1e-4f * (1 + std::fabs(orig[i])));
}

// ---- bad input: a Status naming the argument and its value; outputs untouched ------------------

class BadInput : public ::testing::Test {
 protected:
  static constexpr int d = 128;
  std::vector<float> x = llm_like(4, d, 1);
  std::vector<uint8_t> codes = std::vector<uint8_t>(4 * 64, 0xEE);
  std::vector<uint16_t> scales = std::vector<uint16_t>(4, 0xEEEE);
  tq::cpu::EncodeArgs args() {
    tq::cpu::EncodeArgs a;
    a.codec = tq::make_codec(d, 4);
    a.input = tq::matrix_view(static_cast<const void*>(x.data()), tq::DType::kF32, 4, d);
    a.dense = {codes.data(), scales.data()};
    return a;
  }
  void expect_error(const tq::cpu::EncodeArgs& a, tq::StatusCode code, const std::string& text) {
    const tq::Status st = tq::cpu::encode(a);
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(text), std::string::npos) << "message: " << st.message();
    for (uint8_t b : codes) ASSERT_EQ(b, 0xEE) << "codes written on error";
    for (uint16_t s : scales) ASSERT_EQ(s, 0xEEEE) << "scales written on error";
  }
};

TEST_F(BadInput, UnsupportedHeadDim) {
  for (int hd : {96, 100}) {
    auto a = args();
    a.codec.head_dim = hd;
    expect_error(a, tq::StatusCode::kUnsupportedFormat, "head_dim = " + std::to_string(hd));
  }
}
TEST_F(BadInput, UnsupportedBits) {
  for (int b : {0, 5}) {
    auto a = args();
    a.codec.bits = b;
    expect_error(a, tq::StatusCode::kUnsupportedFormat, "bits = " + std::to_string(b));
  }
}
TEST_F(BadInput, NullPointers) {
  auto a = args();
  a.input.data = nullptr;
  expect_error(a, tq::StatusCode::kInvalidArgument, "input.data = null");
  a = args();
  a.dense.scales = nullptr;
  expect_error(a, tq::StatusCode::kInvalidArgument, "dense.scales = null");
  a = args();
  a.dense = {};
  expect_error(a, tq::StatusCode::kInvalidArgument, "destination");
}
TEST_F(BadInput, ZeroRows) {
  auto a = args();
  a.input.dim0 = 0;
  expect_error(a, tq::StatusCode::kInvalidArgument, "input.dim0 = 0");
}
TEST_F(BadInput, MismatchedShapesAndStrides) {
  auto a = args();
  a.input.head_dim = 64;
  expect_error(a, tq::StatusCode::kInvalidArgument, "input.head_dim = 64");
  a = args();
  a.input.stride0 = 100;  // rows of 128 would overlap
  expect_error(a, tq::StatusCode::kInvalidArgument, "input.stride0 = 100");
}
TEST_F(BadInput, NonFiniteRows) {
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    x[2 * d + 17] = bad;
    expect_error(args(), tq::StatusCode::kNonFinite, "input[2][0][17]");
  }
}
TEST_F(BadInput, MisalignedPointers) {
  auto a = args();
  a.input.data = reinterpret_cast<const uint8_t*>(x.data()) + 2;
  expect_error(a, tq::StatusCode::kMisaligned, "input.data");
  a = args();
  a.dense.scales = reinterpret_cast<uint8_t*>(scales.data()) + 1;
  expect_error(a, tq::StatusCode::kMisaligned, "dense.scales");
}
TEST_F(BadInput, SlotBeyondThePool) {
  const tq::Format f = tq::make_format(d, 4, 4);
  const auto l = tq::layout::page_layout(f, 16, 1);
  std::vector<uint8_t> pool(2 * l.page_bytes, 0xEE);
  const int64_t slots[4] = {0, 1, 32, 2};
  auto a = args();
  a.dense = {};
  a.paged = {pool.data(), 2, l, false, slots};
  const tq::Status st = tq::cpu::encode(a);
  EXPECT_EQ(st.code(), tq::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("slot_mapping[2] = 32"), std::string::npos) << st.message();
  for (uint8_t b : pool) ASSERT_EQ(b, 0xEE);
}
TEST_F(BadInput, DecodeRejectsBadBlockTable) {
  const tq::Format f = tq::make_format(d, 4, 4);
  const auto l = tq::layout::page_layout(f, 16, 1);
  std::vector<uint8_t> pool(2 * l.page_bytes, 0);
  const int32_t table[2] = {1, 9};
  const int32_t len = 20;
  std::vector<float> out(32 * d, -1.0f);
  tq::cpu::DecodeArgs da;
  da.codec = f.key;
  da.paged = {pool.data(), 2, l, table, 2, &len, 1};
  da.max_tokens = 32;
  da.output = tq::tensor_view(static_cast<void*>(out.data()), tq::DType::kF32, 32, 1, d);
  tq::Status st = tq::cpu::decode(da);
  EXPECT_EQ(st.code(), tq::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("block_table[0][1] = 9"), std::string::npos) << st.message();
  const int32_t too_long = 40;
  da.paged.seq_lens = &too_long;
  st = tq::cpu::decode(da);
  EXPECT_NE(st.message().find("seq_lens[0] = 40"), std::string::npos) << st.message();
  for (float v : out) ASSERT_EQ(v, -1.0f);
}
