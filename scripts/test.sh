#!/usr/bin/env bash
# The README's test command: installs what is missing, builds in Release, runs every test: the
# C++ ctests, then the Python package's (scripts/test_python.sh; SIMCALKV_PYTHON_TESTS=0 skips them).
set -euo pipefail
# CMake options: SIMCALKV_CMAKE_ARGS="-DSIMCALKV_NATIVE=OFF ..." (word-split), BUILD_DIR for the build folder.
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${BUILD_DIR:-build}
mkdir -p "$build"
# The benchmark suite is not needed to test; .ci/run compiles it separately.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSIMCALKV_BUILD_BENCHMARKS=OFF -DSIMCALKV_BUILD_TOOLS=ON \
  -DSIMCALKV_BUILD_EXAMPLES=ON -DSIMCALKV_BUILD_TESTS=ON ${SIMCALKV_CMAKE_ARGS:-} "$@" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "configuration failed (log: $build/configure.log)" >&2; exit 1; }
grep "^-- simcalkv" "$build/configure.log"
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
if [ "${SIMCALKV_PYTHON_TESTS:-1}" != 0 ]; then bash scripts/test_python.sh; fi
