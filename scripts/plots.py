#!/usr/bin/python3
"""Plots of simcalkv's measured quality and speed.

usage: plots.py FIDELITY.json BENCH.json OUTDIR
  FIDELITY.json  simcalkv-fidelity --json output
  BENCH.json     simcalkv-bench --benchmark_out_format=json output
writes OUTDIR/fidelity.png (attention error vs kept fraction, one line per policy) and
OUTDIR/throughput.png (compression and decode-attention throughput vs context length).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

STRONG = {"SimCalKV": "black", "AdaKV+SimCalKV": "tab:blue", "SimCalKV_exact": "tab:red"}


def fidelity_plot(path, out):
    with open(path) as f:
        data = json.load(f)
    by_policy = {}
    for r in data["results"]:
        by_policy.setdefault(r["policy"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.6))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>pPhX*"
    def removed(r):
        # simcalkv-fidelity reports compress_ratio (fraction removed); files written before it reported keep.
        return r["compress_ratio"] if "compress_ratio" in r else round(1.0 - r["keep"], 12)
    for i, (policy, rows) in enumerate(by_policy.items()):
        # compress_ratio 0 and Full give exactly 0 (nothing removed): left out of the curves.
        rows = sorted((r for r in rows if removed(r) > 0), key=removed)
        if policy == "Full" or not rows:
            continue
        simcal = "SimCalKV" in policy
        style = dict(marker=markers[i % len(markers)], color=STRONG.get(policy, colors[i % len(colors)]),
                     linewidth=2.6 if simcal else 1.2, linestyle="-" if simcal else "--", markersize=6 if simcal else 4)
        ratio = [removed(r) for r in rows]
        axes[0].plot(ratio, [r["rel_error_mean"] for r in rows], label=policy, **style)
        axes[1].plot(ratio, [r["rel_error_p95"] for r in rows], label=policy, **style)
    ticks = sorted({removed(r) for r in data["results"] if removed(r) > 0})
    for ax, what in zip(axes, ["mean", "95th percentile"]):
        ax.set_xlabel("compress_ratio: fraction of the prompt removed")
        ax.set_ylabel(f"relative L2 error of attention output ({what})")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Attention error of the next {data['future']} tokens after compressing the prompt "
                 f"({data['trace']}, n={data['n']}, window={data['window']}); "
                 f"Full and compress_ratio 0 give exactly 0", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def bench_runs(path):
    with open(path) as f:
        data = json.load(f)
    best = {}
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration" or "seconds" not in b:
            continue
        key = tuple(p for p in b.get("run_name", b["name"]).split("/") if ":" not in p and p != "manual_time")
        if key not in best or b["seconds"] < best[key]["seconds"]:
            best[key] = b
    return best


def throughput_plot(path, out):
    runs = bench_runs(path)
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.6), gridspec_kw={"wspace": 0.55})

    # compression throughput at keep 50%
    compress = {}
    for key, b in runs.items():
        if key[0] == "BM_Compress" and len(key) == 4 and key[3] == "50":
            compress.setdefault(key[1], []).append((int(key[2]), b["entries_per_second"]))
    colors = plt.get_cmap("tab20").colors
    for i, (policy, pts) in enumerate(sorted(compress.items())):
        pts.sort()
        simcal = policy.startswith("SimCalKV")
        axes[0].plot([p[0] for p in pts], [p[1] / 1e6 for p in pts], marker="o", label=policy,
                     color=STRONG.get(policy, colors[i % len(colors)]), linewidth=2.6 if simcal else 1.2,
                     linestyle="-" if simcal else "--")
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("context length n (entries per head)")
    axes[0].set_ylabel("compression throughput (million KV entries / s, one core)")
    axes[0].set_title("Compress one layer to 50% (8 KV heads, 32 query heads, d=128, bf16)", fontsize=9)
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))

    # decode attention bandwidth per kept fraction, with the copy bandwidth for reference
    decode = {}
    for key, b in runs.items():
        if key[0] == "BM_DecodeAttention" and len(key) == 3:
            decode.setdefault(int(key[2]), []).append((int(key[1]), b))
    for keep, pts in sorted(decode.items(), reverse=True):
        pts.sort()
        axes[1].plot([p[0] for p in pts], [p[1]["bytes_per_second"] / 1e9 for p in pts], marker="o",
                     label=f"decode, kept {keep}%")
    copies = sorted((int(k[1]), b) for k, b in runs.items() if k[0] == "BM_StreamCopy" and len(k) == 2)
    if copies:
        bw = copies[-1][1]["bytes_per_second"] / 1e9
        axes[1].axhline(bw, color="black", linestyle=":", label=f"memcpy {copies[-1][0] >> 20} MiB (bytes copied/s)")
        axes[1].axhline(0.7 * bw, color="grey", linestyle=":", label="70% of memcpy")
    reads = sorted((int(k[1]), b) for k, b in runs.items() if k[0] == "BM_StreamRead" and len(k) == 2)
    if reads:
        axes[1].axhline(reads[-1][1]["bytes_per_second"] / 1e9, color="tab:red", linestyle="--",
                        label=f"read-only pass {reads[-1][0] >> 20} MiB")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("context length n (entries per head before compression)")
    axes[1].set_ylabel("decode attention: K, V, bias read (GB/s, one core)")
    axes[1].set_title("One decode step of one layer (32 query heads)", fontsize=9)
    axes[1].grid(True, which="both", alpha=0.3)
    axes[1].set_ylim(bottom=0)
    axes[1].legend(fontsize=7)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    fidelity, bench, outdir = argv[1:]
    os.makedirs(outdir, exist_ok=True)
    fidelity_plot(fidelity, os.path.join(outdir, "fidelity.png"))
    throughput_plot(bench, os.path.join(outdir, "throughput.png"))
    print(f"wrote {os.path.join(outdir, 'fidelity.png')} and {os.path.join(outdir, 'throughput.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
