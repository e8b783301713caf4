// Warp-level tensor-core products (mma.sync.aligned.m16n8k16, fp32 accumulation) shared by the
// kernels. Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"); a
// lane is (group, quad) = (lane / 4, lane % 4):
//   A 16x16: reg0 = A[group][2 quad + {0,1}],     reg1 = A[group + 8][2 quad + {0,1}],
//            reg2 = A[group][8 + 2 quad + {0,1}], reg3 = A[group + 8][8 + 2 quad + {0,1}];
//   B 16x8:  reg0 = B[2 quad + {0,1}][group],     reg1 = B[8 + 2 quad + {0,1}][group];
//   C 16x8:  c0, c1 = C[group][2 quad + {0,1}],   c2, c3 = C[group + 8][2 quad + {0,1}].
// Two 16-bit elements share a register, the lower index in the low half.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace turboquant::device {

// C += A B with A, B fp16.
__device__ __forceinline__ void mma_f16_m16n8k16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The same with the A fragment as an array {a0, a1, a2, a3}.
__device__ __forceinline__ void mma_f16_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma_f16_m16n8k16(c, a[0], a[1], a[2], a[3], b0, b1);
}

// An fp16 operand register from two floats (round to nearest even), `low` in bits 0-15.
__device__ __forceinline__ uint32_t half2_bits(float low, float high) {
  const __half2 h = __floats2half2_rn(low, high);
  return static_cast<uint32_t>(__half_as_ushort(__low2half(h))) |
         (static_cast<uint32_t>(__half_as_ushort(__high2half(h))) << 16);
}

// C += A B with A, B bf16.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                  uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace turboquant::device
