// Oracles shared by the tests: the D_mse table of GUIDE section 2 and the relative error measure.
#pragma once

#include <cstddef>
#include <vector>

namespace turboquant::testing {

// E ||u - Q(u)||^2 of the exact Lloyd-Max quantizer of the finite-d coordinate law (GUIDE
// section 2), d in {64, 128, 256}, bits 1..4.
inline double guide_d_mse(int d, int bits) {
  static const double table[3][4] = {{0.35839, 0.11453, 0.03339, 0.00913},
                                     {0.36089, 0.11600, 0.03397, 0.00931},
                                     {0.36214, 0.11674, 0.03426, 0.00941}};
  return table[d == 64 ? 0 : d == 128 ? 1 : 2][bits - 1];
}

// Mean over rows of ||x - y||^2 / ||x||^2 for rows of d values, in double.
inline double relative_mse(const float* x, const float* y, size_t rows, int d) {
  double acc = 0;
  for (size_t i = 0; i < rows; ++i) {
    double e = 0, r = 0;
    for (int j = 0; j < d; ++j) {
      const double a = x[i * d + j], b = y[i * d + j];
      e += (a - b) * (a - b);
      r += a * a;
    }
    acc += e / r;
  }
  return acc / static_cast<double>(rows);
}
inline double relative_mse(const std::vector<float>& x, const std::vector<float>& y, int d) {
  return relative_mse(x.data(), y.data(), x.size() / d, d);
}

}  // namespace turboquant::testing
