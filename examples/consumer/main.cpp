// A consumer of the installed (or vendored) turboquant: C++17, no CUDA language. Prints a few
// numbers of the byte layout and, when turboquant::cuda is linked, calls a host entry point
// that needs no GPU.
#include <cstdio>

#include <turboquant/format.hpp>
#include <turboquant/layout.hpp>
#include <turboquant/status.hpp>

#if defined(TQ_CONSUMER_WITH_CUDA) && __has_include(<turboquant/cuda/codec.hpp>)
#include <turboquant/cuda/codec.hpp>
#define TQ_CONSUMER_CALLS_CUDA 1
#endif

int main() {
  const turboquant::Format format = turboquant::make_format(128, 4, 4);
  const turboquant::Status valid = turboquant::validate(format);
  const turboquant::layout::PageLayout page = turboquant::layout::page_layout(format, 16, 8);

  std::printf("format K4V4 d=128: %s\n", valid.to_string().c_str());
  std::printf("page_layout(16 tokens, 8 kv heads): page_bytes = %lld, head_bytes = %lld, "
              "token_bytes = %lld, value_codes_offset = %lld\n",
              static_cast<long long>(page.page_bytes), static_cast<long long>(page.head_bytes),
              static_cast<long long>(page.token_bytes()),
              static_cast<long long>(page.value_codes_offset));

#if defined(TQ_CONSUMER_CALLS_CUDA)
  const turboquant::Status st = turboquant::cuda::can_implement(turboquant::cuda::EncodeArgs{});
  std::printf("turboquant::cuda linked; can_implement(EncodeArgs{}): %s\n", st.to_string().c_str());
#elif defined(TQ_CONSUMER_WITH_CUDA)
  std::printf("turboquant::cuda linked; no host API header yet\n");
#else
  std::printf("turboquant::cuda not linked\n");
#endif
  return valid.is_ok() ? 0 : 1;
}
