#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries (as build.sh does) from a copy of the tree in which
# the files named as arguments are taken from git HEAD: for timing one change against another.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
snap=$(mktemp -d)
cp -r include tests benchmarks "$snap/"
for f in "$@"; do git show "HEAD:$f" >"$snap/$f"; done
cd "$snap"
mkdir -p build-cuda/dev
bash benchmarks/cuda/build.sh >/dev/null
cp build-cuda/dev/*.xz "$root/build-cuda/dev/"
rm -rf "$snap"
ls -la "$root/build-cuda/dev"
