#!/usr/bin/env python3
"""Turns one device run's JSON (run_device.sh) into benchmarks/results/cuda_summary.md and .json.

  summarize.py RUN_DIR OUT_DIR

RUN_DIR holds cuda_bench.json (bench_cuda), cuda_torch.json (torch_baselines.py) and
cuda_tests.json (test_cuda). Every ratio is between numbers measured on the same card in that run.
"""
import json
import os
import sys

LAYERS, QHEADS, HEAD_DIM, TOKENS, PARAMS = 32, 32, 128, 32768, 8e9


def prefill_flops():
    dense = 2 * PARAMS * TOKENS
    # QK^T and PV, causal (half the square), every layer and query head.
    attention = 4 * LAYERS * QHEADS * HEAD_DIM * TOKENS * TOKENS / 2
    return dense + attention, dense, attention


def main():
    run, out = sys.argv[1], sys.argv[2]
    bench = json.load(open(os.path.join(run, "cuda_bench.json")))
    torch = json.load(open(os.path.join(run, "cuda_torch.json")))
    tests_path = os.path.join(run, "cuda_tests.json")
    tests = json.load(open(tests_path)) if os.path.exists(tests_path) else {}
    res = bench["results"]
    card = bench["device"]
    s = {"device": card, "torch_device": torch.get("device"), "torch": torch.get("torch")}
    lines = [f"# CUDA kernels: measured on {card}", ""]
    lines.append("All numbers from one run of `benchmarks/cuda/run_device.sh` on this card "
                 "(bench_cuda, torch_baselines.py and test_cuda in the same call); ratios compare numbers of that run.")
    lines.append("")

    copy = next(r["gbs_read_plus_write"] for r in res if r["bench"] == "copy")
    rate = torch["matmul_tflops"]
    flops, dense, attn = prefill_flops()
    prefill_ms = flops / (rate * 1e12) * 1e3
    s.update(copy_gbs=copy, matmul_tflops=rate, prefill_flops=flops, prefill_ms_estimate=prefill_ms)
    lines += ["## Ceilings", "",
              f"- copy bandwidth (cudaMemcpy device to device, read + write): **{copy:.0f} GB/s**",
              f"- bf16 matmul (8192^3, torch): **{rate:.0f} TFLOP/s**",
              f"- Llama-3.1-8B prefill at {TOKENS} tokens: 2 x 8e9 x {TOKENS} = {dense:.3g} FLOP + causal attention "
              f"{attn:.3g} FLOP = {flops:.3g} FLOP, i.e. **{prefill_ms:.0f} ms** at that rate", ""]

    # (a) compression
    lines += ["## (a) Compressing all 32 layers at 32k tokens", "",
              "Llama-3.1-8B-shaped cache: bf16, 8 KV heads, head dim 128, 32 query heads (G = 4), window 32 (bf16 "
              "queries unless stated), one request, all 32 layers. Medians; the cache is restored between repetitions "
              "(untimed). Three ways to issue the same kernels: one `compress_layer` call per layer on one stream "
              "(what an engine does right after each layer's prefill attention), the same 32 calls captured in one "
              "CUDA graph, and the whole model in one call (the 32 layers x 8 heads = 256 sequences of a KV pool in one "
              "allocation, the layers passed as the call's requests; per-head results are identical, since every "
              "sequence is compressed on its own).", "",
              "| policy | keep | queries | per-layer calls ms | CUDA graph ms | one call ms | best, % of prefill | PyTorch ms | PyTorch / per-layer | PyTorch / one call |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    torch_c = {c["keep"]: c for c in torch.get("compress", [])}
    s["compress"] = []
    stages = None
    model_stages = []  # (keep, stages of the one call) of every SimCalKV row with a profile
    for r in res:
        if r["bench"] != "compress":
            continue
        times = [x for x in (r.get("ms_median"), r.get("graph_ms_median"), r.get("model_call_ms_median")) if x]
        best = min(times)
        pct = best / prefill_ms * 100
        t = torch_c.get(r["keep"]) if r["policy"] == "SimCalKV" and r["queries"] == "bf16" else None
        t_ms = t["ms_median"] * (LAYERS / t["layers"]) if t else None
        sp_layer = t_ms / r["ms_median"] if t_ms else None
        sp_model = t_ms / r["model_call_ms_median"] if t_ms and r.get("model_call_ms_median") else None
        s["compress"].append({**r, "best_ms": best, "best_percent_of_prefill": pct,
                              "per_layer_percent_of_prefill": r["ms_median"] / prefill_ms * 100, "torch_ms": t_ms,
                              "torch_over_per_layer": sp_layer, "torch_over_model_call": sp_model})
        if "stages_ms" in r and r["policy"] == "SimCalKV":
            if stages is None or r["keep"] == 0.25:
                stages = (r["keep"], r["stages_ms"])
            if r.get("model_call_stages_ms"):
                model_stages.append((r["keep"], r["model_call_stages_ms"]))
        f = lambda x, spec=".2f": "" if x is None else format(x, spec)
        lines.append(f"| {r['policy']} | {r['keep']} | {r['queries']} | {f(r['ms_median'])} | {f(r.get('graph_ms_median'))} | "
                     f"{f(r.get('model_call_ms_median'))} | {pct:.2f}% | {f(t_ms, '.0f')} | "
                     f"{'' if sp_layer is None else f'{sp_layer:.0f}x'} | {'' if sp_model is None else f'{sp_model:.0f}x'} |")
    if stages:
        total = sum(stages[1].values())
        lines += ["", f"Where the per-layer time goes (SimCalKV, keep {stages[0]}, 32 per-layer calls with an event after "
                  f"each stage, {total:.1f} ms in all): " + ", ".join(f"{k} {v:.2f} ms" for k, v in stages[1].items()) + "."]
    for keep, st in model_stages:
        total = sum(st.values())
        lines += ["", f"The whole model in one call, SimCalKV keep {keep} ({total:.1f} ms in all): "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in st.items()) + "."]
    lines += ["", "Targets: < 1% of prefill; >= 20x faster than the same algorithm in PyTorch operations "
              "(`torch_baselines.py`: SimCalKV with local search and the bounded bias, heads batched, 32 layers).", ""]

    # (b) decode attention
    lines += ["## (b) Biased decode attention", "",
              "Split-KV decode over the compressed layout with the per-entry bias, bf16, 8 KV heads, G = 4, head dim 128, "
              "a batch of about 2 GiB of K and V; bytes = K + V + bias read once. PyTorch on the same shapes "
              "(dense [B, 8, n, 128] K/V): SDPA with an additive float mask (GQA), SDPA with K/V expanded to 32 heads "
              "(expansion untimed), FlexAttention with a `score_mod` adding the bias (compiled).", "",
              "Ragged uses TMA tile copies on sm_90 (\"without TMA\": the same kernel with cp.async copies). "
              "SDPA / ragged above 1 means ours is faster.", "",
              "| tokens/head | batch | CUDA ragged ms | GB/s | of copy | SDPA mask / ragged | ragged without TMA ms | CUDA paged ms | of copy | CUDA-core kernel ms | SDPA mask ms | SDPA expanded ms | Flex ms |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    torch_d = {d["tokens_per_head"]: d for d in torch.get("decode", [])}
    s["decode"] = []
    for r in res:
        if r["bench"] != "decode":
            continue
        t = torch_d.get(r["tokens_per_head"], {})
        row = {**r, **{k: v for k, v in t.items() if k not in r}}
        s["decode"].append(row)
        fmt = lambda k: f"{t[k]:.3f}" if k in t else ("error" if k.replace("_ms", "_error") in t else "")
        ratio = f"{t['sdpa_gqa_mask_ms'] / r['ragged_ms']:.3f}" if "sdpa_gqa_mask_ms" in t else ""
        cp = f"{r['ragged_cp_async_ms']:.3f}" if "ragged_cp_async_ms" in r else ""
        lines.append(f"| {r['tokens_per_head']} | {r['requests']} | {r['ragged_ms']:.3f} | {r['ragged_gbs']:.0f} | "
                     f"{r['ragged_fraction_of_copy']:.2f} | {ratio} | {cp} | {r['paged_ms']:.3f} | {r['paged_fraction_of_copy']:.2f} | "
                     f"{r.get('cuda_core_kernel_ms', float('nan')):.3f} | "
                     f"{fmt('sdpa_gqa_mask_ms')} | {fmt('sdpa_expanded_kv_mask_ms')} | {fmt('flex_score_mod_ms')} |")
    diag = [r for r in res if r["bench"] == "decode" and "copies_only_ms" in r]
    if diag:
        lines += ["", "Diagnostics (same run): the cp.async kernel's copies alone, without arithmetic, and plain 16-byte "
                  "loads of the same bytes, as ms: " + "; ".join(
                      f"{r['tokens_per_head']}: {r['copies_only_ms']:.3f} / {r['read_ceiling_ms']:.3f}" for r in diag) + "."]
    sweep = [r for r in res if r["bench"] == "decode_splits"]
    if sweep:
        lines += ["", "Splits per sequence (ragged / paged ms): " + "; ".join(
            f"{r['tokens_per_head']} x {r['splits']}: {r['ragged_ms']:.3f} / {r['paged_ms']:.3f}" for r in sweep) + "."]
    errs = sorted({f"{k}: {v}" for d in torch.get("decode", []) for k, v in d.items() if k.endswith("_error")})
    if errs:
        lines += ["", "PyTorch errors or skips: " + "; ".join(errs)]
    lines += ["", "Targets: >= 0.80 of copy bandwidth at 8k+ tokens per head; not slower than SDPA / FlexAttention.", ""]

    # (c) batch decoding
    dense_ms = torch.get("dense_step_ms", {})
    lines += ["## (c) Batch decoding in a fixed KV budget", "",
              "Llama-3.1-8B shape, 32k-token contexts, KV budget fixed (K, V, bias and position: 520 bytes per entry per KV head). "
              "A decode step = 32 x one layer's measured CUDA decode attention over the batch (with the bias) + the dense "
              "part measured with PyTorch on the same card (QKV, O, gate/up, down projections of 32 layers with random "
              "bf16 weights, SiLU-and-multiply, LM head); norms, RoPE, sampling and the KV append are left out.", "",
              "| compression | entries/head | requests fit | attention ms/step | dense ms/step | tokens/s | vs 1x |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    s["batch"] = []
    base = None
    for r in res:
        if r["bench"] != "batch":
            continue
        dm = dense_ms.get(str(r["requests"]))
        step = r["attention_step_ms"] + (dm or 0)
        tps = r["requests"] / step * 1e3 if dm is not None else None
        if r["compression"] == 1:
            base = tps
        gain = tps / base if tps and base else None
        s["batch"].append({**r, "dense_step_ms": dm, "tokens_per_s": tps, "gain_vs_1x": gain})
        lines.append(f"| {r['compression']}x | {r['entries_per_head']} | {r['requests']} | {r['attention_step_ms']:.2f} | "
                     f"{'' if dm is None else f'{dm:.2f}'} | {'' if tps is None else f'{tps:.0f}'} | "
                     f"{'' if gain is None else f'{gain:.2f}x'} |")
    budget = next((r["kv_budget_gib"] for r in res if r["bench"] == "batch"), None)
    lines += ["", f"KV budget: {budget} GiB.", ""]

    # Tests
    if tests:
        lines += ["## GPU against CPU", "", "`test_cuda` (tests/cuda): every case compares the CUDA result with the CPU "
                  "library on the same inputs, stage by stage (window scores and masses, key norms, selection, assignment, "
                  "final keys/values/biases/positions), or bit for bit where stated.", "",
                  "| group | cases | failed | near-tie sequences | worst metrics |", "| --- | --- | --- | --- | --- |"]
        s["tests"] = {}
        for g, t in sorted(tests.items()):
            if "results" not in t:
                lines.append(f"| {g} | error | | | {t} |")
                continue
            worst = {}
            for c in t["results"]:
                for k, v in c.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k.endswith("_max"):
                        worst[k] = max(worst.get(k, 0), v)
            s["tests"][g] = {"cases": t["cases"], "failed": t["failed"], "near_tie_sequences": t["near_tie_sequences"],
                             "worst": worst}
            lines.append(f"| {g} | {t['cases']} | {t['failed']} | {t['near_tie_sequences']} | "
                         + ", ".join(f"{k}={v:.3g}" for k, v in sorted(worst.items())) + " |")
        lines.append("")
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "cuda_summary.md"), "w").write("\n".join(lines) + "\n")
    json.dump(s, open(os.path.join(out, "cuda_summary.json"), "w"), indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
