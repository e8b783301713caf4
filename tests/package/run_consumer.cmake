# cmake -DSOURCE_DIR=examples/consumer -DBINARY_DIR=<dir> -DMODE=package|subdirectory
#       -DGENERATOR=... -DMAKE_PROGRAM=... -DCXX_COMPILER=... [-DCONFIG=<config>]
#       -DWITH_CUDA=ON|OFF [-DPREFIX=<install prefix>] [-DCUDA_ROOT=<toolkit>]
#       [-DTURBOQUANT_SOURCE_DIR=<tree>] [-DCUDA_COMPILER=<nvcc>] [-DCUDA_ARCHITECTURES=a|b]
#       -P run_consumer.cmake
# Configures examples/consumer from scratch, builds it and runs it; checks what it prints.
cmake_minimum_required(VERSION 3.25)
file(REMOVE_RECURSE "${BINARY_DIR}")

set(configure_args -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    "-DTQ_CONSUMER_MODE=${MODE}"
    "-DTQ_CONSUMER_WITH_CUDA=${WITH_CUDA}")
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CONFIG)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${CONFIG}")
endif()
if(MODE STREQUAL "package")
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${PREFIX}")
  if(CUDA_ROOT)
    list(APPEND configure_args "-DCUDAToolkit_ROOT=${CUDA_ROOT}")
  endif()
else()
  list(APPEND configure_args "-DTURBOQUANT_SOURCE_DIR=${TURBOQUANT_SOURCE_DIR}")
  if(WITH_CUDA)
    string(REPLACE "|" ";" archs "${CUDA_ARCHITECTURES}")
    list(APPEND configure_args "-DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}" "-DCMAKE_CUDA_ARCHITECTURES=${archs}")
  endif()
endif()

execute_process(COMMAND "${CMAKE_COMMAND}" ${configure_args} COMMAND_ERROR_IS_FATAL ANY)

set(build_args --build "${BINARY_DIR}")
if(CONFIG)
  list(APPEND build_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" ${build_args} COMMAND_ERROR_IS_FATAL ANY)

set(exe "${BINARY_DIR}/consumer${CMAKE_EXECUTABLE_SUFFIX}")
if(NOT EXISTS "${exe}" AND CONFIG)
  set(exe "${BINARY_DIR}/${CONFIG}/consumer${CMAKE_EXECUTABLE_SUFFIX}")  # multi-config generators
endif()
execute_process(COMMAND "${exe}" OUTPUT_VARIABLE out ERROR_VARIABLE out RESULT_VARIABLE rc)
message("${exe}:\n${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "consumer exited with ${rc}")
endif()
# d = 128, K4V4, fp16 scales, 16 tokens, 8 heads: 8 * 2112 bytes a page (layout.hpp).
if(NOT out MATCHES "page_bytes = 16896, head_bytes = 2112")
  message(FATAL_ERROR "consumer printed an unexpected layout")
endif()
if(WITH_CUDA AND NOT out MATCHES "turboquant::cuda linked")
  message(FATAL_ERROR "consumer was not linked with turboquant::cuda")
endif()
