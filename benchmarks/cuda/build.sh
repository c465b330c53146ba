#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries with nvcc on this machine (no GPU needed) into
# build-cuda/dev as .xz files small enough to travel to the accelerator machine, where
# benchmarks/cuda/run_device.sh unpacks and runs them. Needs Eigen 3.4 and xsimd for the CPU
# reference (the library's own dependencies).
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=build-cuda
mkdir -p "$out/dev"
eigen=$(pkg-config --cflags eigen3 2>/dev/null || echo -I/usr/include/eigen3)
# The CPU reference builds registry policies by name: the registry compiled once, as the project does.
g++ -std=c++20 -O2 -Iinclude $eigen -DSIMCALKV_COMPILED_REGISTRY -c tests/cuda/cpu_reference.cpp -o "$out/cpu_reference.o" &
g++ -std=c++20 -O2 -Iinclude $eigen -DSIMCALKV_COMPILED_REGISTRY -c src/registry.cpp -o "$out/registry.o" &
"$NVCC" -std=c++20 -arch=sm_90 -O2 -Iinclude -Itests/cuda -c tests/cuda/test_cuda.cu -o "$out/test_cuda.o" &
"$NVCC" -std=c++20 -arch=sm_90 -O3 -Iinclude -c benchmarks/cuda/bench_cuda.cu -o "$out/bench_cuda.o" &
wait
link=(-arch=sm_90 -Xcompiler "-static-libstdc++ -static-libgcc")
"$NVCC" "${link[@]}" "$out/test_cuda.o" "$out/cpu_reference.o" "$out/registry.o" -o "$out/test_cuda"
"$NVCC" "${link[@]}" "$out/bench_cuda.o" -o "$out/bench_cuda"
for b in test_cuda bench_cuda; do
  strip -o "$out/$b.stripped" "$out/$b"
  xz -T0 -6 -c "$out/$b.stripped" >"$out/dev/$b.xz"
  rm "$out/$b.stripped"
done
ls -la "$out/dev"
