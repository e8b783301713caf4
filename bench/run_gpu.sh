#!/usr/bin/env bash
# Builds, tests and benchmarks on a GPU machine in one go; full logs go to $OUT (or ./gpu-logs),
# a short summary is printed last. Stages (default: all but sanitize):
#   bash bench/run_gpu.sh build test bench baseline     # then, in a second call:
#   bash bench/run_gpu.sh sanitize                        # compute-sanitizer runs of every gpu test
#   bash bench/run_gpu.sh fallback                        # the mma.sync prefill path (TURBOQUANT_WGMMA=OFF):
#                                                         # its own build, test_cuda_prefill
# TQ_BENCH_FILTER narrows the benchmarks (Google Benchmark's --benchmark_filter regex).
# The FP16 baseline (fp16_baseline.py, torch SDPA) is looked for at $TQ_BASELINE or .gpu/.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
build=${TQ_BUILD_DIR:-build/gpu}
baseline=${TQ_BASELINE:-.gpu/fp16_baseline.py}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test bench baseline)
summary="$out/summary.txt"
say() { echo "$*" | tee -a "$summary"; }
rc=0
for stage in "${stages[@]}"; do
  case "$stage" in
    build)
      { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -1; cmake --version | head -1; } >> "$summary" 2>&1
      if cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
           -DCMAKE_CUDA_FLAGS=-lineinfo > "$out/build.log" 2>&1 &&
         cmake --build "$build" -j "$(nproc)" >> "$out/build.log" 2>&1; then
        say "build: ok"
      else
        say "build: FAILED"; grep -E -B2 -A12 'error|Error' "$out/build.log" | head -80; exit 1
      fi ;;
    test)
      ctest --test-dir "$build" -L gpu -LE sanitizer --output-on-failure > "$out/ctest_gpu.log" 2>&1 || rc=1
      say "gpu tests: $(grep -E 'tests passed|tests failed' "$out/ctest_gpu.log" | tail -1)"
      grep -E '^\s*[0-9]+ - .*\((Failed|SEGFAULT|Timeout|Subprocess)' "$out/ctest_gpu.log" | tee -a "$summary" ;;
    fallback)
      # The prefill kernels' mma.sync path, which sm_90a builds do not run on an H100 / H200.
      fb=${build}-mma
      if cmake -S . -B "$fb" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
           -DTURBOQUANT_WGMMA=OFF > "$out/build_fallback.log" 2>&1 &&
         cmake --build "$fb" -j "$(nproc)" --target test_cuda_prefill >> "$out/build_fallback.log" 2>&1; then
        "$fb/tests/test_cuda_prefill" > "$out/test_prefill_fallback.log" 2>&1 || rc=1
        say "prefill mma.sync path: $(grep -E 'PASSED|FAILED' "$out/test_prefill_fallback.log" | head -1)"
      else
        say "fallback build: FAILED"; rc=1
      fi ;;
    sanitize)
      ctest --test-dir "$build" -L sanitizer --output-on-failure -j 4 > "$out/ctest_sanitizer.log" 2>&1 || rc=1
      say "sanitizer tests: $(grep -E 'tests passed|tests failed' "$out/ctest_sanitizer.log" | tail -1)"
      grep -E '^\s*[0-9]+ - .*\((Failed|SEGFAULT|Timeout|Subprocess)' "$out/ctest_sanitizer.log" | tee -a "$summary" ;;
    bench)
      for b in "$build"/bench/bench_*; do
        [ -x "$b" ] || continue
        name=$(basename "$b")
        "$b" --benchmark_filter="${TQ_BENCH_FILTER:-.}" --benchmark_out="$out/$name.json" --benchmark_out_format=json --benchmark_counters_tabular=true \
          > "$out/$name.txt" 2>&1 || { rc=1; say "$name: FAILED"; }
        tail -n +1 "$out/$name.txt" | grep -vE '^\s*$' | tail -40
      done ;;
    baseline)
      if [ -f "$baseline" ]; then
        python3 "$baseline" --shape 32,16384,32,8,128 --shape 1,131072,32,8,128 --shape 1,32768,32,8,128 \
          --shape 32,4096,32,8,128 > "$out/baseline.jsonl" 2>&1 || rc=1
        cat "$out/baseline.jsonl" | tee -a "$summary"
      else
        say "baseline: $baseline not found"
      fi
      # FP16 SDPA for bench_prefill's shapes (chunk 2048 / verify 8 over a 32K prefix).
      python3 bench/prefill_baseline.py > "$out/prefill_baseline.jsonl" 2>&1 || rc=1
      tee -a "$summary" < "$out/prefill_baseline.jsonl" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "---- summary ----"; cat "$summary"
exit $rc
