#!/usr/bin/env bash
# One command for the measured results: builds the fidelity tool and the benchmark, measures every
# registered policy on the default synthetic trace (keep 1.0, 0.5, 0.25, 0.1) and runs a short
# benchmark, then writes
#   docs/results/fidelity.json      simcalkv-fidelity --json
#   docs/results/fidelity.txt       its table
#   docs/results/bench.json         simcalkv-bench --benchmark_out_format=json
#   docs/results/bench_ratios.txt   scripts/bench_ratios.py on it (the performance targets)
#   docs/fidelity.png, docs/throughput.png
# About 5-10 minutes on 2 cores (most of it compiling). BUILD_DIR picks the build directory
# (default build); BENCH_FILTER overrides the benchmark selection.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
jobs=$(nproc)
out=docs/results
mkdir -p "$out"

echo "== build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$jobs" --target simcalkv_fidelity simcalkv-bench

echo "== fidelity on the synthetic trace"
"$build/tools/simcalkv-fidelity" --synthetic --kv_method all --compress_ratio 0,0.5,0.75,0.9 \
  --threads "$jobs" --json "$out/fidelity.json" | tee "$out/fidelity.txt"

echo "== benchmark (short)"
# Compression of every policy at keep 50% and SimCalKV at every keep, decode attention, copy, GEMM.
filter=${BENCH_FILTER:-'BM_Compress/[^/]+/(4096|16384)/50/|BM_Compress/SimCalKV/|BM_Compress/(SnapKV|H2O|StreamingLLM)/32768/50/|BM_DecodeAttention|BM_Stream|BM_Gemm'}
"$build/benchmarks/simcalkv-bench" --benchmark_filter="$filter" \
  --benchmark_out="$out/bench.json" --benchmark_out_format=json

echo "== targets"
python3 scripts/bench_ratios.py "$out/bench.json" | tee "$out/bench_ratios.txt"

echo "== plots"
/usr/bin/python3 scripts/plots.py "$out/fidelity.json" "$out/bench.json" docs
