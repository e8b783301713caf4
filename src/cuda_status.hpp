// CUDA runtime errors as Status (private to turboquant::cuda).
#pragma once

#include <cuda_runtime_api.h>

#include "turboquant/status.hpp"

namespace turboquant::cuda::detail {

// ok for cudaSuccess; else kCudaError "<what>: <cudaErrorName> (<description>)".
[[nodiscard]] Status cuda_status(cudaError_t error, const char* what) noexcept;

}  // namespace turboquant::cuda::detail
