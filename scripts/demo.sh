#!/usr/bin/env bash
# The synthetic demo (the README's main job is scripts/eval.sh): installs what is missing, builds, and runs
# simcalkv-demo on bundled defaults.
set -euo pipefail
# CMake options: SIMCALKV_CMAKE_ARGS="-DSIMCALKV_NATIVE=OFF ..." (word-split), BUILD_DIR for the build folder.
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${BUILD_DIR:-build}
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${SIMCALKV_CMAKE_ARGS:-} >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "configuration failed (log: $build/configure.log)" >&2; exit 1; }
grep "^-- simcalkv" "$build/configure.log"
cmake --build "$build" -j"$(nproc)" --target simcalkv-demo
"$build/tools/simcalkv-demo" "$@"
