// Asynchronous global -> shared copies for kernels that stage their inputs in a shared-memory ring.
// (1) cp.async (sm_80+): a thread issues 16-byte copies, closes them into a group, and later waits
//     until all but its newest N groups have landed. The data one lane copied is visible to the
//     other lanes of its warp after that lane's wait and a __syncwarp().
// (2) Bulk copies (cp.async.bulk, sm_90; the TMA unit): one thread copies a whole contiguous region
//     (16-byte aligned, a multiple of 16 bytes) and the bytes complete a phase of a shared-memory
//     barrier (mbarrier) that the thread armed with the expected byte count; every thread that waits
//     for that phase then sees the data. Below sm_90 the copy runs synchronously in the issuing
//     thread (same results; the callers __syncwarp() before reading).
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

// ---- bulk copies on a shared-memory barrier ------------------------------------------------------
// `barrier` is the shared address of a 64-bit mbarrier. Phases complete when the armed thread has
// arrived and the expected bytes have landed; phase n (from 0) is waited for with parity n % 2.

// Initialises a barrier for one arriving thread per phase; then barrier_init_fence() and a
// __syncwarp() / __syncthreads() before any other thread or the copy unit uses it.
__device__ __forceinline__ void barrier_init(uint32_t barrier) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(barrier) : "memory");
#endif
}

__device__ __forceinline__ void barrier_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// Arrives on the barrier, the current phase then also waiting for `bytes` bytes of bulk copies
// (0: the phase completes now).
__device__ __forceinline__ void barrier_arrive_expect(uint32_t barrier, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier), "r"(bytes) : "memory");
#endif
}

// Waits until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void barrier_wait(uint32_t barrier, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_again:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_again;\n"
      "}\n" ::"r"(barrier),
      "r"(parity)
      : "memory");
#endif
}

// Copies `bytes` (a multiple of 16) from global src to shared dst (both 16-byte aligned); the bytes
// count towards the barrier's current phase.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t barrier) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(src)), "r"(bytes), "r"(barrier)
               : "memory");
#else
  (void)barrier;
  for (uint32_t i = 0; i < bytes; i += kAsyncCopyBytes) {
    const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(src) + i);
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst + i), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
  }
#endif
}

}  // namespace turboquant::device
