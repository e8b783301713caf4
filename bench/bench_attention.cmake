# bench_attention: decode attention on the packed, paged cache (Google Benchmark, CUDA events).
# Included from bench/CMakeLists.txt; built only with turboquant::cuda.
if(TURBOQUANT_ENABLE_CUDA)
  add_executable(bench_attention ${CMAKE_CURRENT_LIST_DIR}/bench_attention.cpp)
  target_link_libraries(bench_attention PRIVATE turboquant::cuda benchmark::benchmark)
endif()
