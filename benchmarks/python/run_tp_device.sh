#!/usr/bin/env bash
# Tensor-parallel checks on a machine with torch 2.x and transformers 5.x (the GPU machine), in one
# go; results land in $OUT (default /tmp/out):
#   1. pip install ./python into a venv that sees the system torch (SIMCALKV_EXTRA_INCLUDE for
#      Eigen/xsimd where the system has none);
#   2. benchmarks/python/tp_generate.py on the CPU (gloo; CUDA_VISIBLE_DEVICES=""): one process, then
#      torchrun with 2 and 4 ranks of transformers' tp_plan="auto", compared (tp_cpu_*.json);
#   3. the same on GPUs (NCCL, one GPU per rank) for every rank count up to the GPUs visible
#      (tp_gpu_*.json), with TP_GPU_ARGS (e.g. the 32-layer model and 32k contexts);
#   4. pytest python/tests (pytest.log).
# usage: bash benchmarks/python/run_tp_device.sh [CPU tp_generate run arguments]
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
# A venv that sees the system's torch; where torch lives outside the system site (a python3 whose
# venvs do not see it), the python3 itself.
venv=${TP_VENV:-/tmp/simcalkv-venv}
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
py="$venv/bin/python"
torchrun="$venv/bin/torchrun"
"$py" -c "import torch" 2>/dev/null || { py=python3; torchrun="python3 -m torch.distributed.run"; }
start=$SECONDS
MAX_JOBS=${MAX_JOBS:-16} "$py" -m pip install --no-build-isolation --no-deps --no-index ./python \
  >"$out/pip_install.log" 2>&1 || { tail -30 "$out/pip_install.log"; exit 1; }
echo "pip install ($py): $((SECONDS - start)) s"
gen=benchmarks/python/tp_generate.py

model=/tmp/tp-model-cpu
[ -d "$model" ] || CUDA_VISIBLE_DEVICES="" "$py" $gen save "$model" --layers 2 --vocab 32000 | tee "$out/tp_cpu.log"
for n in 1 2 4; do
  if [ "$n" = 1 ]; then
    CUDA_VISIBLE_DEVICES="" "$py" $gen run "$model" --out "$out/tp_cpu_world1.json" "$@" 2>&1 | grep -v Warning | tee -a "$out/tp_cpu.log"
  else
    CUDA_VISIBLE_DEVICES="" $torchrun --standalone --nproc-per-node "$n" $gen run "$model" \
      --out "$out/tp_cpu_world$n.json" "$@" 2>&1 | grep -v Warning | tee -a "$out/tp_cpu.log"
  fi
done
"$py" $gen compare "$out"/tp_cpu_world{1,2,4}.json --out "$out/tp_cpu_summary.json" | tee -a "$out/tp_cpu.log"

gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -ge 2 ]; then
  gmodel=/tmp/tp-model-gpu
  [ -d "$gmodel" ] || "$py" $gen save "$gmodel" ${TP_GPU_SAVE_ARGS:---layers 32 --vocab 128256 --dtype bfloat16}
  runs=()
  for n in 1 2 4 8; do
    [ "$n" -le "$gpus" ] || break
    $torchrun --standalone --nproc-per-node "$n" $gen run "$gmodel" --out "$out/tp_gpu_world$n.json" \
      ${TP_GPU_ARGS:-} 2>&1 | grep -v Warning | tee -a "$out/tp_gpu.log"
    runs+=("$out/tp_gpu_world$n.json")
  done
  "$py" $gen compare "${runs[@]}" --out "$out/tp_gpu_summary.json" | tee -a "$out/tp_gpu.log"
fi

"$py" -m pytest -q -p no:cacheprovider python/tests >"$out/pytest.log" 2>&1
tail -3 "$out/pytest.log"
