// Status: the error type of every host entry point. Library code never throws, prints or aborts;
// throw_if_error() is the opt-in bridge for engines that use exceptions.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace turboquant {

enum class StatusCode : int32_t {
  kOk = 0,
  kInvalidArgument,    // a shape, pointer, stride or value the operation cannot take
  kUnsupportedFormat,  // a head_dim / bits / dtype combination that is not built
  kMisaligned,         // a pointer or stride not aligned for the vector loads used
  kNonFinite,          // an input row holds NaN or Inf
  kOutOfRange,         // an index (page, slot, sequence) beyond what exists
  kOutOfMemory,        // the cache has no free page (nothing was changed)
  kNotFound,           // an unknown sequence id
  kCudaError,          // a CUDA runtime call failed; the message carries its name
};

[[nodiscard]] constexpr const char* to_string(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kUnsupportedFormat: return "unsupported format";
    case StatusCode::kMisaligned: return "misaligned";
    case StatusCode::kNonFinite: return "non-finite input";
    case StatusCode::kOutOfRange: return "out of range";
    case StatusCode::kOutOfMemory: return "out of memory";
    case StatusCode::kNotFound: return "not found";
    case StatusCode::kCudaError: return "CUDA error";
  }
  return "unknown";
}

class [[nodiscard]] Status {
 public:
  Status() noexcept = default;
  Status(StatusCode code, std::string message) noexcept : code_(code) {
    try {
      message_ = std::move(message);
    } catch (...) {  // keep the code even when the message cannot be stored
    }
  }
  [[nodiscard]] static Status ok() noexcept { return {}; }
  [[nodiscard]] bool is_ok() const noexcept { return code_ == StatusCode::kOk; }
  explicit operator bool() const noexcept { return is_ok(); }
  [[nodiscard]] StatusCode code() const noexcept { return code_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  // "<code>: <message>", for logs.
  [[nodiscard]] std::string to_string() const {
    return std::string(turboquant::to_string(code_)) + (message_.empty() ? "" : ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Builds "name = value (reason)"-style messages without iostreams or fmt.
namespace detail {
inline std::string to_text(const char* s) { return s; }
inline std::string to_text(const std::string& s) { return s; }
inline std::string to_text(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}
inline std::string to_text(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
inline std::string to_text(float v) { return to_text(static_cast<double>(v)); }
template <typename T>
std::string to_text(T v) {
  if constexpr (std::is_pointer_v<T>) {
    return to_text(static_cast<const void*>(v));
  } else if constexpr (std::is_enum_v<T>) {
    return std::to_string(static_cast<long long>(v));
  } else {
    return std::to_string(v);
  }
}
inline std::string concat() { return {}; }
template <typename T, typename... Rest>
std::string concat(const T& first, const Rest&... rest) {
  return to_text(first) + concat(rest...);
}
}  // namespace detail

// make_status(code, "head_dim = ", 96, ": supported are 64, 128, 256")
template <typename... Parts>
[[nodiscard]] Status make_status(StatusCode code, const Parts&... parts) noexcept {
  try {
    return Status(code, detail::concat(parts...));
  } catch (...) {
    return Status(code, std::string());
  }
}

// Opt-in: throws std::runtime_error carrying the status text when it is not ok.
inline void throw_if_error(const Status& status) {
  if (!status.is_ok()) throw std::runtime_error(status.to_string());
}

}  // namespace turboquant

#define TQ_RETURN_IF_ERROR(expr)                    \
  do {                                              \
    ::turboquant::Status tq_status_ = (expr);       \
    if (!tq_status_.is_ok()) return tq_status_;     \
  } while (0)
