#!/usr/bin/env bash
# simcalkv-eval, the paper's evaluation harness on the reference engine: installs what is missing, builds the tool,
# and runs it with the arguments given. With none: the bundled model on the bundled long-context tasks, the full
# cache against SimCalKV and SnapKV at compress_ratio 0.5 (docs/eval.md). Results go to $BUILD_DIR/eval-results
# unless --output_dir says otherwise.
set -euo pipefail
# CMake options: SIMCALKV_CMAKE_ARGS="-DSIMCALKV_NATIVE=OFF ..." (word-split), BUILD_DIR for the build folder.
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${BUILD_DIR:-build}
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSIMCALKV_BUILD_BENCHMARKS=OFF -DSIMCALKV_BUILD_TOOLS=ON \
  -DSIMCALKV_BUILD_EXAMPLES=ON ${SIMCALKV_CMAKE_ARGS:-} >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "configuration failed (log: $build/configure.log)" >&2; exit 1; }
grep "^-- simcalkv" "$build/configure.log"
cmake --build "$build" -j"$(nproc)" --target simcalkv_eval
default_output=(--output_dir "$build/eval-results")
for arg in "$@"; do
  case "$arg" in --output_dir | --output-dir | --output_dir=* | --output-dir=*) default_output=() ;; esac
done
"$build/tools/simcalkv-eval" "${default_output[@]}" "$@"
