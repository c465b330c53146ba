#!/usr/bin/env bash
# Fuzzes every parser a user feeds files or strings to (fuzz/targets): builds the targets with ASan + UBSan
# (Clang's libFuzzer when clang++ is there, our seeded mutation driver otherwise), makes each seed corpus from the
# bundled files, runs each target for SECONDS (default 60; CI runs 15) and prints what it tried: inputs run, those
# accepted and refused, and whether it crashed, hung (a 10 s input) or accepted an input that breaks an invariant
# (reported as a crash). Exit status 1 when any target failed; the failing input is left in $BUILD_DIR/artifacts.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (BUILD_DIR defaults to build-fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
build=${BUILD_DIR:-build-fuzz}
if command -v clang++ >/dev/null; then
  compiler=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++)
  engine="libFuzzer ($(clang++ --version | head -1))"
else
  compiler=()
  engine="the seeded mutation driver (fuzz/driver.cpp; no clang++)"
fi
mkdir -p "$build"
cmake -S . -B "$build" "${compiler[@]}" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DSIMCALKV_SANITIZE=ON -DSIMCALKV_BUILD_FUZZ=ON -DSIMCALKV_BUILD_TOOLS=ON -DSIMCALKV_BUILD_TESTS=OFF \
  -DSIMCALKV_BUILD_BENCHMARKS=OFF -DSIMCALKV_BUILD_EXAMPLES=OFF -DSIMCALKV_DISPATCH=OFF -DSIMCALKV_NATIVE=OFF \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(safetensors trace model_config tokenizer dataset_rows split policy_spec)
fi
build_targets=(simcalkv_tracegen)
for t in "${targets[@]}"; do build_targets+=("simcalkv_fuzz_$t"); done
cmake --build "$build" -j"$(nproc)" --target "${build_targets[@]}"

# Seed corpora from the bundled files.
corpus=$build/corpus
rm -rf "$corpus"
mkdir -p "$corpus"/{safetensors,trace,model_config,tokenizer,dataset_rows,split,policy_spec} "$build/artifacts"
"$build/tools/simcalkv-tracegen" --out "$corpus/trace/tiny.trace" --layers 1 --q_heads 2 --kv_heads 1 --head_dim 4 \
  --n 6 2>/dev/null
"$build/tools/simcalkv-tracegen" --out "$corpus/trace/tiny_bf16.trace" --layers 2 --q_heads 1 --kv_heads 1 \
  --head_dim 2 --n 3 --dtype bf16 2>/dev/null
cp "$corpus"/trace/* "$corpus/safetensors/"
for m in llama qwen2 mistral llama_bf16; do cp "tests/fixtures/engine/$m/config.json" "$corpus/model_config/$m.json"; done
cp models/simcalkv-tiny/config.json "$corpus/model_config/tiny.json"
cp tests/fixtures/engine/tokenizers/{gpt2,llama3,qwen2}.json "$corpus/tokenizer/"
for f in tests/fixtures/datasets/*.jsonl data/tasks/niah_single_1024.jsonl; do
  head -c 6000 "$f" | head -n 3 >"$corpus/dataset_rows/$(basename "$f")"
done
i=0
for s in test "test[:100]" "validation[10:20]" "train[:5%]" "test[-10:]" "train[10%:20%](pct1_dropremainder)" \
         "train[:10]+test[:10]" "test[5:2]"; do printf '%s' "$s" >"$corpus/split/$((i++))"; done
i=0
for s in SimCalKV "SimCalKV:bias=log_count,search=local:64" "AdaKV+SnapKV:alpha=0.2" PyramidKV H2O StreamingLLM \
         "SnapKV:pool_kernel=5,pooling=avg" TOVA KeepKV CaM D2O "KVMerger" "SlerpKV" "Full" "SimCalKV;SnapKV,H2O"; do
  printf '%s' "$s" >"$corpus/policy_spec/$((i++))"
done

echo "fuzzing with $engine, ASan + UBSan, $seconds s per target"
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=0
summary=()
for t in "${targets[@]}"; do
  log=$build/fuzz-$t.log
  set +e
  (cd "$build/artifacts" && "../fuzz/fuzz-$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -seed=1 \
     -max_len=65536 -print_final_stats=1 "../corpus/$t") >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  tally=$(grep -E "^$t: " "$log" | tail -1 | sed "s/^$t: //")
  outcome=ok
  if ((rc != 0)); then
    failed=1
    if grep -q "ERROR: libFuzzer: timeout" "$log"; then outcome="HANG"
    elif grep -q "silent acceptance" "$log"; then outcome="SILENT ACCEPTANCE: $(grep -m1 'silent acceptance' "$log")"
    else outcome="CRASH (rc $rc)"; fi
  fi
  summary+=("$(printf '%-14s %10s inputs   %-55s %s' "$t" "${runs:-?}" "${tally:-}" "$outcome")")
done
printf '%s\n' "${summary[@]}"
((failed == 0)) || { echo "a target failed: see $build/fuzz-<target>.log and $build/artifacts"; exit 1; }
