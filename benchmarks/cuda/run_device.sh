#!/usr/bin/env bash
# Everything the accelerator machine runs, in one call: the GPU-vs-CPU tests, the CUDA benchmarks
# and the PyTorch baselines on the same card. Binaries are built beforehand on a machine with nvcc
# (benchmarks/cuda/build.sh) and carried as build-cuda/dev/*.xz; results land in $OUT:
#   tests.log, cuda_tests.json, cuda_bench.json, cuda_torch.json, bench.log
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/bin
for f in build-cuda/dev/*.xz; do xz -dc "$f" >"/tmp/bin/$(basename "$f" .xz)"; done
chmod +x /tmp/bin/*
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__)'
} >"$out/bench.log" 2>&1
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  for g in types policies shards plans decode; do
    timeout 60 /tmp/bin/test_cuda --only "$g" --json "/tmp/cuda_tests_$g.json" >>"$out/tests.log" 2>&1
    echo "== $g exit $?" | tee -a "$out/tests.log"
  done
  grep -E "^FAIL|cases, " "$out/tests.log" | head -20
  python3 - "$out/cuda_tests.json" /tmp/cuda_tests_*.json <<'PY'
import json, sys
groups = {}
for p in sys.argv[2:]:
    try:
        groups[p.split("cuda_tests_")[1][:-5]] = json.load(open(p))
    except Exception as e:
        groups[p] = {"error": str(e)}
json.dump(groups, open(sys.argv[1], "w"), indent=1)
PY
fi
timeout 120 /tmp/bin/bench_cuda --json "$out/cuda_bench.json" ${BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log"
echo "== bench exit ${PIPESTATUS[0]}" | tee -a "$out/bench.log"
PYTHONUNBUFFERED=1 timeout "${TORCH_TIMEOUT:-200}" python3 benchmarks/cuda/torch_baselines.py --bench "$out/cuda_bench.json" \
  --out "$out/cuda_torch.json" ${TORCH_ARGS:-} 2>&1 | grep -v Warning | tee -a "$out/bench.log"
echo "== torch exit ${PIPESTATUS[0]}" | tee -a "$out/bench.log"
