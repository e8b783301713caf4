# Install rules and the turboquant CMake package; included from the top-level CMakeLists.txt when
# TURBOQUANT_INSTALL is ON (the default when turboquant is the top-level project).
#
# A consumer writes
#   find_package(turboquant 0.1 CONFIG REQUIRED)                        # core, + cuda if available
#   find_package(turboquant 0.1 CONFIG REQUIRED COMPONENTS core cuda)   # fail unless cuda is there
# and links turboquant::core / turboquant::cuda. turboquant::cuda is a static library whose device
# code is already linked (CUDA_RESOLVE_DEVICE_SYMBOLS), so a C++-only project links it; its config
# finds the CUDA toolkit (CUDA::cudart_static) for it.
include(CMakePackageConfigHelpers)

set(TURBOQUANT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/turboquant" CACHE STRING
    "Where turboquantConfig.cmake is installed, relative to the prefix")
mark_as_advanced(TURBOQUANT_INSTALL_CMAKEDIR)

# Every public header (.hpp and the device .cuh building blocks), kept as laid out in the tree.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/turboquant"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT turboquant_development)

# One export set per package component, so that find_package loads turboquant::cuda (and looks
# for the CUDA toolkit) only when that component is asked for.
install(TARGETS turboquant_core EXPORT turboquantCoreTargets)
install(EXPORT turboquantCoreTargets
        NAMESPACE turboquant::
        DESTINATION "${TURBOQUANT_INSTALL_CMAKEDIR}"
        COMPONENT turboquant_development)

if(TURBOQUANT_ENABLE_CUDA)
  install(TARGETS turboquant_cuda EXPORT turboquantCudaTargets
          ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT turboquant_development)
  install(EXPORT turboquantCudaTargets
          NAMESPACE turboquant::
          DESTINATION "${TURBOQUANT_INSTALL_CMAKEDIR}"
          COMPONENT turboquant_development)
  set(TQ_PACKAGE_CUDA_BUILT ON)
  set(TQ_PACKAGE_CUDA_VERSION_MAJOR "${CUDAToolkit_VERSION_MAJOR}")
  set(TQ_PACKAGE_VERSION_ARCH "")
else()
  set(TQ_PACKAGE_CUDA_BUILT OFF)
  set(TQ_PACKAGE_CUDA_VERSION_MAJOR "")
  set(TQ_PACKAGE_VERSION_ARCH ARCH_INDEPENDENT)  # headers only
endif()

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/turboquantConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/turboquantConfig.cmake"
  INSTALL_DESTINATION "${TURBOQUANT_INSTALL_CMAKEDIR}"
  NO_SET_AND_CHECK_MACRO)
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/turboquantConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMajorVersion
  ${TQ_PACKAGE_VERSION_ARCH})
install(FILES "${PROJECT_BINARY_DIR}/turboquantConfig.cmake"
              "${PROJECT_BINARY_DIR}/turboquantConfigVersion.cmake"
        DESTINATION "${TURBOQUANT_INSTALL_CMAKEDIR}"
        COMPONENT turboquant_development)
