// The CUDA codec (turboquant/cuda/codec.hpp) against the CPU reference: encode / decode / rotate
// parity over every built (head_dim, bits) x scale mode x norm storage x dtype, strided rows,
// normal and LLM-like inputs; the D_mse table from GPU outputs; paged scatter and block-table
// gather; in-place rotation; CUDA-graph capture and replay; non-finite rows; every bad-input path
// (right Status, nothing written). Outputs are poisoned (0xCD) before every GPU run.
// Skips without a CUDA device. TQ_SANITIZER (set for the compute-sanitizer runs) shrinks sizes.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "turboquant/codebook_search.hpp"
#include "turboquant/cpu/codec.hpp"
#include "turboquant/cuda/codec.hpp"

namespace tq = turboquant;
namespace tqc = turboquant::cuda;

namespace {

constexpr uint8_t kPoison = 0xCD;
constexpr tq::DType kDTypes[] = {tq::DType::kF32, tq::DType::kF16, tq::DType::kBF16};
constexpr tq::ScaleMode kScales[] = {tq::ScaleMode::kRawNorm, tq::ScaleMode::kNormPreserving,
                                     tq::ScaleMode::kLeastSquares};
constexpr tq::NormStorage kNorms[] = {tq::NormStorage::kF32, tq::NormStorage::kF16};

bool has_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
bool under_sanitizer() { return std::getenv("TQ_SANITIZER") != nullptr; }

#define TQ_SKIP_WITHOUT_DEVICE() \
  if (!has_device()) GTEST_SKIP() << "no CUDA device"

#define CUDA_OK(expr)                                                                \
  do {                                                                               \
    const cudaError_t tq_e_ = (expr);                                                \
    ASSERT_EQ(tq_e_, cudaSuccess) << #expr << ": " << cudaGetErrorName(tq_e_);       \
  } while (0)

#define TQ_OK(expr)                                                  \
  do {                                                               \
    const ::turboquant::Status tq_s_ = (expr);                       \
    ASSERT_TRUE(tq_s_.is_ok()) << #expr << ": " << tq_s_.to_string(); \
  } while (0)

// Device memory owned by a test.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, std::max<size_t>(bytes, 1)) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }

  [[nodiscard]] void* get() const { return ptr_; }
  template <typename T>
  [[nodiscard]] T* as() const {
    return static_cast<T*>(ptr_);
  }
  [[nodiscard]] size_t bytes() const { return bytes_; }
  void upload(const void* host) const { ASSERT_EQ(cudaMemcpy(ptr_, host, bytes_, cudaMemcpyHostToDevice), cudaSuccess); }
  template <typename T>
  void upload(const std::vector<T>& host) const {
    ASSERT_EQ(host.size() * sizeof(T), bytes_);
    upload(host.data());
  }
  void fill(uint8_t byte) const { ASSERT_EQ(cudaMemset(ptr_, byte, bytes_), cudaSuccess); }
  [[nodiscard]] std::vector<uint8_t> download() const {
    std::vector<uint8_t> host(bytes_);
    if (cudaMemcpy(host.data(), ptr_, bytes_, cudaMemcpyDeviceToHost) != cudaSuccess) host.clear();
    return host;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
std::vector<T> download_as(const DeviceBuffer& b) {
  const std::vector<uint8_t> bytes = b.download();
  std::vector<T> out(bytes.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

double guide_d_mse(int d, int bits) {  // GUIDE section 2
  static const double table[3][4] = {{0.35839, 0.11453, 0.03339, 0.00913},
                                     {0.36089, 0.11600, 0.03397, 0.00931},
                                     {0.36214, 0.11674, 0.03426, 0.00941}};
  return table[d == 64 ? 0 : d == 128 ? 1 : 2][bits - 1];
}

// Rows of head_dim floats: random normal, or LLM-like (log-normal norms, outlier channels x20).
std::vector<float> make_rows(int64_t rows, int d, bool llm_like, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(rows) * d);
  for (int64_t i = 0; i < rows; ++i) {
    const float scale = llm_like ? std::exp(1.5f * nd(rng)) : 1.0f;
    for (int j = 0; j < d; ++j) {
      const bool outlier = llm_like && (j % 41 == 7);
      x[static_cast<size_t>(i) * d + j] = nd(rng) * scale * (outlier ? 20.0f : 1.0f);
    }
  }
  return x;
}

// A host tensor [dim0, dim1, d] of `dtype` with strides (elements), holding `values` (dense rows).
struct HostTensor {
  tq::DType dtype = tq::DType::kF32;
  int64_t dim0 = 0;
  int32_t dim1 = 0;
  int32_t d = 0;
  int64_t stride0 = 0, stride1 = 0;
  std::vector<uint8_t> bytes;

  [[nodiscard]] int64_t elements() const { return (dim0 - 1) * stride0 + (dim1 - 1) * stride1 + d; }
  [[nodiscard]] float at(int64_t t, int32_t h, int32_t j) const {
    return tq::load_as_float(bytes.data(), t * stride0 + h * stride1 + j, dtype);
  }
  [[nodiscard]] tq::ConstView view(const void* data) const {
    return tq::ConstView{data, dtype, dim0, dim1, d, stride0, stride1};
  }
  [[nodiscard]] tq::View mutable_view(void* data) const {
    return tq::View{data, dtype, dim0, dim1, d, stride0, stride1};
  }
};

// Padding keeps rows 16-byte aligned for every dtype (multiples of 8 elements).
HostTensor make_tensor(tq::DType dtype, int64_t dim0, int32_t dim1, int32_t d, bool strided,
                       const std::vector<float>& values) {
  HostTensor t;
  t.dtype = dtype;
  t.dim0 = dim0;
  t.dim1 = dim1;
  t.d = d;
  constexpr int32_t kPad1 = 16, kPad0 = 24;
  t.stride1 = strided ? d + kPad1 : d;
  t.stride0 = strided ? dim1 * t.stride1 + kPad0 : static_cast<int64_t>(dim1) * d;
  t.bytes.assign(static_cast<size_t>(t.elements()) * tq::dtype_bytes(dtype), kPoison);
  for (int64_t i = 0; i < dim0; ++i)
    for (int32_t h = 0; h < dim1; ++h)
      for (int32_t j = 0; j < d; ++j)
        tq::store_from_float(t.bytes.data(), i * t.stride0 + h * t.stride1 + j, dtype,
                             values[(static_cast<size_t>(i) * dim1 + h) * d + j]);
  return t;
}

// Unit coordinates of row (t, h) as the CPU computes them (for checking where codes differ).
std::vector<float> cpu_unit_coordinates(const tq::CodecSpec& c, const HostTensor& in, int64_t t, int32_t h) {
  std::vector<float> y(c.head_dim);
  for (int32_t j = 0; j < c.head_dim; ++j) y[j] = in.at(t, h, j);
  tq::rht_forward(y.data(), c.head_dim, c.signs);
  float sum_sq = 0.0f;
  for (float v : y) sum_sq += v * v;
  const float norm = std::sqrt(sum_sq);
  const float inv = norm > 0.0f ? 1.0f / norm : 0.0f;
  for (float& v : y) v *= inv;
  return y;
}

float distance_to_boundary(const tq::Codebook& cb, float u) {
  float best = std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i + 1 < cb.num_levels(); ++i) best = std::min(best, std::fabs(u - cb.boundaries[i]));
  return best;
}

uint16_t half_bits(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
float f32_at(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Per-row relative L2 error of `got` against `want` (both [rows, d] floats).
double max_relative_row_error(const std::vector<float>& got, const std::vector<float>& want, int d) {
  double worst = 0.0;
  for (size_t r = 0; r < want.size() / d; ++r) {
    double e = 0.0, n = 0.0;
    for (int j = 0; j < d; ++j) {
      const double a = got[r * d + j], b = want[r * d + j];
      e += (a - b) * (a - b);
      n += b * b;
    }
    worst = std::max(worst, n > 0.0 ? std::sqrt(e / n) : std::sqrt(e));
  }
  return worst;
}

// Reads rows of a host tensor into floats [dim0 * dim1, d].
std::vector<float> rows_of(const HostTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.dim0) * t.dim1 * t.d);
  for (int64_t i = 0; i < t.dim0; ++i)
    for (int32_t h = 0; h < t.dim1; ++h)
      for (int32_t j = 0; j < t.d; ++j) out[(static_cast<size_t>(i) * t.dim1 + h) * t.d + j] = t.at(i, h, j);
  return out;
}

// One codec configuration for the parity sweep.
tq::CodecSpec codec_for(int32_t d, int32_t bits, tq::ScaleMode scale, tq::NormStorage norm) {
  tq::CodecSpec c = tq::make_codec(d, bits);
  c.scale = scale;
  c.norm = norm;
  return c;
}

struct ParityTotals {
  int64_t coordinates = 0;
  int64_t code_mismatches = 0;
};

// Encodes `in` on the CPU and the GPU (dense), compares codes and scales, then decodes the GPU's
// codes on both and compares the vectors (output dtype = input dtype).
void check_encode_decode_parity(const tq::CodecSpec& c, const HostTensor& in, ParityTotals& totals) {
  const int64_t rows = in.dim0 * in.dim1;
  const int64_t cb = c.code_bytes();
  const int32_t sb = tq::norm_bytes(c.norm);
  const std::string where = std::string("d=") + std::to_string(c.head_dim) + " bits=" + std::to_string(c.bits) +
                            " scale=" + tq::to_string(c.scale) + " norm=" + std::to_string(sb) +
                            " dtype=" + tq::to_string(in.dtype);

  std::vector<uint8_t> cpu_codes(rows * cb), cpu_scales(rows * sb);
  {
    tq::cpu::EncodeArgs a;
    a.codec = c;
    a.input = in.view(in.bytes.data());
    a.dense = {cpu_codes.data(), cpu_scales.data()};
    TQ_OK(tq::cpu::encode(a));
  }

  DeviceBuffer input(in.bytes.size()), codes(rows * cb), scales(rows * sb), counter(sizeof(int32_t));
  input.upload(in.bytes);
  codes.fill(kPoison);
  scales.fill(kPoison);
  counter.fill(0);
  tqc::EncodeArgs ea;
  ea.codec = c;
  ea.input = in.view(input.get());
  ea.dense = {codes.as<uint8_t>(), scales.get()};
  ea.nonfinite_count = counter.as<int32_t>();
  TQ_OK(tqc::can_implement(ea));
  ASSERT_EQ(tqc::workspace_bytes(ea), 0u);
  TQ_OK(tqc::encode(ea, {}, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint8_t> gpu_codes = codes.download(), gpu_scales = scales.download();
  ASSERT_EQ(download_as<int32_t>(counter)[0], 0) << where;

  // Codes: equal except where a coordinate ties a boundary to the last bits.
  std::vector<bool> row_matches(rows, true);
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t j = 0; j < c.head_dim; ++j) {
      const uint32_t g = tq::unpack_index(gpu_codes.data() + r * cb, j, c.bits);
      const uint32_t w = tq::unpack_index(cpu_codes.data() + r * cb, j, c.bits);
      if (g == w) continue;
      row_matches[r] = false;
      ++totals.code_mismatches;
      const std::vector<float> u = cpu_unit_coordinates(c, in, r / in.dim1, static_cast<int32_t>(r % in.dim1));
      EXPECT_LE(distance_to_boundary(c.codebook, u[j]), 1e-5f)
          << where << " row " << r << " coordinate " << j << ": gpu index " << g << ", cpu " << w << ", u = " << u[j];
    }
  }
  totals.coordinates += rows * c.head_dim;

  // Scales (rows whose codes agree): fp32 to summation-order rounding, fp16 within one ulp.
  for (int64_t r = 0; r < rows; ++r) {
    if (!row_matches[r]) continue;
    if (c.norm == tq::NormStorage::kF32) {
      const float g = f32_at(gpu_scales.data() + r * sb), w = f32_at(cpu_scales.data() + r * sb);
      // ||y||^2, <u, c> and ||c||^2 are float sums of head_dim terms, in another order than the
      // CPU's (whose own rounding error is of this size): a few parts per million. The largest
      // difference seen in emulation of the kernels' arithmetic was 1.3e-6.
      constexpr float kRelativeTolerance = 5e-6f;
      const float tolerance = kRelativeTolerance * std::fabs(w) + std::numeric_limits<float>::min();
      EXPECT_LE(std::fabs(g - w), tolerance) << where << " row " << r << ": scale " << g << " vs cpu " << w;
    } else {
      const int g = half_bits(gpu_scales.data() + r * sb), w = half_bits(cpu_scales.data() + r * sb);
      EXPECT_LE(std::abs(g - w), 1) << where << " row " << r << ": fp16 scale bits " << g << " vs cpu " << w;
    }
  }

  // Decode the GPU's codes on both sides (output in the input's dtype and layout).
  HostTensor cpu_out = in;  // same layout; the bytes are overwritten row by row
  std::fill(cpu_out.bytes.begin(), cpu_out.bytes.end(), kPoison);
  {
    tq::cpu::DecodeArgs a;
    a.codec = c;
    a.dense = {gpu_codes.data(), gpu_scales.data()};
    a.output = cpu_out.mutable_view(cpu_out.bytes.data());
    TQ_OK(tq::cpu::decode(a));
  }
  DeviceBuffer out(in.bytes.size());
  out.fill(kPoison);
  tqc::DecodeArgs da;
  da.codec = c;
  da.dense = {codes.as<uint8_t>(), scales.get()};
  da.output = in.mutable_view(out.get());
  TQ_OK(tqc::can_implement(da));
  TQ_OK(tqc::decode(da, {}, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  HostTensor gpu_out = in;
  gpu_out.bytes = out.download();
  // Padding between rows stays poisoned on both sides.
  ASSERT_EQ(gpu_out.bytes.size(), cpu_out.bytes.size());
  const double err = max_relative_row_error(rows_of(gpu_out), rows_of(cpu_out), c.head_dim);
  EXPECT_LE(err, 1e-5) << where << ": decoded vectors differ from the CPU decode";
  int64_t differing_bytes = 0;
  for (size_t i = 0; i < gpu_out.bytes.size(); ++i) differing_bytes += gpu_out.bytes[i] != cpu_out.bytes[i];
  EXPECT_EQ(differing_bytes, 0) << where << ": decode is meant to be bit-exact with the CPU (max rel err " << err << ")";
}

}  // namespace

// ---- the table ---------------------------------------------------------------------------------

// More than 2^30 rows in one call (the kernels index rows with 32 bits) is a Status naming the view,
// checked before anything touches memory (the pointers here are never dereferenced).
TEST(CudaCodecHost, TooManyRowsIsAStatus) {
  constexpr int32_t d = 128;
  constexpr int64_t kRows = (int64_t{1} << 30) + 1;
  const tq::CodecSpec codec = codec_for(d, 4, tq::ScaleMode::kLeastSquares, tq::NormStorage::kF16);
  auto* fake = reinterpret_cast<uint8_t*>(uintptr_t{1} << 40);  // 256-byte aligned, never read
  tqc::EncodeArgs e;
  e.codec = codec;
  e.input = tq::matrix_view<const void*>(fake, tq::DType::kF16, kRows, d);
  e.dense = {fake, fake};
  tq::Status st = tqc::can_implement(e);
  EXPECT_EQ(st.code(), tq::StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_NE(st.to_string().find("input is [1073741825"), std::string::npos) << st.to_string();
  e.input = tq::matrix_view<const void*>(fake, tq::DType::kF16, kRows - 1, d);
  EXPECT_TRUE(tqc::can_implement(e).is_ok()) << tqc::can_implement(e).to_string();

  tqc::DecodeArgs dec;
  dec.codec = codec;
  dec.dense = {fake, fake};
  dec.output = tq::matrix_view<void*>(fake, tq::DType::kF16, kRows, d);
  st = tqc::can_implement(dec);
  EXPECT_EQ(st.code(), tq::StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_NE(st.to_string().find("output is [1073741825"), std::string::npos) << st.to_string();

  tqc::RotateArgs r;
  r.input = tq::matrix_view<const void*>(fake, tq::DType::kF16, kRows, d);
  r.output = tq::matrix_view<void*>(fake, tq::DType::kF16, kRows, d);
  st = tqc::can_implement(r);
  EXPECT_EQ(st.code(), tq::StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_NE(st.to_string().find("2^30"), std::string::npos) << st.to_string();
}

TEST(CudaCodecHost, TableCoversEveryHeadDimAndBits) {
  std::vector<std::pair<int, int>> seen;
  for (int32_t i = 0; i < tqc::num_codec_kernels(); ++i) seen.emplace_back(tqc::codec_kernel(i).head_dim, tqc::codec_kernel(i).bits);
  for (int d : {64, 128, 256})
    for (int b = 1; b <= 4; ++b)
      EXPECT_NE(std::find(seen.begin(), seen.end(), std::make_pair(d, b)), seen.end()) << "d=" << d << " bits=" << b;
  std::vector<int> rotate_dims;
  for (int32_t i = 0; i < tqc::num_rotate_kernels(); ++i) rotate_dims.push_back(tqc::rotate_kernel_head_dim(i));
  for (int d : {64, 128, 256}) EXPECT_NE(std::find(rotate_dims.begin(), rotate_dims.end(), d), rotate_dims.end());
  EXPECT_EQ(tqc::codec_kernel(-1).head_dim, 0);
  EXPECT_EQ(tqc::codec_kernel(tqc::num_codec_kernels()).bits, 0);
}

// ---- parity with the CPU reference --------------------------------------------------------------

TEST(CudaCodec, EncodeDecodeMatchCpuForEveryKernel) {
  TQ_SKIP_WITHOUT_DEVICE();
  const int64_t tokens = under_sanitizer() ? 8 : 256;
  constexpr int32_t kHeads = 4;
  ParityTotals totals;
  uint32_t seed = 1;
  for (int32_t i = 0; i < tqc::num_codec_kernels(); ++i) {
    const tqc::CodecKernelKey key = tqc::codec_kernel(i);
    int variant = 0;
    for (tq::ScaleMode scale : kScales)
      for (tq::NormStorage norm : kNorms)
        for (tq::DType dtype : kDTypes) {
          const bool llm = (variant % 2) == 1, strided = (variant % 3) == 2;
          ++variant;
          const tq::CodecSpec c = codec_for(key.head_dim, key.bits, scale, norm);
          const std::vector<float> x = make_rows(tokens * kHeads, key.head_dim, llm, seed++);
          const HostTensor in = make_tensor(dtype, tokens, kHeads, key.head_dim, strided, x);
          check_encode_decode_parity(c, in, totals);
          if (HasFatalFailure()) return;
        }
  }
  // Ties are rare: at most 1e-5 of the coordinates may get another code than on the CPU.
  EXPECT_LE(static_cast<double>(totals.code_mismatches), 1e-5 * static_cast<double>(totals.coordinates) + 1.0)
      << totals.code_mismatches << " of " << totals.coordinates << " codes differ from the CPU";
  RecordProperty("code_mismatches", std::to_string(totals.code_mismatches));
}

TEST(CudaCodec, CustomCodebooksMatchCpu) {
  TQ_SKIP_WITHOUT_DEVICE();
  const int64_t tokens = under_sanitizer() ? 8 : 128;
  ParityTotals totals;
  // An asymmetric uniform codebook (grid path) and one with two boundaries 1e-6 apart (too close
  // for the grid: the search-tree path).
  for (int variant = 0; variant < 2; ++variant)
    for (int32_t bits : {2, 3, 4}) {
      tq::CodecSpec c = tq::make_codec(128, bits);
      c.scale = tq::ScaleMode::kLeastSquares;
      c.norm = tq::NormStorage::kF32;
      const int32_t n = 1 << bits;
      for (int32_t k = 0; k < n; ++k) c.codebook.levels[k] = -0.2f + 0.35f * static_cast<float>(k) / static_cast<float>(n - 1);
      for (int32_t k = 0; k + 1 < n; ++k)
        c.codebook.boundaries[k] = 0.5f * (c.codebook.levels[k] + c.codebook.levels[k + 1]);
      if (variant == 1) {
        c.codebook.boundaries[n / 2 - 1] = c.codebook.levels[n / 2] - 1e-6f;
        c.codebook.boundaries[n / 2] = c.codebook.levels[n / 2];
      }
      TQ_OK(tq::validate(c));
      EXPECT_EQ(tq::codebook_cells(c.codebook).cells == 0, variant == 1);
      const HostTensor in = make_tensor(tq::DType::kF32, tokens, 2, 128, false,
                                        make_rows(tokens * 2, 128, true, 100 + bits + 10 * variant));
      check_encode_decode_parity(c, in, totals);
      if (HasFatalFailure()) return;
    }
  EXPECT_LE(static_cast<double>(totals.code_mismatches), 1e-5 * static_cast<double>(totals.coordinates) + 1.0);
}

// ---- quality: the D_mse table from GPU outputs -------------------------------------------------

TEST(CudaCodec, DistortionMatchesTheGuideTable) {
  TQ_SKIP_WITHOUT_DEVICE();
  const int64_t n = under_sanitizer() ? (int64_t{1} << 11) : (int64_t{1} << 17);
  const double tolerance = under_sanitizer() ? 0.06 : 0.015;
  for (int32_t d : {64, 128, 256}) {
    const std::vector<float> x = make_rows(n, d, false, 7 + d);
    DeviceBuffer input(x.size() * sizeof(float)), output(x.size() * sizeof(float));
    input.upload(x);
    for (int32_t bits = 1; bits <= 4; ++bits) {
      const tq::CodecSpec c = codec_for(d, bits, tq::ScaleMode::kRawNorm, tq::NormStorage::kF32);
      DeviceBuffer codes(n * c.code_bytes()), scales(n * sizeof(float));
      codes.fill(kPoison);
      scales.fill(kPoison);
      output.fill(kPoison);
      tqc::EncodeArgs ea;
      ea.codec = c;
      ea.input = tq::matrix_view<const void*>(input.get(), tq::DType::kF32, n, d);
      ea.dense = {codes.as<uint8_t>(), scales.get()};
      TQ_OK(tqc::encode(ea, {}, nullptr));
      tqc::DecodeArgs da;
      da.codec = c;
      da.dense = {codes.as<uint8_t>(), scales.get()};
      da.output = tq::matrix_view<void*>(output.get(), tq::DType::kF32, n, d);
      TQ_OK(tqc::decode(da, {}, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      const std::vector<float> y = download_as<float>(output);
      double acc = 0.0;
      for (int64_t r = 0; r < n; ++r) {
        double e = 0.0, m = 0.0;
        for (int32_t j = 0; j < d; ++j) {
          const double a = x[r * d + j], b = y[r * d + j];
          e += (a - b) * (a - b);
          m += a * a;
        }
        acc += e / m;
      }
      const double measured = acc / static_cast<double>(n), want = guide_d_mse(d, bits);
      EXPECT_NEAR(measured, want, tolerance * want) << "d=" << d << " bits=" << bits;
    }
  }
}

// ---- non-finite rows ------------------------------------------------------------------------------

TEST(CudaCodec, NonFiniteRowsAreStoredAsZeroVectorsAndCounted) {
  TQ_SKIP_WITHOUT_DEVICE();
  constexpr int32_t d = 128, kRows = 64;
  const tq::CodecSpec c = codec_for(d, 4, tq::ScaleMode::kLeastSquares, tq::NormStorage::kF16);
  std::vector<float> x = make_rows(kRows, d, false, 3);
  std::vector<float> zeroed = x;
  const int bad_rows[] = {1, 17, 40};
  x[1 * d + 5] = std::numeric_limits<float>::quiet_NaN();
  x[17 * d + 0] = std::numeric_limits<float>::infinity();
  x[40 * d + 127] = -std::numeric_limits<float>::infinity();
  for (int r : bad_rows) std::fill(zeroed.begin() + r * d, zeroed.begin() + (r + 1) * d, 0.0f);
  std::fill(zeroed.begin() + 9 * d, zeroed.begin() + 10 * d, 0.0f);  // an honest zero row
  std::fill(x.begin() + 9 * d, x.begin() + 10 * d, 0.0f);

  auto run = [&](const std::vector<float>& values, std::vector<uint8_t>& codes_out, std::vector<uint8_t>& scales_out,
                 int32_t& count) {
    DeviceBuffer input(values.size() * sizeof(float)), codes(kRows * c.code_bytes()), scales(kRows * 2),
        counter(sizeof(int32_t));
    input.upload(values);
    codes.fill(kPoison);
    scales.fill(kPoison);
    counter.fill(0);
    tqc::EncodeArgs ea;
    ea.codec = c;
    ea.input = tq::matrix_view<const void*>(input.get(), tq::DType::kF32, kRows, d);
    ea.dense = {codes.as<uint8_t>(), scales.get()};
    ea.nonfinite_count = counter.as<int32_t>();
    TQ_OK(tqc::encode(ea, {}, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    codes_out = codes.download();
    scales_out = scales.download();
    count = download_as<int32_t>(counter)[0];
  };
  std::vector<uint8_t> codes_bad, scales_bad, codes_zero, scales_zero;
  int32_t count_bad = -1, count_zero = -1;
  run(x, codes_bad, scales_bad, count_bad);
  run(zeroed, codes_zero, scales_zero, count_zero);
  EXPECT_EQ(count_bad, 3);
  EXPECT_EQ(count_zero, 0);
  EXPECT_EQ(codes_bad, codes_zero);
  EXPECT_EQ(scales_bad, scales_zero);
  const uint32_t zero_index = static_cast<uint32_t>(c.codebook.index_of(0.0f));
  for (int r : {1, 9, 17, 40}) {
    EXPECT_EQ(half_bits(scales_bad.data() + 2 * r), 0) << "row " << r;
    for (int32_t j = 0; j < d; ++j)
      ASSERT_EQ(tq::unpack_index(codes_bad.data() + r * c.code_bytes(), j, c.bits), zero_index) << "row " << r;
  }
}

// ---- paged -----------------------------------------------------------------------------------------

TEST(CudaCodec, PagedEncodeScattersBySlotAndSkips) {
  TQ_SKIP_WITHOUT_DEVICE();
  constexpr int32_t d = 128, kHeads = 4, kPageSize = 16, kPages = 8, kTokens = 40;
  const tq::Format f = tq::make_format(d, 3, 2);
  const tq::layout::PageLayout l = tq::layout::page_layout(f, kPageSize, kHeads);
  const int64_t pool_bytes = kPages * l.page_bytes;
  std::mt19937 rng(11);
  std::vector<int64_t> slots(kPages * kPageSize);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<int64_t> slot_mapping(slots.begin(), slots.begin() + kTokens);
  slot_mapping[3] = -1;                                // padding
  slot_mapping[20] = -7;                               // padding
  slot_mapping[33] = int64_t{kPages} * kPageSize + 5;  // beyond the pool: skipped and counted
  const std::vector<float> x = make_rows(kTokens * kHeads, d, true, 5);
  DeviceBuffer input(x.size() * sizeof(float)), pool(pool_bytes), slot_buffer(slot_mapping.size() * sizeof(int64_t)),
      bad(sizeof(int32_t));
  input.upload(x);
  slot_buffer.upload(slot_mapping);
  pool.fill(kPoison);
  bad.fill(0);
  const tq::ConstView in = tq::tensor_view<const void*>(input.get(), tq::DType::kF32, kTokens, kHeads, d);

  // Expected pool: poison, with the K side written by the first call and the V side by the second.
  std::vector<uint8_t> want(pool_bytes, kPoison);
  for (bool value_side : {false, true}) {
    const tq::CodecSpec& c = value_side ? f.value : f.key;
    // Reference: a dense GPU encode of the same rows.
    DeviceBuffer codes(int64_t{kTokens} * kHeads * c.code_bytes()), scales(int64_t{kTokens} * kHeads * 2);
    tqc::EncodeArgs dense;
    dense.codec = c;
    dense.input = in;
    dense.dense = {codes.as<uint8_t>(), scales.get()};
    TQ_OK(tqc::encode(dense, {}, nullptr));

    tqc::EncodeArgs paged;
    paged.codec = c;
    paged.input = in;
    paged.paged = {pool.get(), kPages, l, value_side, slot_buffer.as<int64_t>()};
    paged.bad_slot_count = bad.as<int32_t>();
    TQ_OK(tqc::can_implement(paged));
    TQ_OK(tqc::encode(paged, {}, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<uint8_t> dense_codes = codes.download(), dense_scales = scales.download();
    const std::vector<uint8_t> got = pool.download();
    for (int32_t t = 0; t < kTokens; ++t) {
      const int64_t slot = slot_mapping[t];
      if (slot < 0 || slot >= int64_t{kPages} * kPageSize) continue;
      uint8_t* page = want.data() + (slot / kPageSize) * l.page_bytes;
      const auto row = static_cast<int32_t>(slot % kPageSize);
      for (int32_t h = 0; h < kHeads; ++h) {
        const int64_t r = int64_t{t} * kHeads + h;
        std::memcpy(page + tq::layout::codes_offset(l, value_side, h, row), dense_codes.data() + r * c.code_bytes(),
                    c.code_bytes());
        std::memcpy(page + tq::layout::scales_offset(l, value_side, h, row), dense_scales.data() + r * 2, 2);
      }
    }
    ASSERT_EQ(got.size(), want.size());
    int64_t wrong = 0;
    for (size_t i = 0; i < got.size(); ++i) wrong += got[i] != want[i];
    EXPECT_EQ(wrong, 0) << (value_side ? "V" : "K") << " side: bytes differ from the expected pool";
  }
  EXPECT_EQ(download_as<int32_t>(bad)[0], 2);  // one bad token, counted once per call
}

TEST(CudaCodec, PagedDecodeGathersThroughTheBlockTable) {
  TQ_SKIP_WITHOUT_DEVICE();
  constexpr int32_t d = 64, kHeads = 2, kPageSize = 16, kPages = 12, kMaxPages = 3, kMaxTokens = 40;
  const tq::Format f = tq::make_format(d, 4, 3);
  const tq::layout::PageLayout l = tq::layout::page_layout(f, kPageSize, kHeads);
  const std::vector<int32_t> seq_lens = {5, 35, 0, 40};
  const auto num_seqs = static_cast<int32_t>(seq_lens.size());
  std::vector<int32_t> pages(kPages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(2));
  std::vector<int32_t> block_table(num_seqs * kMaxPages);
  for (size_t i = 0; i < block_table.size(); ++i) block_table[i] = pages[i];

  // A pool written by the CPU: every slot of every page, K and V.
  std::vector<uint8_t> pool(kPages * l.page_bytes, kPoison);
  const int64_t slots = int64_t{kPages} * kPageSize;
  std::vector<int64_t> slot_mapping(slots);
  std::iota(slot_mapping.begin(), slot_mapping.end(), 0);
  const std::vector<float> x = make_rows(slots * kHeads, d, true, 9);
  for (bool value_side : {false, true}) {
    tq::cpu::EncodeArgs a;
    a.codec = value_side ? f.value : f.key;
    a.input = tq::tensor_view<const void*>(x.data(), tq::DType::kF32, slots, kHeads, d);
    a.paged = {pool.data(), kPages, l, value_side, slot_mapping.data()};
    TQ_OK(tq::cpu::encode(a));
  }
  DeviceBuffer pool_d(pool.size()), table_d(block_table.size() * 4), lens_d(seq_lens.size() * 4);
  pool_d.upload(pool);
  table_d.upload(block_table);
  lens_d.upload(seq_lens);

  for (tq::DType out_dtype : kDTypes)
    for (bool value_side : {false, true}) {
      const tq::CodecSpec& c = value_side ? f.value : f.key;
      const int64_t out_elems = int64_t{num_seqs} * kMaxTokens * kHeads * d;
      std::vector<uint8_t> cpu_out(out_elems * tq::dtype_bytes(out_dtype), kPoison);
      tq::cpu::DecodeArgs ca;
      ca.codec = c;
      ca.paged = {pool.data(), kPages, l, block_table.data(), kMaxPages, seq_lens.data(), num_seqs};
      ca.value_side = value_side;
      ca.max_tokens = kMaxTokens;
      ca.output = tq::tensor_view<void*>(cpu_out.data(), out_dtype, int64_t{num_seqs} * kMaxTokens, kHeads, d);
      TQ_OK(tq::cpu::decode(ca));

      DeviceBuffer out(cpu_out.size());
      auto gpu_decode = [&](const DeviceBuffer& table) {
        out.fill(kPoison);
        tqc::DecodeArgs ga;
        ga.codec = c;
        ga.paged = {pool_d.get(), kPages, l, table.as<int32_t>(), kMaxPages, lens_d.as<int32_t>(), num_seqs};
        ga.value_side = value_side;
        ga.max_tokens = kMaxTokens;
        ga.output = tq::tensor_view<void*>(out.get(), out_dtype, int64_t{num_seqs} * kMaxTokens, kHeads, d);
        const tq::Status s = tqc::decode(ga, {}, nullptr);
        EXPECT_TRUE(s.is_ok()) << s.to_string();
        EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        return out.download();
      };
      EXPECT_EQ(gpu_decode(table_d), cpu_out) << "dtype " << tq::to_string(out_dtype) << " V=" << value_side;

      // Bad block-table entries (the host cannot see them): those rows stay untouched.
      std::vector<int32_t> corrupt = block_table;
      corrupt[1 * kMaxPages + 1] = kPages;  // seq 1, tokens 16..31
      corrupt[3 * kMaxPages + 0] = -1;      // seq 3, tokens 0..15
      DeviceBuffer corrupt_d(corrupt.size() * 4);
      corrupt_d.upload(corrupt);
      std::vector<uint8_t> want = cpu_out;
      const int64_t row_bytes = int64_t{kHeads} * d * tq::dtype_bytes(out_dtype);
      for (int32_t t = 16; t < 32; ++t)
        std::fill_n(want.begin() + (int64_t{1} * kMaxTokens + t) * row_bytes, row_bytes, kPoison);
      for (int32_t t = 0; t < 16; ++t)
        std::fill_n(want.begin() + (int64_t{3} * kMaxTokens + t) * row_bytes, row_bytes, kPoison);
      EXPECT_EQ(gpu_decode(corrupt_d), want) << "dtype " << tq::to_string(out_dtype) << " V=" << value_side;
    }
}

// ---- rotate ----------------------------------------------------------------------------------------

TEST(CudaCodec, RotateMatchesCpuForwardInverseAndInPlace) {
  TQ_SKIP_WITHOUT_DEVICE();
  const int64_t dim0 = under_sanitizer() ? 5 : 37;
  constexpr int32_t kDim1 = 3;
  for (int32_t i = 0; i < tqc::num_rotate_kernels(); ++i) {
    const int32_t d = tqc::rotate_kernel_head_dim(i);
    const tq::SignBits s = tq::signs_from_seed(99, d);
    for (tq::DType in_dtype : kDTypes)
      for (tq::DType out_dtype : kDTypes)
        for (bool inverse : {false, true})
          for (bool in_place : {false, true}) {
            if (in_place && in_dtype != out_dtype) continue;
            const std::string where = "d=" + std::to_string(d) + " " + tq::to_string(in_dtype) + "->" +
                                      tq::to_string(out_dtype) + (inverse ? " inverse" : " forward") +
                                      (in_place ? " in place" : "");
            const std::vector<float> x = make_rows(dim0 * kDim1, d, true, 17 + d);
            const HostTensor in = make_tensor(in_dtype, dim0, kDim1, d, true, x);
            // CPU reference: the input's values (as stored) rotated in float, stored as out_dtype.
            std::vector<float> values = rows_of(in);
            for (int64_t r = 0; r < dim0 * kDim1; ++r) {
              float* v = values.data() + r * d;
              if (inverse) tq::rht_inverse(v, d, s); else tq::rht_forward(v, d, s);
            }
            HostTensor want = make_tensor(out_dtype, dim0, kDim1, d, true, values);

            DeviceBuffer input(in.bytes.size());
            input.upload(in.bytes);
            DeviceBuffer separate(want.bytes.size());
            separate.fill(kPoison);
            tqc::RotateArgs ra;
            ra.signs = s;
            ra.inverse = inverse;
            ra.input = in.view(input.get());
            ra.output = want.mutable_view(in_place ? input.get() : separate.get());
            TQ_OK(tqc::can_implement(ra));
            TQ_OK(tqc::rotate(ra, {}, nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            HostTensor got = want;
            got.bytes = in_place ? input.download() : separate.download();
            EXPECT_LE(max_relative_row_error(rows_of(got), rows_of(want), d), 1e-5) << where;
            // Bit-exact with the CPU, and the padding between rows (poison) untouched.
            EXPECT_EQ(got.bytes, want.bytes) << where;
          }
  }
}

// ---- CUDA graphs ---------------------------------------------------------------------------------

TEST(CudaCodec, GraphCaptureAndReplayEqualTheEagerRun) {
  TQ_SKIP_WITHOUT_DEVICE();
  constexpr int32_t d = 128, kRows = 1000;
  const tq::CodecSpec c = codec_for(d, 3, tq::ScaleMode::kLeastSquares, tq::NormStorage::kF16);
  const HostTensor in = make_tensor(tq::DType::kF16, kRows, 1, d, false, make_rows(kRows, d, true, 21));
  DeviceBuffer input(in.bytes.size()), codes(kRows * c.code_bytes()), scales(kRows * 2), out(in.bytes.size()),
      rotated(in.bytes.size());
  input.upload(in.bytes);
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  tqc::EncodeArgs ea;
  ea.codec = c;
  ea.input = in.view(input.get());
  ea.dense = {codes.as<uint8_t>(), scales.get()};
  tqc::DecodeArgs da;
  da.codec = c;
  da.dense = {codes.as<uint8_t>(), scales.get()};
  da.output = in.mutable_view(out.get());
  tqc::RotateArgs ra;
  ra.signs = c.signs;
  ra.input = in.view(out.get());
  ra.output = in.mutable_view(rotated.get());

  auto poison = [&] {  // legacy-stream memsets: finish them before work on the non-blocking stream
    for (const DeviceBuffer* b : {&codes, &scales, &out, &rotated}) b->fill(kPoison);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  };
  auto enqueue = [&] {
    TQ_OK(tqc::encode(ea, {}, stream));
    TQ_OK(tqc::decode(da, {}, stream));
    TQ_OK(tqc::rotate(ra, {}, stream));
  };
  auto snapshot = [&] {
    std::vector<std::vector<uint8_t>> s;
    for (const DeviceBuffer* b : {&codes, &scales, &out, &rotated}) s.push_back(b->download());
    return s;
  };

  poison();
  enqueue();
  CUDA_OK(cudaStreamSynchronize(stream));
  const auto eager = snapshot();

  poison();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  enqueue();
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_NE(snapshot(), eager);  // capture ran nothing: outputs still poisoned
  for (int replay = 0; replay < 2; ++replay) {
    poison();
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    EXPECT_EQ(snapshot(), eager) << "replay " << replay;
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(stream));
}

// ---- bad input: the right Status, and nothing written ---------------------------------------------

TEST(CudaCodec, BadInputGivesTheRightStatusAndWritesNothing) {
  TQ_SKIP_WITHOUT_DEVICE();
  constexpr int32_t d = 128, kRows = 16;
  const tq::CodecSpec good = codec_for(d, 4, tq::ScaleMode::kLeastSquares, tq::NormStorage::kF16);
  DeviceBuffer input(kRows * d * 2 + 64), codes(kRows * good.code_bytes() + 16), scales(kRows * 4 + 16),
      out(kRows * d * 4 + 64), pool(4096);
  DeviceBuffer slots(kRows * sizeof(int64_t) + 8);
  for (const DeviceBuffer* b : {&input, &slots}) b->fill(0);
  const std::vector<const DeviceBuffer*> outputs = {&codes, &scales, &out, &pool};
  auto poison = [&] {
    for (const DeviceBuffer* b : outputs) b->fill(kPoison);
  };
  auto untouched = [&] {
    CUDA_OK(cudaDeviceSynchronize());
    for (const DeviceBuffer* b : outputs) {
      const std::vector<uint8_t> bytes = b->download();
      ASSERT_TRUE(std::all_of(bytes.begin(), bytes.end(), [](uint8_t v) { return v == kPoison; }));
    }
  };
  auto base_encode = [&] {
    tqc::EncodeArgs a;
    a.codec = good;
    a.input = tq::matrix_view<const void*>(input.get(), tq::DType::kF16, kRows, d);
    a.dense = {codes.as<uint8_t>(), scales.get()};
    return a;
  };
  auto expect_encode = [&](const tqc::EncodeArgs& a, tq::StatusCode code, const char* what) {
    poison();
    EXPECT_EQ(tqc::can_implement(a).code(), code) << what << ": " << tqc::can_implement(a).to_string();
    EXPECT_EQ(tqc::encode(a, {}, nullptr).code(), code) << what;
    untouched();
  };
  {
    tqc::EncodeArgs a = base_encode();
    a.codec = tq::make_codec(96, 4);
    a.input.head_dim = 96;
    expect_encode(a, tq::StatusCode::kUnsupportedFormat, "head_dim 96");
  }
  for (int32_t bits : {0, 5}) {
    tqc::EncodeArgs a = base_encode();
    a.codec.bits = bits;
    expect_encode(a, tq::StatusCode::kUnsupportedFormat, "bits 0 / 5");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.input.data = nullptr;
    expect_encode(a, tq::StatusCode::kInvalidArgument, "null input");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.dense.scales = nullptr;
    expect_encode(a, tq::StatusCode::kInvalidArgument, "null scales");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.input.data = static_cast<const uint16_t*>(input.get()) + 1;  // 2 bytes off: not 16-byte aligned
    expect_encode(a, tq::StatusCode::kMisaligned, "misaligned input");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.input = tq::matrix_view<const void*>(input.get(), tq::DType::kF16, kRows - 1, d, d + 4);  // 8-byte rows
    expect_encode(a, tq::StatusCode::kMisaligned, "misaligned row stride");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.dense.codes = codes.as<uint8_t>() + 2;
    expect_encode(a, tq::StatusCode::kMisaligned, "misaligned codes");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.dense.scales = scales.as<uint8_t>() + 1;
    expect_encode(a, tq::StatusCode::kMisaligned, "misaligned scales");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.input.head_dim = 64;
    expect_encode(a, tq::StatusCode::kInvalidArgument, "input head_dim 64 with a 128 codec");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.dense = {};
    expect_encode(a, tq::StatusCode::kInvalidArgument, "no destination");
  }
  const tq::Format f = tq::make_format(d, 4, 4);
  const tq::layout::PageLayout l = tq::layout::page_layout(f, 4, 1);
  ASSERT_LE(l.page_bytes, 4096);
  {
    tqc::EncodeArgs a = base_encode();
    a.paged = {pool.get(), 1, l, false, slots.as<int64_t>()};
    expect_encode(a, tq::StatusCode::kInvalidArgument, "dense and paged");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.dense = {};
    a.paged = {pool.get(), 1, l, false, nullptr};
    expect_encode(a, tq::StatusCode::kInvalidArgument, "null slot_mapping");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.dense = {};
    a.paged = {pool.get(), 1, l, false, reinterpret_cast<const int64_t*>(slots.as<uint8_t>() + 4)};
    expect_encode(a, tq::StatusCode::kMisaligned, "misaligned slot_mapping");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.input = tq::tensor_view<const void*>(input.get(), tq::DType::kF16, kRows / 2, 2, d);
    a.dense = {};
    a.paged = {pool.get(), 1, l, false, slots.as<int64_t>()};  // kv_heads 1, input heads 2
    expect_encode(a, tq::StatusCode::kInvalidArgument, "heads != kv_heads");
  }
  {
    tqc::EncodeArgs a = base_encode();
    a.nonfinite_count = reinterpret_cast<int32_t*>(out.as<uint8_t>() + 2);
    expect_encode(a, tq::StatusCode::kMisaligned, "misaligned counter");
  }

  // decode
  auto base_decode = [&] {
    tqc::DecodeArgs a;
    a.codec = good;
    a.dense = {codes.as<uint8_t>(), scales.get()};
    a.output = tq::matrix_view<void*>(out.get(), tq::DType::kF32, kRows, d);
    return a;
  };
  auto expect_decode = [&](const tqc::DecodeArgs& a, tq::StatusCode code, const char* what) {
    poison();
    EXPECT_EQ(tqc::can_implement(a).code(), code) << what << ": " << tqc::can_implement(a).to_string();
    EXPECT_EQ(tqc::decode(a, {}, nullptr).code(), code) << what;
    untouched();
  };
  {
    tqc::DecodeArgs a = base_decode();
    a.codec.bits = 5;
    expect_decode(a, tq::StatusCode::kUnsupportedFormat, "decode bits 5");
  }
  {
    tqc::DecodeArgs a = base_decode();
    a.output.data = out.as<uint8_t>() + 4;
    expect_decode(a, tq::StatusCode::kMisaligned, "misaligned output");
  }
  {
    tqc::DecodeArgs a = base_decode();
    a.output.dtype = static_cast<tq::DType>(7);
    expect_decode(a, tq::StatusCode::kUnsupportedFormat, "bad output dtype");
  }
  {
    tqc::DecodeArgs a = base_decode();
    a.dense.codes = nullptr;
    expect_decode(a, tq::StatusCode::kInvalidArgument, "null codes");
  }
  {
    tqc::DecodeArgs a = base_decode();
    a.dense = {};
    a.paged = {pool.get(), 1, l, slots.as<int32_t>(), 1, slots.as<int32_t>(), 1};
    a.max_tokens = 4;
    a.output = tq::matrix_view<void*>(out.get(), tq::DType::kF32, 5, d);  // 1 seq * 4 tokens != 5 rows
    expect_decode(a, tq::StatusCode::kInvalidArgument, "paged output rows");
  }

  // rotate
  auto expect_rotate = [&](const tqc::RotateArgs& a, tq::StatusCode code, const char* what) {
    poison();
    EXPECT_EQ(tqc::can_implement(a).code(), code) << what << ": " << tqc::can_implement(a).to_string();
    EXPECT_EQ(tqc::rotate(a, {}, nullptr).code(), code) << what;
    untouched();
  };
  {
    tqc::RotateArgs a;
    a.input = tq::matrix_view<const void*>(input.get(), tq::DType::kF16, 4, 96);
    a.output = tq::matrix_view<void*>(out.get(), tq::DType::kF16, 4, 96);
    expect_rotate(a, tq::StatusCode::kUnsupportedFormat, "rotate head_dim 96");
  }
  {
    tqc::RotateArgs a;
    a.input = tq::matrix_view<const void*>(out.get(), tq::DType::kF32, 8, d);
    a.output = tq::matrix_view<void*>(out.as<float>() + d, tq::DType::kF32, 8, d);  // shifted by a row
    expect_rotate(a, tq::StatusCode::kInvalidArgument, "rotate partial overlap");
  }
  {
    tqc::RotateArgs a;
    a.input = tq::matrix_view<const void*>(input.get(), tq::DType::kF16, 8, d);
    a.output = tq::matrix_view<void*>(out.get(), tq::DType::kF16, 4, d);
    expect_rotate(a, tq::StatusCode::kInvalidArgument, "rotate shape mismatch");
  }
}
