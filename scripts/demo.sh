#!/usr/bin/env bash
# The synthetic demo (the README's main job is scripts/eval.sh): installs what is missing, builds, and runs
# simcalkv-demo on bundled defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target simcalkv-demo
"$build/tools/simcalkv-demo" "$@"
