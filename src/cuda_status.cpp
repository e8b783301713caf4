// Placeholder translation unit; replaced by the CUDA codec work.
namespace turboquant::cuda {}
