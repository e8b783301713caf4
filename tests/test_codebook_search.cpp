// The GPU kernels' bucketing tables (turboquant/codebook_search.hpp) on the host: the grid and the
// search tree give exactly Codebook::index_of for every shipped codebook and for custom ones, at
// every boundary, its float neighbours and random values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "turboquant/codebook_search.hpp"
#include "turboquant/format.hpp"

namespace tq = turboquant;

namespace {

// Values that stress a codebook: each boundary and its neighbours, the range ends, random values.
std::vector<float> probes(const tq::Codebook& cb, uint32_t seed) {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 1.00001f, -1.00001f};
  for (int32_t i = 0; i + 1 < cb.num_levels(); ++i) {
    float b = cb.boundaries[i];
    for (int k = 0; k < 3; ++k) b = std::nextafter(b, -2.0f);
    for (int k = 0; k < 7; ++k, b = std::nextafter(b, 2.0f)) v.push_back(b);
  }
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.15f);
  std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
  for (int k = 0; k < 20000; ++k) v.push_back(k % 2 ? nd(rng) : ud(rng));
  return v;
}

void expect_tables_match(const tq::Codebook& cb, bool grid_expected) {
  const tq::CodebookCells g = tq::codebook_cells(cb);
  const tq::CodebookSearchTable t = tq::codebook_search_table(cb);
  EXPECT_EQ(g.cells > 0, grid_expected);
  if (g.cells > 0) {
    EXPECT_GE(g.cells, tq::kMinCells);
    EXPECT_LE(g.cells, tq::kMaxCells);
    EXPECT_EQ(g.cells & (g.cells - 1), 0);
  }
  for (int32_t i = 0; i < cb.num_levels(); ++i) EXPECT_EQ(t.node[cb.num_levels() + i], cb.levels[i]);
  for (float u : probes(cb, static_cast<uint32_t>(cb.bits))) {
    const int32_t want = cb.index_of(u);
    ASSERT_EQ(tq::search_index(t, cb.bits, u), want) << "tree, bits " << cb.bits << ", u = " << u;
    if (g.cells > 0) {
      ASSERT_EQ(tq::cell_index(g, u), want) << "grid, bits " << cb.bits << ", u = " << u;
    }
  }
}

}  // namespace

TEST(CodebookSearch, ShippedCodebooksUseTheGridAndMatchIndexOf) {
  for (int32_t d : {64, 128, 256})
    for (int32_t bits = 1; bits <= tq::kMaxBits; ++bits) expect_tables_match(tq::lloyd_max_codebook(d, bits), true);
}

TEST(CodebookSearch, CustomCodebooksMatchIndexOf) {
  for (int32_t bits = 1; bits <= tq::kMaxBits; ++bits) {
    const int32_t n = 1 << bits;
    tq::Codebook cb{};
    cb.bits = bits;
    for (int32_t k = 0; k < n; ++k) cb.levels[k] = -0.9f + 1.3f * static_cast<float>(k * k) / static_cast<float>((n - 1) * (n - 1));
    for (int32_t k = 0; k + 1 < n; ++k) cb.boundaries[k] = 0.5f * (cb.levels[k] + cb.levels[k + 1]);
    ASSERT_TRUE(tq::validate(cb).is_ok());
    expect_tables_match(cb, true);
    if (bits >= 2) {  // two boundaries closer than any grid: the tree only
      cb.boundaries[0] = std::nextafter(cb.levels[1], -1.0f);
      cb.boundaries[1] = cb.levels[1];
      ASSERT_TRUE(tq::validate(cb).is_ok());
      expect_tables_match(cb, false);
    }
  }
}

TEST(CodebookSearch, EqualBoundariesFallBackToTheTree) {
  tq::Codebook cb = tq::lloyd_max_codebook(128, 3);
  cb.boundaries[4] = cb.boundaries[3] = cb.levels[4];
  ASSERT_TRUE(tq::validate(cb).is_ok());
  expect_tables_match(cb, false);
}
