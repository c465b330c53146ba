#!/usr/bin/env bash
# Builds simcalkv-bench (Release, -march=native unless SIMCALKV_CMAKE_ARGS says otherwise), runs it
# and prints the ratio table of scripts/bench_ratios.py. With no arguments: the targets' benchmarks
# on every kernel table this CPU runs (a few minutes on one core); any arguments go to
# simcalkv-bench instead (e.g. --grid=full, or --benchmark_filter=...).
# JSON: $BUILD_DIR/bench.json (BUILD_DIR defaults to build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${BUILD_DIR:-build}
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSIMCALKV_BUILD_BENCHMARKS=ON ${SIMCALKV_CMAKE_ARGS:-} \
  >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "configuration failed (log: $build/configure.log)" >&2; exit 1; }
grep "^-- simcalkv" "$build/configure.log"
cmake --build "$build" -j"$(nproc)" --target simcalkv-bench
args=("$@")
if ((${#args[@]} == 0)); then
  args=(--benchmark_filter='BM_CompressArch|BM_DecodeArch|BM_GemmNT|BM_Compress/SimCalKV/32768|BM_DecodeAttention/(4096|32768)/|BM_StreamCopy/268435456|BM_StreamRead|BM_Gemm/')
fi
"$build/benchmarks/simcalkv-bench" "${args[@]}" --benchmark_out="$build/bench.json" --benchmark_out_format=json
python3 scripts/bench_ratios.py "$build/bench.json" || echo "bench.sh: no ratio table for this selection (it needs BM_StreamCopy and BM_Gemm results)"
