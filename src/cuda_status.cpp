#include "cuda_status.hpp"

namespace turboquant::cuda::detail {

Status cuda_status(cudaError_t error, const char* what) noexcept {
  if (error == cudaSuccess) return Status::ok();
  const char* name = cudaGetErrorName(error);
  const char* text = cudaGetErrorString(error);
  return make_status(StatusCode::kCudaError, what, ": ", name != nullptr ? name : "unknown CUDA error", " (",
                     text != nullptr ? text : "", ")");
}

}  // namespace turboquant::cuda::detail
