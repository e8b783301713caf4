// Asynchronous global -> shared copies (cp.async, sm_80+) for kernels that stage their inputs in
// a shared-memory ring: a thread issues 16-byte copies, closes them into a group, and later waits
// until all but its newest N groups have landed. The data one lane copied is visible to the other
// lanes of its warp after that lane's wait and a __syncwarp().
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace turboquant::device {

inline constexpr int kAsyncCopyBytes = 16;  // the one copy size used (cp.async.cg)

// Shared-memory address of p (a pointer into __shared__ memory) as cp.async / ld.shared take it.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes from global src (16-byte aligned) to shared dst (16-byte aligned), bypassing L1.
// When `fill_zero` the source is not read and dst gets 16 zero bytes (src must still be a valid
// global address expression; it is not dereferenced).
__device__ __forceinline__ void async_copy_16(uint32_t dst, const void* src, bool fill_zero = false) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t src_bytes = fill_zero ? 0u : static_cast<uint32_t>(kAsyncCopyBytes);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(__cvta_generic_to_global(src)),
               "r"(src_bytes)
               : "memory");
#else
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (!fill_zero) v = *static_cast<const uint4*>(src);
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
#endif
}

// Closes this thread's copies issued since the last commit into one group (possibly empty).
__device__ __forceinline__ void async_copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `Pending` of this thread's newest groups are still in flight.
template <int Pending>
__device__ __forceinline__ void async_copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#endif
}

}  // namespace turboquant::device
