# cmake -DHEADER_DIR=include/turboquant -DLISTED="a.hpp|cpu/b.hpp|..." -P check_header_list.cmake
# Fails when a public .hpp is not in the explicit list of tests/package/CMakeLists.txt (so the
# self-containment check never silently skips one). This test script lists the directory; the
# build itself names every file explicitly.
cmake_minimum_required(VERSION 3.25)
string(REPLACE "|" ";" listed "${LISTED}")
file(GLOB_RECURSE present RELATIVE "${HEADER_DIR}" "${HEADER_DIR}/*.hpp")
set(missing)
foreach(header IN LISTS present)
  if(NOT header IN_LIST listed)
    list(APPEND missing ${header})
  endif()
endforeach()
if(missing)
  list(JOIN missing "\n  " missing)
  message(FATAL_ERROR "public headers not listed in TQ_PUBLIC_HEADERS / TQ_PUBLIC_CUDA_HEADERS "
                      "(tests/package/CMakeLists.txt):\n  ${missing}")
endif()
list(LENGTH present n)
message(STATUS "all ${n} public .hpp headers are listed")
