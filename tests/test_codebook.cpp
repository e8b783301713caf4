// Lloyd-Max codebooks: the shipped tables against the solver, D_mse against the GUIDE table,
// the strictly-less rule, custom and calibrated codebooks.
#include <gtest/gtest.h>

#include "oracles.hpp"

#include <cmath>
#include <random>
#include <vector>

#include "turboquant/codebook.hpp"
#include "turboquant/rht.hpp"
#include "turboquant/signs.hpp"

namespace tq = turboquant;
using turboquant::testing::guide_d_mse;

class CodebookTable : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(CodebookTable, ShippedTableEqualsSolver) {
  const auto [d, bits] = GetParam();
  const tq::LloydMaxSolution s = tq::solve_lloyd_max(d, bits, 1e-10);
  const double* shipped = tq::codebook_tables::levels(d, bits);
  ASSERT_NE(shipped, nullptr);
  for (int i = 0; i < (1 << bits); ++i) EXPECT_NEAR(shipped[i], s.levels[i], 1e-7) << i;
  // Converged: a further Lloyd step moves nothing by more than 1e-10.
  EXPECT_NEAR(s.d_mse, guide_d_mse(d, bits), 5e-6);
  // Symmetric law, symmetric quantizer.
  for (int i = 0; i < (1 << bits); ++i) EXPECT_NEAR(s.levels[i], -s.levels[(1 << bits) - 1 - i], 1e-9);
  const tq::Codebook cb = tq::lloyd_max_codebook(d, bits);
  EXPECT_TRUE(tq::validate(cb).is_ok()) << tq::validate(cb).to_string();
}
INSTANTIATE_TEST_SUITE_P(All, CodebookTable,
                         ::testing::Combine(::testing::Values(64, 128, 256), ::testing::Values(1, 2, 3, 4)));

TEST(Codebook, UnsupportedPairsHaveNoTable) {
  EXPECT_EQ(tq::codebook_tables::levels(96, 4), nullptr);
  EXPECT_EQ(tq::codebook_tables::levels(128, 5), nullptr);
  EXPECT_EQ(tq::lloyd_max_codebook(128, 0).bits, 0);
}

TEST(Codebook, StrictlyLessRule) {
  const tq::Codebook cb = tq::lloyd_max_codebook(128, 2);
  // A value equal to a boundary goes to the lower bucket; just above goes up.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(cb.index_of(cb.boundaries[i]), i);
    EXPECT_EQ(cb.index_of(std::nextafter(cb.boundaries[i], 1.0f)), i + 1);
  }
  EXPECT_EQ(cb.index_of(-1.0f), 0);
  EXPECT_EQ(cb.index_of(1.0f), 3);
}

TEST(Codebook, CustomCodebookIsValidated) {
  const float levels[4] = {-0.3f, -0.1f, 0.1f, 0.3f};
  const float bounds[3] = {-0.2f, 0.0f, 0.2f};
  tq::Codebook cb = tq::make_codebook(2, levels, bounds);
  EXPECT_TRUE(tq::validate(cb).is_ok());
  cb.levels[2] = -0.2f;  // not increasing
  tq::Status st = tq::validate(cb);
  EXPECT_EQ(st.code(), tq::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("codebook.levels[2]"), std::string::npos) << st.message();
  cb = tq::make_codebook(2, levels, bounds);
  cb.boundaries[1] = 0.5f;  // outside its levels
  st = tq::validate(cb);
  EXPECT_NE(st.message().find("codebook.boundaries[1] = 0.5"), std::string::npos) << st.message();
  cb.bits = 5;
  EXPECT_EQ(tq::validate(cb).code(), tq::StatusCode::kUnsupportedFormat);
}

TEST(Codebook, CalibratedFitRecoversLloydMaxOnTheLaw) {
  // Rotated coordinates of random unit vectors follow the law; a 1-D Lloyd fit to them must land
  // near the exact Lloyd-Max levels.
  const int d = 128, bits = 3;
  const tq::SignBits s = tq::signs_from_seed(5, d);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> samples;
  std::vector<float> x(d);
  for (int v = 0; v < 4000; ++v) {
    double n = 0;
    for (auto& e : x) e = nd(rng) * (v % 7 == 0 ? 30.f : 1.f);
    tq::rht_forward(x.data(), d, s);
    for (float e : x) n += double(e) * e;
    for (float e : x) samples.push_back(static_cast<float>(e / std::sqrt(n)));
  }
  tq::Codebook fit;
  ASSERT_TRUE(tq::fit_codebook(samples.data(), static_cast<int64_t>(samples.size()), bits, &fit).is_ok());
  const tq::Codebook ref = tq::lloyd_max_codebook(d, bits);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(fit.levels[i], ref.levels[i], 0.03 * std::fabs(ref.levels[i]) + 1e-3);
  EXPECT_TRUE(tq::validate(fit).is_ok());
  // Bad calls.
  EXPECT_EQ(tq::fit_codebook(samples.data(), 3, 2, &fit).code(), tq::StatusCode::kInvalidArgument);
  EXPECT_EQ(tq::fit_codebook(nullptr, 100, 2, &fit).code(), tq::StatusCode::kInvalidArgument);
  EXPECT_EQ(tq::fit_codebook(samples.data(), 100, 0, &fit).code(), tq::StatusCode::kUnsupportedFormat);
  samples[17] = NAN;
  const tq::Status st = tq::fit_codebook(samples.data(), 100, 2, &fit);
  EXPECT_EQ(st.code(), tq::StatusCode::kNonFinite);
  EXPECT_NE(st.message().find("samples[17]"), std::string::npos);
}
