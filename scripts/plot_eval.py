#!/usr/bin/env python3
"""Plots a simcalkv-eval sweep: quality and agreement against the compression ratio, one line per method.

    python3 scripts/plot_eval.py RESULTS/sweep.json RESULTS/sweep.png

simcalkv-eval runs this itself after a sweep (several methods or ratios). The quality is each dataset's main metric
(the mean over datasets when there are several: the sweep's "ALL" rows); the dashed line is the full cache.
Exit status 3 when matplotlib is missing (Debian: apt-get install python3-matplotlib).
"""
import json
import math
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_eval.py: matplotlib is not installed (apt-get install python3-matplotlib)", file=sys.stderr)
        return 3
    with open(sys.argv[1], encoding="utf-8") as f:
        sweep = json.load(f)
    rows = sweep["rows"]
    datasets = sweep.get("datasets", [])
    wanted = "ALL" if len(datasets) > 1 else (datasets[0] if datasets else None)
    rows = [r for r in rows if r["dataset"] == wanted] or rows
    methods = []
    for r in rows:
        if r["kv_method"] not in methods:
            methods.append(r["kv_method"])

    def finite(x):
        return x is not None and not (isinstance(x, float) and math.isnan(x))

    fig, (ax_q, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    before = [r["quality_before"] for r in rows if finite(r["quality_before"])]
    metric = rows[0]["main_metric"] if rows else ""
    ratios = sorted({r["compress_ratio"] for r in rows})
    if len(ratios) == 1:  # one ratio: bars per method
        def value(m, key):
            v = [r[key] for r in rows if r["kv_method"] == m and finite(r[key])]
            return v[0] if v else 0.0

        xs = range(len(methods))
        ax_q.bar(xs, [value(m, "quality_after") for m in methods], color="tab:blue")
        ax_a.bar(xs, [value(m, "agreement") for m in methods], color="tab:orange")
        for ax in (ax_q, ax_a):
            ax.set_xticks(list(xs))
            ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
            ax.set_xlabel(f"method at compress_ratio {ratios[0]:g} (fraction of the KV cache removed)")
    else:
        colors = plt.get_cmap("tab20").colors
        markers = "os^vD<>ph*"
        for i, m in enumerate(methods):
            style = dict(marker=markers[i % len(markers)], color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
                         linestyle="-" if i < 10 else "--", label=m)
            pts = sorted((r["compress_ratio"], r["quality_after"], r["agreement"]) for r in rows if r["kv_method"] == m)
            xs = [p[0] for p in pts if finite(p[1])]
            ax_q.plot(xs, [p[1] for p in pts if finite(p[1])], **style)
            xa = [p[0] for p in pts if finite(p[2])]
            ax_a.plot(xa, [p[2] for p in pts if finite(p[2])], **style)
        for ax in (ax_q, ax_a):
            ax.set_xlabel("compress_ratio (fraction of the KV cache removed)")
    if before:
        ax_q.axhline(sum(before) / len(before), color="black", linestyle="--", linewidth=1, label="full cache")
    ax_q.set_ylabel(f"quality ({metric})")
    ax_q.set_title("answer quality")
    ax_a.set_ylabel("agreement (ROUGE-L F vs full cache)")
    ax_a.set_title("agreement with the full cache")
    ax_a.set_ylim(0, 1.02)
    ax_q.set_ylim(0, 1.02)
    for ax in (ax_q, ax_a):
        ax.grid(True, alpha=0.3)
    ax_q.legend(fontsize=7, ncol=2)
    model = sweep.get("model_name", "").rstrip("/").split("/")[-1]
    what = "mean over " + str(len(datasets)) + " datasets" if len(datasets) > 1 else (wanted or "")
    fig.suptitle(f"simcalkv-eval: {model}, {what}, {sweep.get('samples', '?')} samples", fontsize=10)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
