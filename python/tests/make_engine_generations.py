"""Writes python/tests/data/engine_generations.json: what the C++ engine (simcalkv-generate)
generates on the bundled model for a few prompts and policies, for test_hf.py to compare the
transformers integration against. Run from the repository root after building:
    python3 python/tests/make_engine_generations.py build/engine/simcalkv-generate
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "build/engine/simcalkv-generate")
rows = [json.loads(line) for line in (ROOT / "data/corpus/heldout.jsonl").read_text().splitlines()[:3]]
prompts = [" ".join(r["text"].split()[:160]) for r in rows]  # about 200 tokens each
cases = [("Full", 0.0)] + [(s, r) for s in ("SnapKV", "SimCalKV", "AdaKV+SimCalKV", "StreamingLLM") for r in (0.5, 0.75)]
out = {"model": "models/simcalkv-tiny", "window": 32, "max_new_tokens": 24, "kv_dtype": "f32", "runs": []}
for i, prompt in enumerate(prompts):
    for spec, ratio in cases:
        cmd = [binary, "--prompt", prompt, "--max_new_tokens", "24", "--ignore_eos", "--json", "--window", "32",
               "--threads", "1"]
        if spec != "Full":
            cmd += ["--kv_method", spec, "--compress_ratio", str(ratio)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
        out["runs"].append({"prompt": i, "spec": spec, "compress_ratio": ratio, "prompt_ids": result["prompt_ids"],
                            "generated_ids": result["generated_ids"],
                            "entries_after": (result.get("compression") or {}).get("entries_after")})
(ROOT / "python/tests/data/engine_generations.json").write_text(json.dumps(out) + "\n")
print(f"{len(out['runs'])} runs written")
