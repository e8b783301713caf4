// Precision experiment behind the prefill kernel's numerics (turboquant/cuda/prefill.hpp): float64
// attention over a coded prefix against the same computation with the kernel's fp16 roundings
// (queries normalised by their largest coordinate, key levels, probabilities, level * value
// scale) and with hi + lo splits of keys and / or queries. Not built by CMake; run by hand:
//   g++ -O2 -std=c++17 -Iinclude tests/tools/prefill_precision.cpp -o /tmp/prefill_precision
//   /tmp/prefill_precision   # ~3 minutes on one core; prints worst / mean relative row error
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
#include "turboquant/cpu/codec.hpp"
#include "turboquant/format.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/rht.hpp"
using namespace turboquant;
static double h(double x) { return half_bits_to_float(float_to_half_bits(static_cast<float>(x))); }
int main() {
  const int d = 128;
  for (int bits : {4, 3, 2}) {
  Format f = make_format(d, bits, bits, 77);
  for (int len : {100, 4096, 32768}) for (double qs : {1.0, 3.0}) {
    std::mt19937_64 rng(len + bits);
    std::normal_distribution<float> N;
    std::vector<float> k(size_t(len) * d), v(k.size());
    for (auto& x : k) x = N(rng);
    for (auto& x : v) x = N(rng);
    std::vector<uint8_t> kc(size_t(len) * d), vc(kc.size());
    std::vector<uint16_t> ks(len), vs(len);
    cpu::EncodeArgs e; e.codec = f.key; e.input = matrix_view<const void*>(k.data(), DType::kF32, len, d);
    e.dense.codes = kc.data(); e.dense.scales = ks.data(); (void)cpu::encode(e);
    e.codec = f.value; e.input = matrix_view<const void*>(v.data(), DType::kF32, len, d);
    e.dense.codes = vc.data(); e.dense.scales = vs.data(); (void)cpu::encode(e);
    const int rb = d * bits / 8;
    // level index tables
    std::vector<double> L(size_t(len) * d), VL(L.size()), KS(len), VS(len);
    for (int t = 0; t < len; ++t) {
      KS[t] = half_bits_to_float(ks[t]); VS[t] = half_bits_to_float(vs[t]);
      for (int j = 0; j < d; ++j) {
        L[size_t(t) * d + j] = f.key.codebook.levels[unpack_index(kc.data() + size_t(t) * rb, j, bits)];
        VL[size_t(t) * d + j] = f.value.codebook.levels[unpack_index(vc.data() + size_t(t) * rb, j, bits)];
      }
    }
    const char* names[5] = {"Khi Qhi", "Khi+lo Qhi", "Khi Qhi+lo", "Khi+lo Qhi+lo", "Khi+lo Qhi+lo Vscale-in-P"};
    double worst[5] = {}, mean[5] = {};
    const int nq = 16;
    for (int qi = 0; qi < nq; ++qi) {
      double q[kMaxHeadDim];
      for (int j = 0; j < d; ++j) q[j] = h(N(rng) * qs);
      rht_forward(q, d, f.key.signs);
      double mx = 0; for (int j = 0; j < d; ++j) mx = std::fmax(mx, std::fabs(q[j]));
      double qh[kMaxHeadDim], ql[kMaxHeadDim];
      for (int j = 0; j < d; ++j) { qh[j] = h(q[j] / mx); ql[j] = h(q[j] / mx - qh[j]); }
      const int T = len;
      std::vector<double> ref(d, 0), s(T);
      // exact
      auto attend = [&](int var, std::vector<double>& o) {
        double m = -1e300;
        for (int t = 0; t < T; ++t) {
          double dot = 0;
          for (int j = 0; j < d; ++j) {
            double lv = L[size_t(t) * d + j];
            double kh = h(lv), kl = h(lv - kh);
            double qv, kv;
            switch (var) {
              case -1: qv = q[j] / mx; kv = lv; break;
              case 0: qv = qh[j]; kv = kh; break;
              case 1: qv = qh[j]; kv = kh + kl; break;
              case 2: qv = qh[j] + ql[j]; kv = kh; break;
              default: qv = qh[j] + ql[j]; kv = kh + kl; break;
            }
            dot += qv * kv;
          }
          if (var >= 0) dot = static_cast<float>(dot);
          s[t] = dot * mx * KS[t] / std::sqrt(double(d));
          m = std::fmax(m, s[t]);
        }
        double l = 0; o.assign(d, 0);
        for (int t = 0; t < T; ++t) {
          double p = std::exp(s[t] - m);
          l += p;
          for (int j = 0; j < d; ++j) {
            double w;
            if (var < 0) w = p * VS[t] * VL[size_t(t) * d + j];
            else if (var == 4) w = h(p * VS[t]) * h(VL[size_t(t) * d + j]);
            else w = h(p) * h(VS[t] * VL[size_t(t) * d + j]);
            o[j] += w;
          }
        }
        for (int j = 0; j < d; ++j) o[j] /= l;
      };
      attend(-1, ref);
      double rn = 0; for (double x : ref) rn += x * x;
      for (int var = 0; var < 5; ++var) {
        std::vector<double> o; attend(var, o);
        double en = 0; for (int j = 0; j < d; ++j) en += (o[j] - ref[j]) * (o[j] - ref[j]);
        double rel = std::sqrt(en / rn);
        worst[var] = std::fmax(worst[var], rel); mean[var] += rel / nq;
      }
    }
    for (int var = 0; var < 5; ++var)
      std::printf("K%dV%d len %6d qscale %.0f  %-28s worst %.2e mean %.2e\n", bits, bits, len, qs, names[var], worst[var], mean[var]);
  }}
}
