# fmt for the tests, benchmarks and examples (never for the library targets): its CMake package
# when installed (Debian's libfmt-dev), else its headers alone in header-only mode.
if(NOT TARGET fmt::fmt)
  find_package(fmt CONFIG QUIET)
  if(NOT fmt_FOUND)
    find_path(TQ_FMT_INCLUDE_DIR fmt/format.h)
    if(NOT TQ_FMT_INCLUDE_DIR)
      message(FATAL_ERROR "fmt not found: install Debian's libfmt-dev (cmake/quickstart.sh does)")
    endif()
    add_library(fmt::fmt INTERFACE IMPORTED GLOBAL)
    set_target_properties(fmt::fmt PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${TQ_FMT_INCLUDE_DIR}"
      INTERFACE_COMPILE_DEFINITIONS FMT_HEADER_ONLY=1)
    message(STATUS "fmt: no CMake package, using the headers in ${TQ_FMT_INCLUDE_DIR} (header-only)")
  endif()
endif()
