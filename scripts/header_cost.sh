#!/usr/bin/env bash
# What including simcalkv costs a host's translation unit: compiles one small program (the installed-package
# consumer, tests/consumer/consumer.cpp: a bf16 KVCache compressed by SimCalKV) four ways, at -O0 and -O2, and
# prints seconds and the ratio to the lightest. Compare ratios: the machine is shared.
#   light     simcalkv/kv_cache.hpp + simcalkv/policies/simcalkv.hpp
#   core      simcalkv/core.hpp (no registry)
#   umbrella  simcalkv/simcalkv.hpp (core + the registry's headers, unused)
#   registry  simcalkv/simcalkv.hpp, the policy built by name: make_policy("SimCalKV") instantiates every policy
# Usage: scripts/header_cost.sh [extra compiler flags, e.g. -march=native]   (CXX picks the compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CXX:-g++}
eigen=$(pkg-config --cflags eigen3 2>/dev/null || echo -I/usr/include/eigen3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=tests/consumer/consumer.cpp
sed 's|#include <simcalkv/simcalkv.hpp>|#include <simcalkv/kv_cache.hpp>\n#include <simcalkv/policies/simcalkv.hpp>|' $src >"$tmp/light.cpp"
sed 's|#include <simcalkv/simcalkv.hpp>|#include <simcalkv/core.hpp>|' $src >"$tmp/core.cpp"
cp $src "$tmp/umbrella.cpp"
sed 's|simcalkv::SimCalKV().compress(request, ws)|simcalkv::make_policy("SimCalKV").compress(request, ws)|' $src >"$tmp/registry.cpp"
echo "compiler: $($cxx --version | head -1); flags: -std=c++20 $* ; one compile each"
printf "%-10s %10s %8s %10s %8s\n" variant "-O0 s" ratio "-O2 s" ratio
declare -A base
for v in light core umbrella registry; do
  line=$(printf "%-10s" $v)
  for opt in -O0 -O2; do
    start=$(date +%s.%N)
    $cxx -std=c++20 $opt "$@" -Iinclude $eigen -c "$tmp/$v.cpp" -o "$tmp/$v.o"
    t=$(echo "$(date +%s.%N) - $start" | bc)
    [ "$v" = light ] && base[$opt]=$t
    line+=$(printf " %10.2f %7.2fx" "$t" "$(echo "$t / ${base[$opt]}" | bc -l)")
  done
  echo "$line"
done
