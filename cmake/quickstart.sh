#!/usr/bin/env bash
# Quick start, also what CI runs (.ci/run):
#   bash cmake/quickstart.sh test   configure (preset ci), build everything, run every test not
#                                   labelled gpu (ctest --preset ci)
#   bash cmake/quickstart.sh demo   configure (preset release), build and run 01_cpu_round_trip
# Both first install what the build needs and lacks (Debian packages; root or sudo): fmt,
# GoogleTest, Google Benchmark, Ninja. CUDA is built when nvcc is found (PATH or
# /usr/local/cuda/bin) unless TURBOQUANT_ENABLE_CUDA=OFF is set; no GPU is needed for either.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
JOBS="$(nproc 2>/dev/null || echo 2)"

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Packages that the CMake configure needs and this machine lacks.
missing_packages() {
  local probe packages=()
  command -v ninja >/dev/null 2>&1 || packages+=(ninja-build)
  command -v cmake >/dev/null 2>&1 || packages+=(cmake)
  if command -v cmake >/dev/null 2>&1; then
    probe="$(mktemp -d)"
    cat >"$probe/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(turboquant_dependency_probe LANGUAGES CXX)
find_package(fmt CONFIG QUIET)
find_package(GTest QUIET)
find_package(benchmark CONFIG QUIET)
message(STATUS "probe: fmt=${fmt_FOUND} gtest=${GTest_FOUND} benchmark=${benchmark_FOUND}")
CMAKE
    local out
    out="$(cmake -S "$probe" -B "$probe/build" 2>&1 || true)"
    rm -rf "$probe"
    [[ "$out" == *"fmt=1"* ]] || packages+=(libfmt-dev)
    [[ "$out" == *"gtest=TRUE"* || "$out" == *"gtest=1"* ]] || packages+=(libgtest-dev)
    [[ "$out" == *"benchmark=1"* ]] || packages+=(libbenchmark-dev)
  fi
  echo "${packages[@]:-}"
}

install_dependencies() {
  local packages
  packages="$(missing_packages)"
  if [ -n "$packages" ]; then
    log "installing: $packages"
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive sh -c \
      "apt-get update && apt-get install -y --no-install-recommends $packages"
  fi
}

# CUDA on when nvcc is found; TURBOQUANT_ENABLE_CUDA=ON|OFF in the environment decides instead.
cuda_flag() {
  if [ -n "${TURBOQUANT_ENABLE_CUDA:-}" ]; then
    echo "-DTURBOQUANT_ENABLE_CUDA=${TURBOQUANT_ENABLE_CUDA}"
    return
  fi
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  if command -v nvcc >/dev/null 2>&1; then
    echo "-DTURBOQUANT_ENABLE_CUDA=ON"
  else
    echo "-DTURBOQUANT_ENABLE_CUDA=OFF"
  fi
}

cmd_test() {
  install_dependencies
  local cuda log_file
  cuda="$(cuda_flag)"
  log "configure (preset ci, $cuda)"
  cmake --preset ci "$cuda"
  log "build"
  cmake --build --preset ci --parallel "$JOBS"
  log "test (every test not labelled gpu)"
  log_file=build/ci/ctest-output.log
  ctest --preset ci --parallel "$JOBS" 2>&1 | tee "$log_file"
  grep -E 'tests passed|tests failed' "$log_file" | tail -n 1
}

cmd_demo() {
  install_dependencies
  local cuda
  cuda="$(cuda_flag)"
  log "configure (preset release, $cuda)"
  cmake --preset release "$cuda"
  log "build 01_cpu_round_trip"
  cmake --build --preset release --target 01_cpu_round_trip --parallel "$JOBS"
  log "run"
  ./build/release/examples/01_cpu_round_trip
}

case "${1:-}" in
  test) cmd_test ;;
  demo) cmd_demo ;;
  *)
    echo "usage: bash cmake/quickstart.sh test|demo" >&2
    exit 2
    ;;
esac
