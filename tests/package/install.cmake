# cmake -DBUILD_DIR=<build tree> -DPREFIX=<dir> [-DCONFIG=<config>] -P install.cmake
# Installs the build tree into a fresh PREFIX (the package_install fixture).
cmake_minimum_required(VERSION 3.25)
file(REMOVE_RECURSE "${PREFIX}")
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
                COMMAND_ERROR_IS_FATAL ANY)
foreach(required IN ITEMS include/turboquant/format.hpp include/turboquant/layout.hpp)
  if(NOT EXISTS "${PREFIX}/${required}")
    message(FATAL_ERROR "${PREFIX}/${required} was not installed")
  endif()
endforeach()
