"""Tensor-parallel generation with simcalkv: transformers' tp_plan="auto" under torchrun, every
rank compressing the KV heads it holds, against the same generation in one process.

    python benchmarks/python/tp_generate.py save DIR [--layers 2 --vocab 32000 --dtype float32]
    torchrun --nproc-per-node N benchmarks/python/tp_generate.py run DIR --out runN.json \
        [--context 1024 --new 16 --ratio 0.75 --methods Full SnapKV SimCalKV AdaKV+SimCalKV]
    python benchmarks/python/tp_generate.py compare run1.json run2.json run4.json --out summary.json

`save` writes a model with Llama-3.1-8B's attention shape (hidden 4096, 32 query heads, 8 KV heads,
head dim 128, rope_theta 500000) and random weights from a fixed seed; --layers and --vocab shrink
it where the whole 8B does not fit the machine. `run` loads it with tp_plan="auto" when N > 1 (one
process: no plan), prefills one prompt of random token ids (fixed seed) and decodes greedily for
each method: "Full" is transformers' own cache and SDPA; the others are `simcalkv.hf.SimCalKVPress`
with that spec (AdaKV+ specs with tp_budgets="global", the single-process budgets). The device is
CUDA (NCCL, one GPU per rank) when CUDA is visible, else the CPU (gloo); CUDA_VISIBLE_DEVICES=""
forces the CPU. Rank 0 writes, per method: the generated ids, every layer's kept entries per KV
head of the whole layer (gathered from the ranks), the prefill time (compression included), the
compression time alone (summed over layers), and decode tokens/s. `compare` checks that every run
generated the ids and kept the entries per head of the first (one-process) run, and exits 1 if not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def config_8b_shaped(layers: int, vocab: int, intermediate: int):
    import transformers

    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=4096, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rope_theta=500000.0, tie_word_embeddings=False)


def save(a):
    import transformers

    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    model = transformers.LlamaForCausalLM(config_8b_shaped(a.layers, a.vocab, a.intermediate)).to(dtype)
    model.save_pretrained(a.dir)
    print(f"saved {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters ({a.dtype}) to {a.dir}")


def run(a):
    import torch.distributed as dist
    import transformers
    import simcalkv.hf

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    on_cuda = torch.cuda.is_available()
    if not on_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1 and not dist.is_initialized():
        if on_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if on_cuda else "gloo")
    kwargs = {"tp_plan": "auto"} if world > 1 else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(a.dir, **kwargs)
    if world == 1 and on_cuda:
        model = model.to("cuda")
    model.eval()
    device = next(model.parameters()).device
    simcalkv.hf.set_attention(model, "sdpa")
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, a.context), generator=torch.Generator().manual_seed(a.seed)).to(device)

    # Time spent compressing: SimCalKVLayer.compress_prefill, summed over layers (synchronised).
    spent = {"s": 0.0}
    original = simcalkv.hf.SimCalKVLayer.compress_prefill

    def timed(self, query):
        sync()
        t = time.perf_counter()
        original(self, query)
        sync()
        spent["s"] += time.perf_counter() - t

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    simcalkv.hf.SimCalKVLayer.compress_prefill = timed

    def gathered_kept(cache):
        """Per layer, the kept entries of every KV head of the whole layer (rank order)."""
        mine = [layer.kept_lengths()[0] if isinstance(layer, simcalkv.hf.SimCalKVLayer) else None
                for layer in cache.layers]
        if world == 1:
            return mine
        parts = [None] * world
        dist.all_gather_object(parts, mine)
        return [None if parts[0][i] is None else sum((p[i] for p in parts), []) for i in range(len(mine))]

    results = {"world_size": world, "device": torch.cuda.get_device_name() if on_cuda else "cpu",
               "threads_per_rank": torch.get_num_threads(), "context": a.context, "ratio": a.ratio, "methods": {}}
    for method in a.methods:
        spent["s"] = 0.0
        press = None
        if method != "Full":
            budgets = "global" if method.startswith("AdaKV+") else "shard"
            press = simcalkv.hf.SimCalKVPress(method, compression_ratio=a.ratio, window=a.window, backend="auto",
                                              tp_budgets=budgets)
        cache = transformers.DynamicCache()
        out_ids = []
        with torch.no_grad(), (press(model) if press else _nothing()):
            sync()
            t0 = time.perf_counter()
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
            sync()
            prefill = time.perf_counter() - t0
            token = logits[:, -1].argmax(-1)
            out_ids.append(int(token))
            t1 = time.perf_counter()
            for step in range(a.new - 1):
                position = torch.tensor([a.context + step], device=device)
                logits = model(input_ids=token[:, None], past_key_values=cache, use_cache=True,
                               cache_position=position, position_ids=position[None]).logits
                token = logits[:, -1].argmax(-1)
                out_ids.append(int(token))
            sync()
            decode = time.perf_counter() - t1
        kept = gathered_kept(cache) if press else None
        results["methods"][method] = {
            "ids": out_ids, "kept_per_head": kept, "prefill_s": prefill, "compress_s": spent["s"],
            "compress_share_of_prefill": spent["s"] / prefill if press else 0.0,
            "decode_tokens_per_s": (a.new - 1) / decode if a.new > 1 else None}
        if rank == 0:
            print(f"{method:>16}: prefill {prefill:.2f} s (compression {spent['s']:.3f} s), "
                  f"decode {results['methods'][method]['decode_tokens_per_s']:.1f} tok/s, ids {out_ids}", flush=True)
    if rank == 0:
        Path(a.out).write_text(json.dumps(results, indent=1))
    if world > 1:
        dist.barrier()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def compare(a):
    runs = [json.loads(Path(p).read_text()) for p in a.runs]
    base = runs[0]
    summary = {"reference_world_size": base["world_size"], "device": base["device"], "context": base["context"],
               "ratio": base["ratio"], "runs": []}
    ok = True
    for r in runs:
        row = {"world_size": r["world_size"], "methods": {}}
        for method, m in r["methods"].items():
            ref = base["methods"][method]
            same_ids = m["ids"] == ref["ids"]
            same_kept = m["kept_per_head"] == ref["kept_per_head"]
            ok = ok and same_ids and same_kept
            row["methods"][method] = {
                "ids_equal_to_one_process": same_ids, "kept_per_head_equal_to_one_process": same_kept,
                "prefill_s": m["prefill_s"], "compress_s": m["compress_s"],
                "compress_share_of_prefill": m["compress_share_of_prefill"],
                "decode_tokens_per_s": m["decode_tokens_per_s"]}
            print(f"world {r['world_size']} {method:>16}: ids {'equal' if same_ids else 'DIFFER'}, kept per head "
                  f"{'equal' if same_kept else 'DIFFER'}; prefill {m['prefill_s']:.2f} s, compression "
                  f"{m['compress_s']:.3f} s, decode {m['decode_tokens_per_s']:.1f} tok/s")
        summary["runs"].append(row)
    summary["all_equal"] = ok
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="write the random Llama-3.1-8B-shaped model")
    s.add_argument("dir")
    s.add_argument("--layers", type=int, default=2)
    s.add_argument("--vocab", type=int, default=32000)
    s.add_argument("--intermediate", type=int, default=14336)
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="generate with every method (under torchrun for N > 1 ranks)")
    r.add_argument("dir")
    r.add_argument("--out", required=True)
    r.add_argument("--context", type=int, default=1024)
    r.add_argument("--new", type=int, default=16)
    r.add_argument("--ratio", type=float, default=0.75)
    r.add_argument("--window", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--methods", nargs="+", default=["Full", "SnapKV", "SimCalKV", "AdaKV+SimCalKV"])
    c = sub.add_parser("compare", help="check runs against the first (one process)")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out")
    a = p.parse_args()
    if a.command == "save":
        save(a)
    elif a.command == "run":
        run(a)
    else:
        sys.exit(compare(a))


if __name__ == "__main__":
    main()
