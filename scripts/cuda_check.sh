#!/usr/bin/env bash
# CI check of the CUDA headers without a GPU: every header of include/simcalkv/cuda/ compiles on
# its own with nvcc for sm_90, and tests/cuda/compile_check.cu instantiates the entry points (real
# device code for both storage types, both layouts and both head dims).
#   scripts/cuda_check.sh [--quick | --all]   (--all: also the GPU tests and benchmarks, slower)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "cuda_check: nvcc not found (set NVCC)"; exit 1; }
flags=(-std=c++20 -arch=sm_90 -Iinclude -Xcudafe --display_error_number)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
# --quick (CI): only the instantiation file, which includes every header; otherwise each header on
# its own first (each is self-contained).
headers=(include/simcalkv/cuda/*.cuh include/simcalkv/cuda/*/*.cuh)
[ "${1:-}" = --quick ] && headers=()
for h in "${headers[@]}"; do
  rel=${h#include/}
  name=$(echo "${rel%.cuh}" | tr / _)
  printf '#include <%s>\n#include <%s>\n' "$rel" "$rel" >"$tmp/$name.cu"
  "$NVCC" "${flags[@]}" -c "$tmp/$name.cu" -o "$tmp/$name.o"
  echo "ok  $h"
done
"$NVCC" "${flags[@]}" -O2 -c tests/cuda/compile_check.cu -o "$tmp/compile_check.o"
echo "ok  tests/cuda/compile_check.cu (instantiations)"
"$NVCC" "${flags[@]}" -O2 -Ipython/csrc -c python/csrc/cuda_ops.cu -o "$tmp/cuda_ops.o"
echo "ok  python/csrc/cuda_ops.cu (the Python package's GPU half)"
if [ "${1:-}" = --all ]; then
  "$NVCC" "${flags[@]}" -O2 -Itests/cuda -c tests/cuda/test_cuda.cu -o "$tmp/test_cuda.o"
  echo "ok  tests/cuda/test_cuda.cu"
  "$NVCC" "${flags[@]}" -O2 -c benchmarks/cuda/bench_cuda.cu -o "$tmp/bench_cuda.o"
  echo "ok  benchmarks/cuda/bench_cuda.cu"
fi
echo "cuda_check: passed in $((SECONDS - start)) s"
