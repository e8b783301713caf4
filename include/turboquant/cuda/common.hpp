// Pieces shared by every op of the CUDA host API (turboquant::cuda). Plain C++: compiles with only
// <cuda_runtime_api.h> from the CUDA toolkit, no nvcc needed.
//
// Every op follows one call convention (CUTLASS's device-level operator):
//
//   Status can_implement(const XxxArgs&) noexcept;        // host checks only, no CUDA call
//   size_t workspace_bytes(const XxxArgs&) noexcept;      // from shapes only
//   Status xxx(const XxxArgs&, Workspace, cudaStream_t) noexcept;
//
// The run call repeats the checks of can_implement, then only enqueues kernels on the stream: it
// never allocates, synchronises, copies to the host or reads device memory on the host, so it
// can be captured in a CUDA graph. On an error nothing is enqueued and nothing is written.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace turboquant::cuda {

// Scratch memory an op may need, owned by the caller (workspace_bytes() says how much; an op that
// needs none ignores it).
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

// Alignment, in bytes, of vectors read or written with 16-byte vector loads and stores: the data
// pointer and every row stride (in bytes) of an input or output view must be a multiple of it.
inline constexpr int64_t kVectorAlignment = 16;

// Alignment, in bytes, of a dense codes array (codes are stored in up to 4-byte words).
inline constexpr int64_t kCodesAlignment = 4;

}  // namespace turboquant::cuda
