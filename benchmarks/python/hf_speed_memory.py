"""Speed and memory of compressed generation in transformers: the full cache, kvpress (run from
its own source) and simcalkv, on a Llama-3.1-8B-shaped model with random bf16 weights (32 layers,
32 query heads, 8 KV heads, head dim 128) on one GPU.

    python benchmarks/python/hf_speed_memory.py --kvpress PATH/TO/kvpress-checkout \
        --out benchmarks/results/hf_speed_memory.json [--contexts 8192 32768 131072] [--ratio 0.75]

For each context length and method: the prefill (with compression) time; for simcalkv the
compression step alone (CUDA events around it, summed over layers); peak GPU memory above the
weights; the KV bytes the cache really holds; decode tokens/s at batch 1 and at the largest batch
whose cache fits --kv_budget_gb (the batch-1 cache repeated: every sequence costs what the first
does). Decoding feeds one token per step through model() with explicit positions, the same loop
for every method. Results are written after every measurement, so a run cut short keeps what it
measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kvpress_side_by_side import import_kvpress, with_cache_position  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kvpress", help="folder holding the kvpress package")
    p.add_argument("--out", required=True)
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--ratio", type=float, default=0.75)
    p.add_argument("--kv_budget_gb", type=float, default=40.0)
    p.add_argument("--max_batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=None)
    a = p.parse_args()

    import transformers
    import simcalkv.hf
    kvpress = import_kvpress(a.kvpress)

    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072 + 1024,
        rope_theta=500000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    simcalkv.hf.set_attention(model, "sdpa")
    weights = torch.cuda.memory_allocated()

    r = a.ratio
    methods = {
        "full": None,
        "kvpress SnapKVPress": lambda: with_cache_position(kvpress.SnapKVPress(compression_ratio=r)),
        "kvpress AdaKVPress(SnapKV)": lambda: with_cache_position(kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=r))),
        "simcalkv SnapKV": lambda: simcalkv.hf.SimCalKVPress("SnapKV", compression_ratio=r, window=64, backend="cuda"),
        "simcalkv SimCalKV": lambda: simcalkv.hf.SimCalKVPress("SimCalKV", compression_ratio=r, window=64, backend="cuda"),
        "simcalkv AdaKV+SimCalKV": lambda: simcalkv.hf.SimCalKVPress("AdaKV+SimCalKV", compression_ratio=r, window=64,
                                                                     backend="cuda"),
    }
    if a.methods:
        methods = {k: v for k, v in methods.items() if k in a.methods}
    result = {"model": "Llama-3.1-8B-shaped, random bf16 weights", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "transformers": transformers.__version__, "kvpress": "0.5.4",
              "compress_ratio": r, "kv_budget_gb": a.kv_budget_gb, "weights_bytes": weights,
              "command": " ".join(sys.argv), "runs": []}

    def save():
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")

    def kv_bytes(cache):
        total = 0
        for layer in cache.layers:
            if isinstance(layer, simcalkv.hf.SimCalKVLayer) and layer.compressed:
                total += layer.nbytes()
            elif getattr(layer, "keys", None) is not None:
                total += 2 * layer.keys.numel() * layer.keys.element_size()
        return total

    def decode(cache, press, n, batch, steps):
        tok = torch.randint(0, config.vocab_size, (batch, 1), device="cuda")
        ctx = press(model) if press is not None and isinstance(press, simcalkv.hf.SimCalKVPress) else None
        times = []
        with torch.no_grad():
            if ctx:
                ctx.__enter__()
            try:
                for i in range(steps):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    pos = torch.full((batch, 1), n + i, device="cuda")
                    out = model(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True)
                    tok = out.logits[:, -1:].argmax(-1)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)
        timed = times[3:] if len(times) > 4 else times
        return batch * len(timed) / sum(timed)

    def repeat_cache(cache, times):
        for layer in cache.layers:
            if isinstance(layer, simcalkv.hf.SimCalKVLayer) and layer.batch is not None:
                layer.batch = layer.batch.repeat(times)
            else:
                layer.keys = layer.keys.repeat(times, 1, 1, 1)
                layer.values = layer.values.repeat(times, 1, 1, 1)

    for n in a.contexts:
        ids = torch.randint(0, config.vocab_size, (1, n), device="cuda")
        for name, make in methods.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            press = make() if make else None
            cache = transformers.DynamicCache()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                if press is None:
                    model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                else:
                    with press(model):
                        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - weights
            compress_ms = None
            if name.startswith("simcalkv"):
                compress_ms = sum(l.compress_seconds[0].elapsed_time(l.compress_seconds[1])
                                  for l in cache.layers if l.compress_seconds is not None)
            held = kv_bytes(cache)
            row = {"context": n, "method": name, "prefill_ms": prefill * 1e3, "compress_ms": compress_ms,
                   "peak_bytes_above_weights": peak, "kv_bytes_held": held}
            if name.startswith("kvpress AdaKV"):
                # kvpress's AdaKV keeps every entry and masks the evicted ones in attention: the
                # decode batch it can hold is the full cache's.
                row["note"] = "entries masked, not freed"
            row["decode_tokens_per_s_batch1"] = decode(cache, press, n, 1, a.steps)
            batch = int(max(1, min(a.max_batch, a.kv_budget_gb * 2**30 // max(held, 1))))
            row["largest_batch"] = batch
            if batch > 1:
                try:
                    repeat_cache(cache, batch)
                    row["decode_tokens_per_s_largest_batch"] = decode(cache, press, n, batch, max(6, a.steps // 2))
                except torch.OutOfMemoryError as e:
                    row["decode_tokens_per_s_largest_batch"] = None
                    row["error"] = f"out of memory at batch {batch}: {str(e)[:120]}"
            else:
                row["decode_tokens_per_s_largest_batch"] = row["decode_tokens_per_s_batch1"]
            del cache
            result["runs"].append(row)
            save()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
