// Warpgroup tensor-core products (wgmma.mma_async, sm_90a only) and their shared-memory layout.
//
// A warpgroup is 4 consecutive warps (128 threads); one wgmma computes a 64 x N product, warp w % 4
// owning rows [16 (w % 4), 16 (w % 4) + 16). Its register fragments are those of mma.m16n8k16 for
// the warp's 16 rows (turboquant/device/mma.cuh): the A fragment of k-step 16 is {a0, a1, a2, a3},
// and accumulator register 4 j + e of an m64nN product holds C[group + 8 (e / 2)][8 j + 2 quad +
// e % 2] (n8 block j): the same as c[e] of an mma.sync n-tile j.
//
// Shared-memory operands use the 128-byte swizzled tile layout of turboquant/device/swizzle.hpp
// (tiles 1024-byte aligned). Both operand majors read that one layout:
//   - K-major (A or B with the reduction index contiguous, e.g. Q[row][coord], K[token][coord]):
//     k-step kk starts at atom kk / 4, byte 32 (kk % 4) of the row; 8-row groups 1024 bytes apart
//     (the stride byte offset); the leading byte offset is unused with a swizzle;
//   - MN-major (B with N contiguous, e.g. V[token][coord] as the B of P.V, the transposed flag):
//     one descriptor covers 64 N-elements (one atom) and 16 k rows: rows 16 j .. 16 j + 15 start at
//     byte 2048 j of the atom; 8-row groups 1024 bytes apart. With a single atom along N, the byte
//     offset between atoms is never used, so both offsets are set to 1024 (the PTX ISA's and
//     CUTLASS's descriptions then agree).
// Ordering rules (PTX ISA, "Asynchronous warpgroup level matrix multiply-accumulate"): generic
// stores to an operand tile need fence.proxy.async.shared::cta by the storing threads before the
// barrier that publishes the tile; wgmma_fence() before a wgmma whose registers (accumulators, A)
// were touched by ordinary instructions; results are read after commit + wait.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "turboquant/device/swizzle.hpp"

// TQ_HAS_WGMMA: 1 in the device pass of an sm_90a (arch-specific) compilation, else 0.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TQ_HAS_WGMMA 1
#else
#define TQ_HAS_WGMMA 0
#endif

namespace turboquant::device {

#if TQ_HAS_WGMMA

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte offsets
// (each >> 4), swizzle mode 1 in bits 62-63.
__device__ __forceinline__ uint64_t swizzle128_descriptor(uint32_t shared_address, uint32_t leading_bytes,
                                                          uint32_t stride_bytes) {
  return static_cast<uint64_t>((shared_address & 0x3FFFFu) >> 4) |
         (static_cast<uint64_t>(leading_bytes >> 4) << 16) | (static_cast<uint64_t>(stride_bytes >> 4) << 32) |
         (uint64_t{1} << 62);
}
// K-major operand whose k-step starts at `shared_address`.
__device__ __forceinline__ uint64_t k_major_descriptor(uint32_t shared_address) {
  return swizzle128_descriptor(shared_address, 16, kSwizzleGroupBytes);
}
// MN-major operand (one atom along N) whose 16 k rows start at `shared_address`.
__device__ __forceinline__ uint64_t mn_major_descriptor(uint32_t shared_address) {
  return swizzle128_descriptor(shared_address, kSwizzleGroupBytes, kSwizzleGroupBytes);
}

// The descriptor `d` with its start address advanced by `bytes` (a multiple of 16): the address
// field (bits 0-13, address >> 4) has room for any shared-memory address, so this is one add.
__device__ __forceinline__ uint64_t descriptor_plus(uint64_t d, uint32_t bytes) { return d + (bytes >> 4); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Orders this thread's generic-proxy shared stores before later async-proxy (wgmma) reads.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps the compiler from moving accesses of accumulator registers across a wgmma boundary.
template <int N>
__device__ __forceinline__ void wgmma_pin(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) asm volatile("" : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])::"memory");
}

#define TQ_WGMMA_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define TQ_WGMMA_D4_OUT(j) "=f"(d[j][0]), "=f"(d[j][1]), "=f"(d[j][2]), "=f"(d[j][3])

// D[64 x 32] = A B (+ D when `accumulate`): A (64 x 16) and B (16 x 32) f16, K-major in shared
// memory; fp32 accumulators d[j][e] (n8 block j).
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[4][4], uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : TQ_WGMMA_D4(0), TQ_WGMMA_D4(1), TQ_WGMMA_D4(2), TQ_WGMMA_D4(3)
      : "l"(a), "l"(b), "r"(accumulate ? 1 : 0));
}

// D[64 x 32] = A B with d write-only: its previous contents are no input, so nothing has to set
// them first (the first k-step of a product).
__device__ __forceinline__ void wgmma_m64n32k16_ss_first(float (&d)[4][4], uint64_t a, uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, 0, 1, 1, 0, 0;\n"
      : TQ_WGMMA_D4_OUT(0), TQ_WGMMA_D4_OUT(1), TQ_WGMMA_D4_OUT(2), TQ_WGMMA_D4_OUT(3)
      : "l"(a), "l"(b));
}

// D[64 x 64] = A B (+ D when `accumulate`): A (64 x 16, f16) from registers (the mma.m16n8k16 A fragment of the warp's 16
// rows), B (16 x 64, f16) MN-major in shared memory (the transposed flag); d[j][e] = n8 block j.
__device__ __forceinline__ void wgmma_m64n64k16_rs_mn(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b,
                                                      bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : TQ_WGMMA_D4(0), TQ_WGMMA_D4(1), TQ_WGMMA_D4(2), TQ_WGMMA_D4(3), TQ_WGMMA_D4(4), TQ_WGMMA_D4(5),
        TQ_WGMMA_D4(6), TQ_WGMMA_D4(7)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate ? 1 : 0));
}

#undef TQ_WGMMA_D4
#undef TQ_WGMMA_D4_OUT

#endif  // TQ_HAS_WGMMA

}  // namespace turboquant::device
