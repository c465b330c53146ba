#!/usr/bin/env python3
"""Compares two or more simcalkv-bench JSON runs of the same benchmarks, e.g. a baseline x86-64 build
(-DSIMCALKV_NATIVE=OFF: the kernels come from simcalkv::dispatch, chosen at run time) against a
-march=native build. Runs of one build given several times (A1.json,A2.json) are pooled: each
benchmark's best repetition over them counts, which filters out other processes' interference.

usage: compare_builds.py NAME=RUN.json[,RUN.json...] NAME=RUN.json[,...]
prints, per benchmark, each build's best seconds and its ratio to the last build given.
"""
import json
import sys


def best_seconds(paths):
    best, arch = {}, set()
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        arch.add(data.get("context", {}).get("kernel_arch", "?"))
        for b in data.get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration" or "seconds" not in b:
                continue
            name = "/".join(p for p in b["run_name"].split("/") if ":" not in p and p != "manual_time")
            best[name] = min(best.get(name, float("inf")), b["seconds"])
    return best, ",".join(sorted(arch))


def main(argv):
    builds = []
    for arg in argv[1:]:
        if "=" not in arg:
            print(__doc__, file=sys.stderr)
            return 2
        name, paths = arg.split("=", 1)
        runs, arch = best_seconds(paths.split(","))
        builds.append((name, runs, arch))
    if len(builds) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    ref_name, ref, _ = builds[-1]
    print("kernel table chosen at run time: " + "; ".join(f"{n}: {a}" for n, _, a in builds))
    header = "  ".join(f"{n:>12s}" for n, _, _ in builds)
    print(f"{'benchmark':36s} {header}  " + "  ".join(f"{n + '/' + ref_name:>16s}" for n, _, _ in builds[:-1]))
    for name in sorted(ref):
        if not all(name in runs for _, runs, _ in builds):
            continue
        cells = "  ".join(f"{runs[name] * 1e3:9.2f} ms" for _, runs, _ in builds)
        ratios = "  ".join(f"{runs[name] / ref[name]:16.3f}" for _, runs, _ in builds[:-1])
        print(f"{name:36s} {cells}  {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
