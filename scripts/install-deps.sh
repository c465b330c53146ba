#!/usr/bin/env bash
# Installs the Debian 12 packages simcalkv builds with, when any is missing.
# --cross: also the AArch64 cross compiler and qemu-user, for scripts/isa_check.sh; --fuzz: clang and libFuzzer;
# --python: PyTorch (CPU), pytest and venv, for the Python package under python/ (scripts/test_python.sh).
set -euo pipefail
packages=(build-essential cmake pkg-config libeigen3-dev libxsimd-dev catch2 libbenchmark-dev
          nlohmann-json3-dev libomp-dev python3-matplotlib libpcre2-dev binutils)
for arg in "$@"; do
  case "$arg" in
    --cross) packages+=(g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) ;;
    --fuzz) packages+=(clang libclang-rt-14-dev) ;;  # libFuzzer, for scripts/fuzz.sh
    --python) packages+=(python3-torch libtorch-dev pybind11-dev python3-pytest python3-venv python3-pip python3-setuptools python3-dev) ;;
    *) echo "install-deps.sh: unknown option '$arg' (--cross, --fuzz, --python)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
