#!/usr/bin/env python3
"""Markdown tables from the tools' JSON, for docs/quality.md and the model card.

    python3 scripts/quality_table.py model docs/results/model_quality.json     # simcalkv-perplexity
    python3 scripts/quality_table.py fidelity docs/results/fidelity_tiny.json  # simcalkv-fidelity

Rows are sorted by the value at ratio 0.75 (KL, or mean attention error), best first."""
import json
import sys


def main(kind, path):
    data = json.load(open(path))
    rows = {}
    for r in data["results"]:
        if kind == "model":
            ratio, cell = r["compress_ratio"], f'{r["kl"]:.4f} / {r["top1_agreement"]:.3f} / {r["perplexity"]:.1f}'
            key = r["kl"]
        else:
            ratio, cell, key = r["compress_ratio"] if "compress_ratio" in r else 1.0 - r["keep"], f'{r["rel_error_mean"]:.4f}', r["rel_error_mean"]
        rows.setdefault(r["policy"], {})[round(ratio, 4)] = (cell, key)
    ratios = [0.5, 0.75, 0.9]
    if kind == "model":
        print("| policy | 0.5 KL / top-1 / ppl | 0.75 KL / top-1 / ppl | 0.9 KL / top-1 / ppl |")
    else:
        print("| policy | compress_ratio 0.5 | 0.75 | 0.9 |")
    print("|---|---|---|---|")
    full = rows.pop("Full", None)
    if full and kind == "model":
        cell = next(iter(full.values()))[0]
        print(f"| Full (no compression) | {cell} | | |")
    for name in sorted(rows, key=lambda p: rows[p].get(0.75, ("", 1e9))[1]):
        print(f"| {name} | " + " | ".join(rows[name].get(r, ("",))[0] for r in ratios) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("model", "fidelity"):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
