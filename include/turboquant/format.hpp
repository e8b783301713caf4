// Format: everything that fixes the bytes of a compressed K/V cache. Serialise it next to a
// cache; every size and offset follows from it (layout.hpp).
#pragma once

#include <cstdint>

#include "turboquant/codebook.hpp"
#include "turboquant/numeric.hpp"
#include "turboquant/signs.hpp"
#include "turboquant/status.hpp"

namespace turboquant {

// How the per-vector scale is stored.
enum class NormStorage : int32_t { kF32 = 0, kF16 = 1 };
[[nodiscard]] constexpr int32_t norm_bytes(NormStorage n) noexcept { return n == NormStorage::kF32 ? 4 : 2; }

// Which scale is stored with a vector y = R x whose unit direction u = y / ||y|| was coded as the
// levels c = codebook[index] (GUIDE section 2):
//   kRawNorm:        ||y||                     (the Python library)
//   kNormPreserving: ||y|| / ||c||             (decoded vector has the input's norm)
//   kLeastSquares:   <y, c> / ||c||^2          (minimises ||y - scale * c|| for the chosen indices)
enum class ScaleMode : int32_t { kRawNorm = 0, kNormPreserving = 1, kLeastSquares = 2 };
[[nodiscard]] constexpr const char* to_string(ScaleMode m) noexcept {
  return m == ScaleMode::kRawNorm ? "raw_norm" : m == ScaleMode::kNormPreserving ? "norm_preserving"
                                                                                  : "least_squares";
}

// Defaults, chosen by measurement (README "Choosing the defaults"): the least-squares scale is
// never worse than the raw norm (0.1-3.5% lower MSE, examples/01); fp16 norms add about 1e-7
// to the relative MSE and save 2 bytes a vector.
inline constexpr ScaleMode kDefaultScale = ScaleMode::kLeastSquares;
inline constexpr NormStorage kDefaultNorm = NormStorage::kF16;
inline constexpr uint64_t kDefaultSeed = 0x5eed7b0a11ull;

[[nodiscard]] constexpr bool is_supported_head_dim(int32_t d) noexcept {
  return d == 64 || d == 128 || d == 256;
}

// How one tensor (keys or values) is coded: RHT signs, codebook, scale and its storage.
struct CodecSpec {
  int32_t head_dim = 128;                // 64 | 128 | 256
  int32_t bits = 4;                      // 1..4 (a Format side may also be 0: uncompressed)
  NormStorage norm = kDefaultNorm;
  ScaleMode scale = kDefaultScale;
  SignBits signs{};                      // RHT diagonal
  Codebook codebook{};                   // codebook.bits == bits

  [[nodiscard]] constexpr int32_t code_bytes() const noexcept { return head_dim * bits / 8; }
};

[[nodiscard]] inline Status validate(const CodecSpec& c) noexcept {
  if (!is_supported_head_dim(c.head_dim))
    return make_status(StatusCode::kUnsupportedFormat, "head_dim = ", c.head_dim,
                       ": supported are 64, 128, 256");
  if (c.bits < 1 || c.bits > kMaxBits)
    return make_status(StatusCode::kUnsupportedFormat, "bits = ", c.bits, ": supported are 1, 2, 3, 4");
  if (c.norm != NormStorage::kF32 && c.norm != NormStorage::kF16)
    return make_status(StatusCode::kInvalidArgument, "norm = ", static_cast<int32_t>(c.norm));
  if (c.scale != ScaleMode::kRawNorm && c.scale != ScaleMode::kNormPreserving &&
      c.scale != ScaleMode::kLeastSquares)
    return make_status(StatusCode::kInvalidArgument, "scale = ", static_cast<int32_t>(c.scale));
  if (c.codebook.bits != c.bits)
    return make_status(StatusCode::kInvalidArgument, "codebook.bits = ", c.codebook.bits,
                       " but bits = ", c.bits);
  for (int32_t w = 0; w < kSignWords; ++w) {
    const int32_t first = w * 64;
    const uint64_t beyond = first >= c.head_dim ? ~uint64_t{0}
                            : c.head_dim - first >= 64 ? 0
                                                      : ~((uint64_t{1} << (c.head_dim - first)) - 1);
    if ((c.signs.words[w] & beyond) != 0)
      return make_status(StatusCode::kInvalidArgument, "signs.words[", w,
                         "] has bits set at or beyond head_dim = ", c.head_dim);
  }
  return validate(c.codebook);
}

// A codec with signs from (seed, stream) and the shipped Lloyd-Max codebook.
[[nodiscard]] inline CodecSpec make_codec(int32_t head_dim, int32_t bits,
                                             uint64_t seed = kDefaultSeed,
                                             uint64_t stream = kKeyStream) noexcept {
  CodecSpec c{};
  c.head_dim = head_dim;
  c.bits = bits;
  c.signs = signs_from_seed(seed, head_dim, stream);
  c.codebook = lloyd_max_codebook(head_dim, bits);
  return c;
}

// A K/V cache format: one codec for keys and one for values. A side with bits = 0 is stored
// uncompressed as `raw_dtype` (K-only compression keeps values in fp16 / bf16).
struct Format {
  CodecSpec key{};
  CodecSpec value{};
  DType raw_dtype = DType::kF16;  // storage of an uncompressed side: kF16 or kBF16

  [[nodiscard]] constexpr int32_t head_dim() const noexcept { return key.head_dim; }
};

// Format with key_bits / value_bits (0 = uncompressed), K and V signs from one seed on
// separate streams, shipped codebooks, default scale and norm storage.
[[nodiscard]] inline Format make_format(int32_t head_dim, int32_t key_bits, int32_t value_bits,
                                        uint64_t seed = kDefaultSeed) noexcept {
  Format f{};
  f.key = make_codec(head_dim, key_bits, seed, kKeyStream);
  f.value = make_codec(head_dim, value_bits, seed, kValueStream);
  return f;
}

[[nodiscard]] inline Status validate(const Format& f) noexcept {
  if (f.key.head_dim != f.value.head_dim)
    return make_status(StatusCode::kInvalidArgument, "key.head_dim = ", f.key.head_dim,
                       " differs from value.head_dim = ", f.value.head_dim);
  if (f.raw_dtype != DType::kF16 && f.raw_dtype != DType::kBF16)
    return make_status(StatusCode::kUnsupportedFormat, "raw_dtype = ", to_string(f.raw_dtype),
                       ": uncompressed sides are stored as f16 or bf16");
  if (f.key.bits == 0 && f.value.bits == 0)
    return make_status(StatusCode::kUnsupportedFormat,
                       "key.bits = 0 and value.bits = 0: nothing would be compressed");
  const CodecSpec* sides[2] = {&f.key, &f.value};
  const char* names[2] = {"key.", "value."};
  for (int s = 0; s < 2; ++s) {
    if (sides[s]->bits == 0) {
      if (!is_supported_head_dim(sides[s]->head_dim))
        return make_status(StatusCode::kUnsupportedFormat, names[s], "head_dim = ",
                           sides[s]->head_dim, ": supported are 64, 128, 256");
      continue;
    }
    const Status st = validate(*sides[s]);
    if (!st.is_ok()) return Status(st.code(), names[s] + st.message());
  }
  return Status::ok();
}

}  // namespace turboquant
