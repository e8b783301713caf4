// Scalar codebooks for the rotated coordinates.
//
// After the RHT a unit vector's coordinate z follows, for head_dim d, the law with density
// proportional to (1 - z^2)^((d - 3) / 2) on [-1, 1]. The Lloyd-Max quantizer of that law with
// 2^bits levels minimises E (z - Q(z))^2; d times that is D_mse, the expected squared error of a
// unit vector. solve_lloyd_max() computes it (Gauss-Legendre integration, Lloyd iteration until
// no level moves by more than 1e-12); codebook_tables.hpp ships the result for d in {64, 128,
// 256} x bits in {1, 2, 3, 4}, and a test regenerates them with the solver.
//
// A Codebook holds the levels and the L - 1 interior boundaries. Bucketing follows the strictly-less
// rule: index = number of interior boundaries strictly less than the value, so a value equal to a
// boundary goes to the lower bucket (this is the Python library's rule, and its outer ends only
// clamp). Custom codebooks (any sorted levels and boundaries) and codebooks fitted to calibration
// samples (fit_codebook, a 1-D Lloyd fit) are accepted wherever a Codebook is.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "turboquant/codebook_tables.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/status.hpp"

namespace turboquant {

inline constexpr int32_t kMaxBits = 4;
inline constexpr int32_t kMaxLevels = 1 << kMaxBits;

struct Codebook {
  int32_t bits = 0;                         // 1..4; 2^bits levels
  float levels[kMaxLevels] = {};            // sorted ascending, levels[0 .. 2^bits)
  float boundaries[kMaxLevels - 1] = {};    // interior, sorted, boundaries[0 .. 2^bits - 1)

  TQ_HOST_DEVICE int32_t num_levels() const noexcept { return 1 << bits; }
  // Strictly-less bucketize: count of interior boundaries b with b < v.
  TQ_HOST_DEVICE int32_t index_of(float v) const noexcept {
    int32_t idx = 0;
    for (int32_t i = 0; i + 1 < (1 << bits); ++i) idx += (boundaries[i] < v) ? 1 : 0;
    return idx;
  }
};

// Checks a custom codebook: bits in 1..4, finite strictly increasing levels, finite
// non-decreasing boundaries with boundaries[i] in [levels[i], levels[i + 1]].
[[nodiscard]] inline Status validate(const Codebook& cb) noexcept {
  if (cb.bits < 1 || cb.bits > kMaxBits)
    return make_status(StatusCode::kUnsupportedFormat, "codebook.bits = ", cb.bits,
                       ": supported are 1, 2, 3, 4");
  const int32_t n = cb.num_levels();
  for (int32_t i = 0; i < n; ++i) {
    if (!std::isfinite(cb.levels[i]))
      return make_status(StatusCode::kInvalidArgument, "codebook.levels[", i, "] = ", cb.levels[i],
                         ": not finite");
    if (i > 0 && !(cb.levels[i] > cb.levels[i - 1]))
      return make_status(StatusCode::kInvalidArgument, "codebook.levels[", i, "] = ", cb.levels[i],
                         ": levels must increase strictly");
  }
  for (int32_t i = 0; i + 1 < n; ++i) {
    const float b = cb.boundaries[i];
    if (!std::isfinite(b) || b < cb.levels[i] || b > cb.levels[i + 1])
      return make_status(StatusCode::kInvalidArgument, "codebook.boundaries[", i, "] = ", b,
                         ": must lie between levels ", i, " and ", i + 1);
  }
  return Status::ok();
}

// The shipped Lloyd-Max codebook for (head_dim, bits); bits = 0 for unsupported pairs.
[[nodiscard]] inline Codebook lloyd_max_codebook(int32_t head_dim, int32_t bits) noexcept {
  Codebook cb{};
  const double* levels = codebook_tables::levels(head_dim, bits);
  if (levels == nullptr) return cb;
  cb.bits = bits;
  const int32_t n = 1 << bits;
  for (int32_t i = 0; i < n; ++i) cb.levels[i] = static_cast<float>(levels[i]);
  for (int32_t i = 0; i + 1 < n; ++i)
    cb.boundaries[i] = static_cast<float>(0.5 * (levels[i] + levels[i + 1]));
  return cb;
}

// Codebook from explicit levels and interior boundaries (for example another library's).
[[nodiscard]] inline Codebook make_codebook(int32_t bits, const float* levels,
                                            const float* interior_boundaries) noexcept {
  Codebook cb{};
  cb.bits = bits;
  const int32_t n = 1 << std::clamp(bits, 0, kMaxBits);
  for (int32_t i = 0; i < n; ++i) cb.levels[i] = levels[i];
  for (int32_t i = 0; i + 1 < n; ++i) cb.boundaries[i] = interior_boundaries[i];
  return cb;
}

// ---- the solver ----------------------------------------------------------------------------

struct LloydMaxSolution {
  std::vector<double> levels;      // 2^bits, ascending
  std::vector<double> boundaries;  // 2^bits - 1 interior midpoints
  double coordinate_mse = 0.0;     // E (z - Q(z))^2 for one coordinate
  double d_mse = 0.0;              // head_dim * coordinate_mse: E ||u - Q(u)||^2 of a unit vector
  int32_t iterations = 0;
};

namespace detail {

// 32-point Gauss-Legendre nodes/weights on [-1, 1] (computed once by Newton on P_32).
struct GaussLegendre32 {
  double x[32];
  double w[32];
  GaussLegendre32() noexcept {
    constexpr int n = 32;
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < n; ++i) {
      double z = std::cos(pi * (i + 0.75) / (n + 0.5));
      double dp = 0.0;
      for (int it = 0; it < 100; ++it) {
        double p0 = 1.0, p1 = 0.0;
        for (int k = 1; k <= n; ++k) {
          const double p2 = p1;
          p1 = p0;
          p0 = ((2.0 * k - 1.0) * z * p1 - (k - 1.0) * p2) / k;
        }
        dp = n * (z * p0 - p1) / (z * z - 1.0);
        const double dz = p0 / dp;
        z -= dz;
        if (std::fabs(dz) < 1e-16) break;
      }
      x[i] = z;
      w[i] = 2.0 / ((1.0 - z * z) * dp * dp);
    }
  }
};

// Integrals of z^k f(z), k = 0, 1, 2, over [a, b] for the unnormalised density
// f(z) = (1 - z^2)^((d-3)/2), by composite 32-point Gauss-Legendre on `pieces` sub-intervals.
inline void coordinate_moments(int32_t d, double a, double b, double out[3]) noexcept {
  static const GaussLegendre32 gl;
  constexpr int pieces = 64;
  const double e = 0.5 * (d - 3);
  out[0] = out[1] = out[2] = 0.0;
  const double h = (b - a) / pieces;
  for (int p = 0; p < pieces; ++p) {
    const double lo = a + p * h, mid = lo + 0.5 * h;
    for (int i = 0; i < 32; ++i) {
      const double z = mid + 0.5 * h * gl.x[i];
      const double one_minus = 1.0 - z * z;
      const double f = one_minus <= 0.0 ? 0.0 : std::exp(e * std::log(one_minus));
      const double wf = 0.5 * h * gl.w[i] * f;
      out[0] += wf;
      out[1] += wf * z;
      out[2] += wf * z * z;
    }
  }
}

}  // namespace detail

// Lloyd-Max quantizer of the rotated-coordinate law for head_dim d (>= 4) and bits 1..4.
// Iterates until no level moves by more than `tolerance`.
[[nodiscard]] inline LloydMaxSolution solve_lloyd_max(int32_t d, int32_t bits,
                                                      double tolerance = 1e-12,
                                                      int32_t max_iterations = 100000) {
  LloydMaxSolution s;
  const int32_t n = 1 << bits;
  // The law is concentrated within a few standard deviations (1/sqrt(d)); integrate over
  // [-span, span] with span = min(1, 12 / sqrt(d)), where the mass left outside is < 1e-30.
  const double span = std::min(1.0, 12.0 / std::sqrt(static_cast<double>(d)));
  double total[3];
  detail::coordinate_moments(d, -span, span, total);
  s.levels.resize(n);
  s.boundaries.resize(n - 1);
  const double sigma = 1.0 / std::sqrt(static_cast<double>(d));
  for (int32_t i = 0; i < n; ++i) s.levels[i] = sigma * (2.0 * (i + 0.5) / n - 1.0) * 2.0;
  std::vector<double> edges(n + 1);
  for (int32_t it = 1; it <= max_iterations; ++it) {
    edges[0] = -span;
    edges[n] = span;
    for (int32_t i = 0; i + 1 < n; ++i) edges[i + 1] = 0.5 * (s.levels[i] + s.levels[i + 1]);
    double moved = 0.0, mse = 0.0;
    for (int32_t i = 0; i < n; ++i) {
      double m[3];
      detail::coordinate_moments(d, edges[i], edges[i + 1], m);
      const double c = m[1] / m[0];
      moved = std::max(moved, std::fabs(c - s.levels[i]));
      s.levels[i] = c;
      mse += m[2] - 2.0 * c * m[1] + c * c * m[0];
    }
    s.coordinate_mse = mse / total[0];
    s.iterations = it;
    if (moved <= tolerance) break;
  }
  for (int32_t i = 0; i + 1 < n; ++i) s.boundaries[i] = 0.5 * (s.levels[i] + s.levels[i + 1]);
  // Recompute the distortion at the final levels and boundaries.
  double mse = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    double m[3];
    detail::coordinate_moments(d, i == 0 ? -span : s.boundaries[i - 1],
                               i + 1 == n ? span : s.boundaries[i], m);
    const double c = s.levels[i];
    mse += m[2] - 2.0 * c * m[1] + c * c * m[0];
  }
  s.coordinate_mse = mse / total[0];
  s.d_mse = s.coordinate_mse * d;
  return s;
}

// 1-D Lloyd fit of a codebook to calibration samples (for example rotated, normalised
// coordinates of real keys): levels start at the sample quantiles and move to the means of their
// cells until none moves by more than `tolerance` (relative to the sample spread). The Python
// library's CalibratedQuantizer does the same. Fails on bits outside 1..4, fewer samples than
// levels, or non-finite samples.
[[nodiscard]] inline Status fit_codebook(const float* samples, int64_t count, int32_t bits,
                                         Codebook* out, int32_t max_iterations = 1000,
                                         double tolerance = 1e-9) noexcept {
  if (bits < 1 || bits > kMaxBits)
    return make_status(StatusCode::kUnsupportedFormat, "bits = ", bits, ": supported are 1, 2, 3, 4");
  if (samples == nullptr) return make_status(StatusCode::kInvalidArgument, "samples = null");
  if (out == nullptr) return make_status(StatusCode::kInvalidArgument, "out = null");
  const int32_t n = 1 << bits;
  if (count < n)
    return make_status(StatusCode::kInvalidArgument, "count = ", count,
                       ": need at least as many samples as levels (", n, ")");
  try {
    std::vector<double> v(samples, samples + count);
    for (int64_t i = 0; i < count; ++i)
      if (!std::isfinite(v[i]))
        return make_status(StatusCode::kNonFinite, "samples[", i, "] = ", v[i]);
    std::sort(v.begin(), v.end());
    const double spread = std::max(v.back() - v.front(), 1e-30);
    std::vector<double> levels(n), sum(n), cnt(n);
    for (int32_t i = 0; i < n; ++i)
      levels[i] = v[static_cast<size_t>((i + 0.5) / n * static_cast<double>(count))];
    for (int32_t it = 0; it < max_iterations; ++it) {
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(cnt.begin(), cnt.end(), 0.0);
      int32_t cell = 0;
      for (const double x : v) {  // samples sorted: walk the cells once
        while (cell + 1 < n && 0.5 * (levels[cell] + levels[cell + 1]) < x) ++cell;
        sum[cell] += x;
        cnt[cell] += 1.0;
      }
      double moved = 0.0;
      for (int32_t i = 0; i < n; ++i) {
        if (cnt[i] == 0.0) continue;  // an empty cell keeps its level
        const double c = sum[i] / cnt[i];
        moved = std::max(moved, std::fabs(c - levels[i]));
        levels[i] = c;
      }
      std::sort(levels.begin(), levels.end());
      if (moved <= tolerance * spread) break;
    }
    // Duplicate levels (from ties in the samples) are pulled apart by the smallest float step.
    for (int32_t i = 1; i < n; ++i)
      if (!(static_cast<float>(levels[i]) > static_cast<float>(levels[i - 1])))
        levels[i] = std::nextafter(static_cast<float>(levels[i - 1]), 1e30f);
    Codebook cb{};
    cb.bits = bits;
    for (int32_t i = 0; i < n; ++i) cb.levels[i] = static_cast<float>(levels[i]);
    for (int32_t i = 0; i + 1 < n; ++i)
      cb.boundaries[i] = 0.5f * (cb.levels[i] + cb.levels[i + 1]);
    *out = cb;
    return Status::ok();
  } catch (...) {
    return make_status(StatusCode::kOutOfMemory, "fit_codebook: could not allocate ", count,
                       " samples");
  }
}

}  // namespace turboquant
