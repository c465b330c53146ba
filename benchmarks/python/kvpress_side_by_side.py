"""simcalkv beside kvpress (NVIDIA/kvpress, run from its own fetched source) on the same model,
prompts and ratios. Writes one JSON file and prints a table.

    python benchmarks/python/kvpress_side_by_side.py --kvpress PATH/TO/kvpress/checkout \
        --out benchmarks/results/kvpress_side_by_side.json [--device cuda] [--samples 8]

1. agreement: our SnapKV and kvpress's SnapKVPress configured alike (observation window 64,
   average pooling with kernel 5, no sinks: "SnapKV:sinks=0,pooling=avg,pool_kernel=5") keep the
   same entries of every head of every layer of the bundled model;
2. quality: each sample's context (--context tokens of data/corpus/heldout.jsonl) is prefilled
   and compressed; its continuation (--continuation tokens) is then fed teacher-forced with the
   true positions. KL(full || compressed) of the next-token distributions, averaged over the
   continuation's positions, and the rate at which both argmaxes agree (top-1), per method and
   ratio; kvpress's and ours from the same prefill of the same tokens. Ours with its own defaults
   (SnapKV: 4 sinks, max pooling over 7) and with kvpress's SnapKV settings.

Shims, kept here and not in the peer's code: kvpress 0.5.4 imports `cachetools`, `datasets` and
`fire`, absent where this ran and unused by its presses, so stand-ins are installed for them; its
forward hook reads kwargs["cache_position"], which transformers 5.17 no longer passes to
attention, so a wrapper derives it from the cache length (positions n - q_len .. n - 1).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# Our SnapKV configured as kvpress's SnapKVPress (window 64 given by the press, kernel 5, average pooling, no sinks).
ALIKE = "SnapKV:sinks=0,pooling=avg,pool_kernel=5"


class _Anything:
    """Stand-in for the modules kvpress imports but its presses never use."""

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Anything()

    def __getattr__(self, name):
        return _Anything()


def _stand_in_attribute(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Anything()


def import_kvpress(path: str | None):
    for name in ("cachetools", "datasets", "fire"):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__getattr__ = _stand_in_attribute
            sys.modules[name] = module
    if path:
        sys.path.insert(0, path)
    import kvpress

    return kvpress


def with_cache_position(press):
    """kvpress's forward hook with kwargs["cache_position"] derived from the cache length."""
    original = press.forward_hook

    def hook(module, args, kwargs, output):
        if kwargs.get("cache_position") is None:
            q_len = kwargs["hidden_states"].shape[1]
            n = kwargs["past_key_values"].get_seq_length(module.layer_idx)
            kwargs = dict(kwargs, cache_position=torch.arange(n - q_len, n, device=kwargs["hidden_states"].device))
        return original(module, args, kwargs, output)

    press.forward_hook = hook
    return press


def samples(tokenizer, count, context, continuation):
    rows = [json.loads(line) for line in (ROOT / "data/corpus/heldout.jsonl").read_text().splitlines()]
    out = []
    for row in rows:
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        if len(ids) >= context + continuation:
            out.append((ids[:context], ids[context : context + continuation]))
        if len(out) == count:
            break
    return out


def kept_by_kvpress(full_cache, press_cache, layer):
    """Indices (per KV head) of the full cache's entries that a kvpress cache still holds."""
    full = full_cache.layers[layer].keys[0]  # [H, n, d]
    kept = press_cache.layers[layer].keys[0]  # [H, k, d], rows gathered from full
    out = []
    for h in range(full.shape[0]):
        match = (kept[h][:, None, :] == full[h][None, :, :]).all(-1)  # [k, n]
        out.append(sorted(int(j) for j in match.float().argmax(1).tolist()))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kvpress", help="folder holding the kvpress package (a checkout of NVIDIA/kvpress)")
    p.add_argument("--model", default=str(ROOT / "models/simcalkv-tiny"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--continuation", type=int, default=64)
    p.add_argument("--ratios", default="0.5,0.75,0.9")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    kvpress = import_kvpress(a.kvpress)
    import transformers

    import simcalkv.hf

    torch.manual_seed(0)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(Path(a.model) / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(a.device).eval()
    simcalkv.hf.set_attention(model, "sdpa")
    ratios = [float(r) for r in a.ratios.split(",")]
    data = samples(tok, a.samples, a.context, a.continuation)
    window = 64
    result = {"model": a.model, "device": a.device, "context": a.context, "continuation": a.continuation,
              "samples": len(data), "window": window, "transformers": transformers.__version__,
              "torch": torch.__version__, "kvpress": getattr(kvpress, "__version__", "0.5.4"),
              "agreement": [], "quality": []}

    def prefill(ids, press=None, ours=False):
        cache = transformers.DynamicCache()
        x = torch.tensor([ids], device=a.device)
        if press is None:
            model(x, past_key_values=cache, use_cache=True)
        else:
            with press(model):
                model(x, past_key_values=cache, use_cache=True)
        return cache

    def continuation_logits(cache, context, cont, press=None):
        x = torch.tensor([cont[:-1]], device=a.device)
        pos = torch.arange(len(context), len(context) + len(cont) - 1, device=a.device)[None]
        if press is None:
            return model(x, past_key_values=cache, position_ids=pos, use_cache=True).logits[0].float()
        with press(model):
            return model(x, past_key_values=cache, position_ids=pos, use_cache=True).logits[0].float()

    with torch.no_grad():
        # 1. agreement of the kept sets
        for ratio in ratios:
            same = total = 0
            diffs = []
            for i, (context, _) in enumerate(data):
                full = prefill(context)
                theirs = prefill(context, with_cache_position(
                    kvpress.SnapKVPress(compression_ratio=ratio, window_size=window, kernel_size=5)))
                ours_press = simcalkv.hf.SimCalKVPress(ALIKE,
                                                       compression_ratio=ratio, window=window)
                ours = prefill(context, ours_press)
                for layer in range(model.config.num_hidden_layers):
                    k = kept_by_kvpress(full, theirs, layer)
                    row = ours.layers[layer].rows[0]
                    o = [sorted(row.positions[int(row.offsets[h]): int(row.offsets[h] + row.lengths[h])].tolist())
                         for h in range(row.heads)]
                    for h in range(len(k)):
                        total += 1
                        if k[h] == o[h]:
                            same += 1
                        else:
                            diffs.append({"sample": i, "layer": layer, "head": h,
                                          "only_kvpress": sorted(set(k[h]) - set(o[h])),
                                          "only_ours": sorted(set(o[h]) - set(k[h]))})
            result["agreement"].append({"compress_ratio": ratio, "heads_identical": same, "heads": total,
                                        "differences": diffs[:20]})
            print(f"SnapKV kept sets at ratio {ratio}: {same}/{total} heads identical")

        # 2. quality
        methods = {
            "kvpress SnapKVPress": lambda r: with_cache_position(kvpress.SnapKVPress(compression_ratio=r, window_size=window)),
            "kvpress StreamingLLMPress": lambda r: with_cache_position(kvpress.StreamingLLMPress(compression_ratio=r)),
            "kvpress TOVAPress": lambda r: with_cache_position(kvpress.TOVAPress(compression_ratio=r)),
            "kvpress AdaKVPress(SnapKV)": lambda r: with_cache_position(
                kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=r, window_size=window))),
            "kvpress MergingPress(SnapKV)": lambda r: with_cache_position(
                kvpress.MergingPress(press=kvpress.SnapKVPress(compression_ratio=r, window_size=window))),
            "simcalkv SnapKV": lambda r: simcalkv.hf.SimCalKVPress("SnapKV", compression_ratio=r, window=window),
            "simcalkv SnapKV (kvpress's settings)": lambda r: simcalkv.hf.SimCalKVPress(
                ALIKE, compression_ratio=r, window=window),
            "simcalkv SimCalKV (kvpress's SnapKV settings)": lambda r: simcalkv.hf.SimCalKVPress(
                "SimCalKV:" + ALIKE.split(":", 1)[1], compression_ratio=r, window=window),
            "simcalkv TOVA": lambda r: simcalkv.hf.SimCalKVPress("TOVA", compression_ratio=r, window=window),
            "simcalkv SimCalKV": lambda r: simcalkv.hf.SimCalKVPress("SimCalKV", compression_ratio=r, window=window),
            "simcalkv AdaKV+SimCalKV": lambda r: simcalkv.hf.SimCalKVPress("AdaKV+SimCalKV", compression_ratio=r,
                                                                          window=window),
        }
        references = []
        for context, cont in data:
            full = prefill(context)
            references.append(torch.log_softmax(continuation_logits(full, context, cont), -1))
        for name, make in methods.items():
            for ratio in ratios:
                kls, agree, seconds = [], [], 0.0
                for (context, cont), ref in zip(data, references):
                    press = make(ratio)
                    t0 = time.perf_counter()
                    cache = prefill(context, press)
                    seconds += time.perf_counter() - t0
                    ours = name.startswith("simcalkv")
                    logp = torch.log_softmax(continuation_logits(cache, context, cont, press if ours else None), -1)
                    kls.append(float((ref.exp() * (ref - logp)).sum(-1).mean()))
                    agree.append(float((ref.argmax(-1) == logp.argmax(-1)).float().mean()))
                row = {"method": name, "compress_ratio": ratio, "kl": sum(kls) / len(kls),
                       "top1": sum(agree) / len(agree), "prefill_seconds": seconds / len(data)}
                result["quality"].append(row)
                print(f"{name:32s} ratio {ratio:4.2f}  KL {row['kl']:.4f}  top-1 {row['top1']:.3f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
